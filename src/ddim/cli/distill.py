"""``ddim distill``: parse -> ``DistillOptions`` -> ``plan_phases`` (every refusal of the inputs happens there,
before anything is written) -> ``ddim.train.distill_phases.run_distillation``.

How ``ddim sample`` reads a student's own sampling defaults is ``common.resolve_solver_defaults``'s part.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .common import (Formatter, add_bf16, add_data_dir, add_device, add_dist_timeout, add_quiet, add_seed, float_pair,
                     int_list, writable)

__all__ = ["SUBCOMMANDS"]


def _add_distill(sub) -> None:
    from ..config import DISTILL_METHODS, DISTILL_TEACHER_SOLVERS, DISTILL_WEIGHTINGS
    from ..train.distill_phases import DEFAULT_TEACHER_STEPS, DEFAULT_WEIGHTING, DistillOptions

    d = DistillOptions()
    p = sub.add_parser("distill", formatter_class=Formatter,
                       help="distil a model into students that sample in 2^k steps (progressive or consistency "
                            "distillation)",
                       description="Progressive distillation (Salimans & Ho 2022): a student learns to do two "
                                   "deterministic DDIM steps of its teacher in one, and the halving repeats from "
                                   "--teacher-steps down to --steps. Consistency distillation (--method consistency, "
                                   "Song et al. 2023): one phase in which the student learns to map every point of "
                                   "the teacher's DDIM chain on its K-step grid to the chain's end, sampled in "
                                   "--steps steps of multistep consistency sampling. A class-conditional teacher is "
                                   "first distilled into a student that takes the guidance weight w as an input "
                                   "(Meng et al. 2023, stage 1; the same phase for both methods). Each phase is a run "
                                   "folder under --out (guided_K/, steps_N/, consistency/), checkpointed and "
                                   "resumable exactly as `ddim train`; sample a student with `ddim sample "
                                   "--checkpoint OUT/steps_N` or `OUT/consistency` (its own steps by default, "
                                   "--guidance feeds its w input). Under torchrun the global --batch-size is split "
                                   "across the processes.")
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", default="bundled", metavar="CHECKPOINT",
                   help="the model to distil: a checkpoint or run directory, or 'bundled' (the bundled model)")
    g.add_argument("--method", choices=DISTILL_METHODS, default=d.method,
                   help="progressive: halving rounds down to --steps; consistency: one consistency-distillation "
                        "phase (OUT/consistency/) whose student samples in --steps steps by default")
    g.add_argument("--teacher-steps", type=int, default=None,
                   help=f"K, the teacher's DDIM grid the first round halves (a power of two; default: "
                        f"{DEFAULT_TEACHER_STEPS}, or a distilled teacher's own grid)")
    g.add_argument("--steps", type=int, default=d.steps,
                   help="the last student's steps (a power of two below K; consistency: its default sampling steps, "
                        "a power of two up to K)")
    g.add_argument("--guided-steps", type=int, default=d.guided_train_steps,
                   help="optimizer steps of the guided phase (class-conditional teachers)")
    g.add_argument("--round-steps", type=int_list, default=None,
                   help=f"progressive: optimizer steps per halving round: one number, or one per round from K/2 down "
                        f"(default: {d.round_train_steps[0]})")
    g.add_argument("--cd-steps", type=int, default=None,
                   help=f"consistency: optimizer steps of the consistency phase (default: {d.consistency_train_steps})")
    g.add_argument("--target-decay", type=float, default=None,
                   help=f"consistency: μ of the target network θ⁻ ← μ θ⁻ + (1 − μ) θ, in [0, 1) (default: "
                        f"{d.target_decay:g})")
    g.add_argument("--w-range", type=float_pair, default=(d.w_min, d.w_max), metavar="W_MIN,W_MAX",
                   help=f"guidance weights are drawn from U[W_MIN, W_MAX] in training "
                        f"(default: {d.w_min:g},{d.w_max:g})")
    g.add_argument("--guidance-interval", type=float_pair, default=None, metavar="LO,HI",
                   help="guided phase: the teacher guides only where LO < σ <= HI, σ = √((1 − ᾱ)/ᾱ) (interval "
                        "guidance; the student's --guidance then means that method's weight); default: plain CFG at "
                        "every noise level")
    g.add_argument("--teacher-solver", choices=DISTILL_TEACHER_SOLVERS, default=d.teacher_solver,
                   help="progressive: how the first halving round's teacher takes its two steps: ddim (Salimans & Ho's "
                        "Algorithm 2) or heun (EDM's second-order step, twice the teacher's calls, a truer view of the "
                        "ODE than its own DDIM chain); later rounds' teachers are halved students and take DDIM steps")
    g.add_argument("--weighting", choices=DISTILL_WEIGHTINGS, default=None,
                   help="loss weight on the squared x̂_0 error: max(SNR, 1), SNR + 1 (the v-loss) or 1 (default: "
                        + ", ".join(f"{w} for {m}" for m, w in DEFAULT_WEIGHTING.items()) + ")")
    add_data_dir(g, "where the teacher's training data are, when not where its config says")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size")
    g.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate (decays linearly over each phase)")
    g.add_argument("--warmup", type=int, default=20, help="linear learning-rate warm-up of each phase, steps")
    g.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the student's weights")
    add_bf16(g)
    add_seed(g, "seed of every random stream (phase i uses seed + i)")
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="folder of the phases' run folders (required)")
    g.add_argument("--resume", action="store_true", help="continue: skip finished phases, resume the current one")
    add_device(g)
    add_dist_timeout(g)
    g.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (0: end of phase only)")
    g.add_argument("--keep-last", type=int, default=2, help="checkpoints kept per phase (0: all)")
    g.add_argument("--no-samples", dest="samples", action="store_false",
                   help="no sample grid at the end of each phase (default: one, in its samples/)")
    g.add_argument("--log-every", type=int, default=25, help="steps between metrics.jsonl lines")
    add_quiet(g)
    p.set_defaults(func=_run_distill)


def _options(args):
    from ..checkpoint import named_checkpoint
    from ..config import TrainConfig
    from ..train.distill_phases import DistillOptions

    mine = {"progressive": ("--round-steps",), "consistency": ("--cd-steps", "--target-decay")}
    for method, flags in mine.items():
        given = [f for f in flags if getattr(args, f[2:].replace("-", "_")) is not None]
        if given and args.method != method:
            raise ValueError(f"{', '.join(given)} applies to --method {method} only (got --method {args.method})")
    d = DistillOptions()
    teacher = named_checkpoint(args.teacher)
    train = TrainConfig(batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, ema_decay=args.ema_decay,
                        seed=args.seed, checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
                        sample_every=1 if args.samples else 0, num_samples=20, log_every=args.log_every,
                        weight_decay=0.0, label_dropout=0.0, bf16=args.bf16)
    return DistillOptions(teacher=teacher, method=args.method, teacher_steps=args.teacher_steps, steps=args.steps,
                          guided_train_steps=args.guided_steps,
                          round_train_steps=tuple(args.round_steps or d.round_train_steps),
                          consistency_train_steps=d.consistency_train_steps if args.cd_steps is None else args.cd_steps,
                          target_decay=d.target_decay if args.target_decay is None else args.target_decay,
                          w_min=args.w_range[0], w_max=args.w_range[1], guidance_interval=args.guidance_interval,
                          weighting=args.weighting, teacher_solver=args.teacher_solver, train=train,
                          data_dir=args.data_dir)


def _run_distill(args) -> int:
    from ..files import check_folder_free
    from ..train.distill_phases import phase_done, plan_phases, run_distillation
    from ..train.trainer import check_run_dir

    writable(args.out, folder=True)
    plan = plan_phases(_options(args), args.out)  # every refusal of the inputs, before anything is written
    for run, _ in plan:
        check_run_dir(run, args.resume)
        check_folder_free(run)
    if not args.resume and any(run.exists() for run, _ in plan):
        raise ValueError(f"{args.out} already holds distillation runs; pass --resume to continue them, or choose "
                         "another --out")

    def announce(run, config):
        if not args.quiet:
            dc = config.distill
            what = {"guided": "guided → w-input",
                    "consistency": f"consistency distillation on the {dc.teacher_steps}-step grid (samples in "
                                   f"{dc.steps})"}.get(dc.phase, f"{dc.teacher_steps} → {dc.steps} steps"
                                                       + (", Heun teacher" if dc.teacher_solver == "heun" else ""))
            print(f"ddim: distill: {run.name}: {what}, {config.train.steps} optimizer steps", file=sys.stderr)

    result = run_distillation(plan, device=args.device, resume=args.resume, quiet=args.quiet, on_phase=announce,
                              dist_timeout=args.dist_timeout)
    if result is not None and result.interrupted:
        return 128 + result.signal  # the shell convention for "stopped by signal N"
    if not args.quiet:
        done = [run.name for run, config in plan if phase_done(run, config)]
        print(f"ddim: distilled into {Path(args.out)}/ ({', '.join(done)}); sample with `ddim sample --checkpoint "
              f"{plan[-1][0]}`", file=sys.stderr)
    return 0


SUBCOMMANDS = (_add_distill,)
