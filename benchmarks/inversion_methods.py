"""Guided inversion on the bundled model: reconstruction error of every method at several guidance weights,
with model calls and time per image, and class edits of test images with each method.

Reconstruction: the first --n test images (their own classes), inverted for weight w and sampled back
under w on the same S-step grid; error = per-dimension MSE on the [0, 1] scale. NFE = network forward
passes per image over inversion + regeneration (a guided step is 2; null-label's backward passes are not
counted, its time is). Edits: the first --edit-n test images, inverted with their class, regenerated
toward class (y + 5) mod 10 at --edit-w; "hit" is the fraction the shipped classifier assigns to the new
class, "dist" the MSE to the source image ([0, 1] scale).

    python benchmarks/inversion_methods.py --n 256 --steps 50 --weights 0,1,3,5 --cfgpp-lambdas 0.2,0.5,1 \
        --json benchmarks/results/inversion_methods_cpu.json --picture docs/inversion_edits.png
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
from ddim.data import load_dataset
from ddim.evaluate import load_classifier
from ddim.images import save_grid
from ddim.inversion import METHODS, invert_image, regenerate


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image MSE on the [0, 1] scale of images in [-1, 1]."""
    return ((a.double() - b.double()) / 2).pow(2).flatten(1).mean(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--n", type=int, default=256, help="test images to reconstruct")
    p.add_argument("--null-n", type=int, default=None,
                   help="images for null-label inversion, the costly one (default: --n); its rows say their n")
    p.add_argument("--null-init", default="cond", choices=["cond", "null"],
                   help="where null-label's optimisation starts: the class embedding (default) or the ∅ row")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--weights", default="0,1,3,5", help="guidance weights w")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--edit-n", type=int, default=100, help="test images to edit (0: no edits)")
    p.add_argument("--edit-w", type=float, default=3.0)
    p.add_argument("--cfgpp-lambdas", default="0.2,0.5,1",
                   help="CFG++'s λ in [0, 1], in place of --weights for method cfgpp (its λ guides far harder than "
                        "the same number as a CFG weight); the edit uses the last")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--picture", default=None, help="PNG of edits: sources, then one row per method (8 images)")
    args = p.parse_args()

    keep_freed_memory()
    model, schedule, config = load_checkpoint(args.checkpoint)
    test = load_dataset("fashion-mnist", args.data_dir, "test")
    methods = args.methods.split(",")
    rows, edits, picture = [], [], []

    def write():
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({
                "command": "python benchmarks/inversion_methods.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "checkpoint": args.checkpoint, "steps": args.steps, "null_init": args.null_init, "reconstruction": rows, "edits": edits},
                indent=1) + "\n")

    idx = torch.arange(min(args.n, len(test)))
    print(f"{'method':<15} {'w':>4} {'n':>4} {'MSE':>10} {'NFE/img':>8} {'s/img':>7}")
    weights, lambdas = [float(v) for v in args.weights.split(",")], [float(v) for v in args.cfgpp_lambdas.split(",")]
    cells = [(m, w) for w in weights for m in methods if m != "cfgpp"] + [("cfgpp", lam) for lam in lambdas
                                                                         if "cfgpp" in methods]
    for method, w in cells:
        n = min(args.null_n or args.n, args.n) if method == "null-label" and w else len(idx)
        x0, y = test.to_float(idx[:n]), test.labels[idx[:n]]
        t0 = time.perf_counter()
        inv = invert_image(model, schedule, x0, y, method=method, w=w, steps=args.steps, null_init=args.null_init,
                           prediction=config.prediction, generator=torch.Generator().manual_seed(0))
        calls = inv.model_calls
        back = regenerate(model, schedule, inv, prediction=config.prediction)
        seconds = time.perf_counter() - t0
        calls += (2 if method == "edict" else 1) * (2 if w or method == "cfgpp" else 1) * args.steps  # regeneration
        err = _mse(back, x0)
        rows.append({"method": method, "w": w, "n": len(x0), "mse": float(err.mean()), "mse_max": float(err.max()),
                     "nfe_per_image": calls, "seconds_per_image": seconds / len(x0)})
        print(f"{method:<15} {w:>4g} {n:>4} {err.mean():>10.3g} {calls:>8} {seconds / len(x0):>7.3f}", flush=True)
        write()
    if args.edit_n:
        judge, _ = load_classifier()
        idx = torch.arange(min(args.edit_n, len(test)))
        x0, y = test.to_float(idx), test.labels[idx]
        target = (y + 5) % 10
        picture.append(x0[:8])
        for method in methods:
            n = min(args.null_n or len(x0), len(x0)) if method == "null-label" else len(x0)
            w = lambdas[-1] if method == "cfgpp" else args.edit_w
            inv = invert_image(model, schedule, x0[:n], y[:n], method=method, w=w, steps=args.steps,
                               null_init=args.null_init,
                               prediction=config.prediction, generator=torch.Generator().manual_seed(0))
            out = regenerate(model, schedule, inv, labels=target[:n], prediction=config.prediction).float().clamp(-1, 1)
            with torch.no_grad():
                hit = float((judge(out).argmax(1) == target[:n]).float().mean())
            dist = float(_mse(out, x0[:n]).mean())
            edits.append({"method": method, "w": w, "n": n, "hit": hit, "distance_mse": dist})
            print(f"edit {method:<15} hit {hit:.3f}  distance {dist:.4f}", flush=True)
            picture.append(out[:8])
            write()
        if args.picture:
            save_grid(torch.cat(picture), args.picture, nrow=8)


if __name__ == "__main__":
    main()
