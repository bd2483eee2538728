"""Properties of the generalized step and the loops, and their input checks."""

import pytest
import torch

import ddim
from ddim.samplers import ddim_step, plan, posterior_variance, sigma_eta, sigma_hat

S1000 = ddim.Schedule.linear(1000)


def test_eta1_full_grid_is_ddpm_posterior_variance():
    p = plan(S1000, 1000, eta=1.0, spacing="leading")
    betas, abar = S1000.betas, S1000.alphas_cumprod
    t = p.timesteps  # 999 .. 0
    abar_prev = torch.cat([abar[:-1].flip(0)[: 999], torch.ones(1, dtype=torch.float64)])
    assert torch.equal(p.abar_prev, abar_prev)
    # DDPM eq. 7 from the raw betas: β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t, and β̃_0 = 0
    beta_tilde = (1 - abar_prev) / (1 - abar[t]) * betas[t]
    assert torch.allclose(p.sigma**2, beta_tilde, rtol=1e-10, atol=1e-18)
    assert p.sigma[-1] == 0
    assert torch.allclose(posterior_variance(abar[t], abar_prev), beta_tilde, rtol=1e-10, atol=1e-18)
    # σ̂ on the full grid is √β_t, and the step landing on x_0 adds no noise (DDPM returns the mean)
    large = plan(S1000, 1000, eta="large", spacing="leading")
    assert torch.allclose(large.noise_std[:-1] ** 2, betas[t][:-1], rtol=1e-9)
    assert large.noise_std[-1] == 0 and torch.equal(large.sigma, p.sigma)


def test_sigma_formulas():
    a_t, a_p = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64)
    assert sigma_eta(a_t, a_p, 0.0) == 0
    assert sigma_eta(a_t, a_p, 1.0) ** 2 == pytest.approx((0.4 / 0.7) * 0.5)
    assert sigma_eta(a_t, a_p, 0.5) == pytest.approx(0.5 * sigma_eta(a_t, a_p, 1.0).item())
    assert sigma_hat(a_t, a_p) ** 2 == pytest.approx(0.5)


def test_step_matches_eq12_and_lands_on_x0():
    g = torch.Generator().manual_seed(0)
    x0, eps, z = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    sig = 0.2
    out = ddim_step(x0, eps, torch.tensor(0.6, dtype=torch.float64), sig, sig * z)
    assert torch.allclose(out, 0.6**0.5 * x0 + (1 - 0.6 - sig**2) ** 0.5 * eps + sig * z)
    assert torch.equal(ddim_step(x0, eps, 1.0, 0.0), x0)  # ᾱ_{t−1} = 1: the result is x̂_0


def test_pairs_come_from_the_grid():
    tau = torch.tensor([950, 700, 321, 20, 3])  # any grid, no stride
    p = plan(S1000, timesteps=tau)
    abar = S1000.alphas_cumprod
    assert torch.equal(p.abar_prev, torch.cat([abar[tau[1:]], torch.ones(1, dtype=torch.float64)]))
    p0 = plan(S1000, timesteps=tau, set_alpha_to_one=False)
    assert p0.abar_prev[-1] == abar[0]


def affine_model(x, t):
    """A deterministic stand-in model: a smooth function of x and t."""
    return torch.tanh(0.5 * x) + 0.001 * t.to(x.dtype).view(-1, *[1] * (x.ndim - 1))


def test_sample_trajectory_and_callback_agree():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = []
    out, traj = ddim.sample(affine_model, S1000, x, steps=7, return_trajectory=True,
                            callback=lambda k, t, xt, x0: seen.append((k, t, xt.clone())))
    assert traj.x.shape == (8, 2, 1, 4, 4) and traj.x0_pred.shape == (7, 2, 1, 4, 4)
    assert torch.equal(traj.x[0], x) and torch.equal(traj.x[-1], out)
    assert [t for _, t, _ in seen] == ddim.timesteps(1000, 7).tolist()
    assert all(torch.equal(traj.x[k + 1], xt) for k, _, xt in seen)
    assert torch.equal(out, ddim.sample(affine_model, S1000, x, steps=7))
    assert torch.equal(out, traj.x0_pred[-1])  # last step lands on ᾱ = 1


def test_invert_trajectory_ascends():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xT, traj = ddim.invert(affine_model, S1000, x, steps=5, return_trajectory=True)
    assert traj.timesteps.tolist() == sorted(ddim.timesteps(1000, 5).tolist())
    assert torch.equal(traj.x[0], x) and torch.equal(traj.x[-1], xT)


def test_per_sample_generators_are_batch_invariant():
    shape = (1, 3, 3)
    big = ddim.generators(7, range(6))
    x_big = ddim.randn((6, *shape), big, dtype=torch.float64)
    out_big = ddim.sample(affine_model, S1000, x_big, steps=5, eta=1.0, generator=big)
    small = ddim.generators(7, [4, 1])
    x_small = ddim.randn((2, *shape), small, dtype=torch.float64)
    out_small = ddim.sample(affine_model, S1000, x_small, steps=5, eta=1.0, generator=small)
    assert torch.equal(out_small[0], out_big[4]) and torch.equal(out_small[1], out_big[1])
    assert not torch.equal(out_big[0], out_big[1])


def test_per_step_eta():
    """One η per step: a constant sequence is the scalar η; η = 1 on the first k steps and 0 after is the η = 1
    run up to its k-th state, then deterministic DDIM from there (η = 0 steps draw no noise)."""
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    scalar = ddim.sample(affine_model, S1000, x, steps=10, eta=0.7, generator=gen())
    assert torch.equal(ddim.sample(affine_model, S1000, x, steps=10, eta=[0.7] * 10, generator=gen()), scalar)
    assert torch.equal(ddim.sample(affine_model, S1000, x, steps=10, eta=torch.full((10,), 0.7, dtype=torch.float64),
                                   generator=gen()),
                       scalar)
    k, grid = 4, plan(S1000, 10).timesteps.tolist()
    _, stochastic = ddim.sample(affine_model, S1000, x, steps=10, eta=1.0, generator=gen(), return_trajectory=True)
    then = ddim.sample(affine_model, S1000, stochastic.x[k], timesteps=grid[k:], eta=0.0)
    mixed = ddim.sample(affine_model, S1000, x, steps=10, eta=[1.0] * k + [0.0] * (10 - k), generator=gen())
    assert torch.equal(mixed, then)
    assert not torch.allclose(mixed, stochastic.x[-1]) and not torch.allclose(mixed, scalar)
    zeros = ddim.sample(affine_model, S1000, x, steps=6, eta=[0.0] * 6, solver="dpmpp-2m")  # = η 0: allowed
    assert torch.equal(zeros, ddim.sample(affine_model, S1000, x, steps=6, solver="dpmpp-2m"))
    setup = ddim.samplers.loop.sample_setup(S1000, x, ddim.SampleOptions(steps=10, eta=[1.0] * k + [0.0] * 6))
    assert setup.draws == (1,) * k + (0,) * 6


def test_eta_changes_result_only_through_noise():
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    a = ddim.sample(affine_model, S1000, x, steps=10, eta=0.0)
    b = ddim.sample(affine_model, S1000, x, steps=10, eta=0.0, generator=torch.Generator().manual_seed(5))
    c = ddim.sample(affine_model, S1000, x, steps=10, eta=0.5, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_clip_and_threshold():
    x = 3 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    big = lambda x, t: -10 * x  # noqa: E731  x̂_0 far outside [-1, 1]
    out = ddim.sample(big, S1000, x, steps=5, clip=1.0)
    assert out.abs().max() <= 1.0
    out = ddim.sample(big, S1000, x, steps=5, threshold=0.9, threshold_max=2.0)
    assert out.abs().max() <= 1.0 + 1e-12
    # Imagen's form has no cap on s: inf is allowed and acts as an unreachable cap would.
    free = ddim.sample(big, S1000, x, steps=5, threshold=0.9, threshold_max=float("inf"))
    assert torch.equal(free, ddim.sample(big, S1000, x, steps=5, threshold=0.9, threshold_max=1e30))
    assert not torch.allclose(free, out)


def test_zero_terminal_snr_needs_v_or_x0():
    z = ddim.Schedule.linear(1000, zero_terminal_snr=True)
    x = torch.randn(2, 1, 2, 2)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        ddim.sample(affine_model, z, x, steps=10, spacing="trailing")
    out = ddim.sample(affine_model, z, x, steps=10, spacing="trailing", prediction="v")
    assert torch.isfinite(out).all()


X = torch.zeros(2, 1, 4, 4)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(steps=0), "1 <= steps <= T=1000, got 0"),
    (dict(steps=2000), "1 <= steps <= T=1000, got 2000"),
    (dict(eta=-1.0), "eta must be a finite number >= 0 or 'large', got -1.0"),
    (dict(eta="big"), "got 'big'"),
    (dict(eta=float("nan")), "eta must be a finite number"),
    (dict(eta=3.0), "eta=3.0 is too large"),
    (dict(steps=3, eta=[0.0, 3.0, 0.0]), "eta=3.0 is too large at t="),
    (dict(steps=3, eta=[1.0, 0.0]), "eta has 2 values, one per step, but the grid has 3 steps"),
    (dict(steps=2, eta=[1.0, -1.0]), "per-step eta must be a non-empty sequence of finite numbers >= 0"),
    (dict(steps=2, eta=[]), "per-step eta must be a non-empty sequence"),
    (dict(steps=2, eta=[0.0, 0.5], solver="dpmpp-2m"), "a per-step η with 1 non-zero values applies to solver 'ddim'"),
    (dict(spacing="cubic"), "unknown spacing 'cubic'"),
    (dict(prediction="x0"), "unknown prediction type 'x0'"),
    (dict(clip=1.0, threshold=0.99), "either clip or threshold"),
    (dict(clip=-1.0), "clip must be > 0"),
    (dict(timesteps=[5, 10]), "strictly decreasing"),
    (dict(timesteps=[1000, 5]), r"\[0, 999\]"),
    (dict(eta=1.0, generator=[torch.Generator()]), "1 per-sample generators for a batch of 2"),
])
def test_bad_sample_input(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ddim.sample(affine_model, S1000, X, **kwargs)


def test_bad_tensors():
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x_T contains non-finite"):
        ddim.sample(affine_model, S1000, bad)
    with pytest.raises(ValueError, match="x0 contains non-finite"):
        ddim.invert(affine_model, S1000, bad)
    with pytest.raises(ValueError, match=r"model output has shape \(2, 1, 2, 2\), expected \(2, 1, 4, 4\)"):
        ddim.sample(lambda x, t: x[..., :2, :2], S1000, X)
    with pytest.raises(ValueError, match="floating-point tensor"):
        ddim.sample(affine_model, S1000, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="ddim.Schedule"):
        ddim.sample(affine_model, "linear", X)


def test_guidance_wrapper():
    calls = []

    def cond_model(x, t, labels):
        calls.append(x.shape[0])
        return x * 0 + labels.to(x.dtype).view(-1, 1, 1, 1)

    x = torch.zeros(3, 1, 2, 2)
    t = torch.zeros(3, dtype=torch.int64)
    labels = torch.tensor([0, 1, 2])
    g = ddim.ClassifierFreeGuidance(cond_model, labels, w=2.0, null_label=10)
    out = g(x, t)
    assert calls == [6]  # one batched forward for both branches
    assert torch.allclose(out[:, 0, 0, 0], 3 * labels.float() - 2 * 10.0)  # (1+w)·c − w·∅
    g2 = ddim.ClassifierFreeGuidance(cond_model, labels, scale=3.0, null_label=10)
    assert torch.equal(g2(x, t), out)  # scale s = 1 + w is the same guidance
    assert torch.equal(ddim.ClassifierFreeGuidance(cond_model, labels, w=0, null_label=10)(x, t)[:, 0, 0, 0],
                       labels.float())
    with pytest.raises(ValueError, match="exactly one of w"):
        ddim.ClassifierFreeGuidance(cond_model, labels, w=1.0, scale=2.0, null_label=10)
    with pytest.raises(ValueError, match="null_label is needed"):
        ddim.ClassifierFreeGuidance(cond_model, labels, w=1.0)
    with pytest.raises(ValueError, match="batch of 2 samples but 3 labels"):
        g(x[:2], t[:2])


def test_guidance_rescale():
    """φ = 1 gives the guided output the conditional branch's per-sample std; φ mixes linearly."""
    g = torch.Generator().manual_seed(0)
    cond_w = torch.randn(3, 2, 4, 4, generator=g)

    def cond_model(x, t, labels):  # conditional branch: x + per-label pattern; null branch: 0.2 x
        return torch.where((labels == 10).view(-1, 1, 1, 1), 0.2 * x, x + cond_w[labels.clamp(max=2)])

    x, t, labels = torch.randn(3, 2, 4, 4, generator=g), torch.zeros(3, dtype=torch.int64), torch.tensor([0, 1, 2])
    plain = ddim.ClassifierFreeGuidance(cond_model, labels, w=4.0, null_label=10)(x, t)
    full = ddim.ClassifierFreeGuidance(cond_model, labels, w=4.0, null_label=10, rescale=1.0)(x, t)
    part = ddim.ClassifierFreeGuidance(cond_model, labels, w=4.0, null_label=10, rescale=0.7)(x, t)
    cond = x + cond_w
    assert torch.allclose(full.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-5)
    assert not torch.allclose(plain.std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)), rtol=1e-2)
    assert torch.allclose(part, 0.7 * full + 0.3 * plain, atol=1e-5)
    with pytest.raises(ValueError, match=r"guidance rescale must be a number in \[0, 1\], got 1.5"):
        ddim.ClassifierFreeGuidance(cond_model, labels, w=1.0, null_label=10, rescale=1.5)


def test_guidance_combines_bf16_outputs_in_float32():
    """Under autocast the model answers in bf16; cond + w·(cond − uncond) is formed in float32 from those
    values (the result here, 1 + 3.5·2⁻⁷, needs one bit more than bf16 keeps)."""
    def cond_model(x, t, labels):  # cond = 1 + 2^-7 (exact in bf16), uncond = 1
        return (x * 0 + 1 + (labels != 10).to(x.dtype).view(-1, 1, 1, 1) / 128).to(torch.bfloat16)

    x, t = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64)
    out = ddim.ClassifierFreeGuidance(cond_model, torch.tensor([0, 1]), w=2.5, null_label=10)(x, t)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.full_like(out, 1 + 3.5 / 128))  # (1 + w)·c − w·∅, exact in float32
    assert not torch.equal(out.bfloat16().float(), out)  # which bf16 arithmetic could not have given


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
def test_half_precision_inputs_keep_float32_arithmetic(dtype, prediction):
    """In bf16, ᾱ_t for small t rounds to 1 and √(1−ᾱ_t) to 0; the sampler must not compute in the
    model's dtype (it would divide by zero for prediction="sample")."""
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(4, 1, 6, 6, generator=g)
    half = lambda x, t: affine_model(x, t).to(dtype) if x.dtype == dtype else None  # noqa: E731
    out = ddim.sample(half, S1000, x32.to(dtype), steps=50, prediction=prediction)
    ref = ddim.sample(affine_model, S1000, x32.to(dtype).float(), steps=50, prediction=prediction)
    assert out.dtype == dtype and torch.isfinite(out).all()
    # model-output and final rounding only (bf16 keeps ~3 digits), no accumulated state error
    assert ((out.float() - ref).abs().max() / ref.abs().max()) < 0.01
    back = ddim.invert(half, S1000, out, steps=20, prediction=prediction)
    assert back.dtype == dtype and torch.isfinite(back).all()


def test_noise_from_generator_device_then_moved():
    from ddim.noise import randn

    a = randn((2, 3), torch.Generator().manual_seed(1), device="cpu")
    b = randn((2, 3), [torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)], device="cpu")
    assert torch.equal(a, torch.randn((2, 3), generator=torch.Generator().manual_seed(1)))
    assert torch.equal(b[0], b[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_with_cuda_samples_matches_cpu():
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cpu = ddim.sample(affine_model, S1000, x, steps=10, eta=1.0, generator=torch.Generator().manual_seed(3))
    gpu = ddim.sample(affine_model, S1000, x.cuda(), steps=10, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
