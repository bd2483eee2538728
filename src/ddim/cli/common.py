"""What every ``ddim`` subcommand shares: the parser classes, each shared flag defined once, the checks of
output paths that run before any work, and loading, progress and notes.

A subcommand module (``train``, ``sample``, ``inversion``, ``eval``, ``distill``) imports only this module and
the library. Errors a user can fix (bad values, missing files, corrupted checkpoints) are raised as
``ValueError``/``OSError``; ``ddim.cli.main`` turns them into one ``ddim: error: ...`` line and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..generate import DEFAULT_GUIDANCE, DEFAULT_GUIDANCE_METHOD, DEFAULT_SOLVER, INTERVAL_STUDENT_GUIDANCE
from ..samplers.solvers import SOLVERS, get_solver, solver_help

__all__ = ["Parser", "Formatter", "UsageError", "EXIT_USAGE", "EXIT_FAILED", "int_list", "float_pair", "eta_value",
           "add_bf16",
           "class_help", "add_checkpoint", "add_device", "add_quiet", "add_no_ema", "add_seed", "add_data_dir",
           "add_guidance", "add_sampling_args", "add_guidance_method", "method_options", "guidance_options",
           "add_dist_timeout", "add_clip", "add_solver", "add_images", "clip_value", "x0_rule",
           "resolve_solver_defaults", "writable", "distinct", "check_count", "save_npz", "load_model", "progress",
           "LazyProgress", "note", "invert_images",
           "DEFAULT_SOLVER", "FAST_STEPS", "DEFAULT_GUIDANCE", "DEFAULT_GUIDANCE_METHOD", "MAX_N", "MAX_BATCH", "MAX_FRAMES"]

EXIT_USAGE = 2        # bad input: arguments, data, checkpoints
EXIT_FAILED = 1       # training diverged (NaN/Inf)
MAX_N = 1_000_000     # images per command (an FID needs 50,000)
MAX_BATCH = 65_536
MAX_FRAMES = 1_000
NAME_MAX = 255        # bytes per file or folder name on the common file systems
FAST_STEPS = SOLVERS[DEFAULT_SOLVER].default_steps  # `ddim sample`'s default steps (ddim.generate says why)


class UsageError(Exception):
    """Raised by the parser instead of printing usage and exiting, so main() reports one line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after an option, unless its help already says what the default is, or the
    default is "not given" (None) or an on-switch's off."""

    def _get_help_string(self, action):
        switch = isinstance(action, argparse._StoreTrueAction)  # off unless given
        if ("default:" in (action.help or "") or "(default" in (action.help or "")
                or action.default is None or action.default is argparse.SUPPRESS or switch
                or action.required):
            return action.help
        return super()._get_help_string(action)


def int_list(text: str) -> tuple[int, ...]:
    """"1,2,2" -> (1, 2, 2)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,2, got {text!r}") from None


def eta_value(text: str):
    """--eta: a number >= 0 or "large" (σ̂)."""
    if text == "large":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'large', got {text!r}") from None


def class_help() -> str:
    from ..data import FASHION_MNIST_CLASSES

    names = ", ".join(f"{i} {name}" for i, name in enumerate(FASHION_MNIST_CLASSES))
    return f"the bundled Fashion-MNIST model's classes: {names}"


# ---------------------------------------------------------------------------------- shared flags

def add_checkpoint(p, student_default: bool = False) -> None:
    """--checkpoint; ``student_default`` (`ddim sample`): unset, then the bundled student or, given an option
    only the teacher honours, the bundled model (``sample.default_checkpoint``)."""
    from ..checkpoint import BUNDLED_MODEL, named_checkpoint

    default = ("default: 'distilled', or 'bundled' with any option only the teacher honours (--steps, --solver, "
               "--guidance-method, a classifier, ...)" if student_default else "default: 'bundled'")
    p.add_argument("--checkpoint", default=None if student_default else str(BUNDLED_MODEL), type=named_checkpoint,
                   help="run directory, checkpoint directory, or diffusers UNet2DModel/pipeline directory; 'bundled': "
                        "the bundled class-conditional Fashion-MNIST model, 'distilled': its 4-step student (`ddim "
                        f"distill`) ({default})")


def add_device(p) -> None:
    from ..device import DEVICES_HELP

    p.add_argument("--device", default="auto", help=DEVICES_HELP)


def add_quiet(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def add_no_ema(p) -> None:
    p.add_argument("--no-ema", dest="ema", action="store_false",
                   help="use the live training weights (default: the EMA weights)")


def add_seed(p, help: str = "sample i is seeded by (seed, i)", type=int) -> None:
    p.add_argument("--seed", type=type, default=0, help=help)


def add_data_dir(g, help: str) -> None:
    from ..data import FASHION_MNIST_DIR, FASHION_MNIST_ENV, FASHION_MNIST_INSTALL

    g.add_argument("--data-dir", default=None,
                   help=f"{help} (default for Fashion-MNIST: ${FASHION_MNIST_ENV}, else {FASHION_MNIST_DIR}, from "
                        f"`{FASHION_MNIST_INSTALL}`)")


def add_guidance(p, default, help: str) -> None:
    """--guidance: the classifier-free guidance weight w of ε̂ = (1 + w) ε_c − w ε_∅ (0: off)."""
    p.add_argument("--guidance", type=float, default=default, help=f"classifier-free guidance weight w; {help}")


def add_guidance_method(p, sample_default: bool = False) -> None:
    """--guidance-method and each method's own parameters (``ddim.guidance_methods``); ``sample_default``:
    `ddim sample`'s, left unset (None) for ``resolve_guidance_defaults``."""
    from ..guidance import GUIDANCE_METHODS, MethodOptions

    d = MethodOptions()
    default = (f" (default: {DEFAULT_GUIDANCE_METHOD}; cfg for a distilled student)" if sample_default
               else f" (default: {d.method})")
    g = p.add_argument_group("guidance method (class-conditional models)")
    g.add_argument("--guidance-method", choices=GUIDANCE_METHODS, default=None if sample_default else d.method,
                   help="how --guidance is applied: cfg, classifier-free guidance; interval, CFG only for noise levels "
                        "σ in --guidance-interval; apg, adaptive projected guidance; cfgpp, CFG++ (--guidance is its "
                        "λ in [0, 1]: 0 the unconditional sampler; solver ddim or pc); auto, autoguidance by "
                        "--guide-checkpoint" + default)
    g.add_argument("--guidance-interval", type=float_pair, default=d.interval, metavar="LO,HI",
                   help="interval: guide where LO < σ <= HI, σ = √((1 − ᾱ)/ᾱ) (default: 0.28,5.42, EDM2's)")
    g.add_argument("--apg-eta", type=float, default=d.apg_eta,
                   help="apg: weight η in [0, 1] of the update's part parallel to the conditional x̂₀")
    g.add_argument("--apg-norm-cap", type=float, default=d.apg_norm_cap,
                   help="apg: largest per-sample norm r of the update (inf: no cap)")
    g.add_argument("--apg-momentum", type=float, default=d.apg_momentum,
                   help="apg: reverse momentum β in (-1, 1) across steps (0: none)")
    g.add_argument("--guide-checkpoint", default=None, metavar="DIR",
                   help="auto: the worse version of the model (fewer parameters or steps, same data, labels and "
                        "schedule) that guidance pushes away from")


def add_bf16(g) -> None:
    """--bf16: bfloat16 autocast of the training forward passes (``TrainConfig.bf16``)."""
    g.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast of the forward pass, on CUDA or the CPU (fast on CPUs with AMX or "
                        "AVX512-BF16, slower than float32 on others); weights, optimizer and loss stay float32")


def float_pair(text: str) -> tuple:
    """"LO,HI" -> (LO, HI)."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers like 0.28,5.42, got {text!r}") from None
    return lo, hi


def method_options(args, solvers=()):
    """The ``MethodOptions`` of the guidance-method flags, checked (cheap: call it before loading anything);
    ``solvers``: the solvers (names or instances) it will run with (CFG++ needs one that steps with x̂_0 and ε̂ both)."""
    from ..guidance import MethodOptions

    if args.guidance is not None and not 0 <= args.guidance < float("inf"):
        raise ValueError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    method = MethodOptions(args.guidance_method, interval=args.guidance_interval, apg_eta=args.apg_eta,
                           apg_norm_cap=args.apg_norm_cap, apg_momentum=args.apg_momentum)
    if (args.guide_checkpoint is not None) != (method.method == "auto"):
        raise ValueError("--guide-checkpoint goes with --guidance-method auto, and auto needs it")
    for solver in map(get_solver, solvers) if method.method == "cfgpp" else ():
        if not solver.reads_x0_and_eps:
            allowed = ", ".join(n for n, s in SOLVERS.items() if s.reads_x0_and_eps)
            given = solver.name + (f" --predictor {solver.predictor.name}" if hasattr(solver, "predictor") else "")
            raise ValueError(f"--guidance-method cfgpp steps with x̂_0 and ε̂ of different predictions; --solver "
                             f"{given} reads one of them alone (allowed: {allowed})")
    return method


def guidance_options(args, model, schedule, device, classifier=None):
    """The ``GuidanceOptions`` of --class, --guidance, --guidance-rescale, the method flags and (where the
    subcommand has them) classifier guidance; --guide-checkpoint loaded and checked against the model."""
    from ..guidance import GuidanceOptions

    method = method_options(args)
    guide = None
    if args.guide_checkpoint is not None:
        from ..checkpoint import load_checkpoint
        from ..generate import check_guide

        guide, g_schedule, _ = load_checkpoint(args.guide_checkpoint, ema=True, device=device)
        check_guide(model, schedule, guide, g_schedule)
    return GuidanceOptions(class_id=getattr(args, "class_id", None), w=args.guidance,
                           rescale=getattr(args, "guidance_rescale", 0.0), classifier=classifier,
                           classifier_scale=getattr(args, "classifier_scale", 0.0) if classifier is not None else 0.0,
                           method=method, guide=guide)


def add_images(p, help: str = "image files (PNG/JPEG, any size and mode)", count="+") -> None:
    """--images (also spelled --image): the input image files."""
    p.add_argument("--images", "--image", dest="images", nargs=count, required=True,
                   metavar="IMAGE" if count == "+" else None, help=help)


def add_sampling_args(p, default_steps: int = 50, with_class: bool = True, solver_defaults: bool = False,
                      student_default: bool = False) -> None:
    """The flags of every sampling subcommand: checkpoint (``student_default``: ``add_checkpoint``'s), steps and
    spacing (``solver_defaults``: unset, then filled by ``resolve_solver_defaults``), class, batch size, EMA,
    device, seed, quiet."""
    from ..timesteps import SPACINGS

    add_checkpoint(p, student_default)
    if solver_defaults:  # `ddim sample`: the defaults follow the solver (``resolve_solver_defaults``)
        p.add_argument("--steps", type=int, default=None,
                       help=f"sampling steps S (1..T) (default: {FAST_STEPS} for the multistep solvers and heun, "
                            "50 for ddim and the score solvers; a distilled student (`ddim distill`): its own N "
                            "steps of ddim, or of consistency for a consistency student)")
        p.add_argument("--spacing", default=None, choices=SPACINGS,
                       help="sub-sequence of the training steps (default: logsnr for the multistep solvers and heun, "
                            "uniform for ddim and the score solvers; a distilled student's: trailing)")
    else:
        p.add_argument("--steps", type=int, default=default_steps, help="sampling steps S (1..T)")
        p.add_argument("--spacing", default="uniform", choices=SPACINGS, help="sub-sequence of the training steps")
    if with_class:
        p.add_argument("--class", dest="class_id", type=int, default=None,
                       help="class label for a class-conditional model (default: cycle through the classes, or "
                            f"unconditional); {class_help()}")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    add_no_ema(p)
    add_device(p)
    add_seed(p)
    add_quiet(p)


def _dist_timeout(text: str) -> float:
    """--dist-timeout: checked at parsing, so a bad value is refused with or without RANK/WORLD_SIZE."""
    from ..distributed import check_timeout

    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    try:
        return check_timeout(seconds)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_dist_timeout(g) -> None:
    """--dist-timeout, for the subcommands that run under torchrun (train, train-classifier, eval, distill)."""
    from ..distributed import RENDEZVOUS_TIMEOUT

    g.add_argument("--dist-timeout", type=_dist_timeout, default=RENDEZVOUS_TIMEOUT, metavar="SECONDS",
                   help="with RANK and WORLD_SIZE set (torchrun, or by hand): how long a process waits for the others "
                        "to join before it gives up, naming who is missing")


def add_clip(p, default: float = 1.0, student: bool = False) -> None:
    """--clip; ``student``: left unset (None) so that a distilled student's own rule can fill it
    (``resolve_solver_defaults``), ``default`` otherwise."""
    p.add_argument("--clip", type=float, default=None if student else default,
                   help="clamp each step's predicted x_0 to [-clip, clip] and re-derive the predicted noise from "
                        "the clamped x_0, as DDPM's posterior mean does for data in [-1, 1] (keeping the raw noise "
                        "instead breaks guided sampling: benchmarks/guidance.py); 0: off, the DDIM paper's plain "
                        "update" + (f" (default: {default:g}; a distilled student's own rule, 0 after halving)"
                                    if student else ""))


def clip_value(args):
    """--clip as ``ddim.sample``'s ``clip`` argument (None: off; an unset --clip is 1)."""
    if args.clip is None:
        args.clip = 1.0
    if not args.clip >= 0:
        raise ValueError(f"--clip must be a number >= 0 (0: off), got {args.clip}")
    return args.clip or None


def x0_rule(args) -> dict:
    """``ddim.sample``'s keywords for --clip: clamp x̂_0 and re-derive ε̂ from it, or nothing (plain update)."""
    clip = clip_value(args)
    return {} if clip is None else {"clip": clip, "eps_from_clipped_x0": True}


def add_solver(p, deterministic: bool = False, sample_default: bool = False) -> None:
    """--solver; ``deterministic``: the ODE solvers only (where an image must be a function of its x_T);
    ``sample_default``: `ddim sample`'s (dpmpp-2m, or ddim when --eta is given)."""
    names = tuple(n for n in SOLVERS if not (deterministic and SOLVERS[n].noise_eta))
    default = (f"default: {DEFAULT_SOLVER}, or ddim with --eta or --guidance-method cfgpp" if sample_default
               else "default: ddim")
    p.add_argument("--solver", choices=names, default=None if sample_default else "ddim",
                   help=f"the step: {solver_help(deterministic)}"
                        + ("" if deterministic else "; all but ddim (and pc with the ddim predictor) take η = 0 only")
                        + f". Higher orders pay off in few steps (10-20) with --spacing logsnr ({default})")


def resolve_solver_defaults(args) -> None:
    """Fill `ddim sample`'s unset --solver, --spacing, --steps and --eta from the solver: DPM-Solver++(2M) on
    the log-SNR grid with 10 steps unless --eta (or --sampler ddpm, or --guidance-method cfgpp) asks for DDIM.
    A distilled student (``ddim distill``) samples as it was trained to instead: deterministic DDIM (a consistency
    student: multistep consistency sampling) on its own grid (its N steps, trailing spacing) with its own x̂_0 rule
    and plain cfg (other methods are refused).
    An unset --guidance-method (`ddim sample`'s) is ``DEFAULT_GUIDANCE_METHOD``."""
    _student_defaults(args)
    if getattr(args, "guidance_method", "") is None:
        args.guidance_method = DEFAULT_GUIDANCE_METHOD
    if args.solver is None:  # `ddim sample` only; interpolate and edit default to ddim
        ddim_only = args.eta is not None or args.sampler == "ddpm" or getattr(args, "guidance_method", "") == "cfgpp"
        args.solver = "ddim" if ddim_only else DEFAULT_SOLVER
    solver = SOLVERS[args.solver]
    if args.spacing is None:
        args.spacing = solver.default_spacing
    if args.steps is None:
        args.steps = solver.default_steps
    if getattr(args, "eta", 0.0) is None:
        args.eta = 0.0


def _student_defaults(args) -> None:
    """The unset flags a distilled student's record fills (``resolve_solver_defaults``), from its config.json
    alone: before anything is loaded. Anything unreadable is left for loading to name."""
    from ..checkpoint import find_checkpoint, read_json
    from ..config import DISTILL_SPACING, DistillConfig

    try:
        record = DistillConfig.from_dict(read_json(find_checkpoint(args.checkpoint) / "config.json")["distill"])
    except (ValueError, OSError, TypeError, KeyError):
        return
    if getattr(args, "guidance_method", "") is None:  # `ddim sample`'s unset method: the student's own
        args.guidance_method = "cfg"
    if getattr(args, "guidance", 0.0) is None and record.guidance_interval is not None:
        args.guidance = INTERVAL_STUDENT_GUIDANCE
    if getattr(args, "guidance_method", "cfg") != "cfg":
        learnt = ("" if record.guidance_interval is None else
                  " (it learnt interval guidance on ({:g}, {:g}]: --guidance is already that method's weight)"
                  .format(*record.guidance_interval))
        raise ValueError(f"--guidance-method {args.guidance_method} needs a second (∅) forward; {args.checkpoint} is "
                         f"a guidance-distilled student (`ddim distill`) whose --guidance is an input of its one "
                         f"forward{learnt}: use --guidance-method cfg")
    if args.solver is None and getattr(args, "eta", None) is None and getattr(args, "sampler", "ddim") == "ddim":
        args.solver = record.solver  # ddim; "consistency" for a consistency student (Song et al.'s Algorithm 1)
    # None: ddim, set below for --eta (its own grid, not ddim's 50 steps); a consistency student's one DDIM step is
    # its one-step sample too
    if args.solver in (None, "ddim", record.solver):
        args.steps = record.steps if args.steps is None else args.steps
        args.spacing = DISTILL_SPACING if args.spacing is None else args.spacing
    if getattr(args, "clip", 0.0) is None:
        args.clip = record.clip or 0.0


# ---------------------------------------------------------------------------------- before any work

def writable(path, suffixes=None, folder: bool = False) -> Path:
    """Fail before any work (and without creating anything) if ``path`` cannot be written: a wrong suffix
    (``suffixes``: the allowed ones; None: an image format), an existing folder in its place (or, with
    ``folder``, a file), a file where a parent folder must go, an unwritable folder or a symlink loop."""
    from ..images import check_image_path

    path = Path(path)
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise ValueError(f"cannot write {path}: the name {long[:24]}… is {len(os.fsencode(long))} bytes; file "
                         f"systems take at most {NAME_MAX}")
    if folder:
        pass
    elif suffixes is None:
        check_image_path(path)
    elif path.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write {path}: the file name must end in {' or '.join(suffixes)}")
    try:
        if path.is_dir() != folder and path.exists():
            raise OSError(f"cannot write {path}: it exists and is {'not ' if folder else ''}a folder")
        if not folder and path.exists() and not path.is_file():  # a device or a pipe (or a link to one)
            raise OSError(f"cannot write {path}: it exists and is not a regular file")
        ancestor = path if folder else path.parent
        while not ancestor.exists():  # the nearest existing ancestor must be a writable folder
            if ancestor.is_symlink():
                raise OSError(f"cannot write {path}: {ancestor} is a symlink that leads nowhere (dangling, or a loop)")
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise OSError(f"cannot write {path}: {ancestor} exists and is not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise OSError(f"cannot write {path}: {ancestor} is not writable")
    except OSError as e:
        if e.errno is None:
            raise
        raise OSError(f"cannot write {path}: {e.strerror}") from None  # e.g. a symlink loop (ELOOP)
    return path


def distinct(outputs: dict, inputs=()) -> None:
    """Refuse, before any work, two outputs at one path or an output at an input image's path: the later
    write would silently replace the earlier file (or the user's image). ``outputs``: flag -> path or None."""
    seen = {}
    for flag, path in outputs.items():
        if path is None:
            continue
        key = os.path.realpath(path)  # "a.png", "./a.png" and a symlink to it are one file
        if key in seen:
            raise ValueError(f"{flag} {path} is the same path as {seen[key]}; give each output its own path")
        seen[key] = f"{flag} {path}"
    for path in inputs:
        if os.path.realpath(path) in seen:
            raise ValueError(f"{seen[os.path.realpath(path)]} would overwrite the input image {path}; "
                             "write the output elsewhere")


def check_count(name: str, value: int, most: int, least: int = 1) -> None:
    if not least <= value <= most:
        raise ValueError(f"{name} must be an integer in [{least}, {most:,}], got {value}")


# ---------------------------------------------------------------------------------- loading and output

def save_npz(path, **arrays) -> None:
    """``numpy.savez`` to exactly ``path`` (no ".npz" appended), atomically; a link there (the user's own
    path) is followed."""
    import numpy as np

    from ..atomic import atomic_write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays), follow_symlinks=True)


def load_model(args):
    from ..checkpoint import load_checkpoint
    from ..device import resolve_device

    device = resolve_device(args.device)
    model, schedule, config = load_checkpoint(args.checkpoint, ema=args.ema, device=device)
    return model, schedule, config.prediction, device


def progress(args, total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=args.quiet, unit="step", desc=what, file=sys.stderr, dynamic_ncols=True)


class LazyProgress:
    """A progress bar that appears when its total is known (``reset(total)``), so no empty bar is printed
    first; ``update()`` before that is an error, ``close()`` is safe either way."""

    def __init__(self, args, what: str):
        self.args, self.what, self.bar = args, what, None

    def reset(self, total: int) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = progress(self.args, total, self.what)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def note(args, lines) -> None:
    for line in lines if not args.quiet else ():
        print(f"ddim: note: {line}", file=sys.stderr)


def invert_images(args):
    """(model, schedule, prediction, images x_0, latents x_T, labels, conditioned model). Without --class, a
    class-conditional model inverts unconditionally (its null label)."""
    import torch

    from ..generate import class_labels, conditioned
    from ..images import load_images
    from ..samplers import invert, plan

    model, schedule, prediction, device = load_model(args)
    plan(schedule, args.steps, 0.0, args.spacing)  # bad --steps/--spacing fail before any work
    cfg = model.config
    x0, notes = load_images(args.images, cfg.image_size, cfg.in_channels)
    note(args, notes)
    labels = class_labels(range(len(x0)), cfg.num_classes, args.class_id)
    if labels is not None and args.class_id is None:
        labels = torch.full_like(labels, model.null_label)  # unknown class: the unconditional model
    m = conditioned(model, labels)
    with torch.inference_mode(), progress(args, args.steps, "inverting") as bar:
        xT = invert(m, schedule, x0.to(device), args.steps, args.spacing, prediction,
                    callback=lambda *_: bar.update())
    return model, schedule, prediction, x0, xT, labels, m
