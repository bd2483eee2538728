"""`ddim train` from the command line: help, bad input as one line with exit code 2, resume refusals."""

import argparse
import shutil
import subprocess
import sys

import pytest
import torch

from ddim.cli import build_parser, main

TINY = ["--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
        "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--quiet",
        "--batch-size", "8"]


def _error(capsys, argv):
    """Run main(argv); return (exit code, stderr) after checking stderr is one `ddim: error:` line."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddim: error: "), err
    return code, lines[0]


def test_help_shows_every_default():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = train.format_help()
    for action in train._actions:
        switch = isinstance(action, argparse._StoreTrueAction)  # off unless given: "(default: False)" is noise
        if action.option_strings and action.dest != "help" and not action.required and not switch:
            assert "default" in train.formatter_class("ddim")._get_help_string(action), action.option_strings
    assert "--batch-size" in text and "(default: 128)" in text


@pytest.mark.parametrize("args, words", [
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--lr", "0"], "lr must be a number in (0.0, inf], got 0.0"),
    (["--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--label-dropout", "2"], "label_dropout"),
    (["--channel-mult", "1,x"], "expected comma-separated integers"),
    (["--base-channels", "15"], "base_channels must be even"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
])
def test_bad_values_are_one_line_errors(capsys, tmp_path, args, words):
    code, line = _error(capsys, ["train", *TINY, "--out", str(tmp_path / "r"), "--steps", "2", *args])
    assert code == 2 and words in line


def test_missing_required_option(capsys):
    code, line = _error(capsys, ["train", "--dataset", "digits"])
    assert code == 2 and "--out" in line


def test_real_process_exits_2_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "ddim", "train", *TINY, "--out", str(tmp_path / "r"), "--lr", "-1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["ddim: error: lr must be a number in (0.0, inf], got -1.0"]


def test_resume_refuses_corrupted_and_foreign_checkpoints(capsys, tmp_path):
    out = str(tmp_path / "r")
    assert main(["train", *TINY, "--out", out, "--steps", "2"]) == 0
    capsys.readouterr()
    code, line = _error(capsys, ["train", *TINY, "--out", out, "--steps", "4"])
    assert code == 2 and "already holds checkpoints" in line
    code, line = _error(capsys, ["train", *TINY, "--out", out, "--steps", "4", "--resume", "--base-channels", "32"])
    assert code == 2 and "differs in model.base_channels" in line

    weights = tmp_path / "r" / "checkpoints" / "step_000002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x55
    weights.write_bytes(bytes(data))
    code, line = _error(capsys, ["train", *TINY, "--out", out, "--steps", "4", "--resume"])
    assert code == 2 and "model.safetensors is corrupted" in line

    weights.write_bytes(bytes(data[:64]))
    code, line = _error(capsys, ["train", *TINY, "--out", out, "--steps", "4", "--resume"])
    assert code == 2 and "model.safetensors is truncated or corrupted" in line


def test_train_writes_a_loadable_run(capsys, tmp_path):
    from ddim.checkpoint import load_checkpoint

    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out), "--steps", "3", "--no-class-cond", "--prediction", "v"]) == 0
    model, schedule, config = load_checkpoint(out, ema=False)
    assert config.prediction == "v" and model.null_label is None and config.train.steps == 3
    assert (out / "metrics.jsonl").is_file()


def test_scale_shift_switch_reaches_the_saved_config(capsys, tmp_path):
    from ddim.checkpoint import load_checkpoint

    for flag, want in (("--scale-shift", True), ("--no-scale-shift", False)):
        out = tmp_path / flag
        assert main(["train", *TINY, "--out", str(out), "--steps", "1", flag]) == 0
        model, _, config = load_checkpoint(out, ema=False)
        assert config.model.scale_shift is want
        # AdaGN projects the embedding to a scale and a shift: twice the additive projection's outputs
        block = model.down[0].res[0]
        assert block.temb_proj.out_features == (2 if want else 1) * block.conv1.out_channels
    code, line = _error(capsys, ["train-classifier", "--dataset", "digits", "--out", str(tmp_path / "c"),
                                 "--scale-shift"])
    assert code == 2 and "unrecognized arguments: --scale-shift" in line  # a classifier has no AdaGN option


def test_init_from_fine_tunes_and_refuses_the_flags_it_overrides(capsys, tmp_path):
    from ddim.checkpoint import load_checkpoint

    src, out = tmp_path / "src", tmp_path / "ft"
    assert main(["train", *TINY, "--out", str(src), "--steps", "2", "--prediction", "v", "--schedule", "cosine"]) == 0
    data = ["--dataset", "digits", "--image-size", "8", "--sample-every", "0", "--device", "cpu", "--quiet"]
    code, line = _error(capsys, ["train", *data, "--init-from", str(src), "--out", str(out), "--preset", "small",
                                 "--base-channels", "16"])
    assert code == 2 and ("fixes the network (shape and dropout), schedule and prediction; "
                          "drop --preset, --base-channels") in line
    code, line = _error(capsys, ["train", *data, "--init-from", str(tmp_path / "none"), "--out", str(out)])
    assert code == 2 and "does not exist" in line
    assert main(["train", *data, "--init-from", str(src), "--out", str(out), "--steps", "1", "--batch-size", "8"]) == 0
    source, tuned = load_checkpoint(src)[2], load_checkpoint(out)[2]
    assert tuned.model == source.model and tuned.schedule == source.schedule and tuned.prediction == "v"
    assert tuned.train.init_from == str(src)
    # a resumed fine-tune needs neither the source nor the same spelling of its path
    step1 = load_checkpoint(out, ema=False)[0].state_dict()
    shutil.rmtree(src)
    assert main(["train", *data, "--init-from", "./gone", "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--resume"]) == 0
    resumed = load_checkpoint(out, ema=False)
    assert resumed[2].train.steps == 2 and resumed[2].model == source.model
    assert resumed[2].train.init_from == str(src)  # the record keeps the source the run started from
    assert not all(torch.equal(v, step1[k]) for k, v in resumed[0].state_dict().items())  # it trained on


def test_init_from_bundled_names_the_bundled_model(capsys, tmp_path):
    from ddim.checkpoint import BUNDLED_MODEL, load_checkpoint

    # the bundled model is 28×28: 8×8 digits do not fit it, and the error says so after resolving "bundled"
    code, line = _error(capsys, ["train", "--dataset", "digits", "--image-size", "8", "--init-from", "bundled",
                                 "--out", str(tmp_path / "ft"), "--device", "cpu", "--quiet"])
    assert code == 2 and "the data are 1×8×8 but the model expects 1×28×28" in line
    code, line = _error(capsys, ["train", "--dataset", "digits", "--init-from", "bundled", "--preset", "small",
                                 "--out", str(tmp_path / "ft")])
    assert code == 2 and f"--init-from {BUNDLED_MODEL} fixes" in line
    # digits upscaled to 28×28 (10 classes, 1 channel) fit it: fine-tuning the bundled model on other data
    out = tmp_path / "digits28"
    assert main(["train", "--dataset", "digits", "--image-size", "28", "--init-from", "bundled", "--out", str(out),
                 "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--device", "cpu", "--quiet"]) == 0
    tuned, bundled = load_checkpoint(out)[2], load_checkpoint(BUNDLED_MODEL)[2]
    assert tuned.model == bundled.model and tuned.train.init_from == str(BUNDLED_MODEL)
