"""The forward process q(x_t | x_0) and conversions between the three prediction targets.

With ᾱ = ᾱ_t (a float or a tensor broadcastable against x, e.g. shaped (B, 1, 1, 1)):
    x_t = √ᾱ x_0 + √(1−ᾱ) ε                         (DDPM eq. 4, DDIM eq. 4)
    x_0 = (x_t − √(1−ᾱ) ε) / √ᾱ                     (DDIM eq. 9, f_θ)
    v   = √ᾱ ε − √(1−ᾱ) x_0                         (Salimans & Ho 2022, section 4)
    x_0 = √ᾱ x_t − √(1−ᾱ) v,   ε = √(1−ᾱ) x_t + √ᾱ v

All functions are pure and work for any shape and dtype; ᾱ is cast to x's dtype and device.
"""

from __future__ import annotations

import torch

from .transfer import to_device

__all__ = ["PREDICTIONS", "abar_at", "q_sample", "x0_from_eps", "eps_from_x0", "v_from_x0_eps",
           "x0_from_v", "eps_from_v", "score_from_eps", "predict_x0_eps", "target_from_x0_eps"]

PREDICTIONS = ("epsilon", "sample", "v")


def abar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """ᾱ_t gathered per sample and shaped (B, 1, …, 1) to broadcast against ``like`` (B, …)."""
    a = to_device(alphas_cumprod, like.device)[to_device(t, like.device)].to(_coef_dtype(like))
    return a.reshape(-1, *([1] * (like.ndim - 1)))


def _coef_dtype(x: torch.Tensor) -> torch.dtype:
    """Coefficients in at least float32: in bf16, ᾱ_t for small t rounds to exactly 1 and √(1−ᾱ_t) to 0."""
    return torch.promote_types(x.dtype, torch.float32)


def q_sample(x0: torch.Tensor, abar, eps: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, a draw from q(x_t | x_0) given ε ~ N(0, I) (DDPM eq. 4)."""
    abar = torch.as_tensor(abar, dtype=_coef_dtype(x0), device=x0.device)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, abar) -> torch.Tensor:
    """f_θ: x_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t (DDIM eq. 9)."""
    abar = torch.as_tensor(abar, dtype=_coef_dtype(x_t), device=x_t.device)
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, abar) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t) (DDIM eq. 9 solved for ε)."""
    abar = torch.as_tensor(abar, dtype=_coef_dtype(x_t), device=x_t.device)
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def v_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, abar) -> torch.Tensor:
    """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022)."""
    abar = torch.as_tensor(abar, dtype=_coef_dtype(x0), device=x0.device)
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def x0_from_v(x_t: torch.Tensor, v: torch.Tensor, abar) -> torch.Tensor:
    """x_0 = √ᾱ_t x_t − √(1−ᾱ_t) v."""
    abar = torch.as_tensor(abar, dtype=_coef_dtype(x_t), device=x_t.device)
    return abar.sqrt() * x_t - (1 - abar).sqrt() * v


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, abar) -> torch.Tensor:
    """ε = √(1−ᾱ_t) x_t + √ᾱ_t v."""
    abar = torch.as_tensor(abar, dtype=_coef_dtype(x_t), device=x_t.device)
    return (1 - abar).sqrt() * x_t + abar.sqrt() * v


def score_from_eps(eps: torch.Tensor, abar) -> torch.Tensor:
    """s = ∇ₓ log q(x_t) ≈ −ε̂ / √(1 − ᾱ_t) (Tweedie; Song et al. 2021). eps: (B, …); abar: a float or a tensor
    broadcasting against it."""
    return -eps / torch.sqrt(1 - torch.as_tensor(abar, dtype=eps.dtype, device=eps.device))


def predict_x0_eps(out: torch.Tensor, x_t: torch.Tensor, abar, prediction: str):
    """Read a model output as (x̂_0, ε̂), whichever target the model was trained on.

    Args:
        out: model output, shaped like x_t.
        x_t: the input the model saw.
        abar: ᾱ_t, broadcastable against x_t.
        prediction: "epsilon", "sample" (x_0) or "v".
    Returns:
        (x0_pred, eps), both shaped like x_t.
    """
    if prediction == "epsilon":
        return x0_from_eps(x_t, out, abar), out
    if prediction == "sample":
        return out, eps_from_x0(x_t, out, abar)
    if prediction == "v":
        return x0_from_v(x_t, out, abar), eps_from_v(x_t, out, abar)
    raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")


def target_from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, abar, prediction: str) -> torch.Tensor:
    """The regression target for a model of the given prediction type (used by training)."""
    if prediction == "epsilon":
        return eps
    if prediction == "sample":
        return x0
    if prediction == "v":
        return v_from_x0_eps(x0, eps, abar)
    raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
