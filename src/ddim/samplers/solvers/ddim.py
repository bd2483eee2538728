"""The η-family of DDIM eq. 12 (η = 0: deterministic DDIM, first-order DPM-Solver(++), Euler in λ), and its
inverse step (eq. 13-14 run backwards)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..steps import ddim_invert_step, ddim_step
from .base import Solver, register

__all__ = ["DDIM"]


@register(name="ddim", summary="the η-family of DDIM eq. 12 (η = 0: deterministic)")
@dataclass(frozen=True)
class DDIM(Solver):
    """x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z with the caller's η (the plan's σ columns)."""

    noise_eta: Optional[float] = None

    @property
    def reads_x0_and_eps(self) -> bool:
        return True

    @property
    def invertible(self) -> bool:
        return True

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        x0, eps = predict(x, t_batch[k], coef.abar_t[k])
        z = noise_at(k)
        return ddim_step(x0, eps, coef.abar_prev[k], coef.sigma[k], None if z is None else coef.noise_std[k] * z), x0

    def invert_step(self, k, x, eps_at, t_batch, coef):
        """ε̂ is read at x_{t−1} with the model told t (the only point available): ``ddim_invert_step``."""
        eps = eps_at(x, t_batch[k], coef.abar_t[k])
        return ddim_invert_step(x, eps, coef.abar_t[k], coef.abar_prev[k])
