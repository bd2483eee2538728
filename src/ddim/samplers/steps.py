"""The generalized DDIM step and its noise levels, as pure functions (Song, Meng, Ermon 2020).

Notation (the DDIM paper writes α for our ᾱ):
    ᾱ_t, ᾱ_{t−1}   signal fractions at the current grid point t and the next one t_prev (the "t−1" of a
                    sub-sequence is simply the next grid entry; after the last entry ᾱ_{t−1} = 1)
    x̂_0 = f_θ(x_t)  predicted clean sample (eq. 9);  ε̂ = ε_θ(x_t, t)
    σ_t(η)          step noise of the η-family (eq. 16); η = 0 is DDIM, η = 1 is DDPM's posterior
    σ̂_t             "larger variance" DDPM noise √(1 − ᾱ_t/ᾱ_{t−1}) (section 5.1, Table 1's σ̂ rows)

    x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z,   z ~ N(0, I)          (eq. 12)

All functions take floats or tensors and broadcast.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..forward import x0_from_eps

__all__ = ["sigma_eta", "sigma_hat", "posterior_variance", "ddim_step", "ddim_invert_step", "euler_coefficients",
           "clip_x0",
           "dynamic_threshold"]


def sigma_eta(abar_t, abar_prev, eta):
    """σ_t(η) = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})   (DDIM eq. 16).

    η = 1 gives the DDPM posterior standard deviation √β̃_t (DDPM eq. 7) of the (sub-)chain.
    """
    return eta * ((1 - abar_prev) / (1 - abar_t)) ** 0.5 * (1 - abar_t / abar_prev) ** 0.5


def sigma_hat(abar_t, abar_prev):
    """σ̂_t = √(1 − ᾱ_t/ᾱ_{t−1}): DDPM's "fixed large" variance β_t of the (sub-)chain (DDIM §5.1)."""
    return (1 - abar_t / abar_prev) ** 0.5


def posterior_variance(abar_t, abar_prev):
    """β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t with β_t = 1 − ᾱ_t/ᾱ_{t−1}   (DDPM eq. 7)."""
    return (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)


def ddim_step(x0_pred: torch.Tensor, eps: torch.Tensor, abar_prev, sigma, noise=None) -> torch.Tensor:
    """One generalized step (DDIM eq. 12).

    x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + noise

    Args:
        x0_pred: (B, …) predicted x_0.
        eps: (B, …) predicted ε (same shape).
        abar_prev: ᾱ_{t−1}, a float or a tensor broadcastable to x0_pred.
        sigma: σ_t of the direction term (σ_t(η); the σ̂ variant keeps σ_t(1) here).
        noise: the random term: σ_t z for the η-family, σ̂_t z for the σ̂ variant, None for none.
    Returns:
        (B, …) x_{t−1}.
    """
    direction = (1 - abar_prev - sigma**2).clamp(min=0) ** 0.5 if torch.is_tensor(abar_prev) \
        else max(1 - abar_prev - sigma**2, 0.0) ** 0.5  # clamp: rounding can give −1e-17 when η = 1
    x_prev = abar_prev**0.5 * x0_pred + direction * eps
    return x_prev if noise is None else x_prev + noise


def ddim_invert_step(x: torch.Tensor, eps: torch.Tensor, abar_t, abar_prev, eps_up: Optional[torch.Tensor] = None):
    """One step of DDIM inversion, x_{t−1} → x_t (DDIM eq. 13-14 run backwards): x̂_0 from ε̂ at level
    ᾱ_{t−1} (eq. 9), then eq. 12 with σ = 0 up to ᾱ_t. ε̂ is read at x_{t−1} with the model told t (the only
    point available: the first-order approximation whose error shrinks as the steps do).

    Args:
        x: (B, …) x_{t−1}. eps: (B, …) ε̂. abar_t, abar_prev: ᾱ_t and ᾱ_{t−1}, floats or broadcastable tensors.
        eps_up: the ε̂ that carries x̂_0 up to ᾱ_t, when it is not ``eps``: CFG++ steps down with x̂_0 of the
            guided ε̂ and the unconditional direction, so its inverse reads x̂_0 with the unconditional ε̂
            (``eps``) and goes up with the guided one (Chung et al. 2024, §3.3).
    Returns:
        (x_t, x̂_0), each (B, …).
    """
    x0 = x0_from_eps(x, eps, abar_prev)
    return ddim_step(x0, eps if eps_up is None else eps_up, abar_t, 0.0), x0


def euler_coefficients(abar_t, abar_prev):
    """(a, b) of the η = 0 step written as x_{t−1} = a x_t + b ε̂ (DDIM eq. 13's Euler step; EDICT eq. 5; EDM
    Algorithm 1's Euler step in the model's x): a = √(ᾱ_{t−1}/ᾱ_t), b = √ᾱ_{t−1} (σ_e,{t−1} − σ_e,t) with
    σ_e = √((1 − ᾱ)/ᾱ). abar_t, abar_prev: floats or (S,) sequences. Returns: (a, b) float64 tensors shaped
    like the input."""
    at, ap = torch.as_tensor(abar_t, dtype=torch.float64), torch.as_tensor(abar_prev, dtype=torch.float64)
    sig = lambda a: ((1 - a) / a).sqrt()  # noqa: E731
    return (ap / at).sqrt(), ap.sqrt() * (sig(ap) - sig(at))


def clip_x0(x0: torch.Tensor, clip: float) -> torch.Tensor:
    """Clamp x̂_0 to [−clip, clip] (the data range; DDPM's sampler clips to [−1, 1])."""
    return x0.clamp(-clip, clip)


def dynamic_threshold(x0: torch.Tensor, ratio: float = 0.995, max_value: float = 1.0) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen §2.3): per sample, s = the ``ratio``-quantile of
    |x̂_0| clamped to [1, max_value]; x̂_0 ← clamp(x̂_0, −s, s) / s.

    Args:
        x0: (B, …) predicted x_0.
    Returns:
        (B, …) thresholded x̂_0 in [−1, 1].
    """
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # quantile needs fp32+
    s = torch.quantile(work.abs(), ratio, dim=1).clamp(min=1.0, max=max_value).unsqueeze(1)
    return (torch.maximum(torch.minimum(work, s), -s) / s).to(x0.dtype).reshape(x0.shape)
