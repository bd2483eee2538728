"""Heun's second-order method on the probability-flow ODE in EDM's (σ, x/α) variables (Karras et al. 2022,
Algorithm 1): two model calls per step, Euler (= DDIM η = 0) on the last."""

from __future__ import annotations

from dataclasses import dataclass


from ..steps import euler_coefficients
from .base import Solver, register

__all__ = ["Heun", "heun_coefficients"]


def heun_coefficients(abar_t, abar_prev):
    """EDM Algorithm 1 in the model's x: with σ_e = √((1 − ᾱ)/ᾱ) and y = x/√ᾱ, dy/dσ_e = ε̂, so
        Euler:  x_t = a x_s + b ε̂_s,   Heun:  x_t = a x_s + b (ε̂_s + ε̂(x_t^Euler, t))/2,
    (a, b) = ``euler_coefficients``: the Euler step is exactly DDIM η = 0 (with a clipped x̂_0 too: ``sample``
    then re-derives the ε̂ this step reads from it).

    Returns:
        (a, b) (S,) float64.
    """
    return euler_coefficients(abar_t, abar_prev)


@register(name="heun", summary="EDM's Heun, 2 model calls per step")
@dataclass(frozen=True)
class Heun(Solver):
    """x_t = a x_s + b (ε̂_s + ε̂(x_t^Euler, t))/2 with (a, b) of ``heun_coefficients``."""

    default_steps: int = 10
    default_spacing: str = "logsnr"

    def nfe(self, S: int) -> int:
        return 2 * S - 1  # 2 per step but 1 on the last

    def check(self, abar_t) -> None:
        """Heun's σ_e = √((1 − ᾱ)/ᾱ) is infinite at ᾱ = 0 (zero terminal SNR)."""
        if float(abar_t[0]) == 0.0:
            raise ValueError("solver 'heun' cannot start at ᾱ_t = 0 (zero terminal SNR: its σ = √((1−ᾱ)/ᾱ) is "
                             "infinite); use dpmpp-2m, unipc or ddim, or a grid without the last training step")

    def table(self, abar_t, abar_prev) -> dict:
        a, b = heun_coefficients(abar_t.tolist(), abar_prev.tolist())
        return {"a": a, "b": b}

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        tab = coef.table
        x0, eps = predict(x, t_batch[k], coef.abar_t[k])
        x_next = tab["a"][k] * x + tab["b"][k] * eps
        if k + 1 < t_batch.shape[0]:  # the last step stays Euler
            _, eps2 = predict(x_next, t_batch[k + 1], coef.abar_t[k + 1])
            x_next = tab["a"][k] * x + tab["b"][k] * (0.5 * (eps + eps2))
        return x_next, x0
