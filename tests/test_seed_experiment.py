"""scripts/seed_experiment.sh (the seed's AFHQ-cat run) and scripts/folder_fid.py: the dry run end to end, so
the recipe cannot rot; bad data refused in one line before any training; the pieces the slice and the FID
report are made of."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from subprocesses import ddim_env

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


seed = _script("seed_experiment")
folder_fid = _script("folder_fid")


def _run(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "seed_experiment.sh"), *map(str, args)], capture_output=True,
                          text=True, env={**ddim_env(), "PYTHON": sys.executable}, timeout=timeout)


# ------------------------------------------------------------------------------ the dry run

@pytest.mark.slow
def test_dry_run_slices_resumes_samples_and_scores(tmp_path):
    out = tmp_path / "seed"
    first = _run("--dry-run", out, "--slice-only")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "expected wall time" in first.stderr and not (out / "samples").exists()
    projection = json.loads((out / "slice.json").read_text())
    assert projection["steps_per_s"] > 0 and projection["target_steps"] == 20 and projection["tiny"]
    assert projection["train_gflops_per_image"] > 0

    second = _run("--dry-run", out)   # resumes from the slice's checkpoint
    assert second.returncode == 0, second.stderr[-3000:]
    config = json.loads((out / "train" / "config.json").read_text())
    assert config["train"]["ema_decay"] == 0.9999 and config["train"]["lr"] == 2e-4
    assert config["data"]["hflip"] and config["data"]["image_size"] == 32 and config["data"]["channels"] == 3
    assert config["model"]["num_classes"] is None and config["schedule"]["num_steps"] == 1000
    folder = out / "samples" / "step000020"
    for steps, eta in seed.DRY_CELLS:
        with np.load(folder / f"ddim{steps}_eta{eta:g}.npz") as f:
            assert f["images"].shape == (64, 3, 32, 32)
    report = json.loads((folder / "fid_fallback.json").read_text())
    assert report["features"]["space"] == "fallback" and not report["features"]["comparable_with_published"]
    assert len(report["rows"]) == 4 and all(r["fid"] >= 0 for r in report["rows"])
    results = (out / "results.md").read_text()
    assert "FALLBACK" in results and "| 5 |" in results and "| 10 |" in results

    third = _run("--dry-run", out)    # everything done: nothing is recomputed
    assert third.returncode == 0 and "nothing to train" in third.stderr and "exists; kept" in third.stderr


# ------------------------------------------------------------------------------ refusals

def _broken_folder(root: Path) -> Path:
    from PIL import Image

    root.mkdir()
    Image.new("RGB", (48, 40), (200, 10, 10)).save(root / "ok.jpg")
    (root / "bad.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.parametrize("case, words", [("missing", "does not exist"), ("empty", "holds no images"),
                                         ("unreadable", "bad.jpg")])
def test_bad_data_is_one_line_and_exit_2_before_training(tmp_path, case, words):
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    elif case == "unreadable":
        _broken_folder(data)
    proc = _run(data, tmp_path / "out", timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seed_experiment: error:") and words in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()   # nothing trained, nothing written


def test_missing_inception_weights_are_refused_up_front(tmp_path):
    proc = _run("--dry-run", tmp_path / "out", "--inception-weights", tmp_path / "nope.pth", timeout=120)
    assert proc.returncode == 2 and "--inception-weights" in proc.stderr and not (tmp_path / "out" / "train").exists()


# ------------------------------------------------------------------------------ the pieces

def test_train_command_is_the_ddpm_recipe_and_parses(tmp_path):
    from ddim.cli import build_parser

    r = seed.Recipe(data_dir=tmp_path / "cats", out=tmp_path / "out")
    args = build_parser().parse_args(seed.train_command(r))
    assert (args.preset, args.batch_size, args.steps, args.lr, args.ema_decay) == ("cifar10", 128, 150_000, 2e-4, 0.9999)
    assert (args.schedule, args.num_train_steps, args.image_size, args.channels) == ("linear", 1000, 32, 3)
    assert args.hflip and args.class_cond is False and args.resume and args.grad_clip == 1 and args.warmup == 5000
    for steps, eta in seed.SAMPLE_CELLS:
        s = build_parser().parse_args(seed.sample_command(r, steps, eta, tmp_path / "x.npz"))
        assert (s.n, s.steps, s.eta) == (2000, steps, eta)


def test_slice_drops_the_first_window_and_skips_stale_and_cut_lines(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [{"step": 10, "images_per_s": 1.0}]                        # before the resumed step: not this run
    lines += [{"step": 20 + 10 * k, "images_per_s": 64.0 if k else 6.4} for k in range(4)]
    metrics.write_text("\n".join(map(json.dumps, lines)) + '\n{"step": 6')   # a line a kill cut short
    windows = seed.new_windows(metrics, start=10, batch=64)
    assert windows == [(10, 100.0), (10, 10.0), (10, 10.0), (10, 10.0)]
    m = seed.measure(windows, batch=64)
    assert m["steps_measured"] == 30 and m["steps_per_s"] == pytest.approx(1.0) and not m["includes_warmup"]
    assert seed.measure(windows[:1], 64)["includes_warmup"] and seed.measure([], 64) is None


def test_fallback_features_are_fixed_and_named():
    a, b = folder_fid.RandomConvFeatures(), folder_fid.RandomConvFeatures()
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    assert a.sha256 == b.sha256 and a(x).shape == (5, 256) and torch.equal(a(x), b(x))
    assert a(torch.nn.functional.interpolate(x, size=64)).shape == (5, 256)   # any size: resized to 32 first
    ext, info = folder_fid.make_extractor(None)
    assert info["space"] == "fallback" and "NOT Inception" in info["name"] and info["sha256"] == a.sha256


@pytest.mark.parametrize("arrays, words", [({"x": np.zeros((4, 3, 32, 32), np.float32)}, "no 'images'"),
                                           ({"images": np.zeros((4, 1, 32, 32), np.float32)}, "expected float"),
                                           ({"images": np.full((4, 3, 32, 32), np.nan, np.float32)}, "NaN")])
def test_bad_samples_files_are_refused(tmp_path, arrays, words):
    path = tmp_path / "s.npz"
    np.savez(path, **arrays)
    with pytest.raises(folder_fid.FeatureError, match=words):
        folder_fid.load_samples(path, (3, 32, 32))


def test_folder_fid_cli_scores_npz_against_a_folder(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "cats"
    data.mkdir()
    g = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray((g.random((6, 6, 3)) * 255).astype(np.uint8)).resize((40, 48)).save(data / f"{i}.png")
    np.savez(tmp_path / "s.npz", images=g.uniform(-1, 1, (10, 3, 32, 32)).astype(np.float32))
    rc = folder_fid.main([str(tmp_path / "s.npz"), "--data-dir", str(data), "--device", "cpu", "--fid-rounds", "2",
                          "--kid-subsets", "5", "--json", str(tmp_path / "r.json")])
    assert rc == 0 and "NOT Inception" in capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference"]["n"] == 12 and report["rows"][0]["n_fake"] == 10 and report["floor"]["n_fake"] == 6
    assert report["rows"][0]["fid"] > report["floor"]["fid"]   # noise is farther from the data than the data
