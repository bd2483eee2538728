"""Fashion-MNIST for the tests: the full set where installed, else the small subset the repository ships.

Decided once, at import (``conftest.py`` imports this first), from the default the library itself reads
($DDIM_FASHION_MNIST_DIR, else the Debian package's folder). Without the full set, the variable is pointed
at tests/data/fashion-mnist-subset for the whole run, subprocesses included, so every test that reads a few
real images still runs; tests that need the full set carry ``needs_full_fmnist`` and skip, naming the
install command.
"""

import gzip
import os
import struct
from pathlib import Path

import pytest

from ddim.data import FASHION_MNIST_ENV, FASHION_MNIST_INSTALL, fashion_mnist_dir

FMNIST_SUBSET = Path(__file__).parent / "data" / "fashion-mnist-subset"
FULL_COUNTS = {"train": 60_000, "t10k": 10_000}


def _idx_count(stem: Path) -> int:
    """The item count in the header of idx file ``stem``[.gz] (0 if neither is there or readable)."""
    for path, opener in ((stem.with_name(stem.name + ".gz"), gzip.open), (stem, open)):
        try:
            with opener(path, "rb") as f:
                return struct.unpack(">I", f.read(8)[4:8])[0]
        except (OSError, struct.error):
            continue
    return 0


# By the counts in the headers, not by the folder: pytest-xdist workers inherit the variable set below.
HAVE_FULL_FMNIST = all(_idx_count(fashion_mnist_dir() / f"{p}-{k}-idx{d}-ubyte") == n
                       for p, n in FULL_COUNTS.items() for k, d in (("images", 3), ("labels", 1)))
if not HAVE_FULL_FMNIST:
    os.environ[FASHION_MNIST_ENV] = str(FMNIST_SUBSET)

needs_full_fmnist = pytest.mark.skipif(
    not HAVE_FULL_FMNIST, reason=f"needs the full Fashion-MNIST (the shipped subset has 500 test / 300 train "
                                 f"images): `{FASHION_MNIST_INSTALL}`, or set {FASHION_MNIST_ENV}")
