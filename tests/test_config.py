"""Configs validate their values and round-trip through JSON exactly."""

import json

import pytest

from ddim.train import DataConfig, RunConfig, TrainConfig, resolve_model_config
from ddim.config import config_diff

from tiny import tiny_config


@pytest.mark.parametrize("field, value, words", [
    ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
    ("steps", 0, "steps must be an integer >= 1"),
    ("lr", 0.0, "lr must be a number in (0.0"),
    ("lr", float("nan"), "lr must be"),
    ("label_dropout", 1.5, "label_dropout"),
    ("ema_decay", 1.0, "ema_decay"),
    ("prediction", "noise", "unknown prediction 'noise'; allowed: epsilon, sample, v"),
    ("min_snr_gamma", -1.0, "min_snr_gamma"),
    ("warmup", -1, "warmup"),
    ("seed", 1.5, "seed"),
])
def test_train_config_rejects_bad_values(field, value, words):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{field: value})
    assert words in str(e.value) and "\n" not in str(e.value)


def test_data_config_rejects_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; allowed: fashion-mnist"):
        DataConfig("imagenet")


def test_run_config_json_round_trip():
    c = tiny_config(min_snr_gamma=5.0, prediction="v")
    d = json.loads(json.dumps(c.to_dict()))
    back = RunConfig.from_dict(d)
    assert back == c and back.to_dict() == c.to_dict()
    assert back.prediction == "v" and back.make_schedule().num_steps == 1000
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        RunConfig.from_dict({**d, "train": {**d["train"], "stepz": 3}})
    with pytest.raises(ValueError, match="not a ddim run config"):
        RunConfig.from_dict({"model": {}})


def test_lr_warms_up_linearly():
    c = TrainConfig(lr=1.0, warmup=4)
    assert [c.lr_at(k) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert TrainConfig(lr=0.1, warmup=0).lr_at(0) == 0.1


def test_lr_decays_linearly_over_the_last_steps():
    c = TrainConfig(lr=1.0, warmup=2, steps=8, lr_decay=4)
    assert [c.lr_at(k) for k in range(8)] == [0.5, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25]
    assert TrainConfig(lr=1.0, warmup=0, steps=3, lr_decay=3).lr_at(0) == 1.0
    with pytest.raises(ValueError, match="lr_decay must be at most steps"):
        TrainConfig(steps=3, lr_decay=4)


def test_resolved_model_keeps_attention_on_the_preset_levels():
    m = resolve_model_config("small", 8, 1, 10, channel_mult=(1, 2))
    assert m.image_size == 8 and m.in_channels == m.out_channels == 1 and m.num_classes == 10
    assert m.attn_resolutions == (4,)  # "small" attends at its second level (14 of 28)
    assert resolve_model_config("cifar10", 32, 3, None).attn_resolutions == (16,)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        resolve_model_config("huge", 8, 1, None)


def test_config_diff_names_changed_keys():
    a, b = tiny_config().to_dict(), tiny_config(steps=99, lr=1e-4).to_dict()
    assert config_diff(a, b) == ["train.lr", "train.steps"]
