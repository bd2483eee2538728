"""Process-group helpers for torchrun: which rank am I, and the few collectives the trainer needs.

A run is distributed when the environment has WORLD_SIZE > 1 (torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT). The backend is nccl on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_info_from_env", "init_distributed", "shutdown", "all_reduce_sum", "any_rank",
           "barrier", "resolve_device"]


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


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def dist_info_from_env() -> DistInfo:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (absent: a single process)."""
    info = DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if info.world_size < 1 or not 0 <= info.rank < info.world_size:
        raise ValueError(f"bad torchrun environment: RANK={info.rank}, WORLD_SIZE={info.world_size}")
    return info


def resolve_device(device: str, info: DistInfo) -> torch.device:
    """"auto" → cuda if available, else cpu; under torchrun on CUDA each rank takes cuda:LOCAL_RANK."""
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for but CUDA is not available")
        if device == "cuda":
            device = f"cuda:{info.local_rank if info.distributed else torch.cuda.current_device()}"
    return torch.device(device)


# A gloo group beside an nccl one, for host-side flags (``any_rank``): None when the default group is
# gloo already (CPU runs) or was not created here.
_HOST_GROUP = None


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (no-op for a single process or when already joined)."""
    global _HOST_GROUP
    if not info.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=info.rank,
                            world_size=info.world_size)
    if device.type == "cuda":
        try:  # every rank calls this in the same order, as new_group requires
            _HOST_GROUP = dist.new_group(backend="gloo")
        except Exception:  # noqa: BLE001  no gloo: any_rank uses the device all-reduce (one sync per step)
            _HOST_GROUP = None


def shutdown() -> None:
    global _HOST_GROUP
    _HOST_GROUP = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of x over ranks (x itself for a single process)."""
    if info.distributed:
        x = x.clone()
        dist.all_reduce(x)
    return x


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on any rank (so all ranks stop at the same step)."""
    if not info.distributed:
        return flag
    # Called every step: over nccl, ``.item()`` would make the host wait for the GPU's whole queue each
    # step; the gloo host group answers from CPU memory without touching the GPU.
    on_host = _HOST_GROUP is not None
    t = torch.tensor([1.0 if flag else 0.0], device="cpu" if on_host else device)
    dist.all_reduce(t, group=_HOST_GROUP)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
