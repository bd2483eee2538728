"""Solvers: what one sampling step does, behind one seam shared by every loop.

A solver owns three things (``Solver``):
    table   its per-step coefficients, computed once on the host in float64 from the grid's (ᾱ_t, ᾱ_{t−1})
            pairs (``Plan``), then moved to the sample's device with the plan;
    step    the update from x_t to x_{t−1}: it calls the model (``predict``) as often as it needs and
            draws noise through ``noise_at``; nothing in it reads a device value back to the host;
    state   what a multistep method carries between steps (earlier x̂_0), a dict it fills itself.

The loop (``ddim.sample_loop``) only walks k = 0..S−1. A step's coefficients depend on the grid alone,
so they are the same numbers for every batch and a CUDA graph can bake them in.

Notation (DPM-Solver, Lu et al. 2022): α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t) (half the
log-SNR), h = λ_{t−1} − λ_t > 0 the step in λ from grid point s = τ_k to the next t = τ_{k+1}; m_k the
model's x̂_0 at step k. After the last grid point ᾱ = 1: σ = 0, λ = +∞, h = ∞, e^{−h} = 0.

    ddim          the η-family, DDIM eq. 12 (η = 0: first-order DPM-Solver(++), Euler in λ)
    dpmpp-2m      DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2 (eq. 9 with D = (1 + 1/2r) m_k − 1/2r m_{k−1})
    dpmpp-3m      DPM-Solver++(3M), the third-order multistep data-prediction update (Lu et al. 2022b's
                  exponential integrator with x̂_0 extrapolated by its quadratic through m_k, m_{k−1}, m_{k−2})
    dpmpp-3m-compat  the same update as the authors' code, diffusers and k-diffusion write it: their D2 is
                  half the second divided difference the h³ term needs, so it is exact for linear x̂_0(λ) only:
                  locally O(h³), second order (``multistep_weights``); for reproducing their outputs
    dpmpp-2m-sde  SDE-DPM-Solver++(2M), Lu et al. 2022b §B (midpoint form; its noise is DDIM's η = 1)
    unipc         UniPC-2 with B(h) = e^h − 1 ("bh2"), Zhao et al. 2023, Algorithms 2-3: UniP-2 predictor
                  (equal to DPM-Solver++(2M)) and the UniC corrector, which reuses the next step's model
                  call, so it adds no NFE (``unipc_weights``)
    unipc-3       the same with the third-order predictor UniP-3 and corrector UniC-3 (diffusers'
                  ``solver_order=3``); its first-order first step bounds the global order at 3
    heun          Heun's second-order method on the probability-flow ODE in EDM's (σ, x/α) variables
                  (Karras et al. 2022, Algorithm 1): 2 model calls per step, Euler (= DDIM η = 0) on the last

Multistep methods run first order on the first step (no history yet) and on the last one (which lands
on σ = 0, or on ᾱ_0 with ``set_alpha_to_one=False``; a second-order extrapolation of x̂_0 is worst
there; diffusers' ``lower_order_final``), and 3M second order on the step before the last when S < 15
(as diffusers does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..forward import x0_from_eps
from .steps import ddim_step

__all__ = ["Solver", "SOLVERS", "get_solver", "solver_help", "dpm_lambda", "multistep_weights", "unipc_weights",
           "heun_coefficients"]


def dpm_lambda(abar: float) -> float:
    """λ = log(α/σ) = ½ log(ᾱ/(1 − ᾱ)) (DPM-Solver eq. 3.1's half log-SNR); +∞ at ᾱ = 1, −∞ at ᾱ = 0."""
    if abar >= 1.0:
        return math.inf
    if abar <= 0.0:
        return -math.inf
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def _steps_lambda(abar_t, abar_prev):
    """Per step k: (λ_s, h) for s = τ_k and h = λ_t − λ_s, t the next grid point (host floats)."""
    lam_s = [dpm_lambda(a) for a in abar_t]
    return lam_s, [dpm_lambda(a) - ls for ls, a in zip(lam_s, abar_prev)]


def _order(k: int, S: int, order: int, unipc: bool = False) -> int:
    """The order a multistep method runs at step k of S: warm-up from 1, first order on the last step,
    and at most second order on the step before it: DPM-Solver++ when S < 15, UniPC always (diffusers'
    ``lower_order_final`` in each scheduler)."""
    o = min(order, k + 1)
    if k == S - 1:
        return 1
    if k == S - 2 and (S < 15 or unipc):
        return min(o, 2)
    return o


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
    _, h = _steps_lambda(abar_t, abar_prev)
    ratio, w = torch.zeros(S, dtype=torch.float64), torch.zeros(S, 3, dtype=torch.float64)
    for k in range(S):
        a_t, s_t, s_s = math.sqrt(abar_prev[k]), math.sqrt(1 - abar_prev[k]), math.sqrt(1 - abar_t[k])
        hk = h[k]
        e = math.exp(-2 * hk) if sde else math.exp(-hk)
        ratio[k] = s_t / s_s * (math.exp(-hk) if sde else 1.0)
        p1 = a_t * (1 - e)
        o = _order(k, S, order)
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


def unipc_weights(abar_t, abar_prev, order: int = 2):
    """UniPC with B(h) = e^h − 1 ("bh2"; Zhao et al. 2023, Algorithms 2-3, data prediction), table form.

    Step j from s = τ_j to t = τ_{j+1} runs at order p = ``_order(j, S, order, unipc=True)`` with
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
    lam_s, h = _steps_lambda(abar_t, abar_prev)
    w, c = torch.zeros(S, 3, dtype=torch.float64), torch.zeros(S, 4, dtype=torch.float64)
    for j in range(S):
        hj, p = h[j], _order(j, S, order, unipc=True)
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


def heun_coefficients(abar_t, abar_prev):
    """EDM Algorithm 1 in the model's x: with σ_e = √((1 − ᾱ)/ᾱ) and y = x/√ᾱ, dy/dσ_e = ε̂, so
        Euler:  x_t = a x_s + b ε̂_s,   Heun:  x_t = a x_s + b (ε̂_s + ε̂(x_t^Euler, t))/2,
    a = √(ᾱ_t/ᾱ_s), b = √ᾱ_t (σ_e,t − σ_e,s). The Euler step is exactly DDIM η = 0 (with a clipped x̂_0
    too: ``sample`` then re-derives the ε̂ this step reads from it).

    Returns:
        (a, b) (S,) float64.
    """
    at, ap = torch.as_tensor(abar_t, dtype=torch.float64), torch.as_tensor(abar_prev, dtype=torch.float64)
    sig = lambda a: ((1 - a) / a).sqrt()  # noqa: E731
    return (ap / at).sqrt(), ap.sqrt() * (sig(ap) - sig(at))


KINDS = ("ddim", "multistep", "heun", "score")  # "score": the subclasses in ``score``, with steps of their own


@dataclass(frozen=True)
class Solver:
    """One sampling method (see the module docstring). Instances are immutable and hold no run state.

    name: the CLI/API name. kind: "ddim" (eq. 12 with the caller's η), "multistep" (DPM-Solver++ /
    UniPC tables) or "heun". order: the multistep order (1 for ddim and heun). noise_eta: the η whose
    noise the solver adds (None for "ddim": the caller's η; 0 or 1 for the others). sde: the multistep
    update of SDE-DPM-Solver++ (needs noise_eta 1, order ≤ 2). corrector: UniPC, UniC after each step
    (order 2 or 3).
    d2_halved: the authors'/diffusers' third-order D2 (``multistep_weights``; order 3 only).
    summary: one line for help texts.
    """

    name: str
    kind: str = "ddim"
    order: int = 1
    noise_eta: Optional[float] = None
    sde: bool = False
    corrector: bool = False
    d2_halved: bool = False
    summary: str = ""

    def __post_init__(self):
        ok = self.kind in KINDS and (self.noise_eta is None) == (self.kind == "ddim")
        if self.kind != "multistep":
            ok = ok and self.order == 1 and not (self.sde or self.corrector)
        else:
            ok = ok and 1 <= self.order <= 3 and self.sde == (self.noise_eta == 1.0) and self.noise_eta in (0.0, 1.0)
            ok = ok and (not self.sde or self.order <= 2) and (not self.corrector or (self.order >= 2 and not self.sde))
        ok = ok and (not self.d2_halved or (self.kind == "multistep" and self.order == 3))
        if not ok:
            raise ValueError(f"inconsistent solver {self!r}: kind in {KINDS}; noise_eta None exactly for 'ddim'; "
                             "multistep: order 1-3, sde (noise_eta 1, order <= 2) or ODE (noise_eta 0), "
                             "corrector with order 2-3, d2_halved with order 3 only; ddim/heun: order 1")

    @property
    def reads_x0_and_eps(self) -> bool:
        """Whether a step reads both x̂_0 and ε̂ (DDIM): only then is re-deriving ε̂ from a clipped x̂_0 a
        choice (``SampleOptions.eps_from_clipped_x0``); a solver reading one of them gets it consistent."""
        return self.kind == "ddim"

    @property
    def invertible(self) -> bool:
        """Whether ``invert_step`` exists: DDIM's η = 0 step, run backwards (DDIM eq. 13-14)."""
        return self.kind == "ddim"

    def nfe(self, S: int) -> int:
        """Model calls over S steps (Heun: 2 per step but 1 on the last)."""
        return 2 * S - 1 if self.kind == "heun" else S

    def eta(self, eta) -> object:
        """The η the plan's noise column is built with; refuses an η the solver does not take."""
        if self.noise_eta is None:
            return eta
        if any(eta) if isinstance(eta, tuple) else eta not in (0, 0.0):  # a per-step η of zeros is η = 0
            shown = f"a per-step η with {sum(e != 0 for e in eta)} non-zero values" if isinstance(eta, tuple) \
                else f"eta={eta!r}"
            raise ValueError(f"{shown} applies to solver 'ddim' only; solver {self.name!r} adds "
                             + ("DDIM's η = 1 noise by construction" if self.noise_eta else "no noise"))
        return self.noise_eta

    def check(self, abar_t) -> None:
        """Refuse a grid the solver cannot run: Heun's σ_e = √((1 − ᾱ)/ᾱ) is infinite at ᾱ = 0 (zero
        terminal SNR)."""
        if self.kind == "heun" and float(abar_t[0]) == 0.0:
            raise ValueError("solver 'heun' cannot start at ᾱ_t = 0 (zero terminal SNR: its σ = √((1−ᾱ)/ᾱ) is "
                             "infinite); use dpmpp-2m, unipc or ddim, or a grid without the last training step")

    def draws(self, plan) -> tuple:
        """(S,) ints: the N(0, I) draws each step of ``plan`` takes (one where its noise_std > 0)."""
        return tuple(int(v > 0) for v in plan.noise_std.tolist())

    def table(self, abar_t, abar_prev) -> dict:
        """Host float64 columns (each (S,), or (S, 3) for the multistep weights) for ``step``."""
        abar_t, abar_prev = abar_t.tolist(), abar_prev.tolist()
        if self.kind == "heun":
            a, b = heun_coefficients(abar_t, abar_prev)
            return {"a": a, "b": b}
        if self.kind == "ddim":
            return {}
        ratio, w = multistep_weights(abar_t, abar_prev, self.order, self.sde, self.d2_halved)
        if not self.corrector:
            return {"ratio": ratio, "w": w}
        w, c = unipc_weights(abar_t, abar_prev, self.order)
        return {"ratio": ratio, "w": w, "c": c}

    def step(self, k: int, x: torch.Tensor, predict: Callable, t_batch: torch.Tensor, coef, state: dict,
             noise_at: Callable):
        """x_t → x_{t−1} for step k. ``coef`` is the device ``Plan`` (its ``table`` holds ours).
        Returns (x_{t−1}, x̂_0 of the step's first model call). For UniPC x_t here is the predictor's
        point: the corrector moves it at the start of the next step, with that step's model call."""
        tab = coef.table
        x0, eps = predict(x, t_batch[k], coef.abar_t[k])
        z = noise_at(k)  # unit draws: None where the step adds no noise
        noise = None if z is None else coef.noise_std[k] * z
        if self.kind == "ddim":
            return ddim_step(x0, eps, coef.abar_prev[k], coef.sigma[k], noise), x0
        if self.kind == "heun":
            x_next = tab["a"][k] * x + tab["b"][k] * eps
            if k + 1 < t_batch.shape[0]:  # the last step stays Euler
                _, eps2 = predict(x_next, t_batch[k + 1], coef.abar_t[k + 1])
                x_next = tab["a"][k] * x + tab["b"][k] * (0.5 * (eps + eps2))
            return x_next, x0
        hist = state.setdefault("m", [])
        S = t_batch.shape[0]
        if self.corrector and k > 0:  # UniC: correct the previous result with this call's x̂_0
            c = tab["c"][k]
            x = tab["ratio"][k - 1] * state["x_s"] + c[0] * x0 + _combine(c[1:], hist[::-1],
                                                                          _order(k - 1, S, self.order, True))
        hist.append(x0)
        del hist[:-self.order]
        if self.corrector:
            state["x_s"] = x
        x_next = tab["ratio"][k] * x + _combine(tab["w"][k], hist[::-1], _order(k, S, self.order, self.corrector))
        return (x_next if noise is None else x_next + noise), x0

    def invert_step(self, k: int, x: torch.Tensor, eps_at: Callable, t_batch: torch.Tensor, coef):
        """x_{t−1} → x_t, the reverse of step k (``invertible`` solvers only): ε̂ is read at x_{t−1} with the
        model told t (the only point available), x̂_0 from it at level ᾱ_{t−1}, then eq. 12 up to ᾱ_t.
        ``eps_at(x, t, ᾱ_t)`` gives ε̂. Returns (x_t, x̂_0)."""
        eps = eps_at(x, t_batch[k], coef.abar_t[k])
        x0 = x0_from_eps(x, eps, coef.abar_prev[k])
        return ddim_step(x0, eps, coef.abar_t[k], 0.0), x0


def _combine(w: torch.Tensor, ms, terms: int) -> torch.Tensor:
    """Σ_{j < terms} w[j] · ms[j] (the order is known on the host; w lives on the device)."""
    out = w[0] * ms[0]
    for j in range(1, terms):
        out = out + w[j] * ms[j]
    return out


SOLVERS = {s.name: s for s in (  # ``score`` adds the score-view solvers (reverse-sde, pf-ode, langevin, pc)
    Solver("ddim", summary="the η-family of DDIM eq. 12 (η = 0: deterministic)"),
    Solver("dpmpp-2m", "multistep", 2, 0.0, summary="DPM-Solver++(2M), second-order multistep"),
    Solver("dpmpp-3m", "multistep", 3, 0.0, summary="DPM-Solver++(3M), third-order multistep"),
    Solver("dpmpp-3m-compat", "multistep", 3, 0.0, d2_halved=True,
           summary="DPM-Solver++(3M) as diffusers writes it (half the D2 term: second order)"),
    Solver("dpmpp-2m-sde", "multistep", 2, 1.0, sde=True,
           summary="SDE-DPM-Solver++(2M), adds η = 1's noise"),
    Solver("unipc", "multistep", 2, 0.0, corrector=True, summary="UniPC-bh2 with its corrector"),
    Solver("unipc-3", "multistep", 3, 0.0, corrector=True, summary="UniPC-bh2 of order 3 with its corrector"),
    Solver("heun", "heun", 1, 0.0, summary="EDM's Heun, 2 model calls per step"),
)}


def solver_help(deterministic: bool = False) -> str:
    """The solvers, one clause each, for help texts (``deterministic``: those adding no noise)."""
    return "; ".join(f"{n}: {s.summary}" for n, s in SOLVERS.items()
                     if not (deterministic and s.noise_eta))


def get_solver(solver) -> Solver:
    """A ``Solver`` from its name or itself."""
    if isinstance(solver, Solver):
        return solver
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    return SOLVERS[solver]
