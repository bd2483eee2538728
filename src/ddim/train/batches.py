"""Deterministic data order and per-step randomness, both pure functions of (seed, step).

The training stream is an endless concatenation of epochs; epoch e visits the dataset in the order
``epoch_permutation(seed, e, N)``. Global sample position p = step · B + j (j < B) is item
perm_e[p mod N] of epoch e = p // N. Everything a step draws (timesteps, noise, label dropout, flips)
comes from ``step_generator(seed, step)``. Hence resuming at a step needs only the step number, and a
run split over ranks sees exactly the global batches of a single-process run.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from ..transfer import to_device

__all__ = ["derive_seed", "epoch_permutation", "batch_indices", "step_generator", "flip_mask", "apply_flips"]

# Distinct streams derived from the one run seed, so changing one use never shifts another.
STREAM_EPOCH, STREAM_STEP, STREAM_SAMPLES, STREAM_INIT = 1, 2, 3, 4


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from (seed, *keys) via numpy's SeedSequence (well mixed, order sensitive)."""
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(derive_seed(seed, STREAM_EPOCH, epoch))
    return torch.randperm(n, generator=g)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """(n,) int64: the order in which epoch ``epoch`` visits a dataset of n items."""
    if n < 1:
        raise ValueError(f"the dataset is empty (n={n})")
    return _permutation(int(seed), int(epoch), int(n))


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """(batch_size,) int64 dataset indices of global batch ``step`` (0-based), crossing epochs if needed."""
    pos = torch.arange(step * batch_size, (step + 1) * batch_size, dtype=torch.int64)
    epochs = pos // n
    out = torch.empty_like(pos)
    for e in epochs.unique().tolist():  # at most two epochs unless batch_size > n
        sel = epochs == e
        out[sel] = epoch_permutation(seed, e, n)[pos[sel] % n]
    return out


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for everything random in global batch ``step``."""
    return torch.Generator().manual_seed(derive_seed(seed, STREAM_STEP, step))


def flip_mask(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) bool, True with probability 1/2: which images to mirror horizontally."""
    return torch.rand(batch_size, generator=generator, dtype=torch.float64) < 0.5


def apply_flips(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror x[i] (…, W) along the width where mask[i]; x is (B, C, H, W)."""
    return torch.where(to_device(mask, x.device)[:, None, None, None], x.flip(-1), x)
