"""``ddim sample | interpolate``, and the helpers every sampling subcommand shares: parse -> library call
-> files.

Registered by ``ddim.cli``; each ``_run_*`` is a few lines over ``ddim.generate``, ``ddim.sample`` and
``ddim.images``. ``invert | reconstruct | edit`` are in ``cli_inversion``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .samplers.solvers import SOLVERS, get_solver, solver_help

__all__ = ["SUBCOMMANDS"]


def _eta(text: str):
    """--eta: a number >= 0 or "large" (σ̂)."""
    if text == "large":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'large', got {text!r}") from None


def _class_help() -> str:
    from .data import FASHION_MNIST_CLASSES

    names = ", ".join(f"{i} {name}" for i, name in enumerate(FASHION_MNIST_CLASSES))
    return f"the bundled Fashion-MNIST model's classes: {names}"


def _common(p, formatter_default_steps: int = 50, with_class: bool = True, solver_defaults: bool = False) -> None:
    from .timesteps import SPACINGS

    from .checkpoint import BUNDLED_MODEL

    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL),
                   help="run directory, checkpoint directory, or diffusers UNet2DModel/pipeline directory "
                        "(default: the bundled class-conditional Fashion-MNIST model)")
    if solver_defaults:  # `ddim sample`: the defaults follow the solver (``_resolve_solver_defaults``)
        p.add_argument("--steps", type=int, default=None,
                       help=f"sampling steps S (1..T) (default: {FAST_STEPS} for the multistep solvers and heun, "
                            "50 for ddim and the score solvers)")
        p.add_argument("--spacing", default=None, choices=SPACINGS,
                       help="sub-sequence of the training steps (default: logsnr for the multistep solvers and heun, "
                            "uniform for ddim and the score solvers)")
    else:
        p.add_argument("--steps", type=int, default=formatter_default_steps, help="sampling steps S (1..T)")
        p.add_argument("--spacing", default="uniform", choices=SPACINGS, help="sub-sequence of the training steps")
    if with_class:
        p.add_argument("--class", dest="class_id", type=int, default=None,
                       help="class label for a class-conditional model (default: cycle through the classes, or "
                            f"unconditional); {_class_help()}")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="use the live training weights (default: the EMA weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="sample i is seeded by (seed, i)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def _add_dist_timeout(g) -> None:
    """--dist-timeout, for the subcommands that run under torchrun (train, train-classifier, eval)."""
    from .distributed import RENDEZVOUS_TIMEOUT

    g.add_argument("--dist-timeout", type=float, default=RENDEZVOUS_TIMEOUT, metavar="SECONDS",
                   help="with RANK and WORLD_SIZE set (torchrun, or by hand): how long a process waits for the others "
                        "to join before it gives up, naming who is missing")


def _add_clip(p, default: float = 1.0) -> None:
    p.add_argument("--clip", type=float, default=default,
                   help="clamp each step's predicted x_0 to [-clip, clip] and re-derive the predicted noise from "
                        "the clamped x_0, as DDPM's posterior mean does for data in [-1, 1] (keeping the raw noise "
                        "instead breaks guided sampling: benchmarks/guidance.py); 0: off, the DDIM paper's plain "
                        "update")


def _clip(args):
    """--clip as ``ddim.sample``'s ``clip`` argument (None: off)."""
    if not args.clip >= 0:
        raise ValueError(f"--clip must be a number >= 0 (0: off), got {args.clip}")
    return args.clip or None


def _x0_rule(args) -> dict:
    """``ddim.sample``'s keywords for --clip: clamp x̂_0 and re-derive ε̂ from it, or nothing (plain update)."""
    clip = _clip(args)
    return {} if clip is None else {"clip": clip, "eps_from_clipped_x0": True}


# `ddim sample`'s default: the best solver at 10 model calls on the bundled model, whose FID there (0.58)
# equals DDIM's at 50 calls (0.60; docs/eval/solvers, docs/eval/table1_clip1), at a fifth of the cost.
DEFAULT_SOLVER, FAST_STEPS = "dpmpp-2m", 10
# and w = 0.5 for a class-conditional model: at that default it lowers FID from 0.58 ± 0.06 to 0.49 ± 0.04
# and raises class agreement from 0.887 to 0.959 (n = 1,000; benchmarks/RESULTS.md 2026-12-02)
DEFAULT_GUIDANCE = 0.5


def _add_solver(p, deterministic: bool = False, sample_default: bool = False) -> None:
    """--solver; ``deterministic``: the ODE solvers only (where an image must be a function of its x_T);
    ``sample_default``: `ddim sample`'s (dpmpp-2m, or ddim when --eta is given)."""
    names = tuple(n for n in SOLVERS if not (deterministic and SOLVERS[n].noise_eta))
    default = (f"default: {DEFAULT_SOLVER}, or ddim when --eta is given" if sample_default else "default: ddim")
    p.add_argument("--solver", choices=names, default=None if sample_default else "ddim",
                   help=f"the step: {solver_help(deterministic)}"
                        + ("" if deterministic else "; all but ddim (and pc with the ddim predictor) take η = 0 only")
                        + f". Higher orders pay off in few steps (10-20) with --spacing logsnr ({default})")


def _resolve_solver_defaults(args) -> None:
    """Fill `ddim sample`'s unset --solver, --spacing, --steps and --eta from the solver: DPM-Solver++(2M) on
    the log-SNR grid with 10 steps unless --eta (or --sampler ddpm) asks for DDIM's η-family."""
    if args.solver is None:  # `ddim sample` only; interpolate and edit default to ddim
        args.solver = "ddim" if args.eta is not None or args.sampler == "ddpm" else DEFAULT_SOLVER
    fast = SOLVERS[args.solver].kind in ("multistep", "heun")
    if args.spacing is None:
        args.spacing = "logsnr" if fast else "uniform"
    if args.steps is None:
        args.steps = FAST_STEPS if fast else 50
    if getattr(args, "eta", 0.0) is None:
        args.eta = 0.0


def _add_score_solver(p) -> None:
    """The options of --solver pc and --solver langevin (``ddim.samplers.score``)."""
    from .samplers.score import PC_PREDICTORS

    g = p.add_argument_group("predictor-corrector and Langevin (--solver pc / langevin)")
    g.add_argument("--predictor", choices=PC_PREDICTORS, default=None,
                   help="pc: the step after the corrector (default: ddim, with --eta)")
    g.add_argument("--corrector", choices=("langevin",), default=None,
                   help="pc: the corrector, Langevin dynamics with the signal-to-noise step rule (default: langevin)")
    g.add_argument("--snr", type=float, default=None,
                   help="pc: the corrector's signal-to-noise ratio r in δ = 2α (r‖z‖/‖s‖)² (default: 0.16, score_sde's)")
    g.add_argument("--corrector-steps", type=int, default=None, help="pc: Langevin steps per level (default: 1)")
    g.add_argument("--langevin-steps", type=int, default=None, help="langevin: steps L per level (default: 2)")
    g.add_argument("--step-size", type=float, default=None,
                   help="langevin: δ_t = step-size · (1 − ᾱ_t) (default: 0.1)")


def _solver(args):
    """The ``Solver`` --solver and its options name (checked: an option of another solver is an error)."""
    import dataclasses

    solver = get_solver(args.solver)
    options = {"pc": {"predictor": "predictor", "corrector": None, "snr": "snr", "corrector_steps": "corrector_steps"},
               "langevin": {"langevin_steps": "langevin_steps", "step_size": "step_size"}}
    for name, fields in options.items():
        given = {arg: getattr(args, arg, None) for arg in fields if getattr(args, arg, None) is not None}
        if given and args.solver != name:
            flags = ", ".join("--" + a.replace("_", "-") for a in given)
            raise ValueError(f"{flags} applies to --solver {name} only (got --solver {args.solver})")
        if given:
            solver = dataclasses.replace(solver, **{fields[a]: v for a, v in given.items() if fields[a]})
    return solver


def _add_classifier(p) -> None:
    g = p.add_argument_group("classifier guidance")
    g.add_argument("--classifier-scale", type=float, default=0.0,
                   help="scale s of classifier guidance, ε̂ − s √(1−ᾱ_t) ∇ log p(y | x_t) (0: off)")
    g.add_argument("--classifier", default=None,
                   help="noisy classifier checkpoint (`ddim train-classifier`; default with --classifier-scale: "
                        "the bundled Fashion-MNIST classifier)")


def _load_classifier(args, model, schedule, device):
    """The noisy classifier of --classifier / --classifier-scale, checked against the model; None when off."""
    from .checkpoint import BUNDLED_NOISY_CLASSIFIER, load_noisy_classifier
    from .generate import check_classifier

    scale = args.classifier_scale
    if not (scale >= 0 and scale < float("inf")):
        raise ValueError(f"--classifier-scale must be a finite number >= 0, got {scale}")
    if not scale:
        if args.classifier is not None:
            raise ValueError("--classifier needs --classifier-scale > 0")
        return None
    classifier, c_schedule, _ = load_noisy_classifier(args.classifier or BUNDLED_NOISY_CLASSIFIER, device=device)
    check_classifier(model, schedule, classifier, c_schedule)
    return classifier


MAX_N = 1_000_000          # images per command (an FID needs 50,000)
MAX_BATCH = 65_536
MAX_FRAMES = 1_000


def _writable(path, suffixes=None, folder: bool = False) -> Path:
    """Fail before any work (and without creating anything) if ``path`` cannot be written: a wrong suffix
    (``suffixes``: the allowed ones; None: an image format), an existing folder in its place (or, with
    ``folder``, a file), a file where a parent folder must go, an unwritable folder or a symlink loop."""
    from .images import check_image_path

    path = Path(path)
    if folder:
        pass
    elif suffixes is None:
        check_image_path(path)
    elif path.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write {path}: the file name must end in {' or '.join(suffixes)}")
    try:
        if path.is_dir() != folder and path.exists():
            raise OSError(f"cannot write {path}: it exists and is {'not ' if folder else ''}a folder")
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


def _distinct(outputs: dict, inputs=()) -> None:
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


def _check_count(name: str, value: int, most: int, least: int = 1) -> None:
    if not least <= value <= most:
        raise ValueError(f"{name} must be an integer in [{least}, {most:,}], got {value}")


def _save_npz(path, **arrays) -> None:
    """``numpy.savez`` to exactly ``path`` (no ".npz" appended), atomically."""
    import numpy as np

    from .atomic import atomic_write

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load(args):
    from .checkpoint import load_checkpoint
    from .device import resolve_device

    device = resolve_device(args.device)
    model, schedule, config = load_checkpoint(args.checkpoint, ema=args.ema, device=device)
    return model, schedule, config.prediction, device


def _bar(args, total: int, what: str):
    from tqdm import tqdm

    return tqdm(total=total, disable=args.quiet, unit="step", desc=what, file=sys.stderr, dynamic_ncols=True)


def _note(args, lines) -> None:
    for line in lines if not args.quiet else ():
        print(f"ddim: note: {line}", file=sys.stderr)


# ------------------------------------------------------------------------------------------ sample

def _add_sample(sub, formatter) -> None:
    p = sub.add_parser("sample", help="generate images with DDIM (or DDPM) sampling", formatter_class=formatter,
                       description="Generate --n images into a grid PNG. With a fixed --seed, image i is the "
                                   "same whatever --n or --batch-size (up to float rounding: one grey level).")
    _common(p, solver_defaults=True)
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--eta", type=_eta, default=None, help="η of DDIM eq. 16 (0: deterministic DDIM, 1: DDPM "
                                                           "posterior variance), or 'large' for σ̂; selects the ddim "
                                                           "solver when --solver is not given (default: 0)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                   help="ddpm: ancestral sampling on all T steps with the fixed-large variance (ignores --steps, "
                        "--eta, --solver); T = 1000 model calls per image, 100× the default's 10")
    _add_solver(p, sample_default=True)
    _add_score_solver(p)
    _add_classifier(p)
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance weight w (0: off; default: {DEFAULT_GUIDANCE} for a class-conditional "
                        "model without --classifier-scale, else 0)")
    p.add_argument("--guidance-rescale", type=float, default=0.0,
                   help="φ in [0, 1]: pull the guided output's per-sample std back to the conditional one's "
                        "(Lin et al. 2023; they use 0.7); 0: off")
    _add_clip(p)
    p.add_argument("--fast", action="store_true",
                   help="on CUDA: bf16 autocast, channels_last, torch.compile (the first batch waits for it) and "
                        "the whole loop replayed as one CUDA graph; images match the default within bf16 "
                        "rounding. On the CPU only channels_last. Whatever fails falls back, with a warning")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="run the network in channels_last memory format (default: on the CPU, where it sampled "
                        "1-14 %% faster; images equal to eager's within 2e-6)")
    p.add_argument("--out", default="samples.png", help="grid PNG to write")
    p.add_argument("--npz", default=None, help="also write the raw float images in [-1, 1] to this .npz")
    p.add_argument("--images-dir", default=None, help="also write one PNG per image into this folder")
    p.add_argument("--trajectory", default=None,
                   help="also write x_t and predicted x_0 across the steps for the first 4 images (.png or .gif)")
    p.set_defaults(func=_run_sample)


def _run_sample(args) -> int:
    from .generate import class_labels, conditioned, generate
    from .images import save_grid, save_images
    from .samplers import plan

    _resolve_solver_defaults(args)
    out = _writable(args.out)
    _distinct({"--out": args.out, "--npz": args.npz, "--trajectory": args.trajectory, "--images-dir": args.images_dir})
    if args.npz:
        _writable(args.npz, (".npz",))
    if args.trajectory:
        _writable(args.trajectory, (".png", ".gif"))
    _check_count("--n", args.n, MAX_N)
    if args.images_dir:
        _writable(args.images_dir, folder=True)
        _check_images_dir(args.images_dir, args.n)
    _check_count("--batch-size", args.batch_size, MAX_BATCH)
    if args.sampler == "ddpm" and args.solver != "ddim":
        raise ValueError(f"--sampler ddpm is DDPM's own ancestral step; it takes no --solver (got {args.solver})")
    solver = _solver(args)
    if args.sampler == "ddim":
        solver.eta(args.eta)  # a solver that takes no η: before loading anything
    model, schedule, prediction, device = _load(args)
    pictures = _pictures(args, model.config.in_channels)
    if args.guidance is None:
        conditional = model.config.num_classes is not None and not args.classifier_scale
        args.guidance = DEFAULT_GUIDANCE if conditional else 0.0
    steps, eta = (schedule.num_steps, "large") if args.sampler == "ddpm" else (args.steps, args.eta)
    # validate everything before the progress bar starts
    plan(schedule, steps, eta, args.spacing, solver=solver)
    x0_rule = _x0_rule(args)
    classifier = _load_classifier(args, model, schedule, device)
    model_class = args.class_id if model.config.num_classes is not None or classifier is None else None
    conditioned(model, class_labels([0], model.config.num_classes, model_class), args.guidance, args.guidance_rescale)
    if classifier is not None:
        class_labels([0], classifier.config.num_classes, args.class_id)
    batches = -(-args.n // args.batch_size)
    if args.sampler == "ddpm":
        _note(args, [f"--sampler ddpm makes T = {steps} model calls per image, {steps // FAST_STEPS}× the default's "
                     f"{FAST_STEPS}; the progress bar shows the time left"])
    with _bar(args, batches * steps, "sampling") as bar:
        # the trajectory only when asked: with --fast it keeps the first batch out of the CUDA graph
        res = generate(model, schedule, args.n, seed=args.seed, batch_size=args.batch_size, steps=steps, eta=eta,
                       spacing=args.spacing, prediction=prediction, class_id=args.class_id, guidance=args.guidance,
                       guidance_rescale=args.guidance_rescale, device=device, return_trajectory=bool(args.trajectory),
                       on_step=bar.update, fast=args.fast, channels_last=args.channels_last, solver=solver,
                       classifier=classifier, classifier_scale=args.classifier_scale, **x0_rule)
    images, traj = res if args.trajectory else (res, None)
    if pictures:
        save_grid(images, out)
    if args.npz:
        _save_npz(args.npz, images=images.numpy(), seed=args.seed, steps=steps, eta=str(eta))
    if args.images_dir:
        save_images(images, args.images_dir)
    if args.trajectory:
        _save_trajectory(traj, args.trajectory)
    written = [str(out)] * pictures + [str(f) for f in (args.npz, args.trajectory) if f]
    if args.images_dir:
        written.append(f"{args.images_dir}/ (one PNG per image)")
    how = f"eta {eta}" if args.solver == "ddim" else f"solver {args.solver}"
    _note(args, [f"wrote {', '.join(written)} ({args.n} images, {steps} steps, {how})"])
    return 0


def _pictures(args, channels: int) -> bool:
    """Whether `ddim sample` writes its pictures: images of 1 or 3 channels. Others (a latent model's 4) go
    to --npz alone, and anything that would have to be a picture is refused before sampling."""
    from .images import check_channels

    if channels in (1, 3):
        return True
    wanted = [f for f, v in (("--images-dir", args.images_dir), ("--trajectory", args.trajectory)) if v]
    if not args.npz or wanted:
        check_channels(channels, "the model's images")  # raises, naming the count
    return False


def _check_images_dir(folder, n: int) -> None:
    """Refuse, before sampling, an --images-dir where one of the n per-image files cannot go (a folder, or
    anything else that is not a file, in its place)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        name = entry.name
        if name.endswith(".png") and name[:-4].isdigit() and len(name) == 10 and int(name[:-4]) < n \
                and (entry.is_dir() or (entry.is_symlink() and not os.path.exists(entry.path))):
            what = "a folder" if entry.is_dir() else "a symlink that leads nowhere"
            raise OSError(f"cannot write {entry.path}: it exists and is {what}")


def _save_trajectory(traj, path, samples: int = 4, columns: int = 10) -> None:
    """PNG: for each of the first samples a row of x_t and a row of predicted x_0 at ≤ columns steps.
    GIF: one frame per step, x_t above predicted x_0."""
    import torch

    from .images import make_grid, save_gif, save_grid

    xs, x0s = traj.x[1:, :samples].float().cpu(), traj.x0_pred[:, :samples].float().cpu()  # (S, m, C, H, W)
    S, m = x0s.shape[:2]
    if Path(path).suffix.lower() == ".gif":
        save_gif([make_grid(torch.cat([xs[k], x0s[k]]), nrow=m) for k in range(S)], path)
        return
    n = min(columns, S)
    cols = sorted({round(k * (S - 1) / max(n - 1, 1)) for k in range(n)})  # evenly spaced, last step included
    rows = [torch.stack([src[k, j] for k in cols]) for j in range(m) for src in (xs, x0s)]
    save_grid(torch.cat(rows), path, nrow=len(cols))


# ------------------------------------------------------------------------------------- interpolate

def _add_interpolate(sub, formatter) -> None:
    p = sub.add_parser("interpolate", help="spherical interpolation between two latents, decoded with η = 0",
                       formatter_class=formatter,
                       description="Slerp between the x_T of two seeds (image 0 of `ddim sample --seed A` and "
                                   "--seed B) or of two inverted images, decoded with deterministic DDIM "
                                   "(DDIM paper section 5.3).")
    _common(p, solver_defaults=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"), help="two seeds")
    src.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files to invert first")
    p.add_argument("--frames", type=int, default=9, help="images from A to B inclusive")
    _add_solver(p, deterministic=True)
    _add_clip(p)
    p.add_argument("--out", default="interpolation.png", help="PNG strip to write")
    p.set_defaults(func=_run_interpolate)


def _run_interpolate(args) -> int:
    from .generate import class_labels, initial_noise, interpolate
    from .images import save_grid

    _resolve_solver_defaults(args)
    out = _writable(args.out)
    _distinct({"--out": args.out}, args.images or ())
    _check_count("--frames", args.frames, MAX_FRAMES, least=2)
    x0_rule = _x0_rule(args)
    if args.images:  # decode with the conditioning used to invert
        from .cli_inversion import _inverted

        model, schedule, prediction, _, xT, labels, _ = _inverted(args)
        z0, z1 = xT[:1], xT[1:]
    else:  # the x_T of image 0 of `ddim sample --seed A` / `--seed B`, and that image's label
        from .images import check_channels

        model, schedule, prediction, device = _load(args)
        cfg = model.config
        check_channels(cfg.in_channels, "the model's images")  # the strip is a picture
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        z0, z1 = (initial_noise(seed, [0], shape, device)[0] for seed in args.seeds)
        labels = class_labels([0], cfg.num_classes, args.class_id)
    label = None if labels is None else int(labels[0])
    images = interpolate(model, schedule, z0, z1, args.frames, steps=args.steps, spacing=args.spacing,
                         prediction=prediction, label=label, solver=args.solver, **x0_rule)
    save_grid(images, out, nrow=args.frames)
    _note(args, [f"wrote {out} ({args.frames} frames)"])
    return 0


SUBCOMMANDS = (_add_sample, _add_interpolate)
