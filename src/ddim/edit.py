"""Image editing by partial diffusion: SDEdit (Meng et al. 2022) and DDIM inversion + regeneration.

Both run only the low-noise part of a sampling grid: with the full grid τ of S steps and a strength
s ∈ (0, 1], the edit grid is the entries t ≤ s·(T−1) (about s·S model calls each way), topped by
t_top = its largest entry.

    SDEdit            x_top = √ᾱ_top x_0 + √(1−ᾱ_top) ε  (forward noise, eq. 4), then sample down with the
                      target model. Random: the edit keeps x_0's layout only as far as the noise allows.
    invert + sample   x_top = DDIM inversion of x_0 with the source model (the image's own class, or ∅),
                      then deterministic sampling down with the target model (e.g. another class under
                      classifier-free guidance). With source = target it reconstructs x_0.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .checks import check_images
from .forward import q_sample
from .noise import Generators, randn
from .samplers import SampleOptions, invert, sample
from .schedule import Schedule
from .timesteps import timesteps

__all__ = ["edit_timesteps", "sdedit", "invert_regenerate"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def edit_timesteps(schedule: Schedule, steps: int, strength: float, spacing: str = "uniform") -> torch.Tensor:
    """The part of the S-step grid at or below s·(T−1), descending (int64)."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    tau = timesteps(schedule, steps, spacing)
    kept = tau[tau <= round(strength * (schedule.num_steps - 1))]
    if kept.numel() == 0:
        raise ValueError(f"strength {strength} keeps no step of the {steps}-step {spacing} grid "
                         f"(its lowest step is {int(tau[-1])}); raise --strength or --steps")
    return kept


def sdedit(model: Model, schedule: Schedule, x0: torch.Tensor, strength: float,
           options: Optional[SampleOptions] = None, generator: Generators = None) -> torch.Tensor:
    """SDEdit: noise x_0 (B, …) to t_top with q(x_t | x_0), then denoise with ``model`` over the edit grid of
    ``options`` (its steps and spacing cut at ``strength``; η, solver and prediction as given)."""
    opts = SampleOptions.of(options)
    check_images(x0, "x0")
    tau = edit_timesteps(schedule, opts.steps, strength, opts.spacing)
    abar_top = schedule.alphas_cumprod[tau[0]]
    x_top = q_sample(x0, abar_top, randn(x0.shape, generator, x0.device, x0.dtype))
    return sample(model, schedule, x_top, generator=generator, options=opts.replace(timesteps=tau))


def invert_regenerate(source: Model, target: Model, schedule: Schedule, x0: torch.Tensor, strength: float,
                      options: Optional[SampleOptions] = None) -> torch.Tensor:
    """DDIM-invert x_0 (B, …) to t_top with ``source``, then sample back down (η = 0, with ``options``'s
    solver) with ``target``, over the edit grid of ``options`` cut at ``strength``."""
    opts = SampleOptions.of(options)
    # one prediction for both networks: a source that declares its own (a loaded checkpoint) and a target
    # wrapped so that it hides it must not be read two ways
    opts = opts.for_network(source).for_network(target)
    tau = edit_timesteps(schedule, opts.steps, strength, opts.spacing)
    grid = opts.replace(timesteps=tau, eta=0.0)
    x_top = invert(source, schedule, x0, prediction=opts.prediction, timesteps=tau)
    return sample(target, schedule, x_top, options=grid)
