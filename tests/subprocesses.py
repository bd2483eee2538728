"""Running ddim in child processes: `python -m ddim ...` and torchrun, with the package importable and
one intra-op thread (the same as the in-process reference runs, see tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ddim_env() -> dict:
    """The environment for child processes (the package importable, one stable thread count)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_ddim(args, **kw) -> subprocess.CompletedProcess:
    """`python -m ddim ARGS`, output captured as text."""
    return subprocess.run([sys.executable, "-m", "ddim", *args], capture_output=True, text=True, env=ddim_env(),
                          timeout=300, **kw)


def torchrun(args, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=NPROC ARGS` on the CPU (gloo), output captured as text.
    ARGS: a script and its arguments, or ["-m", module, ...]."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ddim_env(), timeout=timeout)
