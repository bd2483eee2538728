"""Parity with the reference schedulers (diffusers DDIMScheduler / DDPMScheduler) over full sampling
loops in float64, with the schedule and the noise fed in identically, and the two places where the
reference is wrong, shown.

Agreement measure: max |ours − ref| / max |ref| over the final samples (norm-wise relative difference).
"""

import itertools

import pytest
import torch

import ddim
from ddim.samplers import get_solver, plan

diffusers = pytest.importorskip("diffusers")

T = 1000
SCHEDULES = {
    "linear": ddim.Schedule.linear(T),
    "scaled_linear": ddim.Schedule.scaled_linear(T),
    "cosine": ddim.Schedule.cosine(T),
    "sigmoid": ddim.Schedule.sigmoid(T),
    "linear_zsnr": ddim.Schedule.linear(T, zero_terminal_snr=True),
}
PRED = {"epsilon": "epsilon", "sample": "sample", "v": "v_prediction"}
SHAPE = (3, 2, 4, 4)
TOL = 1e-5
# solver parity: DPMSolverMultistepScheduler.step casts the sample to float32 (measured up to 6e-7);
# UniPCMultistepScheduler stays in float64 (measured 2e-15)
TOL_DPMSOLVER, TOL_UNIPC = 1e-6, 1e-12


def model(x, t):
    """A fixed smooth nonlinear stand-in for a network: depends on x and t, exceeds [-1, 1] as x̂_0."""
    tt = t.to(x.dtype).view(-1, 1, 1, 1) / T
    return torch.tanh(0.8 * x + 0.3 * torch.sin(3 * x.roll(1, -1))) * (1 + tt) + 0.1 * tt


def x_T(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def float64_scheduler(cls, schedule, **kw):
    ref = cls(num_train_timesteps=T, **kw)
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()  # same schedule, no float32 rounding
    if hasattr(ref, "final_alpha_cumprod"):
        ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


def ddim_reference(schedule, steps, eta, spacing, prediction, clip, noise_seed, clipped_eps=False,
                   thresholding=False):
    ref = float64_scheduler(diffusers.DDIMScheduler, schedule, timestep_spacing=spacing,
                            prediction_type=PRED[prediction], clip_sample=clip, clip_sample_range=1.0,
                            thresholding=thresholding, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(noise_seed)
    x = x_T()
    for k, t in enumerate(ref.timesteps):
        # our sampler draws one N(0, I) per step with σ > 0: every step but the last (which lands on ᾱ = 1)
        z = torch.randn(SHAPE, generator=g, dtype=torch.float64) if k < steps - 1 else torch.zeros(SHAPE,
                                                                                                   dtype=torch.float64)
        out = model(x, t.expand(SHAPE[0]))
        x = ref.step(out, t, x, eta=eta, use_clipped_model_output=clipped_eps,
                     variance_noise=z if eta > 0 else None).prev_sample
    return x


def _marks(grid, steps_index):
    """Full 1000-step loops cost ~1 s each in the reference: mark them slow (they still run in CI)."""
    return [pytest.param(*c, marks=pytest.mark.slow) if c[steps_index] == 1000 else c for c in grid]


DDIM_GRID = [c for c in itertools.product(SCHEDULES, [0.0, 0.3, 1.0], ["leading", "trailing"], PRED,
                                          [False, True], [1, 10, 50, 1000])
             if not (c[0] == "linear_zsnr" and c[3] == "epsilon")]  # ε cannot start at ᾱ = 0


@pytest.mark.parametrize("sched,eta,spacing,prediction,clip,steps", _marks(DDIM_GRID, 5))
def test_ddim_scheduler_parity(sched, eta, spacing, prediction, clip, steps):
    s = SCHEDULES[sched]
    ours = ddim.sample(model, s, x_T(), steps=steps, eta=eta, spacing=spacing, prediction=prediction,
                       clip=1.0 if clip else None, generator=torch.Generator().manual_seed(123))
    ref = ddim_reference(s, steps, eta, spacing, prediction, clip, noise_seed=123)
    assert torch.isfinite(ours).all()
    assert rel(ours, ref) <= TOL


@pytest.mark.parametrize("prediction", list(PRED))
@pytest.mark.parametrize("mode", ["clipped_eps", "threshold"])
def test_ddim_scheduler_parity_x0_options(prediction, mode):
    s = SCHEDULES["linear"]
    kw = dict(clip=1.0, eps_from_clipped_x0=True) if mode == "clipped_eps" else \
        dict(threshold=0.9, threshold_max=1.5)
    ours = ddim.sample(model, s, x_T(), steps=20, eta=0.3, spacing="trailing", prediction=prediction,
                       generator=torch.Generator().manual_seed(5), **kw)
    ref = ddim_reference(s, 20, 0.3, "trailing", prediction, clip=mode == "clipped_eps", noise_seed=5,
                         clipped_eps=mode == "clipped_eps", thresholding=mode == "threshold")
    assert rel(ours, ref) <= TOL


def ddpm_reference(schedule, steps, variance, spacing, prediction, clip, seed):
    ref = float64_scheduler(diffusers.DDPMScheduler, schedule, timestep_spacing=spacing, variance_type=variance,
                            prediction_type=PRED[prediction], clip_sample=clip, clip_sample_range=1.0)
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = x_T()
    for t in ref.timesteps:
        x = ref.step(model(x, t.expand(SHAPE[0])), t, x, generator=g).prev_sample
    return x


# fixed_large only with "leading" (last step t = 0): see test_ddpm_fixed_large_trailing_adds_noise_to_output
DDPM_GRID = [c for c in itertools.product(SCHEDULES, [("fixed_small", "leading"), ("fixed_small", "trailing"),
                                                      ("fixed_large", "leading")],
                                          PRED, [False, True], [1, 10, 50, 1000])
             if not (c[0] == "linear_zsnr" and c[2] == "epsilon")]


@pytest.mark.parametrize("sched,variant,prediction,clip,steps", _marks(DDPM_GRID, 4))
def test_ddpm_scheduler_parity(sched, variant, prediction, clip, steps):
    """η = 1 is DDPM's ancestral sampler ("fixed_small" = β̃); η = "large" is its "fixed_large" (σ̂).
    DDPM's clipped posterior mean equals eq. 12 with ε̂ re-derived from the clipped x̂_0."""
    variance, spacing = variant
    s = SCHEDULES[sched]
    ours = ddim.sample(model, s, x_T(), steps=steps, eta=1.0 if variance == "fixed_small" else "large",
                       spacing=spacing, prediction=prediction, clip=1.0 if clip else None,
                       eps_from_clipped_x0=clip, generator=torch.Generator().manual_seed(9))
    ref = ddpm_reference(s, steps, variance, spacing, prediction, clip, seed=9)
    assert torch.isfinite(ours).all()
    assert rel(ours, ref) <= TOL


def test_ddpm_fixed_large_trailing_adds_noise_to_output():
    """With "trailing" the last grid step is t = 99 > 0, so diffusers' "fixed_large" adds noise of std
    √(1 − ᾱ_99) ≈ 0.1 to the image it returns. DDPM's last step returns the posterior mean; ours does."""
    s = SCHEDULES["linear"]
    ours = ddim.sample(model, s, x_T(), steps=10, eta="large", spacing="trailing",
                       generator=torch.Generator().manual_seed(9))
    ref = ddpm_reference(s, 10, "fixed_large", "trailing", "epsilon", False, seed=9)
    # replay the reference's generator: 9 draws for steps with t > 0 before the last, then the extra one
    g = torch.Generator().manual_seed(9)
    for _ in range(9):
        torch.randn(SHAPE, generator=g, dtype=torch.float64)
    extra = (1 - s.alphas_cumprod[99]).sqrt() * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    assert torch.allclose(ref - ours, extra, atol=1e-9)
    assert extra.abs().max() > 0.1


def test_linspace_stride_bug():
    """diffusers' DDIM step pairs t with t − T//S (a stride), but "linspace" grids are not evenly strided:
    for S = 10 the grid is 999, 888, 777, …, yet the step from 999 lands on ᾱ_899, and the next call then
    tells the model the sample is at t = 888. Ours pairs each t with the next grid entry.

    Check with an exact denoiser for data concentrated at one point x*: ε*(x_t, t) = (x_t − √ᾱ_t x*)/√(1−ᾱ_t).
    Along the exact η = 0 path ε stays constant, so at every visited grid point x_t must equal
    √ᾱ_t x* + √(1−ᾱ_t) ε_0. Ours does to rounding; the reference's states sit at the wrong noise level."""
    s = SCHEDULES["linear"]
    abar = s.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x_star = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    eps0 = torch.randn(SHAPE, generator=g, dtype=torch.float64)

    def exact(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        return (x - a.sqrt() * x_star) / (1 - a).sqrt()

    def on_path(t):
        return abar[t].sqrt() * x_star + (1 - abar[t]).sqrt() * eps0

    grid = ddim.timesteps(T, 10, "linspace")
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing="linspace")
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == grid.tolist()
    assert grid[1].item() == 888 and grid[0].item() - T // 10 == 899  # the stride misses the grid

    ours_err, ref_err = [], []
    ddim.sample(exact, s, on_path(999), timesteps=grid,
                callback=lambda k, t, x, x0: ours_err.append((x - on_path(grid[k + 1])).abs().max().item())
                if k + 1 < len(grid) else None)
    ref.alphas_cumprod = abar.clone()
    x = on_path(999)
    for k, t in enumerate(ref.timesteps[:-1]):
        x = ref.step(exact(x, t.expand(SHAPE[0])), t, x).prev_sample
        ref_err.append((x - on_path(grid[k + 1])).abs().max().item())
    assert max(ours_err) < 1e-12
    assert min(ref_err) > 1e-3  # every reference state is off the path by far more than rounding


def test_plan_noise_order_assumed_above():
    """The reference loops above feed noise for every step but the last; check that is our draw order."""
    for eta in (0.3, 1.0):
        for spacing in ("leading", "trailing"):
            std = plan(SCHEDULES["linear"], 10, eta, spacing).noise_std
            assert (std[:-1] > 0).all() and std[-1] == 0


def test_cli_ddpm_sampler_is_diffusers_ddpm_with_clipping(tmp_path):
    """`ddim sample --sampler ddpm` (x̂_0 clipped by default) is DDPM's ancestral sampler with the clipped
    posterior mean: diffusers ``DDPMScheduler(variance_type="fixed_large", clip_sample=True)`` fed the
    same network, x_T and noise. Keeping the raw ε̂ after clipping instead differs by ~0.5 relative."""
    import numpy as np

    from ddim.checkpoint import load_checkpoint
    from ddim.cli import main
    from ddim.noise import generators

    run, npz = tmp_path / "run", tmp_path / "d.npz"
    tiny = ["--dataset", "digits", "--image-size", "8", "--base-channels", "16", "--channel-mult", "1,2",
            "--num-res-blocks", "1", "--norm-groups", "8", "--sample-every", "0", "--device", "cpu", "--quiet",
            "--batch-size", "32", "--no-class-cond", "--steps", "3"]
    assert main(["train", *tiny, "--out", str(run)]) == 0
    assert main(["sample", "--checkpoint", str(run), "--n", "1", "--sampler", "ddpm", "--seed", "4",
                 "--out", str(tmp_path / "d.png"), "--npz", str(npz), "--quiet"]) == 0
    ours = torch.from_numpy(np.load(npz)["images"]).double()

    net, schedule, config = load_checkpoint(run)
    assert config.prediction == "epsilon"
    ref = float64_scheduler(diffusers.DDPMScheduler, schedule, variance_type="fixed_large", clip_sample=True,
                            clip_sample_range=1.0)
    ref.set_timesteps(T)
    g = generators(4, [0])[0]  # sample 0's own generator: x_T, then one draw per step with t > 0
    x = torch.randn((1, 1, 8, 8), generator=g)
    with torch.no_grad():
        for t in ref.timesteps:
            x = ref.step(net(x, t.expand(1)), t, x, generator=g).prev_sample
    assert rel(ours, x.double()) <= 1e-4


SOLVER_REFS = {  # our solver -> (diffusers scheduler, its settings)
    "dpmpp-2m": ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="dpmsolver++")),
    "dpmpp-3m-compat": ("DPMSolverMultistepScheduler", dict(solver_order=3, algorithm_type="dpmsolver++")),
    "dpmpp-2m-sde": ("DPMSolverMultistepScheduler", dict(solver_order=2, algorithm_type="sde-dpmsolver++")),
    "unipc": ("UniPCMultistepScheduler", dict(solver_order=2, solver_type="bh2", predict_x0=True)),
    "unipc-3": ("UniPCMultistepScheduler", dict(solver_order=3, solver_type="bh2", predict_x0=True)),
}


def solver_reference(solver, schedule, steps, prediction, noise_seed):
    """diffusers' multistep scheduler in float64 (its sigmas are float32 by default), our noise fed in."""
    cls, kw = SOLVER_REFS[solver]
    ref = float64_scheduler(getattr(diffusers, cls), schedule, prediction_type=PRED[prediction], **kw)
    abar = schedule.alphas_cumprod
    ref.alpha_t, ref.sigma_t = abar.sqrt(), (1 - abar).sqrt()
    ref.lambda_t = ref.alpha_t.log() - ref.sigma_t.log()
    ref.set_timesteps(steps)
    ref.sigmas = torch.cat([((1 - abar[ref.timesteps]) / abar[ref.timesteps]).sqrt(), torch.zeros(1, dtype=abar.dtype)])
    g = torch.Generator().manual_seed(noise_seed)
    x = x_T()
    for k, t in enumerate(ref.timesteps):
        out = model(x, t.expand(SHAPE[0]))
        kw = {}
        if solver.endswith("sde"):  # our draw order: one z per step with noise, none on the last
            kw["variance_noise"] = (torch.randn(SHAPE, generator=g, dtype=torch.float64) if k < steps - 1
                                    else torch.zeros(SHAPE, dtype=torch.float64))
        x = ref.step(out, t, x, **kw).prev_sample
    return x, ref.timesteps


@pytest.mark.parametrize("solver", list(SOLVER_REFS))
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 10, 20])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_solver_parity(solver, steps, prediction):
    """DPM-Solver++(2M/3M/2M SDE) and UniPC-bh2 of order 2 and 3 equal diffusers' schedulers on the same
    grid, float64 (lower-order warm-up and final steps included: S = 1, 2, 3 and S < 15 vs S = 20). Our
    third-order DPM-Solver++ is ``dpmpp-3m-compat`` here: diffusers' D2 is half the third-order one
    (``test_dpmpp_3m_differs_from_diffusers_by_its_d2_term``)."""
    s = SCHEDULES["linear"]
    ref, grid = solver_reference(solver, s, steps, prediction, noise_seed=3)
    ours = ddim.sample(model, s, x_T(), timesteps=grid, prediction=prediction, solver=solver,
                       generator=torch.Generator().manual_seed(3))
    assert rel(ours, ref) <= (TOL_UNIPC if solver.startswith("unipc") else TOL_DPMSOLVER)


def test_dpmpp_3m_differs_from_diffusers_by_its_d2_term():
    """Where the third-order step runs (S = 20: steps 2-18), our DPM-Solver++(3M) is not diffusers': its D2
    is twice diffusers' (third order; tests/samplers/test_solver_orders.py); with diffusers' D2 (``dpmpp-3m-compat``)
    the two agree. Below three steps no third-order step runs, and the two are the same solver."""
    s = SCHEDULES["linear"]
    for steps, differ in ((20, True), (2, False)):
        ref, grid = solver_reference("dpmpp-3m-compat", s, steps, "epsilon", noise_seed=3)
        ours = ddim.sample(model, s, x_T(), timesteps=grid, solver="dpmpp-3m")
        compat = ddim.sample(model, s, x_T(), timesteps=grid, solver="dpmpp-3m-compat")
        assert rel(compat, ref) <= TOL_DPMSOLVER
        assert (rel(ours, ref) > 1e-4) == differ, (steps, rel(ours, ref))


@pytest.mark.parametrize("steps", [1, 2, 5, 10])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_heun_parity(steps, prediction):
    """Heun (EDM Algorithm 1, Euler on the last step) equals diffusers' HeunDiscreteScheduler on its
    "trailing" grid, whose timesteps are integers (its default "linspace" grid calls the model at fractional
    t, which our integer grids do not express). diffusers works on x/√ᾱ (σ-space); with its sigmas in
    float64 (it rounds them to float32: ~2e-5 relative difference at S = 2 with v-prediction) the two agree
    to rounding. One difference is explained, not copied: for "linspace"/"trailing" its
    init_noise_sigma is σ_max (157.407 here), not the √(σ_max² + 1) = 1/√ᾱ_T (157.411) that maps x_T to
    σ-space, a 2e-5 relative offset of every sample; the test hands it x_T/√ᾱ_T itself."""
    s = SCHEDULES["linear"]
    ref = diffusers.HeunDiscreteScheduler(num_train_timesteps=T, prediction_type=PRED[prediction],
                                          timestep_spacing="trailing")
    ref.alphas_cumprod = s.alphas_cumprod.clone()
    ref.set_timesteps(steps)
    abar = s.alphas_cumprod[ref.timesteps.long()]  # its float32 sigmas, recomputed in float64
    ref.sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])
    x = x_T() / s.alphas_cumprod[int(ref.timesteps[0])].sqrt()  # σ-space: x_T/√ᾱ_T
    calls = 0
    for t in ref.timesteps:
        out = model(ref.scale_model_input(x, t), t.long().expand(SHAPE[0]))
        x = ref.step(out, t, x).prev_sample
        calls += 1
    grid = ref.timesteps.long().unique_consecutive()
    ours = ddim.sample(model, s, x_T(), timesteps=grid, prediction=prediction, solver="heun")
    assert calls == get_solver("heun").nfe(steps) == 2 * steps - 1
    assert rel(ours, x.double()) <= 1e-12  # float64 throughout: the same arithmetic
