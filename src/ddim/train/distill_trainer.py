"""The distillation trainer: ``Trainer``'s loop, checkpoints, exact resume and refusals, with a teacher
inside the loss (the math is in ``ddim.train.distill``); and the phases of a whole distillation.

One optimizer step k of a phase with student grid τ (N steps) and teacher grid τ' (N or 2N steps):
    1. indices = batch_indices(seed, k, B, n); g = step_generator(seed, k)
    2. from g, for the whole global batch, in this order: the student step j ~ U{0..N−1}, ε, w ~ U[w_min, w_max]
       (and flips, when the data config asks for them)
    3. x_t = α_t x_0 + σ_t ε at t = τ_j; the teacher's target without gradients:
           "guided": x̂_w = (1 + w) x̂_c − w x̂_∅ at t (one batched forward of 2B)
           "halve":  two DDIM steps τ'_{2j} → τ'_{2j+1} → τ'_{2j+2} of the w-input teacher, then x̃
    4. loss = mean over the batch of weight(ᾱ_t) · mean over pixels of (x̂_0^student − target)²
As in ``Trainer``, every random quantity is a function of (seed, k, rank), so a resumed phase recomputes
exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch

from ..checkpoint import BUNDLED_MODEL, CheckpointError, list_checkpoints, load_checkpoint, read_json
from ..checks import check_power_of_two
from ..config import DistillConfig, RunConfig, TrainConfig, config_diff
from ..distributed import RENDEZVOUS_TIMEOUT, shutdown
from ..guidance import GuidanceInput, guided_combination
from ..nn import UNetConfig
from ..transfer import to_device
from .batches import STREAM_SAMPLES, apply_flips, batch_indices, derive_seed, flip_mask, step_generator
from .distill import deterministic_step, distill_target, grid_abar, loss_weight, student_grid, x0_from_output
from .trainer import Trainer, TrainResult

__all__ = ["DistillTrainer", "DistillOptions", "Conditioning", "plan_phases", "run_distillation", "phase_done",
           "DEFAULT_W", "DEFAULT_TEACHER_STEPS"]

DEFAULT_W = 0.5  # the sample grids' guidance weight: `ddim sample`'s default
DEFAULT_TEACHER_STEPS = 64  # K of a teacher that is not a distilled student


class Conditioning(NamedTuple):
    """What the student is conditioned on besides t: labels (B,) or None, and guidance weights w (B,)."""

    labels: Optional[torch.Tensor]
    w: torch.Tensor


def _essentials(c: RunConfig, guidance_embed: bool) -> dict:
    d = c.to_dict()
    model = {**d["model"], "guidance_embed": guidance_embed}
    return {"model": model, "schedule": d["schedule"], "prediction": c.prediction}


class DistillTrainer(Trainer):
    """Train one distillation phase (``config.distill``) of the checkpoint ``config.train.init_from``.

    Arguments as ``Trainer``'s. The teacher is loaded from ``init_from`` (its EMA weights) and stays frozen; the
    student starts from the same weights (a new w-embedding starts at zero, so the student starts as the
    conditional teacher). Sample grids show the student on its own grid at w = 0.5.
    """

    def __init__(self, config: RunConfig, out_dir, **kwargs):
        dc = config.distill
        if dc is None or config.train.init_from is None:
            raise ValueError("a distillation phase needs config.distill and the teacher in config.train.init_from")
        self.teacher, _, self.teacher_config = load_checkpoint(config.train.init_from)
        self.teacher.requires_grad_(False)
        self._teacher_w = getattr(self.teacher.config, "guidance_embed", False)
        self._guided = dc.phase == "guided" and self.teacher.null_label is not None
        embed = config.model.guidance_embed
        diff = config_diff(_essentials(self.teacher_config, embed), _essentials(config, embed))
        if diff:
            raise ValueError(f"the student must share its teacher's network, schedule and prediction; it differs in "
                             f"{', '.join(diff)}")
        super().__init__(config, out_dir, **kwargs)
        self.teacher.to(self.device)
        T = self.schedule.num_steps
        self.tau_teacher = student_grid(T, dc.teacher_steps)  # also refuses a grid that does not nest
        self.abar_teacher = grid_abar(self.schedule.alphas_cumprod, self.tau_teacher)
        self.stride = dc.teacher_steps // dc.steps  # 2 when halving, 1 for the guided phase
        self.tau_student = self.tau_teacher[::self.stride]

    def _init_weights(self, source: str) -> None:
        """The student starts as its teacher: every teacher weight copied; a w-embedding the teacher lacks keeps its
        zero-output initialisation."""
        missing, unexpected = self.model.load_state_dict(self.teacher.state_dict(), strict=False)
        if unexpected or any(not k.startswith("guidance_embed.") for k in missing):
            raise CheckpointError(f"the teacher {source} does not fit the student: missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}")
        self.ema.model.load_state_dict(self.model.state_dict())

    # ---- one step -------------------------------------------------------------------------------
    def _batch(self):
        """This rank's (x_0, student step j, ε, Conditioning) of global batch ``self.step``."""
        tc, dc, data, sl = self.config.train, self.config.distill, self.data, self._shard()
        g = step_generator(tc.seed, self.step)
        B = tc.batch_size
        idx = to_device(batch_indices(tc.seed, self.step, B, len(data))[sl], self.device)
        j = torch.randint(0, dc.steps, (B,), generator=g, dtype=torch.int64)
        eps = torch.randn((B, data.channels, data.image_size, data.image_size), generator=g, dtype=torch.float32)
        w = dc.w_min + (dc.w_max - dc.w_min) * torch.rand(B, generator=g, dtype=torch.float64)
        flips = flip_mask(B, g)[sl] if self.config.data is not None and self.config.data.hflip else None
        x0 = data.to_float(idx)
        if flips is not None:
            x0 = apply_flips(x0, flips)
        labels = data.labels[idx] if self.class_cond else None
        cond = Conditioning(labels, to_device(w[sl].float(), self.device))
        return x0, to_device(j[sl], self.device), to_device(eps[sl], self.device), cond

    def _column(self, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """ᾱ at teacher-grid points i (B,) as a (B, 1, 1, 1) column in like's dtype."""
        return self.abar_teacher.to(like.device)[i].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))

    def _teacher_x0(self, x: torch.Tensor, i: torch.Tensor, cond: Conditioning, clip: Optional[float]):
        """The teacher's x̂_0 at teacher-grid points i (B,): w-guided (two branches, or its w input)."""
        t = self.tau_teacher.to(x.device)[i]
        labels, w = cond
        if labels is None:
            out = self.teacher(x, t)
        elif self._teacher_w:
            out = self.teacher(x, t, labels, w=w)
        elif self._guided:
            null = torch.full_like(labels, self.teacher.null_label)
            c, u = self.teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
            out = guided_combination(c, u, w.to(c.dtype).view(-1, *([1] * (c.ndim - 1))))
        else:
            out = self.teacher(x, t, labels)
        return x0_from_output(out, x, self._column(i, x), self.teacher_config.prediction, clip)

    @torch.no_grad()
    def target(self, x_t: torch.Tensor, j: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The student's x̂_0 target at its step j: the guided teacher's x̂_w ("guided"), or x̃ of two teacher
        DDIM steps ("halve"; the teacher's own x̂_0 rule inside them)."""
        dc = self.config.distill
        if dc.phase == "guided":
            return self._teacher_x0(x_t, j, cond, None)
        i = 2 * j
        a0, a1, a2 = (self._column(i + d, x_t) for d in (0, 1, 2))
        x1 = deterministic_step(x_t, self._teacher_x0(x_t, i, cond, dc.teacher_clip), a0, a1)
        x2 = deterministic_step(x1, self._teacher_x0(x1, i + 1, cond, dc.teacher_clip), a1, a2)
        return distill_target(x_t, x2, a0, a2)

    def student(self, net, x_t: torch.Tensor, j: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The student's x̂_0 at its step j (no clamp: its own update is the plain DDIM step)."""
        t = self.tau_student.to(x_t.device)[j]
        labels, w = cond
        if labels is None:
            out = net(x_t, t)
        elif self.config.model.guidance_embed:
            out = net(x_t, t, labels, w=w)
        else:
            out = net(x_t, t, labels)
        return x0_from_output(out, x_t, self._column(self.stride * j, x_t), self.config.prediction)

    def compute_loss(self, x0: torch.Tensor, j: torch.Tensor, eps: torch.Tensor, cond) -> torch.Tensor:
        """weight(ᾱ_t) · ‖x̂_0^student(x_t) − target‖² averaged over pixels, then over the batch."""
        abar = self._column(self.stride * j, x0)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        target = self.target(x_t, j, cond)
        per_sample = (self.student(self.net, x_t, j, cond).float() - target.float()).pow(2).flatten(1).mean(1)
        return (loss_weight(abar.flatten().float(), self.config.distill.weighting) * per_sample).mean()

    @torch.no_grad()
    def sample_grid(self, path: Optional[Path] = None) -> torch.Tensor:
        """The EMA student on its own grid (DDIM, η = 0, its x̂_0 rule), w = 0.5 where it takes w; one class per
        column; the same noise at every call. Saved as a PNG grid if ``path``."""
        from ..images import save_grid
        from ..samplers import sample

        tc, m, dc = self.config.train, self.config.model, self.config.distill
        g = torch.Generator().manual_seed(derive_seed(tc.seed, STREAM_SAMPLES))
        x_T = torch.randn((tc.num_samples, m.in_channels, m.image_size, m.image_size), generator=g).to(self.device)
        net = self.ema.model
        if self.class_cond:
            labels = (torch.arange(tc.num_samples) % m.num_classes).to(self.device)
            net = (GuidanceInput(net, labels, min(max(DEFAULT_W, dc.w_min), dc.w_max)) if m.guidance_embed
                   else lambda x, t: self.ema.model(x, t, labels))  # noqa: E731
        x0 = sample(net, self.schedule, x_T, timesteps=self.tau_student, prediction=tc.prediction, clip=dc.clip,
                    eps_from_clipped_x0=dc.clip is not None).float()
        if path is not None:
            save_grid(x0, path, nrow=m.num_classes if self.class_cond and m.num_classes <= tc.num_samples else None)
        return x0


# ---------------------------------------------------------------------------------------- the phases

@dataclasses.dataclass(frozen=True)
class DistillOptions:
    """A whole distillation: the teacher, the grids and each phase's training.

    Attributes:
        teacher: checkpoint to distil (a run, ``step_*`` or exported directory).
        teacher_steps: K, the grid the first phase starts from (a power of two); None: a distilled teacher's own,
            else ``DEFAULT_TEACHER_STEPS``.
        steps: the last student's steps (a power of two below K).
        guided_train_steps: optimizer steps of the guided phase (class-conditional teachers without a w input).
        round_train_steps: optimizer steps of each halving round, K/2 first (one number: every round).
        w_min, w_max, weighting: as in ``ddim.config.DistillConfig``.
        train: the rest of each phase's ``TrainConfig`` (batch, lr, warm-up, EMA, seed, intervals); its ``steps``
            and ``init_from`` are set per phase, its lr decays linearly to ~0 over each phase.
        data_dir: where the teacher's training data are (None: as its config says).
    """

    teacher: str = str(BUNDLED_MODEL)
    teacher_steps: Optional[int] = None
    steps: int = 1
    guided_train_steps: int = 1000
    round_train_steps: tuple = (1000,)
    w_min: float = 0.0
    w_max: float = 2.0
    weighting: str = "truncated-snr"
    train: TrainConfig = TrainConfig()
    data_dir: Optional[str] = None


def _run_name(phase: str, steps: int) -> str:
    return f"guided_{steps}" if phase == "guided" else f"steps_{steps}"


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


def plan_phases(opts: DistillOptions, out_dir) -> list[tuple[Path, RunConfig]]:
    """(run directory, RunConfig) of every phase, in order; raises ValueError for a plan that cannot run (a
    teacher that is not a checkpoint, a step count that is not a power of two below the teacher's grid)."""
    out = Path(out_dir)
    _, schedule, tcfg = load_checkpoint(opts.teacher)
    if tcfg.is_classifier or not isinstance(tcfg.model, UNetConfig):
        raise ValueError(f"{opts.teacher} is not a ddim denoiser checkpoint; distillation needs one")
    prior, K = tcfg.distill, opts.teacher_steps
    if prior is not None:
        if K is not None and K != prior.steps:
            raise ValueError(f"the teacher is a distilled {prior.steps}-step student; its grid is {prior.steps} "
                             f"steps, not --teacher-steps {K}")
        K = prior.steps
    K = DEFAULT_TEACHER_STEPS if K is None else K
    check_power_of_two("--teacher-steps", K)
    check_power_of_two("--steps", opts.steps)
    if opts.steps >= K:
        raise ValueError(f"--steps {opts.steps} must be below the teacher's grid of {K} steps (a student takes fewer "
                         "steps than its teacher)")
    student_grid(schedule.num_steps, K)  # a teacher grid that does not nest on this schedule
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
    phases = ([("guided", K, opts.guided_train_steps)] if guided else []) + [
        ("halve", n, s) for n, s in _halvings(K, opts.steps, opts.round_train_steps)]
    teacher, plan = str(opts.teacher), []
    for index, (phase, n, train_steps) in enumerate(phases):
        dc = DistillConfig(phase=phase, steps=n, teacher_steps=n * (2 if phase == "halve" else 1), teacher=teacher,
                           origin=origin, w_min=opts.w_min, w_max=opts.w_max, weighting=opts.weighting,
                           teacher_clip=clip, clip=clip if phase == "guided" else None, rounds=tuple(rounds))
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
            result = DistillTrainer(config, run, device=device, resume=resume, quiet=quiet,
                                    dist_timeout=dist_timeout).fit()
            if result.interrupted:
                break
    finally:
        shutdown()
    return result
