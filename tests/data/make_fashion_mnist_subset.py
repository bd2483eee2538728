"""Rebuild tests/data/fashion-mnist-subset/ from a full Fashion-MNIST copy (what the tests use when the full set
is not installed): the first 500 test-split and the first 300 train-split images with their labels, in the
dataset's own idx format, gzipped without a time stamp so the files are byte-for-byte reproducible.

    python tests/data/make_fashion_mnist_subset.py [/usr/share/datasets/fashion-mnist]
"""

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from ddim.data import fashion_mnist_dir, load_idx

COUNTS = {"t10k": 500, "train": 300}   # idx prefix -> images kept


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else fashion_mnist_dir()
    out = Path(__file__).parent / "fashion-mnist-subset"
    out.mkdir(exist_ok=True)
    for prefix, n in COUNTS.items():
        images = load_idx(src / f"{prefix}-images-idx3-ubyte.gz")[:n].astype(np.uint8)
        labels = load_idx(src / f"{prefix}-labels-idx1-ubyte.gz")[:n].astype(np.uint8)
        for name, header, data in ((f"{prefix}-images-idx3-ubyte.gz", struct.pack(">IIII", 0x803, n, 28, 28), images),
                                   (f"{prefix}-labels-idx1-ubyte.gz", struct.pack(">II", 0x801, n), labels)):
            with gzip.GzipFile(out / name, "wb", mtime=0) as f:
                f.write(header + data.tobytes())


if __name__ == "__main__":
    main()
