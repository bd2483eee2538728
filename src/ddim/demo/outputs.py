"""Where the demo's pictures go: one temporary folder per server, removed when it stops, a fresh subfolder per
result (a page may still show the previous one), and nothing written anywhere else.

The grid PNG is written by ``ddim.images.save_grid``, the same call `ddim sample --out` makes, so the
downloaded file is the one the command writes.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..images import make_grid, save_gif, save_grid

__all__ = ["Scratch", "FRAME_MS"]

FRAME_MS = 200    # animation frame time
HOLD_FRAMES = 4   # the last frame of a trajectory shows this many times as long


class Scratch:
    """A temporary folder (under ``root``, default the system's) for every file a demo server writes."""

    def __init__(self, root: Optional[Path] = None):
        self.root = Path(tempfile.mkdtemp(prefix="ddim-demo-", dir=root))

    def folder(self) -> Path:
        """A new empty folder for one result."""
        return Path(tempfile.mkdtemp(dir=self.root))

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def grid(self, folder: Path, name: str, images: torch.Tensor, nrow: Optional[int] = None) -> Path:
        """``images`` (N, C, H, W) in [−1, 1] as the grid PNG `ddim sample` writes."""
        return save_grid(images, folder / name, nrow=nrow)

    def animation(self, folder: Path, name: str, frames: Sequence[torch.Tensor], nrow: Optional[int] = None,
                  hold: int = HOLD_FRAMES) -> Path:
        """A looping GIF, one grid of ``nrow`` columns per (N, C, H, W) frame; the last one held ``hold`` times."""
        grids = [make_grid(f, nrow) for f in frames]
        return save_gif(grids + grids[-1:] * (hold - 1), folder / name, duration_ms=FRAME_MS)

    def text(self, folder: Path, name: str, text: str) -> Path:
        path = folder / name
        path.write_text(text)
        return path
