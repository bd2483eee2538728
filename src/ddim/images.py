"""Small image helpers: float tensors in [-1, 1] -> uint8, a grid of samples, PNG files.

Shared by training (sample grids), the sampling CLI and the evaluation code, so none of them needs
torchvision. Pillow is only imported when a file is written.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from .atomic import atomic_write
from .files import regular_file

__all__ = ["check_channels", "to_uint8", "make_grid", "save_grid", "save_images", "load_images", "open_image", "center_square",
           "image_header", "save_gif", "check_image_path", "IMAGE_SUFFIXES", "MAX_PIXELS"]

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".webp": "WEBP"}
MAX_PIXELS = 16_000_000  # per input image: 4000×4000; larger files are refused before decoding


def check_image_path(path: Union[str, Path], allowed=None) -> str:
    """The Pillow format for an output path's suffix, or a ValueError naming the suffix and what is allowed
    (checked before any work, so a typo does not cost a whole sampling run)."""
    suffixes = allowed or tuple(IMAGE_SUFFIXES)
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        raise ValueError(f"cannot write {path}: unknown image extension {suffix or '(none)'!r}; "
                         f"allowed: {', '.join(suffixes)}")
    return IMAGE_SUFFIXES[suffix]


def check_channels(channels: int, what: str = "images") -> None:
    """Refuse, before any sampling, images that no picture file can hold (an image has 1 or 3 channels; a
    latent-diffusion UNet's 4-channel latents are not one)."""
    if channels not in (1, 3):
        raise ValueError(f"{what} must have 1 or 3 channels to be written as a picture, got {channels}")


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Map float images in [-1, 1] to uint8 in [0, 255] (values outside are clamped).

    Args:
        x: (..., C, H, W) float tensor, any device.
    Returns:
        uint8 tensor of the same shape on the CPU.
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise ValueError(f"images must be a floating-point tensor, got {type(x).__name__}")
    # Round half up on the [0, 255] scale, the convention of torchvision's save_image.
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).floor().to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, padding: int = 2,
              pad_value: int = 0) -> torch.Tensor:
    """Tile a batch into one image.

    Args:
        images: (N, C, H, W) float in [-1, 1] or uint8; C is 1 or 3.
        nrow: images per row (default: ceil(sqrt(N)), a near-square grid).
        padding: pixels between (and around) tiles.
        pad_value: uint8 value of the padding.
    Returns:
        (C, rows*(H+p)+p, nrow*(W+p)+p) uint8 tensor.
    """
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be a non-empty (N, C, H, W) tensor, got shape "
                         f"{tuple(getattr(images, 'shape', ()))}")
    check_channels(images.shape[1])
    x = images.cpu() if images.dtype == torch.uint8 else to_uint8(images)
    n, c, h, w = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), pad_value,
                      dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid


def _to_pil(image: torch.Tensor):
    from PIL import Image

    arr = image.permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: Optional[int] = None,
              padding: int = 2, follow_symlinks: bool = False) -> Path:
    """Write ``make_grid(images, nrow, padding)`` as an image file, atomically (parent folders are created;
    the format follows the suffix, see ``check_image_path``; ``follow_symlinks``: see ``atomic_write``)."""
    path = Path(path)
    fmt = check_image_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = _to_pil(make_grid(images, nrow, padding))
    return atomic_write(path, lambda f: pil.save(f, format=fmt), follow_symlinks=follow_symlinks)


def save_images(images: torch.Tensor, directory: Union[str, Path], start: int = 0,
                prefix: str = "") -> list[Path]:
    """Write each image of a (N, C, H, W) batch as ``{prefix}{start+i:06d}.png`` in ``directory`` (each file
    atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x = images.cpu() if images.dtype == torch.uint8 else to_uint8(images)
    paths = []
    for i in range(x.shape[0]):
        pil = _to_pil(x[i])
        paths.append(atomic_write(directory / f"{prefix}{start + i:06d}.png", lambda f: pil.save(f, format="PNG"),
                                  fsync=False))
    return paths


@contextlib.contextmanager
def _opened(path: Path):
    """The Pillow image of ``path``, header read, pixels not yet decoded; every way a file can fail to be
    a readable image within ``MAX_PIXELS`` (also while the ``with`` body decodes it) is one error naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        regular_file(path)  # a pipe or a device would block or never end
        with warnings.catch_warnings():
            # Pillow warns from 89 M pixels; MAX_PIXELS refuses far fewer, so its warning would only add a line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_PIXELS:  # refused from the header, before decoding
                raise ValueError(f"{path} is too large: {img.width}×{img.height} pixels; at most {MAX_PIXELS:,} are read")
            yield img
    except FileNotFoundError:
        raise FileNotFoundError(f"image file {path} does not exist") from None
    except Image.DecompressionBombError:  # Pillow's own guard, in open() for the largest headers
        raise ValueError(f"{path} is too large: over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; at most "
                         f"{MAX_PIXELS:,} are read") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path} is not a readable image ({type(e).__name__})") from None


def image_header(path: str | Path) -> tuple[str, tuple[int, int], int]:
    """(mode, (width, height), frames) of an image file, from its header; refuses what ``open_image`` does
    before decoding (not a regular file, not an image, over ``MAX_PIXELS``)."""
    with _opened(Path(path)) as img:
        return img.mode, img.size, getattr(img, "n_frames", 1)


def open_image(path: str | Path):
    """An image file's first frame, decoded, with 16-bit grayscale scaled to 8 bits ("L"; converting it
    would clip every value above 255 to white), and one note per such change.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a regular file, not a readable image, or over ``MAX_PIXELS`` pixels (each naming it).
    """
    from PIL import Image

    path, notes = Path(path), []
    with _opened(path) as img:
        frames = getattr(img, "n_frames", 1)
        img.load()
    if frames > 1:
        notes.append(f"{path}: used the first of its {frames} frames")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        wide = np.asarray(img, dtype=np.float64)
        notes.append(f"{path}: scaled {img.mode} from the 16-bit range to 8 bits")
        img = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
    return img, notes


def center_square(img, size: int):
    """Resize a PIL image so its shorter side is ``size`` (bilinear, antialiased), then crop the central
    size×size."""
    from PIL import Image

    w, h = img.size
    if min(w, h) != size:
        scale = size / min(w, h)
        img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_images(paths, image_size: int, channels: int) -> tuple[torch.Tensor, list[str]]:
    """Read image files (PNG, JPEG, any size and mode) as a model's input.

    Each image is read with ``open_image``, converted to grayscale ("L", channels=1) or RGB (channels=3),
    its shorter side resized to ``image_size`` and the centre square cropped (as ``ddim.data`` does for
    image folders).

    Returns:
        (N, channels, image_size, image_size) float32 in [-1, 1], and one note per change made
        (conversion, resize), for the user to see.
    """

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    mode = "L" if channels == 1 else "RGB"
    out, notes = [], []
    for path in map(Path, paths):
        img, changes = open_image(path)
        notes += changes
        if img.mode != mode:
            notes.append(f"{path}: converted {img.mode} to {mode}")
            img = img.convert(mode)
        if img.size != (image_size, image_size):
            notes.append(f"{path}: resized {img.size[0]}x{img.size[1]} to {image_size}x{image_size} (centre crop)")
            img = center_square(img, image_size)
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(image_size, image_size, channels)
        out.append(x.permute(2, 0, 1).float() / 127.5 - 1)
    if not out:
        raise ValueError("no images given")
    return torch.stack(out), notes


def save_gif(frames: list, path: Union[str, Path], duration_ms: int = 120, follow_symlinks: bool = False) -> Path:
    """Write uint8 (C, H, W) frames as a looping GIF, atomically (``follow_symlinks``: see ``atomic_write``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil = [_to_pil(f) for f in frames]
    return atomic_write(path, lambda f: pil[0].save(f, format="GIF", save_all=True, append_images=pil[1:],
                                                    duration=duration_ms, loop=0), follow_symlinks=follow_symlinks)
