"""Consistency distillation's math (float64 oracles) and its record.

The boundary condition holds exactly for any network output; f_θ is the Denoiser's x̂_0 read and Song et al.'s
skip parametrisation at once. On the Gaussian-mixture oracle the exact consistency function of the teacher's
DDIM chain has zero CD loss in the trainer's own loss, and any shift of the target's network, time or teacher
step pays; on Gaussian data the closed-form consistency function of the probability-flow ODE meets the CD
targets up to the DDIM step's error, which shrinks as the grid is refined.
"""

from __future__ import annotations

import pytest
import torch
from gmm import GaussianMixture

from ddim import Schedule
from ddim.config import DistillConfig, RunConfig, TrainConfig
from ddim.nn import UNetConfig
from ddim.samplers import sample
from ddim.train.consistency import cm_scalings, consistency_fn, consistency_scalings, update_target
from ddim.train.consistency_trainer import ConsistencyTrainer
from ddim.train.distill import grid_abar, student_grid, x0_from_output
from ddim.train.distill_trainer import Conditioning

F64 = torch.float64
SCHEDULE = Schedule.linear(1000)
MIX = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [0.8, -0.4]], [0.2, 0.35])
GAUSS = GaussianMixture([1.0], [[0.3, -0.5]], [0.6])  # one component: the probability-flow ODE in closed form


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_the_boundary_condition_holds_exactly_for_any_output(prediction):
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(5, 3, 4, 4, generator=g), 1e6 * torch.randn(5, 3, 4, 4, generator=g)
    one = torch.ones(5, 1, 1, 1)
    assert torch.equal(consistency_fn(out, x, one, prediction), x)  # f(x, t_min) = x (Song et al. eq. 5)
    c_skip, c_out = consistency_scalings(torch.tensor(1.0, dtype=F64), prediction)
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    with pytest.raises(ValueError, match="c_skip = 0"):
        consistency_fn(out, x, one, "sample")


@pytest.mark.parametrize("prediction", ["v", "epsilon"])
def test_f_is_the_denoisers_x0_read(prediction):
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(4, 2, 3, 3, generator=g, dtype=F64), torch.randn(4, 2, 3, 3, generator=g, dtype=F64)
    for abar in (0.9999, 0.5, 1e-3):
        a = torch.tensor(abar, dtype=F64)
        assert torch.allclose(consistency_fn(out, x, a, prediction), x0_from_output(out, x, a, prediction),
                              atol=1e-12, rtol=0)


def test_v_scalings_are_song_et_al_skip_parametrisation():
    """In y = x_t/α at s = σ/α: c_skip^CM(s) y + c_out^CM(s) (−v) with σ_d = 1, s_min = 0 is α x_t − σ v; and the
    CM pair keeps its boundary at any σ_d, s_min."""
    abar = SCHEDULE.alphas_cumprod[::37]
    s = ((1 - abar) / abar).sqrt()
    c_skip, c_out = cm_scalings(s)
    a_skip, a_out = consistency_scalings(abar, "v")  # in x_t = α y: c_skip x_t = (α²) y, c_out F = −σ v
    assert torch.allclose(c_skip, a_skip * abar.sqrt(), atol=1e-14) and torch.allclose(c_out, -a_out, atol=1e-14)
    at_min = cm_scalings(torch.tensor(0.002, dtype=F64), 0.5, 0.002)
    assert (float(at_min[0]), float(at_min[1])) == (1.0, 0.0)


def test_update_target_is_the_ema_of_eq_8():
    a, b = torch.nn.Linear(3, 2).double(), torch.nn.Linear(3, 2).double()
    before = [p.clone() for p in a.parameters()]
    update_target(a, b, 0.95)
    for p0, p, q in zip(before, a.parameters(), b.parameters()):
        assert torch.allclose(p, 0.95 * p0 + 0.05 * q, atol=1e-15)
    update_target(a, b, 0.0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------------------------- the CD target and loss

class _AsV:
    """A consistency function f(x, t) served as a v-prediction network: v = (α x − f)/σ, so x̂_0 = f."""

    def __init__(self, f):
        self.f = f

    def __call__(self, x, t):
        a = SCHEDULE.alphas_cumprod[int(t[0])]
        assert bool((t == t[0]).all())
        return (a.sqrt() * x - self.f(x, int(t[0]))) / (1 - a).sqrt()


def _chain_end(teacher, tau):
    """The exact consistency function of the teacher's DDIM chain on the grid τ: all its steps from τ_n to x_0."""
    return lambda x, t: sample(teacher, SCHEDULE, x, timesteps=tau[(tau == t).nonzero()[0, 0]:], prediction="sample")


def _ode_end(gauss: GaussianMixture):
    """The probability-flow ODE's consistency function for x_0 ~ N(μ, s² I): the standardised coordinate
    (x_t − α μ)/√(α² s² + σ²) is constant along a trajectory, so f(x_t) = μ + s (x_t − α μ)/√(α² s² + σ²)."""
    mu, s = gauss.means[0].view(1, -1, 1, 1), float(gauss.stds[0])

    def f(x, t):
        a = SCHEDULE.alphas_cumprod[t]
        return mu + s * (x - a.sqrt() * mu) / (a * s**2 + 1 - a).sqrt()
    return f


def _bare_trainer(teacher, K: int) -> ConsistencyTrainer:
    """A ConsistencyTrainer's loss pieces around an oracle teacher (no network, data or run folder)."""
    tr = ConsistencyTrainer.__new__(ConsistencyTrainer)
    model = UNetConfig(image_size=4, in_channels=2, out_channels=2, base_channels=8, channel_mult=(1,),
                       attn_resolutions=(), norm_groups=4)
    dc = DistillConfig(phase="consistency", steps=1, teacher_steps=K, teacher="oracle", origin="oracle",
                       weighting="uniform", teacher_clip=None, target_decay=0.95)
    tr.config = RunConfig(model=model, train=TrainConfig(prediction="v"), distill=dc)
    tr.teacher = teacher
    tr.teacher_config = RunConfig(model=model, train=TrainConfig(prediction="sample"))
    tr._teacher_w, tr._guided = False, False
    tr.tau_teacher = tr.tau_student = student_grid(1000, K)
    tr.abar_teacher = grid_abar(SCHEDULE.alphas_cumprod, tr.tau_teacher)
    tr.stride = 1
    return tr


def _batch(gauss, n_index: int, B: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = gauss.sample(B, g)[0].reshape(B, -1, 1, 1)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    return x0, torch.full((B,), n_index, dtype=torch.int64), eps, Conditioning(None, torch.zeros(B, dtype=F64))


@pytest.mark.parametrize("n", [0, 3, 7])
def test_the_exact_consistency_function_has_zero_loss_and_shifts_pay(n):
    K = 8
    teacher = MIX.model(SCHEDULE, "sample")
    tr = _bare_trainer(teacher, K)
    exact = _AsV(_chain_end(teacher, tr.tau_teacher))
    tr.net = tr.target_net = exact
    batch = _batch(MIX, n, seed=n)
    assert float(tr.compute_loss(*batch)) < 1e-20
    a = tr.abar_teacher[n]
    x_t = a.sqrt() * batch[0] + (1 - a).sqrt() * batch[2]
    # the target is f⁻ one teacher step later, i.e. (on the chain) f at x_t itself
    assert torch.allclose(tr.target(x_t, batch[1], batch[3]), exact.f(x_t, int(tr.tau_teacher[n])), atol=1e-10)
    # θ⁻, not θ, makes the target (but not on the last pair, whose target is the teacher's x̂_0); θ is trained
    tr.target_net = _AsV(lambda x, t: exact.f(x, t) + 1e-3)
    assert (float(tr.compute_loss(*batch)) > 1e-8) == (n < K - 1)
    tr.net, tr.target_net = _AsV(lambda x, t: exact.f(x, t) + 1e-3), exact
    assert float(tr.compute_loss(*batch)) > 1e-8
    # a target read one grid point early (f⁻ told τ_n for the point at τ_{n+1}) pays
    earlier = {int(t): int(tr.tau_teacher[max(m - 1, 0)]) for m, t in enumerate(tr.tau_teacher)}
    tr.net, tr.target_net = exact, _AsV(lambda x, t: exact.f(x, earlier[t]))
    assert (float(tr.compute_loss(*batch)) > 1e-8) == (n < K - 1)


def test_the_last_pair_is_anchored_to_the_teachers_x0():
    """At n = K − 1 the teacher's DDIM step lands on ᾱ = 1 and the target is its x̂_0, whatever θ⁻ says."""
    K = 4
    teacher = MIX.model(SCHEDULE, "sample")
    tr = _bare_trainer(teacher, K)
    tr.target_net = lambda x, t: torch.full_like(x, 1e3)
    x0, n, eps, cond = _batch(MIX, K - 1)
    a = tr.abar_teacher[K - 1]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    want = teacher(x_t, tr.tau_teacher[K - 1].expand(len(x_t)))
    assert torch.allclose(tr.target(x_t, n, cond), want, atol=1e-13, rtol=0)


def test_the_closed_form_ode_solution_meets_the_targets_as_the_grid_refines():
    """Gaussian data: the ODE's own consistency function misses the CD targets only by the DDIM steps' error,
    which falls faster than the grid step (K = 8 → 16 → 32, every pair drawn)."""
    teacher = GAUSS.model(SCHEDULE, "sample")
    exact = _AsV(_ode_end(GAUSS))
    losses = []
    for K in (8, 16, 32):
        tr = _bare_trainer(teacher, K)
        tr.net = tr.target_net = exact
        losses.append(sum(float(tr.compute_loss(*_batch(GAUSS, n, B=256, seed=n))) for n in range(K)) / K)
    assert losses[0] > 8 * losses[1] > 64 * losses[2], losses  # measured 13× and 16×: the steps' O(h²), squared
    # f⁻ told τ_n for the point at τ_{n+1} (the target read one grid point early) misses by O(h), squared
    earlier = {int(t): int(tr.tau_teacher[max(m - 1, 0)]) for m, t in enumerate(tr.tau_teacher)}
    tr.target_net = _AsV(lambda x, t: _ode_end(GAUSS)(x, earlier[t]))
    wrong = sum(float(tr.compute_loss(*_batch(GAUSS, n, B=256, seed=n))) for n in range(32)) / 32
    assert wrong > 30 * losses[2], (wrong, losses)


def test_consistency_config_round_trips_and_refuses():
    dc = DistillConfig(phase="consistency", steps=2, teacher_steps=32, teacher="a", origin="b", weighting="uniform",
                       target_decay=0.95, rounds=({"phase": "guided", "steps": 32, "train_steps": 10, "run": "a"},))
    assert dc.method == "consistency" and dc.solver == "consistency"
    assert DistillConfig.from_dict(dc.to_dict()) == dc and dc.to_dict()["target_decay"] == 0.95
    halve = DistillConfig(phase="halve", steps=2, teacher_steps=4, teacher="a", origin="b")
    assert halve.method == "progressive" and halve.solver == "ddim" and "target_decay" not in halve.to_dict()
    base = dict(phase="consistency", steps=2, teacher_steps=32, teacher="a", origin="b", target_decay=0.95)
    for bad, words in ((dict(steps=64), "at most"), (dict(target_decay=None), "needs target_decay"),
                       (dict(target_decay=1.0), "target_decay"), (dict(steps=3), "power of two")):
        with pytest.raises(ValueError, match=words):
            DistillConfig(**{**base, **bad})
    with pytest.raises(ValueError, match="belongs to a consistency phase"):
        DistillConfig(phase="halve", steps=2, teacher_steps=4, teacher="a", origin="b", target_decay=0.9)
