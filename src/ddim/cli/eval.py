"""``ddim eval``: sample quality against the number of steps S and η (DDIM Table 1), reconstruction error of
DDIM inversion (Table 2), and consistency of η = 0 samples across S (section 5.3).

Parse -> ``ddim.evaluate.runner`` (sampling, metrics) -> ``ddim.evaluate.report`` (files). The FID grid also
runs under torchrun: every rank draws a share of the samples, rank 0 scores.
"""

from __future__ import annotations

import argparse
import math
import sys

from .common import (MAX_BATCH, MAX_N, Formatter, LazyProgress, add_checkpoint, add_clip, add_data_dir, add_device,
                     add_dist_timeout, add_guidance, add_guidance_method, add_no_ema, add_quiet, add_seed,
                     check_count, clip_value, eta_value, guidance_options, method_options, note, progress, writable,
                     x0_rule)

__all__ = ["SUBCOMMANDS"]

MODES = ("fid", "reconstruction", "consistency")
DEFAULT_STEPS = {"fid": (10, 20, 50, 100, 1000), "reconstruction": (10, 20, 50, 100, 200, 500, 1000),
                 "consistency": (10, 20, 50, 100)}
DEFAULT_ETAS = (0.0, 0.2, 0.5, 1.0, "large")
DEFAULT_N = {"fid": 10_000, "reconstruction": 1000, "consistency": 8}
REFERENCE_DATASET = "fashion-mnist"   # what the shipped feature extractor was trained on


PREVIEW_SAMPLES = 10                  # per cell, in the FID grid's samples.png
def _items(text: str) -> list[str]:
    return [v.strip() for v in text.split(",")]


def _steps_list(text: str) -> tuple[int, ...]:
    """--steps "10,20,50" -> (10, 20, 50); repeats dropped, order kept."""
    out = []
    for v in _items(text):
        try:
            s = int(v)
        except ValueError:
            s = 0
        if s < 1:
            raise argparse.ArgumentTypeError(f"{v!r} in {text!r} is not a step count (allowed: comma-separated "
                                             "integers >= 1, e.g. 10,20,50)")
        out.append(s)
    return tuple(dict.fromkeys(out))


def _eta_list(text: str) -> tuple:
    """--eta "0,0.5,large" -> (0.0, 0.5, "large"); repeats dropped, order kept."""
    out = []
    for v in _items(text):
        try:
            eta = eta_value(v)
        except argparse.ArgumentTypeError:
            eta = -1.0
        if eta != "large" and not (math.isfinite(eta) and eta >= 0):
            raise argparse.ArgumentTypeError(f"{v!r} in {text!r} is not an η (allowed: comma-separated numbers "
                                             ">= 0 or 'large' for σ̂, e.g. 0,0.5,1,large)")
        out.append(eta)
    return tuple(dict.fromkeys(out))


def _solver_list(text: str) -> tuple[str, ...]:
    """--solver "ddim,dpmpp-2m" -> ("ddim", "dpmpp-2m"); repeats dropped, order kept."""
    from ..samplers import SOLVERS

    out = _items(text)
    for v in out:
        if v not in SOLVERS:
            raise argparse.ArgumentTypeError(f"{v!r} in {text!r} is not a solver (allowed: comma-separated "
                                             f"names from {', '.join(SOLVERS)})")
    return tuple(dict.fromkeys(out))


def _seed(text: str) -> int:
    """--seed: an integer >= 0 (checked here, before any output folder exists)."""
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if seed < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return seed


def _count(text: str) -> int:
    """An integer >= 2 (a covariance, a standard deviation)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2, got {text!r}")
    return n


def _add_eval(sub) -> None:
    from ..samplers.solvers import solver_help
    from ..timesteps import SPACINGS

    p = sub.add_parser(
        "eval", help="measure sample quality: FID against steps and η, reconstruction error, consistency",
        formatter_class=Formatter,
        description="Default: sample --n images for every (S, η) of --steps × --eta and score them against "
                    "Fashion-MNIST (FID, KID, precision, recall) into --out: results.json, results.csv, "
                    "results.md (FID, rows S, columns η) and fid_vs_steps.png. Samples are kept in "
                    "--out/samples/, so an interrupted run resumes where it stopped; sample i depends only "
                    "on (--seed, i). Under torchrun the processes share the sampling. "
                    "--reconstruction: DDIM inversion + η = 0 sampling of --n test images, per-dimension "
                    "MSE on the [0, 1] scale. --consistency: η = 0 samples of --n seeds at each S against "
                    "S = T, with a picture grid.")
    add_checkpoint(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--reconstruction", action="store_true",
                      help="reconstruction error of DDIM inversion against S (DDIM Table 2) on the first --n "
                           "test images of the checkpoint's dataset, instead of FID")
    mode.add_argument("--consistency", action="store_true",
                      help="distance of η = 0 samples at S steps to those at T steps, same x_T, instead of FID")
    p.add_argument("--steps", type=_steps_list, default=None,
                   help="comma-separated S values (default: 10,20,50,100,1000; with --reconstruction "
                        "10,20,50,100,200,500,1000; with --consistency 10,20,50,100, each compared with S = T)")
    p.add_argument("--eta", type=_eta_list, default=None,
                   help="comma-separated η values, numbers >= 0 or 'large' for σ̂ (default: 0,0.2,0.5,1,large; "
                        "the FID grid only: the other modes use η = 0)")
    p.add_argument("--solver", type=_solver_list, default=("ddim",),
                   help=f"comma-separated solvers (default: ddim; {solver_help()}): the FID grid gets one column "
                        "per η for ddim and one per other solver (no η: their own noise, none or η = 1's), and the plot one "
                        "curve each, against model calls per image (Heun makes 2S − 1 per S steps)")
    p.add_argument("--n", "--num-samples", dest="n", type=_count, default=None,
                   help="samples per cell (default: 10000); with --reconstruction test images (default: 1000); "
                        "with --consistency seeds (default: 8). Under torchrun write --num-samples: torchrun "
                        "takes --n for an abbreviation of its own options")
    p.add_argument("--batch-size", type=int, default=256,
                   help="images per model call; also the size of the stored sample chunks, so keep it when resuming")
    p.add_argument("--spacing", default="uniform", choices=SPACINGS, help="sub-sequence of the training steps")
    add_seed(p, "sample i starts from the x_T of (seed, i)", type=_seed)
    add_guidance(p, 0.0, "class-conditional models; not with --reconstruction")
    add_guidance_method(p)
    # Off by default, unlike `ddim sample`: the paper's tables measure the plain update.
    add_clip(p, default=0.0)
    p.add_argument("--out", default="eval", help="output directory (results, and samples/ for resuming)")
    g = p.add_argument_group("reference data (FID grid)")
    g.add_argument("--reference-split", choices=("test", "train"), default="test",
                   help="Fashion-MNIST split the samples are compared with; the first --n images of the other "
                        "split give the floor (what real images score)")
    g.add_argument("--reference-limit", type=_count, default=None,
                   help="use only the first N images of the reference split (default: all)")
    add_data_dir(g, "where the Fashion-MNIST idx files are; with --reconstruction, where the checkpoint's own "
                    "dataset is (when not given: where it was trained from)")
    add_no_ema(p)
    add_device(p)
    add_dist_timeout(p)
    add_quiet(p)
    p.set_defaults(func=_run_eval)


def _shape_text(shape) -> str:
    return "×".join(str(v) for v in shape)


def _validate(args, model, schedule, mode: str, steps, etas, model_prediction: str) -> None:
    """Every user error before any sampling: grids, guidance, batch size, image size."""
    from ..evaluate import FeatureExtractor
    from ..generate import class_labels, conditioned
    from ..guidance import check_student_guidance
    import torch

    from ..samplers.loop import SampleOptions, sample_setup

    if mode != "fid" and args.eta is not None:
        raise ValueError(f"--eta applies to the FID grid only; --{mode} samples with η = 0")
    if mode != "fid" and args.solver != ("ddim",):
        raise ValueError(f"--solver applies to the FID grid only; --{mode} uses DDIM (got {','.join(args.solver)})")
    if mode == "reconstruction" and (args.guidance or args.guidance_method != "cfg"):
        raise ValueError("--guidance and --guidance-method do not apply to --reconstruction (inversion is unguided)")
    if clip_value(args) is not None and mode == "reconstruction":
        # a clamped decoder is no longer the inverse of the (unclamped) inversion ODE
        raise ValueError(f"--clip {args.clip:g} does not apply to --reconstruction (allowed: 0)")
    if "ddim" not in args.solver and args.eta is not None:
        raise ValueError("--eta applies to the ddim solver; add ddim to --solver or leave --eta out")
    probe = torch.zeros(1, 1, 1, 1)  # sample_setup checks a run's arguments without a model
    for s in steps:
        for solver in args.solver:
            for eta in etas if solver == "ddim" else (0.0,):
                opts = SampleOptions(steps=s, eta=eta, spacing=args.spacing, prediction=model_prediction,
                                     solver=solver)
                sample_setup(schedule, probe, opts)
    cfg = model.config
    conditioned(model, class_labels([0], cfg.num_classes), args.guidance)
    check_student_guidance(model, args.guidance_method)  # a distilled student has no ∅ branch for the methods
    if mode == "consistency":  # its report is a picture
        from ..images import check_channels

        check_channels(cfg.in_channels, "the checkpoint's images")
    shape = (cfg.in_channels, cfg.image_size, cfg.image_size)
    if mode == "fid" and shape != FeatureExtractor.image_shape:
        raise ValueError(f"the checkpoint makes {_shape_text(shape)} images, but the FID feature extractor (a "
                         f"Fashion-MNIST classifier) takes {_shape_text(FeatureExtractor.image_shape)}; "
                         "--reconstruction and --consistency work at any size")


def _run_eval(args) -> int:
    import contextlib

    from ..checkpoint import load_checkpoint
    from ..device import resolve_device
    from ..evaluate.runner import weights_sha256
    from ..files import check_folder_free, claim_folder
    from ..distributed import dist_info_from_env, init_distributed, shutdown

    mode = "reconstruction" if args.reconstruction else "consistency" if args.consistency else "fid"
    steps, n = args.steps or DEFAULT_STEPS[mode], args.n or DEFAULT_N[mode]
    etas = (args.eta or DEFAULT_ETAS) if mode == "fid" else (0.0,)
    check_count("--n", n, MAX_N, least=2)  # `ddim sample`'s bounds, before the checkpoint loads
    method_options(args, args.solver)
    check_count("--batch-size", args.batch_size, MAX_BATCH)
    info = dist_info_from_env()
    if info.distributed and mode != "fid":
        raise ValueError(f"--{mode} runs in one process; start it without torchrun")
    asked_quiet, args.quiet = args.quiet, args.quiet or not info.is_main
    device = resolve_device(args.device, info)
    if info.is_main:
        check_folder_free(args.out)  # another eval writing there: refused before the rendezvous and the model
    # every rank says what it waits for (the others' notes are off), unless --quiet
    init_distributed(info, device, args.dist_timeout,
                     note=None if asked_quiet else lambda s: print(f"ddim: note: {s}", file=sys.stderr, flush=True))
    try:
        model, schedule, config = load_checkpoint(args.checkpoint, ema=args.ema, device=device)
        _validate(args, model, schedule, mode, steps, etas, config.prediction)
        writable(args.out, folder=True)  # created only once the data has loaded: a refusal leaves nothing behind
        # the report names the weights; the FID grid's sample stores hash them again themselves (``sample_grid``),
        # a fraction of a second accepted so that a store checks its own key
        common = {"mode": mode, "checkpoint": str(args.checkpoint), "weights_sha256": weights_sha256(model),
                  "ema": args.ema, "prediction": config.prediction, "num_train_steps": schedule.num_steps,
                  "steps": list(steps), "n": n, "seed": args.seed, "batch_size": args.batch_size,
                  "spacing": args.spacing, "solver": list(args.solver), "guidance": args.guidance,
                  "guidance_method": method_options(args).label,
                  "clip": clip_value(args),
                  "eps_from_clipped_x0": x0_rule(args).get("eps_from_clipped_x0", False), "device": str(device),
                  "world_size": info.world_size}
        run = {"fid": _run_grid, "reconstruction": _run_reconstruction, "consistency": _run_consistency}[mode]
        # one writer per folder: the claim is removed again, with the folder, if the run is refused before writing
        with claim_folder(args.out, f"ddim eval --{mode}") if info.is_main else contextlib.nullcontext():
            return run(args, model, schedule, config, device, info, common, etas)
    finally:
        shutdown()


def _run_grid(args, model, schedule, config, device, info, common, etas) -> int:
    import contextlib
    import time

    import torch

    from ..data import DatasetError, load_dataset
    from ..evaluate import FeatureExtractor, reference_stats
    from ..evaluate.report import fid_table, versions, write_grid_report
    from ..evaluate.runner import Cell, floor_metrics, sample_grid, score_cell

    start = time.perf_counter()
    # Every rank loads the data (a second) so that missing files fail everywhere before any sampling.
    reference_data = load_dataset(REFERENCE_DATASET, args.data_dir, split=args.reference_split)
    other = "train" if args.reference_split == "test" else "test"
    try:
        floor_data = load_dataset(REFERENCE_DATASET, args.data_dir, split=other)
    except DatasetError as e:
        floor_data = None
        note(args, [f"no floor: {e}"])
    limit = min(args.reference_limit or len(reference_data), len(reference_data))
    if limit < 2:  # before any sampling: the reference statistics need a covariance
        raise ValueError(f"the reference split {reference_data.name} has {limit} image(s); FID needs at least 2")
    cells = [Cell(s, e) for s in common["steps"] for e in etas] if "ddim" in args.solver else []
    cells += [Cell(s, 0.0, solver) for s in common["steps"] for solver in args.solver if solver != "ddim"]
    n = common["n"]
    options, guidance, run = _run_options(args, model, schedule, config, device)
    with contextlib.closing(LazyProgress(args, "sampling")) as bar:  # shown once sample_grid knows its total
        samples = sample_grid(model, schedule, cells, n, args.out, options, guidance, run, info, progress=bar)
    if not info.is_main:
        return 0
    extractor = FeatureExtractor()
    reference = reference_stats(reference_data, extractor=extractor, limit=args.reference_limit)
    floor = floor_metrics(floor_data, n, reference, extractor) if floor_data is not None else None
    with progress(args, len(samples), "scoring") as bar:
        scores = []
        for s in samples:
            scores.append(score_cell(s, reference, extractor))
            bar.update()
    ddim_etas = list(etas) if "ddim" in args.solver else []
    results = {"config": {**common, "eta": ddim_etas, "reference_split": args.reference_split,
                          "reference_limit": args.reference_limit},
               "reference": {"name": reference.name, "n": reference.n}, "extractor_sha256": extractor.sha256,
               "floor": floor, "versions": versions(), "cells": scores, "seconds": time.perf_counter() - start}
    previews = torch.stack([s.first(PREVIEW_SAMPLES) for s in samples])
    files = write_grid_report(args.out, results, previews)
    print(fid_table(results), end="")
    reused = sum(c["reused_chunks"] for c in scores)
    note(args, [f"wrote {', '.join(str(f) for f in files)}"] +
          ([f"reused {reused} sample chunks from an earlier run"] if reused else []))
    return 0


def _run_options(args, model, schedule, config, device):
    """(SampleOptions, GuidanceOptions, RunOptions) every mode shares: spacing, the model's prediction and
    the x̂_0 rule; the guidance weight and method; seed, batch size and device. Steps, η and solver are per
    cell."""
    from ..generate import RunOptions
    from ..samplers import SampleOptions

    return (SampleOptions(spacing=args.spacing, prediction=config.prediction, **x0_rule(args)),
            guidance_options(args, model, schedule, device),
            RunOptions(seed=args.seed, batch_size=args.batch_size, device=device))


def _run_reconstruction(args, model, schedule, config, device, info, common, etas) -> int:
    import torch

    from ..data import load_dataset
    from ..evaluate.report import versions, write_reconstruction_report
    from ..evaluate.runner import chunk_ranges, reconstruction_errors

    cfg, data_cfg = model.config, config.data
    name = data_cfg.dataset if data_cfg is not None else REFERENCE_DATASET
    data_dir = args.data_dir or (data_cfg.data_dir if data_cfg is not None else None)
    data = load_dataset(name, data_dir, split="test", image_size=cfg.image_size, channels=cfg.in_channels)
    n = min(common["n"], len(data))
    if n < common["n"]:
        note(args, [f"{data.name} has {len(data)} images; reconstructing all of them"])
    labels = None
    if cfg.num_classes is not None:  # the images' own classes where they mean the model's classes, else ∅
        own = data.labels is not None and data.num_classes == cfg.num_classes
        labels = data.labels[:n] if own else torch.full((n,), model.null_label, dtype=torch.int64)
    calls = 2 * sum(common["steps"]) * len(chunk_ranges(n, args.batch_size))
    with progress(args, calls, "inverting + sampling") as bar:
        options, _, run = _run_options(args, model, schedule, config, device)
        rows = reconstruction_errors(model, schedule, data.to_float(slice(0, n)), labels, common["steps"], options,
                                     run, on_step=bar.update)
    results = {"config": {**common, "n": n}, "images": data.name, "versions": versions(), "rows": rows}
    files = write_reconstruction_report(args.out, results)
    print(files[-1].read_text(), end="")
    note(args, [f"wrote {', '.join(str(f) for f in files)}"])
    return 0


def _run_consistency(args, model, schedule, config, device, info, common, etas) -> int:
    from ..evaluate.report import versions, write_consistency_report
    from ..evaluate.runner import chunk_ranges, consistency

    n = common["n"]
    columns = set(common["steps"]) | {schedule.num_steps}
    with progress(args, sum(columns) * len(chunk_ranges(n, args.batch_size)), "sampling") as bar:
        rows, images = consistency(model, schedule, common["steps"], n, *_run_options(args, model, schedule, config,
                                                                                      device),
                                   on_step=bar.update)
    results = {"config": common, "versions": versions(), "rows": rows}
    files = write_consistency_report(args.out, results, images)
    print(files[-1].read_text(), end="")
    note(args, [f"wrote {', '.join(str(f) for f in files)}"])
    return 0


SUBCOMMANDS = (_add_eval,)
