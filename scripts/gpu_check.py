"""The prepared GPU check: everything CUDA in the project, in one command, on one H100/H200 in < 9.5 minutes.

Steps (each a subprocess with its own time limit, so one failure or hang cannot cost the rest):
    env        device, driver, torch, diffusers; the measured bf16 matmul peak (TFLOP/s) the others divide by
    tests      the CUDA tests (pytest -m gpu)
    sampling   benchmarks/sampling.py: ours vs diffusers' DDIMPipeline on the same weights, CIFAR-10 UNet,
               50 steps, batch 256 and 1024, fp32 / bf16 / the fast path; its rows also give the fast
               path's max |difference| from our fp32 images
    training   benchmarks/training.py: batch 128, CIFAR-10 preset, fp32 / bf16 / fastest, ours vs diffusers
    seed_slice scripts/seed_experiment.py --synthetic: the seed experiment's `ddim train` (CIFAR-10 preset, batch
               128, fp32, EMA, flips) on a synthetic 32×32 RGB folder it writes, for 100 s of measured
               training: steps/s and the projected wall time of its 150,000 steps. Its folder and run (a
               0.6 GB checkpoint) go to a scratch folder removed at the end, so --out stays small
and writes gpu_check.json (every step's status, time, output tail and parsed results) and gpu_check.md
(the tables) into --out. ``--dry-run`` runs the same steps at toy sizes on the CPU (tests/test_gpu_check.py
runs it, so the script cannot rot).

    bash scripts/gpu_check.sh                      # on the GPU machine: installs the wheels, then this
    bash scripts/gpu_check.sh --only seed_slice    # a subset of the steps (env always runs)
    python scripts/gpu_check.py --dry-run --out /tmp/gpu_check_dry
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, time limit in s, argv after `python`; "{scratch}" stands for a scratch folder): the real run (sizes
# of the issues) and the dry run (toy sizes). The real limits add up to 540 s, so the whole check fits one
# 10-minute device call with the start-up: a step that runs over (torch.compile is the slow part) loses only
# its table.
REAL = [
    # -v: a step stopped by its limit still shows which tests ran and which one it stopped in
    ("tests", 80, ["-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider", "tests"]),
    ("sampling", 200, ["benchmarks/sampling.py", "--device", "cuda", "--preset", "cifar10", "--batch", "256,1024",
                       "--steps", "50", "--precision", "fp32,bf16,fast", "--repeats", "1"]),
    ("training", 110, ["benchmarks/training.py", "--device", "cuda", "--preset", "cifar10", "--batch", "128",
                       "--modes", "fp32,bf16,fastest", "--steps", "30", "--warmup", "5", "--repeats", "2"]),
    ("seed_slice", 150, ["scripts/seed_experiment.py", "--synthetic", "2048", "--slice-only", "--slice-seconds", "100",
                         "--device", "cuda", "{scratch}/seed_slice"]),
]
DRY = [
    ("tests", 300, ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/samplers/test_fast.py",
                    "tests/samplers/test_loop.py"]),
    ("sampling", 300, ["benchmarks/sampling.py", "--device", "cpu", "--preset", "small", "--batch", "2",
                       "--steps", "2", "--precision", "fp32,fast", "--repeats", "1"]),
    ("training", 300, ["benchmarks/training.py", "--device", "cpu", "--batch", "2", "--modes", "fp32",
                       "--steps", "1", "--warmup", "0", "--repeats", "1"]),
    ("seed_slice", 300, ["scripts/seed_experiment.py", "--dry-run", "--slice-only", "--device", "cpu",
                         "{scratch}/seed_slice"]),
]
STEPS = tuple(name for name, _, _ in REAL)
NEEDS_DIFFUSERS = ("sampling", "training")   # the steps that compare with diffusers on the same weights


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


def _run(cmd: list[str], env: dict, limit: int) -> tuple[str, str]:
    """(status, output) of ``cmd`` run for at most ``limit`` s. It runs in its own process group, and a
    timeout kills the whole group: a step's own children (the trainer under seed_slice, pytest's workers)
    must not go on using the GPU during the next step."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        text, _ = proc.communicate(timeout=limit)
        return ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"), text
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        return f"timeout after {limit} s", text or ""


def run_step(name: str, limit: int, argv: list[str], out: Path, peak: float | None, scratch: Path) -> dict:
    """One step as a subprocess; its JSON (if the tool writes one) is parsed into the record."""
    result_file = out / f"{name}.json"
    result_file.unlink(missing_ok=True)  # a step stopped before its first row must not report an earlier run's
    cmd = [sys.executable, *(a.replace("{scratch}", str(scratch)) for a in argv)]
    if name != "tests":
        cmd += ["--json", str(result_file)]
        if peak:
            cmd += ["--peak-tflops", f"{peak:.1f}"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    status, text = _run(cmd, env, limit)
    record = {"step": name, "status": status, "seconds": round(time.perf_counter() - t0, 1),
              "command": " ".join(cmd[1:]), "output_tail": text[-4000:]}
    if result_file.is_file():
        record["results"] = json.loads(result_file.read_text())
    print(f"[{name}] {status} in {record['seconds']} s", flush=True)
    return record


def _fmt(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def _percent(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


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
    seed = steps.get("seed_slice", {}).get("results")
    if seed:
        lines += ["", f"## Seed experiment slice (CIFAR-10 preset, batch {seed['batch']}, "
                      f"{'bf16' if seed['bf16'] else 'fp32'}{', tiny network' if seed['tiny'] else ''}, "
                      "generated RGB folder)", "",
                  "| steps measured | seconds | steps/s | images/s | TFLOP/s | of peak | projected steps "
                  "| projected time |", "| --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {seed['steps_measured']} | {seed['seconds_measured']} | {seed['steps_per_s']:.2f} | "
                  f"{seed['images_per_s']:.0f} | {_fmt(seed.get('tflops'), '.1f')} | "
                  f"{_percent(seed.get('fraction_of_peak'))} | "
                  f"{seed['target_steps']:,} | {seed['projected_hours']:.2f} h |"]
    return "\n".join(lines) + "\n"


def _steps(text: str) -> list[str]:
    """--only "a,b" -> ["a", "b"], each a step name."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in STEPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown step(s) {', '.join(unknown) or '(none)'}; allowed: "
                                         f"{', '.join(STEPS)}")
    return names


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="the same steps at toy sizes on the CPU")
    ap.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check",
                    help="folder for gpu_check.json, gpu_check.md and each step's JSON (default: $OUT or runs/gpu_check)")
    ap.add_argument("--only", type=_steps, default=None, metavar="STEP[,STEP]",
                    help=f"run only these steps ({', '.join(STEPS)}; the environment is always read)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()   # the steps run from the repository root
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    t0 = time.perf_counter()
    env = environment(device)
    if device == "cuda" and not env["cuda_available"]:
        print("gpu_check: no CUDA device; use --dry-run on a CPU machine", file=sys.stderr)
        return 2
    print(f"[env] {env}", flush=True)
    wanted = [s for s in (DRY if args.dry_run else REAL) if args.only is None or s[0] in args.only]
    # without diffusers (scripts/gpu_check.sh installs it from .whl/) the comparisons cannot run, but the rest can:
    # a device start is too scarce to spend on nothing
    skip = {name for name, _, _ in wanted if env["diffusers"] is None and name in NEEDS_DIFFUSERS}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        steps = [{"step": name, "status": "skipped: diffusers is not installed (carry .whl/, see gpu_check.sh)",
                  "seconds": 0.0} if name in skip else
                 run_step(name, limit, argv_, out, env.get("bf16_peak_tflops"), Path(scratch))
                 for name, limit, argv_ in wanted]
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run,
              "environment": env, "steps": steps, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(s["status"] == "ok" for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
