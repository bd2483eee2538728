"""scripts/gpu_check.py --dry-run: the prepared GPU check's every step, at toy sizes on the CPU, so the
script that will run on the first GPU we are lent cannot rot unnoticed."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddim.device import cpu_native_bf16

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and [s["step"] for s in report["steps"]] == ["tests", "sampling", "training",
                                                                          "seed_slice"]
    assert all(s["status"] == "ok" for s in report["steps"])
    steps = {s["step"]: s for s in report["steps"]}
    rows = steps["sampling"]["results"]["rows"]
    assert {r["precision"] for r in rows} == {"fp32", "fast"}
    fast = next(r for r in rows if r["precision"] == "fast")
    if cpu_native_bf16():  # the CPU's fast rows (ours and diffusers' reference) run bf16: rounding, not garbage
        assert 0 < fast["max_abs_diff_vs_fp32"] <= 0.25 and fast["max_rel_diff"] <= 0.25
    else:
        assert fast["max_abs_diff_vs_fp32"] <= 1e-4 and fast["max_rel_diff"] <= 1e-4   # the fast path agrees
    assert steps["training"]["results"]["rows"][0]["ours_steps_per_s"] > 0
    slice_ = steps["seed_slice"]["results"]
    assert slice_["steps_per_s"] > 0 and slice_["projected_hours"] > 0 and slice_["tiny"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "## Sampling" in md and "## Training" in md and "## Seed experiment slice" in md and "| tests | ok |" in md
    assert not any(tmp_path.rglob("*.safetensors"))   # the slice's run went to the scratch folder


def test_gpu_check_fits_one_device_call_and_runs_a_subset(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    assert sum(limit for _, limit, _ in gpu_check.REAL) <= 540   # with start-up, under one 600 s call
    assert [name for name, _, _ in gpu_check.DRY] == list(gpu_check.STEPS)
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--only", "tests,nope", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown step(s) nope" in proc.stderr
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--only", "tests", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["tests"]


def test_gpu_check_without_cuda_refuses_the_full_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the full run is the real check")
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr

