"""Multistep consistency sampling (Song et al., "Consistency Models", ICML 2023, Algorithm 1) for a model whose
x̂_0 read is a consistency function f(x_t, t) (``ddim distill --method consistency``; ``ddim.train.consistency``).

    x ← f(x_T, τ_0);   for k = 1 … S − 1:  x ← f(√ᾱ_{τ_k} x + √(1 − ᾱ_{τ_k}) z_k, τ_k),  z_k ~ N(0, I)

As one step k of the seam: x_next = √ᾱ_prev x̂_0 + √(1 − ᾱ_prev) z, the new noise drawn through ``noise_at`` (so
per-sample seeds hold), none on a step that lands on ᾱ = 1, which returns x̂_0 itself. One step is deterministic:
x̂_0 at x_T. (It is DDIM's eq. 12 with σ_t² = 1 − ᾱ_{t−1}: the ε̂ direction dropped, all of the rest new noise.)
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Solver, register

__all__ = ["Consistency"]


@register()
@dataclass(frozen=True)
class Consistency(Solver):
    """x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1}) z: Algorithm 1 of Song et al. 2023, one model call per step."""

    name: str = "consistency"
    summary: str = ("multistep consistency sampling (Song et al. 2023, Algorithm 1): x̂_0 re-noised to the next "
                    "point; for consistency students (`ddim distill --method consistency`)")
    noise_eta: float = 1.0  # it adds noise (not η's): no deterministic-only command offers it
    default_steps: int = 1
    default_spacing: str = "trailing"

    def eta(self, eta) -> object:
        if any(eta) if isinstance(eta, tuple) else eta not in (0, 0.0):
            raise ValueError(f"eta={eta!r} applies to solver 'ddim' only; solver 'consistency' draws fresh noise at "
                             "each point by construction")
        return 0.0

    def draws(self, plan) -> tuple:
        return tuple(int(a < 1.0) for a in plan.abar_prev.tolist())

    def table(self, abar_t, abar_prev) -> dict:
        return {"signal": abar_prev.sqrt(), "noise": (1 - abar_prev).sqrt()}

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        x0, _ = predict(x, t_batch[k], coef.abar_t[k])
        z = noise_at(k)
        return (x0 if z is None else coef.table["signal"][k] * x0 + coef.table["noise"][k] * z), x0
