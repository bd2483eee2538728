"""Export a `ddim train-classifier` run as the package's bundled noisy classifier, with its training record
and its accuracy against the noise level t on the Fashion-MNIST test split.

    python scripts/bundle_classifier.py RUN_DIR --command "ddim train-classifier ..." --device "CPU, 2 cores"

Writes OUT/config.json, OUT/ema.safetensors (fp16), OUT/manifest.json and OUT/training.json (the record of
``bundle_model.training_record`` plus "accuracy_vs_t": [[t, accuracy], ...] measured on the exported weights).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bundle_model import training_record
from ddim.checkpoint import BUNDLED_NOISY_CLASSIFIER, export_checkpoint, load_noisy_classifier
from ddim.data import load_dataset
from ddim.train import classifier_accuracy

T_GRID = (0, 50, 100, 200, 300, 400, 500, 600, 700, 800, 900, 999)


def accuracy_vs_t(checkpoint: Path, data_dir=None, limit: int = 10_000) -> list:
    """[[t, top-1 accuracy], ...] on the first ``limit`` test images, noised with one fixed ε per image."""
    classifier, schedule, _ = load_noisy_classifier(checkpoint)
    test = load_dataset("fashion-mnist", data_dir, "test")
    idx = torch.arange(min(limit, len(test)))
    acc = classifier_accuracy(classifier, schedule, test.to_float(idx), test.labels[idx], T_GRID)
    return [[t, round(a, 4)] for t, a in zip(T_GRID, acc)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--command", required=True, help="the ddim train-classifier command line that made the run")
    p.add_argument("--device", required=True, help="what it trained on")
    p.add_argument("--out", type=Path, default=BUNDLED_NOISY_CLASSIFIER)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    record = training_record(args.run_dir, args.command, args.device, loader=load_noisy_classifier)
    out = export_checkpoint(args.run_dir, args.out, dtype=torch.float16, record=record)
    record["accuracy_vs_t"] = accuracy_vs_t(out, args.data_dir)  # on the fp16 weights users get
    out = export_checkpoint(args.run_dir, args.out, dtype=torch.float16, record=record)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB): step {record['steps']}, accuracy vs t {record['accuracy_vs_t']}")


if __name__ == "__main__":
    main()
