"""Train the Fashion-MNIST classifier whose penultimate features ddim uses for FID, KID and
precision/recall (``ddim.evaluate.FeatureExtractor``), and write it to ``ddim/assets``.

    OMP_NUM_THREADS=1 python benchmarks/train_classifier.py            # ~5 min on one CPU core

Writes ``<out>.safetensors`` (fp32 weights and BatchNorm buffers) and ``<out>.json`` (config, seed,
schedule, the command, date, training time, per-epoch log and the accuracy on all 10,000 test
images). The test split is only measured, never used to choose anything. Deterministic for a given
seed, thread count and torch build.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddim.data import load_dataset
from ddim.evaluate.features import CLASSIFIER_WEIGHTS, FashionClassifier, file_sha256

_PAD = 2   # random translation of up to ±2 pixels


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shift (±_PAD px, background-filled) and horizontal flip of a float batch (B, 1, 28, 28)
    in [-1, 1]; clothes are left-right symmetric enough that a mirror is still the same class."""
    b, _, h, w = x.shape
    padded = F.pad(x, (_PAD,) * 4, value=-1.0)                      # -1 is the black background
    dy, dx = (torch.randint(0, 2 * _PAD + 1, (2, b), generator=generator))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]              # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]              # (B, 1, W)
    out = padded[torch.arange(b)[:, None, None], 0, rows, cols][:, None]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)


@torch.no_grad()
def accuracy(model, data, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over all of ``data``."""
    model.eval()
    correct = 0
    for s in range(0, len(data), batch_size):
        x = data.to_float(slice(s, s + batch_size)).contiguous(memory_format=torch.channels_last)
        correct += int((model(x).argmax(1) == data.labels[s:s + batch_size]).sum())
    return correct / len(data)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=CLASSIFIER_WEIGHTS, help="weights file (.safetensors)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: the Debian package's)")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)                                    # weight init
    g = torch.Generator().manual_seed(args.seed)                    # shuffling and augmentation
    train, test = (load_dataset("fashion-mnist", args.data_dir, split=s) for s in ("train", "test"))

    model = FashionClassifier(args.channels, args.feature_dim, train.num_classes, args.dropout)
    model = model.to(memory_format=torch.channels_last)             # ~30% faster convs on CPU
    steps_per_epoch = len(train) // args.batch_size                 # drop the ragged last batch
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch)
    log, t0 = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order, loss_sum = torch.randperm(len(train), generator=g), 0.0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            x = augment(train.to_float(idx), g).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), train.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach())
        log.append({"epoch": epoch + 1, "train_loss": round(loss_sum / steps_per_epoch, 5),
                    "test_accuracy": accuracy(model, test), "elapsed_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(log[-1]), flush=True)
    train_time = time.perf_counter() - t0

    from ddim.checkpoint import _save_tensors
    args.out.parent.mkdir(parents=True, exist_ok=True)
    _save_tensors(model.state_dict(), args.out)
    os.chmod(args.out, 0o644)   # package data: readable by everyone who installs it
    record = {
        "config": model.config, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
        "optimizer": f"SGD(momentum=0.9, nesterov, weight_decay={args.weight_decay}), OneCycleLR(max_lr={args.lr})",
        "augmentation": f"random shift ±{_PAD} px (background fill), horizontal flip p=0.5",
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0]] + (argv or sys.argv[1:])),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "train_time_s": round(train_time, 1), "threads": args.threads, "torch": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_accuracy": accuracy(model, test), "test_images": len(test),
        "weights_sha256": file_sha256(args.out), "log": log,
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"test accuracy {record['test_accuracy']:.4f} after {train_time:.0f} s -> {args.out}")
    return record


if __name__ == "__main__":
    main()
