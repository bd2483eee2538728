"""Randomness, always passed in: one ``torch.Generator`` for a batch, or one per sample.

With one generator per sample (the EDM habit), sample i's x_T and every noise draw in its chain come
from its own generator, so it depends only on that generator's seed: not on the batch size, not on
its position in the batch. ``generators(seed, indices)`` derives those seeds from (seed, i).
"""

from __future__ import annotations

from collections import abc
from typing import Iterable, Sequence, Union

import numpy as np
import torch

__all__ = ["Generators", "generators", "randn"]

Generators = Union[torch.Generator, Sequence[torch.Generator], None]


def generators(seed: int, indices: Iterable[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample index i, seeded from (seed, i) through numpy's SeedSequence.

    Args:
        seed: the run's seed (any non-negative integer).
        indices: the global indices of the samples in this batch, e.g. ``range(64, 128)``.
        device: where the generators draw (must match the sample's device).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    out = []
    for i in indices:
        state = np.random.SeedSequence([int(seed), int(i)]).generate_state(1, dtype=np.uint64)[0]
        out.append(torch.Generator(device=device).manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF))
    return out


def randn(shape, generator: Generators = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, …).

    ``generator`` may be None (global RNG), one ``torch.Generator`` for the whole batch, or a
    sequence of B generators, one per sample (each draws its sample's slice).
    """
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        return _draw(shape, generator, device, dtype)
    if not isinstance(generator, abc.Sequence) or not all(isinstance(g, torch.Generator) for g in generator):
        raise ValueError(f"generator must be a torch.Generator, a sequence of them (one per sample) or None, got "
                         f"{type(generator).__name__} (for a seed use torch.Generator().manual_seed(seed) or "
                         "ddim.generators(seed, indices))")
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} per-sample generators for a batch of {shape[0]}")
    return torch.stack([_draw(shape[1:], g, device, dtype) for g in generator])


def _draw(shape, generator, device, dtype) -> torch.Tensor:
    """Draw on the generator's own device, then move: a CPU generator gives the same numbers for a
    CUDA sample as for a CPU one (torch refuses a CPU generator with device="cuda")."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
