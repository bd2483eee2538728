"""Host → accelerator copies that never make the host wait.

A plain ``x.to("cuda")`` of an ordinary (pageable) CPU tensor makes the host wait until the GPU has
finished everything queued before the copy (torch synchronizes the stream). In a training loop that
happens at every step, for every per-step tensor (batch indices, t, ε, masks, ᾱ), and the GPU then idles
while the host launches the next step. ``to_device`` copies through pinned memory with
``non_blocking=True`` instead: same values, no wait; torch's caching host allocator recycles the pinned
buffer only after the copy has run.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(x: torch.Tensor, device) -> torch.Tensor:
    """``x`` on ``device`` with identical values; CPU → CUDA without a host sync, otherwise ``x.to``.

    An ``x`` that is already pinned is copied from as is (``pin_memory`` returns it unchanged): the copy
    is asynchronous, so the caller must not write to ``x`` until the copy has run (e.g. until the stream
    that reads the result has been synchronized). While a CUDA graph is being captured on the current
    stream the copy is a plain ``x.to(device)`` (a pinned staging buffer would have to outlive the graph).
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu" and not _capturing():
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
