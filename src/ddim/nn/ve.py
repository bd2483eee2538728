"""A variance-exploding score network seen as the variance-preserving ε-predictor our samplers read.

Score-SDE's VE models (NCSN++, diffusers ``ScoreSdeVeScheduler``) are trained on images u ∈ [0, 1],
noised as u + σ' z, and called with the noise level σ', returning the score s_θ(u, σ') ≈ −z/σ'. Our
samplers work on y = 2u − 1 ∈ [−1, 1] with x_t = √ᾱ_t y + √(1 − ᾱ_t) ε, which is the same diffusion up
to scale (Song et al. 2021; Kingma et al. 2021): x̄ = x_t / √ᾱ_t = y + σ ε with σ² = (1 − ᾱ_t)/ᾱ_t, and
(x̄ + 1)/2 = u + (σ/2) ε. So σ = 2σ', and with the same ε

    ε̂(x_t, t) = −σ'_t · s_θ((x_t · √(1 + σ_t²) + 1) / 2, σ'_t),     σ_t = 2σ'_t,  ᾱ_t = 1 / (1 + σ_t²).

On the discrete grid t = 0..T−1 the model's levels are geometric, σ'_t = σ_min (σ_max/σ_min)^(t/(T−1)), as
in diffusers' scheduler. DDIM (η = 0) on this schedule is Euler's method in σ on x̄ (DDIM paper, eq. 14),
so every sampler here runs VE models unchanged, and images come out in our [−1, 1].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..schedule import MAX_T, Schedule

__all__ = ["ve_sigma", "ve_schedule", "VEScoreModel"]


def ve_sigma(t: torch.Tensor, sigma_min: float, sigma_max: float, num_steps: int) -> torch.Tensor:
    """σ_t = σ_min (σ_max/σ_min)^(t/(T−1)) in float64, for (B,) step indices t (fractional allowed)."""
    return sigma_min * (sigma_max / sigma_min) ** (t.to(torch.float64) / (num_steps - 1))


def ve_schedule(sigma_min: float, sigma_max: float, num_steps: int) -> Schedule:
    """The VP schedule with ᾱ_t = 1 / (1 + σ_t²), σ_t = 2σ'_t on the model's grid of [0, 1]-scale levels σ'
    (β_t = 1 − ᾱ_t / ᾱ_{t−1}, ᾱ_{−1} = 1)."""
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} and {sigma_max}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 2 <= num_steps <= MAX_T:
        raise ValueError(f"num_train_timesteps must be an integer in [2, {MAX_T:,}], got {num_steps!r}")
    abar = 1.0 / (1.0 + (2 * ve_sigma(torch.arange(num_steps), sigma_min, sigma_max, num_steps)) ** 2)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    try:
        return Schedule.from_betas(1.0 - abar / prev)
    except ValueError as e:  # levels so close or so extreme that float64 cannot tell them apart
        raise ValueError(f"sigma_min={sigma_min!r}, sigma_max={sigma_max!r} over {num_steps} steps give no usable "
                         f"noise levels ({e})") from None


class VEScoreModel(nn.Module):
    """``net(x, σ[, labels])`` (a VE score network) called as ``model(x_t, t[, labels])`` -> ε̂ (module docstring).

    ``config`` and ``null_label`` are the wrapped network's; ``schedule()`` is the matching VP schedule.
    """

    def __init__(self, net: nn.Module, sigma_min: float, sigma_max: float, num_steps: int):
        super().__init__()
        ve_schedule(sigma_min, sigma_max, num_steps)  # validates
        self.net, self.sigma_min, self.sigma_max, self.num_steps = net, float(sigma_min), float(sigma_max), num_steps

    @property
    def config(self):
        return self.net.config

    @property
    def null_label(self):
        return getattr(self.net, "null_label", None)

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        return self.net.label_embedding(labels)

    def schedule(self) -> Schedule:
        return ve_schedule(self.sigma_min, self.sigma_max, self.num_steps)

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        s = ve_sigma(t.expand(x.shape[0]) if t.ndim == 0 else t, self.sigma_min, self.sigma_max, self.num_steps)
        scale = torch.sqrt(1.0 + (2 * s) ** 2).to(x.dtype)[:, None, None, None]  # 1/√ᾱ_t
        score = self.net((x * scale + 1) / 2, s.to(torch.float32), labels, **kwargs)
        return -s.to(x.dtype)[:, None, None, None] * score
