"""The Quick start's main job, `ddim sample --out PNG` (64 images), end to end, for several checkpoints
(each with the arguments of its time) interleaved in one run: each round runs every checkpoint once, in a
fresh process, so the times include starting Python, importing torch, loading the model and writing the
PNG, as a user sees it.

    python benchmarks/main_job.py --checkpoint "old=/work/runs/old_model::--solver ddim --spacing uniform --steps 50" \
        --checkpoint new=src/ddim/assets/fashion_mnist_small --rounds 4 --json benchmarks/results/main_job_cpu.json

(the previous model with the previous default, DDIM at 50 steps, against today's `ddim sample`). With
`--tree LABEL=PATH` that label runs the code of another checkout (`PYTHONPATH=PATH/src python -m ddim`, e.g. a
`git worktree` of an earlier commit): an earlier release's command as it ran then, beside today's.

Prints per-round wall times, the medians and each checkpoint's median against the first one's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional


def ddim_command() -> list[str]:
    """The `ddim` console script next to this Python, else `python -m ddim` (the same entry point)."""
    script = Path(sys.executable).parent / "ddim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ddim"]


def run_once(checkpoint: str, out: Path, extra: list[str], tree: Optional[Path] = None) -> float:
    """Wall seconds of one `ddim sample` in a fresh process (from the checkout `tree` when given)."""
    program, env = ddim_command(), None
    if tree is not None:
        program, env = [sys.executable, "-m", "ddim"], {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [*program, "sample", "--checkpoint", checkpoint, "--out", str(out), "--quiet", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", action="append", required=True, metavar="LABEL=DIR[::ARGS]",
                   help="a checkpoint to time, with its label and optionally its own `ddim sample` arguments after "
                        "'::' (e.g. 'old=DIR::--solver ddim --steps 50', the command as it was); repeat; the first "
                        "is the baseline")
    p.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH",
                   help="run LABEL's command from the checkout at PATH (its src/ first on PYTHONPATH); repeat")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("extra", nargs="*", help="more `ddim sample` arguments after --, e.g. -- --steps 20")
    args = p.parse_args()
    pairs = [c.split("=", 1) for c in args.checkpoint]
    if any(len(c) != 2 for c in pairs):
        p.error("--checkpoint takes LABEL=DIR[::ARGS]")
    own = {label: spec.split("::", 1)[1].split() if "::" in spec else [] for label, spec in pairs}
    pairs = [(label, spec.split("::", 1)[0]) for label, spec in pairs]
    trees = {label: Path(path) for label, path in (t.split("=", 1) for t in args.tree if "=" in t)}
    if len(trees) != len(args.tree) or not set(trees) <= set(own):
        p.error("--tree takes LABEL=PATH with the LABEL of a --checkpoint")
    if any(not (path / "src" / "ddim").is_dir() for path in trees.values()):
        p.error("--tree PATH must be a ddim checkout (PATH/src/ddim)")
    times: dict[str, list[float]] = {label: [] for label, _ in pairs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label, ckpt in (pairs if r % 2 == 0 else pairs[::-1]):  # alternate the order: no slot bias
                times[label].append(run_once(ckpt, Path(tmp) / f"{label}.png", [*own[label], *args.extra],
                                             trees.get(label)))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    base = statistics.median(times[pairs[0][0]])
    print("\n| checkpoint | wall s (rounds) | median s | speed-up vs " + pairs[0][0] + " |\n|---|---|---:|---:|")
    for label, _ in pairs:
        med = statistics.median(times[label])
        print(f"| {label} | {', '.join(f'{t:.1f}' for t in times[label])} | {med:.1f} | {base / med:.2f}× |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "checkpoints": dict(pairs), "arguments": own,
            "trees": {k: str(v) for k, v in trees.items()}, "seconds": times,
            "median_seconds": {k: statistics.median(v) for k, v in times.items()},
            "threads": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
