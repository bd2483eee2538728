"""The DDPM training objective, pure: every random draw is either passed in or drawn from a generator.

    L_simple = E_{t, x_0, ε} [ w(t) · ‖target − model(x_t, t, c)‖² ]          (DDPM eq. 14, w = 1)
    t ~ Uniform{0, …, T−1},  ε ~ N(0, I),  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε       (DDPM eq. 4)

target is ε ("epsilon"), x_0 ("sample") or v = √ᾱ ε − √(1−ᾱ) x_0 ("v"). The squared error is averaged
over pixels (not summed), as in the DDPM reference code.

Min-SNR-γ weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"),
with SNR(t) = ᾱ_t / (1 − ᾱ_t): the x_0-loss weight min(SNR, γ) expressed for each target,
    ε-target: min(SNR, γ) / SNR,   v-target: min(SNR, γ) / (SNR + 1),   x_0-target: min(SNR, γ).

Noise levels: t is uniform over {0, …, T−1} (DDPM), or "lognormal": EDM's ln σ ~ N(P_mean, P_std²)
(Karras et al. 2022, Table 1, P_mean = −1.2, P_std = 1.2) mapped to the step whose σ_t = √((1−ᾱ_t)/ᾱ_t) is
nearest in ln σ. With the v-target this is EDM's training recipe on a discrete VP schedule: v-prediction is
EDM's preconditioning (c_skip, c_out, c_in) with σ_data = 1, and EDM's loss weight λ(σ) = 1/c_out² is the
plain (unweighted) v-loss.

Classifier-free guidance (Ho & Salimans 2022) trains the unconditional model jointly: each label is
replaced by the null label ∅ with probability p.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..config import T_SAMPLINGS, check_t_sampling  # noqa: F401  (re-exported: where losses are chosen)
from ..denoiser import network_prediction
from ..forward import PREDICTIONS, abar_at, q_sample, target_from_x0_eps
from ..schedule import Schedule
from ..transfer import to_device

__all__ = ["Draws", "draw", "T_SAMPLINGS", "lognormal_t", "log_sigma_table", "check_t_sampling", "drop_labels",
           "min_snr_weight", "diffusion_loss", "classifier_loss", "training_loss"]


@dataclass(frozen=True)
class Draws:
    """The random part of one training batch.

    t: (B,) int64 training-step indices. eps: (B, C, H, W) float32 noise. drop: (B,) bool, True where
    the label is replaced by ∅.
    """

    t: torch.Tensor
    eps: torch.Tensor
    drop: torch.Tensor

    def shard(self, start: int, stop: int) -> "Draws":
        """The rows [start, stop) of every field (one rank's part of a global batch)."""
        return Draws(self.t[start:stop], self.eps[start:stop], self.drop[start:stop])

    def to(self, device) -> "Draws":
        return Draws(self.t.to(device), self.eps.to(device), self.drop.to(device))


def _check_probability(p: float, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def lognormal_t(log_sigma: torch.Tensor, n: int, generator: torch.Generator, p_mean: float = -1.2,
                p_std: float = 1.2) -> torch.Tensor:
    """EDM's training noise levels on a discrete schedule: ln σ ~ N(P_mean, P_std²) (Karras et al. 2022,
    Table 1), each draw mapped to the step t whose ln σ_t is nearest (draws beyond the schedule's ends go to
    its first or last finite level).

    The high-noise end is trained rarely, as in EDM: on the linear DDPM schedule about 1 % of draws land
    above t = 560 and 1e-4 above t = 800, and under zero terminal SNR the last step (σ = ∞), where a
    trailing grid makes its first model call, is never drawn; use uniform steps for such schedules.

    Args:
        log_sigma: (T,) float64 ln σ_t = −½ ln SNR(t), increasing in t (+inf allowed at a zero-SNR end).
        n: how many levels to draw; generator: the CPU generator they come from.
    Returns:
        (n,) int64 steps in [0, T).
    """
    z = torch.randn(n, generator=generator, dtype=torch.float64) * p_std + p_mean
    T = log_sigma.shape[0]
    if T == 1:
        return torch.zeros(n, dtype=torch.int64)
    hi = torch.searchsorted(log_sigma, z).clamp(1, T - 1)
    nearer_lo = (z - log_sigma[hi - 1]) <= (log_sigma[hi] - z)
    return torch.where(nearer_lo, hi - 1, hi)


def log_sigma_table(schedule: Schedule, t_sampling: str) -> Optional[torch.Tensor]:
    """``draw``'s ``log_sigma`` for a ``t_sampling``: None for "uniform", (T,) float64 ln σ_t = −½ ln SNR(t)
    for "lognormal"."""
    return None if check_t_sampling(t_sampling) == "uniform" else -0.5 * schedule.snr.log()


def draw(shape, num_steps: int, generator: torch.Generator, label_dropout: float = 0.0,
         log_sigma: Optional[torch.Tensor] = None) -> Draws:
    """Draw t, ε and the label-dropout mask for a batch of ``shape`` = (B, C, H, W), in that order.

    t is uniform over [0, num_steps), or, when ``log_sigma`` ((num_steps,) float64 ln σ_t) is given, drawn by
    ``lognormal_t``. The order is fixed so that one generator state always yields the same batch (exact resume).
    """
    p = _check_probability(label_dropout, "label_dropout")
    B = shape[0]
    if log_sigma is None:
        t = torch.randint(0, num_steps, (B,), generator=generator, dtype=torch.int64)
    else:
        if log_sigma.shape != (num_steps,):
            raise ValueError(f"log_sigma must have shape ({num_steps},), got {tuple(log_sigma.shape)}")
        t = lognormal_t(log_sigma, B, generator)
    eps = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    drop = torch.rand(B, generator=generator, dtype=torch.float64) < p
    return Draws(t, eps, drop)


def drop_labels(labels: Optional[torch.Tensor], drop: torch.Tensor, null_label: Optional[int]):
    """Replace labels[i] by ``null_label`` where drop[i] (classifier-free guidance training).

    Args:
        labels: (B,) int64 or None (an unconditional model: returned as is).
        drop: (B,) bool mask.
        null_label: the index meaning ∅; required when any label is dropped.
    """
    if labels is None or not bool(drop.any()):
        return labels
    if null_label is None:
        raise ValueError("label_dropout > 0 needs a model with a null label (class-conditional UNet)")
    return torch.where(to_device(drop, labels.device), torch.full_like(labels, int(null_label)), labels)


def min_snr_weight(snr: torch.Tensor, gamma: Optional[float], prediction: str) -> torch.Tensor:
    """Per-sample loss weight of Min-SNR-γ for the given target; all ones when gamma is None.

    Args:
        snr: (B,) SNR(t) = ᾱ_t / (1 − ᾱ_t), float64 or float32 (may be 0 at zero terminal SNR).
        gamma: γ > 0 (the paper uses 5), or None for the unweighted L_simple.
        prediction: "epsilon", "sample" or "v".
    Returns:
        (B,) weights, same dtype as snr.
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    if gamma is None:
        return torch.ones_like(snr)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"min_snr_gamma must be a finite number > 0 (or None), got {gamma!r}")
    clipped = snr.clamp(max=gamma)
    if prediction == "epsilon":
        # min(SNR, γ)/SNR written as min(1, γ/SNR) so that SNR = 0 gives 1, not 0/0.
        return (gamma / snr).clamp(max=1.0)
    if prediction == "v":
        return clipped / (snr + 1)
    return clipped


def _call_model(model: Callable, x_t: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]):
    out = model(x_t, t) if labels is None else model(x_t, t, labels)
    if out.shape != x_t.shape:
        raise ValueError(f"model output has shape {tuple(out.shape)}, expected {tuple(x_t.shape)}")
    return out


def classifier_loss(classifier: Callable, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                    labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a noisy classifier p_φ(y | x_t, t) on x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε (DDPM eq. 4's
    q(x_t | x_0)); arguments as in ``diffusion_loss``, labels required. Returns the scalar float32 batch mean."""
    abar = abar_at(schedule.alphas_cumprod, t, x0)
    logits = classifier(q_sample(x0, abar, eps), to_device(t, x0.device))
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def diffusion_loss(model: Callable, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
                   labels: Optional[torch.Tensor] = None, prediction: Optional[str] = None,
                   min_snr_gamma: Optional[float] = None) -> torch.Tensor:
    """The (weighted) L_simple for given draws; differentiable w.r.t. the model's parameters.

    Args:
        model: ``model(x_t, t)`` or, with labels, ``model(x_t, t, labels)``; output shaped like x_t.
        schedule: the training schedule (ᾱ_t is read from it).
        x0: (B, C, H, W) clean images in [-1, 1].
        t: (B,) int64 steps in [0, T).
        eps: (B, C, H, W) noise.
        labels: (B,) int64 class labels (after any dropout), or None.
        prediction: the target, "epsilon", "sample" or "v"; None: the model's own
            (``ddim.denoiser.network_prediction``: a loaded checkpoint's), else ε.
        min_snr_gamma: γ of Min-SNR-γ weighting, or None.
    Returns:
        scalar float32 loss: the batch mean of w(t) · mean-over-pixels squared error.
    """
    prediction = network_prediction(model, prediction)  # a loaded v-network is not trained on ε targets
    abar = abar_at(schedule.alphas_cumprod, t, x0)  # (B, 1, 1, 1) in x0's dtype
    x_t = q_sample(x0, abar, eps)
    target = target_from_x0_eps(x0, eps, abar, prediction)
    out = _call_model(model, x_t, to_device(t, x0.device), labels)
    # The error is computed in float32 even when the forward ran under bf16 autocast.
    per_sample = (target.float() - out.float()).pow(2).flatten(1).mean(1)
    if min_snr_gamma is None:
        return per_sample.mean()
    snr = to_device(schedule.snr, x0.device)[to_device(t, x0.device)]
    return (min_snr_weight(snr, min_snr_gamma, prediction).float() * per_sample).mean()


def training_loss(model: Callable, schedule: Schedule, x0: torch.Tensor, labels: Optional[torch.Tensor] = None,
                  *, generator: torch.Generator, prediction: Optional[str] = None,
                  min_snr_gamma: Optional[float] = None, label_dropout: float = 0.0,
                  null_label: Optional[int] = None, t_sampling: str = "uniform") -> torch.Tensor:
    """Draw (t, ε, dropout) from ``generator`` (on the CPU; t as ``t_sampling`` says) and return
    ``diffusion_loss`` for them.

    ``null_label`` defaults to ``model.null_label`` when the model has one.
    """
    d = draw(x0.shape, schedule.num_steps, generator, label_dropout if labels is not None else 0.0,
             log_sigma_table(schedule, t_sampling))
    if null_label is None:
        null_label = getattr(getattr(model, "module", model), "null_label", None)  # through a DDP wrapper
    labels = drop_labels(labels, d.drop, null_label)
    return diffusion_loss(model, schedule, x0, d.t, to_device(d.eps, x0.device).to(x0.dtype), labels, prediction,
                          min_snr_gamma)
