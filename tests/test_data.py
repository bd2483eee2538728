"""Tests for ddim.data: every loader on real or synthetic files, the errors, and random_hflip."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.data import (DATASETS, FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_ENV, DatasetError,
                       ImageData, fashion_mnist_dir, load_dataset, load_idx, random_hflip)
from fmnist import FMNIST_SUBSET, needs_full_fmnist


# ------------------------------------------------------------------------------------- helpers

def idx_bytes(a: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format: 00 00 08 ndim, big-endian sizes, data."""
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()


def write_idx_set(d, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    for kind, a in (("images-idx3", images), ("labels-idx1", labels)):
        raw = idx_bytes(a)
        name = d / f"{prefix}-{kind}-ubyte{'.gz' if gz else ''}"
        name.write_bytes(gzip.compress(raw) if gz else raw)


def tiny_mnist(d, gz: bool, n: int = 12):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx_set(d, "train", images, labels, gz)
    write_idx_set(d, "t10k", images[:5], labels[:5], gz)
    return images, labels


# ------------------------------------------------------------------------------------- ImageData

def test_imagedata_to_float_maps_0_255_to_minus1_1():
    x = torch.tensor([0, 51, 127, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    d = ImageData(x)
    assert len(d) == 1 and d.image_size == 2 and d.channels == 1
    torch.testing.assert_close(d.to_float().flatten(), torch.tensor([-1.0, 51 / 127.5 - 1, 127 / 127.5 - 1, 1.0]))
    assert d.to_float(torch.tensor([0])).dtype == torch.float32


def test_imagedata_rejects_bad_fields():
    with pytest.raises(DatasetError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DatasetError, match="square"):
        ImageData(torch.zeros(2, 1, 4, 5, dtype=torch.uint8))
    with pytest.raises(DatasetError, match=r"labels must lie in \[0, 2\)"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), 2)
    with pytest.raises(DatasetError, match="go together"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------- Fashion-MNIST

@needs_full_fmnist
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_real(split, n):
    d = load_dataset("fashion-mnist", split=split)
    assert d.images.shape == (n, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.labels.shape == (n,) and d.labels.dtype == torch.int64
    assert torch.equal(d.labels.unique(), torch.arange(10))
    assert d.num_classes == 10 and d.class_names == FASHION_MNIST_CLASSES
    x = d.to_float(slice(0, 2000))
    assert -1.0 <= x.min() < -0.99 and 0.99 < x.max() <= 1.0


@needs_full_fmnist
def test_fashion_mnist_resize_and_channels():
    d = load_dataset("fashion-mnist", split="test", image_size=32, channels=3)
    assert d.images.shape == (10000, 3, 32, 32)
    assert torch.equal(d.images[:, 0], d.images[:, 2])   # gray repeated, not recoloured


def test_fashion_mnist_missing_dir_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist") as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    assert FASHION_MNIST_ENV in str(e.value)


def test_fashion_mnist_default_dir_follows_the_environment(tmp_path, monkeypatch):
    images, labels = tiny_mnist(tmp_path, gz=True)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    assert fashion_mnist_dir() == tmp_path
    d = load_dataset("fashion-mnist")   # no data_dir: the variable decides
    assert torch.equal(d.images[:, 0], torch.from_numpy(images)) and torch.equal(d.labels, torch.from_numpy(labels).long())
    monkeypatch.setenv(FASHION_MNIST_ENV, "")   # empty counts as unset
    assert fashion_mnist_dir() == FASHION_MNIST_DIR


def test_shipped_subset_is_real_fashion_mnist():
    test, train = (load_dataset("fashion-mnist", FMNIST_SUBSET, split=s) for s in ("test", "train"))
    assert len(test) == 500 and len(train) == 300 and test.images.shape[1:] == (1, 28, 28)
    assert torch.equal(test.labels.unique(), torch.arange(10)) and torch.equal(train.labels.unique(), torch.arange(10))
    assert sum(f.stat().st_size for f in FMNIST_SUBSET.iterdir()) < 1_000_000
    if fashion_mnist_dir() != FMNIST_SUBSET:   # the full set is installed: the subset is its first images
        full = load_dataset("fashion-mnist", split="test")
        assert torch.equal(full.images[:500], test.images) and torch.equal(full.labels[:500], test.labels)


# ------------------------------------------------------------------------------------- idx files

@pytest.mark.parametrize("gz", [True, False])
def test_synthetic_idx_loads_exactly(tmp_path, gz):
    images, labels = tiny_mnist(tmp_path, gz)
    d = load_dataset("mnist", tmp_path)
    assert torch.equal(d.images[:, 0], torch.from_numpy(images))
    assert torch.equal(d.labels, torch.from_numpy(labels).long())
    assert d.name == "mnist/train" and d.class_names == tuple("0123456789")
    t = load_dataset("mnist", tmp_path, split="test")
    assert torch.equal(t.images[:, 0], torch.from_numpy(images[:5]))


def test_idx_found_in_torchvision_raw_subdir(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    images, _ = tiny_mnist(raw, gz=False)
    assert torch.equal(load_dataset("fashion-mnist", tmp_path).images[:, 0], torch.from_numpy(images))


def test_mnist_without_dir_or_files_is_explained(tmp_path):
    with pytest.raises(DatasetError, match="mnist' needs data_dir"):
        load_dataset("mnist")
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte\[\.gz\]"):
        load_dataset("mnist", tmp_path, split="test")


def test_malformed_idx_raises(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    cases = {
        "magic.idx": (b"\x00\x00\x0d\x03" + good[4:], "bad magic number"),   # float32 type code
        "short.idx": (good[:-1], "needs"),                                   # one byte missing
        "long.idx": (good + b"\x00", "needs"),
        "header.idx": (good[:6], "truncated"),
        "trunc.gz": (gzip.compress(good)[:-12], "cannot read idx file"),
        "empty.idx": (b"", "bad magic number"),
    }
    for name, (blob, msg) in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DatasetError, match=msg):
            load_idx(tmp_path / name)
    (tmp_path / "ok.idx").write_bytes(good)
    assert load_idx(tmp_path / "ok.idx").shape == (3, 4, 4)


def test_idx_images_labels_count_mismatch(tmp_path):
    write_idx_set(tmp_path, "train", np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.uint8), gz=True)
    with pytest.raises(DatasetError, match="do not match"):
        load_dataset("mnist", tmp_path)


# ------------------------------------------------------------------------------------- CIFAR-10

def fake_cifar(root, n=4, with_meta=True):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batches[name] = (data, labels)
        (d / name).write_bytes(pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}, protocol=2))
    if with_meta:
        meta = {b"label_names": [f"c{k}".encode() for k in range(10)], b"num_vis": 3072}
        (d / "batches.meta").write_bytes(pickle.dumps(meta))
    return batches


def test_cifar10_fake_layout(tmp_path):
    batches = fake_cifar(tmp_path)
    d = load_dataset("cifar10", tmp_path)
    assert d.images.shape == (20, 3, 32, 32) and d.num_classes == 10
    assert d.class_names == tuple(f"c{k}" for k in range(10))
    data, labels = batches["data_batch_2"]
    # Row layout is channel-major: the first 1024 values are the red plane.
    assert torch.equal(d.images[4, 0].flatten(), torch.from_numpy(data[0, :1024]))
    assert torch.equal(d.images[4, 2].flatten(), torch.from_numpy(data[0, 2048:]))
    assert d.labels[4:8].tolist() == labels
    t = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", split="test", channels=1, image_size=16)
    assert t.images.shape == (4, 1, 16, 16) and t.labels.tolist() == batches["test_batch"][1]


def test_cifar10_missing_and_hostile(tmp_path):
    with pytest.raises(DatasetError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    fake_cifar(tmp_path)

    class Boom:
        def __reduce__(self):
            return (print, ("side effect",))

    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Boom()}))
    with pytest.raises(DatasetError, match="refusing global builtins.print"):
        load_dataset("cifar10", tmp_path, split="test")


# ------------------------------------------------------------------------------------- digits

def test_digits_loads_and_resizes():
    d = load_dataset("digits")
    assert d.images.shape == (1797, 1, 8, 8) and d.labels.shape == (1797,) and d.num_classes == 10
    assert d.images.max() == 255 and d.images.min() == 0
    from sklearn.datasets import load_digits
    raw = load_digits().images
    assert torch.equal(d.images[:, 0], torch.from_numpy(np.rint(raw * 255 / 16).astype(np.uint8)))
    r = load_dataset("digits", image_size=16, channels=3)
    assert r.images.shape == (1797, 3, 16, 16) and torch.equal(r.labels, d.labels)
    # Antialiased bilinear resizing roughly preserves each image's mean brightness; a resize that
    # mixed up images or rescaled values would not.
    torch.testing.assert_close(r.images.float().mean((1, 2, 3)), d.images.float().mean((1, 2, 3)), atol=3, rtol=0)


# ------------------------------------------------------------------------------------- folder

def save(path, mode, size, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_folder_classes_mixed_sizes_and_modes(tmp_path):
    save(tmp_path / "cat" / "a.png", "RGB", (40, 30), (255, 0, 0))
    save(tmp_path / "cat" / "b.JPG", "L", (20, 20), 128)
    save(tmp_path / "dog" / "sub" / "c.jpeg", "RGB", (16, 64), (0, 0, 255))
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    d = load_dataset("folder", tmp_path, image_size=12)
    assert d.images.shape == (3, 3, 12, 12) and d.class_names == ("cat", "dog")
    assert d.labels.tolist() == [0, 0, 1] and d.num_classes == 2
    assert d.images[0, 0].min() == 255 and d.images[0, 1].max() == 0      # red stays red
    assert d.images[2, 2].float().mean() > 240                            # blue JPEG stays blue
    g = load_dataset("folder", tmp_path, image_size=8, channels=1)
    assert g.images.shape == (3, 1, 8, 8)
    assert abs(int(g.images[0].float().mean()) - 76) <= 1                # luma of pure red


def test_folder_center_crop_keeps_the_middle(tmp_path):
    a = np.zeros((10, 30), np.uint8)
    a[:, 10:20] = 255                                                     # white middle third
    Image.fromarray(a).save(tmp_path / "x.png")
    d = load_dataset("folder", tmp_path)                                  # one size: no image_size needed
    assert d.images.shape == (1, 1, 10, 10) and d.images.min() == 255 and d.labels is None


def test_folder_flat_gray_and_size_errors(tmp_path):
    save(tmp_path / "a.png", "L", (8, 8), 10)
    save(tmp_path / "b.bmp", "L", (8, 8), 20)
    d = load_dataset("folder", tmp_path)
    assert d.images.shape == (2, 1, 8, 8) and d.labels is None and d.num_classes is None
    assert d.images[:, 0, 0, 0].tolist() == [10, 20]
    save(tmp_path / "c.webp", "RGB", (9, 8), (1, 2, 3))
    with pytest.raises(DatasetError, match="pass image_size"):
        load_dataset("folder", tmp_path)
    assert load_dataset("folder", tmp_path, image_size=4).images.shape == (3, 3, 4, 4)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset("folder", tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("folder", tmp_path / "nope")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="bad.png"):
        load_dataset("folder", tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class"), pytest.warns(UserWarning, match="bad.png.* not used"):
        load_dataset("folder", tmp_path)  # the loose file beside a class folder is named, not silently dropped


def test_folder_truncated_image_names_the_file(tmp_path):
    save(tmp_path / "ok.png", "RGB", (32, 32), (1, 2, 3))
    blob = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(blob[: len(blob) // 2])   # header fine, pixels missing
    with pytest.raises(DatasetError, match="cut.png"):
        load_dataset("folder", tmp_path)


# ------------------------------------------------------------------------------------- argument errors

@pytest.mark.parametrize("kwargs,msg", [
    (dict(name="imagenet"), "allowed: " + ", ".join(DATASETS)),
    (dict(name="digits", split="val"), "split 'val'; allowed: train, test"),
    (dict(name="digits", channels=2), "channels must be 1"),
    (dict(name="digits", image_size=0), "image_size must be a positive integer"),
    (dict(name="folder"), "needs data_dir"),
    (dict(name="cifar10"), "needs data_dir"),
])
def test_bad_arguments(kwargs, msg):
    with pytest.raises(DatasetError, match=msg.replace("(", r"\(")):
        load_dataset(**kwargs)


# ------------------------------------------------------------------------------------- random_hflip

def test_random_hflip_deterministic_and_whole_images():
    x = torch.arange(64 * 2 * 3 * 5, dtype=torch.float32).view(64, 2, 3, 5)
    a = random_hflip(x, torch.Generator().manual_seed(7))
    b = random_hflip(x, torch.Generator().manual_seed(7))
    c = random_hflip(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    flipped = [torch.equal(a[i], x[i].flip(-1)) for i in range(64)]
    kept = [torch.equal(a[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))                    # each image all-or-nothing
    assert 16 < sum(flipped) < 48                                          # roughly half
    assert torch.equal(x, torch.arange(x.numel(), dtype=torch.float32).view_as(x))   # input untouched


def test_random_hflip_uses_only_the_generator():
    x = torch.randn(32, 1, 4, 4)
    torch.manual_seed(0)
    a = random_hflip(x, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    assert torch.equal(a, random_hflip(x, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="torch.Generator"):
        random_hflip(x, None)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_hflip(x[0], torch.Generator())


def test_folder_16_bit_png_is_scaled_not_clipped(tmp_path):
    save(tmp_path / "a.png", "L", (8, 8), 10)
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "x16.png")  # nearly black, as I;16
    d = load_dataset("folder", tmp_path)
    assert d.images.shape == (2, 1, 8, 8) and d.images[1].unique().tolist() == [4]  # 1000 / 257, not 255


def test_folder_bounds_decoded_pixels_as_the_cli_inputs(tmp_path):
    import hostile as H

    from ddim.images import MAX_PIXELS

    save(tmp_path / "a.png", "L", (8, 8), 10)
    H.png_header_only(tmp_path / "huge.png", 5000, MAX_PIXELS // 5000 + 1)  # no data: refused from the header
    with pytest.raises(DatasetError, match=f"huge.png is too large: 5000×3201 pixels; at most {MAX_PIXELS:,}"):
        load_dataset("folder", tmp_path, image_size=8)


def test_folder_says_only_an_animations_first_frame_is_used(tmp_path):
    frames = [Image.new("L", (8, 8), v) for v in (30, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    save(tmp_path / "b.png", "L", (8, 8), 10)
    with pytest.warns(UserWarning, match="1 image file.* animated \\(e.g. anim.gif\\); only the first frame"):
        d = load_dataset("folder", tmp_path)
    assert int(d.images[0].float().mean()) == 30
