"""The solver seam (``ddim.samplers.solvers``): orders of convergence on the Gaussian-mixture oracle,
model-call counts, argument checks, and the same results through every loop (plain, fast, generate).

Parity of DPM-Solver++(2M/3M/2M SDE) and UniPC with diffusers: tests/samplers/test_parity_diffusers.py.
"""

import math

import numpy as np
import pytest
import torch

import ddim
from ddim.samplers.solvers import SOLVERS, dpm_lambda, get_solver, multistep_weights
from gmm import GaussianMixture

F64 = torch.float64
LINEAR = ddim.Schedule.linear(1000)
MIX = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, -1.0], [3.5, -1.0], [-1.5, 4.0]], [0.5, 0.3, 0.4])
ODE_SOLVERS = ["ddim", "dpmpp-2m", "dpmpp-3m", "dpmpp-3m-compat", "unipc", "unipc-3", "heun"]


@pytest.fixture(scope="module")
def oracle_errors():
    """Mean |x_S − x_ref| per solver and S on the log-SNR grid, x_ref: Heun at S = 1000 (1999 calls).

    Common random numbers (one x_T for all), so the differences are discretisation error only."""
    model = MIX.model(LINEAR)
    xT = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = ddim.sample(model, LINEAR, xT, steps=1000, spacing="logsnr", solver="heun")
    err = {s: {S: (ddim.sample(model, LINEAR, xT, steps=S, spacing="logsnr", solver=s) - ref).abs().mean().item()
               for S in (10, 20, 40, 80)} for s in ODE_SOLVERS}
    for s in ("ddim", "dpmpp-2m"):
        err[s, "uniform"] = {S: (ddim.sample(model, LINEAR, xT, steps=S, solver=s) - ref).abs().mean().item()
                             for S in (10, 20)}
    return err


def test_orders_of_convergence(oracle_errors):
    """Halving the step in λ divides DDIM's error by ~2 (first order) and the others' by ≥ 3.5 (second
    order or better; measured: 4.7-5.5 from S = 20 to 40, DDIM 2.2)."""
    e = oracle_errors
    ratio = {s: e[s][20] / e[s][40] for s in ODE_SOLVERS}
    assert 1.6 < ratio["ddim"] < 2.6, ratio
    for s in ODE_SOLVERS[1:]:
        assert ratio[s] > 3.5, (s, ratio)


def test_fitted_slopes(oracle_errors):
    """Least-squares slope of log error against log S over S = 20, 40, 80 on the training grid (T = 1000):
    DDIM 1, DPM-Solver++(2M) and Heun 2, DPM-Solver++(3M) 3, each within ±0.3 (measured 1.10, 2.14, 2.24,
    2.86). UniPC-3 is steeper (3.53): its bulk steps are fourth order (UniC-3) and only its first-order
    first step bounds it at 3 as S grows. UniPC (order 2 with its corrector: third order) measures 2.42 here
    and 2.9 once S ≥ 80 (tests/samplers/test_solver_orders.py); the 3M of diffusers and the authors' code
    (``dpmpp-3m-compat``) 2.39, falling towards 2 (ibid.)."""
    e = oracle_errors
    Ss = (20, 40, 80)
    slope = {s: -np.polyfit(np.log(Ss), np.log([e[s][S] for S in Ss]), 1)[0] for s in ODE_SOLVERS}
    assert abs(slope["ddim"] - 1) < 0.3, slope
    for s in ("dpmpp-2m", "heun"):
        assert abs(slope[s] - 2) < 0.3, slope
    assert abs(slope["dpmpp-3m"] - 3) < 0.3, slope
    assert slope["unipc-3"] > 3.0, slope
    for s in ("unipc", "dpmpp-3m-compat"):
        assert 2.0 < slope[s] < 3.0, slope


def test_higher_order_solvers_beat_ddim_at_equal_model_calls(oracle_errors):
    """At 20 model calls every multistep solver's error is under a third of DDIM's (measured 5-12× lower).
    Heun pays two calls per step: at 19 calls (S = 10) it is still worse than DDIM at 20 (0.18 vs 0.14),
    at 39 calls (S = 20) it is 2.1× better than DDIM at 40."""
    e = oracle_errors
    for s in ("dpmpp-2m", "dpmpp-3m", "dpmpp-3m-compat", "unipc", "unipc-3"):
        assert e[s][20] < e["ddim"][20] / 3, (s, e[s][20], e["ddim"][20])
    assert e["heun"][20] < e["ddim"][40] / 1.8


def test_the_grid_decides(oracle_errors):
    """The README's caveat: on the uniform grid DPM-Solver++(2M) is no better than DDIM at 10-20 steps
    (measured 0.138 vs 0.162 and 0.083 vs 0.079), on the log-SNR grid it is 1.8× (S = 10) to 5× (20)
    better than DDIM there, and 2.8× better at 20 steps than DDIM on the uniform grid."""
    e = oracle_errors
    for S in (10, 20):
        assert e["dpmpp-2m", "uniform"][S] > 0.7 * e["ddim", "uniform"][S]
    assert e["dpmpp-2m"][10] < e["ddim"][10] / 1.5 and e["dpmpp-2m"][20] < e["ddim"][20] / 4
    assert e["dpmpp-2m"][20] < e["ddim", "uniform"][20] / 2.5


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_model_calls(solver):
    calls = []

    def model(x, t):
        calls.append(int(t[0]))
        return 0.1 * x

    ddim.sample(model, LINEAR, torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)), steps=7,
                solver=solver, generator=torch.Generator().manual_seed(1))
    grid = ddim.timesteps(LINEAR, 7).tolist()
    # Heun: 2 per step but 1 on the last; annealed Langevin: L = 2 per level and one final x̂_0; pc: one
    # corrector step and the DDIM predictor per level
    expected = {"heun": 13, "langevin": 15, "pc": 14}.get(solver, 7)
    assert len(calls) == get_solver(solver).nfe(7) == expected
    assert sorted(set(calls), reverse=True) == grid  # every call at a grid point


def test_first_order_multistep_is_ddim():
    """Over two first-order steps (warm-up, and the last) DPM-Solver++ is DDIM (η = 0) and its SDE variant
    DDIM η = 1 with the same noise."""
    model = MIX.model(LINEAR)
    xT = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    grid = [999, 500]  # step 0 first order for all; step 1 is the last: first order too
    for solver, eta in (("dpmpp-2m", 0.0), ("dpmpp-3m", 0.0), ("dpmpp-2m-sde", 1.0)):
        ours = ddim.sample(model, LINEAR, xT, timesteps=grid, solver=solver, set_alpha_to_one=False,
                           generator=torch.Generator().manual_seed(5))
        ref = ddim.sample(model, LINEAR, xT, timesteps=grid, eta=eta, set_alpha_to_one=False,
                          generator=torch.Generator().manual_seed(5))
        assert torch.allclose(ours, ref, atol=1e-12, rtol=0), solver
    # UniPC's corrector moves the second point, so there it differs (its values: the parity tests)
    unipc = ddim.sample(model, LINEAR, xT, timesteps=grid, solver="unipc", set_alpha_to_one=False)
    assert not torch.allclose(unipc, ddim.sample(model, LINEAR, xT, timesteps=grid, set_alpha_to_one=False))


def test_lambda_and_final_step():
    assert dpm_lambda(1.0) == math.inf and dpm_lambda(0.0) == -math.inf
    assert dpm_lambda(0.5) == 0.0
    abar = LINEAR.alphas_cumprod
    tau = ddim.timesteps(LINEAR, 5)
    at, ap = abar[tau], torch.cat([abar[tau[1:]], torch.ones(1, dtype=F64)])
    ratio, w = multistep_weights(at.tolist(), ap.tolist(), 3)
    assert ratio[-1] == 0 and w[-1].tolist() == [1.0, 0.0, 0.0]  # lands on x̂_0: first order at σ = 0
    assert torch.isfinite(w).all() and torch.isfinite(ratio).all()
    # consistency: with every x̂_0 = c, x_s = √ᾱ_s c + σ_s ε goes to √ᾱ_t c + σ_t ε (the exact path), i.e.
    # ratio = σ_t/σ_s and Σ_j w_j = √ᾱ_t − ratio √ᾱ_s
    assert torch.allclose(ratio, ((1 - ap) / (1 - at)).sqrt(), atol=1e-15)
    assert torch.allclose(w.sum(1), ap.sqrt() - ratio * at.sqrt(), atol=1e-12)


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_zero_terminal_snr(solver):
    """Starting at ᾱ = 0 (v-prediction): the solvers of the seam sample finite values; Heun (σ = ∞ there)
    and the score solvers (a step's ∫β = log(ᾱ_t'/ᾱ_t) = ∞) are refused with a reason."""
    sched = ddim.Schedule.linear(1000, zero_terminal_snr=True)
    model = lambda x, t: 0.5 * x  # noqa: E731
    xT = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    kw = dict(steps=6, spacing="trailing", prediction="v", solver=solver, generator=torch.Generator().manual_seed(1))
    if solver in ("heun", "reverse-sde", "pf-ode", "langevin", "pc"):
        with pytest.raises(ValueError, match=f"solver '{solver}' cannot start at ᾱ_t = 0"):
            ddim.sample(model, sched, xT, **kw)
    else:
        assert torch.isfinite(ddim.sample(model, sched, xT, **kw)).all()


def test_solver_invariants_are_checked():
    from ddim.samplers.solvers import DPMSolverPP, UniPC

    for cls, bad in ((DPMSolverPP, dict(order=4)), (DPMSolverPP, dict(order=3, sde=True, noise_eta=1.0)),
                     (DPMSolverPP, dict(order=2, sde=True)), (DPMSolverPP, dict(order=2, noise_eta=0.5)),
                     (DPMSolverPP, dict(order=2, d2_halved=True)), (UniPC, dict(order=1)),
                     (UniPC, dict(order=2, sde=True, noise_eta=1.0))):
        with pytest.raises(ValueError, match="inconsistent solver"):
            cls("x", **bad)


def test_clip_acts_on_every_solver():
    """A clamp on x̂_0 changes every solver's result (Heun reads ε̂ only: it is re-derived from the clamped
    x̂_0), and for the x̂_0-based solvers eps_from_clipped_x0 makes no difference."""
    net = torch.nn.Conv2d(1, 1, 3, padding=1, dtype=F64)
    torch.nn.init.normal_(net.weight, std=0.8, generator=torch.Generator().manual_seed(3))
    model = lambda x, t: net(x)  # noqa: E731
    xT = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    for solver in ("heun", "dpmpp-2m", "unipc"):
        kw = dict(steps=6, solver=solver, prediction="v")
        plain = ddim.sample(model, LINEAR, xT, **kw)
        clipped = ddim.sample(model, LINEAR, xT, clip=0.5, **kw)
        assert not torch.allclose(plain, clipped, atol=1e-6), solver
        assert torch.equal(clipped, ddim.sample(model, LINEAR, xT, clip=0.5, eps_from_clipped_x0=True, **kw))


def test_bad_solver_arguments():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown solver 'euler'; allowed: ddim, dpmpp-2m"):
        ddim.sample(lambda x, t: x, LINEAR, x, steps=3, solver="euler")
    with pytest.raises(ValueError, match="eta=0.5 applies to solver 'ddim' only"):
        ddim.sample(lambda x, t: x, LINEAR, x, steps=3, solver="dpmpp-2m", eta=0.5)
    with pytest.raises(ValueError, match="eta='large' applies to solver 'ddim' only"):
        ddim.sample(lambda x, t: x, LINEAR, x, steps=3, solver="heun", eta="large")


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_fast_path_and_clipping_run_every_solver(solver):
    """The fast path (CPU: channels_last) gives the plain loop's result for every solver, with x̂_0
    clipped and ε̂ re-derived (the CLI's rule), and the trajectory has one x̂_0 per step."""
    net = torch.nn.Conv2d(1, 1, 3, padding=1, dtype=F64)
    torch.nn.init.normal_(net.weight, std=0.5, generator=torch.Generator().manual_seed(3))
    model = lambda x, t: net(x) * (1 + t.view(-1, 1, 1, 1) / 1000)  # noqa: E731
    xT = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(4), dtype=F64)
    kw = dict(steps=6, solver=solver, clip=1.0, eps_from_clipped_x0=True, prediction="v")
    plain, traj = ddim.sample(model, LINEAR, xT, generator=torch.Generator().manual_seed(6),
                              return_trajectory=True, **kw)
    with pytest.warns(RuntimeWarning, match="not CUDA"):
        fast = ddim.samplers.FastSampler().sample(model, LINEAR, xT, generator=torch.Generator().manual_seed(6),
                                                  **kw)
    assert torch.isfinite(plain).all() and torch.allclose(fast, plain, atol=1e-12)
    assert traj.x0_pred.shape[0] == 6 and traj.x0_pred.abs().max() <= 1.0


@pytest.mark.parametrize("spacing", ["logsnr", "karras"])
@pytest.mark.parametrize("zsnr", [False, True])
def test_schedule_spacings_span_the_schedule(spacing, zsnr):
    """From T−1 to 0, and spread out even with zero terminal SNR (σ = ∞ at T−1 is clamped, as diffusers
    does; unclamped, every point but the last would pile up next to T−1)."""
    sched = ddim.Schedule.linear(1000, zero_terminal_snr=zsnr)
    for S in (2, 5, 10, 50):
        tau = ddim.timesteps(sched, S, spacing)
        assert int(tau[0]) == 999 and int(tau[-1]) == 0
    tau = ddim.timesteps(sched, 5, spacing).tolist()
    assert all(a - b > 10 for a, b in zip(tau, tau[1:])), tau


def test_logsnr_grid_is_uniform_in_lambda():
    """At S = 10 no point needs moving: each is the nearest step to its target λ (spacing 0.98)."""
    abar = LINEAR.alphas_cumprod.numpy()
    lam = np.array([dpm_lambda(a) for a in abar])
    tau = ddim.timesteps(LINEAR, 10, "logsnr").numpy()
    targets = np.linspace(lam[999], lam[0], 10)
    assert (tau == [int(np.abs(lam - v).argmin()) for v in targets]).all()
    with pytest.raises(ValueError, match="needs the Schedule"):
        ddim.timesteps(1000, 10, "logsnr")


def test_invert_runs_on_the_seam():
    """`invert` takes its step from the solver: DDIM's inverse; solvers without one are refused."""
    model = MIX.model(LINEAR)
    x0, _ = MIX.sample(16, torch.Generator().manual_seed(1))
    xT = ddim.invert(model, LINEAR, x0, steps=200, solver="ddim")
    assert torch.equal(xT, ddim.invert(model, LINEAR, x0, steps=200))
    assert (ddim.sample(model, LINEAR, xT, steps=200) - x0).abs().max() < 0.05
    with pytest.raises(ValueError, match="solver 'dpmpp-2m' has no inversion; allowed: ddim"):
        ddim.invert(model, LINEAR, x0, steps=10, solver="dpmpp-2m")
