"""DPM-Solver++ multistep (Lu et al. 2022b): the data-prediction exponential integrator with x̂_0 extrapolated
through the last one or two steps' model outputs.

    dpmpp-2m         DPM-Solver++(2M), Algorithm 2 (eq. 9 with D = (1 + 1/2r) m_k − 1/2r m_{k−1})
    dpmpp-3m         DPM-Solver++(3M): x̂_0 extrapolated by its quadratic through m_k, m_{k−1}, m_{k−2}
    dpmpp-3m-compat  the same update as the authors' code, diffusers and k-diffusion write it: their D2 is
                     half the second divided difference the h³ term needs, so it is exact for linear x̂_0(λ)
                     only: locally O(h³), second order (``multistep_weights``); for reproducing their outputs
    dpmpp-2m-sde     SDE-DPM-Solver++(2M), §B (midpoint form; its noise is DDIM's η = 1)

They run first order on the first step (no history yet) and on the last one, and 3M second order on the
step before the last when S < 15, as diffusers does (``multistep_order``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Solver, combine, multistep_order, register, steps_lambda

__all__ = ["DPMSolverPP", "multistep_weights"]


def multistep_weights(abar_t, abar_prev, order: int, sde: bool = False, d2_halved: bool = False):
    """DPM-Solver++ multistep coefficients: x_{t} = ratio_k · x_s + Σ_j w_{k,j} m_{k−j} (+ noise).

    With E = e^{−h} (ODE) or e^{−2h} (SDE) and r_j = h_{k−j}/h_k:
        order 1:  w_0 = α_t (1 − E)                                           (= DDIM η = 0 / η = 1)
        order 2:  D = m_k + (m_k − m_{k−1})/(2 r_1)                             (2M, Alg. 2, midpoint)
        order 3:  D1_0 = (m_k − m_{k−1})/r_1, D1_1 = (m_{k−1} − m_{k−2})/r_2,
                  D1 = D1_0 + r_1/(r_1 + r_2) (D1_0 − D1_1), D2 = 2 (D1_0 − D1_1)/(r_1 + r_2)
                  x_t = ratio x_s + α_t(1 − e^{−h}) m_k + α_t(φ₂) D1 − α_t(φ₃) D2,
                  φ₂ = (e^{−h} − 1)/h + 1, φ₃ = (e^{−h} − 1 + h)/h² − ½            (3M)
        ratio = σ_t/σ_s (ODE) or σ_t/σ_s · e^{−h} (SDE, whose added noise is σ_t √(1 − e^{−2h}) z,
        exactly DDIM's σ_t(η = 1)).

    Why D2 has the factor 2: with x̂_0(λ_s + τ) = m + τ m' + τ²/2 m'' the exact integral (DPM-Solver++ eq. 9)
    is α_t[(1 − e^{−h}) m + h φ₂ m' − h² φ₃ m''] + O(h⁴), and for the quadratic through the three points
    D1 = h m' and D1_0 − D1_1 = (r_1 + r_2)/2 · h² m'', so D2 = h² m'' needs 2/(r_1 + r_2).
    ``d2_halved`` keeps the authors' and diffusers' 1/(r_1 + r_2) (``dpmpp-3m-compat``), which leaves
    α_t h³/12 m'' per step: a second-order method. (Strictly, the first-order first step's O(h²) error
    also bounds 3M at S⁻² as S → ∞, but it starts where x̂_0 hardly moves: on the mixture oracle an exact
    first step left the errors at S = 20–160 unchanged to three digits, while the halved D2 costs an order.)

    Args:
        abar_t, abar_prev: (S,) sequences of ᾱ at each step's start and end (``Plan``).
        order: 1, 2 or 3 (3 for the ODE only).
        d2_halved: the D2 of the authors' code and diffusers (order 3 only).
    Returns:
        (ratio (S,), w (S, 3)) float64 tensors; w[k, j] multiplies m_{k−j} (0 where unused).
    """
    S = len(abar_t)
    _, h = steps_lambda(abar_t, abar_prev)
    ratio, w = torch.zeros(S, dtype=torch.float64), torch.zeros(S, 3, dtype=torch.float64)
    for k in range(S):
        a_t, s_t, s_s = math.sqrt(abar_prev[k]), math.sqrt(1 - abar_prev[k]), math.sqrt(1 - abar_t[k])
        hk = h[k]
        e = math.exp(-2 * hk) if sde else math.exp(-hk)
        ratio[k] = s_t / s_s * (math.exp(-hk) if sde else 1.0)
        p1 = a_t * (1 - e)
        o = multistep_order(k, S, order)
        if o == 1:
            w[k, 0] = p1
        elif o == 2:
            c = 1 / (2 * (h[k - 1] / hk))
            w[k, 0], w[k, 1] = p1 * (1 + c), -p1 * c
        else:
            r1, r2 = h[k - 1] / hk, h[k - 2] / hk
            em1 = math.expm1(-hk)
            p2 = a_t * (em1 / hk + 1)
            p3 = a_t * ((em1 + hk) / hk**2 - 0.5)
            q3 = p3 * (1.0 if d2_halved else 2.0) / (r1 + r2)  # D2's weight on (D1_0 − D1_1)
            c10 = p2 * (1 + r1 / (r1 + r2)) - q3  # coefficient of D1_0
            c11 = -p2 * r1 / (r1 + r2) + q3       # coefficient of D1_1
            w[k, 0] = p1 + c10 / r1
            w[k, 1] = -c10 / r1 + c11 / r2
            w[k, 2] = -c11 / r2
    return ratio, w


@register(dict(name="dpmpp-2m", order=2, summary="DPM-Solver++(2M), second-order multistep"),
          dict(name="dpmpp-3m", order=3, summary="DPM-Solver++(3M), third-order multistep"),
          dict(name="dpmpp-3m-compat", order=3, d2_halved=True,
               summary="DPM-Solver++(3M) as diffusers writes it (half the D2 term: second order)"),
          dict(name="dpmpp-2m-sde", order=2, sde=True, noise_eta=1.0, summary="SDE-DPM-Solver++(2M), adds η = 1's noise"))
@dataclass(frozen=True)
class DPMSolverPP(Solver):
    """x_t = ratio_k x_s + Σ_j w_{k,j} m_{k−j} (+ σ_t(η = 1) z for the SDE form), m the model's x̂_0 history.

    order: 1-3 (3 for the ODE only). sde: the SDE update (then noise_eta is 1). d2_halved: the authors'/diffusers'
    third-order D2 (order 3 only)."""

    order: int = 2
    sde: bool = False
    d2_halved: bool = False
    default_steps: int = 10
    default_spacing: str = "logsnr"

    def __post_init__(self):
        ok = 1 <= self.order <= 3 and self.sde == (self.noise_eta == 1.0) and self.noise_eta in (0.0, 1.0)
        ok = ok and (not self.sde or self.order <= 2) and (not self.d2_halved or self.order == 3)
        if not ok:
            raise ValueError(f"inconsistent solver {self!r}: order 1-3; sde exactly with noise_eta 1 and order <= 2; "
                             "d2_halved with order 3 only")

    def table(self, abar_t, abar_prev) -> dict:
        ratio, w = multistep_weights(abar_t.tolist(), abar_prev.tolist(), self.order, self.sde, self.d2_halved)
        return {"ratio": ratio, "w": w}

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        x0, _ = predict(x, t_batch[k], coef.abar_t[k])
        z = noise_at(k)  # a unit draw where the step adds noise (the SDE form), else None
        hist = state.setdefault("m", [])
        hist.append(x0)
        del hist[:-self.order]
        tab, S = coef.table, t_batch.shape[0]
        x_next = tab["ratio"][k] * x + combine(tab["w"][k], hist[::-1], multistep_order(k, S, self.order))
        return (x_next if z is None else x_next + coef.noise_std[k] * z), x0
