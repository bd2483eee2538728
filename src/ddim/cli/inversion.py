"""``ddim invert | reconstruct | edit``: images -> latents (plain DDIM inversion, or a guided method of
``ddim.inversion``) -> images."""

from __future__ import annotations

from .common import (Formatter, add_guidance, add_guidance_method, add_images, add_sampling_args, add_solver,
                     class_help, distinct, guidance_options, invert_images, load_model, method_options, note, progress,
                     resolve_solver_defaults, save_npz, writable)

__all__ = ["SUBCOMMANDS"]


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="DDIM inversion: images -> latents x_T", formatter_class=Formatter,
                       description="Encode images into x_T by running the deterministic DDIM ODE backwards.")
    add_sampling_args(p)
    _add_method(p)
    add_images(p)
    p.add_argument("--out", default="latents.npz", help=".npz with latents (N, C, H, W), file names, and what the "
                                                          "method keeps (null embeddings, noise maps, EDICT's 2nd chain)")
    p.set_defaults(func=_run_invert)


def _add_method(p, guidance: bool = True) -> None:
    from ..inversion import METHODS

    g = p.add_argument_group("guided inversion (class-conditional models; needs the images' class)")
    g.add_argument("--method", choices=METHODS, default="ddim",
                   help="ddim: plain DDIM inversion with the conditional model; null-label: null-text inversion "
                        "(per-step null embeddings optimised for --guidance); negative-label: the class stands in "
                        "for ∅; ddpm: edit-friendly DDPM inversion (exact, η = --ddpm-eta); edict: EDICT's coupled "
                        "chains (exact); cfgpp: CFG++'s sampler and its inverse (--guidance is its λ in [0, 1])")
    if guidance:
        add_guidance(g, 0.0, "the images are sampled back under it (null-label, ddpm and edict invert for it)")
    g.add_argument("--ddpm-eta", type=float, default=1.0, help="η of --method ddpm")


def _add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="invert images and sample them back; print the error",
                       formatter_class=Formatter,
                       description="x_0 -> x_T -> x_0 with --steps each way. Writes originals (top row) above "
                                   "reconstructions and prints the per-image MSE on the [0, 1] scale.")
    add_sampling_args(p)
    _add_method(p)
    add_images(p)
    p.add_argument("--out", default="reconstruction.png", help="side-by-side PNG to write")
    p.set_defaults(func=_run_reconstruct)


def check_method_guidance(args) -> None:
    """--guidance as --method reads it: a finite weight >= 0, CFG++'s λ in [0, 1]."""
    if not 0 <= args.guidance < float("inf"):  # inf inverts to NaN latents and reconstructions
        raise ValueError(f"--guidance must be a finite number >= 0, got {args.guidance}")
    if args.method == "cfgpp" and args.guidance > 1:
        raise ValueError(f"--method cfgpp reads --guidance as CFG++'s λ, which lies in [0, 1]; got {args.guidance:g}")


def _guided(args) -> bool:
    """Whether --method/--guidance ask for ``ddim.inversion`` (else the plain ``ddim.invert`` path)."""
    return getattr(args, "method", "ddim") != "ddim" or getattr(args, "guidance", 0.0) != 0


def _guided_inversion(args):
    """(model, schedule, prediction, x_0, ``Inversion``) for --method / --guidance."""
    import torch

    from ..generate import class_labels
    from ..images import load_images
    from ..inversion import invert_image
    from ..noise import generators
    from ..samplers import plan

    model, schedule, prediction, device = load_model(args)
    plan(schedule, args.steps, 0.0, args.spacing)
    cfg = model.config
    if cfg.num_classes is None:
        raise ValueError(f"--method {args.method} / --guidance need a class-conditional model; this one is "
                         "unconditional")
    if args.class_id is None:
        raise ValueError(f"--method {args.method} / --guidance need --class (the images' class)")
    check_method_guidance(args)
    x0, notes = load_images(args.images, cfg.image_size, cfg.in_channels)
    note(args, notes)
    labels = class_labels(range(len(x0)), cfg.num_classes, args.class_id)
    with torch.inference_mode(False):
        inv = invert_image(model, schedule, x0.to(device), labels, method=args.method, w=args.guidance,
                           steps=args.steps, spacing=args.spacing, prediction=prediction, eta=args.ddpm_eta,
                           generator=generators(args.seed, range(len(x0)), device))
    return model, schedule, prediction, x0, inv


def _run_invert(args) -> int:
    import numpy as np

    out = writable(args.out, (".npz",))
    distinct({"--out": args.out}, args.images)
    extra = {}
    if _guided(args):
        inv = _guided_inversion(args)[4]
        xT = inv.x_T
        extra = {k: v.float().cpu().numpy() for k, v in (("null_embeddings", inv.null), ("noise", inv.noise),
                                                          ("latents_y", inv.y_T)) if v is not None}
        extra.update(method=inv.method, guidance=inv.w, labels=inv.labels.cpu().numpy(),
                     timesteps=inv.timesteps.numpy())
    else:
        xT = invert_images(args)[4]
    save_npz(out, latents=xT.float().cpu().numpy(), files=np.array([str(p) for p in args.images]), steps=args.steps,
              **extra)
    note(args, [f"wrote {out} ({len(args.images)} latents, {args.steps} steps)"])
    return 0


def _run_reconstruct(args) -> int:
    import torch

    from ..images import save_grid
    from ..samplers import sample

    out = writable(args.out)
    distinct({"--out": args.out}, args.images)
    if _guided(args):
        from ..inversion import regenerate

        model, schedule, prediction, x0, inv = _guided_inversion(args)
        back = regenerate(model, schedule, inv, prediction=prediction).float().cpu()
    else:
        _, schedule, prediction, x0, xT, _, m = invert_images(args)
        with torch.inference_mode(), progress(args, args.steps, "sampling") as bar:
            back = sample(m, schedule, xT, args.steps, 0.0, args.spacing, prediction,
                          callback=lambda *_: bar.update()).float().cpu()
    save_grid(torch.cat([x0, back]), out, nrow=len(x0), follow_symlinks=True)
    mse = ((back - x0) / 2).pow(2).flatten(1).mean(1)  # [-1, 1] -> [0, 1] scale, per image
    for path, e in zip(args.images, mse.tolist()):
        print(f"{path}\tmse {e:.6f}")
    print(f"mean\tmse {mse.mean().item():.6f}")
    note(args, [f"wrote {out} (originals above reconstructions, {args.steps} steps each way)"])
    return 0


def _add_edit(sub) -> None:
    p = sub.add_parser("edit", help="edit images toward a class: DDIM inversion + guided regeneration, or SDEdit",
                       formatter_class=Formatter,
                       description="Invert each image (with --from-class, else unconditionally) to step "
                                   "strength·T, then regenerate toward --to-class under classifier-free guidance. "
                                   "--mode both also writes the plain SDEdit result (noise to strength·T, "
                                   f"denoise) for comparison. Output rows: original | inversion edit | SDEdit. "
                                   f"Classes: {class_help()}.")
    add_sampling_args(p, with_class=False, solver_defaults=True)
    add_images(p)
    p.add_argument("--to-class", type=int, required=True, help="target class (required; numbers as below)")
    p.add_argument("--from-class", type=int, default=None, help="the images' own class, if known (default: ∅)")
    add_guidance(p, 2.0, "toward --to-class")
    add_guidance_method(p)
    p.add_argument("--strength", type=float, default=0.6, help="how far to go: the edit starts at step strength·T")
    p.add_argument("--mode", choices=("invert", "sdedit", "both"), default="both", help="which edits to run")
    _add_method(p, guidance=False)
    add_solver(p, deterministic=True)
    p.add_argument("--out", default="edit.png", help="PNG to write")
    p.set_defaults(func=_run_edit)


def _run_edit(args) -> int:
    import torch

    from ..edit import edit_timesteps, invert_regenerate, sdedit
    from ..samplers import SampleOptions
    from ..generate import class_labels, conditioned, guided
    from ..images import load_images, save_grid
    from ..noise import generators

    resolve_solver_defaults(args)
    out = writable(args.out)
    distinct({"--out": args.out}, args.images)
    method_options(args, [args.solver])
    if args.method != "ddim" and args.mode == "sdedit":
        raise ValueError(f"--method {args.method} applies to --mode invert or both (SDEdit does not invert)")
    if args.method != "ddim":
        check_method_guidance(args)
    model, schedule, prediction, device = load_model(args)
    cfg = model.config
    if cfg.num_classes is None:
        raise ValueError("edit needs a class-conditional model; this one is unconditional")
    edit_timesteps(schedule, args.steps, args.strength, args.spacing)  # validate before any work
    n = len(args.images)
    target = guided(model, schedule, prediction, class_labels(range(n), cfg.num_classes, args.to_class), range(n),
                    guidance_options(args, model, schedule, device))
    source_labels = class_labels(range(n), cfg.num_classes, args.from_class)
    if args.from_class is None:
        source_labels = torch.full_like(source_labels, model.null_label)
    source = conditioned(model, source_labels)
    x0, notes = load_images(args.images, cfg.image_size, cfg.in_channels)
    note(args, notes)
    x0 = x0.to(device)
    options = SampleOptions(steps=args.steps, spacing=args.spacing, prediction=prediction, solver=args.solver)
    rows = [x0.cpu()]
    if args.method != "ddim" and args.mode in ("invert", "both"):
        from ..inversion import invert_image, regenerate

        if args.from_class is None:
            raise ValueError(f"--method {args.method} needs --from-class (the images' class)")
        if args.solver != "ddim":
            raise ValueError(f"--method {args.method} runs its own steps; it takes no --solver (got {args.solver})")
        tau = edit_timesteps(schedule, args.steps, args.strength, args.spacing)
        inv = invert_image(model, schedule, x0, source_labels, method=args.method, w=args.guidance, timesteps=tau,
                           prediction=prediction, eta=args.ddpm_eta, generator=generators(args.seed, range(n), device))
        rows.append(regenerate(model, schedule, inv, class_labels(range(n), cfg.num_classes, args.to_class),
                               prediction=prediction).float().cpu())
    with torch.inference_mode():
        if args.mode in ("invert", "both") and args.method == "ddim":
            rows.append(invert_regenerate(source, target, schedule, x0, args.strength, options).float().cpu())
        if args.mode in ("sdedit", "both"):
            gens = generators(args.seed, range(n), device)  # one stream per image
            rows.append(sdedit(target, schedule, x0, args.strength, options, gens).float().cpu())
    save_grid(torch.cat(rows), out, nrow=n, follow_symlinks=True)
    shown = ["original"] + ["inversion edit"] * (args.mode != "sdedit") + ["SDEdit"] * (args.mode != "invert")
    note(args, [f"wrote {out} ({n} images; rows: {' | '.join(shown)})"])
    return 0


SUBCOMMANDS = (_add_invert, _add_reconstruct, _add_edit)
