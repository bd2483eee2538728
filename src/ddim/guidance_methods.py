"""Guidance beyond plain classifier-free guidance, as Denoisers around two branches of predictions.

Every method reads two predictions at (x_t, t), the conditional one c and the one guidance pushes away from
u (the same network's ∅ branch, in one batched forward; for autoguidance a worse conditional network), as
(x̂_0, ε̂) through the ``Denoiser``, and returns the (x̂_0, ε̂) the solver steps with. With w the guidance weight
(ε̂ = (1 + w) ε_c − w ε_u for plain CFG, Ho & Salimans eq. 6):

    cfg       plain classifier-free guidance
    interval  CFG only where the noise level σ = √((1 − ᾱ)/ᾱ) lies in (σ_lo, σ_hi], the conditional
              prediction alone elsewhere, without the second forward there (Kynkäänniemi et al. 2024, §3)
    apg       adaptive projected guidance (Sadat et al. 2025, Algorithm 1) on x̂_0: Δ = x̂_0^c − x̂_0^u, with
              reverse momentum Δ ← Δ + β Δ_prev (β < 0), capped at ‖Δ‖ ≤ r per sample, split into the part
              parallel to x̂_0^c and the orthogonal rest; x̂_0 = x̂_0^c + w (Δ_⊥ + η Δ_∥), ε̂ re-derived from it
    cfgpp     CFG++ (Chung et al. 2024, eq. 12): x̂_0 from ε̂_u + λ (ε̂_c − ε̂_u), λ ∈ [0, 1], but the
              direction back to the noise level from the unconditional ε̂_u: the pair is not one prediction
    auto      autoguidance (Karras et al. 2024, eq. 2): plain CFG's formula with u a smaller or less trained
              version of the conditional network on the same labels, D = D_bad + (1 + w)(D_good − D_bad)

A pair (x̂_0, ε̂) that is one prediction (every method but cfgpp) is read by every solver alike; cfgpp's
split pair is what DDIM's step (x̂_0 then ε̂) is built for, so cfgpp runs with DDIM's step only (``ddim``, and
``pc`` with its DDIM predictor; a solver reading x̂_0 or ε̂ alone would see plain CFG at weight λ − 1, or no
guidance at all), and a clipped x̂_0 keeps the unconditional ε̂.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch

from .denoiser import Denoiser, network_prediction
from .forward import eps_from_x0, x0_from_eps
from .guidance import (GuidanceOptions, MethodOptions, check_rescale, check_student_guidance, guided_combination,
                       in_interval, rescale_guided)
from .schedule import Schedule

__all__ = ["GuidedDenoiser", "guided_denoiser", "apg_update", "cfgpp_pair"]

# branches(x_t, t, both) -> (conditional raw prediction, the other branch's, or None when not ``both``)
Branches = Callable[[torch.Tensor, torch.Tensor, bool], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def apg_update(x0_c: torch.Tensor, x0_u: torch.Tensor, w: float, eta: float, norm_cap: float,
               avg: Optional[torch.Tensor], momentum: float):
    """Adaptive projected guidance on x̂_0 (Sadat et al. 2025, Algorithm 1, in the convention x̂_0 = x̂_0^c + w Δ'
    of plain CFG's (1 + w) c − w u).

    Args:
        x0_c, x0_u: (B, …) the conditional and the other branch's x̂_0.
        avg: the previous step's (momentum-averaged) Δ, or None at the first step.
    Returns:
        (guided x̂_0 (B, …), the Δ to carry to the next step).
    """
    delta = x0_c - x0_u
    if momentum and avg is not None:
        delta = delta + momentum * avg
    dims = tuple(range(1, delta.ndim))
    if math.isfinite(norm_cap):
        norm = delta.pow(2).sum(dims, keepdim=True).sqrt()
        delta = delta * torch.clamp(norm_cap / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
    unit = x0_c / x0_c.pow(2).sum(dims, keepdim=True).sqrt().clamp_min(torch.finfo(x0_c.dtype).tiny)
    parallel = (delta * unit).sum(dims, keepdim=True) * unit
    return x0_c + w * ((delta - parallel) + eta * parallel), delta


def cfgpp_pair(x: torch.Tensor, eps_c: torch.Tensor, eps_u: torch.Tensor, abar, lam: float):
    """CFG++'s (x̂_0, ε̂): x̂_0 from ε̂_u + λ (ε̂_c − ε̂_u) (DDIM eq. 9), ε̂ = ε̂_u (Chung et al. 2024, eq. 12).
    x, eps_c, eps_u: (B, …); abar: ᾱ_t broadcasting against them; λ ∈ [0, 1]."""
    return x0_from_eps(x, eps_u + lam * (eps_c - eps_u), abar), eps_u


class GuidedDenoiser(Denoiser):
    """A guidance method (module docstring) as a ``Denoiser``.

    Args:
        branches: ``branches(x_t, t, both)`` -> (c, u): the two raw predictions (u None when ``both`` is
            False: then only the conditional forward runs).
        schedule, prediction, io_dtype: as in ``Denoiser``, shared by both branches.
        w: the guidance weight (CFG++: its λ in [0, 1]).
        options: the method and its parameters.
    """

    def __init__(self, branches: Branches, schedule: Schedule, prediction: str, w: float,
                 options: MethodOptions = MethodOptions(), io_dtype: Optional[torch.dtype] = None,
                 rescale: float = 0.0):
        super().__init__(lambda x, t: self._raw(x, t), schedule, prediction, io_dtype)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance weight w must be a finite number >= 0, got {w!r}")
        if options.method == "cfgpp" and not w <= 1:
            raise ValueError(f"CFG++'s λ (the guidance weight of --guidance-method cfgpp) must lie in [0, 1], got {w}")
        self.branches, self.w, self.options, self.rescale = branches, float(w), options, check_rescale(rescale)
        self._avg: Optional[torch.Tensor] = None

    def start_run(self) -> None:
        """Forget the previous run's momentum (called by the loop before step 0)."""
        self._avg = None

    @property
    def split_pair(self) -> bool:
        return self.options.method == "cfgpp"

    @property
    def graph_safe(self) -> bool:
        """APG's momentum is state, and the interval is decided on the host: neither fits a captured graph."""
        return not (self.options.stateful or self.options.method == "interval")

    def _guides_here(self, abar_t) -> bool:
        """Whether the interval method guides at ᾱ_t. Read on the host: on the CPU that is free, and on CUDA
        a captured loop would bake the choice in (``interval`` is refused by the graph path)."""
        a = float(abar_t.reshape(-1)[0]) if torch.is_tensor(abar_t) else float(abar_t)
        return bool(in_interval(a, self.options.interval))

    def denoise(self, x, t, abar_t=None, io_dtype=None):
        o, io = self.options, self.io_dtype or io_dtype or x.dtype
        if abar_t is None:
            from .forward import abar_at

            abar_t = abar_at(self.schedule.alphas_cumprod, t, x)
        # CFG++ reads both branches at any λ (λ = 0: the unconditional pair); the others' strength 0 is the
        # conditional prediction alone
        both = (self.w > 0 or o.method == "cfgpp") and (o.method != "interval" or self._guides_here(abar_t))
        c, u = self.branches(x.to(io), t, both)
        x0_c, eps_c = self.read(c.to(x.dtype), x, abar_t)
        if not both:
            return x0_c, eps_c
        x0_u, eps_u = self.read(u.to(x.dtype), x, abar_t)
        if o.method == "cfgpp":
            return cfgpp_pair(x, eps_c, eps_u, abar_t, self.w)
        if o.method == "apg":
            x0, self._avg = apg_update(x0_c, x0_u, self.w, o.apg_eta, o.apg_norm_cap, self._avg, o.apg_momentum)
            return x0, eps_from_x0(x, x0, abar_t)
        # cfg, interval (inside), auto: the linear combination, the same for x̂_0 and ε̂ (one prediction)
        eps = guided_combination(eps_c, eps_u, self.w)
        if self.rescale:  # Lin et al.'s rescale on ε̂, x̂_0 re-derived so the pair stays one prediction
            eps = rescale_guided(eps, eps_c, self.rescale)
            return x0_from_eps(x, eps, abar_t), eps
        return guided_combination(x0_c, x0_u, self.w), eps

    def _raw(self, x, t):
        raise ValueError("a guided denoiser of --guidance-method "
                         f"{self.options.method!r} is read through denoise(); it has no single raw prediction")


def guided_denoiser(model, schedule: Schedule, prediction: Optional[str], labels: torch.Tensor,
                    guidance: GuidanceOptions) -> GuidedDenoiser:
    """The ``GuidedDenoiser`` of ``guidance.method`` for a class-conditional network ``model`` on ``labels`` (B,):
    its ∅ branch batched with the conditional one in one forward of 2B, or for autoguidance ``guidance.guide``'s
    conditional prediction on the same labels."""
    check_student_guidance(model, guidance.method.method)  # a student has no ∅ branch to guide with
    prediction = network_prediction(model, prediction)
    if guidance.guide is not None:
        network_prediction(guidance.guide, prediction)  # a guide that declares another prediction is refused
    null, guide = model.null_label, guidance.guide

    def branches(x, t, both):
        lab = labels.to(x.device)
        if not both:
            return model(x, t, lab), None
        if guide is not None:
            return model(x, t, lab), guide(x, t, lab)
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([lab, torch.full_like(lab, null)]))
        return out.chunk(2)

    return GuidedDenoiser(branches, schedule, prediction, guidance.w, guidance.method, rescale=guidance.rescale)
