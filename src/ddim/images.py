"""Small image helpers: float tensors in [-1, 1] -> uint8, a grid of samples, PNG files.

Shared by training (sample grids), the sampling CLI and the evaluation code, so none of them needs
torchvision. Pillow is only imported when a file is written.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["to_uint8", "make_grid", "save_grid", "save_images"]


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
    if images.shape[1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
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
              padding: int = 2) -> Path:
    """Write ``make_grid(images, nrow, padding)`` as a PNG (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _to_pil(make_grid(images, nrow, padding)).save(path)
    return path


def save_images(images: torch.Tensor, directory: Union[str, Path], start: int = 0,
                prefix: str = "") -> list[Path]:
    """Write each image of a (N, C, H, W) batch as ``{prefix}{start+i:06d}.png`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x = images.cpu() if images.dtype == torch.uint8 else to_uint8(images)
    paths = []
    for i in range(x.shape[0]):
        p = directory / f"{prefix}{start + i:06d}.png"
        _to_pil(x[i]).save(p)
        paths.append(p)
    return paths
