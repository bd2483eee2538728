"""Which device a run uses: one resolution rule for sampling, evaluation, checkpoint loading and training."""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["resolve_device", "DEVICES_HELP"]

DEVICES_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(device: Union[str, torch.device], info: Optional[object] = None) -> torch.device:
    """"auto" → cuda if available, else cpu; "cuda" → the current GPU, or under torchrun (``info`` a
    ``DistInfo`` with world_size > 1) each rank's cuda:LOCAL_RANK. A device that is not there is an error
    naming it, before any model or data is moved."""
    text = str(device)
    index = text[len("cuda:"):] if text.startswith("cuda:") else None
    if text not in ("auto", "cpu", "cuda") and not (index is not None and index.isdigit()):
        raise ValueError(f"unknown device {text!r}; allowed: {DEVICES_HELP}")
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} was asked for but CUDA is not available; use --device cpu (device='cpu')")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise ValueError(f"device {text!r} was asked for but this machine has {torch.cuda.device_count()} GPU(s)")
        if text == "cuda":
            distributed = info is not None and getattr(info, "world_size", 1) > 1
            text = f"cuda:{info.local_rank if distributed else torch.cuda.current_device()}"
    return torch.device(text)
