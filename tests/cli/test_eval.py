"""`ddim eval`: the FID grid (outputs, determinism, resumption, torchrun), reconstruction error and
consistency, checked by what they write; bad input gives one line and exit code 2.

The checkpoint is an untrained tiny 28×28 class-conditional UNet on a 50-step schedule, so every run
takes a second or two: the numbers mean nothing, the bookkeeping around them is what is tested. The
reference statistics use the first 300 Fashion-MNIST test images, cached once for the module."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from gmm import GaussianMixture
from PIL import Image
from subprocesses import torchrun

from ddim import Schedule
from ddim.checkpoint import load_checkpoint, save_checkpoint
from ddim.cli import main
from ddim.data import load_dataset
from ddim.evaluate import FeatureExtractor
from ddim.evaluate.runner import Cell, chunk_ranges, rank_share, reconstruction_errors
from ddim import SampleOptions
from ddim.generate import RunOptions, generate, generate_batch, sampling_network
from ddim.nn import unet_from_preset
from ddim.train import DataConfig, RunConfig, TrainConfig
from ddim.distributed import DistInfo

T = 50   # training steps of the test schedule: the S = T reference of --consistency stays cheap
GRID = ["--steps", "2,3", "--eta", "0,large", "--n", "8", "--batch-size", "4", "--reference-limit", "300",
        "--device", "cpu", "--quiet"]
METRICS = ("fid", "fid_std", "kid_mean", "kid_std", "precision", "recall", "n", "k")


def _save(root, image_size: int):
    """An untrained class-conditional UNet with a random (not zeroed) output layer, as a checkpoint."""
    torch.manual_seed(0)
    model = unet_from_preset("small", image_size=image_size, base_channels=8, channel_mult=(1,), num_res_blocks=1,
                             attn_resolutions=(), norm_groups=4, dropout=0.0)
    with torch.no_grad():  # the DDPM init zeroes the output conv: ε̂ = 0 would make every sampler alike
        model.conv_out.weight.normal_(0, 0.05)
    schedule = Schedule.linear(T, beta_start=1e-3, beta_end=0.2)
    config = RunConfig(model=model.config, train=TrainConfig(), data=DataConfig("fashion-mnist"),
                       schedule=schedule.to_config())
    weights = model.state_dict()
    save_checkpoint(root, 0, config.to_dict(), {"model": weights, "ema": weights}, {"step": 0})
    return str(root)


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Reference statistics go to a private cache (children, e.g. under torchrun, inherit it)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("DDIM_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("fmnist"), 28)


@pytest.fixture(scope="module")
def grid_run(ckpt, tmp_path_factory):
    """One grid run: its output directory and results.json."""
    out = tmp_path_factory.mktemp("grid")
    assert main(["eval", "--checkpoint", ckpt, *GRID, "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def metrics(results):
    return [{k: c[k] for k in ("steps", "eta", *METRICS)} for c in results["cells"]]


def chunk_files(out):
    return sorted((out / "samples").glob("*/*.npy"))


# ------------------------------------------------------------------------------------------- grid

def test_grid_writes_every_output(grid_run):
    out, res = grid_run
    assert [(c["steps"], c["eta"]) for c in res["cells"]] == [(2, 0.0), (2, "large"), (3, 0.0), (3, "large")]
    for c in res["cells"]:
        assert c["n"] == 8 and c["fid"] > 0 and 0 <= c["precision"] <= 1 and 0 <= c["recall"] <= 1
        assert c["sampled_chunks"] == 2 and c["reused_chunks"] == 0 and c["sample_seconds"] >= 0
    assert res["extractor_sha256"] == FeatureExtractor().sha256
    assert res["reference"] == {"name": "fashion-mnist/test-first300", "n": 300}
    assert res["floor"]["images"] == "fashion-mnist/train" and res["floor"]["n_fake"] == 8
    assert 0 < res["floor"]["fid"] < min(c["fid"] for c in res["cells"])   # real images beat noise
    assert res["config"]["steps"] == [2, 3] and res["config"]["eta"] == [0.0, "large"]
    assert {"ddim", "torch", "numpy", "python"} <= set(res["versions"])

    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("steps,eta,solver,nfe,fid,") and len(rows) == 5
    assert rows[2].startswith("2,large,ddim,2,")
    md = (out / "results.md").read_text()
    fid3, std3 = (float(v) for v in rows[3].split(",")[4:6])
    assert "| S | η = 0 | σ̂ |" in md and f"| 3 | {fid3:.3g} ± {std3:.3g} |" in md and std3 > 0
    assert "Floor: FID" in md
    with Image.open(out / "fid_vs_steps.png") as img:
        assert img.format == "PNG" and img.size[0] > 300
    with Image.open(out / "samples.png") as img:          # 4 cells × their first 8 (of n = 8) samples
        assert img.size == (8 * 30 + 2, 4 * 30 + 2)
        grid = np.asarray(img.convert("L"))
    first = np.load(out / "samples" / "S3_eta0" / "0000004-0000008.npy")[1, 0]    # sample 5 of row 3
    assert np.array_equal(grid[2 + 2 * 30:2 + 2 * 30 + 28, 2 + 5 * 30:2 + 5 * 30 + 28], first)
    assert "Rows: S = 2 η = 0; S = 2 σ̂; S = 3 η = 0; S = 3 σ̂." in md
    # the stored samples: 2 chunks of 4 per cell, uint8 28×28
    files = chunk_files(out)
    assert [f.name for f in files[:2]] == ["0000000-0000004.npy", "0000004-0000008.npy"] and len(files) == 8
    assert np.load(files[0]).shape == (4, 1, 28, 28) and np.load(files[0]).dtype == np.uint8


def test_solver_columns(ckpt, grid_run, tmp_path):
    """--solver adds one column per solver; DDIM's cells are the grid run's own (same store names, same
    images), Heun's record 2S − 1 model calls, and the plot/table say so."""
    args = list(GRID)
    args[args.index("--eta") + 1] = "0"
    assert main(["eval", "--checkpoint", ckpt, *args, "--solver", "ddim,dpmpp-2m,heun", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert [(c["steps"], c["solver"], c["nfe"]) for c in res["cells"]] == [
        (2, "ddim", 2), (3, "ddim", 3), (2, "dpmpp-2m", 2), (2, "heun", 3), (3, "dpmpp-2m", 3), (3, "heun", 5)]
    assert (tmp_path / "samples" / "S3_eta0" / "0000004-0000008.npy").read_bytes() == \
        (grid_run[0] / "samples" / "S3_eta0" / "0000004-0000008.npy").read_bytes()
    heun = np.load(tmp_path / "samples" / "S3_heun" / "0000000-0000004.npy")
    assert not np.array_equal(heun, np.load(tmp_path / "samples" / "S3_eta0" / "0000000-0000004.npy"))
    md = (tmp_path / "results.md").read_text()
    assert "| S | η = 0 | dpmpp-2m | heun |" in md and "(5 calls)" in md
    assert json.loads((tmp_path / "samples" / "S2_heun" / "key.json").read_text())["solver"] == "heun"


def test_same_seed_same_numbers(ckpt, grid_run, tmp_path):
    assert main(["eval", "--checkpoint", ckpt, *GRID, "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert metrics(again) == metrics(grid_run[1]) and again["floor"] == grid_run[1]["floor"]
    for a, b in zip(chunk_files(tmp_path), chunk_files(grid_run[0])):
        assert a.read_bytes() == b.read_bytes()


def test_resume_redraws_only_missing_chunks(ckpt, grid_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(grid_run[0], out)
    for name in ("results.json", "results.csv", "results.md", "fid_vs_steps.png"):
        (out / name).unlink()
    lost = out / "samples" / "S3_eta0" / "0000004-0000008.npy"
    lost.unlink()                                               # as if killed while drawing it
    (lost.parent / ".0000004-0000008.npy.123.tmp").write_bytes(b"half a chunk")
    kept = {f: f.stat().st_mtime_ns for f in chunk_files(out)}
    assert main(["eval", "--checkpoint", ckpt, *GRID, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert metrics(res) == metrics(grid_run[1])
    assert {f: f.stat().st_mtime_ns for f in kept} == kept       # completed chunks were not redrawn
    assert lost.read_bytes() == (grid_run[0] / "samples" / "S3_eta0" / lost.name).read_bytes()
    assert not list(lost.parent.glob(".*.tmp"))
    assert [(c["sampled_chunks"], c["reused_chunks"]) for c in res["cells"]] == [(0, 2), (0, 2), (1, 1), (0, 2)]


def test_samples_of_other_settings_are_refused(ckpt, grid_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(grid_run[0], out)
    code, err = _error(capsys, ["eval", "--checkpoint", ckpt, *GRID, "--out", str(out), "--seed", "1"])
    assert code == 2 and len(err) == 1 and "drawn with other settings (seed differ)" in err[0], err


def test_clip_changes_the_samples_and_is_recorded(ckpt, grid_run, tmp_path, capsys):
    assert grid_run[1]["config"]["clip"] is None                 # off by default: the paper's plain update
    assert main(["eval", "--checkpoint", ckpt, *GRID, "--out", str(tmp_path), "--clip", "1"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["clip"] == 1.0 and "clip 1.0" in (tmp_path / "results.md").read_text()
    clipped, plain = chunk_files(tmp_path), chunk_files(grid_run[0])
    assert [f.name for f in clipped] == [f.name for f in plain]
    # the untrained net's x̂_0 leaves [-1, 1], so clipping changes most chunks
    assert sum(a.read_bytes() != b.read_bytes() for a, b in zip(clipped, plain)) >= 4
    # unclipped chunks are never reused for a clipped run
    code, err = _error(capsys, ["eval", "--checkpoint", ckpt, *GRID, "--out", str(grid_run[0]), "--clip", "1"])
    assert code == 2 and "drawn with other settings (clip, eps_from_clipped_x0 differ)" in err[0], err
    assert res["config"]["eps_from_clipped_x0"] is True   # --clip re-derives ε̂, as `ddim sample` does


def test_torchrun_matches_one_process(ckpt, grid_run, tmp_path):
    # torchrun reads "--n" as an abbreviation of its own options; the long form passes through
    args = ["--num-samples" if a == "--n" else a for a in GRID]
    proc = torchrun(["-m", "ddim", "eval", "--checkpoint", ckpt, *args, "--out", tmp_path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["config"]["world_size"] == 2
    assert metrics(res) == metrics(grid_run[1])                 # exactly: the same chunks, drawn alike


def test_chunks_are_the_images_of_ddim_sample(ckpt):
    """A chunk of samples start … stop−1 is what `ddim sample` (ddim.generate) draws for those indices."""
    model, schedule, _ = load_checkpoint(ckpt)
    for eta in (0.0, "large"):
        opts, run = SampleOptions(steps=3, eta=eta), RunOptions(seed=3, batch_size=3)
        whole = generate(model, schedule, 6, opts, run=run)
        net = sampling_network(model, "cpu")   # the network both run (channels_last on the CPU)
        parts = torch.cat([generate_batch(net, schedule, r, opts, run=run) for r in chunk_ranges(6, 3)])
        assert torch.equal(parts, whole)


def test_rank_shares_partition_the_chunks():
    chunks = chunk_ranges(10, 3)
    assert [len(r) for r in chunks] == [3, 3, 3, 1]
    for world in (1, 2, 3, 5):
        shares = [rank_share(chunks, DistInfo(r, world)) for r in range(world)]
        assert sum(shares, []) == chunks
    assert Cell(10, 0.2).name == "S10_eta0.2" and Cell(5, "large").name == "S5_etalarge"


# ------------------------------------------------------------------------ reconstruction, consistency

def test_reconstruction_cli(ckpt, tmp_path, capsys):
    assert main(["eval", "--checkpoint", ckpt, "--reconstruction", "--steps", "2,5", "--n", "3", "--batch-size", "2",
                 "--out", str(tmp_path), "--device", "cpu", "--quiet"]) == 0
    assert "| 5 |" in capsys.readouterr().out
    res = json.loads((tmp_path / "reconstruction.json").read_text())
    assert res["images"] == "fashion-mnist/test" and [r["steps"] for r in res["rows"]] == [2, 5]
    assert all(r["n"] == 3 and math.isfinite(r["mse_mean"]) and 0 <= r["mse_mean"] <= 1 for r in res["rows"])
    assert len((tmp_path / "reconstruction.csv").read_text().splitlines()) == 3
    assert "| 2 |" in (tmp_path / "reconstruction.md").read_text()


def test_reconstruction_error_falls_as_one_over_steps_squared():
    """For Gaussian data the optimal ε is linear and known (tests/gmm.py): inversion and sampling then
    differ only by the discretisation error of the η = 0 ODE, first order in 1/S, so the per-dimension
    MSE falls like 1/S² (seen 0.021, 0.0065, 0.0012, 3e-4, 8e-5, 1.3e-5, 3e-6 for S = 10 … 1000)."""
    data = load_dataset("fashion-mnist", split="test")
    x = data.to_float(slice(0, 8))
    oracle = GaussianMixture([1.0], [data.to_float(slice(0, 500)).mean(0).flatten().tolist()], [0.3])
    schedule = Schedule.linear(1000)
    steps = (10, 20, 50, 100, 200, 500, 1000)
    rows = reconstruction_errors(oracle.model(schedule), schedule, x, None, steps, run=RunOptions(batch_size=8))
    mse = [r["mse_mean"] for r in rows]
    assert all(a > b for a, b in zip(mse, mse[1:])), mse
    orders = [math.log(a / b) / math.log(t / s) for (s, a), (t, b) in zip(zip(steps, mse), zip(steps[1:], mse[1:]))]
    assert all(1.5 < p < 2.5 for p in orders[1:]), orders   # S = 10 is not yet asymptotic
    assert mse[-1] < 1e-5


def test_consistency_cli(ckpt, tmp_path):
    assert main(["eval", "--checkpoint", ckpt, "--consistency", "--steps", "2,5,50", "--n", "3", "--out",
                 str(tmp_path), "--device", "cpu", "--quiet", "--seed", "4"]) == 0
    res = json.loads((tmp_path / "consistency.json").read_text())
    assert [r["steps"] for r in res["rows"]] == [2, 5]        # S = T is the reference column, not a row
    assert all(r["k"] == 3 and r["mse_mean"] > 0 and r["mae_mean"] > 0 for r in res["rows"])
    with Image.open(tmp_path / "consistency.png") as img:
        assert img.size == (3 * 30 + 2, 3 * 30 + 2)         # rows: 3 seeds; columns: S = 2, 5, T
    assert "consistency.png" in (tmp_path / "consistency.md").read_text()


# --------------------------------------------------------------------------------------- bad input

def _error(capsys, args):
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("digits"), 8)


@pytest.mark.parametrize("args, msg", [
    (["--eta", "0,x"], "argument --eta: 'x' in '0,x' is not an η (allowed: comma-separated numbers >= 0 or 'large'"),
    (["--eta", "-1"], "'-1' in '-1' is not an η"),
    (["--steps", "10,abc"], "argument --steps: 'abc' in '10,abc' is not a step count (allowed: comma-separated "
                            "integers >= 1"),
    (["--steps", "0"], "'0' in '0' is not a step count"),
    (["--steps", "80"], "1 <= steps <= T=50, got 80"),
    (["--n", "1"], "argument --n/--num-samples: expected an integer >= 2, got '1'"),
    (["--consistency", "--eta", "1"], "--eta applies to the FID grid only"),
    (["--reconstruction", "--consistency"], "not allowed with argument"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--seed", "x"], "argument --seed: expected an integer >= 0, got 'x'"),
    (["--clip", "-1"], "--clip must be a number >= 0 (0: off), got -1"),
    (["--reconstruction", "--clip", "1"], "--clip 1 does not apply to --reconstruction (allowed: 0)"),
    (["--solver", "ddim,euler"], "'euler' in 'ddim,euler' is not a solver (allowed: comma-separated names from ddim"),
    (["--consistency", "--solver", "heun"], "--solver applies to the FID grid only; --consistency uses DDIM"),
    (["--solver", "heun", "--eta", "1"], "--eta applies to the ddim solver"),
])
def test_bad_input_is_one_line(ckpt, tmp_path, capsys, args, msg):
    out = tmp_path / "out"
    code, err = _error(capsys, ["eval", "--checkpoint", ckpt, "--out", str(out), "--quiet", *args])
    assert code == 2 and len(err) == 1 and err[0].startswith("ddim: error:") and msg in err[0], err
    assert not out.exists()  # rejected before anything is written


def test_fid_needs_the_extractor_image_size(digits_ckpt, tmp_path, capsys):
    code, err = _error(capsys, ["eval", "--checkpoint", digits_ckpt, "--out", str(tmp_path), "--steps", "2"])
    assert code == 2 and len(err) == 1, err
    assert "makes 1×8×8 images, but the FID feature extractor" in err[0] and "takes 1×28×28" in err[0]
    # the other modes measure distances between images and work at any size
    assert main(["eval", "--checkpoint", digits_ckpt, "--consistency", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path), "--quiet"]) == 0


@pytest.mark.parametrize("mode", [[], ["--reconstruction"]])
def test_missing_data_is_one_line_and_leaves_no_folder(ckpt, tmp_path, capsys, mode):
    out = tmp_path / "deep" / "out"
    code, err = _error(capsys, ["eval", "--checkpoint", ckpt, "--out", str(out), "--quiet", "--steps", "2",
                                "--n", "2", "--data-dir", str(tmp_path / "nowhere"), *mode])
    assert code == 2 and len(err) == 1 and "apt-get install dataset-fashion-mnist" in err[0], err
    assert not (tmp_path / "deep").exists()


def test_out_that_is_a_file_is_refused_before_work(ckpt, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, err = _error(capsys, ["eval", "--checkpoint", ckpt, "--out", str(tmp_path / "f"), "--quiet", "--steps", "2"])
    assert code == 2 and err == [f"ddim: error: cannot write {tmp_path / 'f'}: it exists and is not a folder"], err


def test_stores_written_before_a_key_field_existed_are_still_read(ckpt, grid_run, tmp_path):
    """A sample store whose key.json predates channels_last / eps_from_clipped_x0 reads them as their old
    value (False): a store drawn that way is reused, one drawn otherwise is still refused."""
    import shutil

    from ddim.evaluate.runner import KEY_DEFAULTS, SampleStore

    src = next((grid_run[0] / "samples").iterdir())
    old = tmp_path / "old"
    shutil.copytree(src, old)
    key = json.loads((old / "key.json").read_text())
    for k in KEY_DEFAULTS:
        key.pop(k)
    (old / "key.json").write_text(json.dumps(key))
    current = json.loads((src / "key.json").read_text())
    SampleStore(old, {**current, "channels_last": False}).open(create=False)   # what it was drawn with
    with pytest.raises(ValueError, match=r"\(channels_last differ\)"):
        SampleStore(old, {**current, "channels_last": True}).open(create=False)


def test_sampling_network_copies_modules_only(ckpt):
    model, _, _ = load_checkpoint(ckpt)
    net = sampling_network(model, "cpu")
    assert net is not model and net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv_in.weight.is_contiguous()                  # the caller's network keeps its layout
    assert sampling_network(model, "cpu", channels_last=False) is model

    class Duck:   # any network with .config and .null_label, not an nn.Module: run as it is
        config, null_label = model.config, model.null_label

        def __call__(self, x, t, labels=None):
            return model(x, t, labels)

    duck = Duck()
    assert sampling_network(duck, "cpu") is duck
    assert generate(duck, load_checkpoint(ckpt)[1], 2, SampleOptions(steps=2)).shape == (2, 1, 28, 28)
