"""How far bf16 moves the images: the fast path (bf16 autocast) against float32, same seeds, the bundled model.

    python benchmarks/bf16_drift.py --device cpu --n 32 --json benchmarks/results/bf16_drift_cpu.json

On the CPU the bf16 rows run whatever the CPU is (autocast works everywhere; only its speed needs AMX or
AVX512-BF16). Prints, per (steps, η), the mean and max |difference| on images clamped to [-1, 1], the share of
pixels off by more than 1 and 4 grey levels (2/255 and 8/255 on [-1, 1]) and the 99.9th percentile: the
numbers the tolerances in tests/samplers/fastpaths.py rest on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
import warnings
from pathlib import Path

import torch

from ddim.checkpoint import load_checkpoint
from ddim.generate import RunOptions, generate
from ddim.samplers import SampleOptions
from ddim.samplers import fast as fast_mod

SETTINGS = ((20, 0.0), (50, 0.0), (50, 1.0))


def drift(model, schedule, prediction: str, n: int, steps: int, eta: float, device: str, batch: int) -> dict:
    # the model's own parameterisation and `ddim sample`'s x̂_0 rule, unguided (one forward per step)
    opts = SampleOptions(steps=steps, eta=eta, prediction=prediction, clip=1.0, eps_from_clipped_x0=True)
    run = RunOptions(seed=1, batch_size=batch, device=device)
    want = generate(model, schedule, n, opts, run=run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fast path's one note about the CPU
        got = generate(model, schedule, n, opts, run=dataclasses.replace(run, fast=True))
    d = (got.clamp(-1, 1) - want.clamp(-1, 1)).abs().flatten()
    return {"steps": steps, "eta": eta, "mean": d.mean().item(), "max": d.max().item(),
            "share_over_1_level": (d > 2 / 255).float().mean().item(),
            "share_over_4_levels": (d > 8 / 255).float().mean().item(),
            "q999": d.sort().values[int(0.999 * (d.numel() - 1))].item()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.device == "cpu":
        fast_mod.cpu_native_bf16 = lambda: True  # measure bf16's rounding, whichever CPU this is
    model, schedule, config = load_checkpoint(device=args.device)
    rows = [drift(model.eval(), schedule, config.prediction, args.n, s, e, args.device, args.batch)
            for s, e in SETTINGS]
    print("| steps | η | mean | max | > 1 level | > 4 levels | 99.9 % |\n|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['steps']} | {r['eta']} | {r['mean']:.4f} | {r['max']:.3f} | {r['share_over_1_level']:.2%} | "
              f"{r['share_over_4_levels']:.3%} | {r['q999']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"command": "python benchmarks/bf16_drift.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if v is not None), "rows": rows, "n": args.n,
            "device": args.device, "machine": platform.processor() or platform.machine(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
