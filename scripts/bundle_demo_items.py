"""Write the Fashion-MNIST test items that `ddim demo` ships (src/ddim/assets/fashion_mnist_items/): the first
item of each class in the test split, as 28×28 greyscale PNGs named t10k-INDEX-classK.png.

    python scripts/bundle_demo_items.py [DATA_DIR]   # default: the Fashion-MNIST folder ddim reads
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from ddim.data import load_dataset

OUT = Path(__file__).resolve().parents[1] / "src" / "ddim" / "assets" / "fashion_mnist_items"


def main(data_dir=None) -> None:
    data = load_dataset("fashion-mnist", data_dir, split="test")
    OUT.mkdir(parents=True, exist_ok=True)
    for k in range(data.num_classes):
        i = int((data.labels == k).nonzero()[0, 0])
        Image.fromarray(data.images[i, 0].numpy(), "L").save(OUT / f"t10k-{i:04d}-class{k}.png", optimize=True)
        print(f"t10k item {i}: class {k} ({data.class_names[k]})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
