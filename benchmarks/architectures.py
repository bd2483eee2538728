"""Candidate UNets for 28×28 Fashion-MNIST on a CPU: parameters, FLOPs per forward, and measured speed.

For each candidate: GFLOPs of one forward (torch's FlopCounterMode, batch 1), sampling throughput
(images/s of eval-mode forwards at --sample-batch under inference_mode, what one DDIM step costs) and
training throughput (images/s of forward + backward + AdamW step at --train-batch). Candidates are timed
in interleaved rounds (A B C …, A B C …) and the median round is reported, so a load that comes and goes
hits all of them alike. Achieved GFLOP/s = FLOPs × images/s (training: × 3 for forward + backward).

    python benchmarks/architectures.py --json benchmarks/results/architectures_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddim.nn import PRESETS, UNet, count_parameters

# name -> UNetConfig overrides of the "small" preset (28×28×1, 10 classes + null label).
CANDIDATES = {
    "small (bundled today)": {},
    "c16 (1,2,4) r2 a7": dict(base_channels=16, channel_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(7,)),
    "c24 (1,2,2) r1 a7": dict(base_channels=24, channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(7,)),
    "p2 c32 (1,3) r2 a7": dict(patch_size=2, base_channels=32, channel_mult=(1, 3), num_res_blocks=2,
                               attn_resolutions=(7,)),
    "p2 c48 (1,2) r1 a7": dict(patch_size=2, base_channels=48, channel_mult=(1, 2), num_res_blocks=1,
                               attn_resolutions=(7,)),
    "p2 c32 (1,2) r3 a14,7": dict(patch_size=2, base_channels=32, channel_mult=(1, 2), num_res_blocks=3,
                                  attn_resolutions=(14, 7)),
}
# the bundled network since 2026-12-03: "p2 c32 (1,3) r2 a7" with ADM's scale-shift norm
CANDIDATES["p2 c32 (1,3) r2 a7 ss"] = {**CANDIDATES["p2 c32 (1,3) r2 a7"], "scale_shift": True}


def build(overrides: dict) -> UNet:
    torch.manual_seed(0)
    return UNet(**{**PRESETS["small"].to_dict(), **overrides})


def gflops(model: UNet) -> float:
    x, t, y = torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y)
    return counter.get_total_flops() / 1e9


def sample_rate(model: UNet, batch: int, calls: int) -> float:
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    t, y = torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, 11, (batch,), generator=g)
    with torch.inference_mode():
        model(x, t, y)  # warm-up: oneDNN primitives for these shapes
        start = time.perf_counter()
        for _ in range(calls):
            model(x, t, y)
    return batch * calls / (time.perf_counter() - start)


def train_rate(model: UNet, opt: torch.optim.Optimizer, batch: int, steps: int) -> float:
    model.train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    t, y = torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, 11, (batch,), generator=g)

    def step():
        loss = (model(x, t, y) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample-batch", type=int, default=64)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--calls", type=int, default=5, help="forwards per sampling measurement")
    p.add_argument("--steps", type=int, default=3, help="train steps per training measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--only", default=None,
                   help="candidate names separated by ';' (names hold commas; default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    names = [n.strip() for n in args.only.split(";")] if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; allowed: {'; '.join(CANDIDATES)}")
    models = {n: build(CANDIDATES[n]) for n in names}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4) for n, m in models.items()}
    rates = {n: {"sample": [], "train": []} for n in names}
    for _ in range(args.rounds):
        for n in names:
            rates[n]["sample"].append(sample_rate(models[n], args.sample_batch, args.calls))
            rates[n]["train"].append(train_rate(models[n], opts[n], args.train_batch, args.steps))
    rows = []
    print(f"{'candidate':<24} {'params':>8} {'GFLOPs':>7} {'sample img/s':>13} {'GFLOP/s':>8} "
          f"{'train img/s':>12} {'GFLOP/s':>8}")
    for n in names:
        gf = gflops(models[n])
        s, tr = statistics.median(rates[n]["sample"]), statistics.median(rates[n]["train"])
        row = {"name": n, "config": {k: list(v) if isinstance(v, tuple) else v for k, v in CANDIDATES[n].items()},
               "parameters": count_parameters(models[n]), "gflops_per_forward": round(gf, 4),
               "sample_images_per_s": round(s, 1), "sample_gflop_per_s": round(gf * s, 1),
               "train_images_per_s": round(tr, 1), "train_gflop_per_s": round(3 * gf * tr, 1)}
        rows.append(row)
        print(f"{n:<24} {row['parameters'] / 1e6:>7.2f}M {gf:>7.3f} {s:>13.1f} {gf * s:>8.1f} {tr:>12.1f} "
              f"{3 * gf * tr:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python benchmarks/architectures.py " + " ".join(__import__("sys").argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
