"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper, so samplers never see classes.

Convention used here (the paper's, eq. 6): with guidance weight w ≥ 0,

    ε̂(x, t, c) = (1 + w) ε(x, t, c) − w ε(x, t, ∅)

w = 0 is the plain conditional model. Other libraries (diffusers, Imagen) write the same thing with a
"guidance scale" s = 1 + w:  ε̂ = ε(∅) + s (ε(c) − ε(∅)). Pass ``scale=s`` to use that convention.
The combination is linear, so it is equally valid for ε-, x_0- and v-prediction models.

Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed",
§3.4, eqs. 15-16): large w inflates the guided output's scale; with φ ∈ [0, 1]

    ε̂_rescaled = ε̂ · std(ε(c)) / std(ε̂),    ε̂_final = φ ε̂_rescaled + (1 − φ) ε̂

per sample (std over all of a sample's dimensions), applied to the model's output whatever its
prediction type, as diffusers' ``guidance_rescale`` does (the paper's φ = 0.7).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

__all__ = ["ClassifierFreeGuidance", "guidance_weight", "check_rescale", "rescale_guided"]


def guidance_weight(w: Optional[float] = None, scale: Optional[float] = None) -> float:
    """The weight w of eq. 6 from either convention (w, or s = 1 + w)."""
    if (w is None) == (scale is None):
        raise ValueError("give exactly one of w (ε̂ = (1+w)ε_c − wε_∅) or scale (ε̂ = ε_∅ + s(ε_c − ε_∅))")
    value = w if w is not None else scale - 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"guidance weight must be a finite number, got w={w!r}, scale={scale!r}")
    return float(value)


def check_rescale(phi) -> float:
    """φ of guidance rescale as a float in [0, 1], or a ValueError naming the value."""
    if isinstance(phi, bool) or not isinstance(phi, (int, float)) or not 0 <= phi <= 1:
        raise ValueError(f"guidance rescale must be a number in [0, 1], got {phi!r}")
    return float(phi)


def rescale_guided(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """φ · guided · std(cond)/std(guided) + (1 − φ) · guided, stds per sample (Lin et al. 2023, eqs. 15-16).

    Args:
        guided, cond: (B, …) the guided output and the conditional branch's.
    """
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1 - phi) * guided


class ClassifierFreeGuidance(nn.Module):
    """Wrap a conditional model ``model(x_t, t, labels)`` into a guided ``model(x_t, t)``.

    Both branches run as one batched forward of size 2B (conditional first, then ∅).

    Args:
        model: conditional denoiser; ``model(x, t, labels)`` with labels (B,) int64.
        labels: (B,) class indices of the samples to generate.
        w: guidance weight of eq. 6 (or give ``scale`` = 1 + w).
        null_label: the label index meaning ∅ (unconditional); defaults to ``model.null_label``.
        rescale: φ of guidance rescale (module docstring), 0 (off) to 1.
    """

    def __init__(self, model, labels: torch.Tensor, w: Optional[float] = None, scale: Optional[float] = None,
                 null_label: Optional[int] = None, rescale: float = 0.0):
        super().__init__()
        self.model = model
        self.w = guidance_weight(w, scale)
        self.rescale = check_rescale(rescale)
        if null_label is None:
            null_label = getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError("null_label is needed: the model has no .null_label attribute")
        self.null_label = int(null_label)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
        self.register_buffer("labels", labels, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.labels.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} samples but {self.labels.shape[0]} labels")
        labels = self.labels.to(x.device)
        if self.w == 0:
            return self.model(x, t, labels)
        null = torch.full_like(labels, self.null_label)
        both = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        # At least float32 for the combination: under autocast the model answers in bf16, and
        # cond − uncond (a small difference of large values) times w would keep ~3 significant digits.
        cond, uncond = both.to(torch.promote_types(both.dtype, torch.float32)).chunk(2)
        guided = cond + self.w * (cond - uncond)  # = (1 + w) cond − w uncond
        return rescale_guided(guided, cond, self.rescale) if self.rescale else guided
