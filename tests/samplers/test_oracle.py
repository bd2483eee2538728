"""Oracle tests: the samplers fed the exact optimal denoiser of a Gaussian mixture (tests/gmm.py).

With the Bayes-optimal ε*, x̂_0* or v*, the only errors left in a sample are the sampler's own
(discretisation, and a start at N(0, I) instead of q(x_T)) and Monte-Carlo noise, so the sampled
distribution, inversion round trips and the DDIM marginals can be checked against closed forms.

Tolerances are in units of Monte-Carlo standard errors computed from the *true* parameters:
    mode weight  π̂_k:  SE = √(π_k (1 − π_k) / N)
    mode mean    μ̂_k:  SE = s_k / √n_k per coordinate
    mode spread  ŝ_k (pooled over d coordinates): SE ≈ s_k / √(2 d n_k)   (delta method on ŝ²)
and we allow Z = 5 standard errors (two-sided p ≈ 6e-7 per statistic, so ≈ 1e-4 over all the
statistics in this file). Seeds are fixed, so the tests are deterministic; Z was fixed before
looking at results, and the step counts were chosen where the sampler's bias, measured at the
sample size used, sits below ~2 SE (numbers in each test's comment).

Start mismatch: x_T ~ N(0, I) while q(x_T) has mean √ᾱ_T·E[x_0] and covariance
(1 − ᾱ_T) I + ᾱ_T Cov(x_0). The mixture is centred (E[x_0] = 0) so the mismatch is O(ᾱ_T) ≈ 5e-5 in
the covariance, far below any tolerance here.
"""

import functools
import math

import pytest
import torch

import ddim
from ddim.samplers import ddim_step, sigma_eta
from gmm import GaussianMixture

F64 = torch.float64
Z = 5.0  # tolerance in standard errors (see module docstring)

LINEAR = ddim.Schedule.linear(1000)
COSINE = ddim.Schedule.cosine(1000)


def make_mixture() -> GaussianMixture:
    """Three well-separated 2-D components, unequal weights and spreads, centred at the origin.

    Closest pair of means: distance 5, so a point is closer to the wrong mean only beyond 2.5 ≥ 5 s_k
    along the line between them (probability < 3e-7): nearest-mode assignment is exact in practice.
    """
    w = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    raw = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]], dtype=F64)
    return GaussianMixture(w, raw - (w[:, None] * raw).sum(0), [0.5, 0.3, 0.4])


MIX = make_mixture()


def mixture_z_scores(x: torch.Tensor, mix: GaussianMixture = MIX) -> dict:
    """Deviation of the sample's per-mode weight, mean and spread from the truth, in standard errors."""
    x = x.reshape(x.shape[0], -1)
    N, d = x.shape
    label = mix.nearest_mode(x)
    z = {"weight": [], "mean": [], "spread": []}
    for k in range(mix.K):
        xk = x[label == k]
        n, p, s = xk.shape[0], mix.weights[k].item(), mix.stds[k].item()
        z["weight"].append((n / N - p) / math.sqrt(p * (1 - p) / N))
        z["mean"].extend(((xk.mean(0) - mix.means[k]) / (s / math.sqrt(n))).tolist())
        s_hat = xk.var(0).mean().sqrt().item()  # pooled over coordinates
        z["spread"].append((s_hat - s) / (s / math.sqrt(2 * d * n)))
    return z


def assert_reproduces_mixture(x: torch.Tensor, what: str) -> None:
    z = mixture_z_scores(x)
    worst = {key: max(abs(v) for v in vals) for key, vals in z.items()}
    assert all(w < Z for w in worst.values()), f"{what}: |z| too large: {z}"


def x_T(n: int, seed: int, shape=(2,)) -> torch.Tensor:
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@functools.lru_cache(maxsize=None)
def eta0_reference(steps: int = 200, n: int = 20000):
    """(x_T, x_0) of η = 0 sampling with the optimal ε* on the linear schedule, shared by tests 1 and 2."""
    xT = x_T(n, 0)
    return xT, ddim.sample(MIX.model(LINEAR), LINEAR, xT, steps=steps)


# ---- 1. the sampled distribution ---------------------------------------------------------------
# Measured biases (N = 20000, spread relative error of the three modes; the z-scores move by ±1 with
# the seed): η = 0 at S = 50: −1.8 %, −5.0 %, −1.4 % (spread z ≈ −8 for the s = 0.3 mode: clearly
# visible), S = 100: −0.6 %, −2.5 %, −0.3 % (z ≈ −4: too close to 5 for a robust test), S = 200:
# −0.4 %, −0.9 %, +0.5 % (|z| < 1.5). DDIM is first order, so S = 200 is where its bias drops under
# the Monte-Carlo noise of 20000 samples; the S = 100 / 50 bias is tested separately below.
# η = 1 and σ̂ on the full 1000-step grid are DDPM; their bias (β̃ vs β variance choice) is ≤ 1 %.
@pytest.mark.parametrize("schedule,steps,eta,n", [
    (LINEAR, 200, 0.0, 20000),
    (COSINE, 200, 0.0, 20000),
    (LINEAR, 1000, 1.0, 10000),
    (LINEAR, 1000, "large", 10000),
], ids=["linear-eta0-S200", "cosine-eta0-S200", "linear-eta1-S1000", "linear-large-S1000"])
def test_sampler_reproduces_mixture(schedule, steps, eta, n):
    if schedule is LINEAR and eta == 0.0:
        x = eta0_reference(steps, n)[1]
    else:
        x = ddim.sample(MIX.model(schedule), schedule, x_T(n, 0), steps=steps, eta=eta,
                        generator=torch.Generator().manual_seed(1))
    assert x.shape == (n, 2) and x.dtype == F64
    assert_reproduces_mixture(x, f"{schedule.name} S={steps} eta={eta}")


def test_ddim_100_steps_quadratic_reproduces_mixture():
    """DDIM η = 0 at S = 100 on the paper's quadratic sub-sequence (used for its CIFAR-10 tables): the
    steps crowd at small t, where the narrow modes form, and the bias drops under the Monte-Carlo
    noise (measured worst |z|: mean 3.7, spread 2.3; the uniform grid at S = 100 gives spread z ≈ −3.9)."""
    x = ddim.sample(MIX.model(LINEAR), LINEAR, x_T(20000, 0), steps=100, spacing="quadratic")
    assert_reproduces_mixture(x, "linear S=100 quadratic eta=0")


def test_eta0_discretisation_bias_is_first_order():
    """DDIM (η = 0) is Euler on the probability-flow ODE (eq. 14), so its error is O(1/S).

    With common random numbers (the same x_T for every S) the Monte-Carlo noise cancels in the
    differences between step counts, leaving the discretisation error of the spread of the narrowest
    mode (s = 0.3). For an error c/S^p, (ŝ(100) − ŝ(200)) / (ŝ(200) − ŝ(400)) = 2^p: first order
    gives 2; we accept [1.5, 3] (second order would give 4; an O(1) bug, no convergence). S = 50 is
    still pre-asymptotic here (its ratio against 100/200 is ≈ 1.5), so it is left out.
    """
    xT = x_T(5000, 3)
    model = MIX.model(LINEAR)
    spread = {}
    for S in (100, 200, 400):
        x = ddim.sample(model, LINEAR, xT, steps=S)
        xk = x[MIX.nearest_mode(x) == 1]
        spread[S] = xk.var(0).mean().sqrt().item()
    assert spread[100] < spread[200] < spread[400], spread  # Euler steps shrink the narrow mode
    ratio = (spread[100] - spread[200]) / (spread[200] - spread[400])
    assert 1.5 < ratio < 3.0, (ratio, spread)


# ---- 2. the three prediction types ---------------------------------------------------------------
def test_optimal_predictions_are_consistent():
    """Tweedie: x̂_0* (from the component posteriors) equals DDIM eq. 9 applied to ε*; v* matches its
    definition. Both sides are float64 formulas of the same numbers: agreement to 1e-12 relative,
    except where eq. 9 divides by √ᾱ_t (≥ 6e-3 on the linear grid), which amplifies rounding 160×."""
    from ddim.forward import x0_from_eps, x0_from_v

    x = 3 * x_T(4000, 5)
    for t in (0, 10, 250, 600, 999):
        a = LINEAR.alphas_cumprod[t]
        eps, x0, v = MIX.eps(x, a.reshape(1)), MIX.x0(x, a.reshape(1)), MIX.v(x, a.reshape(1))
        tol = 1e-12 / a.sqrt().item()
        assert torch.allclose(x0_from_eps(x, eps, a), x0, rtol=tol, atol=tol), t
        assert torch.allclose(x0_from_v(x, v, a), x0, rtol=tol, atol=tol), t
    # ε* is the score up to −√(1−ᾱ): check the score against a finite difference of log q
    a = LINEAR.alphas_cumprod[[300]]
    h = 1e-5
    fd = torch.stack([(MIX.log_prob(x + h * e_i, a) - MIX.log_prob(x - h * e_i, a)) / (2 * h)
                      for e_i in torch.eye(2, dtype=F64)], 1)
    assert torch.allclose(MIX.score(x, a), fd, rtol=1e-6, atol=1e-6)  # central difference: O(h²)≈1e-10


@pytest.mark.parametrize("prediction", ["sample", "v"])
def test_prediction_types_agree_with_epsilon(prediction):
    """The optimal ε*, x̂_0* and v* describe the same denoiser, so η = 0 sampling must give the same
    x_0 whichever the model predicts, up to float64 rounding: each step's conversion loses at most
    ~1e-16/√ᾱ_t ≈ 2e-14 (at t = 990) and S = 200 steps with contractive (|∂x_{t−1}/∂x_t| ≲ 1 in
    the mean) updates keep it near 1e-12; we allow 1e-9. Any real discrepancy (a wrong ᾱ in the
    conversion, a swapped sign in v) is O(1e-3) or more. The result must also reproduce the mixture.
    The same with η = 1 and identical noise (same generator seed)."""
    xT, ref = eta0_reference(200, 20000)
    xT = xT[:, :, None, None]  # image-shaped (B, C, H, W) this time
    out = ddim.sample(MIX.model(LINEAR, prediction), LINEAR, xT, steps=200, prediction=prediction)
    assert out.shape == xT.shape
    err = (out[:, :, 0, 0] - ref).abs().max().item()
    assert err < 1e-9, err
    assert_reproduces_mixture(out, f"prediction={prediction}")

    xT = xT[:2000]
    kw = dict(steps=100, eta=1.0)
    ref = ddim.sample(MIX.model(LINEAR), LINEAR, xT, generator=torch.Generator().manual_seed(9), **kw)
    out = ddim.sample(MIX.model(LINEAR, prediction), LINEAR, xT, prediction=prediction,
                      generator=torch.Generator().manual_seed(9), **kw)
    err = (out - ref).abs().max().item()
    assert err < 1e-9, err

    # inversion too: ε̂ is read from the model output at level t whatever the prediction type
    x0 = ref[:500]
    lat_ref = ddim.invert(MIX.model(LINEAR), LINEAR, x0, steps=50)
    lat = ddim.invert(MIX.model(LINEAR, prediction), LINEAR, x0, steps=50, prediction=prediction)
    err = (lat - lat_ref).abs().max().item()
    assert err < 1e-9, err


# ---- 3. inversion --------------------------------------------------------------------------------
def test_inversion_round_trip_converges():
    """invert then sample (η = 0, same grid) returns x_0 with an error that shrinks as S grows.

    Inversion reads ε̂ at x_{t−1} instead of x_t (first order), so the round-trip error falls like
    1/S asymptotically (×2 per doubling of S). Required over S = 10, 20, 50, 100, 200: the mean
    per-sample error ‖x̂_0 − x_0‖ falls by ≥ 1.3× at each step (measured 1.50, 2.06, 1.90, 2.11; the
    10 → 20 step is pre-asymptotic), is below 0.03 (a tenth of the narrowest spread, 0.3) at S = 200
    (measured 0.022), and at most 1 % of the points come back in another mode (measured 0.05 %: a
    point whose x_T lands near a basin boundary can flip while S is finite).
    """
    x0, _ = MIX.sample(2000, torch.Generator().manual_seed(11))
    model = MIX.model(LINEAR)
    err, flipped = [], []
    for S in (10, 20, 50, 100, 200):
        xT = ddim.invert(model, LINEAR, x0, steps=S)
        back = ddim.sample(model, LINEAR, xT, steps=S)
        err.append((back - x0).norm(dim=1).mean().item())
        flipped.append((MIX.nearest_mode(back) != MIX.nearest_mode(x0)).double().mean().item())
    assert all(e > 1.3 * e_next for e, e_next in zip(err, err[1:])), err
    assert err[-1] < 0.03, err
    assert flipped[-1] <= 0.01, flipped


# ---- 4. the DDIM lemma: q_σ(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) for any σ ---------------------
def _lemma_sigmas(abar_t, abar_prev):
    """σ_t choices over a grid: η = 0, 0.5, 1, and an odd mix of fractions of the largest allowed
    σ_t = √(1 − ᾱ_{t−1}) (σ = √(1 − ᾱ_{t−1}) drops the direction term entirely, i.e. η > 1)."""
    frac = torch.tensor([0.0, 1.0, 0.3, 0.9, 0.6], dtype=F64).repeat(len(abar_t))[: len(abar_t)]
    return {
        "eta0": sigma_eta(abar_t, abar_prev, 0.0),
        "eta0.5": sigma_eta(abar_t, abar_prev, 0.5),
        "eta1": sigma_eta(abar_t, abar_prev, 1.0),
        "mixed": frac * (1 - abar_prev).sqrt(),
    }


def test_ddim_lemma_marginals():
    """DDIM Lemma 1 (eq. 7): if x_t ~ N(√ᾱ_t x_0, (1 − ᾱ_t) I) then eq. 12 with the TRUE x_0 and
    ε = (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t) gives x_{t−1} ~ N(√ᾱ_{t−1} x_0, (1 − ᾱ_{t−1}) I), for any σ_t with
    σ_t² ≤ 1 − ᾱ_{t−1}. We run the chain on a 25-step quadratic sub-sequence from fixed x_0 points and
    check, at every visited level, the standardised residual u = (x − √ᾱ x_0)/√(1 − ᾱ): per x_0 point
    and coordinate, mean within Z/√n, variance within Z·√(2/n), and coordinate correlation within
    Z/√n (n = 5000 draws per point)."""
    x0_points = torch.tensor([[0.0, 0.0], [1.0, -2.0], [-3.0, 0.5], [2.5, 2.5]], dtype=F64)
    n = 5000
    x0 = x0_points.repeat_interleave(n, 0)  # (4n, 2)
    tau = ddim.timesteps(LINEAR, 25, "quadratic")
    abar = LINEAR.alphas_cumprod
    abar_t = abar[tau]
    abar_prev = torch.cat([abar[tau[1:]], torch.ones(1, dtype=F64)])
    for name, sigmas in _lemma_sigmas(abar_t, abar_prev).items():
        assert (sigmas**2 <= 1 - abar_prev + 1e-15).all()
        g = torch.Generator().manual_seed(21)
        x = abar_t[0].sqrt() * x0 + (1 - abar_t[0]).sqrt() * torch.randn(x0.shape, generator=g, dtype=F64)
        for k in range(len(tau)):
            a, a_prev, sig = abar_t[k], abar_prev[k], sigmas[k]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            z = torch.randn(x0.shape, generator=g, dtype=F64)
            x = ddim_step(x0, eps, a_prev, sig, sig * z)
            if a_prev == 1:  # the last step lands on x_0 itself (σ = 0 there)
                assert torch.allclose(x, x0, rtol=0, atol=1e-12), name
                continue
            u = ((x - a_prev.sqrt() * x0) / (1 - a_prev).sqrt()).reshape(4, n, 2)
            mean, var = u.mean(1), u.var(1)
            corr = (u[..., 0] - mean[:, None, 0]).mul(u[..., 1] - mean[:, None, 1]).mean(1) / var.prod(1).sqrt()
            where = f"{name}, step {k} (t={int(tau[k])} -> {int(tau[k + 1])})"
            assert mean.abs().max() < Z / math.sqrt(n), (where, mean)
            assert (var - 1).abs().max() < Z * math.sqrt(2 / n), (where, var)
            assert corr.abs().max() < Z / math.sqrt(n), (where, corr)


def test_ddim_lemma_fails_for_a_wrong_direction_coefficient():
    """The lemma test can fail: with √(1 − ᾱ_{t−1}) instead of √(1 − ᾱ_{t−1} − σ²) on the direction
    term (a plausible slip), η = 1 on this grid inflates the variance well beyond the tolerance."""
    tau = ddim.timesteps(LINEAR, 25, "quadratic")
    abar = LINEAR.alphas_cumprod
    a, a_prev = abar[tau[5]], abar[tau[6]]
    sig = sigma_eta(a, a_prev, 1.0)
    n = 20000
    g = torch.Generator().manual_seed(4)
    eps, z = torch.randn(2, n, generator=g, dtype=F64)
    x0 = torch.zeros(n, dtype=F64)
    good = ddim_step(x0, eps, a_prev, sig, sig * z) / (1 - a_prev).sqrt()
    wrong = ((1 - a_prev).sqrt() * eps + sig * z) / (1 - a_prev).sqrt()
    assert abs(good.var() - 1) < Z * math.sqrt(2 / n)
    assert wrong.var() - 1 > 3 * Z * math.sqrt(2 / n)


# ---- 5. per-sample generators ---------------------------------------------------------------------
def test_per_sample_generators_batch_invariant_on_the_oracle():
    """η = 1 draws fresh noise every step; with one generator per sample (seeded from (seed, i)),
    sample i depends only on i, not on the batch size or its position in the batch."""
    model = MIX.model(LINEAR)

    def run(indices, eta=1.0, seed=123):
        gens = ddim.generators(seed, indices)
        xT = ddim.randn((len(indices), 2, 1, 1), gens, dtype=F64)
        return ddim.sample(model, LINEAR, xT, steps=50, eta=eta, generator=gens)

    small = run([0, 1, 2])
    big_idx = [10, 2, 11, 0, 12, 13, 1, 14]
    big = run(big_idx)
    for i in (0, 1, 2):
        j = big_idx.index(i)
        # identical up to (at most) last-ulp differences between vectorised and scalar kernel paths
        assert torch.allclose(small[i], big[j], rtol=1e-13, atol=1e-13), (i, small[i], big[j])
    # the test can fail: other indices, another seed, or η = 0 (no per-step noise) change the samples
    assert (small[0] - small[1]).abs().max() > 1e-3
    assert (run([0, 1, 2], seed=124) - small).abs().max() > 1e-3
    assert (run([0, 1, 2], eta=0.0) - small).abs().max() > 1e-3
