"""Exponential moving average of a model's weights (the weights DDPM samples from).

After the n-th update (n = 0, 1, …) the average moves toward the live weights θ with

    d_n = min(decay, (1 + n) / (10 + n)),     θ_ema ← d_n θ_ema + (1 − d_n) θ

The warm-up term (1+n)/(10+n) (TensorFlow's ExponentialMovingAverage with num_updates) keeps the
average from being dominated by the random initialisation in short runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(decay: float, num_updates: int) -> float:
    """d_n = min(decay, (1 + n)/(10 + n)) for the n-th update (n counted from 0)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


class EMA(nn.Module):
    """Holds ``model``, a frozen copy of the tracked network, and ``num_updates``, the update count.

    ``num_updates`` is a plain int (so the decay is computed on the host without a device sync); it
    travels in ``state_dict()`` as extra state, and checkpoints store it in their JSON.

    Args:
        model: the network to track (a copy is taken; the original is not modified).
        decay: the long-run decay, 0 <= decay < 1 (DDPM used 0.9999).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must lie in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.model = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average one step toward ``model``'s current weights; returns the decay used."""
        d = ema_decay(self.decay, self.num_updates)
        live = _unwrap(model)
        averaged = list(self.model.parameters())
        current = [p.detach() for p in live.parameters()]
        if len(averaged) != len(current):
            raise ValueError(f"EMA tracks {len(averaged)} parameters but the model has {len(current)}")
        torch._foreach_lerp_(averaged, current, 1.0 - d)  # avg + (1-d)(p - avg) = d·avg + (1-d)·p
        for avg, b in zip(self.model.buffers(), live.buffers()):
            avg.copy_(b)  # buffers (if any) are not averaged, just followed
        self.num_updates += 1
        return d

    def get_extra_state(self):
        return {"num_updates": self.num_updates}

    def set_extra_state(self, state) -> None:
        self.num_updates = int(state["num_updates"])

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
