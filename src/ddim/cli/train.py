"""``ddim train | train-classifier``: parse -> ``RunConfig`` -> ``ddim.train.run_training``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (Formatter, add_bf16, add_data_dir, add_device, add_dist_timeout, add_quiet, add_seed, int_list,
                     writable)

__all__ = ["SUBCOMMANDS"]

# What `ddim train-classifier` changes from the TrainConfig defaults: a small classifier wants a larger rate,
# weight decay (ADM's 0.05) and a shorter EMA; its labels are targets, never dropped.
_CLASSIFIER_TRAIN = dict(steps=4000, lr=1e-3, warmup=200, weight_decay=0.05, ema_decay=0.999, checkpoint_every=500,
                         log_every=25)


def _add_data_args(p) -> None:
    from ..data import DATASETS

    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=DATASETS, help="training images (required)")
    add_data_dir(g, "where the dataset's files are")
    g.add_argument("--image-size", type=int, help="resize images to this side, pixels (default: native size)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels (default: native)")
    g.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=False, help="random horizontal flips")


_SHAPE_FLAGS = ("--base-channels", "--num-res-blocks", "--dropout", "--norm-groups", "--channel-mult",
                "--attn-resolutions", "--patch-size", "--scale-shift")


def _add_shape_args(g, flags) -> None:
    kinds = {"--base-channels": int, "--num-res-blocks": int, "--dropout": float, "--norm-groups": int,
             "--channel-mult": int_list, "--attn-resolutions": int_list, "--patch-size": int}
    for flag in flags:
        if flag == "--scale-shift":  # a switch: ADM's scale-shift norm (AdaGN) in every ResBlock
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                           help="apply the time/label embedding as a GroupNorm scale and shift (ADM's AdaGN) "
                                "instead of adding it (default: from the preset)")
            continue
        g.add_argument(flag, type=kinds[flag], help="override the preset's value (default: from the preset)")


def _add_optim_run_args(p, d, classifier: bool) -> None:
    """The optimisation and run groups of `train` (``classifier``: without the denoiser-only options)."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, default=d.steps, help="optimizer steps in total")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    g.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    g.add_argument("--warmup", type=int, default=d.warmup, help="linear learning-rate warm-up, steps")
    g.add_argument("--lr-decay", type=int, default=d.lr_decay,
                   help="linear learning-rate decay to zero over the last N steps (default: 0, none)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)")
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA decay of the weights")
    if not classifier:
        g.add_argument("--min-snr-gamma", type=float, default=None, help="Min-SNR-γ loss weighting (default: off)")
        g.add_argument("--label-dropout", type=float, default=d.label_dropout,
                       help="probability of dropping a label (classifier-free guidance training)")
        from ..config import T_SAMPLINGS

        g.add_argument("--t-sampling", default=d.t_sampling, choices=T_SAMPLINGS,
                       help="training noise levels: uniform steps (DDPM) or lognormal (EDM's ln σ ~ N(-1.2, 1.2²))")
    add_seed(g, "seed of every random stream")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run directory for checkpoints, metrics.jsonl" +
                   ("" if classifier else ", samples/") + " (required)")
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    add_device(g)
    add_dist_timeout(g)
    add_bf16(g)
    g.add_argument("--compile", action="store_true", help="torch.compile the network")
    g.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints (0: end only)")
    g.add_argument("--keep-last", type=int, default=d.keep_last, help="checkpoints to keep (0: all)")
    if not classifier:
        g.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between sample grids (0: none)")
        g.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps for the sample grids")
        g.add_argument("--num-samples", type=int, default=d.num_samples, help="images per sample grid")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between metrics.jsonl lines")
    add_quiet(g)


def _add_train(sub) -> None:
    from ..forward import PREDICTIONS
    from ..nn import PRESETS
    from ..config import TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a UNet with the DDPM objective", formatter_class=Formatter,
                       description="Train a diffusion model (DDPM L_simple) and write checkpoints to --out. "
                                   "Under torchrun the global --batch-size is split across the processes.")
    _add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--init-from", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights ('bundled': the bundled model), "
                        "taking its shape, schedule and prediction, so the flags that set those are refused "
                        "(default: random weights)")
    g.add_argument("--preset", choices=tuple(PRESETS),
                   help="UNet shape to start from (default: small, a quick model; the bundled model is --preset fashion)")
    g.add_argument("--class-cond", action=argparse.BooleanOptionalAction, default=None,
                   help="class-conditional model (default: yes when the data have labels)")
    _add_shape_args(g, _SHAPE_FLAGS)
    g.add_argument("--prediction", choices=PREDICTIONS, help=f"what the network predicts (default: {d.prediction})")
    g.add_argument("--schedule", choices=("linear", "cosine", "scaled_linear", "sigmoid"),
                   help="β schedule (default: linear)")
    g.add_argument("--num-train-steps", type=int, help="T, diffusion steps of the schedule (default: 1000)")
    _add_optim_run_args(p, d, classifier=False)
    p.set_defaults(func=_run_train, classifier=False)


def _add_train_classifier(sub) -> None:
    from ..nn import CLASSIFIER_PRESETS
    from ..config import TrainConfig

    d = TrainConfig(**_CLASSIFIER_TRAIN)
    p = sub.add_parser("train-classifier", formatter_class=Formatter,
                       help="train a noisy classifier p(y | x_t, t) for classifier guidance",
                       description="Train a time-conditioned classifier on noised images x_t (cross-entropy at t "
                                   "uniform over the schedule's steps), with the checkpoints, resume and safeguards "
                                   "of `ddim train`. Guide with `ddim sample --classifier DIR --classifier-scale S`.")
    _add_data_args(p)
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="fashion", choices=tuple(CLASSIFIER_PRESETS), help="classifier shape to start from")
    _add_shape_args(g, _SHAPE_FLAGS[:-1])  # no --scale-shift: ClassifierConfig has no such field
    g.add_argument("--schedule-from", default=None, metavar="CHECKPOINT",
                   help="take the noise schedule from this diffusion checkpoint, so the classifier sees the x_t "
                        "that model samples (default: the bundled model)")
    _add_optim_run_args(p, d, classifier=True)
    p.set_defaults(func=_run_train, classifier=True)


def _train_configs(args: argparse.Namespace):
    """(RunConfig, ImageData) from the parsed ``train`` / ``train-classifier`` arguments."""
    from ..schedule import Schedule
    from ..train import DataConfig, RunConfig, TrainConfig, load_data

    data_cfg = DataConfig(dataset=args.dataset, data_dir=args.data_dir, image_size=args.image_size,
                          channels=args.channels, hflip=args.hflip)
    common = dict(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, lr_decay=args.lr_decay,
                  weight_decay=args.weight_decay, grad_clip=args.grad_clip, ema_decay=args.ema_decay, seed=args.seed,
                  checkpoint_every=args.checkpoint_every, keep_last=args.keep_last, log_every=args.log_every,
                  bf16=args.bf16, compile=args.compile)
    shape = dict(base_channels=args.base_channels, num_res_blocks=args.num_res_blocks, dropout=args.dropout,
                 norm_groups=args.norm_groups, channel_mult=args.channel_mult,
                 attn_resolutions=args.attn_resolutions, patch_size=args.patch_size,
                 scale_shift=getattr(args, "scale_shift", None))
    if args.classifier:
        from ..checkpoint import BUNDLED_MODEL, load_checkpoint

        train_cfg = TrainConfig(**common, label_dropout=0.0, sample_every=0)
        schedule = load_checkpoint(args.schedule_from or BUNDLED_MODEL)[1]
        data = load_data(data_cfg)
        if data.labels is None:
            raise ValueError(f"a classifier needs labelled data, but {data.name} has no labels")
        model_cfg = _classifier_config(args.preset, data, shape)
    else:
        init_from, source = _fine_tune_source(args, shape)
        train_cfg = TrainConfig(**common, prediction=source.prediction if source else args.prediction or "epsilon",
                                min_snr_gamma=args.min_snr_gamma, label_dropout=args.label_dropout,
                                t_sampling=args.t_sampling, sample_every=args.sample_every,
                                sample_steps=args.sample_steps, num_samples=args.num_samples, init_from=init_from)
        schedule = source.make_schedule() if source else Schedule.from_config(
            {"name": args.schedule or "linear", "num_steps": args.num_train_steps or 1000})
        data = load_data(data_cfg)
        model_cfg = source.model if source else _unet_config(args, data, shape)
    return RunConfig(model=model_cfg, train=train_cfg, data=data_cfg, schedule=schedule.to_config()), data


def _fine_tune_source(args, shape: dict):
    """(path, RunConfig) of ``--init-from``'s checkpoint ("bundled": the bundled model), or (None, None)
    without it, after refusing the flags it overrides. A resumed fine-tune reads its own run's config
    instead: it no longer needs the source's weights, which may have moved since."""
    if args.init_from is None:
        return None, None
    from ..checkpoint import list_checkpoints, load_checkpoint, named_checkpoint, read_json
    from ..nn import UNetConfig
    from ..train import RunConfig

    path = named_checkpoint(args.init_from)
    named = {"--preset": args.preset, "--class-cond": args.class_cond, "--prediction": args.prediction,
             "--schedule": args.schedule, "--num-train-steps": args.num_train_steps,
             **{"--" + k.replace("_", "-"): v for k, v in shape.items()}}
    given = [flag for flag, value in named.items() if value is not None]
    if given:
        raise ValueError(f"--init-from {path} fixes the network (shape and dropout), schedule and prediction; "
                         f"drop {', '.join(given)}")
    if args.resume and list_checkpoints(args.out):
        return path, RunConfig.from_dict(read_json(Path(args.out) / "config.json"))
    source = load_checkpoint(path)[2]
    if not isinstance(source.model, UNetConfig):
        raise ValueError(f"--init-from {path}: a diffusers model without a ddim equivalent is for sampling only; "
                         "fine-tuning needs a ddim checkpoint")
    return path, source


def _unet_config(args, data, shape: dict):
    from ..train import resolve_model_config

    class_cond = data.labels is not None if args.class_cond is None else args.class_cond
    if class_cond and data.labels is None:
        raise ValueError(f"--class-cond needs labelled data, but {data.name} has no labels; use --no-class-cond")
    return resolve_model_config(args.preset or "small", data.image_size, data.channels,
                                data.num_classes if class_cond else None, **shape)


def _classifier_config(preset: str, data, shape: dict):
    from ..nn import CLASSIFIER_PRESETS, ClassifierConfig
    from ..config import fit_preset

    base = CLASSIFIER_PRESETS[preset]
    return ClassifierConfig.from_dict({**base.to_dict(), **fit_preset(base, data.image_size, shape),
                                       "image_size": data.image_size, "in_channels": data.channels,
                                       "num_classes": data.num_classes})


def _run_train(args: argparse.Namespace) -> int:
    from ..files import check_folder_free
    from ..train import run_training
    from ..train.trainer import check_run_dir

    writable(args.out, folder=True)  # before the data loads: a file, a loop or an unwritable parent
    check_run_dir(args.out, args.resume)
    check_folder_free(args.out)  # another run writing there now (the trainer claims the folder itself)
    config, data = _train_configs(args)
    result = run_training(config, args.out, data=data, device=args.device, resume=args.resume, quiet=args.quiet,
                          dist_timeout=args.dist_timeout)
    if result.interrupted:
        return 128 + result.signal  # the shell convention for "stopped by signal N"
    if not args.quiet and result.checkpoint is not None:
        samples = Path(args.out) / "samples"
        print(f"ddim: trained to step {result.step}; wrote {result.checkpoint} (checkpoint), "
              f"{Path(args.out) / 'metrics.jsonl'}" + (f", {samples}/ (sample grids)" if samples.is_dir() else ""),
              file=sys.stderr)
    return 0


SUBCOMMANDS = (_add_train, _add_train_classifier)
