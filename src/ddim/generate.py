"""Generation from a trained network: many samples in batches, one random stream per sample.

Sample i's starting noise x_T and every noise draw of its chain come from its own generator seeded by
(seed, i) (``ddim.generators``), so image i is the same whatever the number of images or the batch
size. Class-conditional networks are wrapped here (plain conditional, or classifier-free guidance),
so the sampler itself never sees labels.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence

import torch

from .guidance import ClassifierFreeGuidance, ClassifierGuidance, check_rescale
from .noise import generators, randn
from .samplers import FastSampler, fast_module, sample
from .samplers.ddim import SampleOptions, check_finite_result, run_sample
from .schedule import Schedule

__all__ = ["class_labels", "conditioned", "classifier_guided", "check_classifier", "initial_noise", "generate",
           "generate_batch", "sampling_network", "slerp", "interpolate"]


def class_labels(indices: Sequence[int], num_classes: Optional[int], class_id: Optional[int] = None):
    """Labels for samples ``indices``: all ``class_id`` if given, else index mod num_classes (so a grid
    shows every class); None for an unconditional network."""
    if num_classes is None:
        if class_id is not None:
            raise ValueError(f"--class {class_id} needs a class-conditional model; this one is unconditional")
        return None
    if class_id is not None:
        if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < num_classes:
            raise ValueError(f"class {class_id!r} is out of range for a model with {num_classes} classes "
                             f"(allowed: 0..{num_classes - 1})")
        return torch.full((len(indices),), class_id, dtype=torch.int64)
    return torch.tensor([i % num_classes for i in indices], dtype=torch.int64)


def conditioned(model, labels: Optional[torch.Tensor], guidance: float = 0.0,
                guidance_rescale: float = 0.0) -> Callable:
    """``model(x, t)`` for the sampler: the network itself (unconditional), conditioned on ``labels``,
    or with classifier-free guidance weight ``guidance`` (w of ε̂ = (1+w) ε_c − w ε_∅), rescaled by
    φ = ``guidance_rescale`` (``ClassifierFreeGuidance``)."""
    check_rescale(guidance_rescale)  # also where there is no guidance to rescale: a bad value is a typo
    null = getattr(model, "null_label", None)
    if null is None:
        if guidance:
            raise ValueError(f"guidance {guidance!r} needs a class-conditional model; this one is unconditional")
        return lambda x, t: model(x, t)
    if labels is None:
        raise ValueError("a class-conditional model needs labels")
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if guidance == 0:
        return lambda x, t: model(x, t, labels.to(x.device))
    return ClassifierFreeGuidance(model, labels, w=guidance, rescale=guidance_rescale)


def check_classifier(model, schedule: Schedule, classifier, classifier_schedule: Optional[Schedule] = None) -> None:
    """Refuse a noisy classifier that cannot guide ``model``: other image shape, other classes (for a
    class-conditional model), or (when given) another noise schedule, whose x_t it never saw."""
    m, c = model.config, classifier.config
    if (c.in_channels, c.image_size) != (m.in_channels, m.image_size):
        raise ValueError(f"the classifier takes {c.in_channels}×{c.image_size}×{c.image_size} images but the model "
                         f"makes {m.in_channels}×{m.image_size}×{m.image_size}")
    if m.num_classes is not None and c.num_classes != m.num_classes:
        raise ValueError(f"the classifier has {c.num_classes} classes but the model has {m.num_classes}")
    if classifier_schedule is not None and not (
            classifier_schedule.num_steps == schedule.num_steps
            and torch.allclose(classifier_schedule.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-6, atol=1e-12)):
        raise ValueError("the classifier was trained on another noise schedule than the model's "
                         "(train it with --schedule-from the model's checkpoint)")


def classifier_guided(model_fn: Callable, schedule: Schedule, prediction: str, labels: Optional[torch.Tensor],
                      indices: Sequence[int], class_id: Optional[int], classifier=None, scale: float = 0.0) -> Callable:
    """``model_fn`` with classifier guidance at ``scale`` towards ``labels`` (those of a conditional model), or
    towards ``class_labels`` over the classifier's classes (an unconditional model); itself when scale is 0."""
    if classifier is None or not scale:
        if scale and classifier is None:
            raise ValueError(f"classifier scale {scale!r} needs a classifier")
        return model_fn
    y = labels if labels is not None else class_labels(indices, classifier.config.num_classes, class_id)
    return ClassifierGuidance(model_fn, classifier, y, scale, schedule, prediction)


def _model_class(cfg, class_id: Optional[int], classifier_scale: float) -> Optional[int]:
    """The class the network itself is given: ``class_id``, except that an unconditional network guided by
    a classifier takes none (the class is the classifier's)."""
    return class_id if cfg.num_classes is not None or not classifier_scale else None


def initial_noise(seed: int, indices: Sequence[int], shape, device="cpu", dtype=torch.float32):
    """x_T for samples ``indices`` (each from its own generator), and the generators, advanced past x_T,
    that the chain then continues to draw from. shape: (C, H, W)."""
    gens = generators(seed, indices, device)
    return randn((len(gens), *shape), gens, device, dtype), gens


def generate(model, schedule: Schedule, n: int, *, seed: int = 0, batch_size: int = 64, steps: int = 50,
             eta=0.0, spacing: str = "uniform", prediction: str = "epsilon", class_id: Optional[int] = None,
             guidance: float = 0.0, guidance_rescale: float = 0.0, device="cpu", return_trajectory: bool = False,
             on_step: Optional[Callable[[], None]] = None, fast: bool = False,
             channels_last: Optional[bool] = None, options: Optional[SampleOptions] = None, classifier=None,
             classifier_scale: float = 0.0, **sample_kwargs):
    """Draw n samples from a ``ddim.nn.UNet`` (or any network with ``.config`` and ``.null_label``).

    Args:
        n: number of images; sample i is seeded by (seed, i).
        batch_size: images per model call (does not change the images).
        class_id: generate this class only (class-conditional models); default cycles through classes.
        guidance: classifier-free guidance weight w (0: plain conditional sampling).
        guidance_rescale: φ of guidance rescale (Lin et al. 2023), 0 (off) to 1.
        on_step: called after each sampling step (progress bars); with ``fast`` on CUDA, S times after
            each batch (a captured loop does not come back to the host between steps).
        fast: sample with a ``ddim.samplers.FastSampler`` on a ``fast_module`` copy of the network
            (bf16, channels_last, torch.compile and one CUDA graph on CUDA; channels_last on the CPU);
            images match the plain sampler's within bf16 rounding, and anything unavailable falls back
            with a warning. On CUDA every batch has min(batch_size, n) images (the last one padded with
            extra seeds whose images are dropped), so one captured graph serves all batches.
        channels_last: without ``fast``, run an inference copy of the network in channels_last memory
            format; None: on the CPU only, where sampling ran 1–14 % more images/s that way in three runs
            (benchmarks/cpu_sampling.py; images equal to 2e-6). ``fast`` always uses it.
        options: the sampling options as one ``SampleOptions`` (instead of steps … prediction and
            ``sample_kwargs``).
        classifier, classifier_scale: classifier guidance (``ClassifierGuidance``) with this noisy classifier
            at scale s, towards each sample's class (with ``guidance``: on top of classifier-free guidance).
        others: as in ``ddim.sample``.
    Returns:
        (n, C, H, W) float32 CPU tensor in the model's data range, and with ``return_trajectory`` the
        ``Trajectory`` of the first batch.
    """
    opts = SampleOptions.of(options, steps=steps, eta=eta, spacing=spacing, prediction=prediction, **sample_kwargs)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be an integer >= 1, got {batch_size!r}")
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if fast and classifier is not None and classifier_scale:
        # a gradient per step cannot be captured in a CUDA graph: the plain path, said once
        warnings.warn("ddim: classifier guidance runs without the fast path (its gradient cannot be captured)",
                      RuntimeWarning, stacklevel=2)
        fast = False
    graphs = fast and torch.device(device).type == "cuda"
    callback = (lambda *_: on_step()) if on_step is not None and not graphs else None
    run, net = (FastSampler().sample, fast_module(model)) if fast else (None, None)
    plain = model if fast else sampling_network(model, device, channels_last)
    n_steps = len(opts.timesteps) if opts.timesteps is not None else opts.steps
    models: dict = {}  # fast: batch size -> (conditioned model, its label buffer)
    out, first_trajectory = [], None
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        trajectory = return_trajectory and start == 0
        if not fast:
            res = generate_batch(plain, schedule, range(start, stop), seed=seed, class_id=class_id,
                                 guidance=guidance, guidance_rescale=guidance_rescale, device=device,
                                 on_step=on_step, return_trajectory=trajectory, options=opts, classifier=classifier,
                                 classifier_scale=classifier_scale)
        else:
            idx = range(start, start + min(batch_size, n) if graphs else stop)
            x_T, gens = initial_noise(seed, idx, shape, device)
            labels = class_labels(idx, cfg.num_classes, _model_class(cfg, class_id, classifier_scale))
            if len(idx) not in models:
                models[len(idx)] = _in_place_conditioned(net, labels, guidance, device, guidance_rescale)
            m, buf = models[len(idx)]
            if buf is not None:
                buf.copy_(labels)
            with torch.inference_mode():
                res = run(m, schedule, x_T, generator=gens, callback=callback, return_trajectory=trajectory,
                          options=opts)
        if isinstance(res, tuple):
            res, first_trajectory = res
        out.append(res[: stop - start].float().cpu())
        for _ in range(n_steps if graphs and on_step is not None else 0):
            on_step()
    images = torch.cat(out)
    check_finite_result(images, "images")  # one check at the end: a NaN must not become a black PNG
    return (images, first_trajectory) if return_trajectory else images


def sampling_network(model, device="cpu", channels_last: Optional[bool] = None):
    """The network ``generate`` runs without ``fast``: an inference copy in channels_last memory format
    where that is on (None: on the CPU only), else ``model`` itself. Chunked samplers (``ddim eval``) call
    ``generate_batch`` on it to draw exactly the images ``generate`` draws."""
    if channels_last is None:
        channels_last = torch.device(device).type == "cpu"
    # only an nn.Module can be copied into another memory format; any other network runs as it is
    return fast_module(model) if channels_last and isinstance(model, torch.nn.Module) else model


def generate_batch(model, schedule: Schedule, indices: Sequence[int], *, seed: int = 0, steps: int = 50, eta=0.0,
                   spacing: str = "uniform", prediction: str = "epsilon", class_id: Optional[int] = None,
                   guidance: float = 0.0, guidance_rescale: float = 0.0, device="cpu",
                   on_step: Optional[Callable[[], None]] = None,
                   return_trajectory: bool = False, options: Optional[SampleOptions] = None, classifier=None,
                   classifier_scale: float = 0.0, **sample_kwargs):
    """The samples with global indices ``indices`` (e.g. ``range(64, 128)``) as one batch, exactly as
    ``generate`` draws them (it calls this for each batch without ``fast``): sample i seeded by (seed, i)
    and, for a class-conditional network, labelled as in ``class_labels``. Used where samples are drawn
    in chunks (``ddim eval``).

    Returns:
        (len(indices), C, H, W) on ``device`` in the model's dtype, and with ``return_trajectory`` the
        batch's ``Trajectory``; arguments as in ``generate``.
    """
    opts = SampleOptions.of(options, steps=steps, eta=eta, spacing=spacing, prediction=prediction, **sample_kwargs)
    cfg = model.config
    x_T, gens = initial_noise(seed, indices, (cfg.in_channels, cfg.image_size, cfg.image_size), device)
    labels = class_labels(indices, cfg.num_classes, _model_class(cfg, class_id, classifier_scale))
    m = classifier_guided(conditioned(model, labels, guidance, guidance_rescale), schedule, opts.prediction, labels,
                          indices, class_id, classifier, classifier_scale)
    callback = (lambda *_: on_step()) if on_step is not None else None
    with torch.inference_mode():
        return run_sample(m, schedule, x_T, opts, gens, callback=callback, return_trajectory=return_trajectory)


def _in_place_conditioned(net, labels: Optional[torch.Tensor], guidance: float, device, guidance_rescale=0.0):
    """(``conditioned`` model, its device label buffer or None): a captured CUDA graph reads the labels
    from the buffer's memory, so later batches overwrite it in place instead of building a new model."""
    buf = None if labels is None else labels.to(device)
    return conditioned(net, buf, guidance, guidance_rescale), buf


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation of two latents (DDIM section 5.3, after White 2016), per sample:
    sin((1−α)θ)/sin θ · z0 + sin(αθ)/sin θ · z1, θ the angle between z0 and z1 (flattened).

    Args:
        z0, z1: (B, …) latents of the same shape. alpha: in [0, 1]; 0 gives z0, 1 gives z1.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"latents must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a, b = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1, 1))[:, None]
    sin = torch.sin(theta)
    lerp = (1 - alpha) * a + alpha * b  # parallel latents: slerp degenerates to the straight line
    mixed = torch.where(sin.abs() > 1e-6, (torch.sin((1 - alpha) * theta) * a + torch.sin(alpha * theta) * b) / sin,
                        lerp)
    return mixed.reshape(z0.shape).to(z0.dtype)


def interpolate(model, schedule: Schedule, z0: torch.Tensor, z1: torch.Tensor, frames: int, *, steps: int = 50,
                spacing: str = "uniform", prediction: str = "epsilon", label: Optional[int] = None,
                guidance: float = 0.0, **sample_kwargs) -> torch.Tensor:
    """Decode ``frames`` slerp points between latents z0 and z1 ((1, C, H, W) each) with η = 0.

    ``label``: the class of every frame for a class-conditional model (its null label for unconditional
    decoding); None for an unconditional model. ``sample_kwargs`` (e.g. ``clip``) go to ``ddim.sample``.
    Returns:
        (frames, C, H, W) float32 CPU images; the first and last are the plain samples of z0 and z1.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")
    z = torch.cat([slerp(z0, z1, k / (frames - 1)) for k in range(frames)])
    labels = None if label is None else torch.full((frames,), int(label), dtype=torch.int64)
    m = conditioned(model, labels, guidance)
    with torch.inference_mode():
        return sample(m, schedule, z, steps, 0.0, spacing, prediction, **sample_kwargs).float().cpu()
