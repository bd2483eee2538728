"""Progressive distillation of a (guided) diffusion model: the pure math of its target, loss and grids.

Notation (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR 2022,
with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), SNR = α²/σ²):

    DDIM (η = 0) step t → s from x̂ = x̂_0(x_t):   x_s = α_s x̂ + σ_s (x_t − α_t x̂) / σ_t         (DDIM eq. 12)
    teacher, two steps on a grid of 2N:         x_t → x_t' → x_t''       (DDIM, or Heun's: ``heun_step``)
    student, one step on the grid of N:         x_t → x_t''
    the target that makes them equal:           x̃ = (x_t'' − (σ_t''/σ_t) x_t) / (α_t'' − (σ_t''/σ_t) α_t)
                                                                                  (Algorithm 2, line 9)
    loss:                                       w(λ_t) ‖x̂_0^student(x_t) − x̃‖²,  w = max(SNR_t, 1)
                                                ("truncated SNR", §4) or SNR_t + 1 (the v-loss, eq. 9's)

Guided teachers (Meng et al., "On Distillation of Guided Diffusion Models", CVPR 2023, §4.1, stage 1): a
student that takes the guidance weight w as an input learns, in one forward, the guided prediction
    x̂_w = (1 + w) x̂_c − w x̂_∅,    w ~ U[w_min, w_max]                               (their eq. 5 in x-space)
(the combination is linear, so it is the same in ε-, x_0- or v-form; ``ddim.guidance.guided_combination``);
stage 2 then halves that student as above, w kept as an input of every round's teacher and student.

The grids are the "trailing" ones (``ddim.timesteps``): τ_i = round(T − i·T/S) − 1, which start at T − 1
(where x_T ~ N(0, I) is the right marginal, so a 1-step student starts from pure noise) and nest: the grid
of N steps is every other point of the grid of 2N, for every power of two N up to T/4.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..checks import check_power_of_two
from ..config import DISTILL_SPACING, DISTILL_WEIGHTINGS
from ..forward import eps_from_x0, predict_x0_eps, x0_from_eps
from ..samplers.steps import ddim_step
from ..timesteps import timesteps

__all__ = ["deterministic_step", "heun_step", "check_heun_start", "distill_target", "loss_weight", "weighted_mse",
           "x0_from_output", "student_grid", "grid_abar"]


def deterministic_step(x_t: torch.Tensor, x0_hat: torch.Tensor, abar_t, abar_s) -> torch.Tensor:
    """One deterministic DDIM step t → s (DDIM eq. 12 with σ = 0) from x̂_0:

        x_s = α_s x̂_0 + σ_s ε̂,   ε̂ = (x_t − α_t x̂_0) / σ_t,   α = √ᾱ, σ = √(1 − ᾱ).

    ``abar_s`` = 1 lands on x̂_0 itself. ᾱ's broadcast against x (e.g. (B, 1, 1, 1)).
    """
    return ddim_step(x0_hat, eps_from_x0(x_t, x0_hat, abar_t), torch.as_tensor(abar_s, dtype=x_t.dtype), 0.0)


def heun_step(x_t: torch.Tensor, eps_t: torch.Tensor, eps_s: torch.Tensor, abar_t, abar_s) -> torch.Tensor:
    """The corrected step t → s of EDM's Heun (Karras et al. 2022, Algorithm 1, lines 5–8) in DDIM's variables.

    With y = x/α and σ_e = σ/α the probability-flow ODE is dy/dσ_e = ε̂, its Euler step is DDIM's (η = 0), and
    Heun's step averages the slope at x_t (ε̂_t) with the slope ε̂_s at the Euler point x_s^E:

        ε̄ = (ε̂_t + ε̂_s)/2,   x_s = α_s (x_t − σ_t ε̄)/α_t + σ_s ε̄,

    i.e. a DDIM step taken with ε̄. Second order where DDIM is first. At ᾱ_s = 1 (σ_e = 0) Heun's last step stays
    Euler; the caller picks. ᾱ's broadcast against x.
    """
    eps_bar = 0.5 * (eps_t + eps_s)
    return ddim_step(x0_from_eps(x_t, eps_bar, abar_t), eps_bar, torch.as_tensor(abar_s, dtype=x_t.dtype), 0.0)


def check_heun_start(teacher_solver: str, abar_first: float) -> None:
    """Refuse a Heun teacher on a grid that starts at ᾱ = 0 (zero terminal SNR), where Heun's σ = √((1 − ᾱ)/ᾱ)
    is infinite; ``abar_first``: ᾱ at the grid's first point, T − 1."""
    if teacher_solver == "heun" and abar_first == 0.0:
        raise ValueError("--teacher-solver heun cannot start at ᾱ = 0 (zero terminal SNR: Heun's σ = √((1−ᾱ)/ᾱ) is "
                         "infinite there); use --teacher-solver ddim")


def distill_target(x_t: torch.Tensor, x_t2: torch.Tensor, abar_t, abar_t2) -> torch.Tensor:
    """x̃ of Salimans & Ho, Algorithm 2: the x̂_0 whose one DDIM step from x_t (at ᾱ_t) lands on the teacher's
    x_t'' (at ᾱ_t''),

        x̃ = (x_t'' − (σ_t''/σ_t) x_t) / (α_t'' − (σ_t''/σ_t) α_t).

    At ᾱ_t'' = 1 (the step onto x_0) σ_t'' = 0 and x̃ = x_t''. ``deterministic_step(x_t, x̃, ᾱ_t, ᾱ_t'') == x_t''``.
    """
    abar_t, abar_t2 = torch.as_tensor(abar_t, dtype=x_t.dtype), torch.as_tensor(abar_t2, dtype=x_t.dtype)
    ratio = (1 - abar_t2).sqrt() / (1 - abar_t).sqrt()
    return (x_t2 - ratio * x_t) / (abar_t2.sqrt() - ratio * abar_t.sqrt())


def loss_weight(abar_t: torch.Tensor, weighting: str) -> torch.Tensor:
    """The x̂_0-space loss weight at ᾱ_t: max(SNR, 1) ("truncated-snr", Salimans & Ho §4), SNR + 1 ("snr+1",
    which makes ‖x̂_0 − x̃‖² the v-loss ‖v̂ − ṽ‖²: v = (α x_t − x_0)/σ, so δv = −δx_0/σ and 1/σ² = SNR + 1), or 1
    ("uniform", the λ(t) ≡ 1 of Song et al.'s consistency distillation)."""
    snr = abar_t / (1 - abar_t)
    if weighting == "uniform":
        return torch.ones_like(snr)
    if weighting == "truncated-snr":
        return snr.clamp(min=1.0)
    if weighting == "snr+1":
        return snr + 1
    raise ValueError(f"unknown weighting {weighting!r}; allowed: {', '.join(DISTILL_WEIGHTINGS)}")


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """mean over the batch of weight · (mean over pixels of (pred − target)²): the distillation losses, progressive
    (``loss_weight`` on ‖x̂_0 − x̃‖²) and consistency (λ(t_n) d(f_θ, f_θ⁻) with d the squared L2, Song et al.
    eq. 7)."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (weight.flatten().float() * per_sample).mean()


def x0_from_output(out: torch.Tensor, x_t: torch.Tensor, abar_t, prediction: str,
                   clip: Optional[float] = None) -> torch.Tensor:
    """x̂_0 (DDIM eq. 9 for ε; as is for x_0; α x_t − σ v for v) from a network output of type ``prediction``,
    clamped to [−clip, clip] when ``clip`` is set (the x̂_0 rule the teacher samples with; ε̂ is then re-derived
    from the clamped x̂_0 by ``deterministic_step``)."""
    x0, _ = predict_x0_eps(out, x_t, abar_t, prediction)
    return x0 if clip is None else x0.clamp(-clip, clip)


def student_grid(num_train_steps: int, steps: int) -> torch.Tensor:
    """The descending grid of a ``steps``-step student: ``ddim.timesteps(T, steps, "trailing")``. Refuses a
    step count whose grid is not every other point of the grid twice as fine (the teacher's)."""
    check_power_of_two("the number of steps", steps)
    if 2 * steps > num_train_steps:
        raise ValueError(f"{steps} steps need a teacher grid of {2 * steps} on a schedule of only "
                         f"{num_train_steps} training steps")
    tau = timesteps(num_train_steps, steps, DISTILL_SPACING)
    finer = timesteps(num_train_steps, 2 * steps, DISTILL_SPACING)
    if not torch.equal(finer[::2], tau):  # rounding to integer steps breaks nesting on very fine grids
        raise ValueError(f"the {steps}-step trailing grid is not every other point of the {2 * steps}-step one on "
                         f"T = {num_train_steps}; choose fewer teacher steps")
    return tau


def grid_abar(alphas_cumprod: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """(S + 1,) float64: ᾱ at each point of the descending grid τ, then 1 (the step after the last lands on x_0)."""
    return torch.cat([alphas_cumprod[tau].double(), torch.ones(1, dtype=torch.float64)])
