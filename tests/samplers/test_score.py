"""The score view on the Gaussian-mixture oracle (exact score, exact p(y | x_t)): Langevin, reverse SDE,
probability flow, predictor-corrector, annealed Langevin and classifier guidance; plus their checks."""

import pytest
import torch

import ddim
from ddim.samplers import AnnealedLangevin, PredictorCorrector, SOLVERS
from ddim.forward import score_from_eps
from ddim.samplers.solvers import langevin_step, snr_step_size
from gmm import GaussianMixture

S1000 = ddim.Schedule.linear(1000)
_g = torch.Generator().manual_seed(3)
# 16 dimensions: the signal-to-noise step rule needs ‖z‖ to concentrate (in 2-d ‖s‖ ≈ 0 makes δ explode)
GM = GaussianMixture([0.2, 0.3, 0.5], torch.randn(3, 16, generator=_g, dtype=torch.float64).tolist(), [0.2, 0.3, 0.4])


def moments(x: torch.Tensor):
    """(weights (K,), mean error per component (K,), spread per component (K,)) of samples by nearest mode."""
    k = GM.nearest_mode(x)
    w = torch.bincount(k, minlength=GM.K).double() / len(k)
    err = torch.stack([(x[k == i].mean(0) - GM.means[i]).norm() for i in range(GM.K)])
    spread = torch.stack([x[k == i].std(0).mean() for i in range(GM.K)])
    return w, err, spread


def assert_mixture(x, w_tol=0.03, mean_tol=0.08, spread_rtol=0.06):
    w, err, spread = moments(x)
    assert (w - GM.weights).abs().max() < w_tol, w
    assert err.max() < mean_tol, err
    assert ((spread - GM.stds).abs() / GM.stds).max() < spread_rtol, spread


def noise(n, seed=1):
    return torch.randn(n, GM.d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
def test_score_is_the_exact_score_for_every_prediction_type(prediction):
    x, t = noise(64), torch.full((64,), 400, dtype=torch.int64)
    got = ddim.score(GM.model(S1000, prediction), S1000, x, t, prediction)
    want = GM.score(x, S1000.alphas_cumprod[400])
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-10)
    eps = GM.eps(x, S1000.alphas_cumprod[400])
    assert torch.allclose(score_from_eps(eps, S1000.alphas_cumprod[400]), want, rtol=1e-10)
    with pytest.raises(ValueError, match="t must lie in"):
        ddim.score(GM.model(S1000), S1000, x, torch.full((64,), 1000, dtype=torch.int64))


@pytest.mark.parametrize("score_scale,invariant", [(1.0, True), (0.7, False)])
def test_langevin_at_one_level_leaves_q_t_invariant(score_scale, invariant):
    """Start from exact draws of q_t; 300 small Langevin steps with the exact score keep the moments
    within sampling error (a wrong score, 0.7×, visibly does not: the test can fail)."""
    abar = S1000.alphas_cumprod[300]
    x0, _ = GM.sample(4000, torch.Generator().manual_seed(0))
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * noise(4000, 5)
    before_mean, before_var = x.mean(0), x.var(0).mean()
    g, delta = torch.Generator().manual_seed(7), 0.02 * (1 - abar)
    for _ in range(300):
        z = torch.randn(x.shape, generator=g, dtype=torch.float64)
        x = langevin_step(x, score_scale * GM.score(x, abar), delta, z)
    # sampling error of a mean over 4000 draws of variance ~0.9: ~0.015; of the variance: ~2 %
    ok = (x.mean(0) - before_mean).abs().max() < 0.06 and abs(x.var(0).mean() / before_var - 1) < 0.05
    assert ok == invariant, ((x.mean(0) - before_mean).abs().max(), x.var(0).mean() / before_var)


def test_reverse_sde_reproduces_the_mixture():
    out = ddim.sample(GM.model(S1000), S1000, noise(3000), steps=1000, solver="reverse-sde",
                      generator=torch.Generator().manual_seed(2))
    assert_mixture(out)


def test_probability_flow_ode_converges_to_ddim_eta0():
    x = noise(500)
    gap = {}
    for S in (50, 500):
        pf = ddim.sample(GM.model(S1000), S1000, x, steps=S, solver="pf-ode")
        dd = ddim.sample(GM.model(S1000), S1000, x, steps=S)
        gap[S] = (pf - dd).abs().max().item()
    assert gap[500] < gap[50] / 10 and gap[500] < 0.1, gap  # both first order: the gap shrinks with the step


def test_predictor_corrector_reproduces_the_mixture_and_counts_its_calls():
    pc = PredictorCorrector(predictor="ddim", corrector_steps=1, snr=0.05)
    calls = []
    model = GM.model(S1000)
    counted = lambda x, t: calls.append(1) or model(x, t)  # noqa: E731
    out = ddim.sample(counted, S1000, noise(3000), steps=100, solver=pc, generator=torch.Generator().manual_seed(2))
    assert len(calls) == pc.nfe(100) == 200
    assert_mixture(out)


def test_annealed_langevin_reproduces_the_mixture():
    solver = AnnealedLangevin(langevin_steps=5, step_size=0.2)
    out = ddim.sample(GM.model(S1000), S1000, noise(1500), steps=400, solver=solver,
                      generator=torch.Generator().manual_seed(2))
    assert_mixture(out, w_tol=0.05, spread_rtol=0.1)


def test_classifier_guidance_at_scale_1_samples_the_class_component():
    """∇ log q(x_t) + ∇ log q(y | x_t) = ∇ log q(x_t | y): with the exact score and classifier, guidance at
    s = 1 samples N(μ_y, s_y² I) itself."""
    y, n = 1, 2000
    guided = ddim.ClassifierGuidance(GM.model(S1000), GM.classifier(S1000), torch.full((n,), y), 1.0, S1000)
    out = ddim.sample(guided, S1000, noise(n), steps=50, spacing="logsnr", solver="dpmpp-2m")
    k = GM.nearest_mode(out)
    assert (k == y).double().mean() > 0.995
    assert (out.mean(0) - GM.means[y]).norm() < 0.05
    assert abs(out.std(0).mean() / GM.stds[y] - 1) < 0.05
    # scale 0 is the model itself; a v-prediction model gets the same guided ε̂
    x, t = noise(8), torch.full((8,), 300, dtype=torch.int64)
    zero = ddim.ClassifierGuidance(GM.model(S1000), GM.classifier(S1000), torch.full((8,), y), 0.0, S1000)
    assert torch.equal(zero(x, t), GM.model(S1000)(x, t))
    as_v = ddim.ClassifierGuidance(GM.model(S1000, "v"), GM.classifier(S1000), torch.full((8,), y), 1.0, S1000, "v")
    eps_v = ddim.forward.predict_x0_eps(as_v(x, t), x, S1000.alphas_cumprod[300], "v")[1]
    assert torch.allclose(eps_v, guided.__class__(GM.model(S1000), GM.classifier(S1000), torch.full((8,), y), 1.0,
                                                  S1000)(x, t), atol=1e-9)


def _toward_class_0(out: torch.Tensor) -> float:
    """The share of samples whose nearest mixture component is component 0 (the one guidance pulls to)."""
    return float((GM.nearest_mode(out) == 0).double().mean())


def test_classifier_guidance_works_under_inference_mode():
    """Under inference mode the gradient is still taken, and pulls samples to the class: component 0, 20 % of
    the mixture, gets most of them at s = 2 (the same noise unguided: about its weight)."""
    guided = ddim.ClassifierGuidance(GM.model(S1000), GM.classifier(S1000), torch.zeros(64, dtype=torch.int64), 2.0,
                                     S1000)
    with torch.inference_mode():
        out = ddim.sample(guided, S1000, noise(64), steps=20)
        plain = ddim.sample(GM.model(S1000), S1000, noise(64), steps=20)
    assert _toward_class_0(plain) < 0.4 and _toward_class_0(out) > 0.9, (_toward_class_0(plain), _toward_class_0(out))


def test_snr_step_size_is_per_sample():
    s = torch.stack([torch.ones(10), 10 * torch.ones(10)])
    z = torch.ones(2, 10)
    d = snr_step_size(s, z, 0.16, 1.0)
    assert d.shape == (2, 1)
    assert torch.allclose(d[:, 0], torch.tensor([2 * 0.16**2, 2 * 0.16**2 / 100]))


def test_score_solvers_refuse_bad_settings():
    for bad, msg in [(dict(snr=-1.0), "snr must be a number > 0"), (dict(corrector_steps=-1), "corrector_steps"),
                     (dict(predictor="unipc"), "cannot be a pc predictor"), (dict(predictor="pc"), "cannot be")]:
        with pytest.raises(ValueError, match=msg):
            PredictorCorrector(**bad)
    with pytest.raises(ValueError, match="step_size must be"):
        AnnealedLangevin(step_size=0.0)
    with pytest.raises(ValueError, match="eta=0.5 applies to solver 'ddim'"):
        ddim.sample(GM.model(S1000), S1000, noise(2), steps=5, eta=0.5, solver="reverse-sde")
    # a pc with a DDIM predictor takes η
    ddim.sample(GM.model(S1000), S1000, noise(2), steps=5, eta=0.5, solver="pc", generator=torch.Generator())
    zt = ddim.Schedule.linear(1000, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="cannot start at ᾱ_t = 0"):
        ddim.sample(GM.model(zt, "v"), zt, noise(2), steps=5, spacing="trailing", prediction="v",
                    solver="reverse-sde")
    assert {"reverse-sde", "pf-ode", "langevin", "pc"} <= set(SOLVERS)
    with pytest.raises(ValueError, match="classifier scale must be"):
        ddim.ClassifierGuidance(GM.model(S1000), GM.classifier(S1000), torch.zeros(2, dtype=torch.int64), -1.0, S1000)


@pytest.mark.parametrize("solver", [PredictorCorrector(corrector_steps=2, snr=0.1), AnnealedLangevin(langevin_steps=3),
                                    "reverse-sde"])
def test_pre_drawn_noise_of_the_graph_path_matches_the_loop(solver):
    """The CUDA-graph path pre-draws every step's noise into one buffer (several draws per step for pc and
    langevin); replayed in the loop's order it gives ``sample``'s result exactly (checked here on the CPU)."""
    import functools

    from ddim.samplers import fast
    from ddim.samplers.loop import SampleOptions, denoise, noise_drawer, sample_loop, sample_setup

    x = noise(6)
    setup = sample_setup(S1000, x, SampleOptions(steps=8, solver=solver))
    coef = setup.plan.to(x.device, x.dtype)
    predict = functools.partial(denoise, ddim.Denoiser(GM.model(S1000), S1000))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(6)]  # noqa: E731
    want = sample_loop(predict, setup, coef, x, noise_drawer(setup, coef, x, gens()))
    z = fast._noise_buffer(sum(setup.draws), x)
    fast._fill_noise(z, setup, gens())
    got = sample_loop(predict, setup, coef, x, fast._static_noise(setup, z))
    assert sum(setup.draws) > len(setup.draws) or getattr(solver, "name", solver) == "reverse-sde"
    assert torch.equal(got, want)
    with pytest.warns(RuntimeWarning, match="x_T is on cpu, not CUDA"):
        got = fast.FastSampler().sample(GM.model(S1000), S1000, x, steps=8, solver=solver, generator=gens())
    assert torch.equal(got, want)


def test_classifier_guidance_built_under_inference_mode():
    """Built under inference mode (its label buffer an inference tensor), it still guides."""
    with torch.inference_mode():
        guided = ddim.ClassifierGuidance(GM.model(S1000), GM.classifier(S1000), torch.zeros(64, dtype=torch.int64),
                                         2.0, S1000)
        out = ddim.sample(guided, S1000, noise(64), steps=20)
    assert _toward_class_0(out) > 0.9, _toward_class_0(out)
