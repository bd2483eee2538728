"""The command line's allocator setting (ddim.allocator): it keeps freed blocks in the process, which
shows as page faults: re-allocating a 64 MB buffer faults its pages in every time without it, and only
once or twice with it."""

import os
import subprocess
import sys

import pytest

from subprocesses import ddim_env


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):   # no such name on this platform
        return False


GLIBC = _glibc()

PROBE = """
import resource, sys, torch
from ddim.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
torch.empty(16 << 20).fill_(1.0)                 # first touch, not counted
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.empty(16 << 20).fill_(1.0)             # 64 MB, freed at once
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**ddim_env(), **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    applied, kept = _faults("on")
    _, plain = _faults("off")
    pages = 20 * (64 << 20) // 4096                    # 327,680 pages if every buffer is faulted in anew
    assert applied == "True"
    # measured: 327,700 without; 16,384 alone and 49,152 beside a loaded test run with (1–3 buffers)
    assert plain > pages // 2 and kept <= pages // 4, (plain, kept)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
@pytest.mark.parametrize("env", [{"DDIM_KEEP_FREED_MEMORY": "0"}, {"MALLOC_TRIM_THRESHOLD_": "131072"}])
def test_opt_outs_leave_the_allocator_alone(env):
    assert _faults("on", **env)[0] == "False"
