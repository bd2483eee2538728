"""The noisy classifier: its network, `ddim train-classifier` (the Trainer's loop, checkpoints and resume),
loading, and the CLI's refusals around classifier guidance."""

from __future__ import annotations

import json

import pytest
import torch

import ddim
from ddim.checkpoint import BUNDLED_MODEL, list_checkpoints, save_checkpoint
from ddim.cli import main
from ddim.nn import ClassifierConfig, NoisyClassifier
from ddim.train import ClassifierTrainer, DataConfig, RunConfig, TrainConfig, classifier_accuracy

TINY = dict(image_size=8, in_channels=1, num_classes=10, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
            norm_groups=8)
CLI = ["--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
       "--num-res-blocks", "1", "--norm-groups", "8", "--patch-size", "1", "--batch-size", "32", "--lr", "3e-3",
       "--warmup", "5", "--log-every", "5", "--device", "cpu", "--quiet"]


def config(steps: int, **train) -> RunConfig:
    opts = {**dict(steps=steps, batch_size=32, lr=3e-3, warmup=5, checkpoint_every=0, log_every=5, ema_decay=0.9,
                   label_dropout=0.0, sample_every=0), **train}
    return RunConfig(model=ClassifierConfig(**TINY), train=TrainConfig(**opts),
                     data=DataConfig("digits", image_size=8), schedule=ddim.Schedule.linear(1000).to_config())


def test_network_shapes_config_round_trip_and_checks():
    net = NoisyClassifier(**TINY)
    assert net(torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])).shape == (3, 10)
    assert ClassifierConfig.from_dict(json.loads(json.dumps(net.config.to_dict()))) == net.config
    assert RunConfig.from_dict(config(3).to_dict()).is_classifier
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(3, 1, 16, 16), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        ClassifierConfig(**{**TINY, "num_classes": 1})
    with pytest.raises(ValueError, match="norm_groups"):
        ClassifierConfig(**{**TINY, "norm_groups": 5})


def test_trainer_learns_and_resumes_exactly(digits8, tmp_path):
    result = ClassifierTrainer(config(300), tmp_path / "a", data=digits8, device="cpu", quiet=True).fit()
    log = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    # the loss averages over all t, and at large t nothing can be learned: it falls slowly from log 10
    assert log[-1]["loss"] < 0.9 * log[0]["loss"]
    clf, schedule, cfg = ddim.load_noisy_classifier(result.checkpoint)
    acc = classifier_accuracy(clf, schedule, digits8.to_float()[:500], digits8.labels[:500], [0, 999])
    assert acc[0] > 0.5 and acc[1] < 0.3, acc  # reads clean digits; pure noise carries no class
    # 300 steps at once == 250 steps, then resumed to 300
    ClassifierTrainer(config(250, checkpoint_every=250), tmp_path / "b", data=digits8, device="cpu", quiet=True).fit()
    ClassifierTrainer(config(300), tmp_path / "b", data=digits8, device="cpu", quiet=True, resume=True).fit()
    a = ddim.load_noisy_classifier(tmp_path / "a")[0].state_dict()
    b = ddim.load_noisy_classifier(tmp_path / "b")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="label_dropout must be 0"):
        ClassifierTrainer(config(3, label_dropout=0.1), tmp_path / "c", data=digits8, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
    out = tmp_path_factory.mktemp("clf")
    assert main(["train-classifier", *CLI, "--steps", "4", "--out", str(out)]) == 0
    assert len(list_checkpoints(out)) == 1
    return out


def _classifier_checkpoint(tmp_path, **fields):
    """A random-weight classifier checkpoint with the bundled model's schedule and these config fields."""
    cfg = RunConfig(model=ClassifierConfig(**{**TINY, "image_size": 28, **fields}), train=TrainConfig(label_dropout=0.0),
                    schedule=ddim.load_checkpoint(BUNDLED_MODEL)[1].to_config())
    net = NoisyClassifier.from_config(cfg.model)
    save_checkpoint(tmp_path, 1, cfg.to_dict(), {"model": net.state_dict(), "ema": net.state_dict(),
                                                 "training_state": {}}, {"step": 1}, keep_last=0)
    return tmp_path


def test_cli_guides_with_a_classifier_and_refuses_what_cannot_guide(digits_classifier, tmp_path, capsys):
    ok = _classifier_checkpoint(tmp_path / "ok")
    assert main(["sample", "--n", "2", "--steps", "3", "--classifier", str(ok), "--classifier-scale", "2",
                 "--class", "3", "--out", str(tmp_path / "g.png"), "--quiet"]) == 0
    assert (tmp_path / "g.png").is_file()
    cases = [
        (["--classifier", str(digits_classifier), "--classifier-scale", "1"], "the classifier takes 1×8×8 images"),
        (["--classifier", str(_classifier_checkpoint(tmp_path / "five", num_classes=5)), "--classifier-scale", "1"],
         "the classifier has 5 classes but the model has 10"),
        (["--classifier-scale", "-1"], "--classifier-scale must be a finite number >= 0"),
        (["--classifier", str(ok)], "--classifier needs --classifier-scale > 0"),
        (["--classifier", str(BUNDLED_MODEL), "--classifier-scale", "1"], "holds a denoiser, not a noisy classifier"),
        (["--solver", "pc", "--snr", "-0.1"], "snr must be a number > 0"),
        (["--solver", "pc", "--predictor", "ddim", "--corrector-steps", "-1"], "corrector_steps must be"),
        (["--snr", "0.1"], "--snr applies to --solver pc only"),
        (["--solver", "langevin", "--step-size", "2"], "step_size must be a number in"),
    ]
    for extra, msg in cases:
        capsys.readouterr()
        assert main(["sample", "--n", "2", "--steps", "3", "--out", str(tmp_path / "x.png"), "--quiet", *extra]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err, (extra, err)
    # a corrupted classifier checkpoint: its manifest hash no longer matches
    weights = next(ok.glob("checkpoints/step_*/ema.safetensors"))
    blob = bytearray(weights.read_bytes())
    blob[-3] ^= 0xFF
    weights.write_bytes(bytes(blob))
    assert main(["sample", "--n", "2", "--steps", "3", "--classifier", str(ok), "--classifier-scale", "2",
                 "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert "ema.safetensors" in capsys.readouterr().err
