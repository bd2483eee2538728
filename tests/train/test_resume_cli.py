"""Exact resume through the CLI: kill -9 after a checkpoint, then SIGTERM (graceful), then finish.

The run ends bitwise identical (model, EMA, optimizer) to an uninterrupted run of the same length.
"""

import json
import signal
import subprocess
import sys
import time

import torch

from ddim.checkpoint import list_checkpoints, read_tensors
from ddim.train import RunConfig, Trainer

from .conftest import TINY_CLI, ddim_env, tiny_config

STEPS, EVERY = 80, 10


def _start(out, *extra):
    args = [sys.executable, "-m", "ddim", "train", *TINY_CLI, "--out", str(out), "--steps", str(STEPS),
            "--batch-size", "16", "--checkpoint-every", str(EVERY), "--keep-last", "0", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ddim_env())


def _wait_for_step(proc, out, step, timeout=240.0):
    """Poll until a checkpoint of at least ``step`` exists (checkpoints appear atomically by rename)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ckpts = list_checkpoints(out)
        if ckpts and int(ckpts[-1].name.split("_")[1]) >= step:
            return
        assert proc.poll() is None, f"training exited early: {proc.communicate()[1][-2000:]}"
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no checkpoint of step >= {step} within {timeout}s")


def test_kill9_then_sigterm_then_resume_is_bitwise_exact(tmp_path, digits8):
    out = tmp_path / "run"
    p = _start(out)
    _wait_for_step(p, out, EVERY)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL
    killed_at = int(list_checkpoints(out)[-1].name.split("_")[1])
    assert killed_at < STEPS

    p = _start(out, "--resume")
    _wait_for_step(p, out, killed_at + EVERY)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped_at = int(list_checkpoints(out)[-1].name.split("_")[1])
    assert killed_at < stopped_at < STEPS  # the graceful stop wrote a checkpoint where it stopped

    p = subprocess.run([sys.executable, "-m", "ddim", "train", *TINY_CLI, "--out", str(out), "--steps", str(STEPS),
                        "--batch-size", "16", "--checkpoint-every", str(EVERY), "--keep-last", "0", "--resume"],
                       capture_output=True, text=True, env=ddim_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]

    cfg = tiny_config(steps=STEPS, batch_size=16, checkpoint_every=EVERY, keep_last=0)
    saved = json.loads((out / "config.json").read_text())
    assert RunConfig.from_dict(saved) == cfg  # the CLI flags built the same run as the reference below
    ref = Trainer(cfg, tmp_path / "ref", data=digits8, device="cpu", quiet=True).fit()
    final = out / "checkpoints" / f"step_{STEPS:06d}"
    for name in ("model", "ema", "training_state"):
        a, b = read_tensors(ref.checkpoint / f"{name}.safetensors"), read_tensors(final / f"{name}.safetensors")
        assert a.keys() == b.keys()
        bad = [k for k in a if not torch.equal(a[k], b[k])]
        assert not bad, f"{name}: {len(bad)} tensors differ, e.g. {bad[:3]}"


def test_cli_training_options_reach_the_saved_config(tmp_path, capsys):
    """`ddim train --prediction v --min-snr-gamma 5 --t-sampling lognormal` (the pilots' flags) are saved in
    the run's config.json, and an unknown --t-sampling exits 2 naming the allowed values."""
    from ddim.cli import main

    out = tmp_path / "run"
    assert main(["train", *TINY_CLI, "--out", str(out), "--steps", "2", "--prediction", "v", "--min-snr-gamma", "5",
                 "--t-sampling", "lognormal"]) == 0
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["prediction"], train["min_snr_gamma"], train["t_sampling"]) == ("v", 5.0, "lognormal")
    capsys.readouterr()
    assert main(["train", *TINY_CLI, "--out", str(tmp_path / "bad"), "--t-sampling", "edm"]) == 2
    err = capsys.readouterr().err  # argparse quotes the choices on some Python versions, not on others
    assert "--t-sampling: invalid choice: 'edm'" in err and "uniform" in err and "lognormal" in err
