"""The Trainer end to end on CPU: learning, exact resume, logging, samples, refusals."""

import json

import pytest
import torch

import ddim
from ddim.checkpoint import CheckpointError, NonFiniteError, list_checkpoints, load_checkpoint, read_tensors
from ddim.train import Trainer
from ddim.train.monitor import read_metrics

from .conftest import tiny_config


def _weights(ckpt):
    return {f: read_tensors(ckpt / f"{f}.safetensors") for f in ("model", "ema", "training_state")}


def test_loss_falls_then_checkpoint_samples(tmp_path, digits8):
    cfg = tiny_config(steps=240, batch_size=32, checkpoint_every=120, sample_every=120, num_samples=10,
                      log_every=1)
    result = Trainer(cfg, tmp_path, data=digits8, device="cpu", quiet=True).fit()
    assert result.step == 240 and not result.interrupted
    losses = [m["loss"] for m in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 240
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)
    assert (tmp_path / "samples" / "step_000240.png").is_file()

    model, schedule, config = load_checkpoint(tmp_path)  # the run dir: its latest checkpoint, EMA weights
    assert config == cfg and [p.name for p in list_checkpoints(tmp_path)] == ["step_000120", "step_000240"]
    labels = torch.arange(4)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = ddim.sample(lambda x, t: model(x, t, labels), schedule, x_T, steps=20, prediction=config.prediction)
    assert x0.shape == (4, 1, 8, 8) and torch.isfinite(x0).all()


def test_metrics_lines_hold_the_promised_fields(tmp_path, digits8):
    Trainer(tiny_config(steps=4, log_every=2), tmp_path, data=digits8, device="cpu", quiet=True).fit()
    lines = read_metrics(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in lines] == [2, 4]
    assert {"step", "loss", "lr", "images_per_s", "grad_norm"} <= set(lines[0])
    assert lines[0]["lr"] == pytest.approx(2e-3 * 2 / 5)  # warm-up: step index 1 of 5
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 4


@pytest.mark.parametrize("t_sampling", ["uniform", "lognormal"])
def test_resume_is_bitwise_exact_in_process(tmp_path, digits8, t_sampling):
    full = Trainer(tiny_config(steps=12, t_sampling=t_sampling), tmp_path / "a", data=digits8, device="cpu",
                   quiet=True).fit()
    Trainer(tiny_config(steps=5, t_sampling=t_sampling), tmp_path / "b", data=digits8, device="cpu", quiet=True).fit()
    resumed = Trainer(tiny_config(steps=12, t_sampling=t_sampling), tmp_path / "b", data=digits8, device="cpu",
                      quiet=True, resume=True)
    assert resumed.step == 5
    resumed.fit()
    a, b = _weights(full.checkpoint), _weights(tmp_path / "b" / "checkpoints" / "step_000012")
    for f in a:
        assert a[f].keys() == b[f].keys()
        for k in a[f]:
            assert torch.equal(a[f][k], b[f][k]), (f, k)


def test_lognormal_noise_levels_reach_the_trainer(tmp_path, digits8):
    """With t_sampling="lognormal" the Trainer's batch holds ``lognormal_t``'s steps for the step's generator
    (not uniform ones)."""
    from ddim.train.batches import step_generator
    from ddim.train.loss import lognormal_t

    trainer = Trainer(tiny_config(t_sampling="lognormal"), tmp_path / "l", data=digits8, device="cpu", quiet=True)
    t = trainer._batch()[1]
    assert torch.equal(t, lognormal_t(-0.5 * trainer.schedule.snr.log(), 16, step_generator(0, 0)))
    uniform = Trainer(tiny_config(), tmp_path / "u", data=digits8, device="cpu", quiet=True)._batch()[1]
    assert not torch.equal(t, uniform)


def test_existing_run_needs_resume_and_a_matching_architecture(tmp_path, digits8):
    Trainer(tiny_config(steps=2), tmp_path, data=digits8, device="cpu", quiet=True).fit()
    with pytest.raises(ValueError, match="already holds checkpoints .* pass --resume"):
        Trainer(tiny_config(steps=4), tmp_path, data=digits8, device="cpu", quiet=True)
    with pytest.raises(CheckpointError, match="differs in model.dropout"):
        Trainer(tiny_config(steps=4, dropout=0.0), tmp_path, data=digits8, device="cpu", quiet=True, resume=True)


def test_fourier_time_networks_are_not_trained_on_step_indices(tmp_path, digits8):
    import dataclasses

    cfg = tiny_config(steps=2)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, time_embedding="fourier"))
    with pytest.raises(ValueError, match="time_embedding='fourier' is for imported score-SDE networks"):
        Trainer(cfg, tmp_path, data=digits8, device="cpu", quiet=True)
    assert not any(tmp_path.iterdir())


def test_divergence_stops_without_writing_a_checkpoint(tmp_path, digits8):
    tr = Trainer(tiny_config(steps=3, log_every=1), tmp_path, data=digits8, device="cpu", quiet=True)
    with torch.no_grad():
        tr.model.conv_in.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteError):
        tr.fit()
    assert list_checkpoints(tmp_path) == []


def test_bad_batch_split_and_data_mismatch(tmp_path, digits8):
    from ddim.distributed import DistInfo

    with pytest.raises(ValueError, match="batch_size 15 is not divisible by the number of processes \\(2\\)"):
        Trainer(tiny_config(batch_size=15), tmp_path, data=digits8, device="cpu", dist_info=DistInfo(0, 2, 0))
    from ddim.data import load_dataset

    with pytest.raises(ValueError, match="the data are 1×16×16 but the model expects 1×8×8"):
        Trainer(tiny_config(), tmp_path, data=load_dataset("digits", image_size=16), device="cpu")


def test_resume_from_a_checkpoint_written_before_a_config_field_existed(tmp_path, digits8):
    """A checkpoint whose config.json lacks fields added later (model.patch_size, train.t_sampling) resumes: the saved config
    is read through RunConfig, so the missing field takes its default instead of reading as a difference."""
    from ddim.checkpoint import MANIFEST, _sha256, read_json, write_json

    Trainer(tiny_config(steps=3, checkpoint_every=3), tmp_path, data=digits8, device="cpu", quiet=True).fit()
    ckpt = list_checkpoints(tmp_path)[-1]
    saved = read_json(ckpt / "config.json")
    del saved["model"]["patch_size"], saved["train"]["t_sampling"]
    write_json(ckpt / "config.json", saved)
    manifest = read_json(ckpt / MANIFEST)   # re-sign the edited file, as an older ddim would have written it
    manifest["config.json"] = {"bytes": (ckpt / "config.json").stat().st_size, "sha256": _sha256(ckpt / "config.json")}
    write_json(ckpt / MANIFEST, manifest)
    resumed = Trainer(tiny_config(steps=5, checkpoint_every=3), tmp_path, data=digits8, device="cpu", quiet=True,
                      resume=True)
    assert resumed.step == 3 and resumed.fit().step == 5


def test_fine_tune_starts_from_the_source_weights_and_resumes_its_own(tmp_path, digits8):
    Trainer(tiny_config(steps=3), tmp_path / "src", data=digits8, device="cpu", quiet=True).fit()
    source = load_checkpoint(tmp_path / "src")[0].state_dict()  # the EMA weights
    cfg = tiny_config(steps=5, init_from=str(tmp_path / "src"), checkpoint_every=2)
    tuned = Trainer(cfg, tmp_path / "ft", data=digits8, device="cpu", quiet=True)
    for net in (tuned.model, tuned.ema.model):
        assert all(torch.equal(v, source[k]) for k, v in net.state_dict().items())
    tuned.fit()
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["train"]["init_from"] == str(tmp_path / "src")
    # resuming the fine-tune continues its own weights, not the source's
    (tmp_path / "ft" / "checkpoints" / "step_000005").rename(tmp_path / "step_000005")
    resumed = Trainer(cfg, tmp_path / "ft", data=digits8, device="cpu", quiet=True, resume=True)
    assert resumed.step == 4
    mine = read_tensors(tmp_path / "ft" / "checkpoints" / "step_000004" / "model.safetensors")
    assert all(torch.equal(v, mine[k]) for k, v in resumed.model.state_dict().items())
    assert not all(torch.equal(v, source[k]) for k, v in resumed.model.state_dict().items())


@pytest.mark.parametrize("change, field", [({"dropout": 0.0}, "model.dropout"), ({"prediction": "v"}, "prediction")])
def test_fine_tune_refuses_a_source_it_does_not_match(tmp_path, digits8, change, field):
    Trainer(tiny_config(steps=1), tmp_path / "src", data=digits8, device="cpu", quiet=True).fit()
    cfg = tiny_config(steps=2, init_from=str(tmp_path / "src"), **change)
    with pytest.raises(ValueError, match=f"cannot fine-tune from .*differs from this run in {field}"):
        Trainer(cfg, tmp_path / "ft", data=digits8, device="cpu", quiet=True)


def test_bf16_runs_the_forward_in_bfloat16_on_the_cpu_and_keeps_float32_weights(tmp_path, digits8):
    """``train.bf16`` on the CPU: the network's convolutions run under bf16 autocast (their outputs are bf16), the
    weights and the loss stay float32, and the run differs from float32's by rounding only."""
    seen = []
    runs = {}
    for bf16 in (False, True):
        tr = Trainer(tiny_config(steps=3, bf16=bf16), tmp_path / str(bf16), data=digits8, device="cpu", quiet=True)
        first_conv = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Conv2d))
        hook = first_conv.register_forward_hook(lambda m, i, o: seen.append((bf16, o.dtype)))
        tr.train_step()  # the output layer starts at zero: the first loss is the same either way
        loss, _ = tr.train_step()
        hook.remove()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())
        runs[bf16] = float(loss)
    assert (False, torch.float32) in seen and (True, torch.bfloat16) in seen
    assert runs[True] != runs[False] and runs[True] == pytest.approx(runs[False], rel=0.05)
