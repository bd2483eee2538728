"""Guidance as model wrappers, so samplers never see classes: classifier-free guidance (Ho & Salimans
2022) and classifier guidance (Dhariwal & Nichol 2021; ``ClassifierGuidance`` at the end).

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

A guidance-distilled student (``ddim distill``; Meng et al. 2023, "On Distillation of Guided Diffusion
Models", §4.1) has learnt ε̂_w ≈ (1 + w) ε(c) − w ε(∅) as one network that takes w as an input
(``UNetConfig.guidance_embed``): ``GuidanceInput`` binds its labels and w, one forward per step. It has no
second (∅) branch to guide with, so classifier-free guidance and the other methods refuse it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
from torch import nn

from .checks import check_interval
from .denoiser import Denoiser, network_prediction

__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "GuidanceInput", "GuidanceOptions", "MethodOptions",
           "in_interval", "GUIDANCE_METHODS", "guidance_weight", "check_rescale", "guided_combination",
           "rescale_guided", "takes_guidance", "check_student_guidance"]


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


def guided_combination(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """(1 + w) cond − w uncond (Ho & Salimans eq. 6), as cond + w (cond − uncond): the difference first keeps
    its digits. cond, uncond: (B, …) predictions of any one type (the combination is linear)."""
    return cond + w * (cond - uncond)


def rescale_guided(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """φ · guided · std(cond)/std(guided) + (1 − φ) · guided, stds per sample (Lin et al. 2023, eqs. 15-16).

    Args:
        guided, cond: (B, …) the guided output and the conditional branch's.
    """
    dims = tuple(range(1, guided.ndim))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)
    return phi * guided * ratio + (1 - phi) * guided


GUIDANCE_METHODS = ("cfg", "interval", "apg", "cfgpp", "auto")

@dataclass(frozen=True)
class MethodOptions:
    """Which guidance method, and its own parameters (``ddim.guidance_methods`` has the methods' math).

    Attributes:
        method: one of ``GUIDANCE_METHODS``.
        interval: (σ_lo, σ_hi) of ``interval``, EDM's σ = √((1 − ᾱ)/ᾱ): guidance where σ_lo < σ ≤ σ_hi.
        apg_eta: η, the weight of Δ's part parallel to x̂_0^c (``apg``; 0 drops it, 1 keeps it).
        apg_norm_cap: r, the largest per-sample norm of Δ (``apg``; inf: no cap).
        apg_momentum: β of the reverse momentum (``apg``; 0: none; the default −0.5 is the paper's kind and the
            one the guidance sweep measured, docs/results.md).
    """

    method: str = "cfg"
    interval: Tuple[float, float] = (0.28, 5.42)
    apg_eta: float = 0.0
    apg_norm_cap: float = math.inf
    apg_momentum: float = -0.5

    def __post_init__(self) -> None:
        if self.method not in GUIDANCE_METHODS:
            raise ValueError(f"unknown guidance method {self.method!r}; allowed: {', '.join(GUIDANCE_METHODS)}")
        object.__setattr__(self, "interval", check_interval(self.interval))
        for name, v, ok in (("apg_eta", self.apg_eta, lambda v: 0 <= v <= 1),
                            ("apg_norm_cap", self.apg_norm_cap, lambda v: v > 0),
                            ("apg_momentum", self.apg_momentum, lambda v: -1 < v < 1)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not ok(v):
                raise ValueError(f"{name} must be a number in {_RANGES[name]}, got {v!r}")

    @property
    def label(self) -> str:
        """The method and the parameters it reads, as one short string ("cfg", "interval(0.28,5.42)", ...):
        what a result was drawn with."""
        if self.method == "interval":
            return f"interval({self.interval[0]:g},{self.interval[1]:g})"
        if self.method == "apg":
            return f"apg(eta={self.apg_eta:g},r={self.apg_norm_cap:g},beta={self.apg_momentum:g})"
        return self.method

    @property
    def stateful(self) -> bool:
        """Whether a run carries state between steps (APG's momentum): such a run cannot be one captured graph."""
        return self.method == "apg" and self.apg_momentum != 0


_RANGES = {"apg_eta": "[0, 1]", "apg_norm_cap": "(0, inf]", "apg_momentum": "(-1, 1)"}


def in_interval(abar, interval: Tuple[float, float]) -> torch.Tensor:
    """Whether each noise level lies in the guidance interval (σ_lo, σ_hi] (Kynkäänniemi et al. 2024, §3), with
    EDM's σ = √((1 − ᾱ)/ᾱ) (ᾱ = 0: σ = ∞). abar: ᾱ, a float or a tensor of any shape -> bool tensor of its shape."""
    abar = torch.as_tensor(abar, dtype=torch.float64)
    sigma = ((1 - abar) / abar).sqrt()
    lo, hi = interval
    return (sigma > lo) & (sigma <= hi)


@dataclass(frozen=True)
class GuidanceOptions:
    """Which class each sample is drawn toward, and how (``ddim.generate`` and the code built on it).

    Attributes:
        class_id: every sample of this class; None: sample i of a class-conditional network gets class
            i mod K (so a grid shows every class), an unconditional one none.
        w: classifier-free guidance weight of eq. 6, ε̂ = (1 + w) ε_c − w ε_∅ (0: plain conditional sampling).
        rescale: φ of guidance rescale (Lin et al. 2023), 0 (off) to 1.
        classifier: a noisy classifier ``classifier(x_t, t)`` -> (B, K) logits for classifier guidance, or None.
        classifier_scale: its scale s ≥ 0 (0: off); with ``w`` the two guidances add up.
        method: the guidance method and its parameters (``MethodOptions``; plain CFG by default). ``w`` is its
            strength (CFG++: λ ∈ [0, 1]).
        guide: autoguidance's worse conditional network (``method.method == "auto"``), or None.
    """

    class_id: Optional[int] = None
    w: float = 0.0
    rescale: float = 0.0
    classifier: Optional[nn.Module] = field(default=None, repr=False)
    classifier_scale: float = 0.0
    method: MethodOptions = field(default_factory=MethodOptions)
    guide: Optional[nn.Module] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.class_id is not None and (isinstance(self.class_id, bool) or not isinstance(self.class_id, int)):
            raise ValueError(f"class_id must be an integer class index or None, got {self.class_id!r}")
        for name in ("w", "classifier_scale"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"guidance {name} must be a finite number >= 0, got {v!r}")
        check_rescale(self.rescale)
        if self.classifier_scale and self.classifier is None:
            raise ValueError(f"classifier scale {self.classifier_scale!r} needs a classifier")
        for name in ("classifier", "guide"):  # networks: called at every step, so checked here, not there
            v = getattr(self, name)
            if v is not None and not callable(v):
                raise ValueError(f"{name} must be a network (callable), got {type(v).__name__}")
        if not isinstance(self.method, MethodOptions):
            raise ValueError(f"method must be a MethodOptions, got {type(self.method).__name__}")
        m = self.method.method
        if (m == "auto") != (self.guide is not None):
            raise ValueError("autoguidance (method 'auto') takes a guide network, and only it does" if m == "auto"
                             else f"a guide network is for method 'auto', not {m!r}")
        if m == "cfgpp" and self.w > 1:
            raise ValueError(f"CFG++'s λ (the guidance weight of method 'cfgpp') must lie in [0, 1], got {self.w}")
        if self.rescale and m in ("apg", "cfgpp"):
            raise ValueError(f"guidance rescale applies to methods cfg, interval and auto (got {m!r}, whose own "
                             "rule sets the update's size)")


def class_indices(labels) -> torch.Tensor:
    """``labels`` as int64 class indices; floats or bools are refused (a cast would turn 2.7 into class 2
    silently), as the UNet itself refuses them."""
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return labels.to(torch.int64)


def takes_guidance(model) -> bool:
    """Whether ``model`` takes the guidance weight w as an input: a guidance-distilled student
    (``UNetConfig.guidance_embed``)."""
    return getattr(getattr(model, "config", None), "guidance_embed", False) is True


def check_student_guidance(model, method: str = "cfg", rescale: float = 0.0) -> None:
    """Refuse, for a guidance-distilled ``model``, what needs its conditional and ∅ predictions apart: a guidance
    method other than cfg (whose w it takes as an input), or guidance rescale. Nothing for other models."""
    if not takes_guidance(model):
        return
    if method != "cfg":
        raise ValueError(f"guidance method {method!r} needs a second (∅) forward; this model is a guidance-distilled "
                         "student (`ddim distill`) that takes w as an input of its one forward: use method cfg")
    if rescale:
        raise ValueError("guidance rescale needs the conditional and the guided outputs apart; this distilled model "
                         "takes w as an input and gives only the guided one (use --guidance-rescale 0)")


class GuidanceInput(nn.Module):
    """A guidance-distilled network ``model(x_t, t, labels, w=w)`` (``UNetConfig.guidance_embed``) as a guided
    ``model(x_t, t)``: its labels and w bound, one forward of B per step (w = 0: the conditional prediction).

    Args:
        model: the student. labels: (B,) class indices (read in place: a caller may overwrite them between
            batches). w: the guidance weight of eq. 6 it was trained to take.
    """

    passes_prediction = True  # its output means what the wrapped model's means (ddim.denoiser)

    def __init__(self, model, labels: torch.Tensor, w: float = 0.0):
        super().__init__()
        if not takes_guidance(model):
            raise ValueError("GuidanceInput is for a guidance-distilled network (config.guidance_embed); guide "
                             "others with ClassifierFreeGuidance")
        self.model = model
        labels = class_indices(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
        self.register_buffer("labels", labels, persistent=False)
        # a tensor where the labels are, so that a captured CUDA graph copies nothing from the host per step
        self.register_buffer("w", torch.tensor(guidance_weight(w), device=labels.device), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.labels.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} samples but {self.labels.shape[0]} labels")
        return self.model(x, t, self.labels.to(x.device), w=self.w.to(x.device))


class ClassifierFreeGuidance(nn.Module):
    """Wrap a conditional model ``model(x_t, t, labels)`` into a guided ``model(x_t, t)``.

    Both branches run as one batched forward of size 2B (conditional first, then ∅).

    Args:
        model: conditional denoiser; ``model(x, t, labels)`` with labels (B,) int64.
        labels: (B,) class indices of the samples to generate.
        w: guidance weight of eq. 6 (or give ``scale`` = 1 + w).
        null_label: the label index meaning ∅ (unconditional); defaults to ``model.null_label``.
        rescale: φ of guidance rescale (module docstring), 0 (off) to 1.
        embeddings: (cond (B, E), ∅ (B, E)) label embeddings used in place of ``labels`` and the null label's
            rows of the model's table (``model`` then takes ``label_emb``; guided inversion optimises ∅).
    """

    passes_prediction = True  # its output means what the wrapped model's means (ddim.denoiser)

    def __init__(self, model, labels: torch.Tensor, w: Optional[float] = None, scale: Optional[float] = None,
                 null_label: Optional[int] = None, rescale: float = 0.0, embeddings=None):
        super().__init__()
        self.model = model
        self.w = guidance_weight(w, scale)
        self.rescale = check_rescale(rescale)
        if self.w and takes_guidance(model):  # its ∅ branch would guide a prediction already guided
            raise ValueError("this model is a guidance-distilled student (`ddim distill`): it takes w as an input of "
                             "its one forward (ddim.guidance.GuidanceInput), not a second (∅) forward")
        if null_label is None:
            null_label = getattr(model, "null_label", None)
        if null_label is None:
            raise ValueError("null_label is needed: the model has no .null_label attribute")
        self.null_label = int(null_label)
        labels = class_indices(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
        self.register_buffer("labels", labels, persistent=False)
        self.embeddings = embeddings  # (cond (B, E), ∅ (B, E)) label embeddings in place of the table's rows

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != self.labels.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} samples but {self.labels.shape[0]} labels")
        if self.embeddings is not None:  # guided inversion: the null embedding is what it optimises
            cond, null = self.embeddings
            branch = lambda x, t, which: self.model(x, t, label_emb=which)  # noqa: E731
        else:
            cond = self.labels.to(x.device)
            null = torch.full_like(cond, self.null_label)
            branch = self.model
        if self.w == 0:
            return branch(x, t, cond)
        both = branch(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))
        # At least float32 for the combination: under autocast the model answers in bf16, and
        # cond − uncond (a small difference of large values) times w would keep ~3 significant digits;
        # with embeddings (guided inversion's float64 chain) in their dtype, as the chain runs.
        work = torch.promote_types(both.dtype, torch.float32 if self.embeddings is None else cond.dtype)
        c, u = both.to(torch.promote_types(work, torch.float32)).chunk(2)
        guided = guided_combination(c, u, self.w)
        return rescale_guided(guided, c, self.rescale) if self.rescale else guided


class ClassifierGuidance(nn.Module):
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2 in ε form; Song et al. 2021 eq. 14):
    wrap ``model(x_t, t)`` into a ``model(x_t, t)`` whose ε̂ follows ∇ log p(x_t) + s ∇ log p_φ(y | x_t):

        ε̂' = ε̂(x_t, t) − s √(1 − ᾱ_t) ∇ₓ log p_φ(y | x_t, t)

    The output keeps the model's prediction type (x̂_0 and v are re-derived from ε̂'), so any sampler
    reads it as it reads the model. ``model`` may itself be guided (``ClassifierFreeGuidance``), or be
    a conditional model with its labels bound: the two guidances then add up.

    Args:
        model: ``model(x_t, t)`` returning its prediction. classifier: ``classifier(x_t, t)`` -> (B, K) logits
            of a noisy classifier trained on the same schedule (``ddim train-classifier``).
        labels: (B,) the classes y to guide towards. scale: s ≥ 0 (0: the model itself; 1: the posterior
            p(x_t | y) exactly, for an exact classifier and score).
        schedule: the ``ddim.Schedule`` both were trained with (ᾱ_t). prediction: the model's target (None:
            its own, ``ddim.denoiser.network_prediction``).
    The gradient is taken in float32 or wider with autograd enabled, also under ``torch.inference_mode``.
    """

    passes_prediction = True  # its output means what the wrapped model's means (ddim.denoiser)

    def __init__(self, model, classifier, labels: torch.Tensor, scale: float, schedule,
                 prediction: Optional[str] = None):
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
            raise ValueError(f"classifier scale must be a finite number >= 0, got {scale!r}")
        prediction = network_prediction(model, prediction)  # None: the model's own
        labels = class_indices(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
        k = getattr(getattr(classifier, "config", None), "num_classes", None)
        if k is not None and labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < k):
            raise ValueError(f"labels must lie in [0, {k - 1}] for a classifier of {k} classes, got values in "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        self.model, self.classifier, self.scale = model, classifier, float(scale)
        self.prediction = prediction
        self.denoiser = Denoiser(model, schedule, prediction)  # reads the model's ε̂ (and x̂_0) at x_t
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("alphas_cumprod", schedule.alphas_cumprod.clone(), persistent=False)

    def log_prob_grad(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∇ₓ log p_φ(y | x_t, t) for the bound labels: (B, …) in x's dtype (at least float32)."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        # a fresh leaf outside inference mode: x may be an inference tensor, which autograd cannot record
        with torch.inference_mode(False), torch.enable_grad():
            xg = x.detach().clone().to(dtype).requires_grad_(True)
            logits = self.classifier(xg, t.clone())
            labels = self.labels.to(x.device).clone()  # not an inference tensor, whatever mode built the buffer
            picked = torch.log_softmax(logits.to(dtype), dim=-1).gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, xg)
        return grad

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from .forward import target_from_x0_eps, x0_from_eps

        if x.shape[0] != self.labels.shape[0]:
            raise ValueError(f"batch of {x.shape[0]} samples but {self.labels.shape[0]} labels")
        if self.scale == 0:
            return self.model(x, t)
        work = torch.promote_types(x.dtype, torch.float32)
        xw = x.to(work)
        abar = self.alphas_cumprod.to(x.device, work)[t].view(-1, *([1] * (x.ndim - 1)))
        x0, eps = self.denoiser.denoise(xw, t, abar, io_dtype=x.dtype)
        shifted = eps - self.scale * (1 - abar).sqrt() * self.log_prob_grad(x, t).to(work)
        guided = target_from_x0_eps(x0_from_eps(xw, shifted, abar), shifted, abar, self.prediction)
        # at ᾱ_t = 0 (zero terminal SNR) x̂_0 = (x − ε̂)/0: the x_0- and v-outputs cannot carry the shift there,
        # and the model's own prediction is returned (the round trip through (x̂_0, ε̂) gives it back exactly)
        return torch.where(abar > 0, guided, target_from_x0_eps(x0, eps, abar, self.prediction)).to(x.dtype)
