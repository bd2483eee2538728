"""Sampling sub-sequences τ of the training steps 0..T-1 (DDIM section 4.2 and Appendix D.2).

A sub-sequence is returned **descending** (the order a sampler visits it): τ_S > … > τ_1, int64,
unique, within [0, T-1]. Samplers pair each τ_i with the next entry of this same tensor, so any
grid works, including ones no formula produced.

Spacings:
    uniform    τ_i = ⌊i·T/S⌋, i = 0..S-1: the DDIM paper's "linear" sequence (for T divisible by S it
               is its code's ``range(0, T, T // S)``), exactly S steps for every S.
    quadratic  τ_i = ⌊(i/(S-1))² · 0.8T⌋ as in the DDIM paper's code (used for its CIFAR-10 tables);
               where flooring repeats a step (small t, large S) the repeat is moved up by one so the
               S steps stay distinct. This is a different grid from the paper's code, not a relabelling:
               there a repeat is a no-op step, so it takes fewer distinct steps (49 at S = 50, T = 1000),
               while here 3 of the 50 points differ (0, 1, 2, 3 instead of 0, 0, 1, 2) and every one of
               the S model calls makes progress. Samples differ accordingly (slightly: the moved points
               are the last, lowest-noise steps).
    leading    τ_i = i·⌊T/S⌋ (+ offset): diffusers' "leading".
    trailing   τ_i = round(T − i·T/S) − 1: diffusers' "trailing"; always contains T-1.
    linspace   round(linspace(0, T−1, S)): diffusers' "linspace"; contains 0 and T-1.
    logsnr     uniform in λ = ½ log(ᾱ/(1 − ᾱ)) between t = T−1 and t = 0 (DPM-Solver's "logSNR"
               steps, Lu et al. 2022 §3.3), each point the nearest integer step; needs a Schedule.
    karras     σ_i = (σ_max^{1/ρ} + i/(S−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7, σ = √((1 − ᾱ)/ᾱ)
               (EDM, Karras et al. 2022, eq. 5), nearest integer step in log σ; needs a Schedule.
    Where rounding to integer steps repeats a point (logsnr, karras at large S), the repeat is moved
    up by one, as for quadratic, and near S = T points are then capped from above (point i at most
    T−S+i), so the grid keeps exactly S distinct steps within [0, T−1].

``offset`` shifts every step (diffusers' ``steps_offset``, e.g. 1 for Stable Diffusion's "leading").
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["timesteps", "SPACINGS", "check_timesteps"]

SPACINGS = ("uniform", "quadratic", "leading", "trailing", "linspace", "logsnr", "karras")
NEEDS_SCHEDULE = ("logsnr", "karras")
KARRAS_RHO = 7.0


def _num_train_steps(schedule_or_T) -> int:
    T = schedule_or_T if isinstance(schedule_or_T, int) else getattr(schedule_or_T, "num_steps", None)
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise TypeError(f"expected a Schedule or a number of training steps T >= 1, got {schedule_or_T!r}")
    return T


def _distinct(tau: np.ndarray) -> np.ndarray:
    """Ascending integer points with repeats moved up: τ_i ≥ τ_{i-1} + 1."""
    i = np.arange(tau.size, dtype=np.int64)
    return np.maximum.accumulate(tau - i) + i


def _nearest_steps(log_level: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target (any order) the step t whose log noise level is nearest; ascending, distinct."""
    t = np.abs(log_level[None, :] - targets[:, None]).argmin(1)
    return _distinct(np.sort(t).astype(np.int64))


def _ascending(T: int, S: int, spacing: str, abar=None) -> np.ndarray:
    i = np.arange(S, dtype=np.int64)
    if spacing == "uniform":
        return (i * T) // S
    if spacing == "quadratic":
        tau = np.floor(np.linspace(0, np.sqrt(T * 0.8), S) ** 2).astype(np.int64)
        # Stays ≤ T-1 for every S ≤ T (the curve rises by < 1 per index wherever repeats happen, and its
        # end is 0.8T).
        return _distinct(tau)
    if spacing in NEEDS_SCHEDULE:
        # ᾱ_{T-1} = 0 (zero terminal SNR) has σ = ∞: the range then ends at ᾱ = 2^-24 (as diffusers clamps
        # it), which still maps to t = T-1
        a = np.clip(abar, 2.0**-24, 1 - 1e-16)
        log_sigma = 0.5 * (np.log1p(-a) - np.log(a))  # log σ = −λ
        if spacing == "logsnr":
            targets = np.linspace(log_sigma[-1], log_sigma[0], S)
        else:
            u = i / max(S - 1, 1)
            lo, hi = np.exp(log_sigma[0] / KARRAS_RHO), np.exp(log_sigma[-1] / KARRAS_RHO)
            targets = KARRAS_RHO * np.log((1 - u) * hi + u * lo)
        # moving repeats up can overrun T-1 at large S: cap point i at T-1-(S-1-i), which keeps the
        # points strictly increasing; the top is T-1 (with the clamp above several steps tie for it)
        tau = np.minimum(_nearest_steps(log_sigma, targets), T - S + i)
        tau[-1] = T - 1
        return tau
    if spacing == "leading":
        return i * (T // S)
    if spacing == "trailing":
        # Computed from the index, not np.arange(T, 0, -T/S), whose float stride can add an element.
        return (np.round(T - i[::-1] * (T / S)) - 1).astype(np.int64)
    if spacing == "linspace":
        return np.round(np.linspace(0, T - 1, S)).astype(np.int64)
    raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")


def timesteps(schedule_or_T, steps: int, spacing: str = "uniform", offset: int = 0) -> torch.Tensor:
    """The sampling sub-sequence τ, descending.

    Args:
        schedule_or_T: a ``Schedule`` or the number of training steps T.
        steps: S, the number of sampling steps, 1 ≤ S ≤ T.
        spacing: one of ``SPACINGS`` (see the module docstring).
        offset: added to every step (diffusers' ``steps_offset``).
    Returns:
        (S,) int64 tensor, strictly decreasing, within [0, T-1].
    """
    T = _num_train_steps(schedule_or_T)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer with 1 <= steps <= T={T}, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(SPACINGS)}")
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)):
        raise ValueError(f"offset must be an integer, got {offset!r}")
    abar = getattr(schedule_or_T, "alphas_cumprod", None)
    if spacing in NEEDS_SCHEDULE and abar is None:
        raise ValueError(f"spacing {spacing!r} needs the Schedule (its ᾱ), not just T={T}")
    tau = _ascending(T, int(steps), spacing, None if abar is None else abar.double().numpy()) + int(offset)
    return check_timesteps(torch.from_numpy(tau[::-1].copy()), T)


def check_timesteps(tau, T: int) -> torch.Tensor:
    """Validate a user-given grid: 1-D, integer, strictly decreasing, within [0, T-1].

    Returns it as a CPU int64 tensor.
    """
    tau = torch.as_tensor(tau)
    if tau.ndim != 1 or tau.numel() < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(tau.shape)}")
    if tau.is_floating_point() or tau.is_complex() or tau.dtype == torch.bool:
        raise ValueError(f"timesteps must be integers, got dtype {tau.dtype}")
    tau = tau.to(device="cpu", dtype=torch.int64)
    if tau.min() < 0 or tau.max() > T - 1:
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got values in [{tau.min().item()}, {tau.max().item()}]")
    if tau.numel() > 1 and not (tau[1:] < tau[:-1]).all():
        raise ValueError(f"timesteps must be strictly decreasing, got {tau.tolist()[:12]}")
    return tau
