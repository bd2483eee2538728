"""Classifier-free guidance on a class-conditional checkpoint: class agreement and FID against the weight w,
for each way of keeping x̂₀ in range.

Why: clamping x̂₀ while keeping the raw guided ε̂ (the old `ddim sample` default) makes the two halves of
eq. 12 disagree, and at w ≥ 1 the samples saturate. The rules compared:

    plain       no x̂₀ transform (the DDIM paper's update)
    clip        x̂₀ clamped to [−1, 1], ε̂ kept as the model gave it
    clip-eps    x̂₀ clamped to [−1, 1], ε̂ re-derived from the clamped x̂₀ (what DDPM's posterior mean does)
    threshold   Imagen's dynamic thresholding (quantile 0.995, no upper cap on s), ε̂ re-derived

Per cell: n samples with labels i mod 10, sample i from seed (seed, i) (the same x_T in every cell), --solver
(default DDIM, with η = --eta, default 0) on the --spacing grid (default uniform) of --steps steps.
Class agreement is the fraction the shipped Fashion-MNIST classifier assigns to the asked class (with its 95 %
Wilson interval; also per class); FID, precision and recall use the shipped feature extractor against the
Fashion-MNIST test split.
Two first rows, "real test" and "real train", give the classifier's accuracy on real images (the test split,
and the first n training images): what a sampler that reproduced the data would reach.

    python benchmarks/guidance.py --n 500 --weights 0,0.5,1,2,3 --rules clip-eps \
        --json benchmarks/results/guidance_cpu.json --picture docs/guidance.png
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ddim.allocator import keep_freed_memory
from ddim.checkpoint import BUNDLED_MODEL, load_checkpoint
from ddim.evaluate import class_agreement, evaluate_images, load_classifier, reference_stats
from ddim.generate import RunOptions, class_labels, generate
from ddim.guidance import GuidanceOptions
from ddim.images import save_grid
from ddim.samplers import SOLVERS, SampleOptions

RULES = {
    "plain": {},
    "clip": {"clip": 1.0},
    "clip-eps": {"clip": 1.0, "eps_from_clipped_x0": True},
    "threshold": {"threshold": 0.995, "threshold_max": float("inf"), "eps_from_clipped_x0": True},
}


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _agreement(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """A row's class-agreement fields: the fraction, its 95 % Wilson interval, n, and per class."""
    a = class_agreement(predicted, labels, num_classes)
    return {"n": a["n"], "class_agreement": a["value"], "class_agreement_95": [a["low"], a["high"]],
            "per_class": a["per_class"]}


def _interval(row: dict) -> str:
    low, high = row["class_agreement_95"]
    return f"{low:.3f}-{high:.3f}"


def _real_rows(classifier, n: int, data_dir) -> list[dict]:
    """The classifier's accuracy on real images, overall and per class: the test split and n training images."""
    from ddim.data import load_dataset

    rows = []
    for split, limit in (("test", None), ("train", n)):
        data = load_dataset("fashion-mnist", data_dir, split=split)
        labels = data.labels[:limit]
        predicted = torch.cat([classifier(data.to_float(slice(i, min(i + 1000, len(labels))))).argmax(1)
                               for i in range(0, len(labels), 1000)])
        rows.append({"rule": f"real {split}", **_agreement(predicted, labels, data.num_classes)})
    return rows


def _write(args, rules, rows) -> None:
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({
        "command": "python benchmarks/guidance.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "checkpoint": args.checkpoint, "rules": {r: {k: str(v) for k, v in RULES[r].items()} for r in rules},
        "rows": rows}, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--n", type=int, default=500, help="samples per cell")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM's η")
    p.add_argument("--solver", default="ddim", choices=list(SOLVERS),
                   help="ddim.samplers.SOLVERS, e.g. dpmpp-2m (`ddim sample`'s default)")
    p.add_argument("--spacing", default="uniform", help="the step grid (ddim.timesteps.SPACINGS)")
    p.add_argument("--live", action="store_true", help="the checkpoint's live weights instead of its EMA (a run or step "
                   "directory: exports such as the bundled model hold the EMA only)")
    p.add_argument("--weights", type=_floats, default=[0, 0.5, 1, 2, 3], help="guidance weights w")
    p.add_argument("--rules", default="plain,clip,clip-eps,threshold", help=f"any of {', '.join(RULES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: ddim.data's)")
    p.add_argument("--json", default=None, help="write the rows here")
    p.add_argument("--picture", default=None,
                   help="PNG: one row per w (first rule), 10 columns = classes 0..9, the same x_T down each column")
    args = p.parse_args()
    rules = args.rules.split(",")
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        p.error(f"unknown rule(s) {unknown}; allowed: {', '.join(RULES)}")

    keep_freed_memory()  # as the `ddim` command does: no page-fault storm from re-mapped activations
    torch.set_grad_enabled(False)
    model, schedule, config = load_checkpoint(args.checkpoint, ema=not args.live)
    classifier, _ = load_classifier()
    reference = reference_stats("fashion-mnist", split="test", data_dir=args.data_dir)
    labels = class_labels(range(args.n), model.config.num_classes)
    rows, picture = _real_rows(classifier, args.n, args.data_dir), []
    print(f"{'rule':>10} {'w':>5} {'agree':>6} {'95 % interval':>13} {'FID':>7} {'prec':>5} {'rec':>5} {'min':>6} "
          f"{'max':>6} {'s':>6}")
    for row in rows:
        print(f"{row['rule']:>10} {'':>5} {row['class_agreement']:>6.3f} {_interval(row):>13}   (n = {row['n']}; "
              "per class "
              f"{' '.join('-' if a is None else f'{a:.2f}' for a in row['per_class'])})")
    for rule in rules:
        for w in args.weights:
            t0 = time.perf_counter()
            x = generate(model, schedule, args.n,
                         SampleOptions(steps=args.steps, eta=args.eta, spacing=args.spacing,
                                       prediction=config.prediction, solver=args.solver, **RULES[rule]),
                         GuidanceOptions(w=w), RunOptions(seed=args.seed, batch_size=args.batch_size))
            seconds = time.perf_counter() - t0
            shown = x.clamp(-1, 1)  # what a PNG shows
            predicted = classifier(shown).argmax(1)
            m = evaluate_images(shown, reference)
            row = {"rule": rule, "w": w, "solver": args.solver, "steps": args.steps, "eta": args.eta,
                   "spacing": args.spacing,
                   **_agreement(predicted, labels, model.config.num_classes),
                   "fid": m["fid"], "fid_std": m.get("fid_std"), "precision": m["precision"], "recall": m["recall"],
                   "min": float(x.min()), "max": float(x.max()), "seconds": round(seconds, 1)}
            rows.append(row)
            print(f"{rule:>10} {w:>5g} {row['class_agreement']:>6.3f} {_interval(row):>13} {m['fid']:>7.2f} "
                  f"{m['precision']:>5.2f} {m['recall']:>5.2f} "
                  f"{row['min']:>6.2f} {row['max']:>6.2f} {seconds:>6.0f}", flush=True)
            if rule == rules[0]:
                picture.append(shown[:10])
            if args.json:  # after every cell: a stopped run keeps what it measured
                _write(args, rules, rows)
    if args.picture:
        save_grid(torch.cat(picture), args.picture, nrow=10)


if __name__ == "__main__":
    main()
