"""Progressive distillation's math on the Gaussian-mixture oracle (exact x̂_0, float64), and its record.

One student step from the closed-form target x̃ must land where two teacher DDIM steps land (the library's own
sampler takes those steps), and a student that is exactly that map has zero loss in the trainer's loss.
"""

from __future__ import annotations

import pytest
import torch
from gmm import GaussianMixture

from ddim import Schedule, timesteps
from ddim.config import DistillConfig, RunConfig, TrainConfig
from ddim.guidance import guided_combination, in_interval
from ddim.nn import UNet, UNetConfig
from ddim.samplers import sample
from ddim.train.distill import (check_heun_start, deterministic_step, distill_target, grid_abar, heun_step,
                                loss_weight, student_grid, x0_from_output)
from ddim.train.distill_trainer import Conditioning, DistillTrainer

F64 = torch.float64
SCHEDULE = Schedule.linear(1000)
MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [0.8, -0.4]], [0.2, 0.35])


def _x_t(t: int, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x0, _ = MIX.sample(n, g)
    a = SCHEDULE.alphas_cumprod[t]
    return (a.sqrt() * x0 + (1 - a).sqrt() * torch.randn(x0.shape, generator=g, dtype=F64)).reshape(n, 2, 1, 1)


@pytest.mark.parametrize("N", [1, 2, 4, 8])
def test_one_student_step_from_the_target_is_two_teacher_steps(N):
    teacher = MIX.model(SCHEDULE, "sample")
    tau2 = timesteps(SCHEDULE, 2 * N, "trailing")
    abar = grid_abar(SCHEDULE.alphas_cumprod, tau2)
    assert torch.equal(student_grid(1000, N), tau2[::2])
    for j in range(N):
        i = 2 * j
        x_t = _x_t(int(tau2[i]), seed=j)
        grid = tau2[i:i + 3]  # t, t' (and t'' unless the second step lands on x_0)
        _, traj = sample(teacher, SCHEDULE, x_t, timesteps=grid, prediction="sample", return_trajectory=True)
        x_t2 = traj.x[2]
        # the same two steps with the pure function
        x1 = deterministic_step(x_t, teacher(x_t, grid[:1].expand(256)), abar[i], abar[i + 1])
        assert torch.allclose(x1, traj.x[1], rtol=0, atol=1e-12)
        x_tilde = distill_target(x_t, x_t2, abar[i], abar[i + 2])
        one = deterministic_step(x_t, x_tilde, abar[i], abar[i + 2])
        assert (one - x_t2).abs().max() < 1e-10
        # and with the library's sampler: one step on the student's grid with x̂_0 = x̃
        student_grid_here = torch.stack([tau2[i], tau2[i + 2]]) if i + 2 < 2 * N else tau2[i:i + 1]
        _, s_traj = sample(lambda x, t: x_tilde, SCHEDULE, x_t, timesteps=student_grid_here, prediction="sample",
                           return_trajectory=True)
        assert (s_traj.x[1] - x_t2).abs().max() < 1e-10


def test_target_onto_x0_is_the_teacher_output():
    x_t, x_t2 = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    assert torch.equal(distill_target(x_t, x_t2, SCHEDULE.alphas_cumprod[999], torch.tensor(1.0, dtype=F64)), x_t2)


def test_weights_and_per_sample_guidance():
    abar = torch.tensor([0.01, 0.5, 0.99], dtype=F64)
    snr = abar / (1 - abar)
    one = torch.tensor(1.0, dtype=F64)
    assert torch.allclose(loss_weight(abar, "truncated-snr"), torch.stack([one, snr[1], snr[2]]))
    assert torch.allclose(loss_weight(abar, "snr+1"), snr + 1)
    c, u = torch.ones(2, 3), torch.zeros(2, 3)
    w = torch.tensor([0.0, 2.0]).view(-1, 1)  # one weight per sample, as the guided phase draws them
    assert torch.equal(guided_combination(c, u, w), torch.tensor([[1.0] * 3, [3.0] * 3]))
    with pytest.raises(ValueError, match="weighting"):
        loss_weight(abar, "snr")


def test_grids_refused_when_they_do_not_nest():
    with pytest.raises(ValueError, match="power of two"):
        student_grid(1000, 3)
    with pytest.raises(ValueError, match="teacher grid of 1024"):
        student_grid(1000, 512)
    with pytest.raises(ValueError, match="power of two"):
        student_grid(1000, 0)


class _ExactStudent:
    """x̂_0 = x̃ as a v-prediction network: at t on the student grid, run the teacher's two steps itself."""

    def __init__(self, teacher, tau2, abar):
        self.teacher, self.tau2, self.abar = teacher, tau2, abar

    def __call__(self, x_t, t):
        i = int((self.tau2 == int(t[0])).nonzero()[0])
        a0, a1, a2 = self.abar[i], self.abar[i + 1], self.abar[i + 2]
        x1 = deterministic_step(x_t, self.teacher(x_t, t), a0, a1)
        t1 = self.tau2[i + 1].expand(x_t.shape[0])
        x_tilde = distill_target(x_t, deterministic_step(x1, self.teacher(x1, t1), a1, a2), a0, a2)
        eps = (x_t - a0.sqrt() * x_tilde) / (1 - a0).sqrt()
        return a0.sqrt() * eps - (1 - a0).sqrt() * x_tilde  # v = √ᾱ ε − √(1−ᾱ) x_0


def _bare_trainer(student, N: int = 4) -> DistillTrainer:
    """A DistillTrainer's loss pieces around the oracle teacher (no network, data or run folder)."""
    tr = DistillTrainer.__new__(DistillTrainer)
    model = UNetConfig(image_size=4, in_channels=2, out_channels=2, base_channels=8, channel_mult=(1,),
                       attn_resolutions=(), norm_groups=4)
    dc = DistillConfig(phase="halve", steps=N, teacher_steps=2 * N, teacher="oracle", origin="oracle",
                       teacher_clip=None)
    tr.config = RunConfig(model=model, train=TrainConfig(prediction="v"), distill=dc)
    tr.teacher = MIX.model(SCHEDULE, "sample")
    tr.teacher_config = RunConfig(model=model, train=TrainConfig(prediction="sample"))
    tr._teacher_w, tr._guided = False, False
    tr.tau_teacher = student_grid(1000, 2 * N)
    tr.abar_teacher = grid_abar(SCHEDULE.alphas_cumprod, tr.tau_teacher)
    tr.stride, tr.tau_student = 2, tr.tau_teacher[::2]
    tr.net = student
    return tr


@pytest.mark.parametrize("j", [0, 1, 3])
def test_the_exact_student_has_zero_loss(j):
    N = 4
    tau2 = student_grid(1000, 2 * N)
    exact = _ExactStudent(MIX.model(SCHEDULE, "sample"), tau2, grid_abar(SCHEDULE.alphas_cumprod, tau2))
    tr = _bare_trainer(exact, N)
    g = torch.Generator().manual_seed(j)
    x0 = MIX.sample(128, g)[0].reshape(128, 2, 1, 1)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    steps = torch.full((128,), j, dtype=torch.int64)
    cond = Conditioning(None, torch.zeros(128, dtype=F64))
    assert float(tr.compute_loss(x0, steps, eps, cond)) < 1e-20
    tr.net = lambda x, t: exact(x, t) + 1e-3  # any other map pays
    assert float(tr.compute_loss(x0, steps, eps, cond)) > 1e-8


def test_x0_from_output_clamps_only_when_asked():
    x_t, out = torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 3.0)
    assert float(x0_from_output(out, x_t, torch.tensor(0.5), "sample").max()) == 3.0
    assert float(x0_from_output(out, x_t, torch.tensor(0.5), "sample", clip=1.0).max()) == 1.0


def _w_model(**extra) -> UNetConfig:
    return UNetConfig(image_size=8, in_channels=1, out_channels=1, base_channels=16, channel_mult=(1, 2),
                      attn_resolutions=(), norm_groups=8, num_classes=10, **extra)


def test_distill_config_round_trips_and_refuses():
    dc = DistillConfig(phase="halve", steps=2, teacher_steps=4, teacher="a", origin="b",
                       rounds=({"phase": "guided", "steps": 4, "train_steps": 10, "run": "a"},))
    assert DistillConfig.from_dict(dc.to_dict()) == dc
    rc = RunConfig(model=_w_model(guidance_embed=True), distill=dc)
    assert RunConfig.from_dict(rc.to_dict()) == rc
    assert "distill" not in RunConfig(model=_w_model()).to_dict()  # other models' configs are unchanged
    for bad in (dict(steps=3, teacher_steps=6), dict(steps=2, teacher_steps=8), dict(w_min=2.0, w_max=1.0),
                dict(phase="other"), dict(weighting="l1"), dict(clip=-1.0), dict(teacher=""),
                dict(guidance_interval=(2.0, 1.0)), dict(guidance_interval=(1.0,)), dict(guidance_interval="0,1")):
        with pytest.raises(ValueError):
            DistillConfig(**{**dict(phase="halve", steps=2, teacher_steps=4, teacher="a", origin="b"), **bad})
    assert "guidance_interval" not in dc.to_dict()  # absent unless set: older records read back as written
    iv = DistillConfig(**{**dc.to_dict(), "guidance_interval": [0.28, 5.42]})
    assert iv.guidance_interval == (0.28, 5.42) and DistillConfig.from_dict(iv.to_dict()) == iv
    with pytest.raises(ValueError, match="unknown DistillConfig key"):
        DistillConfig.from_dict({**dc.to_dict(), "stpes": 2})
    assert "teacher_solver" not in dc.to_dict() and dc.teacher_solver == "ddim"
    heun = DistillConfig(**{**dc.to_dict(), "teacher_solver": "heun"})
    assert DistillConfig.from_dict(heun.to_dict()) == heun and heun.to_dict()["teacher_solver"] == "heun"
    with pytest.raises(ValueError, match="unknown teacher solver 'rk4'; allowed: ddim, heun"):
        DistillConfig(**{**dc.to_dict(), "teacher_solver": "rk4"})
    with pytest.raises(ValueError, match="belongs to a halving round"):
        DistillConfig(phase="guided", steps=4, teacher_steps=4, teacher="a", origin="b", teacher_solver="heun")


# The record as `ddim distill` wrote it before the configs moved to ddim.config (a 4-step student's
# config.json): checkpoints of that run must keep loading.
OLD_RECORD = {"clip": None, "origin": "/x/src/ddim/assets/fashion_mnist_small", "phase": "halve",
              "rounds": [{"phase": "guided", "run": "runs/distill/guided_32", "steps": 32, "train_steps": 2000},
                         {"phase": "halve", "run": "runs/distill/steps_16", "steps": 16, "train_steps": 1000},
                         {"phase": "halve", "run": "runs/distill/steps_8", "steps": 8, "train_steps": 1600}],
              "steps": 4, "teacher": "runs/distill/steps_8", "teacher_clip": None, "teacher_steps": 8, "w_max": 2.0,
              "w_min": 0.0, "weighting": "truncated-snr"}


def test_a_record_written_before_the_move_still_reads():
    rc = RunConfig(model=_w_model(guidance_embed=True), train=TrainConfig(prediction="v"))
    d = {**rc.to_dict(), "distill": OLD_RECORD, "step": 2200}
    back = RunConfig.from_dict(d)
    assert back.distill.steps == 4 and back.distill.clip is None and len(back.distill.rounds) == 3
    assert back.to_dict()["distill"] == OLD_RECORD


def test_a_new_w_input_starts_as_the_teacher_at_every_w():
    cfg = _w_model()
    torch.manual_seed(0)
    teacher = UNet.from_config(cfg)
    for p in teacher.parameters():  # non-zero everywhere, as after training
        p.data.normal_(0, 0.05)
    student = UNet.from_config(UNetConfig(**{**cfg.to_dict(), "guidance_embed": True}))
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("guidance_embed.") for k in missing)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999]), torch.tensor([1, 2, 10])
    teacher.eval(), student.eval()
    ref = teacher(x, t, y)
    for w in (None, 0.0, 2.0, torch.tensor([0.0, 1.0, 3.0])):
        assert torch.equal(student(x, t, y, w=w), ref)
    with pytest.raises(ValueError, match="guidance_embed"):
        teacher(x, t, y, w=1.0)
    with pytest.raises(ValueError, match="class-conditional"):
        UNetConfig(**{**cfg.to_dict(), "num_classes": None, "guidance_embed": True})


class _TwoBranchTeacher:
    """A guided teacher's two branches as x̂_0 ("sample" prediction): the label's row, or a distinct ∅ row."""

    null_label = 2

    def __call__(self, x, t, labels):
        rows = torch.tensor([[1.0, -1.0], [0.5, 2.0], [-3.0, 0.25]], dtype=x.dtype)
        return rows[labels].view(-1, 2, 1, 1) + 0 * x


def _guided_trainer(interval) -> DistillTrainer:
    tr = _bare_trainer(None, N=8)
    dc = DistillConfig(phase="guided", steps=8, teacher_steps=8, teacher="oracle", origin="oracle",
                       guidance_interval=interval)
    tr.config = RunConfig(model=tr.config.model, train=tr.config.train, distill=dc)
    tr.teacher, tr._guided, tr.stride = _TwoBranchTeacher(), True, 1
    tr.tau_teacher = tr.tau_student = student_grid(1000, 8)
    tr.abar_teacher = grid_abar(SCHEDULE.alphas_cumprod, tr.tau_teacher)
    return tr


def test_interval_guided_targets_guide_only_inside_the_interval():
    j = torch.arange(8).repeat(4)  # every point of the 8-step grid, four times
    x = torch.randn(32, 2, 1, 1, dtype=F64)
    cond = Conditioning(torch.tensor([0, 1] * 16), torch.linspace(0.0, 3.0, 32, dtype=F64))
    cfg = _guided_trainer(None).target(x, j, cond)
    cond_only = _TwoBranchTeacher()(x, None, cond.labels)
    # an interval holding every level of the grid is plain CFG; one holding none is the conditional teacher
    assert torch.equal(_guided_trainer((0.0, 1e9)).target(x, j, cond), cfg)
    assert torch.equal(_guided_trainer((1e8, 1e9)).target(x, j, cond), cond_only)
    # EDM2's interval: CFG at the grid's levels inside it, the conditional teacher at the others, both present
    inside = in_interval(grid_abar(SCHEDULE.alphas_cumprod, student_grid(1000, 8))[j], (0.28, 5.42))
    assert inside.any() and not inside.all()
    got = _guided_trainer((0.28, 5.42)).target(x, j, cond)
    assert torch.equal(got[inside], cfg[inside]) and torch.equal(got[~inside], cond_only[~inside])
    assert not torch.equal(cfg[~inside & (cond.w > 0)], cond_only[~inside & (cond.w > 0)])


def test_in_interval_reads_sigma_of_abar():
    abar = torch.tensor([1.0, 1 / (1 + 0.28**2), 0.5, 1 / (1 + 5.42**2), 1e-3, 0.0], dtype=F64)  # σ = 0, 0.28, 1, …
    assert in_interval(abar, (0.28, 5.42)).tolist() == [False, False, True, True, False, False]
    assert bool(in_interval(0.5, (0.0, 1.0)))  # σ = 1: the upper end belongs to the interval


def test_targets_stay_float32_under_bf16_autocast():
    """The trainer's loss runs under autocast with --bf16; the teacher's target must not (x̃ divides by small
    numbers): compute_loss turns autocast off around it."""
    N = 4
    tau2 = student_grid(1000, 2 * N)
    exact = _ExactStudent(MIX.model(SCHEDULE, "sample"), tau2, grid_abar(SCHEDULE.alphas_cumprod, tau2))
    tr = _bare_trainer(exact, N)
    states = []
    inner = tr.target
    tr.target = lambda *a: (states.append(torch.is_autocast_enabled("cpu")), inner(*a))[1]
    g = torch.Generator().manual_seed(0)
    x0 = MIX.sample(16, g)[0].reshape(16, 2, 1, 1)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        tr.compute_loss(x0, torch.zeros(16, dtype=torch.int64), eps, Conditioning(None, torch.zeros(16, dtype=F64)))
    assert states == [False]


def _heun_trainer(N: int, clip=None) -> DistillTrainer:
    tr = _bare_trainer(None, N)
    dc = DistillConfig(phase="halve", steps=N, teacher_steps=2 * N, teacher="oracle", origin="oracle",
                       teacher_clip=clip, teacher_solver="heun")
    tr.config = RunConfig(model=tr.config.model, train=tr.config.train, distill=dc)
    return tr


def test_heun_step_is_a_ddim_step_with_the_mean_slope():
    """EDM's Heun in y = x/α, σ_e = σ/α: y_s = y_t + (σ_e,s − σ_e,t)(ε̂_t + ε̂_s)/2, written out by hand."""
    g = torch.Generator().manual_seed(0)
    x, e1, e2 = (torch.randn(5, 3, generator=g, dtype=F64) for _ in range(3))
    a_t, a_s = torch.tensor(0.2, dtype=F64), torch.tensor(0.7, dtype=F64)
    sig = lambda a: ((1 - a) / a).sqrt()  # noqa: E731
    y_s = x / a_t.sqrt() + (sig(a_s) - sig(a_t)) * (e1 + e2) / 2
    assert torch.allclose(heun_step(x, e1, e2, a_t, a_s), a_s.sqrt() * y_s, rtol=0, atol=1e-12)
    assert torch.allclose(heun_step(x, e1, e1, a_t, a_s),  # equal slopes: the Euler (DDIM) step
                          deterministic_step(x, (x - (1 - a_t).sqrt() * e1) / a_t.sqrt(), a_t, a_s), atol=1e-12)


@pytest.mark.parametrize("N", [1, 2, 8, 16])
def test_a_heun_target_is_two_heun_steps_of_the_library_sampler_and_closer_to_the_ode(N):
    """With teacher_solver "heun", one student step from x̃ lands where two Heun steps of ``sample(solver="heun")``
    land (the step onto x_0 stays Euler in both); on teacher grids of 16 and 32 points (the bundled run's) they
    land over 10× nearer the ODE's solution (the teacher's DDIM on every integer step between) than two DDIM
    steps do. Second order pays on fine grids only: on a 4-point grid Heun's first step here is 17× worse."""
    tr = _heun_trainer(N)
    teacher, tau2, abar = tr.teacher, tr.tau_teacher, tr.abar_teacher
    cond = Conditioning(None, torch.zeros(256, dtype=F64))
    heun_err = ddim_err = 0.0
    for j in range(N):
        i = 2 * j
        x_t = _x_t(int(tau2[i]), seed=j)
        x_tilde = tr.target(x_t, torch.full((256,), j), cond)
        one = deterministic_step(x_t, x_tilde, abar[i], abar[i + 2])
        grid = tau2[i:i + 3]
        _, traj = sample(teacher, SCHEDULE, x_t, timesteps=grid, prediction="sample", solver="heun",
                         return_trajectory=True)
        assert (one - traj.x[2]).abs().max() < 1e-10
        if i + 2 < 2 * N:  # the ODE's solution at t'': DDIM on every integer step from t
            fine = torch.arange(int(grid[0]), int(grid[2]), -1)
            ode = sample(teacher, SCHEDULE, x_t, timesteps=torch.cat([fine, grid[2:]]), prediction="sample",
                         return_trajectory=True)[1].x[len(fine)]
            _, d = sample(teacher, SCHEDULE, x_t, timesteps=grid, prediction="sample", return_trajectory=True)
            heun_err += float((traj.x[2] - ode).pow(2).mean())
            ddim_err += float((d.x[2] - ode).pow(2).mean())
    if N >= 8:
        assert heun_err < ddim_err / 10
    if N == 2:
        assert heun_err > 10 * ddim_err  # why --teacher-solver heun is for fine teacher grids (32 in the bundled run)


def test_heun_targets_per_row_with_the_clamp():
    """One batch mixing every student step (so the Euler-onto-x_0 mask is per row) under the bundled run's x̂_0
    rule (clamp to ±0.5 here, so it bites, and ε̂ re-derived): each row lands where the library's Heun sampler
    with that rule lands, and no row is NaN."""
    N = 4
    tr = _heun_trainer(N, clip=0.5)
    tau2, abar = tr.tau_teacher, tr.abar_teacher
    x_t = torch.cat([_x_t(int(tau2[2 * j]), n=16, seed=j) for j in range(N)])
    j = torch.arange(N).repeat_interleave(16)
    x_tilde = tr.target(x_t, j, Conditioning(None, torch.zeros(16 * N, dtype=F64)))
    assert torch.isfinite(x_tilde).all()
    for k in range(N):
        rows, i = slice(16 * k, 16 * (k + 1)), 2 * k
        one = deterministic_step(x_t[rows], x_tilde[rows], abar[i], abar[i + 2])
        _, traj = sample(tr.teacher, SCHEDULE, x_t[rows], timesteps=tau2[i:i + 3], prediction="sample",
                         solver="heun", clip=0.5, eps_from_clipped_x0=True, return_trajectory=True)
        assert (one - traj.x[2]).abs().max() < 1e-10
    no_clip = _heun_trainer(N).target(x_t, j, Conditioning(None, torch.zeros(16 * N, dtype=F64)))
    assert not torch.allclose(no_clip, x_tilde)  # the clamp acted


def test_a_heun_teacher_is_refused_at_zero_terminal_snr():
    with pytest.raises(ValueError, match="--teacher-solver heun cannot start at ᾱ = 0"):
        check_heun_start("heun", 0.0)
    check_heun_start("heun", float(SCHEDULE.alphas_cumprod[-1]))  # the linear schedule's T − 1: fine
    check_heun_start("ddim", 0.0)  # DDIM's x̂_0 step is defined there
