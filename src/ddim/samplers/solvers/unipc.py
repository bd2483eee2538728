"""UniPC (Zhao et al. 2023): a unified predictor–corrector, B(h) = e^h − 1 ("bh2"), data prediction.

    unipc    UniP-2 predictor (equal to DPM-Solver++(2M)) and the UniC corrector, which reuses the next
             step's model call, so it adds no NFE (``unipc_weights``)
    unipc-3  the third-order predictor UniP-3 and corrector UniC-3 (diffusers' ``solver_order=3``); its
             first-order first step bounds the global order at 3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import combine, multistep_order, register, steps_lambda
from .dpmpp import DPMSolverPP, multistep_weights

__all__ = ["UniPC", "unipc_weights"]


def unipc_weights(abar_t, abar_prev, order: int = 2):
    """UniPC with B(h) = e^h − 1 ("bh2"; Zhao et al. 2023, Algorithms 2-3, data prediction), table form.

    Step j from s = τ_j to t = τ_{j+1} runs at order p = ``multistep_order(j, S, order, unipc=True)`` with
    r_i = (λ_{j−i} − λ_j)/h < 0, D_i = (m_{j−i} − m_j)/r_i (i < p) and, for the corrector, D_t = m_t − m_j:
        UniP-p:  x_t = σ_t/σ_s x_s + α_t(1 − e^{−h}) m_j − α_t B(−h) Σ_i ρ_i D_i,
                 ρ = ½ for p = 2 (UniP-2 is DPM-Solver++(2M)), else R_{p−1} ρ = b_{1..p−1};
        UniC-p:  x_t^c = (the same with the model's x̂_0 at x_t) − α_t B(−h) ρ_t D_t,
                 ρ = ½ for p = 1 (the trapezoidal rule), else R_p (ρ_1, …, ρ_{p−1}, ρ_t) = b_{1..p},
    R_n the n × n matrix whose row e = 0 … n − 1 is (r_1^e, …, r_n^e) with r_p = 1 standing for ρ_t, and
    b_i = h φ_{i+1} · i!/B (``_unipc_b``). UniC-p is locally of order p + 1 and reuses the next step's model
    call (no extra NFE).

    Returns:
        (w (S, 3), c (S, 4)) float64: x_t = ratio_j x_s + Σ_i w[j, i] m_{j−i} for the predictor, and
        x_t^c = ratio_{k−1} x_s + c[k, 0] m_k + Σ_i c[k, 1 + i] m_{k−1−i} for the correction made at step k
        of step k − 1's result (row 0 unused).
    """
    S = len(abar_t)
    lam_s, h = steps_lambda(abar_t, abar_prev)
    w, c = torch.zeros(S, 3, dtype=torch.float64), torch.zeros(S, 4, dtype=torch.float64)
    for j in range(S):
        hj, p = h[j], multistep_order(j, S, order, unipc=True)
        if hj == 0:  # ᾱ_0 to ᾱ_0: the last step of a grid ending at t = 0 with set_alpha_to_one=False is the identity
            continue
        B = math.expm1(-hj)
        base = -math.sqrt(abar_prev[j]) * B  # α_t (1 − e^{−h}) > 0
        rks = [(lam_s[j - i] - lam_s[j]) / hj for i in range(1, p)]
        b = _unipc_b(hj, B, p)
        rho_p = [] if p == 1 else [0.5] if p == 2 else _solve_vandermonde(rks, b[:p - 1])
        w[j, 0] = base * (1 - sum(r_ / k_ for r_, k_ in zip(rho_p, rks)))
        for i, (r_, k_) in enumerate(zip(rho_p, rks), 1):
            w[j, i] = base * r_ / k_
        if j + 1 < S:  # the corrector of this step, made with step j + 1's model call
            rho_c = [0.5] if p == 1 else _solve_vandermonde(rks + [1.0], b)
            rho_t = rho_c[-1]
            c[j + 1, 0] = base * rho_t
            c[j + 1, 1] = base * (1 - rho_t - sum(r_ / k_ for r_, k_ in zip(rho_c, rks)))
            for i, (r_, k_) in enumerate(zip(rho_c, rks), 1):
                c[j + 1, 1 + i] = base * r_ / k_
    return w, c


def _solve_vandermonde(rks, b) -> list:
    """ρ solving Σ_i ρ_i rks_i^e = b_e for e = 0 .. len(b) − 1 (UniPC's R ρ = b), float64 on the host.

    A point at λ = −∞ (ᾱ = 0: zero terminal SNR) has r = −∞; its ρ is the limit 0 and the other ρ solve the
    first equations (what the full system tends to as r → −∞)."""
    n = len(b)
    keep = [i for i in range(n) if math.isfinite(rks[i])]
    R = torch.tensor([[rks[i] ** e for i in keep] for e in range(len(keep))], dtype=torch.float64)
    sol = torch.linalg.solve(R, torch.tensor(b[:len(keep)], dtype=torch.float64)).tolist() if keep else []
    out = [0.0] * n
    for i, v in zip(keep, sol):
        out[i] = v
    return out


def _unipc_b(h: float, B: float, p: int) -> list:
    """b_1 … b_p of UniPC's linear system for data prediction (hh = −h): φ_k recursion
    h_φ_1 = e^{hh} − 1, h_φ_{k+1} = h_φ_k / hh − 1/k!, b_i = h_φ_{i+1} · i! / B(h)."""
    hh, out = -h, []
    phi, fact = math.expm1(hh) / hh - 1, 1  # h_φ_2, 1!
    for i in range(1, p + 1):
        out.append(phi * fact / B)
        fact *= i + 1
        phi = phi / hh - 1 / fact
    return out


@register(dict(name="unipc", order=2, summary="UniPC-bh2 with its corrector"),
          dict(name="unipc-3", order=3, summary="UniPC-bh2 of order 3 with its corrector"))
@dataclass(frozen=True)
class UniPC(DPMSolverPP):
    """UniP-p then, with the next step's model call, UniC-p on its result (``unipc_weights``). The x_t a step
    returns is the predictor's point: the corrector moves it at the start of the next step."""

    def __post_init__(self):
        super().__post_init__()
        if self.order < 2 or self.sde:
            raise ValueError(f"inconsistent solver {self!r}: UniPC has order 2 or 3 and no SDE form")

    def table(self, abar_t, abar_prev) -> dict:
        ratio, _ = multistep_weights(abar_t.tolist(), abar_prev.tolist(), self.order)
        w, c = unipc_weights(abar_t.tolist(), abar_prev.tolist(), self.order)
        return {"ratio": ratio, "w": w, "c": c}

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        x0, _ = predict(x, t_batch[k], coef.abar_t[k])
        hist = state.setdefault("m", [])
        tab, S = coef.table, t_batch.shape[0]
        if k > 0:  # UniC: correct the previous result with this call's x̂_0
            c = tab["c"][k]
            x = (tab["ratio"][k - 1] * state["x_s"] + c[0] * x0
                 + combine(c[1:], hist[::-1], multistep_order(k - 1, S, self.order, True)))
        hist.append(x0)
        del hist[:-self.order]
        state["x_s"] = x
        return tab["ratio"][k] * x + combine(tab["w"][k], hist[::-1], multistep_order(k, S, self.order, True)), x0
