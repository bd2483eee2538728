"""Orders of the multistep solvers, checked two ways:

1. One step, exactly: a method of local order p + 1 integrates DPM-Solver++'s data-prediction ODE exactly
   when x̂_0(λ) is a polynomial of degree p, i.e. Σ_j w_j m(λ_{k−j}) = α_t ∫_{λ_s}^{λ_t} e^{−(λ_t − λ)} m(λ) dλ
   (DPM-Solver++ eq. 9's integral, written with α_t e^{−h} e^{τ}). Gauss–Legendre quadrature gives the
   right-hand side to rounding.
2. The whole trajectory on the Gaussian-mixture oracle, on a near-continuous grid (T = 100,000 points of
   the continuous VP linear schedule), where S = 80-320 is in the asymptotic range: fitted slopes of log
   error against log S.

This is where the D2 term of DPM-Solver++(3M) as the authors' code and diffusers write it shows: exact for
linear x̂_0 only, so second order; ours is exact for quadratics and third order.
"""

import math

import numpy as np
import pytest
import torch

import ddim
from ddim.samplers.solvers import multistep_weights, unipc_weights
from gmm import GaussianMixture

F64 = torch.float64


def abar_of(lam):
    """ᾱ = 1/(1 + e^{−2λ}) (λ = half the log-SNR)."""
    return 1.0 / (1.0 + math.exp(-2.0 * lam))


def grid(seed, S=20):
    """A non-uniform increasing λ grid (steps 0.05-0.3) and its per-step (ᾱ_t, ᾱ_prev) lists."""
    rng = np.random.default_rng(seed)
    lam = np.concatenate([[-3.0], -3.0 + np.cumsum(rng.uniform(0.05, 0.3, S))])
    return lam, [abar_of(v) for v in lam[:-1]], [abar_of(v) for v in lam[1:]]


def exact(m, lam_s, lam_t):
    """α_t ∫_{λ_s}^{λ_t} e^{λ − λ_t} m(λ) dλ by 40-point Gauss–Legendre."""
    x, wq = np.polynomial.legendre.leggauss(40)
    h = lam_t - lam_s
    lam = lam_s + (x + 1) * h / 2
    return math.sqrt(abar_of(lam_t)) * float(np.sum(wq * np.exp(lam - lam_t) * m(lam))) * h / 2


def poly(seed, degree):
    c = np.random.default_rng(100 + seed).normal(size=degree + 1)
    return lambda lam: np.polyval(c, lam)


def predictor_error(w, lam, k, m):
    """|Σ_j w[k, j] m(λ_{k−j}) − exact| for step k (λ_k → λ_{k+1})."""
    got = sum(float(w[k, j]) * float(m(lam[k - j])) for j in range(3) if k - j >= 0)
    return abs(got - exact(m, lam[k], lam[k + 1]))


def corrector_error(c, lam, k, m):
    """The same for UniC's correction made at step k of step k − 1 (λ_{k−1} → λ_k)."""
    got = float(c[k, 0]) * float(m(lam[k])) + sum(float(c[k, 1 + i]) * float(m(lam[k - 1 - i])) for i in range(3))
    return abs(got - exact(m, lam[k - 1], lam[k]))


@pytest.mark.parametrize("seed", range(4))
def test_one_step_exactness(seed):
    """Step 5 of 20 (full order, no warm-up or final-step reduction) on a random non-uniform grid:
    DPM-Solver++(3M) is exact for quadratic x̂_0, diffusers' 3M for linear only (its error on a quadratic is
    α_t h³/12 · m'' to leading order); UniP-3 exact for quadratics, UniC-2 for quadratics and UniC-3 for
    cubics (UniC-p: local order p + 1). DPM-Solver++(2M) (= UniP-2) replaces φ₂ by (1 − e^{−h})/2, so it is
    exact for constants only: its error on a line is O(h³), second order all the same."""
    lam, at, ap = grid(seed)
    k = 5
    _, w2 = multistep_weights(at, ap, 2)
    _, w3 = multistep_weights(at, ap, 3)
    _, w3c = multistep_weights(at, ap, 3, d2_halved=True)
    wu2, cu2 = unipc_weights(at, ap, 2)
    wu3, cu3 = unipc_weights(at, ap, 3)
    tol = 1e-13
    for w in (w2, w3, w3c, wu2, wu3):
        assert predictor_error(w, lam, k, poly(seed, 0)) < tol
    m1 = poly(seed, 1)
    for w in (w3, w3c, wu3):
        assert predictor_error(w, lam, k, m1) < tol
    assert corrector_error(cu2, lam, k, m1) < tol
    for w in (w2, wu2):
        assert predictor_error(w, lam, k, m1) > 1e-6
    m2 = poly(seed, 2)
    assert predictor_error(w3, lam, k, m2) < tol and predictor_error(wu3, lam, k, m2) < tol
    assert corrector_error(cu2, lam, k, m2) < tol
    for w in (w2, w3c):
        assert predictor_error(w, lam, k, m2) > 1e-6
    # diffusers' 3M misses α_t h³/12 · m'' (m'' = 2 c_0 for m = c_0 λ² + …), up to O(h⁴)
    h, c0 = lam[k + 1] - lam[k], np.random.default_rng(100 + seed).normal(size=3)[0]
    miss = math.sqrt(ap[k]) * h**3 / 12 * 2 * c0
    assert predictor_error(w3c, lam, k, m2) == pytest.approx(abs(miss), rel=0.5)
    m3 = poly(seed, 3)
    assert corrector_error(cu3, lam, k, m3) < tol
    assert corrector_error(cu2, lam, k, m3) > 1e-8


def vp_schedule(T):
    """The continuous VP linear schedule (β(s) = 0.1 + 19.9 s, s ∈ (0, 1]) sampled at T points: a grid fine
    enough that rounding a λ-uniform grid to integer steps does not limit the order."""
    s = torch.arange(1, T + 1, dtype=F64) / T
    abar = torch.exp(-(0.1 * s + 0.5 * 19.9 * s**2))
    return ddim.Schedule.from_betas(1 - abar / torch.cat([torch.ones(1, dtype=F64), abar[:-1]]))


@pytest.mark.slow
def test_asymptotic_slopes():
    """Fitted slope over S = 80, 160, 320 (log-SNR grid), error to DPM-Solver++(3M) at S = 2000: 3M and
    UniPC (order 2 + corrector) 3, 2M and diffusers' 3M 2, each within ±0.3 (measured 3.05, 2.88, 1.96, 2.23);
    UniPC-3 at least 3 (3.9: fourth-order steps after its first-order start)."""
    mix = GaussianMixture([0.5, 0.3, 0.2], [[-1.5, -1.0], [3.5, -1.0], [-1.5, 4.0]], [0.5, 0.3, 0.4])
    sched = vp_schedule(100_000)
    model = mix.model(sched)
    xT = torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = ddim.sample(model, sched, xT, steps=2000, spacing="logsnr", solver="dpmpp-3m")
    Ss = (80, 160, 320)
    slope = {}
    for s in ("dpmpp-2m", "dpmpp-3m", "dpmpp-3m-compat", "unipc", "unipc-3"):
        e = [(ddim.sample(model, sched, xT, steps=S, spacing="logsnr", solver=s) - ref).abs().mean().item() for S in Ss]
        slope[s] = -np.polyfit(np.log(Ss), np.log(e), 1)[0]
    for s, p in (("dpmpp-3m", 3), ("unipc", 3), ("dpmpp-2m", 2), ("dpmpp-3m-compat", 2)):
        assert abs(slope[s] - p) < 0.3, slope
    assert slope["unipc-3"] > 2.7, slope
