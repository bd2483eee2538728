"""The phases of a whole distillation (``ddim distill``): plan them from a teacher, then run them in order.

    progressive:  [guided_K]  →  steps_{K/2}  →  …  →  steps_N        (``DistillTrainer``, halving rounds)
    consistency:  [guided_K]  →  consistency                          (``ConsistencyTrainer``, one CD phase)

The guided phase (class-conditional teachers without a w input) is the same run for both methods: the same
config, the same folder, so one finished under --out serves either. Each phase is a run folder, checkpointed and
resumed exactly as ``ddim train``'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Optional

from ..checkpoint import BUNDLED_MODEL, CheckpointError, list_checkpoints, load_checkpoint, read_json
from ..checks import check_power_of_two
from ..config import (DEFAULT_TARGET_DECAY, DISTILL_METHODS, DISTILL_TEACHER_SOLVERS, DistillConfig, RunConfig,
                      TrainConfig)
from ..distributed import RENDEZVOUS_TIMEOUT, shutdown
from ..nn import UNetConfig
from .consistency import BOUNDARY_PREDICTIONS
from .consistency_trainer import ConsistencyTrainer
from .distill import check_heun_start, student_grid
from .distill_trainer import DistillTrainer
from .trainer import TrainResult

__all__ = ["DistillOptions", "plan_phases", "run_distillation", "phase_done", "DEFAULT_TEACHER_STEPS",
           "DEFAULT_WEIGHTING"]

DEFAULT_TEACHER_STEPS = 64  # K of a teacher that is not a distilled student
DEFAULT_WEIGHTING = {"progressive": "truncated-snr", "consistency": "uniform"}  # Salimans & Ho; Song et al.'s λ ≡ 1


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """A whole distillation: the teacher, the grids and each phase's training.

    Attributes:
        teacher: checkpoint to distil (a run, ``step_*`` or exported directory).
        method: "progressive" (halving rounds down to ``steps``) or "consistency" (one consistency-distillation
            phase on the teacher's grid of K, sampled in ``steps`` by default).
        teacher_steps: K, the grid the first phase starts from (a power of two); None: a distilled teacher's own,
            else ``DEFAULT_TEACHER_STEPS``.
        steps: the last student's steps (a power of two below K; for "consistency" up to K).
        guided_train_steps: optimizer steps of the guided phase (class-conditional teachers without a w input).
        round_train_steps: optimizer steps of each halving round, K/2 first (one number: every round).
        consistency_train_steps: optimizer steps of the consistency phase.
        target_decay: μ of the consistency phase's target network.
        w_min, w_max: as in ``ddim.config.DistillConfig``.
        guidance_interval: (σ_lo, σ_hi) of the guided phase's teacher (interval guidance), or None (plain CFG at
            every level); as in ``ddim.config.DistillConfig``, recorded by every phase.
        weighting: as there; None: the method's own (``DEFAULT_WEIGHTING``).
        teacher_solver: "ddim" or "heun": how the first halving round's teacher steps (``DistillConfig``); later
            rounds' teachers are halved students, whose x̂_0 means "two steps in one", so they step with DDIM.
        train: the rest of each phase's ``TrainConfig`` (batch, lr, warm-up, EMA, seed, intervals); its ``steps``
            and ``init_from`` are set per phase, its lr decays linearly to ~0 over each phase.
        data_dir: where the teacher's training data are (None: as its config says).
    """

    teacher: str = str(BUNDLED_MODEL)
    method: str = "progressive"
    teacher_steps: Optional[int] = None
    steps: int = 1
    guided_train_steps: int = 1000
    round_train_steps: tuple = (1000,)
    consistency_train_steps: int = 1000
    target_decay: float = DEFAULT_TARGET_DECAY
    w_min: float = 0.0
    w_max: float = 2.0
    guidance_interval: Optional[tuple] = None
    weighting: Optional[str] = None
    teacher_solver: str = "ddim"
    train: TrainConfig = TrainConfig()
    data_dir: Optional[str] = None


def _run_name(phase: str, steps: int) -> str:
    return {"guided": f"guided_{steps}", "consistency": "consistency"}.get(phase, f"steps_{steps}")


def _halvings(K: int, last: int, per_round: tuple) -> list[tuple[int, int]]:
    """(student steps, optimizer steps) of each halving round K/2, K/4, …, ``last``; ``per_round``: one number for
    every round, or one per round."""
    rounds = []
    n = K // 2
    while n >= last:
        rounds.append(n)
        n //= 2
    per_round = tuple(per_round) * (len(rounds) if len(per_round) == 1 else 1)
    if len(per_round) != len(rounds):
        raise ValueError(f"--round-steps gives {len(per_round)} values for {len(rounds)} halving rounds "
                         f"({', '.join(map(str, rounds))} steps)")
    return list(zip(rounds, per_round))


def _after_guided(opts: DistillOptions, K: int, prediction: str) -> list[tuple[str, int, int]]:
    """(phase, steps, optimizer steps) of the method's phases after the guided one, checked."""
    if opts.method == "progressive":
        if opts.steps >= K:
            raise ValueError(f"--steps {opts.steps} must be below the teacher's grid of {K} steps (a student takes "
                             "fewer steps than its teacher)")
        return [("halve", n, s) for n, s in _halvings(K, opts.steps, opts.round_train_steps)]
    if opts.steps > K:
        raise ValueError(f"--steps {opts.steps} must be at most the teacher's grid of {K} steps (a consistency "
                         "student samples on points of the grid it learnt)")
    if prediction not in BOUNDARY_PREDICTIONS:
        raise ValueError(f"consistency distillation reads the student's x̂_0 as its consistency function, which needs "
                         f"prediction {' or '.join(BOUNDARY_PREDICTIONS)}; the teacher predicts {prediction!r}")
    return [("consistency", opts.steps, opts.consistency_train_steps)]


def _check_teacher_solver(opts: DistillOptions, prior: Optional[DistillConfig]) -> None:
    """A Heun teacher needs a denoiser: the first halving round of a progressive run whose teacher is not halved."""
    if opts.teacher_solver not in DISTILL_TEACHER_SOLVERS:
        raise ValueError(f"unknown teacher solver {opts.teacher_solver!r}; allowed: "
                         f"{', '.join(DISTILL_TEACHER_SOLVERS)}")
    if opts.teacher_solver == "ddim":
        return
    if opts.method != "progressive":
        raise ValueError(f"--teacher-solver {opts.teacher_solver} applies to --method progressive only (its first "
                         f"halving round)")
    if prior is not None and prior.phase != "guided":
        raise ValueError(f"--teacher-solver {opts.teacher_solver} steps a denoiser; {opts.teacher} is a halved "
                         f"student, whose x̂_0 means two steps in one (distil from its guided phase instead)")


def plan_phases(opts: DistillOptions, out_dir) -> list[tuple[Path, RunConfig]]:
    """(run directory, RunConfig) of every phase, in order; raises ValueError for a plan that cannot run (a
    teacher that is not a checkpoint, a step count that is not a power of two below the teacher's grid)."""
    out = Path(out_dir)
    if opts.method not in DISTILL_METHODS:
        raise ValueError(f"unknown distillation method {opts.method!r}; allowed: {', '.join(DISTILL_METHODS)}")
    _, schedule, tcfg = load_checkpoint(opts.teacher)
    if tcfg.is_classifier or not isinstance(tcfg.model, UNetConfig):
        raise ValueError(f"{opts.teacher} is not a ddim denoiser checkpoint; distillation needs one")
    prior, K = tcfg.distill, opts.teacher_steps
    if prior is not None:
        if prior.method == "consistency":
            raise ValueError(f"{opts.teacher} is a consistency student: its x̂_0 is not a denoiser's, so it teaches "
                             "no DDIM chain; distil its guided teacher instead")
        if K is not None and K != prior.steps:
            raise ValueError(f"the teacher is a distilled {prior.steps}-step student; its grid is {prior.steps} "
                             f"steps, not --teacher-steps {K}")
        K = prior.steps
    K = DEFAULT_TEACHER_STEPS if K is None else K
    check_power_of_two("--teacher-steps", K)
    check_power_of_two("--steps", opts.steps)
    later = _after_guided(opts, K, tcfg.prediction)
    student_grid(schedule.num_steps, K)  # a teacher grid that does not nest on this schedule
    check_heun_start(opts.teacher_solver, float(schedule.alphas_cumprod[-1]))
    class_cond = tcfg.model.num_classes is not None
    model = dataclasses.replace(tcfg.model, guidance_embed=class_cond)
    data = tcfg.data
    if data is None:
        raise ValueError(f"{opts.teacher} records no training data; distillation draws x_t from them")
    if opts.data_dir is not None:
        data = dataclasses.replace(data, data_dir=str(opts.data_dir))
    origin = prior.origin if prior is not None else str(opts.teacher)
    clip = prior.clip if prior is not None else 1.0  # `ddim sample`'s default x̂_0 rule for an ordinary model
    rounds = list(prior.rounds) + [{"phase": prior.phase, "steps": prior.steps, "train_steps": tcfg.train.steps,
                                    "run": str(opts.teacher)}] if prior is not None else []
    guided = class_cond and not tcfg.model.guidance_embed
    interval = prior.guidance_interval if prior is not None else opts.guidance_interval
    if prior is not None and opts.guidance_interval is not None and opts.guidance_interval != interval:
        raise ValueError(f"{opts.teacher} is a distilled student whose w already means "
                         f"{'plain CFG' if interval is None else f'interval guidance on {interval}'}; "
                         "--guidance-interval applies to the guided phase only")
    if opts.guidance_interval is not None and not guided and prior is None:
        raise ValueError(f"--guidance-interval needs a class-conditional teacher with a ∅ label; {opts.teacher} "
                         "has no guided phase")
    _check_teacher_solver(opts, prior)
    phases = ([("guided", K, opts.guided_train_steps)] if guided else []) + later
    teacher, plan, first_round = str(opts.teacher), [], True
    for index, (phase, n, train_steps) in enumerate(phases):
        cd = phase == "consistency"
        weighting = opts.weighting or DEFAULT_WEIGHTING["consistency" if cd else "progressive"]
        dc = DistillConfig(phase=phase, steps=n, teacher_steps=K if cd else n * (2 if phase == "halve" else 1),
                           teacher=teacher, origin=origin, w_min=opts.w_min, w_max=opts.w_max, weighting=weighting,
                           teacher_clip=clip, clip=clip if phase == "guided" else None, rounds=tuple(rounds),
                           target_decay=opts.target_decay if cd else None, guidance_interval=interval,
                           teacher_solver=opts.teacher_solver if phase == "halve" and first_round else "ddim")
        first_round = first_round and phase != "halve"
        tc = dataclasses.replace(opts.train, steps=train_steps, lr_decay=train_steps, init_from=teacher,
                                 prediction=tcfg.prediction, min_snr_gamma=None, label_dropout=0.0,
                                 t_sampling="uniform", seed=opts.train.seed + index, sample_steps=n,
                                 sample_every=train_steps if opts.train.sample_every else 0,
                                 warmup=min(opts.train.warmup, train_steps))
        run = out / _run_name(phase, n)
        plan.append((run, RunConfig(model=model, train=tc, data=data, schedule=tcfg.schedule, distill=dc)))
        rounds = rounds + [{"phase": phase, "steps": n, "train_steps": train_steps, "run": str(run)}]
        teacher, clip = str(run), dc.clip
    return plan


def phase_done(run: Path, config: RunConfig) -> bool:
    """Whether ``run`` holds the final checkpoint of its phase."""
    ckpts = list_checkpoints(run)
    if not ckpts:
        return False
    try:
        return int(read_json(ckpts[-1] / "state.json").get("step", -1)) >= config.train.steps
    except (CheckpointError, TypeError, ValueError):
        return False


def run_distillation(plan: list[tuple[Path, RunConfig]], *, device: str = "auto", resume: bool = False,
                     quiet: bool = False, on_phase: Optional[Callable[[Path, RunConfig], None]] = None,
                     dist_timeout: float = RENDEZVOUS_TIMEOUT) -> Optional[TrainResult]:
    """Run the phases of ``plan`` in order, skipping finished ones (with ``resume``); returns the last phase's
    ``TrainResult`` (an interrupted one stops the chain), or None when every phase was already done. Leaves the
    process group, if any, at the end."""
    result = None
    try:
        for run, config in plan:
            if resume and phase_done(run, config):
                continue
            if on_phase is not None:
                on_phase(run, config)
            trainer = ConsistencyTrainer if config.distill.phase == "consistency" else DistillTrainer
            result = trainer(config, run, device=device, resume=resume, quiet=quiet, dist_timeout=dist_timeout).fit()
            if result.interrupted:
                break
    finally:
        shutdown()
    return result
