"""Keep freed memory inside the process (glibc), for the command line's CPU work.

A UNet's activations at batch 64–200 on 28×28 images are tens of MB each. glibc serves blocks that large
with mmap and returns them to the OS on free, so every layer of every step faults its output's pages in
again, and on the CPU that kernel time is a large share of sampling. Raising the mmap and trim thresholds
keeps those blocks in the heap for reuse (the measurements: benchmarks/RESULTS.md, "CPU allocator
setting"). The price is that freed memory up to the thresholds stays with the process until it exits.

Only the ``ddim`` command does this (a library must not change its host's allocator); set
DDIM_KEEP_FREED_MEMORY=0, or any of glibc's own MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, to
leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # glibc <malloc.h>
_LIMIT = 1 << 30   # blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap is kept
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB; returns whether they were set (False off
    glibc/Linux, when DDIM_KEEP_FREED_MEMORY=0, or when the user set glibc's own variables)."""
    if os.environ.get("DDIM_KEEP_FREED_MEMORY", "1") == "0" or any(v in os.environ for v in _USER_SETTINGS):
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt   # glibc's soname; musl and others have no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
