"""Export a training run as the package's bundled model, with its training record.

    python scripts/bundle_model.py RUN_DIR --command "ddim train ..." [--out src/ddim/assets/fashion_mnist_small]

Writes OUT/config.json (the run's frozen config), OUT/ema.safetensors (EMA weights in fp16),
OUT/training.json (steps, data, command, final loss, throughput, date, machine) and OUT/manifest.json,
through ``ddim.checkpoint.export_checkpoint``. The record is read from the run itself: the latest
checkpoint's step and metrics.jsonl, so nothing in it is typed by hand except the command.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

from ddim.checkpoint import BUNDLED_MODEL, export_checkpoint, find_checkpoint, load_checkpoint, read_json
from ddim.nn import count_parameters


def training_record(run_dir: Path, command: str, device: str, loader=load_checkpoint) -> dict:
    """What a user needs to judge and reproduce the bundled model, from ``run_dir``'s own files
    (``loader``: ``load_checkpoint``, or ``load_noisy_classifier`` for a classifier run)."""
    ckpt = find_checkpoint(run_dir)
    config = read_json(ckpt / "config.json")
    step = int(config["step"])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    metrics = [m for m in metrics if "loss" in m and m["step"] <= step]
    last = [m["loss"] for m in metrics if m["step"] > step - 500]  # the last 500 steps: one noisy value says little
    model, _, _ = loader(ckpt)
    return {
        "steps": step,
        "steps_planned": config["train"]["steps"],
        "batch_size": config["train"]["batch_size"],
        "images_seen": step * config["train"]["batch_size"],
        "data": config["data"],
        "command": command,
        "device": device,
        "final_loss_mean_last_500_steps": round(statistics.fmean(last), 5),
        "loss_log": [[m["step"], round(m["loss"], 5)] for m in metrics],
        "images_per_s_median": round(statistics.median(m["images_per_s"] for m in metrics), 2),
        **training_seconds(metrics, config["train"]["batch_size"]),
        "date": datetime.fromtimestamp((ckpt / "config.json").stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "parameters": count_parameters(model),
        "weights": "EMA, stored as float16",
    }


def training_seconds(metrics: list, batch_size: int) -> dict:
    """The time the logged steps took, from metrics.jsonl: each log window's steps × batch / its images/s.

    A run may span sessions (stopped and resumed), so the span between its files' dates says nothing;
    this counts optimizer steps only (no checkpoint writes, pauses or steps redone after a kill), at the
    speed each window actually had, i.e. slowed by whatever shared the cores. ``at_median_speed`` is the
    same steps at the run's median images/s: the time on an otherwise idle machine."""
    done, logged = 0, 0.0
    for m in metrics:
        logged += (m["step"] - done) * batch_size / m["images_per_s"]
        done = m["step"]
    median = statistics.median(m["images_per_s"] for m in metrics)
    return {"train_seconds_logged": round(logged), "train_seconds_at_median_speed": round(done * batch_size / median)}


def class_agreement(checkpoint: Path, n: int, steps: int, seed: int = 0) -> float:
    """Fraction of class-conditional samples (η = 0, x̂₀ clipped to [-1, 1] and ε̂ re-derived from it, as
    `ddim sample` does; no guidance; labels i % 10) that the shipped Fashion-MNIST classifier (92.41 % test
    accuracy) assigns to the requested class."""
    from ddim.evaluate import class_agreement as agreement, load_classifier
    from ddim import SampleOptions
    from ddim.generate import RunOptions, class_labels, generate

    model, schedule, config = load_checkpoint(checkpoint)
    images = generate(model, schedule, n, SampleOptions(steps=steps, prediction=config.prediction, clip=1.0,
                                                        eps_from_clipped_x0=True), run=RunOptions(seed=seed))
    classifier, _ = load_classifier()
    with torch.no_grad():
        predicted = classifier(images.clamp(-1, 1)).argmax(1)
    return agreement(predicted, class_labels(range(n), 10), 10)["value"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--command", required=True, help="the ddim train command line that made the run")
    p.add_argument("--device", required=True, help="what it trained on, e.g. 'CPU, 2 cores (AMD EPYC)'")
    p.add_argument("--out", type=Path, default=BUNDLED_MODEL)
    p.add_argument("--quality-n", type=int, default=1000, help="samples for the class-agreement check")
    args = p.parse_args()
    record = training_record(args.run_dir, args.command, args.device)
    out = export_checkpoint(args.run_dir, args.out, dtype=torch.float16, record=record)
    if args.quality_n:  # measured on the exported fp16 weights: what users get
        record["class_agreement"] = {"value": round(class_agreement(out, args.quality_n, 50), 4),
                                     "n": args.quality_n, "steps": 50, "eta": 0, "guidance": 0, "clip": 1.0,
                                     "eps_from_clipped_x0": True, "seed": 0}
        out = export_checkpoint(args.run_dir, args.out, dtype=torch.float16, record=record)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB): step {record['steps']}, "
          f"final loss {record['final_loss_mean_last_500_steps']}, class agreement {record.get('class_agreement')}")


if __name__ == "__main__":
    main()
