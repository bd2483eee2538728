"""What the demo's pages ask for, as frozen settings checked by the library's own checks, and the command lines
(`ddim sample`, `ddim interpolate`) that draw the same pictures.

A setting that the library refuses raises its ``ValueError`` here or in ``ddim.demo.work``; the page shows that
line. Every number a command carries is written so that the CLI parses it back to the same float.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..checks import check_int, check_number
from ..generate import DEFAULT_GUIDANCE, DEFAULT_GUIDANCE_METHOD, DEFAULT_SOLVER
from ..guidance import GuidanceOptions, MethodOptions
from ..samplers import SampleOptions, get_solver
from ..samplers.options import check_eta
from ..timesteps import SPACINGS

__all__ = ["MAX_IMAGES", "MAX_FRAMES", "Sampler", "Guidance", "SampleSettings", "InterpolateSettings", "EditSettings",
           "DEMO_METHODS", "command_line"]

MAX_IMAGES = 64   # images per picture: one batch of `ddim sample`'s default --batch-size, so both draw alike
MAX_FRAMES = 32   # interpolation frames in one strip
DEMO_METHODS = ("cfg", "interval", "apg", "cfgpp")  # autoguidance needs a second (worse) model: the CLI has it


def _number(x: float) -> str:
    """A float as the CLI reads it back exactly: "2" for 2.0, else Python's shortest round-trip repr."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def command_line(argv: Sequence[str]) -> str:
    """``argv`` as one shell line (quoted where a shell needs it)."""
    return shlex.join(argv)


def _checkpoint_flags(checkpoint: Optional[Path], device: str) -> list:
    """--checkpoint (unless the bundled model) and --device (unless auto)."""
    flags = [] if checkpoint is None else ["--checkpoint", str(checkpoint)]
    return flags + ([] if device == "auto" else ["--device", device])


@dataclass(frozen=True)
class Sampler:
    """One way to walk the grid: a solver (``ddim.samplers.SOLVERS``), its steps S, its grid and DDIM's η.

    steps, spacing: None take the solver's own (``Solver.default_steps`` / ``default_spacing``, what
    `ddim sample --solver NAME` runs).
    """

    solver: str = DEFAULT_SOLVER
    steps: Optional[int] = None
    eta: float = 0.0
    spacing: Optional[str] = None

    def __post_init__(self) -> None:
        solver = get_solver(self.solver)  # an unknown name: one line listing the solvers
        steps = solver.default_steps if self.steps is None else self.steps
        object.__setattr__(self, "steps", check_int("steps", steps, 1))  # the top, T, is checked by ``plan``
        object.__setattr__(self, "spacing", self.spacing or solver.default_spacing)
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; allowed: {', '.join(SPACINGS)}")
        object.__setattr__(self, "eta", check_eta(self.eta))
        solver.eta(self.eta)  # a solver that takes no η says so

    @property
    def label(self) -> str:
        eta = f", η {_number(self.eta)}" if self.eta != 0 else ""
        return f"{self.solver}, {self.steps} steps{eta}"

    @property
    def calls(self) -> int:
        """Model calls per image (a guided call is one batched forward of both branches)."""
        return get_solver(self.solver).nfe(self.steps)

    def options(self, prediction: str, clip: float) -> SampleOptions:
        """The ``SampleOptions`` `ddim sample` builds from these flags (``clip`` 0: the plain update)."""
        rule = {"clip": clip, "eps_from_clipped_x0": True} if clip else {}
        return SampleOptions(steps=self.steps, eta=self.eta, spacing=self.spacing, prediction=prediction,
                             solver=self.solver, **rule)

    def flags(self) -> list:
        eta = ["--eta", _number(self.eta)] if self.eta != 0 else []
        return ["--solver", self.solver, "--steps", str(self.steps), "--spacing", self.spacing, *eta]


@dataclass(frozen=True)
class Guidance:
    """Which class the images are drawn toward and how strongly: classifier-free guidance weight ``w`` by
    ``method`` (``ddim.guidance.MethodOptions``; autoguidance is the CLI's, it needs a second model), and
    classifier guidance at ``classifier_scale`` with the bundled noisy classifier (0: off).

    class_id: None draws image i of a class-conditional model as class i mod K.
    """

    class_id: Optional[int] = None
    w: float = DEFAULT_GUIDANCE
    method: MethodOptions = field(default_factory=lambda: MethodOptions(DEFAULT_GUIDANCE_METHOD))
    classifier_scale: float = 0.0

    def __post_init__(self) -> None:
        if self.class_id is not None:
            check_int("class", self.class_id, 0)
        check_number("guidance weight w", self.w, 0.0)
        check_number("classifier scale", self.classifier_scale, 0.0)
        if not isinstance(self.method, MethodOptions):
            raise ValueError(f"method must be a ddim.guidance.MethodOptions, got {self.method!r}")
        if self.method.method not in DEMO_METHODS:
            raise ValueError(f"guidance method {self.method.method!r} is not in the demo (allowed: "
                             f"{', '.join(DEMO_METHODS)}); `ddim sample --guidance-method auto` runs autoguidance")

    def options(self, classifier=None) -> GuidanceOptions:
        return GuidanceOptions(class_id=self.class_id, w=self.w, method=self.method, classifier=classifier,
                               classifier_scale=self.classifier_scale if classifier is not None else 0.0)

    def flags(self) -> list:
        m, d = self.method, MethodOptions()
        flags = [] if self.class_id is None else ["--class", str(self.class_id)]
        flags += ["--guidance", _number(self.w), "--guidance-method", m.method]  # the CLI's default may change
        if m.method == "interval" and m.interval != d.interval:  # each method reads its own parameters only
            flags += [f"--guidance-interval={_number(m.interval[0])},{_number(m.interval[1])}"]
        for name in ("apg_eta", "apg_norm_cap", "apg_momentum") if m.method == "apg" else ():
            if getattr(m, name) != getattr(d, name):
                flags += [f"--{name.replace('_', '-')}={_number(getattr(m, name))}"]
        if self.classifier_scale:
            flags += ["--classifier-scale", _number(self.classifier_scale)]
        return flags


@dataclass(frozen=True)
class SampleSettings:
    """The Sample tab: ``n`` images, image i seeded by (seed, i), drawn by ``sampler`` under ``guidance``;
    ``clip`` clamps each step's x̂₀ to [−clip, clip] and re-derives ε̂ from it (0: the paper's plain update),
    as `ddim sample --clip` does."""

    n: int = 16
    seed: int = 0
    sampler: Sampler = field(default_factory=Sampler)
    guidance: Guidance = field(default_factory=Guidance)
    clip: float = 1.0

    def __post_init__(self) -> None:
        check_int("number of images", self.n, 1, MAX_IMAGES)
        check_int("seed", self.seed, 0)
        check_number("clip", self.clip, 0.0)

    def command(self, checkpoint: Optional[Path] = None, device: str = "auto", out: str = "samples.png") -> list:
        """The `ddim sample` argv that writes this grid to ``out`` (``checkpoint`` None: the bundled model)."""
        return ["ddim", "sample", *_checkpoint_flags(checkpoint, device), "--n", str(self.n), "--seed",
                str(self.seed), *self.sampler.flags(), *self.guidance.flags(), "--clip", _number(self.clip),
                "--out", out]


@dataclass(frozen=True)
class InterpolateSettings:
    """The Interpolate tab: ``frames`` slerp points between the x_T of image 0 of seeds A and B (or of two
    inverted images), decoded by a deterministic ``sampler`` toward ``class_id`` under guidance ``w``."""

    seeds: tuple = (0, 1)
    frames: int = 9
    class_id: Optional[int] = None
    sampler: Sampler = field(default_factory=Sampler)
    w: float = 0.0
    clip: float = 1.0

    def __post_init__(self) -> None:
        if len(self.seeds) != 2:
            raise ValueError(f"interpolation takes two seeds, got {len(self.seeds)}")
        object.__setattr__(self, "seeds", tuple(check_int("seed", s, 0) for s in self.seeds))
        check_int("frames", self.frames, 2, MAX_FRAMES)
        if self.class_id is not None:
            check_int("class", self.class_id, 0)
        check_number("guidance weight w", self.w, 0.0)
        check_number("clip", self.clip, 0.0)

    def command(self, checkpoint: Optional[Path] = None, device: str = "auto",
                out: str = "interpolation.png") -> list:
        """The `ddim interpolate --seeds A B` argv that writes this strip to ``out``."""
        cls = [] if self.class_id is None else ["--class", str(self.class_id)]
        return ["ddim", "interpolate", *_checkpoint_flags(checkpoint, device), "--seeds", *map(str, self.seeds),
                "--frames", str(self.frames), *cls, *self.sampler.flags(), "--guidance", _number(self.w),
                "--clip", _number(self.clip), "--out", out]


@dataclass(frozen=True)
class EditSettings:
    """The Invert-and-edit tab: invert an image of class ``source`` (None: unknown, the null label) with
    ``method`` (``ddim.inversion.METHODS``) over ``steps`` DDIM steps, sample it back (its reconstruction),
    and regenerate it toward class ``target`` from step strength·T under guidance ``w`` (`ddim edit`).
    The guided methods invert for ``w``, so their reconstruction is drawn under it; ``ddim`` reconstructs
    with the conditional model, as `ddim reconstruct` does."""

    target: int
    source: Optional[int] = None
    method: str = "ddim"
    steps: int = 50
    strength: float = 0.6
    w: float = 2.0

    def __post_init__(self) -> None:
        from ..inversion import METHODS

        check_int("target class", self.target, 0)
        if self.source is not None:
            check_int("source class", self.source, 0)
        if self.method not in METHODS:
            raise ValueError(f"unknown inversion method {self.method!r}; allowed: {', '.join(METHODS)}")
        if self.method != "ddim" and self.source is None:
            raise ValueError(f"inversion method {self.method} needs the image's class: pick its class, or method ddim")
        check_int("steps", self.steps, 1)
        check_number("strength", self.strength, 0.0, 1.0)
        check_number("guidance weight w", self.w, 0.0)
