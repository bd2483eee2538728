"""The third hardening round's cases that a table row of test_hardening.py cannot hold: runs that need two
processes, a rerun, a warning or a positive result (each fails on the code before the round)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import hostile as H
import ddim
from ddim.cli import main
from test_hardening import FAST, TRAIN, _png


@pytest.fixture(autouse=True)
def _release_claims():
    yield
    H.release_claims()


@pytest.mark.parametrize("solver", sorted(ddim.samplers.SOLVERS))
def test_every_solver_samples_grids_ending_at_t0_without_alpha_one(solver):
    """set_alpha_to_one=False (Stable Diffusion's scheduler configs) makes the last step ᾱ_0 → ᾱ_0: h = 0."""
    from ddim.timesteps import SPACINGS

    s, x = ddim.Schedule.linear(1000), torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    for spacing in SPACINGS:
        for steps in (1, 2, 3, 10):
            out = ddim.sample(lambda x, t: 0.1 * x, s, x, steps=steps, spacing=spacing, solver=solver,
                              set_alpha_to_one=False, generator=torch.Generator().manual_seed(1))
            assert torch.isfinite(out).all(), (spacing, steps)


@pytest.mark.parametrize("argv, rank", [(TRAIN, 0), (["eval", "--n", "2", "--steps", "2", "--eta", "0"], 1)])
def test_a_rank_without_peers_gives_up_in_one_line(argv, rank, tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(H.free_port()))
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    start = time.monotonic()
    assert main([*argv, "--dist-timeout", "2", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - start < 30
    assert err.count("\n") == 2 and f"ddim: note: rank {rank} of 2: waiting up to 2 s" in err, err
    assert f"ddim: error: rank {rank} of 2: " in err and "within 2 s" in err and "--dist-timeout" in err
    assert not (tmp_path / "out").exists()


def test_two_processes_started_by_hand_meet_and_train(tmp_path):
    """The by-hand rendezvous (no torchrun agent) works when both ranks come."""
    import subprocess
    import sys

    env = H.sandbox_env(WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=H.free_port(), OMP_NUM_THREADS=1)
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    cmd = [sys.executable, "-m", "ddim", *TRAIN, "--quiet", "--steps", "2", "--dist-timeout", "60", "--out",
           str(tmp_path / "run")]
    procs = [subprocess.Popen(cmd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE)
             for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "manifest.json").is_file()


def test_a_killed_runs_claim_does_not_block_the_next(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from ddim.files import claim_folder\n"
                               f"with claim_folder({str(out)!r}, 'ddim train'): print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    assert main([*TRAIN, "--quiet", "--steps", "2", "--out", str(out)]) == 2  # held: refused
    holder.kill()
    holder.wait()
    assert main([*TRAIN, "--quiet", "--steps", "2", "--out", str(out)]) == 0  # SIGKILL dropped the claim


def test_a_damaged_sample_chunk_is_redrawn(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDIM_CACHE_DIR", str(tmp_path / "cache"))  # reference statistics: this test's own
    args = ["eval", "--n", "4", "--batch-size", "2", "--steps", "2", "--eta", "0", "--reference-limit", "300",
            "--out", str(tmp_path / "ev")]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "sampling: 0step" not in err and "sampling: 100%" in err  # one progress bar, made once its total is known
    chunk = tmp_path / "ev" / "samples" / "S2_eta0" / "0000002-0000004.npy"
    good, results = chunk.read_bytes(), (tmp_path / "ev" / "results.json").read_text()
    for damage in (b"", good[:100], good[:-1]):
        chunk.write_bytes(damage)
        assert main([*args, "--quiet"]) == 0, damage[:10]
        assert chunk.read_bytes() == good
        res = json.loads((tmp_path / "ev" / "results.json").read_text())
        assert res["cells"][0]["fid"] == pytest.approx(json.loads(results)["cells"][0]["fid"], rel=1e-9)
        assert (res["cells"][0]["sampled_chunks"], res["cells"][0]["reused_chunks"]) == (1, 1)


def test_a_4_channel_model_samples_to_npz_only(tmp_path, capsys):
    folder = H.diffusers_folder(tmp_path, 4, {"_class_name": "DDIMScheduler"})
    assert main(["sample", "--checkpoint", folder, "--n", "2", "--steps", "2", "--npz", str(tmp_path / "x.npz"),
                 "--out", str(tmp_path / "o.png")]) == 0
    assert np.load(tmp_path / "x.npz")["images"].shape == (2, 4, 8, 8) and not (tmp_path / "o.png").exists()
    assert "wrote " + str(tmp_path / "x.npz") in capsys.readouterr().err


def test_a_bare_unet_reads_the_scheduler_beside_it_or_says_what_it_assumed(tmp_path):
    beside = H.diffusers_folder(tmp_path / "a", 1, {"_class_name": "DDPMScheduler", "num_train_timesteps": 10},
                                beside=True)
    assert ddim.load_checkpoint(beside)[1].num_steps == 10
    bare = H.diffusers_folder(tmp_path / "b", 1)
    with pytest.warns(UserWarning, match="no scheduler_config.json .* assuming DDPM's schedule .* T = 1000"):
        assert ddim.load_checkpoint(bare)[1].num_steps == 1000


def test_a_numpy_per_step_eta_is_the_tensor_one():
    s, x = ddim.Schedule.linear(1000), torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    runs = [ddim.sample(lambda x, t: 0.1 * x, s, x, steps=3, eta=eta, generator=torch.Generator().manual_seed(1))
            for eta in (np.array([1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.0]), np.float32(0.5), 0.5)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[2], runs[3])


def test_a_symlinked_out_is_followed_not_replaced(tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    (tmp_path / "link.png").symlink_to(target)
    assert main(["sample", *FAST, "--out", str(tmp_path / "link.png")]) == 0
    assert (tmp_path / "link.png").is_symlink() and Image.open(target).size == (62, 32)


def test_loose_images_beside_class_folders_are_named(tmp_path):
    for name in ("a/1.png", "b/2.png", "loose.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / name)
    with pytest.warns(UserWarning, match="1 image file.* loose.png\\) are not used"):
        assert ddim.data.load_dataset("folder", tmp_path).num_classes == 2


def test_what_the_newcomer_saw(tmp_path, capsys):
    """train's closing line lists samples/ only when it wrote some; edit's names its rows as its help does;
    no option shows its default twice, or as a Python tuple."""
    assert main([*TRAIN, "--steps", "2", "--sample-every", "100", "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "trained to step 2" in err and "samples" not in err
    assert main(["edit", "--image", _png(tmp_path), "--to-class", "1", "--steps", "2", "--out",
                 str(tmp_path / "e.png")]) == 0
    assert "rows: original | inversion edit | SDEdit" in capsys.readouterr().err
    parser = ddim.cli.build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            shown = sub.formatter_class("ddim")._get_help_string(action) or ""
            assert "(default: ('" not in shown and "(default: None)" not in shown, (name, action.dest)
            assert not ("default:" in (action.help or "") and shown.endswith("(default: %(default)s)")), action.dest


def test_a_metrics_line_cut_by_a_kill_does_not_stop_a_resume(tmp_path):
    out = tmp_path / "run"
    assert main([*TRAIN, "--quiet", "--steps", "2", "--log-every", "1", "--out", str(out)]) == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.')  # the kill came mid-line
    assert main([*TRAIN, "--quiet", "--steps", "3", "--log-every", "1", "--resume", "--out", str(out)]) == 0
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_float8_weights_run_and_a_255_byte_name_is_written(tmp_path):
    """Every floating dtype a weights file can hold runs (float8 is coarse, but a float); every name the file
    system accepts works (the temporary file beside it must fit too)."""
    out = tmp_path / ("a" * 251 + ".png")
    assert main(["sample", *FAST, "--checkpoint", H.float8_weights(tmp_path), "--out", str(out)]) == 0
    assert Image.open(out).size == (62, 32)


def test_an_animated_gif_says_which_frame_it_read(tmp_path, capsys):
    frames = [Image.new("L", (28, 28), v) for v in (0, 255)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    assert main(["reconstruct", "--images", str(tmp_path / "a.gif"), "--steps", "2", "--out",
                 str(tmp_path / "r.png")]) == 0
    assert "a.gif: used the first of its 2 frames" in capsys.readouterr().err


def test_a_world_size_beyond_any_run_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(10**20))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(H.free_port()))
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    assert main(["eval", "--n", "2", "--steps", "2", "--eta", "0", "--quiet", "--dist-timeout", "3", "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == ("ddim: error: WORLD_SIZE=100000000000000000000 is more processes than a run can have (allowed: 1 "
                   "to 65,536)\n"), err
    assert not (tmp_path / "out").exists()


def test_a_killed_runs_lock_file_is_taken_over_with_a_note(tmp_path):
    import subprocess
    import sys

    from ddim.files import LOCK_NAME, claim_folder

    out = tmp_path / "ev"
    code = ("import sys; from ddim.files import claim_folder\n"
            f"with claim_folder({str(out)!r}, 'ddim eval --fid'): print('held', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"held"
    holder.kill()
    holder.wait()
    assert (out / LOCK_NAME).exists()  # SIGKILL ran no clean-up
    stale = f"still marked as used by process {holder.pid} \\(ddim eval --fid\\), which ended without releasing it"
    with pytest.warns(UserWarning, match=stale), claim_folder(out, "ddim eval --fid"):
        pass
    assert not (out / LOCK_NAME).exists()
