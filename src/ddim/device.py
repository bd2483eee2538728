"""Which device a run uses and which process it is: one resolution rule for sampling, evaluation, checkpoint
loading and training, and the rank information torchrun (or a user) puts in the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import torch

__all__ = ["resolve_device", "DEVICES_HELP", "DistInfo", "dist_info_from_env", "env_int", "cpu_native_bf16"]

DEVICES_HELP = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class DistInfo:
    """rank in [0, world_size); local_rank picks the GPU on a node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_info_from_env() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
    info = DistInfo(env_int("RANK", 0), env_int("WORLD_SIZE", 1), env_int("LOCAL_RANK", 0))
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"bad torchrun environment: RANK={info.rank}, WORLD_SIZE={info.world_size}")
    return info


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


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX tiles or AVX512-BF16), where oneDNN's bf16
    convolutions beat float32 ones; elsewhere bf16 is emulated and slower. False when torch cannot tell."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # torch's probes are private: absent from other builds
        return False
