"""The prepared GPU check: everything CUDA in the project, in one command, on one H100/H200 in < 8 minutes.

Steps (each a subprocess with its own time limit, so one failure or hang cannot cost the rest):
    env        device, driver, torch, diffusers; the measured bf16 matmul peak (TFLOP/s) the others divide by
    tests      the CUDA tests (pytest -m gpu)
    sampling   benchmarks/sampling.py: ours vs diffusers' DDIMPipeline on the same weights, CIFAR-10 UNet,
               50 steps, batch 256 and 1024, fp32 / bf16 / the fast path; its rows also give the fast
               path's max |difference| from our fp32 images
    training   benchmarks/training.py: batch 128, CIFAR-10 preset, fp32 / bf16 / fastest, ours vs diffusers
and writes gpu_check.json (every step's status, time, output tail and parsed results) and gpu_check.md
(the tables) into --out. ``--dry-run`` runs the same steps at toy sizes on the CPU (tests/test_gpu_check.py
runs it, so the script cannot rot).

    bash scripts/gpu_check.sh                      # on the GPU machine: installs the wheels, then this
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check_dry
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, time limit in s, argv after `python`): the real run (sizes of the issue) and the dry run (toy sizes).
# The real limits add up to 470 s: a step that runs over (torch.compile is the slow part) loses only its table.
REAL = [
    ("tests", 90, ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]),
    ("sampling", 250, ["benchmarks/sampling.py", "--device", "cuda", "--preset", "cifar10", "--batch", "256,1024",
                       "--steps", "50", "--precision", "fp32,bf16,fast", "--repeats", "2"]),
    ("training", 130, ["benchmarks/training.py", "--device", "cuda", "--preset", "cifar10", "--batch", "128",
                       "--modes", "fp32,bf16,fastest", "--steps", "30", "--warmup", "5", "--repeats", "3"]),
]
DRY = [
    ("tests", 300, ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/samplers/test_fast.py",
                    "tests/samplers/test_loop.py"]),
    ("sampling", 300, ["benchmarks/sampling.py", "--device", "cpu", "--preset", "small", "--batch", "2",
                       "--steps", "2", "--precision", "fp32,fast", "--repeats", "1"]),
    ("training", 300, ["benchmarks/training.py", "--device", "cpu", "--batch", "2", "--modes", "fp32",
                       "--steps", "1", "--warmup", "0", "--repeats", "1"]),
]


def environment(device: str) -> dict:
    """Versions, the device, and (CUDA) the bf16 peak measured on 8192³ matrix products."""
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "device": device,
           "cuda_available": torch.cuda.is_available()}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except ImportError:
        env["diffusers"] = None
    if device == "cuda" and env["cuda_available"]:
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        torch.cuda.synchronize()
        t0, n = time.perf_counter(), 10
        for _ in range(n):
            a @ a
        torch.cuda.synchronize()
        env["bf16_peak_tflops"] = 2 * 8192**3 * n / (time.perf_counter() - t0) / 1e12
    return env


def run_step(name: str, limit: int, argv: list[str], out: Path, peak: float | None) -> dict:
    """One step as a subprocess; its JSON (if the tool writes one) is parsed into the record."""
    result_file = out / f"{name}.json"
    cmd = [sys.executable, *argv]
    if name != "tests":
        cmd += ["--json", str(result_file)]
        if peak:
            cmd += ["--peak-tflops", f"{peak:.1f}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        status, text = ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"), proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timeout after {limit} s"
        text = "".join(s.decode(errors="replace") if isinstance(s, bytes) else (s or "") for s in (e.stdout, e.stderr))
    record = {"step": name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
              "command": " ".join(cmd[1:]), "output_tail": text[-4000:]}
    if result_file.is_file():
        record["results"] = json.loads(result_file.read_text())
    print(f"[{name}] {status} in {record['seconds']} s", flush=True)
    return record


def _fmt(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    """The summary tables of gpu_check.md."""
    env = report["environment"]
    lines = [f"# GPU check, {report['date']}", "",
             f"Device: {env.get('device_name', env['device'])}; torch {env['torch']}, diffusers {env.get('diffusers')}, "
             f"bf16 matmul peak {_fmt(env.get('bf16_peak_tflops'), '.0f')} TFLOP/s; "
             f"{'dry run (toy sizes, CPU)' if report['dry_run'] else 'full run'}; total {report['seconds']} s.", "",
             "| step | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    steps = {s["step"]: s for s in report["steps"]}
    sampling = steps.get("sampling", {}).get("results")
    if sampling:
        lines += ["", f"## Sampling ({sampling['preset']}, {sampling['steps']} steps, η = {sampling['eta']})", "",
                  "| batch | precision | ours img/s | diffusers img/s | ratio | TFLOP/s | of peak | max rel diff "
                  "vs diffusers | max abs diff vs our fp32 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in sampling["rows"]:
            frac = r.get("fraction_of_peak")
            lines.append(f"| {r['batch']} | {r['precision']} | {r['ours_images_per_s']:.1f} | "
                         f"{r['diffusers_images_per_s']:.1f} | {r['ratio']:.2f} | {r['tflops']:.1f} | "
                         f"{'-' if frac is None else f'{100 * frac:.1f}%'} | {r['max_rel_diff']:.2e} | "
                         f"{_fmt(r.get('max_abs_diff_vs_fp32'), '.2e')} |")
    training = steps.get("training", {}).get("results")
    if training:
        lines += ["", f"## Training ({training['preset']}, batch {training['batch']})", "",
                  "| mode | ours steps/s | diffusers steps/s | ratio | TFLOP/s | of peak | ours mem GB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in training["rows"]:
            lines.append(f"| {r['mode']} | {r['ours_steps_per_s']:.2f} | {_fmt(r['diffusers_steps_per_s'], '.2f')} | "
                         f"{_fmt(r['ratio'], '.2f')} | {r['tflops']:.1f} | {100 * r['fraction_of_peak']:.1f}% | "
                         f"{_fmt(r['ours_mem_gb'], '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps at toy sizes on the CPU")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                    help="folder for gpu_check.json, gpu_check.md and each step's JSON (default: $OUT or runs/gpu_check)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    t0 = time.perf_counter()
    env = environment(device)
    if env["diffusers"] is None:
        print("gpu_check: diffusers is not installed; on the GPU machine run scripts/gpu_check.sh (installs .whl/)",
              file=sys.stderr)
        return 2
    if device == "cuda" and not env["cuda_available"]:
        print("gpu_check: no CUDA device; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    print(f"[env] {env}", flush=True)
    steps = [run_step(name, limit, argv_, out, env.get("bf16_peak_tflops"))
             for name, limit, argv_ in (DRY if args.dry_run else REAL)]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run,
              "environment": env, "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
