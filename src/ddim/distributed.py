"""Process-group helpers for torchrun: joining the group, and the few collectives training and evaluation need.

A run is distributed when the environment has WORLD_SIZE > 1 (torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR and MASTER_PORT). The backend is nccl on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from .device import DistInfo, dist_info_from_env, env_int, resolve_device  # noqa: F401  (re-exported)

__all__ = ["DistInfo", "dist_info_from_env", "init_distributed", "shutdown", "all_reduce_sum", "any_rank",
           "barrier", "resolve_device", "check_timeout", "RENDEZVOUS_TIMEOUT", "MAX_RENDEZVOUS_TIMEOUT",
           "MAX_WORLD_SIZE"]


# A gloo group beside an nccl one, for host-side flags (``any_rank``): None when the default group is
# gloo already (CPU runs) or was not created here.
_HOST_GROUP = None


RENDEZVOUS_TIMEOUT = 600.0
"""Seconds a process waits for the others to join (``--dist-timeout``); collectives keep torch's own limit."""
MAX_RENDEZVOUS_TIMEOUT = 7 * 86400.0  # a week: longer is a typo (Python's timedelta overflows near 1e14 s)
MAX_WORLD_SIZE = 1 << 16  # processes; torch's TCPStore takes a C int, and no run of this project needs more


def check_timeout(timeout) -> float:
    """``timeout`` as seconds if it is a number in (0, MAX_RENDEZVOUS_TIMEOUT], else a ValueError naming it
    (checked whether or not the run is distributed: the refusal follows the value, not the environment)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_RENDEZVOUS_TIMEOUT:
        raise ValueError(f"the rendezvous timeout (--dist-timeout) must be a number of seconds in (0, "
                         f"{MAX_RENDEZVOUS_TIMEOUT:,.0f}], got {timeout!r}")
    return float(timeout)


def init_distributed(info: DistInfo, device: torch.device, timeout: float = RENDEZVOUS_TIMEOUT,
                     note: Optional[Callable[[str], None]] = None) -> None:
    """Join the process group (no-op for a single process or when already joined).

    Started by hand (RANK and WORLD_SIZE set, no torchrun agent), the processes meet at MASTER_ADDR:MASTER_PORT:
    rank 0 waits there for the others, the others for rank 0, each at most ``timeout`` seconds, then a
    ``TimeoutError`` says who was missing. ``note`` is told what is awaited before the wait starts.
    Under torchrun the agent has already gathered the processes.
    """
    global _HOST_GROUP
    check_timeout(timeout)
    if not info.distributed or dist.is_initialized():
        return
    if info.world_size > MAX_WORLD_SIZE:
        raise ValueError(f"WORLD_SIZE={info.world_size} is more processes than a run can have (allowed: 1 to "
                         f"{MAX_WORLD_SIZE:,})")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun: its store is there already
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
    else:
        _rendezvous(info, backend, timeout, note)
    if device.type == "cuda":
        try:  # every rank calls this in the same order, as new_group requires
            _HOST_GROUP = dist.new_group(backend="gloo")
        except Exception:  # noqa: BLE001  no gloo: any_rank uses the device all-reduce (one sync per step)
            _HOST_GROUP = None


def _rendezvous(info: DistInfo, backend: str, timeout: float, note) -> None:
    addr, port = os.environ.get("MASTER_ADDR"), env_int("MASTER_PORT", -1)
    who = f"rank {info.rank} of {info.world_size}"
    if not addr or not 0 < port < 65536:
        raise ValueError(f"{who} (RANK, WORLD_SIZE) needs MASTER_ADDR and MASTER_PORT (1..65535) to meet the other "
                         "processes; start it with torchrun, or unset RANK and WORLD_SIZE to run in one process")
    if note is not None:
        note(f"{who}: waiting up to {timeout:g} s for the other processes at {addr}:{port} (--dist-timeout)")
    deadline = time.monotonic() + timeout
    advice = (f"start all {info.world_size} processes (torchrun --nproc_per_node={info.world_size} does), or unset RANK "
              "and WORLD_SIZE to run in one process; --dist-timeout sets this limit")
    if info.rank != 0 and not _port_answers(addr, port, deadline):  # before torch's client, whose retries log noise
        raise TimeoutError(f"{who}: nothing answered at {addr}:{port} (rank 0's rendezvous) within {timeout:g} s; "
                           f"{advice}")
    try:
        left = datetime.timedelta(seconds=max(deadline - time.monotonic(), 1.0))
        store = dist.TCPStore(addr, port, info.world_size, info.rank == 0, timeout=left, wait_for_workers=True)
        dist.init_process_group(backend, store=store, rank=info.rank, world_size=info.world_size)
    except RuntimeError as e:  # torch's DistStoreError / DistNetworkError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TimeoutError(f"{who}: the other processes did not join at {addr}:{port} within {timeout:g} s "
                           f"({first}); {advice}") from None


def _port_answers(addr: str, port: int, deadline: float) -> bool:
    """Whether a TCP connection to addr:port succeeds before ``deadline`` (retried every half second)."""
    while True:
        try:
            with socket.create_connection((addr, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


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
