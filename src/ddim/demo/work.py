"""The demo's work, without a web page: sample, compare samplers, interpolate, invert and edit, each a plain
function from a loaded ``Model`` and the settings of ``ddim.demo.settings`` to images and numbers.

Each goes through the library calls its subcommand makes (``ddim.generate``, ``ddim.samplers``,
``ddim.inversion``, ``ddim.edit``), with the same options, so the Sample tab's grid is pixel for pixel the PNG
`ddim sample` writes with the same flags (``SampleSettings.command``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ..checkpoint import BUNDLED_MODEL, BUNDLED_NOISY_CLASSIFIER, load_checkpoint, load_noisy_classifier
from ..data import CIFAR10_CLASSES, FASHION_MNIST_CLASSES
from ..device import resolve_device
from ..edit import edit_timesteps, invert_regenerate
from ..generate import DEFAULT_GUIDANCE, RunOptions, check_classifier, class_labels, conditioned, generate, guided, initial_noise
from ..generate import interpolate as decode_slerp
from ..guidance import GuidanceOptions
from ..images import check_channels, load_images
from ..inversion import invert_image, regenerate
from ..noise import generators
from ..samplers import SampleOptions, invert, sample as ddim_sample
from .settings import EditSettings, Guidance, InterpolateSettings, SampleSettings, Sampler

__all__ = ["Model", "Drawn", "Edited", "Item", "FASHION_MNIST_ITEMS", "items", "load_image", "sample", "compare",
           "interpolate_seeds", "interpolate_images", "invert_and_edit"]

FASHION_MNIST_ITEMS = Path(__file__).resolve().parent.parent / "assets" / "fashion_mnist_items"
OnStep = Optional[Callable[[], None]]
_CLASS_NAMES = {"fashion-mnist": FASHION_MNIST_CLASSES, "cifar10": CIFAR10_CLASSES,
                "mnist": tuple(map(str, range(10))), "digits": tuple(map(str, range(10)))}


class Model:
    """A checkpoint loaded once for every page: the network, its schedule and prediction, the device, and
    what a command line needs to name them (``checkpoint``: None for the bundled model)."""

    def __init__(self, checkpoint=None, device: str = "auto"):
        path = Path(checkpoint or BUNDLED_MODEL).resolve()
        self.device_flag = device
        self.device = resolve_device(device)
        self.net, self.schedule, config = load_checkpoint(path, device=self.device)
        self.prediction = config.prediction
        self.checkpoint = None if path == BUNDLED_MODEL.resolve() else path
        k = self.net.config.num_classes
        dataset = getattr(getattr(config, "data", None), "dataset", None)
        names = _CLASS_NAMES.get(dataset)
        self.class_names = () if k is None else names if names and len(names) == k else tuple(
            f"class {i}" for i in range(k))
        self._classifier = None

    @property
    def conditional(self) -> bool:
        return self.net.config.num_classes is not None

    @property
    def default_w(self) -> float:
        """`ddim sample`'s guidance weight for this model: its default when class-conditional, else 0."""
        return DEFAULT_GUIDANCE if self.conditional else 0.0

    def warm_up(self) -> None:
        """Run the Sample tab's defaults once for two steps, so that the first click finds the network warm."""
        sample(self, SampleSettings(sampler=Sampler(steps=2), guidance=Guidance(w=self.default_w)), trajectory=False)

    def classifier(self):
        """The bundled noisy classifier (classifier guidance), loaded when first asked for and checked
        against the model."""
        if self._classifier is None:
            classifier, c_schedule, _ = load_noisy_classifier(BUNDLED_NOISY_CLASSIFIER, device=self.device)
            check_classifier(self.net, self.schedule, classifier, c_schedule)
            self._classifier = classifier
        return self._classifier


@dataclass
class Drawn:
    """Images (N, C, H, W) in [−1, 1] and how they were made: model calls per image, wall seconds, a label,
    the command line that writes the same picture (or None), and the x̂₀ of each step ((S, N, C, H, W), or None)."""

    images: torch.Tensor
    calls: int
    seconds: float
    label: str
    command: Optional[list] = None
    x0_steps: Optional[torch.Tensor] = None


@dataclass
class Edited:
    """An image (1, C, H, W), its reconstruction and its edit, with the reconstruction's MSE per dimension on
    the [0, 1] scale, and model calls and seconds of each."""

    original: torch.Tensor
    reconstruction: torch.Tensor
    edit: torch.Tensor
    mse: float
    calls: tuple
    seconds: tuple


class Item(NamedTuple):
    """A Fashion-MNIST test item shipped with the package: its file, its class, its index in the test split."""

    path: Path
    class_id: int
    index: int


def items() -> list:
    """The Fashion-MNIST test items shipped for the Invert-and-edit tab (files ``t10k-INDEX-classK.png``),
    by class."""
    found = []
    for p in FASHION_MNIST_ITEMS.glob("t10k-*-class*.png"):
        _, index, k = p.stem.split("-")
        found.append(Item(p, int(k[len("class"):]), int(index)))
    return sorted(found, key=lambda item: (item.class_id, item.index))


def load_image(model: Model, path, name: Optional[str] = None) -> tuple:
    """One image file as the model's input (1, C, H, W) in [−1, 1], and its notes (conversions, resizing);
    the library refuses what is not an image or is too large, naming it ``name`` (e.g. the file the user
    uploaded, not its temporary copy)."""
    cfg = model.net.config
    shown = name or str(path)
    try:
        x0, notes = load_images([path], cfg.image_size, cfg.in_channels)
    except (ValueError, OSError) as e:
        raise ValueError(str(e).replace(str(path), shown)) from None
    return x0.to(model.device), [n.replace(str(path), shown) for n in notes]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def sample(model: Model, s: SampleSettings, on_step: OnStep = None, trajectory: bool = True) -> Drawn:
    """`ddim sample` with ``s``'s flags: the same images, pixel for pixel, and (``trajectory``) each step's x̂₀."""
    classifier = model.classifier() if s.guidance.classifier_scale else None
    options = s.sampler.options(model.prediction, s.clip)
    run = RunOptions(seed=s.seed, device=model.device)  # `ddim sample`'s batch size and memory format
    out, seconds = _timed(lambda: generate(model.net, model.schedule, s.n, options, s.guidance.options(classifier),
                                           run, return_trajectory=trajectory, on_step=on_step))
    images, traj = out if trajectory else (out, None)
    return Drawn(images, s.sampler.calls, seconds, s.sampler.label, s.command(model.checkpoint, model.device_flag),
                 None if traj is None else traj.x0_pred.float().cpu())


def compare(model: Model, samplers: Sequence[Sampler], n: int = 8, seed: int = 0, guidance: Guidance = Guidance(),
            clip: float = 1.0, on_step: OnStep = None) -> list:
    """The same x_T (images i of ``seed``) drawn by two to four ``samplers``: one ``Drawn`` each."""
    if not 2 <= len(samplers) <= 4:
        raise ValueError(f"compare two to four sampler settings, got {len(samplers)}")
    runs = [SampleSettings(n=n, seed=seed, sampler=s, guidance=guidance, clip=clip) for s in samplers]
    return [sample(model, r, on_step, trajectory=False) for r in runs]


def interpolate_seeds(model: Model, s: InterpolateSettings) -> Drawn:
    """`ddim interpolate --seeds A B`: slerp between the x_T of image 0 of each seed, decoded toward
    ``s.class_id`` (None: image 0's class, as `ddim sample` labels it)."""
    cfg = model.net.config
    check_channels(cfg.in_channels, "the model's images")
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    z0, z1 = (initial_noise(seed, [0], shape, model.device)[0] for seed in s.seeds)
    labels = class_labels([0], cfg.num_classes, s.class_id)
    label = None if labels is None else int(labels[0])
    guidance = GuidanceOptions(class_id=s.class_id, w=s.w)
    options = s.sampler.options(model.prediction, s.clip)
    images, seconds = _timed(lambda: decode_slerp(model.net, model.schedule, z0, z1, s.frames, options, label=label,
                                                  guidance=guidance))
    return Drawn(images, s.frames * s.sampler.calls, seconds, f"seeds {s.seeds[0]} → {s.seeds[1]}",
                 s.command(model.checkpoint, model.device_flag))


def interpolate_images(model: Model, x0: torch.Tensor, frames: int, sampler: Sampler, clip: float = 1.0,
                       on_step: OnStep = None) -> Drawn:
    """`ddim interpolate --images A B`: DDIM-invert two images x0 (2, C, H, W) with the unconditional model
    over ``sampler``'s grid, then slerp between their latents, decoded by ``sampler``."""
    settings = InterpolateSettings(frames=frames, sampler=sampler, w=0.0, clip=clip)  # checks frames, clip
    if x0.shape[0] != 2:
        raise ValueError(f"interpolation takes two images, got {x0.shape[0]}")
    null = None if not model.conditional else torch.full((2,), model.net.null_label, dtype=torch.int64)
    m = conditioned(model.net, null)
    callback = (lambda *_: on_step()) if on_step is not None else None

    def run():
        with torch.inference_mode():
            xT = invert(m, model.schedule, x0, sampler.steps, sampler.spacing, model.prediction, callback=callback)
        label = None if null is None else int(null[0])  # decoded unconditionally, as inverted
        return decode_slerp(model.net, model.schedule, xT[:1], xT[1:], frames,
                            sampler.options(model.prediction, settings.clip), label=label)

    images, seconds = _timed(run)
    return Drawn(images, sampler.steps + frames * sampler.calls, seconds, "two images")


def invert_and_edit(model: Model, x0: torch.Tensor, e: EditSettings, seed: int = 0, on_step: OnStep = None) -> Edited:
    """Invert x0 (1, C, H, W) with ``e.method``, sample it back (`ddim reconstruct`), and edit it toward
    ``e.target`` from step strength·T (`ddim edit --mode invert`)."""
    if not model.conditional:
        raise ValueError("editing needs a class-conditional model; this one is unconditional")
    net, schedule, prediction = model.net, model.schedule, model.prediction
    k, n = net.config.num_classes, x0.shape[0]
    target = class_labels(range(n), k, e.target)
    source = class_labels(range(n), k, e.source) if e.source is not None else torch.full((n,), net.null_label)
    tau = edit_timesteps(schedule, e.steps, e.strength)  # refuses a strength that keeps no step, before any work
    callback = (lambda *_: on_step()) if on_step is not None else None
    if e.method == "ddim":
        src = conditioned(net, source)
        tgt = guided(net, schedule, prediction, target, range(n), GuidanceOptions(w=e.w))

        def back():
            with torch.inference_mode():
                xT = invert(src, schedule, x0, e.steps, "uniform", prediction, callback=callback)
                return ddim_sample(src, schedule, xT, e.steps, 0.0, "uniform", prediction, callback=callback)

        def edit():
            with torch.inference_mode():
                return invert_regenerate(src, tgt, schedule, x0, e.strength,
                                         SampleOptions(steps=e.steps, prediction=prediction))

        calls = (2 * e.steps, 2 * len(tau))
    else:
        def inverted(timesteps=None):
            grid = {"timesteps": timesteps} if timesteps is not None else {"steps": e.steps}
            with torch.inference_mode(False):  # null-label optimises its embeddings with autograd
                return invert_image(net, schedule, x0, source, method=e.method, w=e.w, prediction=prediction,
                                    generator=generators(seed, range(n), model.device), **grid)

        back = lambda: regenerate(net, schedule, inverted(), prediction=prediction)  # noqa: E731
        edit = lambda: regenerate(net, schedule, inverted(tau), target, prediction=prediction)  # noqa: E731
        per_step = 2 if e.method == "edict" else 1
        calls = (2 * per_step * e.steps, 2 * per_step * len(tau))
    reconstruction, t_back = _timed(back)
    edited, t_edit = _timed(edit)
    reconstruction, edited = reconstruction.float().cpu(), edited.float().cpu()
    x0 = x0.float().cpu()
    mse = float(((reconstruction - x0) / 2).pow(2).mean())  # [−1, 1] -> [0, 1] scale, as `ddim reconstruct`
    return Edited(x0, reconstruction, edited, mse, calls, (t_back, t_edit))
