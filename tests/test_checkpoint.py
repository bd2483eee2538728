"""Checkpoint files: atomic writes, pruning, verification, architecture checks, diffusers directories."""

import json

import pytest
import torch

import ddim
from ddim.checkpoint import (CheckpointError, NonFiniteError, check_finite, find_checkpoint, list_checkpoints,
                             load_checkpoint, save_checkpoint, verify_checkpoint)
from ddim.nn import UNet
from ddim.train.state import optimizer_from_flat, optimizer_to_flat

from tiny import tiny_config


def _write(run_dir, step, config=None, keep_last=0, model=None):
    config = config or tiny_config()
    torch.manual_seed(step)
    model = model or UNet.from_config(config.model)
    sd = model.state_dict()
    return save_checkpoint(run_dir, step, config.to_dict(), {"model": sd, "ema": sd}, {"step": step}, keep_last), model


def test_round_trip_and_latest(tmp_path):
    _write(tmp_path, 5)
    path, model = _write(tmp_path, 10)
    assert find_checkpoint(tmp_path) == path == find_checkpoint(path)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp dirs left
    loaded, schedule, config = load_checkpoint(tmp_path)
    assert isinstance(loaded, UNet) and config == tiny_config() and schedule.num_steps == 1000
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert not loaded.training
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 2])
    assert torch.equal(loaded(x, t, y), model.eval()(x, t, y))
    assert json.loads((path / "config.json").read_text())["step"] == 10


def test_keep_last_prunes_oldest(tmp_path):
    for s in (1, 2, 3, 4):
        _write(tmp_path, s, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]


def test_rewriting_a_step_replaces_it(tmp_path):
    _write(tmp_path, 3)
    path, model = _write(tmp_path, 3, model=UNet.from_config(tiny_config().model))
    verify_checkpoint(path)
    assert len(list_checkpoints(tmp_path)) == 1


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_weights_are_refused(tmp_path, damage):
    path, _ = _write(tmp_path, 1)
    f = path / "ema.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-10] ^= 0xFF  # one byte inside the tensor data: still a valid file, wrong numbers
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="ema.safetensors is (truncated|corrupted)"):
        load_checkpoint(path)
    load_checkpoint(path, ema=False)  # the untouched file is still usable


def test_truncated_file_without_manifest_check_is_still_an_error(tmp_path):
    from ddim.checkpoint import read_tensors

    path, _ = _write(tmp_path, 1)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        read_tensors(f)


def test_other_architecture_is_refused(tmp_path):
    path, _ = _write(tmp_path, 1)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model"]["base_channels"] = 32  # the weights are for 16
    (path / "config.json").write_text(json.dumps(cfg))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.pop("config.json")  # as if written that way: only the shape check can catch it
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="no config.json in its manifest"):
        load_checkpoint(path)
    from ddim.checkpoint import load_weights

    with pytest.raises(CheckpointError, match="does not fit this architecture: 'conv_in.weight' has shape"):
        load_weights(UNet.from_config(ddim.train.RunConfig.from_dict(cfg).model),
                     ddim.checkpoint.read_tensors(path / "model.safetensors"), "model.safetensors")


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


def test_non_finite_weights_are_never_written(tmp_path):
    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="'weight' holds NaN"):
        check_finite({"model": net}, step=7)


def test_optimizer_state_round_trip_is_exact():
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    for _ in range(3):
        net(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    tensors, meta = optimizer_to_flat(opt)
    meta = json.loads(json.dumps(meta))
    opt2 = torch.optim.AdamW(net.parameters(), lr=1.0)
    optimizer_from_flat(opt2, tensors, meta)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])


def test_loads_diffusers_unet_and_pipeline_dirs(tmp_path):
    from ddim.nn import save_diffusers_unet

    torch.manual_seed(0)
    model = UNet.from_config(tiny_config(class_cond=False).model)
    save_diffusers_unet(model, tmp_path / "pipe" / "unet")
    (tmp_path / "pipe" / "scheduler").mkdir()
    (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDIMScheduler", "num_train_timesteps": 500, "prediction_type": "v_prediction"}))
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "unet"):
        loaded, schedule, config = load_checkpoint(path)
        assert schedule.num_steps == 500 and config.prediction == "v"
        x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 400])
        assert torch.allclose(loaded(x, t), model.eval()(x, t), atol=1e-6)


def test_export_is_a_loadable_fp16_sampling_copy(tmp_path):
    from ddim.checkpoint import export_checkpoint

    _, model = _write(tmp_path / "run", 7)
    out = export_checkpoint(tmp_path / "run", tmp_path / "exported", record={"steps": 7, "command": "ddim train ..."})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "ema.safetensors", "manifest.json", "training.json"]
    assert all(v.dtype == torch.float16 for v in ddim.checkpoint.read_tensors(out / "ema.safetensors").values())
    verify_checkpoint(out)
    loaded, _, config = load_checkpoint(out)
    assert config == tiny_config()
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b.half().float())  # the fp16 rounding, nothing else
    assert json.loads((out / "training.json").read_text())["steps"] == 7
    export_checkpoint(tmp_path / "run", out)  # replacing an existing export in place
    assert not (out / "training.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
