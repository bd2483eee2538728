"""Inversion that survives classifier-free guidance: x_0 -> what the guided sampler needs to give x_0 back.

Plain DDIM inversion (``ddim.invert``) runs the η = 0 ODE backwards with the conditional model; sampling
it back under guidance weight w > 0 drifts, because the guided ε̂ differs from the one inverted with and
the error accumulates over the steps. The methods here, for a class-conditional network with a null
label ∅ (ε̂_w = (1 + w) ε(x, c) − w ε(x, ∅), Ho & Salimans eq. 6):

    ddim            conditional DDIM inversion; regenerated under guidance w (the baseline that fails)
    null-label      null-text inversion (Mokady et al. 2022) for class labels: the conditional inversion's
                    trajectory z*_t is the pivot; from T down, per step, Adam optimises only the null
                    embedding ∅_t so that the guided step from z̄_t lands on z*_{t−1} (early stop on the
                    step's loss); the sampler then uses ∅_t at step t
    negative-label  negative-prompt inversion (Miyake et al. 2023): the conditional embedding stands in
                    for ∅ at regeneration, so ε̂_w = ε(x, c) whatever w; training-free
    ddpm            edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2023): for η > 0, draw each
                    x_t from q(x_t | x_0) independently, then keep the noise terms n_t = x_{t−1} − μ_w(x_t)
                    that make the η-sampler (DDIM eq. 12 under guidance w) land exactly on them; x_0 comes
                    back to float precision, and an edit keeps n_t while changing the class
    edict           EDICT (Wallace et al. 2022): two coupled DDIM chains with mixing p, invertible in closed
                    form, so x_0 comes back to float precision at any S and w (2 guided calls per step)
    cfgpp           CFG++ (Chung et al. 2024): sampling reads x̂_0 from ε̂_u + λ (ε̂_c − ε̂_u), λ = w ∈ [0, 1], and
                    steps on with the unconditional ε̂_u, so inversion reads x̂_0 with ε̂_u and goes up with
                    the guided ε̂: the guided sampler's own inverse, training-free, one batched call per step

Every method returns an ``Inversion``; ``regenerate(model, schedule, inv, labels, w)`` samples it back
(with other labels: an edit). Every step reads the network through one ``ddim.Denoiser`` around
``ddim.ClassifierFreeGuidance`` on label embeddings, and takes the samplers' own η-step and inverse step. The chains run in float64 (the network in its own dtype), so "float
precision" here is about 1e-12, well under the 1e-6 reconstruction target.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields, replace
from typing import Optional

import torch

from .checks import check_finite_result, check_images, check_int, check_labels, check_number
from .denoiser import Denoiser, network_prediction
from .forward import x0_from_eps
from .guidance import ClassifierFreeGuidance, guided_combination
from .guidance_methods import cfgpp_pair
from .noise import Generators, randn
from .samplers import ddim_invert_step, ddim_step, plan
from .samplers.steps import euler_coefficients
from .samplers.options import grid_tuple
from .schedule import Schedule

__all__ = ["METHODS", "InversionOptions", "Inversion", "invert_image", "regenerate", "edict_coefficients"]

METHODS = ("ddim", "null-label", "negative-label", "ddpm", "edict", "cfgpp")


@dataclass(frozen=True)
class InversionOptions:
    """How an image is inverted, beyond the method and the guidance weight (``invert_image``'s keywords).

    Attributes:
        steps, spacing: the grid (``ddim.timesteps``), or ``timesteps``: an explicit descending one (e.g.
            ``ddim.edit.edit_timesteps``'s low-noise part, for an edit of strength < 1).
        prediction: the network's target; None: the network's own (``ddim.denoiser.network_prediction``).
        eta: η of the ddpm method (> 0). mix: EDICT's p in (0, 1).
        null_iters, null_lr, null_tol: null-label's Adam iterations per step, its learning rate, and the
            early-stop threshold on the step's loss (null-text inversion's 10, 1e-2 and 1e-5, the threshold
            growing by 2·null_tol per step as there; 0: never stop early).
        null_init: where null-label's optimisation starts at step T: "cond" (the image's class embedding,
            where Miyake et al. 2023 find the optimum lies) or "null" (the ∅ row, as null-text inversion
            starts from the empty prompt).
    """

    steps: int = 50
    spacing: str = "uniform"
    prediction: Optional[str] = None
    eta: float = 1.0
    mix: float = 0.93
    null_iters: int = 10
    null_lr: float = 1e-2
    null_tol: float = 1e-5
    null_init: str = "cond"
    timesteps: Optional[tuple] = None

    def __post_init__(self) -> None:
        if self.null_init not in ("cond", "null"):
            raise ValueError(f"null_init must be 'cond' or 'null', got {self.null_init!r}")
        check_int("null_iters", self.null_iters, 0)
        check_number("null_lr", self.null_lr, 0.0)  # checked here, not by Adam after the conditional pass
        if self.null_lr == 0:
            raise ValueError("null_lr must be > 0, got 0.0")
        check_number("null_tol", self.null_tol, 0.0)
        object.__setattr__(self, "timesteps", grid_tuple(self.timesteps))


@dataclass
class Inversion:
    """What a method keeps of x_0 (B, …) for the guided sampler; tensors in float64 on x_0's device.

    method, w: how it was made (regenerate under this w to get x_0 back). timesteps: (S,) the grid, descending.
    x_T: (B, …) the start. y_T: EDICT's second chain (else None). null: (S, B, E) per-step null embeddings
    (null-label). noise: (S, B, …) per-step noise terms (ddpm). eta: the η of ddpm. mix: EDICT's p. labels: (B,) the source
    classes. model_calls: network forward passes per image the inversion took (a guided ε̂ is 2; null-label's
    backward passes not counted). seconds: its wall time.
    """

    method: str
    w: float
    timesteps: torch.Tensor
    x_T: torch.Tensor
    labels: torch.Tensor
    y_T: Optional[torch.Tensor] = None
    null: Optional[torch.Tensor] = None
    noise: Optional[torch.Tensor] = None
    eta: float = 0.0
    mix: float = 0.0
    model_calls: int = 0
    seconds: float = 0.0


def _io_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def _guided(model, schedule: Schedule, prediction: str, labels: torch.Tensor, cond: torch.Tensor,
            null: torch.Tensor, w: float) -> Denoiser:
    """The denoiser every guided step reads: classifier-free guidance at weight w on label embeddings ``cond``
    and ``null`` ((B, E) each; one batched forward of 2B, B at w = 0), in the chain's dtype."""
    cfg = ClassifierFreeGuidance(model, labels, w=w, embeddings=(cond, null))
    return Denoiser(cfg, schedule, prediction, io_dtype=_io_dtype(model))


def _conditional(model, schedule: Schedule, prediction: str, emb: torch.Tensor) -> Denoiser:
    """The network on label embeddings ``emb`` (B, E) alone (one branch of ``_guided``)."""
    return Denoiser(lambda x, t: model(x, t, label_emb=emb), schedule, prediction, io_dtype=_io_dtype(model))


def _coefs(schedule: Schedule, steps: Optional[int], spacing: str = "uniform", eta: float = 0.0, timesteps=None):
    """(plan, per-step (ᾱ_t, ᾱ_prev, σ) as Python floats) of the S-step grid, or of ``timesteps``."""
    p = plan(schedule, None if timesteps is not None else steps, eta, spacing, timesteps)
    return p, list(zip(p.abar_t.tolist(), p.abar_prev.tolist(), p.sigma.tolist()))


def _step(den: Denoiser, x, t, abar_t, abar_prev, sigma, noise=None):
    """One DDIM eq. 12 step from x_t with the denoiser's (x̂_0, ε̂) (guided: ``_guided``)."""
    x0, eps = den.denoise(x, t, abar_t)
    return ddim_step(x0, eps, abar_prev, sigma, noise)


def _embeddings(model, labels: torch.Tensor):
    """(conditional (B, E), null (B, E)) label embeddings, detached, in float64."""
    null = torch.full_like(labels, model.null_label)
    with torch.no_grad():
        return model.label_embedding(labels).double(), model.label_embedding(null).double()


def invert_image(model, schedule: Schedule, x0: torch.Tensor, labels: torch.Tensor, *, method: str = "ddim",
                 w: float = 0.0, options: Optional[InversionOptions] = None, generator: Generators = None,
                 **settings) -> Inversion:
    """Invert x_0 (B, C, H, W) of classes ``labels`` (B,) for regeneration under guidance ``w``.

    Args:
        model: a class-conditional ``ddim.nn.UNet`` (it must take ``label_emb``).
        method: one of ``METHODS`` (module docstring).
        w: the classifier-free guidance weight the images will be sampled back under.
        options: the grid and each method's knobs as one ``InversionOptions``, or its fields as keywords
            (``steps``, ``spacing``, ``prediction``, ``eta``, ``mix``, ``null_iters``, ``null_lr``, ``null_tol``,
            ``null_init``, ``timesteps``).
        generator: the ddpm method's draws of x_t ~ q(x_t | x_0).
    """
    o = _options(options, settings)
    o = replace(o, prediction=network_prediction(model, o.prediction))
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; allowed: {', '.join(METHODS)}")
    if getattr(model, "null_label", None) is None:
        raise ValueError("guided inversion needs a class-conditional model with a null label")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:  # inf: NaN latents
        raise ValueError(f"guidance weight w must be a number >= 0 and finite, got {w!r}")
    if method == "cfgpp" and w > 1:
        raise ValueError(f"CFG++'s λ (the guidance weight of method 'cfgpp') must lie in [0, 1], got {w}")
    check_images(x0, "x0")
    labels = _labels(model, labels, len(x0))
    start = time.perf_counter()
    x0 = x0.double()
    labels = labels.to(x0.device)
    cond, null = _embeddings(model, labels)
    if method == "ddpm":
        if not (isinstance(o.eta, (int, float)) and o.eta > 0):
            raise ValueError(f"edit-friendly DDPM inversion needs eta > 0, got {o.eta!r}")
        grid = _coefs(schedule, o.steps, o.spacing, o.eta, o.timesteps)
        inv = _invert_ddpm(_guided(model, schedule, o.prediction, labels, cond, null, w), grid, x0, labels, w, o.eta,
                           generator)
    elif method == "edict":
        if not (isinstance(o.mix, (int, float)) and 0 < o.mix < 1):
            raise ValueError(f"EDICT's mixing p must lie in (0, 1), got {o.mix!r}")
        inv = _invert_edict(_guided(model, schedule, o.prediction, labels, cond, null, w),
                            _coefs(schedule, o.steps, o.spacing, 0.0, o.timesteps), x0, labels, w, o.mix)
    elif method == "cfgpp":
        inv = _invert_cfgpp(model, schedule, o.prediction, _coefs(schedule, o.steps, o.spacing, 0.0, o.timesteps),
                            x0, labels, (cond, null), w)
    else:
        inv = _invert_ddim(model, schedule, _coefs(schedule, o.steps, o.spacing, 0.0, o.timesteps), x0, labels,
                           (cond, null), w, method, o)
    check_finite_result(inv.x_T, "latents")
    inv.seconds = time.perf_counter() - start
    return inv


def _options(options: Optional[InversionOptions], settings: dict) -> InversionOptions:
    """``options`` or the defaults with ``settings`` (``InversionOptions`` fields as keywords) applied; a
    keyword that differs from a given ``options``' own value is refused rather than resolved silently."""
    unknown = sorted(set(settings) - {f.name for f in fields(InversionOptions)})
    if unknown:
        raise TypeError(f"unknown inversion setting(s) {', '.join(unknown)}")
    if options is None:
        return InversionOptions(**settings)
    if not isinstance(options, InversionOptions):
        raise TypeError(f"options must be a ddim.inversion.InversionOptions, got {type(options).__name__}")
    clash = sorted(k for k, v in settings.items() if replace(options, **{k: v}) != options)
    if clash:
        raise ValueError(f"give the inversion settings either as options= or as keywords, not both "
                         f"(got options and {', '.join(clash)})")
    return options


def _labels(model, labels, n: int) -> torch.Tensor:
    """The source classes, checked: (n,) integers in 0..num_classes, the last being ∅ (an unknown class)."""
    k = getattr(getattr(model, "config", None), "num_classes", None)
    return check_labels(labels, n, k if k is not None else int(model.null_label), allow_null=True)


def _invert_ddim(model, schedule, grid, x0, labels, embeddings, w, method, o: InversionOptions):
    p, rows = grid
    cond, null = embeddings
    tb = lambda k: p.timesteps[k].expand(x0.shape[0]).to(x0.device)  # noqa: E731
    # the pivot: conditional DDIM inversion, z*_0 = x_0 up to z*_T (the samplers' inverse step)
    conditional = _conditional(model, schedule, o.prediction, cond)
    pivot, x, calls = [x0], x0, 0
    with torch.no_grad():
        for k in reversed(range(len(rows))):
            abar_t, abar_prev = rows[k][:2]
            x = ddim_invert_step(x, conditional.denoise(x, tb(k), abar_t)[1], abar_t, abar_prev)[0]
            pivot.append(x)
            calls += 1
    pivot = pivot[::-1]  # pivot[k] = z* at grid point k (k = 0: x_T), pivot[S] = x_0
    inv = Inversion(method, float(w), p.timesteps, pivot[0], labels, model_calls=calls)
    if method != "null-label" or w == 0:
        return inv
    nulls, z, emb = [], pivot[0], (cond if o.null_init == "cond" else null).clone()
    for k, (abar_t, abar_prev, _) in enumerate(rows):
        # z is fixed within the step, and so is the guided ε̂'s conditional half: computed once, outside the
        # optimisation, which only moves the ∅ embedding
        with torch.no_grad():
            eps_c = conditional.denoise(z, tb(k), abar_t)[1]
        calls += 1
        # a copy: Adam updates in place, and the previous step's embedding (kept in ``nulls``) must not move
        emb = emb.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([emb], lr=o.null_lr)
        best, best_loss = emb.detach().clone(), None
        for i in range(o.null_iters + 1):  # the last pass only scores the last update
            with torch.enable_grad():
                eps = guided_combination(eps_c, _conditional(model, schedule, o.prediction, emb)
                                         .denoise(z, tb(k), abar_t)[1], w)
                out = ddim_step(x0_from_eps(z, eps, abar_t), eps, abar_prev, 0.0)
                loss = (out - pivot[k + 1]).pow(2).flatten(1).mean(1)  # per image: images are independent
            calls += 1
            # keep each image's best embedding: Adam's first moves can overshoot a start that is already good
            better = loss.detach() if best_loss is None else torch.minimum(best_loss, loss.detach())
            improved = better < best_loss if best_loss is not None else torch.ones_like(better, dtype=torch.bool)
            best = torch.where(improved[:, None], emb.detach(), best)
            best_loss = better
            if i == o.null_iters or float(best_loss.max()) < o.null_tol * (1 + 2 * k):  # 1e-5 + k·2e-5 default
                break
            (emb.grad,) = torch.autograd.grad(loss.sum(), emb)  # the embedding's only, not the network's
            opt.step()
        emb = best
        nulls.append(emb)
        with torch.no_grad():
            z = _step(_guided(model, schedule, o.prediction, labels, cond, emb, w), z, tb(k), abar_t, abar_prev, 0.0)
        calls += 2
    inv.null, inv.model_calls = torch.stack(nulls), calls
    return inv


def _eps_pair(model, schedule, prediction: str, embeddings, x, t, abar_t):
    """(ε̂_c, ε̂_u) at x (B, …): the network on the (cond, ∅) label embeddings ((B, E) each) in one batched
    forward of 2B."""
    cond, null = embeddings
    both = _conditional(model, schedule, prediction, torch.cat([cond, null]))
    return both.denoise(torch.cat([x, x]), torch.cat([t, t]), abar_t)[1].chunk(2)


def _invert_cfgpp(model, schedule, prediction, grid, x0, labels, embeddings, lam):
    p, rows = grid
    x = x0
    with torch.no_grad():
        for k in reversed(range(len(rows))):
            abar_t, abar_prev = rows[k][:2]
            eps_c, eps_u = _eps_pair(model, schedule, prediction, embeddings, x,
                                     p.timesteps[k].expand(x0.shape[0]).to(x0.device), abar_t)
            x = ddim_invert_step(x, eps_u, abar_t, abar_prev, eps_up=eps_u + lam * (eps_c - eps_u))[0]
    return Inversion("cfgpp", float(lam), p.timesteps, x, labels, model_calls=2 * len(rows))


def _invert_ddpm(den: Denoiser, grid, x0, labels, w, eta, generator):
    p, rows = grid
    # x_t ~ q(x_t | x_0) independently at every grid point (not a chain: the edit-friendly choice)
    xs = [abar**0.5 * x0 + (1 - abar) ** 0.5 * randn(x0.shape, generator, x0.device, x0.dtype)
          for abar, _, _ in rows] + [x0]
    noise = []
    with torch.no_grad():
        for k, (abar_t, abar_prev, sigma) in enumerate(rows):
            mean = _step(den, xs[k], p.timesteps[k].expand(x0.shape[0]).to(x0.device), abar_t, abar_prev, sigma)
            noise.append(xs[k + 1] - mean)  # n_k: what the step must add to land on x_{t−1}
    return Inversion("ddpm", float(w), p.timesteps, xs[0], labels, noise=torch.stack(noise), eta=float(eta),
                     model_calls=len(rows) * (2 if w else 1))


def edict_coefficients(abar_t: float, abar_prev: float) -> tuple[float, float]:
    """(a, b) of the DDIM η = 0 step x_{t−1} = a x_t + b ε̂ (EDICT eq. 5) as floats: ``euler_coefficients``."""
    a, b = euler_coefficients(abar_t, abar_prev)
    return float(a), float(b)


def _invert_edict(den: Denoiser, grid, x0, labels, w, mix):
    p, rows = grid
    x, y = x0, x0.clone()
    eps = lambda x, t, abar: den.denoise(x, t, abar)[1]  # noqa: E731
    with torch.no_grad():
        for k in reversed(range(len(rows))):  # EDICT inversion: the denoising step solved backwards
            abar_t, abar_prev = rows[k][:2]
            a, b = edict_coefficients(abar_t, abar_prev)
            t = p.timesteps[k].expand(x0.shape[0]).to(x0.device)
            y_inter = (y - (1 - mix) * x) / mix
            x_inter = (x - (1 - mix) * y_inter) / mix
            y = (y_inter - b * eps(x_inter, t, abar_t)) / a
            x = (x_inter - b * eps(y, t, abar_t)) / a
    return Inversion("edict", float(w), p.timesteps, x, labels, y_T=y, mix=float(mix),
                     model_calls=2 * len(rows) * (2 if w else 1))


def regenerate(model, schedule: Schedule, inv: Inversion, labels: Optional[torch.Tensor] = None,
               w: Optional[float] = None, prediction: Optional[str] = None) -> torch.Tensor:
    """Sample an ``Inversion`` back to x_0 (B, …) float64 under guidance ``w`` (default: the inversion's)
    toward ``labels`` (default: the source classes; other labels make an edit); ``prediction`` as in
    ``InversionOptions``."""
    w = inv.w if w is None else w
    prediction = network_prediction(model, prediction)
    if inv.method == "cfgpp" and not 0 <= w <= 1:
        raise ValueError(f"CFG++'s λ (the guidance weight of method 'cfgpp') must lie in [0, 1], got {w}")
    labels = inv.labels if labels is None else _labels(model, labels, len(inv.x_T)).to(inv.x_T.device)
    cond, null = _embeddings(model, labels)
    if inv.method == "negative-label":
        null = _embeddings(model, inv.labels)[0]  # the source class stands in for ∅
    p, rows = _coefs(schedule, None, eta=inv.eta if inv.method == "ddpm" else 0.0, timesteps=inv.timesteps)
    den = _guided(model, schedule, prediction, labels, cond, null, w)
    x, y = inv.x_T, inv.y_T
    with torch.no_grad():
        for k, (abar_t, abar_prev, sigma) in enumerate(rows):
            t = p.timesteps[k].expand(x.shape[0]).to(x.device)
            if inv.method == "cfgpp":  # DDIM's step with CFG++'s pair: x̂_0 of the guided ε̂, the unconditional ε̂_u
                eps_c, eps_u = _eps_pair(model, schedule, prediction, (cond, null), x, t, abar_t)
                x = ddim_step(*cfgpp_pair(x, eps_c, eps_u, abar_t, w), abar_prev, 0.0)
                continue
            if inv.method == "edict":
                a, b = edict_coefficients(abar_t, abar_prev)
                mix = inv.mix
                x_inter = a * x + b * den.denoise(y, t, abar_t)[1]
                y_inter = a * y + b * den.denoise(x_inter, t, abar_t)[1]
                x = mix * x_inter + (1 - mix) * y_inter
                y = mix * y_inter + (1 - mix) * x
                continue
            step = den if inv.null is None else _guided(model, schedule, prediction, labels, cond, inv.null[k], w)
            if inv.method == "ddpm":
                x = _step(step, x, t, abar_t, abar_prev, sigma, noise=inv.noise[k])
            else:
                x = _step(step, x, t, abar_t, abar_prev, 0.0)
    check_finite_result(x, "images")
    return x
