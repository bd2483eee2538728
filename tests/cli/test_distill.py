"""`ddim distill` end to end on 8×8 digits: a tiny class-conditional teacher halved 4 → 2 → 1 (after the guided
phase), sampled by `ddim sample` on the student's own grid; kill -9 and --resume end bitwise identical to an
uninterrupted run; bad input is one line, exit 2, nothing created."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from subprocesses import ddim_env

from ddim.checkpoint import list_checkpoints, load_checkpoint, read_tensors
from ddim.cli import main
from ddim.generate import INTERVAL_STUDENT_GUIDANCE

TINY = ["--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
        "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--quiet",
        "--batch-size", "32", "--lr", "2e-3", "--warmup", "10", "--prediction", "v"]
PHASES = ("guided_4", "steps_2", "steps_1")
ROUND = 12  # optimizer steps per phase


def distill_args(teacher, out, *extra):
    return ["distill", "--teacher", str(teacher), "--out", str(out), "--teacher-steps", "4", "--steps", "1",
            "--guided-steps", str(ROUND), "--round-steps", str(ROUND), "--batch-size", "16", "--checkpoint-every", "4",
            "--keep-last", "0", "--log-every", "2", "--device", "cpu", "--quiet", *extra]


def cd_args(teacher, out, *extra):
    return ["distill", "--method", "consistency", "--teacher", str(teacher), "--out", str(out), "--teacher-steps", "4",
            "--steps", "2", "--guided-steps", str(ROUND), "--cd-steps", str(ROUND), "--batch-size", "16",
            "--checkpoint-every", "4", "--keep-last", "0", "--log-every", "2", "--device", "cpu", "--quiet", *extra]


ARGS = {"progressive": distill_args, "consistency": cd_args}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddim: error:"), err
    return err[0]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", *TINY, "--out", str(out), "--steps", "30"]) == 0
    return out


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "d"
    assert main(distill_args(teacher, out)) == 0
    return out


def test_phases_records_and_sampling(distilled, teacher, tmp_path, capsys):
    for name, n, phase in zip(PHASES, (4, 2, 1), ("guided", "halve", "halve")):
        ckpts = list_checkpoints(distilled / name)
        assert ckpts and ckpts[-1].name == f"step_{ROUND:06d}"
        model, _, cfg = load_checkpoint(distilled / name)
        assert cfg.model.guidance_embed and cfg.distill.phase == phase and cfg.distill.steps == n
        assert cfg.distill.origin == str(teacher)
        assert [r["steps"] for r in cfg.distill.rounds] == [4, 2][: PHASES.index(name)]
        assert (distilled / name / "samples" / f"step_{ROUND:06d}.png").is_file()
    assert load_checkpoint(distilled / "steps_1")[2].distill.teacher == str(distilled / "steps_2")
    assert load_checkpoint(distilled / "steps_1")[2].distill.clip is None  # no clamp after halving
    assert load_checkpoint(distilled / "guided_4")[2].distill.clip == 1.0

    capsys.readouterr()
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(distilled / "steps_1"), "--n", "4", "--out", str(out)]) == 0
    note = capsys.readouterr().err
    assert out.is_file() and "1 steps, eta 0.0" in note  # its own grid by default, one forward per step
    assert main(["sample", "--checkpoint", str(distilled / "steps_2"), "--n", "4", "--guidance", "1.5",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "2 steps" in capsys.readouterr().err
    # told otherwise, it samples as told
    assert main(["sample", "--checkpoint", str(distilled / "steps_2"), "--n", "2", "--steps", "3",
                 "--solver", "dpmpp-2m", "--out", str(tmp_path / "o.png")]) == 0
    assert "3 steps, solver dpmpp-2m" in capsys.readouterr().err
    assert main(["interpolate", "--checkpoint", str(distilled / "steps_2"), "--seeds", "0", "1", "--frames", "3",
                 "--quiet", "--out", str(tmp_path / "i.png")]) == 0


def _count_forwards(monkeypatch) -> list:
    """(batch, w) of every UNet forward from now on."""
    from ddim.nn import UNet

    calls = []
    real = UNet.forward

    def forward(self, x, t, labels=None, **kw):
        calls.append((x.shape[0], float(torch.as_tensor(kw.get("w")).flatten()[0])))
        return real(self, x, t, labels, **kw)

    monkeypatch.setattr(UNet, "forward", forward)
    return calls


def test_sampling_feeds_w_to_one_forward(distilled, tmp_path, monkeypatch):
    """`ddim sample --guidance 0.5` on a student: every forward is a batch of --n images with w = 0.5 as an input
    (classifier-free guidance would double the batch), on the student's grid of 2 steps."""
    calls = _count_forwards(monkeypatch)
    assert main(["sample", "--checkpoint", str(distilled / "steps_2"), "--n", "3", "--guidance", "0.5", "--quiet",
                 "--out", str(tmp_path / "w.png")]) == 0
    assert calls == [(3, 0.5)] * 2


@pytest.mark.parametrize("extra, words", [
    (["--guidance-method", "apg"], "--guidance-method apg needs a second (∅) forward"),
    (["--guidance-method", "interval"], "a guidance-distilled student"),
    (["--guidance-method", "cfgpp"], "use --guidance-method cfg"),
    (["--guidance-rescale", "0.7"], "guidance rescale needs the conditional and the guided outputs apart"),
])
def test_a_student_refuses_what_needs_a_second_forward(distilled, tmp_path, capsys, extra, words):
    out = tmp_path / "no.png"
    assert main(["sample", "--checkpoint", str(distilled / "steps_2"), "--n", "2", "--out", str(out), *extra]) == 2
    assert words in _one_error_line(capsys)
    assert not out.exists()


def _kill_and_resume(method: str, teacher, out, phase: str) -> None:
    """Run `ddim distill` in a process, kill -9 it after a checkpoint of ``phase`` that is not its last, then run it
    again with --resume to the end."""
    args = ARGS[method]
    p = subprocess.Popen([sys.executable, "-m", "ddim", *args(teacher, out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=ddim_env())
    end = time.monotonic() + 240
    while not [c for c in list_checkpoints(out / phase) if c.name != f"step_{ROUND:06d}"]:
        assert p.poll() is None, p.communicate()[1][-2000:]
        assert time.monotonic() < end, f"no checkpoint in {phase}"
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    assert f"step_{ROUND:06d}" not in [c.name for c in list_checkpoints(out / phase)]  # killed inside the phase
    p = subprocess.run([sys.executable, "-m", "ddim", *args(teacher, out, "--resume")], capture_output=True,
                       text=True, env=ddim_env(), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


def _assert_same_last_checkpoints(pairs) -> None:
    """Each (reference run, run) ends in bitwise identical weights, EMA and training state."""
    for ref, run in pairs:
        a, b = list_checkpoints(ref)[-1], list_checkpoints(run)[-1]
        for stem in ("model", "ema", "training_state"):
            ta, tb = read_tensors(a / f"{stem}.safetensors"), read_tensors(b / f"{stem}.safetensors")
            bad = [k for k in ta if not torch.equal(ta[k], tb[k])]
            assert ta.keys() == tb.keys() and not bad, f"{run.name}/{stem}: {bad[:3]}"


def test_kill_and_resume_is_bitwise_exact(teacher, distilled, tmp_path):
    out = tmp_path / "d"
    _kill_and_resume("progressive", teacher, out, "steps_2")
    _assert_same_last_checkpoints([(distilled / name, out / name) for name in PHASES])


def test_finished_run_resumes_to_nothing_and_refuses_without_resume(teacher, distilled, capsys):
    before = {p: p.stat().st_mtime_ns for p in distilled.rglob("*.safetensors")}
    assert main(distill_args(teacher, distilled, "--resume")) == 0
    assert before == {p: p.stat().st_mtime_ns for p in distilled.rglob("*.safetensors")}
    capsys.readouterr()
    assert main(distill_args(teacher, distilled)) == 2
    assert "--resume" in _one_error_line(capsys)


@pytest.mark.parametrize("method, extra, msg", [
    ("progressive", ["--steps", "3"], "power of two"),
    ("progressive", ["--teacher-steps", "6"], "power of two"),
    ("progressive", ["--steps", "8"], "below the teacher's grid"),
    ("progressive", ["--steps", "4"], "below the teacher's grid"),
    ("progressive", ["--round-steps", "5,5,5"], "halving rounds"),
    ("progressive", ["--w-range", "2,1"], "w_max"),
    ("progressive", ["--w-range", "2"], "two comma-separated numbers"),
    ("progressive", ["--dist-timeout", "0"], "--dist-timeout"),
    ("progressive", ["--guidance-interval", "5,1"], "0 <= σ_lo < σ_hi"),
    ("progressive", ["--guidance-interval", "1"], "two comma-separated numbers"),
    ("progressive", ["--cd-steps", "5"], "--cd-steps applies to --method consistency only"),
    ("progressive", ["--teacher-solver", "rk4"], "invalid choice: 'rk4'"),
    ("consistency", ["--teacher-solver", "heun"], "--teacher-solver heun applies to --method progressive only"),
    ("consistency", ["--round-steps", "5"], "--round-steps applies to --method progressive only"),
    ("consistency", ["--steps", "8"], "at most the teacher's grid of 4 steps"),
    ("consistency", ["--target-decay", "1"], "target_decay"),
    ("consistency", ["--cd-steps", "0"], "steps must be an integer >= 1"),
])
def test_bad_input_is_one_line_and_creates_nothing(teacher, tmp_path, capsys, method, extra, msg):
    out = tmp_path / "new" / "d"
    assert main(ARGS[method](teacher, out, *extra)) == 2
    assert msg in _one_error_line(capsys)
    assert not (tmp_path / "new").exists()


def test_an_interval_guided_distillation_records_what_w_means(teacher, distilled, tmp_path, capsys, monkeypatch):
    out = tmp_path / "iv"
    assert main(distill_args(teacher, out, "--guidance-interval", "0.28,5.42", "--bf16", "--steps", "2")) == 0
    for phase in ("guided_4", "steps_2"):
        config = load_checkpoint(out / phase)[2]
        assert config.distill.guidance_interval == (0.28, 5.42) and config.train.bf16
    # `ddim sample` feeds such a student its own default w, one forward per step
    calls = _count_forwards(monkeypatch)
    assert main(["sample", "--checkpoint", str(out / "steps_2"), "--n", "3", "--quiet", "--out",
                 str(tmp_path / "iv.png")]) == 0
    assert calls == [(3, INTERVAL_STUDENT_GUIDANCE)] * 2
    assert main(["sample", "--checkpoint", str(out / "steps_2"), "--guidance-method", "interval", "--out",
                 str(tmp_path / "no.png")]) == 2
    assert "already that method's weight" in _one_error_line(capsys) and not (tmp_path / "no.png").exists()
    # a student's w already has its meaning: another interval on top of it is refused, before anything is written
    assert main(distill_args(distilled / "guided_4", tmp_path / "again", "--guidance-interval", "0.28,5.42")) == 2
    assert "--guidance-interval applies to the guided phase only" in _one_error_line(capsys)
    assert not (tmp_path / "again").exists()


def test_a_teacher_that_is_not_a_checkpoint(tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hello": 1}))
    for teacher in (folder, tmp_path / "missing"):
        assert main(distill_args(teacher, tmp_path / "out")) == 2
        _one_error_line(capsys)
        assert not (tmp_path / "out").exists()


# ---- --method consistency: the same guided phase, then one consistency phase into OUT/consistency/

@pytest.fixture(scope="module")
def consistent(teacher, distilled, tmp_path_factory):
    """A consistency student whose guided phase was found finished under --out (copied from the progressive run)."""
    import shutil

    out = tmp_path_factory.mktemp("consistent") / "c"
    shutil.copytree(distilled / "guided_4", out / "guided_4")
    assert main(cd_args(teacher, out, "--resume")) == 0
    return out


def test_consistency_record_and_sampling(consistent, tmp_path, capsys, monkeypatch):
    import numpy as np

    run = consistent / "consistency"
    last = f"step_{ROUND:06d}"
    assert list_checkpoints(run)[-1].name == last and (run / "samples" / f"{last}.png").is_file()
    cfg = load_checkpoint(run)[2]
    dc = cfg.distill
    assert (dc.phase, dc.method, dc.steps, dc.teacher_steps, dc.weighting, dc.clip, dc.target_decay) == (
        "consistency", "consistency", 2, 4, "uniform", None, 0.95)
    assert dc.teacher == str(consistent / "guided_4") and [r["phase"] for r in dc.rounds] == ["guided"]
    state = read_tensors(list_checkpoints(run)[-1] / "training_state.safetensors")
    assert any(k.startswith("target.") for k in state)  # θ⁻ travels with the optimizer state
    calls = _count_forwards(monkeypatch)
    capsys.readouterr()
    for steps in (None, 1, 2, 4):
        calls.clear()
        npz = tmp_path / f"s{steps}.npz"
        argv = ["sample", "--checkpoint", str(run), "--n", "3", "--guidance", "0.5", "--npz", str(npz),
                "--out", str(tmp_path / f"s{steps}.png")] + ([] if steps is None else ["--steps", str(steps)])
        assert main(argv) == 0
        assert calls == [(3, 0.5)] * (steps or 2)  # one forward of the batch per step, w an input; default: 2
        assert f"{steps or 2} steps, solver consistency" in capsys.readouterr().err
        images = np.load(npz)["images"]
        assert images.shape == (3, 1, 8, 8) and np.isfinite(images).all()


def test_consistency_kill_and_resume_is_bitwise_exact(teacher, distilled, consistent, tmp_path):
    """From nothing: the guided phase (bitwise the progressive run's own), then the consistency phase, killed after
    a checkpoint and resumed, ends as the uninterrupted one: weights, EMA, optimizer, RNG and θ⁻."""
    out = tmp_path / "c"
    _kill_and_resume("consistency", teacher, out, "consistency")
    _assert_same_last_checkpoints([(distilled / "guided_4", out / "guided_4"),
                                   (consistent / "consistency", out / "consistency")])


def test_a_consistency_student_teaches_neither_method(consistent, tmp_path, capsys):
    for args in ARGS.values():
        assert main(args(consistent / "consistency", tmp_path / "p")) == 2
        assert "is a consistency student" in _one_error_line(capsys)
    assert not (tmp_path / "p").exists()


def test_a_heun_teacher_steps_the_first_round_only(distilled, tmp_path, capsys):
    """--teacher-solver heun from a finished guided phase: the first halving round records Heun, the next DDIM
    (its teacher is a halved student); a halved student as the teacher is refused, nothing created."""
    out = tmp_path / "heun"
    assert main(distill_args(distilled / "guided_4", out, "--teacher-solver", "heun")) == 0
    assert load_checkpoint(out / "steps_2")[2].distill.teacher_solver == "heun"
    assert load_checkpoint(out / "steps_1")[2].distill.teacher_solver == "ddim"
    assert "teacher_solver" not in json.loads((out / "steps_1" / "config.json").read_text())["distill"]
    assert main(distill_args(distilled / "steps_2", tmp_path / "no", "--teacher-steps", "2", "--teacher-solver",
                             "heun")) == 2
    assert "is a halved student" in _one_error_line(capsys) and not (tmp_path / "no").exists()
