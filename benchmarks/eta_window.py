"""Where along the grid does η = 1's class-agreement lead over η = 0 come from? DDIM with one η above a noise
level τ and another at and below it, on the same x_T, scored by the shipped Fashion-MNIST classifier.

A cell "hi:lo:tau" runs the grid's steps from t > τ with η = hi and those from t ≤ τ with η = lo (a per-step
η, as ``ddim.sample`` takes it). "0:0:0" is plain DDIM (η = 0 throughout) and "1:1:0" DDPM-like η = 1.
Per cell: n samples with labels i mod 10, sample i from seed (seed, i), the x̂₀ rule of
``scripts/bundle_model.py`` (clamped to [−1, 1], ε̂ re-derived), no guidance; the uniform grid of --steps steps.

    python benchmarks/eta_window.py --n 1000 --cells 0:0:0,1:0:750,1:0:500,1:0:250,0:1:500 \
        --json benchmarks/results/eta_window_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ddim.checkpoint import BUNDLED_MODEL, load_checkpoint
from ddim.evaluate import class_agreement, load_classifier
from ddim.generate import RunOptions, class_labels, generate
from ddim.samplers import SampleOptions
from ddim.timesteps import timesteps


def _cell(text: str) -> tuple[float, float, int]:
    hi, lo, tau = text.split(":")
    return float(hi), float(lo), int(tau)


def per_step_eta(grid: list[int], eta_hi: float, eta_lo: float, tau: int) -> list[float]:
    """(S,) η for each step of ``grid`` (descending t): eta_hi where t > tau, eta_lo from there on."""
    return [eta_hi if t > tau else eta_lo for t in grid]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cells", default="0:0:0,1:0:750,1:0:500,1:0:250,0:1:500", help="hi:lo:tau,...")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cells = [_cell(c) for c in args.cells.split(",")]
    model, schedule, config = load_checkpoint(args.checkpoint)
    if not config.model.num_classes:
        raise SystemExit(f"{args.checkpoint} is unconditional; class agreement needs a class-conditional model")
    model.eval()
    classifier, _ = load_classifier()
    grid = timesteps(schedule, args.steps).tolist()
    rows = []
    print(f"{'eta t>tau':>10} {'eta t<=tau':>11} {'tau':>5} {'steps hi':>9} {'agree':>6} {'95 % interval':>13} "
          f"{'s':>6}")
    labels = class_labels(range(args.n), config.model.num_classes)
    for hi, lo, tau in cells:
        t0 = time.perf_counter()
        images = generate(model, schedule, args.n,
                          SampleOptions(steps=args.steps, eta=per_step_eta(grid, hi, lo, tau),
                                        prediction=config.prediction, clip=1.0, eps_from_clipped_x0=True),
                          run=RunOptions(batch_size=args.batch_size))
        with torch.no_grad():
            predicted = classifier(images.clamp(-1, 1)).argmax(1)
        a = class_agreement(predicted, labels, config.model.num_classes)
        row = dict(eta_above=hi, eta_below=lo, tau=tau, steps_above=sum(1 for t in grid if t > tau),
                   class_agreement=a["value"], class_agreement_95=[a["low"], a["high"]], per_class=a["per_class"],
                   seconds=time.perf_counter() - t0)
        rows.append(row)
        print(f"{hi:>10g} {lo:>11g} {tau:>5} {row['steps_above']:>9} {a['value']:>6.3f} "
              f"{a['low']:>6.3f}-{a['high']:.3f} {row['seconds']:>6.0f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/eta_window.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "checkpoint": args.checkpoint,
            "n": args.n, "steps": args.steps, "grid": grid, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
