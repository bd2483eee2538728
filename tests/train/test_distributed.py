"""torchrun with 2 CPU processes (gloo) equals one process with the same global batch."""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from subprocesses import torchrun

from ddim.train import Trainer
from ddim.train.monitor import read_metrics

from .conftest import tiny_config

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_ranks_match_one_process(tmp_path, digits8):
    # dropout 0: dropout masks are per-rank random streams, the one thing that cannot match one process
    cfg = tiny_config(steps=6, batch_size=16, dropout=0.0, log_every=2, checkpoint_every=3)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    proc = torchrun([WORKER, tmp_path / "cfg.json", tmp_path / "ddp"])
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = load_file(str(tmp_path / "ddp" / "rank0.safetensors")), load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks disagree"

    single = Trainer(cfg, tmp_path / "single", data=digits8, device="cpu", quiet=True)
    single.fit()
    ref = {**{f"model.{k}": v for k, v in single.model.state_dict().items()},
           **{f"ema.{k}": v for k, v in single.ema.model.state_dict().items()}}
    for k, v in ref.items():
        torch.testing.assert_close(r0[k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # training moved the weights: the DDPM init zeroes the output conv, so equal zeros would prove nothing
    assert r0["model.conv_out.weight"].abs().sum() > 0

    # rank 0 alone wrote the files: one metrics line per logged step, the checkpoints once
    assert [m["step"] for m in read_metrics(tmp_path / "ddp" / "metrics.jsonl")] == [2, 4, 6]
    losses = [m["loss"] for m in read_metrics(tmp_path / "ddp" / "metrics.jsonl")]
    ref_losses = [m["loss"] for m in read_metrics(tmp_path / "single" / "metrics.jsonl")]
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["step_000003", "step_000006"]
