"""Hostile input, table-driven: every case gets one `ddim: error:` line and exit 2 (no traceback), leaves
any pre-existing output byte for byte, and creates nothing; plus fault injection (disk full during every
kind of output write) and the README's determinism sentence. Add a case: one row in CASES (the CLI) or
API_CASES (a library call that must raise, not return garbage or delete a file)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hostile as H
import ddim
from ddim import atomic
from ddim.checkpoint import BUNDLED_MODEL, MANIFEST, export_checkpoint, verify_checkpoint
from ddim.cli import main
from ddim.data import load_idx
from ddim.inversion import invert_image
from ddim.nn.diffusers_io import schedule_from_diffusers

FAST = ["--steps", "2", "--n", "2", "--quiet"]


def _bundle_edited(tmp: Path, edit=lambda cfg: cfg, manifest_edit=lambda m: m) -> str:
    """A copy of the bundled model whose config.json is ``edit(config)`` and whose manifest (matching that
    config, so the config itself and not its hash is what gets refused) is ``manifest_edit(manifest)``."""
    dst = tmp / "ckpt"
    shutil.copytree(BUNDLED_MODEL, dst)
    (dst / "config.json").write_text(json.dumps(edit(json.loads((dst / "config.json").read_text()))))
    manifest = json.loads((dst / MANIFEST).read_text())
    data = (dst / "config.json").read_bytes()
    manifest["config.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (dst / MANIFEST).write_text(json.dumps(manifest_edit(manifest)))
    return str(dst)


def _bundle_with(tmp: Path, **config_changes) -> str:
    """A copy of the bundled model whose config.json has ``config_changes`` (dotted keys)."""
    def edit(cfg):
        for key, value in config_changes.items():
            section, field = key.split(".")
            cfg[section][field] = value
        return cfg
    return _bundle_edited(tmp, edit)


def _nan_weights(tmp: Path) -> str:
    from safetensors.torch import load_file, save_file

    dst = Path(_bundle_with(tmp))
    tensors = load_file(str(dst / "ema.safetensors"))
    first = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, str(dst / "ema.safetensors"))
    manifest = json.loads((dst / MANIFEST).read_text())
    data = (dst / "ema.safetensors").read_bytes()
    manifest["ema.safetensors"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return str(dst)


def _huge_png(tmp: Path) -> str:
    path = tmp / "huge.png"
    Image.new("L", (20000, 20000)).save(path)  # ~400 KB on disk, 400 M pixels decoded
    return str(path)


def _loop(tmp: Path) -> str:
    (tmp / "a").symlink_to(tmp / "b")
    (tmp / "b").symlink_to(tmp / "a")
    return str(tmp / "a" / "x.png")


def _file(tmp: Path) -> str:
    (tmp / "file").write_text("x")
    return str(tmp / "file")


def _png(tmp: Path) -> str:
    Image.new("L", (28, 28), 128).save(tmp / "in.png")
    return str(tmp / "in.png")


def _foreign_config(tmp: Path) -> str:
    (tmp / "proj").mkdir()
    (tmp / "proj" / "config.json").write_text('{"name": "somebody else\'s"}')
    return str(tmp / "proj")


TRAIN = ["train", "--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
         "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--batch-size", "8"]


# (id, argv builder(tmp) -> list, expected message fragment)
CASES = [
    ("cfgpp λ above 1", lambda t: ["sample", "--guidance-method", "cfgpp", "--guidance", "1.5", "--out", str(t / "o.png")],
     "λ (the guidance weight of method 'cfgpp') must lie in [0, 1], got 1.5"),
    ("cfgpp with a solver reading half its pair", lambda t: ["sample", "--guidance-method", "cfgpp", "--solver",
                                                            "dpmpp-2m", "--out", str(t / "o.png")],
     "--solver dpmpp-2m reads one of them alone (allowed: ddim, pc)"),
    ("cfgpp with pc's heun predictor", lambda t: ["sample", "--guidance-method", "cfgpp", "--solver", "pc",
                                                  "--predictor", "heun", "--out", str(t / "o.png")],
     "--solver pc --predictor heun reads one of them alone"),
    ("reversed guidance interval", lambda t: ["sample", "--guidance-method", "interval", "--guidance-interval", "5,1",
                                              "--out", str(t / "o.png")], "must have 0 <= σ_lo < σ_hi, got (5.0, 1.0]"),
    ("auto without a guide", lambda t: ["sample", "--guidance-method", "auto", "--out", str(t / "o.png")],
     "--guide-checkpoint goes with --guidance-method auto, and auto needs it"),
    ("a guide without auto", lambda t: ["sample", "--guide-checkpoint", _bundle_with(t), "--out", str(t / "o.png")],
     "--guide-checkpoint goes with --guidance-method auto, and auto needs it"),
    ("a guide on another schedule", lambda t: ["sample", "--guidance-method", "auto", "--guide-checkpoint",
                                               _bundle_with(t, **{"schedule.beta_end": 0.03}), "--out",
                                               str(t / "o.png")], "the guide was trained on another noise schedule"),
    ("apg momentum 1", lambda t: ["sample", "--guidance-method", "apg", "--apg-momentum", "1", "--out",
                                  str(t / "o.png")], "apg_momentum must be a number in (-1, 1), got 1.0"),
    ("huge n and batch", lambda t: ["sample", "--n", "1000000000", "--batch-size", "1000000000", "--out",
                                    str(t / "o.png")], "--n must be an integer in [1, 1,000,000]"),
    ("huge batch", lambda t: ["sample", "--batch-size", "1000000000", "--out", str(t / "o.png")],
     "--batch-size must be an integer in"),
    ("config base_channels 65536", lambda t: ["sample", "--checkpoint", _bundle_with(t, **{"model.base_channels": 65536}),
                                              "--out", str(t / "o.png")], "base_channels must be an integer in [1, 2048]"),
    ("config num_steps 2e9", lambda t: ["sample", "--checkpoint", _bundle_with(t, **{"schedule.num_steps": 2_000_000_000}),
                                        "--out", str(t / "o.png")], "num_steps must be an integer in [1, 100,000]"),
    ("config image_size 114688", lambda t: ["sample", "--checkpoint", _bundle_with(t, **{"model.image_size": 114688}),
                                            "--out", str(t / "o.png")], "image_size must be an integer in [1, 4096]"),
    ("decompression bomb", lambda t: ["reconstruct", "--images", _huge_png(t), "--out", str(t / "o.png")],
     "huge.png is too large"),
    ("NaN EMA weights", lambda t: ["sample", "--checkpoint", _nan_weights(t), "--out", str(t / "o.png")],
     "holds NaN or Inf"),
    ("npz without .npz", lambda t: ["sample", "--npz", str(t / "x.bin"), "--out", str(t / "o.png")],
     "must end in .npz"),
    ("invert --out lat.bin", lambda t: ["invert", "--images", str(BUNDLED_MODEL / "config.json"), "--out",
                                        str(t / "lat.bin")], "must end in .npz"),
    ("bad extension", lambda t: ["sample", "--out", str(t / "new" / "x.bmpx")], "unknown image extension '.bmpx'"),
    ("symlink loop", lambda t: ["sample", "--out", _loop(t)], "leads nowhere"),
    ("file as a folder", lambda t: ["sample", "--out", str(Path(_file(t)) / "x.png")], "exists and is not a folder"),
    ("file as images-dir", lambda t: ["sample", "--images-dir", _file(t), "--out", str(t / "o.png")],
     "exists and is not a folder"),
    ("folder as --out", lambda t: ["sample", "--out", str(t) + "/"], "unknown image extension"),
    ("frames 1e6", lambda t: ["interpolate", "--seeds", "1", "2", "--frames", "1000000", "--out", str(t / "o.png")],
     "--frames must be an integer in [2, 1,000]"),
    ("n as a float", lambda t: ["sample", "--n", "1e9", "--out", str(t / "o.png")], "invalid int value: '1e9'"),
    # the second sixteen
    ("manifest entry not an object", lambda t: ["sample", "--checkpoint", _bundle_edited(
        t, manifest_edit=lambda m: {**m, "config.json": 5}), "--out", str(t / "o.png")],
     "entry for config.json must be an object with bytes and sha256, got 5"),
    ("config without model", lambda t: ["sample", "--checkpoint", _bundle_edited(
        t, lambda c: {k: v for k, v in c.items() if k != "model"}), "--out", str(t / "o.png")],
     "has no 'model' section"),
    ("config schedule a list", lambda t: ["sample", "--checkpoint", _bundle_edited(t, lambda c: {**c, "schedule": [1]}),
                                          "--out", str(t / "o.png")], "schedule config must be a JSON object"),
    ("config num_classes 1e12", lambda t: ["sample", "--checkpoint", _bundle_with(t, **{"model.num_classes": 10**12}),
                                           "--out", str(t / "o.png")],
     "num_classes must be None or an integer in [1, 100,000], got 1000000000000"),
    ("guidance inf inverts to NaN", lambda t: ["reconstruct", "--images", _png(t), "--class", "1", "--guidance", "inf",
                                               "--out", str(t / "o.png")],
     "--guidance must be a finite number >= 0, got inf"),
    ("reconstruct over its input", lambda t: ["reconstruct", "--images", str(t / "o.png"), "--out", str(t / "o.png")],
     "would overwrite the input image"),
    ("edit over its input", lambda t: ["edit", "--image", str(t / "o.png"), "--to-class", "1", "--out",
                                       str(t / "o.png")], "would overwrite the input image"),
    ("interpolate over an input", lambda t: ["interpolate", "--images", _png(t), str(t / "o.png"), "--out",
                                             f"{t}/./o.png"], "would overwrite the input image"),
    ("trajectory over the grid", lambda t: ["sample", "--out", str(t / "o.png"), "--trajectory", str(t / "o.png")],
     "o.png is the same path as --out"),
    ("images-dir at the grid's path", lambda t: ["sample", "--out", str(t / "g.png"), "--images-dir", str(t / "g.png")],
     "g.png is the same path as --out"),
    ("train --out a file", lambda t: [*TRAIN, "--out", str(t / "o.png")], "o.png: it exists and is not a folder"),
    ("train --out a checkpoint", lambda t: [*TRAIN, "--out", _bundle_with(t)], "is a checkpoint directory"),
    ("train --out a foreign config", lambda t: [*TRAIN, "--out", _foreign_config(t)], "is not a ddim run config"),
    ("train --patch-size 0", lambda t: [*TRAIN, "--patch-size", "0", "--out", str(t / "run")],
     "patch_size must be an integer in [1, 64], got 0"),
    ("train --image-size 1e5", lambda t: ["train", "--dataset", "digits", "--image-size", "100000", "--out",
                                          str(t / "run")], "image_size must be an integer in [1, 4096], got 100000"),
    ("corrector steps 1e8", lambda t: ["sample", "--solver", "pc", "--corrector-steps", "100000000", "--out",
                                       str(t / "o.png")], "corrector_steps must be an integer >= 0 (at most 1,000)"),
    ("langevin steps 1e8", lambda t: ["sample", "--solver", "langevin", "--langevin-steps", "100000000", "--out",
                                      str(t / "o.png")], "langevin_steps must be an integer >= 1 (at most 1,000)"),
    ("eval n 1e11", lambda t: ["eval", "--consistency", "--n", "100000000000", "--out", str(t / "ev")],
     "--n must be an integer in [2, 1,000,000]"),
    ("eval batch 1e11", lambda t: ["eval", "--consistency", "--batch-size", "100000000000", "--out", str(t / "ev")],
     "--batch-size must be an integer in [1, 65,536]"),
    # the third round: paths a checkpoint names, files it is made of, concurrent runs, late refusals
    ("manifest names ../", lambda t: ["sample", "--checkpoint", H.manifest_naming(t, "../secret.txt"), "--out",
                                      str(t / "o.png")], "names '../secret.txt', which is not a file of the checkpoint"),
    ("manifest names an absolute path", lambda t: ["sample", "--checkpoint", H.manifest_naming(t, "SECRET"), "--out",
                                                   str(t / "o.png")], "which is not a file of the checkpoint"),
    ("resume: manifest names ../", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out", H.run_manifest_naming(
        t, TRAIN, "../../../etc/passwd")], "names '../../../etc/passwd', which is not a file of the checkpoint"),
    ("weights a symlink", lambda t: ["sample", "--checkpoint", H.weights_link(t), "--out", str(t / "o.png")],
     "ema.safetensors is a symbolic link, not a regular file"),
    ("manifest a symlink to /dev/zero", lambda t: ["sample", "--checkpoint", H.manifest_link(t), "--out",
                                                   str(t / "o.png")], "manifest.json is a symbolic link"),
    ("manifest 65 MiB", lambda t: ["sample", "--checkpoint", H.manifest_huge(t), "--out", str(t / "o.png")],
     "manifest.json is too large: 68,157,440 bytes"),
    ("train into a busy folder", lambda t: [*TRAIN, "--out", H.busy(t)], "is in use by process"),
    ("train-classifier into a busy folder", lambda t: [
        "train-classifier", *[a for a in TRAIN[1:] if a not in ("--sample-every", "0")], "--out", H.busy(t)],
     "is in use by process"),
    ("eval into a busy folder", lambda t: ["eval", "--consistency", "--n", "2", "--steps", "2", "--out", H.busy(t)],
     "is in use by process"),
    ("idx with 0 images", lambda t: [*TRAIN[:2], "fashion-mnist", *TRAIN[3:], "--data-dir",
                                     H.idx_pair(t, 0, "train"), "--out", str(t / "run")],
     "fashion-mnist train holds no images"),
    ("config nested 1e5 deep", lambda t: ["sample", "--checkpoint", H.config_nested(t), "--out", str(t / "o.png")],
     "config.json nests deeper than 64 levels"),
    ("manifest nested 1e5 deep", lambda t: ["sample", "--checkpoint", H.manifest_nested(t), "--out",
                                            str(t / "o.png")], "manifest.json nests deeper than 64 levels"),
    ("eval: empty reference split", lambda t: ["eval", "--n", "2", "--steps", "2", "--eta", "0", "--data-dir",
                                               H.idx_pair(t, 0), "--out", str(t / "ev")],
     "fashion-mnist test holds no images"),
    ("eval --reconstruction: empty split", lambda t: ["eval", "--reconstruction", "--n", "2", "--steps", "2",
                                                      "--data-dir", H.idx_pair(t, 0), "--out", str(t / "ev")],
     "fashion-mnist test holds no images"),
    ("4-channel model to a PNG", lambda t: ["sample", "--checkpoint", H.diffusers_folder(t, 4, DDPM_SCHEDULER),
                                            "--out", str(t / "o.png")],
     "the model's images must have 1 or 3 channels to be written as a picture, got 4"),
    ("images-dir entry a folder", lambda t: ["sample", "--images-dir", H.images_dir_blocked(t), "--out",
                                             str(t / "o.png")], "000000.png: it exists and is a folder"),
    ("flow-matching scheduler", lambda t: ["sample", "--checkpoint", H.diffusers_folder(
        t, 1, {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000}), "--out",
        str(t / "o.png")], "scheduler 'FlowMatchEulerDiscreteScheduler' is not of the DDPM/DDIM family"),
    ("int32 weights", lambda t: ["sample", "--checkpoint", H.int_weights(t), "--out", str(t / "o.png")],
     "holds int32 weights in"),
    ("int32 diffusers weights", lambda t: ["sample", "--checkpoint", H.diffusers_folder(
        t, 1, DDPM_SCHEDULER, dtype=torch.int32), "--out", str(t / "o.png")], "holds I32 weights in"),
    ("betas a string", lambda t: ["sample", "--checkpoint", H.schedule_field(t, whole=True, name="custom",
                                                                             betas="abc"), "--out", str(t / "o.png")],
     "betas must be a 1-D sequence of numbers in (0, 1], got str 'abc'"),
    ("beta_start a string", lambda t: ["sample", "--checkpoint", H.schedule_field(t, beta_start="0.1"), "--out",
                                       str(t / "o.png")], "beta_start must be a number in (0, 1), got str '0.1'"),
    ("resume: state.json without optimizer", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out", H.run_state_edited(
        t, TRAIN, lambda st: {k: v for k, v in st.items() if k != "optimizer"})],
     "state.json or training_state.safetensors is malformed (KeyError: 'optimizer')"),
    ("resume: state.json step a string", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out", H.run_state_edited(
        t, TRAIN, lambda st: {**st, "step": "2"})], "state.json has no valid step (got '2'; its folder says 2)"),
    # the hostile tester's findings on the round's first fixes
    ("resume: adam_betas 5", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out", H.run_config_edited(
        t, TRAIN, lambda c: {**c, "train": {**c["train"], "adam_betas": 5}})], "adam_betas must be two numbers"),
    ("resume: custom schedule without betas", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out",
                                                         H.run_config_edited(t, TRAIN, lambda c: {**c, "schedule": {
                                                             "name": "custom"}})], "cannot resume from"),
    ("eval: a pipe as the lock file", lambda t: ["eval", "--consistency", "--n", "2", "--steps", "2", "--out",
                                                 H.fifo(t, ".ddim-lock")], "is a pipe, not the folder's lock file"),
    ("train: checkpoints a file", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out", H.run_edited(
        t, TRAIN, lambda run, ck: (shutil.rmtree(run / "checkpoints"), (run / "checkpoints").write_text("x")))],
     "checkpoints is in the way of the run"),
    ("train: metrics.jsonl a folder", lambda t: [*TRAIN, "--resume", "--steps", "4", "--out", H.run_edited(
        t, TRAIN, lambda run, ck: ((run / "metrics.jsonl").unlink(), (run / "metrics.jsonl").mkdir()))],
     "metrics.jsonl is in the way of the run"),
    ("resume: state step 3 in step_000004", lambda t: [*TRAIN, "--resume", "--steps", "6", "--out", H.run_state_edited(
        t, TRAIN, lambda st: {**st, "step": 1})], "has no valid step (got 1; its folder says 2)"),
    ("resume: a checkpoint folder linked outside", lambda t: [*TRAIN, "--resume", "--steps", "6", "--out", H.run_edited(
        t, TRAIN, lambda run, ck: (ck.rename(t / "outside"), (run / "checkpoints" / "step_000006").symlink_to(
            t / "outside")))], "step_000006 is a symbolic link; the checkpoints of a run must lie inside"),
    ("VE scheduler 1e9 steps", lambda t: ["sample", "--checkpoint", H.diffusers_folder(
        t, 1, {"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 10**9}), "--out", str(t / "o.png")],
     "num_train_timesteps must be an integer in [2, 100,000]"),
    ("norm_eps Infinity", lambda t: ["sample", "--checkpoint", H.config_field(t, "model", norm_eps=float("inf")),
                                     "--out", str(t / "o.png")], "norm_eps must be a number in (0, 1]"),
    ("manifest bytes a string", lambda t: ["sample", "--checkpoint", H.manifest_entry(
        t, "config.json", {"bytes": "1579", "sha256": "0" * 64}), "--out", str(t / "o.png")],
     "needs an integer bytes and a sha256 string"),
    ("manifest name 300 bytes", lambda t: ["sample", "--checkpoint", H.manifest_entry(
        t, "é" * 150, {"bytes": 1, "sha256": "0" * 64}), "--out", str(t / "o.png")],
     "which is not a file of the checkpoint"),
    ("data channels true", lambda t: ["sample", "--checkpoint", H.config_field(t, "data", channels=True), "--out",
                                      str(t / "o.png")], "channels must be 1, 3 or None, got True"),
    ("out name 256 bytes", lambda t: ["sample", "--out", str(t / ("a" * 252 + ".png"))], "is 256 bytes; file systems "
                                                                                          "take at most 255"),
    ("diffusers fallback, weights missing", lambda t: ["sample", "--checkpoint", H.diffusers_fallback(t, drop=2),
                                                       "--out", str(t / "o.png")], "does not fit its config: missing keys"),
    ("diffusers fallback, 24 GB", lambda t: ["sample", "--checkpoint", H.diffusers_fallback(
        t, block_out_channels=[4096, 4096], layers_per_block=4, down_block_types=["DownBlock2D"] * 2,
        up_block_types=["UpBlock2D"] * 2), "--out", str(t / "o.png")], "parameters, more than the"),
    ("diffusers num_class_embeds 1", lambda t: ["sample", "--checkpoint", H.diffusers_fallback(t, num_class_embeds=1),
                                                "--out", str(t / "o.png")],
     "num_class_embeds must be None or an integer >= 2"),
    ("freq_shift -1e308", lambda t: ["sample", "--checkpoint", H.config_field(t, "model", freq_shift=-1e308), "--out",
                                     str(t / "o.png")], "freq_shift must be a number in (−16, 16)"),
    ("VE sigmas 1e-300 .. 2e-300", lambda t: ["sample", "--checkpoint", H.diffusers_folder(
        t, 1, {"_class_name": "ScoreSdeVeScheduler", "sigma_min": 1e-300, "sigma_max": 2e-300}), "--out",
        str(t / "o.png")], "give no usable noise levels"),
    ("resume with fewer --steps", lambda t: [*TRAIN, "--resume", "--steps", "2", "--out", H.run_dir(t, TRAIN, 4)],
     "--steps 2 is below the step of the latest checkpoint (step_000004, step 4)"),
    # the fourth round: values refused whatever the environment, links to what is not a file, Pillow's own noise
    ("eval --dist-timeout 1e18", lambda t: ["eval", "--consistency", "--n", "2", "--dist-timeout", "1e18", "--out",
                                            str(t / "ev")], "must be a number of seconds in (0, 604,800], got 1e+18"),
    ("eval --dist-timeout 0", lambda t: ["eval", "--consistency", "--n", "2", "--dist-timeout", "0", "--out",
                                         str(t / "ev")], "argument --dist-timeout: the rendezvous timeout"),
    ("train --dist-timeout nan", lambda t: [*TRAIN, "--dist-timeout", "nan", "--out", str(t / "run")],
     "must be a number of seconds in (0, 604,800], got nan"),
    ("out a link to a pipe", lambda t: ["sample", "--out", H.link_to_fifo(t, "link.png")],
     "link.png: it exists and is not a regular file"),
    ("image of 144 M pixels", lambda t: ["reconstruct", "--images", H.png_header_only(t / "big.png", 12000, 12000),
                                         "--out", str(t / "o.png")], "big.png is too large: 12000×12000 pixels"),
]


DDPM_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}


@pytest.fixture(autouse=True)
def _release_claims():
    yield
    H.release_claims()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_one_line_and_exit_2(case, tmp_path, capsys):
    _, argv, message = case
    sentinel = tmp_path / "o.png"
    sentinel.write_bytes(b"previous output")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = argv(tmp_path)
    created = sorted(set(p.name for p in tmp_path.iterdir()) - set(before))  # what the case itself set up
    capsys.readouterr()
    assert main([*args, *([] if "--quiet" in args else ["--quiet"]), *(FAST[:2] if "--steps" not in args else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddim: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert sentinel.read_bytes() == b"previous output"
    after = sorted(set(p.name for p in tmp_path.iterdir()) - set(before) - set(created))
    assert after == [], after  # a refused command creates nothing


class _FullDisk:
    """A file object that accepts 100 bytes, then fails as a full disk does."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.n += len(b)
        if self.n > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.f.write(b)

    def fileno(self):  # no descriptor: writers (Pillow) that would write to it directly use write() instead
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_disk_full_during_any_output_write_keeps_the_previous_file(tmp_path, monkeypatch):
    from ddim.images import save_gif, save_grid, save_images, make_grid

    images = torch.rand(4, 1, 28, 28) * 2 - 1
    writers = {
        "grid.png": lambda p: save_grid(images, p),
        "grid.jpg": lambda p: save_grid(images, p),
        "anim.gif": lambda p: save_gif([make_grid(images[:2]), make_grid(images[2:])], p),
        "x.npz": lambda p: atomic.atomic_write(p, lambda f: np.savez(f, images=images.numpy())),
        "frames/000000.png": lambda p: save_images(images[:1], p.parent),
        "cell/config.json": lambda p: ddim.checkpoint.write_json(p, {"a": list(range(100))}),
    }
    real_fdopen = os.fdopen
    for name, write in writers.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old bytes")
        monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
        with pytest.raises(OSError, match="No space left on device"):
            write(path)
        monkeypatch.setattr(atomic.os, "fdopen", real_fdopen)
        assert path.read_bytes() == b"old bytes", name
        assert not list(path.parent.glob(atomic.TEMP_GLOB)), name  # no temporary file left behind
        write(path)  # and with room on the disk it is written
        assert path.read_bytes() != b"old bytes", name


def test_disk_full_while_checkpointing_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import safetensors.torch

    from ddim.checkpoint import list_checkpoints

    args = ["train", "--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
            "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--quiet",
            "--batch-size", "8", "--checkpoint-every", "2", "--keep-last", "0", "--out", str(tmp_path)]
    assert main([*args, "--steps", "2"]) == 0
    before = {p.name: (p / "ema.safetensors").read_bytes() for p in list_checkpoints(tmp_path)}

    def full(*a, **k):
        raise RuntimeError("IoError: No space left on device (os error 28)")  # safetensors' own error type

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    capsys.readouterr()
    assert main([*args, "--steps", "4", "--resume"]) == 2
    assert "cannot write" in capsys.readouterr().err
    monkeypatch.undo()
    assert {p.name: (p / "ema.safetensors").read_bytes() for p in list_checkpoints(tmp_path)} == before
    # a kill mid-write leaves a temporary folder; the next start removes it (and a moved-aside old one comes back)
    ck = tmp_path / "checkpoints"
    (ck / ".tmp-step_000004-123").mkdir()
    (ck / "step_000002").rename(ck / ".old-step_000002-123")
    assert main([*args, "--steps", "4", "--resume"]) == 0
    assert sorted(p.name for p in ck.iterdir()) == ["step_000002", "step_000004"]


def test_npz_into_a_new_folder(tmp_path):
    assert main(["sample", *FAST, "--npz", str(tmp_path / "new" / "x.npz"), "--out", str(tmp_path / "o.png")]) == 0
    assert np.load(tmp_path / "new" / "x.npz")["images"].shape == (2, 1, 28, 28)


def test_library_refusals():
    s = ddim.Schedule.linear(1000)
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="must return a torch.Tensor, got numpy.ndarray"):
        ddim.sample(lambda x, t: x.numpy(), s, x, steps=2)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        ddim.sample(lambda x, t: x, s, x, steps=2, eta=1.0, generator=42)


# (id, call, expected message): API misuse gets a ValueError naming the value, never garbage or a lost file
API_CASES = [
    ("threshold_max nan", lambda t: ddim.sample(lambda x, s: x, ddim.Schedule.linear(1000), torch.ones(2, 1, 4, 4),
                                                steps=2, threshold=0.9, threshold_max=float("nan")),
     "threshold_max must be a number >= 1 (inf: no cap, as in Imagen), got nan"),
    ("CFG float labels", lambda t: ddim.ClassifierFreeGuidance(ddim.load_checkpoint()[0], torch.tensor([2.7, 0.5]),
                                                               w=1.0), "labels must be integer class indices"),
    ("invert_image w inf", lambda t: invert_image(
        ddim.load_checkpoint()[0], ddim.Schedule.linear(1000), torch.zeros(1, 1, 28, 28),
        torch.zeros(1, dtype=torch.long), method="null-label", w=float("inf"), steps=2),
     "w must be a number >= 0 and finite, got inf"),
    ("export over a folder", lambda t: export_checkpoint(BUNDLED_MODEL, _foreign_config(t)),
     "proj: it exists and is not a checkpoint directory"),
    ("export over its source", lambda t: export_checkpoint(_bundle_with(t), t / "ckpt"),
     "is the checkpoint being exported"),
    ("null in trained_betas", lambda t: schedule_from_diffusers({"_class_name": "DDPMScheduler",
                                                                 "trained_betas": [0.1, None]}),
     "betas must be a 1-D sequence of numbers in (0, 1], got None at index 1"),
    ("prediction_type a list", lambda t: schedule_from_diffusers({"prediction_type": ["v"]}),
     "unsupported prediction_type ['v']"),
    ("betas a string", lambda t: ddim.Schedule.from_betas("0.1,0.2"), "got str '0.1,0.2'"),
    ("idx sizes that overflow", lambda t: load_idx(H.idx_overflowing(t)), f"needs {20 + (2**32 - 1)**4} bytes"),
    ("load on a missing GPU", lambda t: ddim.load_checkpoint(device="cuda:99"), "'cuda:99' was asked for but"),
    ("a schedule with β_0 = 1", lambda t: ddim.Schedule.from_betas([1.0]), "and not β_0"),
    ("a schedule of 200,000 steps", lambda t: ddim.Schedule.from_betas([1e-4] * 200_000), "at most 100,000 steps"),
    ("NaN model through sample", lambda t: ddim.sample(lambda x, s: x * float("nan"), ddim.Schedule.linear(1000),
                                                       torch.ones(2, 1, 4, 4), steps=2),
     "the model produced NaN or Inf in 2 of 2 samples"),
    ("NaN model through invert", lambda t: ddim.invert(lambda x, s: x * float("inf"), ddim.Schedule.linear(1000),
                                                       torch.ones(2, 1, 4, 4), steps=2),
     "the model produced NaN or Inf in 2 of 2 latents"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_misuse_is_refused(case, tmp_path):
    _, call, message = case
    with pytest.raises(ValueError) as e:
        call(tmp_path)
    assert message in str(e.value), str(e.value)
    if (tmp_path / "proj").exists():  # what an export would have replaced is still there, whole
        assert (tmp_path / "proj" / "config.json").read_text() == '{"name": "somebody else\'s"}'
    if (tmp_path / "ckpt").exists():
        verify_checkpoint(tmp_path / "ckpt")


def test_nan_model_output_is_an_error_not_a_black_image():
    from ddim.generate import generate
    from ddim.nn import UNet

    net = UNet(image_size=8, in_channels=1, out_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attn_resolutions=(), norm_groups=4).eval()
    with torch.no_grad():
        net.conv_out.bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="produced NaN or Inf in 3 of 3 images"):
        generate(net, ddim.Schedule.linear(1000), 3, ddim.SampleOptions(steps=2))


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from ddim.images import load_images

    wide = (np.arange(28 * 28).reshape(28, 28) * 83).astype(np.uint16)  # up to 65,000
    Image.fromarray(wide).save(tmp_path / "w.png")
    x, notes = load_images([tmp_path / "w.png"], 28, 1)
    assert "16-bit" in notes[0]
    assert (x > 0.99).float().mean() < 0.01  # clipping would make ~99 % of pixels white
    assert torch.allclose((x[0, 0] + 1) * 127.5, torch.from_numpy(wide / 257.0).float(), atol=0.51)


def test_readme_determinism_sentence_holds(tmp_path):
    """README: image i is the same whatever --n or --batch-size up to float rounding: raw values within
    1e-5, PNG pixels within one grey level."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "raw values agree to 1e-5 and PNG pixels to one grey level" in readme
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["sample", "--n", "3", "--batch-size", "1", "--steps", "5", "--npz", str(a), "--out",
                 str(tmp_path / "a.png"), "--quiet"]) == 0
    assert main(["sample", "--n", "5", "--batch-size", "5", "--steps", "5", "--npz", str(b), "--out",
                 str(tmp_path / "b.png"), "--quiet"]) == 0
    x, y = np.load(a)["images"], np.load(b)["images"][:3]
    assert np.abs(x - y).max() <= 1e-5
    to8 = lambda v: np.floor((np.clip(v, -1, 1) + 1) * 127.5 + 0.5)  # noqa: E731
    assert np.abs(to8(x) - to8(y)).max() <= 1

