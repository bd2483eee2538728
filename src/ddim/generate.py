"""Generation from a trained network: many samples in batches, one random stream per sample.

Sample i's starting noise x_T and every noise draw of its chain come from its own generator seeded by
(seed, i) (``ddim.generators``), so image i is the same whatever the number of images or the batch
size. Class-conditional networks are wrapped here (plain conditional, or classifier-free guidance),
so the sampler itself never sees labels.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from .checks import check_bool, check_device, check_finite_result, check_images, check_int
from .denoiser import Denoiser, own_prediction
from .guidance import (ClassifierFreeGuidance, ClassifierGuidance, GuidanceInput, GuidanceOptions, check_rescale,
                       check_student_guidance, takes_guidance)
from .guidance_methods import guided_denoiser
from .noise import generators, randn
from .samplers import FastSampler, fast_module
from .samplers.loop import SampleOptions, run_sample, sample_setup
from .schedule import Schedule

__all__ = ["DEFAULT_SOLVER", "DEFAULT_GUIDANCE", "DEFAULT_GUIDANCE_METHOD", "CFG_GUIDANCE",
           "INTERVAL_STUDENT_GUIDANCE", "default_guidance", "RunOptions", "class_labels", "conditioned",
           "classifier_guided", "guided", "check_classifier", "check_guide", "initial_noise", "generate",
           "generate_batch", "sampling_network", "slerp", "interpolate"]

# What `ddim sample` (and the demo's Sample tab) draws with unless told: the solver, guidance method and weight
# measured best at few model calls on the bundled model (docs/results.md); the solver's own steps and grid come
# with it. Guidance in an interval of noise levels reaches plain CFG's class agreement at a lower FID in two feature
# spaces, and skips the second forward outside the interval.
DEFAULT_SOLVER = "dpmpp-2m"
DEFAULT_GUIDANCE_METHOD = "interval"
DEFAULT_GUIDANCE = 2.0
CFG_GUIDANCE = 0.5  # the weight other methods get unless told (plain CFG's measured default)
# The w of a student distilled from interval guidance (`ddim distill --guidance-interval`) unless told: its w
# input means that method's weight, whose best value at the student's few steps is its own (measured).
INTERVAL_STUDENT_GUIDANCE = 1.0


def default_guidance(method: str) -> float:
    """`ddim sample`'s guidance weight w for a class-conditional model when none is given: ``DEFAULT_GUIDANCE``
    for the default method, ``CFG_GUIDANCE`` for the others."""
    return DEFAULT_GUIDANCE if method == DEFAULT_GUIDANCE_METHOD else CFG_GUIDANCE


@dataclass(frozen=True)
class RunOptions:
    """How a generation run is carried out; none of it changes which images come out (sample i depends only on
    (seed, i)), except ``fast``'s bf16 rounding (CUDA, and CPUs with bf16 in hardware).

    Attributes:
        seed: sample i is seeded by (seed, i).
        batch_size: images per model call.
        device: where the network runs ("cpu", "cuda", "cuda:N").
        fast: sample with a ``ddim.samplers.FastSampler`` on a ``fast_module`` copy of the network (bf16,
            channels_last, torch.compile and one CUDA graph on CUDA; on the CPU channels_last, and bf16 where the
            CPU has it in hardware: AMX or AVX512-BF16); images match
            the plain sampler's within bf16 rounding, and anything unavailable falls back with a warning.
            Guidance methods other than cfg take it on the CPU, not on CUDA (a captured graph cannot hold them);
            classifier guidance never does (the plain path, with one warning). On
            CUDA every batch has min(batch_size, n) images (the last one padded with extra seeds whose images
            are dropped), so one captured graph serves all batches.
        channels_last: without ``fast``, run an inference copy of the network in channels_last memory format;
            None: on the CPU only, where it is faster (benchmarks/cpu_sampling.py; images equal to 2e-6).
    """

    seed: int = 0
    batch_size: int = 64
    device: Union[str, torch.device] = "cpu"
    fast: bool = False
    channels_last: Optional[bool] = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {self.batch_size!r}")
        check_bool("fast", self.fast)
        if self.channels_last is not None:
            check_bool("channels_last", self.channels_last)
        check_device(self.device)  # here, not as a RuntimeError from the first model call


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


class _Labelled:
    """``model(x, t, labels)`` (``model(x, t)`` without labels) as a network of (x, t); ``.model`` keeps what it
    wraps reachable, and with it the prediction the network declares (``ddim.denoiser.own_prediction``)."""

    passes_prediction = True

    def __init__(self, model, labels: Optional[torch.Tensor]):
        self.model, self.labels = model, labels

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t) if self.labels is None else self.model(x, t, self.labels.to(x.device))


def conditioned(model, labels: Optional[torch.Tensor], guidance: float = 0.0,
                guidance_rescale: float = 0.0) -> Callable:
    """``model(x, t)`` for the sampler: the network itself (unconditional), conditioned on ``labels``,
    or with classifier-free guidance weight ``guidance`` (w of ε̂ = (1+w) ε_c − w ε_∅), rescaled by
    φ = ``guidance_rescale`` (``ClassifierFreeGuidance``). A guidance-distilled student takes w as an input
    instead (``GuidanceInput``): one forward per step."""
    check_rescale(guidance_rescale)  # also where there is no guidance to rescale: a bad value is a typo
    null = getattr(model, "null_label", None)
    if null is None:
        if guidance:
            raise ValueError(f"guidance {guidance!r} needs a class-conditional model; this one is unconditional")
        return _Labelled(model, None)
    if labels is None:
        raise ValueError("a class-conditional model needs labels")
    if not math.isfinite(guidance) or guidance < 0:
        raise ValueError(f"guidance must be a finite number >= 0, got {guidance!r}")
    if takes_guidance(model):
        check_student_guidance(model, rescale=guidance_rescale)
        return GuidanceInput(model, labels, guidance)
    if guidance == 0:
        return _Labelled(model, labels)
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


def check_guide(model, schedule: Schedule, guide, guide_schedule: Schedule) -> None:
    """Refuse an autoguidance guide that is not a worse version of ``model``: other image shape, other classes,
    another noise schedule or another prediction type (its predictions would mean other things)."""
    m, g = model.config, guide.config
    if (g.in_channels, g.image_size) != (m.in_channels, m.image_size):
        raise ValueError(f"the guide makes {g.in_channels}×{g.image_size}×{g.image_size} images but the model makes "
                         f"{m.in_channels}×{m.image_size}×{m.image_size}")
    if g.num_classes != m.num_classes:
        raise ValueError(f"the guide has {g.num_classes} classes but the model has {m.num_classes}")
    if not (guide_schedule.num_steps == schedule.num_steps
            and torch.allclose(guide_schedule.alphas_cumprod, schedule.alphas_cumprod, rtol=1e-6, atol=1e-12)):
        raise ValueError("the guide was trained on another noise schedule than the model's")
    theirs, ours = own_prediction(guide), own_prediction(model)
    if theirs is not None and ours is not None and theirs != ours:  # undeclared: read as the model's (guided_denoiser)
        raise ValueError(f"the guide predicts {theirs!r} but the model predicts {ours!r}")


def classifier_guided(model_fn: Callable, schedule: Schedule, prediction: str, labels: Optional[torch.Tensor],
                      indices: Sequence[int], guidance: GuidanceOptions) -> Callable:
    """``model_fn`` with classifier guidance (``guidance.classifier`` at ``classifier_scale``) towards ``labels``
    (those of a conditional model), or towards ``class_labels`` over the classifier's classes (an
    unconditional model); ``model_fn`` itself when the scale is 0."""
    g = guidance
    if g.classifier is None or not g.classifier_scale:
        return model_fn
    y = labels if labels is not None else class_labels(indices, g.classifier.config.num_classes, g.class_id)
    return ClassifierGuidance(model_fn, g.classifier, y, g.classifier_scale, schedule, prediction)


def _model_class(cfg, guidance: GuidanceOptions) -> Optional[int]:
    """The class the network itself is given: ``class_id``, except that an unconditional network guided by
    a classifier takes none (the class is the classifier's)."""
    return guidance.class_id if cfg.num_classes is not None or not guidance.classifier_scale else None


def initial_noise(seed: int, indices: Sequence[int], shape, device="cpu", dtype=torch.float32):
    """x_T for samples ``indices`` (each from its own generator), and the generators, advanced past x_T,
    that the chain then continues to draw from. shape: (C, H, W)."""
    gens = generators(seed, indices, device)
    return randn((len(gens), *shape), gens, device, dtype), gens


def generate(model, schedule: Schedule, n: int, options: Optional[SampleOptions] = None,
             guidance: Optional[GuidanceOptions] = None, run: Optional[RunOptions] = None, *,
             return_trajectory: bool = False, on_step: Optional[Callable[[], None]] = None):
    """Draw n samples from a ``ddim.nn.UNet`` (or any network with ``.config`` and ``.null_label``).

    Args:
        n: number of images; sample i is seeded by (seed, i).
        options: how each chain is sampled (``ddim.SampleOptions``; default: its defaults).
        guidance: the class of each sample and its guidance (``GuidanceOptions``; default: none).
        run: seed, batch size, device and the fast paths (``RunOptions``).
        return_trajectory: also return the first batch's ``Trajectory``.
        on_step: called after each sampling step (progress bars); with ``run.fast`` on CUDA, S times after
            each batch (a captured loop does not come back to the host between steps).
    Returns:
        (n, C, H, W) float32 CPU tensor in the model's data range, and with ``return_trajectory`` the
        ``Trajectory`` of the first batch.
    """
    opts, g, r = _settings(model, options, guidance, run)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    cfg = model.config
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    fast = r.fast
    on_cuda = torch.device(r.device).type == "cuda"
    gradient = g.classifier is not None and g.classifier_scale
    if fast and (gradient or (on_cuda and g.method.method != "cfg")):
        # a method reading the noise level on the host or keeping momentum cannot be captured in a CUDA graph (the
        # CPU captures nothing, so there it keeps the fast path); a classifier's gradient under bf16 autocast ran
        # 4× slower than float32 on the CPU: the plain path, said once
        warnings.warn("ddim: classifier guidance, and on CUDA guidance methods other than cfg, run without the fast "
                      "path", RuntimeWarning, stacklevel=2)
        fast = False
    graphs = fast and on_cuda
    callback = (lambda *_: on_step()) if on_step is not None and not graphs else None
    sampler, net = (FastSampler(), fast_module(model)) if fast else (None, None)
    plain = model if fast else sampling_network(model, r.device, r.channels_last)
    n_steps = len(opts.timesteps) if opts.timesteps is not None else opts.steps
    models: dict = {}  # fast: batch size -> (conditioned model, its label buffer)
    out, first_trajectory = [], None
    for start in range(0, n, r.batch_size):
        stop = min(n, start + r.batch_size)
        trajectory = return_trajectory and start == 0
        if not fast:
            res = generate_batch(plain, schedule, range(start, stop), opts, g, r, on_step=on_step,
                                 return_trajectory=trajectory)
        else:
            idx = range(start, start + min(r.batch_size, n) if graphs else stop)
            x_T, gens = initial_noise(r.seed, idx, shape, r.device)
            labels = class_labels(idx, cfg.num_classes, _model_class(cfg, g))
            if not graphs:  # nothing captured: the denoiser the plain path builds, on the fast copy
                m = guided(net, schedule, opts.prediction, labels, idx, g)
            else:
                if len(idx) not in models:
                    models[len(idx)] = _in_place_conditioned(net, labels, g, r.device)
                m, buf = models[len(idx)]
                if buf is not None:
                    buf.copy_(labels)
            with torch.inference_mode():
                res = sampler.sample(m, schedule, x_T, generator=gens, callback=callback,
                                     return_trajectory=trajectory, options=opts)
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


def generate_batch(model, schedule: Schedule, indices: Sequence[int], options: Optional[SampleOptions] = None,
                   guidance: Optional[GuidanceOptions] = None, run: Optional[RunOptions] = None, *,
                   return_trajectory: bool = False, on_step: Optional[Callable[[], None]] = None):
    """The samples with global indices ``indices`` (e.g. ``range(64, 128)``) as one batch, exactly as
    ``generate`` draws them (it calls this for each batch without ``fast``): sample i seeded by (run.seed, i)
    and, for a class-conditional network, labelled as in ``class_labels``. Used where samples are drawn
    in chunks (``ddim eval``); ``run.batch_size`` and the fast paths play no part here.

    Returns:
        (len(indices), C, H, W) on ``run.device`` in the model's dtype, and with ``return_trajectory`` the
        batch's ``Trajectory``; arguments as in ``generate``.
    """
    opts, g, r = _settings(model, options, guidance, run)
    indices = _indices(indices)
    cfg = model.config
    x_T, gens = initial_noise(r.seed, indices, (cfg.in_channels, cfg.image_size, cfg.image_size), r.device)
    labels = class_labels(indices, cfg.num_classes, _model_class(cfg, g))
    prediction = opts.net_prediction
    callback = (lambda *_: on_step()) if on_step is not None else None
    with torch.inference_mode():
        return run_sample(guided(model, schedule, prediction, labels, indices, g), x_T, opts, gens,
                          callback=callback, return_trajectory=return_trajectory)


def _settings(model, options, guidance, run) -> tuple:
    """(SampleOptions, GuidanceOptions, RunOptions), each the one given or the defaults, of the right type; the
    options' prediction resolved against ``model``'s own (``network_prediction``) before any wrapper hides it."""
    for value, kind in ((guidance, GuidanceOptions), (run, RunOptions)):
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"expected a ddim.{kind.__name__}, got {type(value).__name__}")
    return SampleOptions.of(options).for_network(model), guidance or GuidanceOptions(), run or RunOptions()


def _indices(indices) -> list:
    """Global sample indices as a non-empty list of ints >= 0 (a bool or 1.5 would silently become sample 1)."""
    try:
        values = list(indices)
    except TypeError:
        raise ValueError(f"indices must be a sequence of sample numbers, got {indices!r}") from None
    if not values:
        raise ValueError("indices must hold at least one sample number, got none")
    return [check_int("sample index", i, 0) for i in values]


def guided(model, schedule: Schedule, prediction: str, labels: Optional[torch.Tensor], indices: Sequence[int],
           guidance: GuidanceOptions) -> Denoiser:
    """The denoiser the samples of ``indices`` are drawn with: the network conditioned on ``labels`` and
    guided as ``guidance`` says (plain CFG through ``ClassifierFreeGuidance``; the other methods through
    ``ddim.guidance_methods``; classifier guidance on top of either where it applies)."""
    g = guidance
    check_student_guidance(model, g.method.method)
    if g.method.method == "cfg" or labels is None or (not g.w and g.method.method != "cfgpp"):
        m = classifier_guided(conditioned(model, labels, g.w, g.rescale), schedule, prediction, labels, indices, g)
        return Denoiser(m, schedule, prediction)
    if g.classifier is not None and g.classifier_scale:
        raise ValueError(f"classifier guidance combines with guidance methods cfg (got {g.method.method!r}): its "
                         "gradient shifts one prediction, and the other methods do not make one")
    return guided_denoiser(model, schedule, prediction, labels, g)


def _in_place_conditioned(net, labels: Optional[torch.Tensor], guidance: GuidanceOptions, device):
    """(``conditioned`` model, its device label buffer or None): a captured CUDA graph reads the labels
    from the buffer's memory, so later batches overwrite it in place instead of building a new model."""
    buf = None if labels is None else labels.to(device)
    return conditioned(net, buf, guidance.w, guidance.rescale), buf


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


def interpolate(model, schedule: Schedule, z0: torch.Tensor, z1: torch.Tensor, frames: int,
                options: Optional[SampleOptions] = None, label: Optional[int] = None,
                guidance: Optional[GuidanceOptions] = None):
    """Decode ``frames`` slerp points between latents z0 and z1 ((1, C, H, W) each), deterministically.

    ``options``: how each frame is sampled (η must be 0, or a solver adding no noise: an image must be a
    function of its latent). ``label``: the class of every frame for a class-conditional model (its null
    label for unconditional decoding); None for an unconditional model. ``guidance``: its weight and method
    toward ``label`` (default: none).
    Returns:
        (frames, C, H, W) float32 CPU images; the first and last are the plain samples of z0 and z1.
    """
    opts, g, _ = _settings(model, options, guidance, None)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an integer >= 2, got {frames!r}")
    check_images(z0, "z0")
    check_images(z1, "z1")
    z = torch.cat([slerp(z0, z1, k / (frames - 1)) for k in range(frames)])
    if any(sample_setup(schedule, z, opts).draws):  # whatever adds the noise: η, or the solver itself
        raise ValueError(f"interpolation decodes deterministically; solver {opts.solver.name!r} with eta={opts.eta!r} "
                         "adds noise")
    labels = None if label is None else torch.full((frames,), int(label), dtype=torch.int64)
    with torch.inference_mode():
        den = guided(model, schedule, opts.net_prediction, labels, range(frames), g)
        images = run_sample(den, z, opts).float().cpu()
    check_finite_result(images, "frames")
    return images
