"""scripts/gpu_check.py without diffusers (the GPU machine has none unless .whl/ travels): the comparisons are
skipped and the rest runs. No diffusers needed here, unlike tests/test_gpu_check.py."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_without_diffusers_runs_what_does_not_need_it(tmp_path, monkeypatch):
    """A device start is scarce: without diffusers the comparisons are skipped (said in the report), the other
    steps still run, and the exit code says the check is incomplete."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    env = gpu_check.environment("cpu")
    monkeypatch.setattr(gpu_check, "environment", lambda device: {**env, "diffusers": None})
    assert gpu_check.main(["--dry-run", "--only", "tests,sampling", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [(s["step"], s["status"].split(":")[0]) for s in report["steps"]] == [("tests", "ok"),
                                                                                 ("sampling", "skipped")]
    assert "| sampling | skipped: diffusers is not installed" in (tmp_path / "gpu_check.md").read_text()
