"""Datasets as uint8 tensors (N, C, H, W) that turn into floats in [-1, 1] on demand; all offline.

Images stay uint8 in memory (a quarter of float32's size: Fashion-MNIST is 47 MB, not 188 MB) and
are scaled by ``ImageData.to_float`` one batch at a time: x ↦ x/127.5 − 1, so 0 → −1 and 255 → 1.

Sources (``load_dataset(name, ...)``; nothing is ever downloaded):
    fashion-mnist  idx files (gzip or raw); default dir $DDIM_FASHION_MNIST_DIR if set, else
                   /usr/share/datasets/fashion-mnist, from the Debian package ``dataset-fashion-mnist``.
                   60,000 train / 10,000 test, 1×28×28.
    mnist          the same idx format in a directory you give.
    cifar10        torchvision's python layout: ``cifar-10-batches-py/`` (or the dir itself) holding
                   data_batch_1..5, test_batch and batches.meta. 50,000 / 10,000, 3×32×32.
    digits         scikit-learn's ``load_digits()`` (1,797 images, 1×8×8, values 0..16 → 0..255).
    folder         any image folder; class subdirectories give labels (see ``load_folder``).

``image_size`` resizes (bilinear with antialiasing) and ``channels`` converts: 3 on a grayscale set
repeats the channel, 1 on a colour set takes the ITU-R 601 luma, as PIL's "L" mode does.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import warnings
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .files import read_bytes

__all__ = ["ImageData", "DatasetError", "DATASETS", "SPLITS", "FASHION_MNIST_DIR", "FASHION_MNIST_ENV",
           "FASHION_MNIST_INSTALL", "fashion_mnist_dir", "FASHION_MNIST_CLASSES",
           "CIFAR10_CLASSES", "IMAGE_EXTENSIONS", "load_dataset", "load_idx", "load_folder", "random_hflip"]

DATASETS = ("fashion-mnist", "mnist", "cifar10", "digits", "folder")
SPLITS = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")   # where the Debian package puts it
FASHION_MNIST_ENV = "DDIM_FASHION_MNIST_DIR"                      # overrides that default everywhere
FASHION_MNIST_INSTALL = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
# Used only when a CIFAR-10 directory lacks batches.meta; the order is the dataset's label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_IDX_PREFIX = {"train": "train", "test": "t10k"}       # file-name prefixes of the idx format
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_LUMA = (0.299, 0.587, 0.114)                           # ITU-R 601-2, the weights of PIL's "L"
_RESIZE_CHUNK = 4096                                    # images per interpolate call: bounds float memory
MAX_IDX_BYTES = 4 << 30                                 # one idx file, decompressed (Fashion-MNIST's largest: 47 MB)


class DatasetError(ValueError):
    """A dataset is missing, malformed, or was asked for with bad arguments."""


@dataclass(frozen=True, eq=False)
class ImageData:
    """A labelled (or unlabelled) image set held as uint8.

    Attributes:
        images: (N, C, S, S) uint8, square, C in {1, 3}, pixel values 0..255.
        labels: (N,) int64 in [0, num_classes), or None.
        num_classes: number of classes when ``labels`` is given, else None.
        name: where it came from, e.g. "fashion-mnist/train".
        class_names: ``num_classes`` strings, or None.
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor] = None
    num_classes: Optional[int] = None
    name: str = "images"
    class_names: Optional[tuple] = None

    def __post_init__(self):
        x = self.images
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise DatasetError(f"images must be a uint8 tensor (N, C, H, W) with C in (1, 3), got "
                               f"{getattr(x, 'dtype', type(x).__name__)} {tuple(getattr(x, 'shape', ()))}")
        if x.shape[2] != x.shape[3]:
            raise DatasetError(f"images must be square, got H×W = {x.shape[2]}×{x.shape[3]}")
        if (self.labels is None) != (self.num_classes is None):
            given = "None" if self.labels is None else "a tensor"
            raise DatasetError(f"labels and num_classes go together, got labels={given} "
                               f"and num_classes={self.num_classes!r}")
        if self.labels is not None:
            y = self.labels
            if y.dtype != torch.int64 or tuple(y.shape) != (x.shape[0],):
                raise DatasetError(f"labels must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
            if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
                raise DatasetError(f"labels must lie in [0, {self.num_classes}), got [{y.min()}, {y.max()}]")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise DatasetError(f"class_names has {len(self.class_names)} entries for num_classes={self.num_classes}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        """Side S of the square images, in pixels."""
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        """C: 1 (grayscale) or 3 (RGB)."""
        return self.images.shape[1]

    def to_float(self, idx=None) -> torch.Tensor:
        """Images ``idx`` (None: all; an index tensor, list or slice) as float32 in [-1, 1]: x/127.5 − 1."""
        x = self.images if idx is None else self.images[idx]
        return x.to(torch.float32) / 127.5 - 1.0


def fashion_mnist_dir() -> Path:
    """The default Fashion-MNIST directory: ``$DDIM_FASHION_MNIST_DIR`` when set and non-empty, else
    ``FASHION_MNIST_DIR``. Read at each call, so the variable also steers an already imported ddim."""
    return Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


# ---------------------------------------------------------------------------------------- checks

def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    return split


def _check_size(image_size) -> Optional[int]:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise DatasetError(f"image_size must be a positive integer or None, got {image_size!r}")
    return None if image_size is None else int(image_size)


def _check_channels(channels) -> Optional[int]:
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DatasetError(f"channels must be 1 (grayscale), 3 (RGB) or None (as stored), got {channels!r}")
    return channels


# ---------------------------------------------------------------------------------------- idx

def load_idx(path) -> np.ndarray:
    """Read one idx file (the MNIST format), gzip-compressed or raw, holding unsigned bytes.

    Layout: magic = 0x00 0x00 0x08 ndim, then ndim big-endian uint32 sizes, then the bytes.
    Returns:
        uint8 array of the stored shape, e.g. (N, 28, 28) for images, (N,) for labels.
    """
    path = Path(path)
    try:
        raw = read_bytes(path, MAX_IDX_BYTES)
        # Detect gzip by its magic bytes, not the name, so a renamed file still loads.
        if raw[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as g:  # bounded: a gzip bomb is refused, not inflated
                raw = g.read(MAX_IDX_BYTES + 1)
            if len(raw) > MAX_IDX_BYTES:
                raise DatasetError(f"cannot read idx file {path}: it decompresses to over {MAX_IDX_BYTES:,} bytes")
    except FileNotFoundError:
        raise DatasetError(f"idx file {path} does not exist") from None
    except (EOFError, OSError, ValueError, zlib.error) as e:   # truncated or corrupt gzip, a device, too large
        raise DatasetError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise DatasetError(f"{path} is not an unsigned-byte idx file: bad magic number {raw[:4].hex() or '(empty)'}, "
                           f"expected 000008 followed by 01..04")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: {len(raw)} bytes, the header alone needs {header}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(shape)  # Python ints: sizes from a damaged header must not overflow
    if len(raw) != expected:
        raise DatasetError(f"{path} has {len(raw)} bytes but its header {shape} needs {expected} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _find_file(dirs: Sequence[Path], stem: str) -> Optional[Path]:
    for d in dirs:
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _load_idx_pair(data_dir: Path, split: str, title: str, subdir: str, how_to_get: str):
    """(images (N, 28, 28), labels (N,)) from the idx files of ``split`` under ``data_dir``.

    ``title`` names the dataset in errors, ``subdir`` is torchvision's folder name for it.
    """
    # Also look where torchvision keeps them (<dir>/<Name>/raw), so its downloads work as they are.
    dirs = [data_dir, data_dir / "raw", data_dir / subdir / "raw"]
    stems = [f"{_IDX_PREFIX[split]}-images-idx3-ubyte", f"{_IDX_PREFIX[split]}-labels-idx1-ubyte"]
    paths = [_find_file(dirs, s) for s in stems]
    if None in paths:
        missing = ", ".join(s + "[.gz]" for s, p in zip(stems, paths) if p is None)
        raise DatasetError(f"{title} {split} files not found: looked for {missing} in {data_dir} "
                           f"(and its raw/, {subdir}/raw/); {how_to_get}")
    images, labels = load_idx(paths[0]), load_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(f"idx files do not match: images {images.shape} in {paths[0]}, "
                           f"labels {labels.shape} in {paths[1]}; expected (N, H, W) and (N,)")
    return images, labels


# ---------------------------------------------------------------------------------------- CIFAR-10

# The only globals a CIFAR-10 batch needs: numpy arrays (either numpy major version's module path)
# and bytes from a protocol-2 pickle. Anything else is refused, so a planted file cannot run code.
_PICKLE_OK = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
              ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
              ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
              ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _PICKLE_OK:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}: not part of a CIFAR-10 batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]   # skip numpy 2's deprecation shim
        return super().find_class(module, name)


def _read_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise DatasetError(f"cannot read CIFAR-10 batch {path}: {e}") from None
    if not isinstance(d, dict):
        raise DatasetError(f"{path} holds a {type(d).__name__}, expected a dict with b'data' and b'labels'")
    return {k.encode() if isinstance(k, str) else k: v for k, v in d.items()}


def _load_cifar10(data_dir: Path, split: str):
    """(images (N, 3, 32, 32), labels (N,), class names) from torchvision's python layout."""
    root = data_dir / "cifar-10-batches-py" if (data_dir / "cifar-10-batches-py").is_dir() else data_dir
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise DatasetError(f"CIFAR-10 {split} batches not found: looked for {', '.join(missing)} in {root}; "
                           f"download and extract cifar-10-python.tar.gz (www.cs.toronto.edu/~kriz/cifar.html) "
                           f"into a directory and pass it as data_dir (--data-dir)")
    images, labels = [], []
    for n in names:
        d = _read_batch(root / n)
        x, y = np.asarray(d.get(b"data")), np.asarray(d.get(b"labels", d.get(b"fine_labels")))
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (x.shape[0],):
            raise DatasetError(f"{root / n}: expected b'data' uint8 (N, 3072) and b'labels' (N,), "
                               f"got {x.dtype} {x.shape} and {y.shape}")
        images.append(x.reshape(-1, 3, 32, 32))   # rows are 1024 R, then 1024 G, then 1024 B values
        labels.append(y.astype(np.int64))
    classes = CIFAR10_CLASSES
    if (root / "batches.meta").is_file():
        meta = _read_batch(root / "batches.meta").get(b"label_names")
        if meta is not None:
            classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in meta)
    return np.concatenate(images), np.concatenate(labels), classes


# ---------------------------------------------------------------------------------------- digits

def _load_digits():
    """(images (1797, 8, 8) uint8, labels (1797,)) from scikit-learn, 0..16 scaled to 0..255."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("the digits dataset ships inside scikit-learn, which is not installed; "
                           "pip install scikit-learn") from None
    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


# ---------------------------------------------------------------------------------------- folder

def _image_files(d: Path, recursive: bool) -> list:
    found = d.rglob("*") if recursive else d.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def _read(how, f: Path):
    """``how(f)`` (``ddim.images``' header reader or decoder), its refusal a DatasetError (they name the file)."""
    try:
        return how(f)
    except (OSError, ValueError) as e:
        raise DatasetError(str(e)) from None


def load_folder(data_dir, image_size: Optional[int] = None, channels: Optional[int] = None) -> ImageData:
    """Every image in a folder, as a square uint8 ``ImageData``.

    Layout: if ``data_dir`` has subdirectories, each one is a class (labels follow the sorted names;
    files are searched recursively inside each; loose files beside them are ignored). Otherwise the
    files directly in ``data_dir`` are read and labels are None. Extensions: ``IMAGE_EXTENSIONS``,
    any case; hidden files and directories are skipped.

    Each image is read as ``ddim.images.open_image`` reads the CLI's inputs (at most ``MAX_PIXELS``, the
    first frame of an animation, 16-bit grayscale scaled to 8 bits), converted to "L" (channels=1) or
    "RGB" (channels=3; None: RGB unless every image is grayscale), its shorter side resized to
    ``image_size`` and the centre square cropped. With ``image_size=None`` all images must share one size,
    and the side is its shorter one.
    """
    from .images import center_square, image_header, open_image

    root = Path(data_dir)
    image_size, channels = _check_size(image_size), _check_channels(channels)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist or is not a directory")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = _image_files(root, recursive=False) if classes else []
    if loose:
        warnings.warn(f"{len(loose)} image file(s) directly in {root} (e.g. {loose[0].name}) are not used: with class "
                      "subfolders, each subfolder is a class; move them into one", UserWarning, stacklevel=2)
    if classes:
        files, targets = [], []
        for k, c in enumerate(classes):
            found = _image_files(root / c, recursive=True)
            if not found:
                raise DatasetError(f"class directory {root / c} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
            targets += [k] * len(found)
    else:
        files, targets = _image_files(root, recursive=False), None
    if not files:
        raise DatasetError(f"image folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}), "
                           f"neither directly nor in class subdirectories")

    # First pass reads headers only (cheap) to settle the mode and the size before decoding anything.
    modes, sizes, animated = [], set(), []
    for f in files:
        mode, size, frames = _read(image_header, f)
        modes.append(mode)
        sizes.add(size)
        if frames > 1:
            animated.append(f)
    if animated:
        warnings.warn(f"{len(animated)} image file(s) in {root} are animated (e.g. {animated[0].name}); only the first "
                      "frame of each is used", UserWarning, stacklevel=2)
    mode = {1: "L", 3: "RGB"}[channels] if channels else ("L" if set(modes) <= _GRAY_MODES else "RGB")
    if image_size is None:
        if len(sizes) > 1:
            raise DatasetError(f"images in {root} have {len(sizes)} different sizes (e.g. {sorted(sizes)[:3]}); "
                               f"pass image_size (--image-size) to resize and centre-crop them")
        image_size = min(next(iter(sizes)))

    out = np.empty((len(files), 1 if mode == "L" else 3, image_size, image_size), dtype=np.uint8)
    for i, f in enumerate(files):
        img = center_square(_read(open_image, f)[0].convert(mode), image_size)  # the CLI inputs' decoder
        a = np.asarray(img, dtype=np.uint8)
        out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    labels = None if targets is None else torch.tensor(targets, dtype=torch.int64)
    return ImageData(torch.from_numpy(out), labels, len(classes) if classes else None,
                     f"folder:{root}", tuple(classes) if classes else None)


# ---------------------------------------------------------------------------------------- transforms

def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) → uint8 (N, C, size, size), bilinear with antialiasing, in chunks."""
    if x.shape[-2:] == (size, size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], size, size), dtype=torch.uint8)
    for s in range(0, x.shape[0], _RESIZE_CHUNK):
        y = F.interpolate(x[s:s + _RESIZE_CHUNK].float(), size=(size, size), mode="bilinear",
                          align_corners=False, antialias=True)
        out[s:s + _RESIZE_CHUNK] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _set_channels(x: torch.Tensor, channels: Optional[int]) -> torch.Tensor:
    """uint8 (N, C, H, W) → (N, channels, H, W): repeat gray, or RGB → ITU-R 601 luma."""
    if channels is None or channels == x.shape[1]:
        return x
    if channels == 3:
        return x.repeat(1, 3, 1, 1)
    w = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
    return (x.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image along W with probability 1/2, independently; draws only from ``generator``.

    Args:
        x: (B, C, H, W) any dtype, on any device.
        generator: the only source of randomness (one uniform draw per image, on its device).
    Returns:
        a new (B, C, H, W) tensor: image b is ``x[b].flip(-1)`` or ``x[b]``.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor (B, C, H, W), got {got}")
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


# ---------------------------------------------------------------------------------------- entry point

def load_dataset(name: str, data_dir=None, split: str = "train", image_size: Optional[int] = None,
                 channels: Optional[int] = None) -> ImageData:
    """Load a dataset by name (one of ``DATASETS``) as uint8 ``ImageData``; see the module docstring.

    Args:
        name: "fashion-mnist", "mnist", "cifar10", "digits" or "folder".
        data_dir: where the files are. Default for fashion-mnist: ``fashion_mnist_dir()``; needed for
            mnist, cifar10 and folder; ignored by digits.
        split: "train" or "test". digits has no split: both give all 1,797 images. folder has none
            either: point ``data_dir`` at the split's directory (both values read it as is).
        image_size: side S of the square output in pixels (bilinear, antialiased); None keeps it.
        channels: 1 or 3 to convert, None to keep the dataset's own.
    Returns:
        ImageData with images (N, C, S, S) uint8; labels and class names where the dataset has them.
    """
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    split, image_size, channels = _check_split(split), _check_size(image_size), _check_channels(channels)
    if name == "folder":
        if data_dir is None:
            raise DatasetError("dataset 'folder' needs data_dir (--data-dir): a directory of images")
        return load_folder(data_dir, image_size, channels)
    if name == "digits":
        images, labels = _load_digits()
        class_names = tuple(str(k) for k in range(10))
    elif name == "cifar10":
        if data_dir is None:
            raise DatasetError("dataset 'cifar10' needs data_dir (--data-dir): a directory holding "
                               "cifar-10-batches-py/ (torchvision's python layout)")
        images, labels, class_names = _load_cifar10(Path(data_dir), split)
    elif name == "fashion-mnist":
        images, labels = _load_idx_pair(Path(data_dir or fashion_mnist_dir()), split, "Fashion-MNIST", "FashionMNIST",
                                        how_to_get=f"install them with `{FASHION_MNIST_INSTALL}`, or point "
                                                   f"--data-dir (data_dir) or ${FASHION_MNIST_ENV} at the idx files")
        class_names = FASHION_MNIST_CLASSES
    else:
        if data_dir is None:
            raise DatasetError("dataset 'mnist' needs data_dir (--data-dir): a directory holding the four idx files "
                               "train-/t10k-images-idx3-ubyte[.gz] and train-/t10k-labels-idx1-ubyte[.gz]")
        images, labels = _load_idx_pair(Path(data_dir), split, "MNIST", "MNIST",
                                        how_to_get="copy the four MNIST idx files (train-/t10k-images-idx3-ubyte.gz, "
                                                   "train-/t10k-labels-idx1-ubyte.gz) there")
        class_names = tuple(str(k) for k in range(10))
    if len(images) == 0:  # training would divide by it, FID and reconstruction need images
        raise DatasetError(f"{name} {split} holds no images" + (f" (in {data_dir})" if data_dir else ""))
    if labels.size and labels.max() >= len(class_names):
        raise DatasetError(f"{name} labels must lie in [0, {len(class_names)}), found {int(labels.max())}")
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x[:, None] if x.ndim == 3 else x
    if x.shape[-1] != x.shape[-2] and image_size is None:
        raise DatasetError(f"{name} images are {x.shape[-2]}×{x.shape[-1]}, not square; pass image_size")
    x = _set_channels(_resize(x, image_size or x.shape[-1]), channels)
    return ImageData(x, torch.from_numpy(labels.astype(np.int64)), len(class_names), f"{name}/{split}", class_names)
