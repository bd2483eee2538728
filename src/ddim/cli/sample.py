"""``ddim sample | interpolate``: parse -> ``ddim.generate`` -> pictures and arrays."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..generate import CFG_GUIDANCE, DEFAULT_GUIDANCE_METHOD, INTERVAL_STUDENT_GUIDANCE, default_guidance
from .common import (DEFAULT_GUIDANCE, FAST_STEPS, MAX_BATCH, MAX_FRAMES, MAX_N, Formatter, add_clip, add_guidance,
                     add_guidance_method, add_sampling_args, add_solver, check_count, distinct, eta_value,
                     guidance_options, invert_images, load_model, method_options, note, progress,
                     resolve_solver_defaults, save_npz, writable, x0_rule)

__all__ = ["SUBCOMMANDS"]


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="generate images with DDIM (or DDPM) sampling", formatter_class=Formatter,
                       description="Generate --n images into a grid PNG. With a fixed --seed, image i is the "
                                   "same whatever --n or --batch-size (up to float rounding: one grey level).")
    add_sampling_args(p, solver_defaults=True, student_default=True)
    p.add_argument("--n", type=int, default=64, help="number of images")
    p.add_argument("--eta", type=eta_value, default=None,
                   help="η of DDIM eq. 16 (0: deterministic DDIM, 1: DDPM posterior variance), or 'large' for σ̂; "
                        "selects the ddim solver when --solver is not given (default: 0)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim",
                   help="ddpm: ancestral sampling on all T steps with the fixed-large variance (ignores --steps, "
                        "--eta, --solver); T = 1000 model calls per image, 100× the default's 10")
    add_solver(p, sample_default=True)
    _add_score_solver(p)
    _add_classifier(p)
    add_guidance_method(p, sample_default=True)
    add_guidance(p, None, f"0: off (default: {DEFAULT_GUIDANCE} with the default method {DEFAULT_GUIDANCE_METHOD}, "
                          f"{CFG_GUIDANCE} with the others, for a class-conditional model without "
                          f"--classifier-scale; {INTERVAL_STUDENT_GUIDANCE} for a student distilled from interval "
                          "guidance; else 0)")
    p.add_argument("--guidance-rescale", type=float, default=0.0,
                   help="φ in [0, 1]: pull the guided output's per-sample std back to the conditional one's "
                        "(Lin et al. 2023; they use 0.7); 0: off")
    add_clip(p, student=True)
    p.add_argument("--fast", action="store_true",
                   help="on CUDA: bf16 autocast, channels_last, torch.compile (the first batch waits for it) and "
                        "the whole loop replayed as one CUDA graph; images match the default within bf16 "
                        "rounding. On the CPU channels_last, and bf16 autocast where the CPU has bf16 in "
                        "hardware (AMX, AVX512-BF16). Whatever fails falls back, with a warning")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="run the network in channels_last memory format (default: on the CPU, where it is faster; "
                        "images equal to eager's within 2e-6)")
    p.add_argument("--out", default="samples.png", help="grid PNG to write")
    p.add_argument("--npz", default=None, help="also write the raw float images in [-1, 1] to this .npz")
    p.add_argument("--images-dir", default=None, help="also write one PNG per image into this folder")
    p.add_argument("--trajectory", default=None,
                   help="also write x_t and predicted x_0 across the steps for the first 4 images (.png or .gif)")
    p.set_defaults(func=_run_sample, default_of=p.get_default)


# What the bundled student honours as well as its teacher; any other option given selects the teacher.
STUDENT_OPTIONS = frozenset({"command", "func", "default_of", "checkpoint", "class_id", "batch_size", "device", "seed",
                             "quiet", "n", "guidance", "clip", "fast", "channels_last", "out", "npz", "images_dir",
                             "trajectory"})


def default_checkpoint(args) -> str:
    """`ddim sample`'s unset --checkpoint: the bundled 4-step student ('distilled'), or the bundled model when an
    option other than ``STUDENT_OPTIONS`` differs from its default (a solver, steps, a guidance method, a
    classifier, ...: things a student cannot do). Returns what it chose, for the closing note."""
    from ..checkpoint import BUNDLED_MODEL, BUNDLED_STUDENT

    if args.checkpoint is not None:
        return ""
    teacher = [k for k, v in vars(args).items() if k not in STUDENT_OPTIONS and v != args.default_of(k)]
    args.checkpoint = str(BUNDLED_MODEL if teacher else BUNDLED_STUDENT)
    return " by the bundled model" if teacher else " by the bundled 4-step student (--checkpoint bundled: its teacher)"


def _run_sample(args) -> int:
    from ..generate import RunOptions, class_labels, conditioned, generate
    from ..images import save_grid, save_images
    from ..samplers import SampleOptions, plan

    chosen = default_checkpoint(args)
    resolve_solver_defaults(args)
    out = writable(args.out)
    distinct({"--out": args.out, "--npz": args.npz, "--trajectory": args.trajectory, "--images-dir": args.images_dir})
    if args.npz:
        writable(args.npz, (".npz",))
    if args.trajectory:
        writable(args.trajectory, (".png", ".gif"))
    check_count("--n", args.n, MAX_N)
    if args.images_dir:
        writable(args.images_dir, folder=True)
        _check_images_dir(args.images_dir, args.n)
    check_count("--batch-size", args.batch_size, MAX_BATCH)
    if args.sampler == "ddpm" and args.solver != "ddim":
        raise ValueError(f"--sampler ddpm is DDPM's own ancestral step; it takes no --solver (got {args.solver})")
    solver = _solver_from_args(args)
    if args.sampler == "ddim":
        solver.eta(args.eta)  # a solver that takes no η: before loading anything
    method_options(args, [solver])
    model, schedule, prediction, device = load_model(args)
    pictures = _pictures(args, model.config.in_channels)
    if args.guidance is None:
        conditional = model.config.num_classes is not None and not args.classifier_scale
        args.guidance = default_guidance(args.guidance_method) if conditional else 0.0
    steps, eta = (schedule.num_steps, "large") if args.sampler == "ddpm" else (args.steps, args.eta)
    # validate everything before the progress bar starts
    plan(schedule, steps, eta, args.spacing, solver=solver)
    rule = x0_rule(args)
    classifier = _load_classifier(args, model, schedule, device)
    model_class = args.class_id if model.config.num_classes is not None or classifier is None else None
    conditioned(model, class_labels([0], model.config.num_classes, model_class), args.guidance, args.guidance_rescale)
    if classifier is not None:
        class_labels([0], classifier.config.num_classes, args.class_id)
    batches = -(-args.n // args.batch_size)
    if args.sampler == "ddpm":
        note(args, [f"--sampler ddpm makes T = {steps} model calls per image, {steps // FAST_STEPS}× the default's "
                     f"{FAST_STEPS}; the progress bar shows the time left"])
    options = SampleOptions(steps=steps, eta=eta, spacing=args.spacing, prediction=prediction, solver=solver, **rule)
    guidance = guidance_options(args, model, schedule, device, classifier)
    run = RunOptions(seed=args.seed, batch_size=args.batch_size, device=device, fast=args.fast,
                     channels_last=args.channels_last)
    with progress(args, batches * steps, "sampling") as bar:
        # the trajectory only when asked: with --fast it keeps the first batch out of the CUDA graph
        res = generate(model, schedule, args.n, options, guidance, run, return_trajectory=bool(args.trajectory),
                       on_step=bar.update)
    images, traj = res if args.trajectory else (res, None)
    if pictures:
        save_grid(images, out, follow_symlinks=True)  # the user's own path: a link there is followed
    if args.npz:
        save_npz(args.npz, images=images.numpy(), seed=args.seed, steps=steps, eta=str(eta))
    if args.images_dir:
        save_images(images, args.images_dir)
    if args.trajectory:
        _save_trajectory(traj, args.trajectory)
    written = [str(out)] * pictures + [str(f) for f in (args.npz, args.trajectory) if f]
    if args.images_dir:
        written.append(f"{args.images_dir}/ (one PNG per image)")
    how = f"eta {eta}" if args.solver == "ddim" else f"solver {args.solver}"
    note(args, [f"wrote {', '.join(written)} ({args.n} images{chosen}, {steps} steps, {how})"])
    return 0


def _add_score_solver(p) -> None:
    """The options of --solver pc and --solver langevin (``ddim.samplers.solvers.score``)."""
    from ..samplers.solvers import PC_PREDICTORS

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


def _solver_from_args(args):
    """The ``Solver`` --solver and its options name (checked: an option of another solver is an error)."""
    import dataclasses

    from ..samplers.solvers import get_solver

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
    from ..checkpoint import BUNDLED_NOISY_CLASSIFIER, load_noisy_classifier
    from ..generate import check_classifier

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


def _pictures(args, channels: int) -> bool:
    """Whether `ddim sample` writes its pictures: images of 1 or 3 channels. Others (a latent model's 4) go
    to --npz alone, and anything that would have to be a picture is refused before sampling."""
    from ..images import check_channels

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

    from ..images import make_grid, save_gif, save_grid

    xs, x0s = traj.x[1:, :samples].float().cpu(), traj.x0_pred[:, :samples].float().cpu()  # (S, m, C, H, W)
    S, m = x0s.shape[:2]
    if Path(path).suffix.lower() == ".gif":
        save_gif([make_grid(torch.cat([xs[k], x0s[k]]), nrow=m) for k in range(S)], path, follow_symlinks=True)
        return
    n = min(columns, S)
    cols = sorted({round(k * (S - 1) / max(n - 1, 1)) for k in range(n)})  # evenly spaced, last step included
    rows = [torch.stack([src[k, j] for k in cols]) for j in range(m) for src in (xs, x0s)]
    save_grid(torch.cat(rows), path, nrow=len(cols), follow_symlinks=True)


def _add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="spherical interpolation between two latents, decoded with η = 0",
                       formatter_class=Formatter,
                       description="Slerp between the x_T of two seeds (image 0 of `ddim sample --seed A` and "
                                   "--seed B) or of two inverted images, decoded with deterministic DDIM "
                                   "(DDIM paper section 5.3).")
    add_sampling_args(p, solver_defaults=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--seeds", type=int, nargs=2, metavar=("A", "B"), help="two seeds")
    src.add_argument("--images", "--image", dest="images", nargs=2, metavar=("A", "B"),
                     help="two image files to invert first")
    p.add_argument("--frames", type=int, default=9, help="images from A to B inclusive")
    add_guidance(p, 0.0, "0: off, the frames decoded by the conditional model")
    add_guidance_method(p)
    add_solver(p, deterministic=True)
    add_clip(p, student=True)
    p.add_argument("--out", default="interpolation.png", help="PNG strip to write")
    p.set_defaults(func=_run_interpolate)


def _run_interpolate(args) -> int:
    from ..generate import class_labels, initial_noise, interpolate
    from ..images import save_grid
    from ..samplers import SampleOptions

    resolve_solver_defaults(args)
    out = writable(args.out)
    distinct({"--out": args.out}, args.images or ())
    check_count("--frames", args.frames, MAX_FRAMES, least=2)
    method_options(args, [args.solver])
    rule = x0_rule(args)
    if args.images:  # decode with the conditioning used to invert
        model, schedule, prediction, _, xT, labels, _ = invert_images(args)
        z0, z1, device = xT[:1], xT[1:], xT.device
    else:  # the x_T of image 0 of `ddim sample --seed A` / `--seed B`, and that image's label
        from ..images import check_channels

        model, schedule, prediction, device = load_model(args)
        cfg = model.config
        check_channels(cfg.in_channels, "the model's images")  # the strip is a picture
        shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
        z0, z1 = (initial_noise(seed, [0], shape, device)[0] for seed in args.seeds)
        labels = class_labels([0], cfg.num_classes, args.class_id)
    label = None if labels is None else int(labels[0])
    options = SampleOptions(steps=args.steps, spacing=args.spacing, prediction=prediction, solver=args.solver, **rule)
    images = interpolate(model, schedule, z0, z1, args.frames, options, label=label,
                         guidance=guidance_options(args, model, schedule, device))
    save_grid(images, out, nrow=args.frames, follow_symlinks=True)
    note(args, [f"wrote {out} ({args.frames} frames)"])
    return 0


SUBCOMMANDS = (_add_sample, _add_interpolate)
