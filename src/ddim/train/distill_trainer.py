"""The distillation trainer: ``Trainer``'s loop, checkpoints, exact resume and refusals, with a teacher
inside the loss (the math is in ``ddim.train.distill``; the phases of a whole distillation in
``ddim.train.distill_phases``).

One optimizer step k of a phase with student grid τ (N steps) and teacher grid τ' (N or 2N steps):
    1. indices = batch_indices(seed, k, B, n); g = step_generator(seed, k)
    2. from g, for the whole global batch, in this order: the student step j ~ U{0..N−1}, ε, w ~ U[w_min, w_max]
       (and flips, when the data config asks for them)
    3. x_t = α_t x_0 + σ_t ε at t = τ_j; the teacher's target without gradients:
           "guided": x̂_w = (1 + w) x̂_c − w x̂_∅ at t (one batched forward of 2B; with a guidance interval,
                     w = 0 at the levels outside it)
           "halve":  two DDIM steps τ'_{2j} → τ'_{2j+1} → τ'_{2j+2} of the w-input teacher, then x̃
    4. loss = mean over the batch of weight(ᾱ_t) · mean over pixels of (x̂_0^student − target)²
As in ``Trainer``, every random quantity is a function of (seed, k, rank), so a resumed phase recomputes
exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..config import RunConfig, config_diff
from ..forward import eps_from_x0
from ..guidance import GuidanceInput, guided_combination, in_interval
from ..transfer import to_device
from .batches import STREAM_SAMPLES, apply_flips, batch_indices, derive_seed, flip_mask, step_generator
from .distill import (check_heun_start, deterministic_step, distill_target, grid_abar, heun_step, loss_weight,
                      student_grid, weighted_mse, x0_from_output)
from .trainer import Trainer

__all__ = ["DistillTrainer", "Conditioning", "DEFAULT_W"]

DEFAULT_W = 0.5  # the sample grids' guidance weight: `ddim sample`'s default


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
        check_heun_start(dc.teacher_solver, float(self.abar_teacher[0]))
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
        j = torch.randint(0, len(self.tau_student), (B,), generator=g, dtype=torch.int64)
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
            out = guided_combination(c, u, self._guidance_weight(w, i).to(c.dtype).view(-1, *([1] * (c.ndim - 1))))
        else:
            out = self.teacher(x, t, labels)
        return x0_from_output(out, x, self._column(i, x), self.teacher_config.prediction, clip)

    def _guidance_weight(self, w: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """The guided teacher's weight at teacher-grid points i (B,): w, or with ``distill.guidance_interval`` w
        inside the interval and 0 outside it (the conditional prediction alone, Kynkäänniemi et al. 2024)."""
        interval = self.config.distill.guidance_interval
        if interval is None:
            return w
        inside = in_interval(self.abar_teacher, interval).to(i.device)[i]  # indexed where i lives: no sync
        return torch.where(inside, w, torch.zeros_like(w))

    def _teacher_step(self, x: torch.Tensor, i: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """One teacher step from its grid points i (B,) to i + 1: DDIM (η = 0), or Heun's (``heun_step``) with
        ``distill.teacher_solver == "heun"``, the teacher's own x̂_0 rule in every call."""
        dc = self.config.distill
        a0, a1 = self._column(i, x), self._column(i + 1, x)
        x0 = self._teacher_x0(x, i, cond, dc.teacher_clip)
        euler = deterministic_step(x, x0, a0, a1)
        if dc.teacher_solver == "ddim":
            return euler
        last = len(self.tau_teacher) - 1
        onto_x0 = (i == last).view(-1, *([1] * (x.ndim - 1)))  # Heun's step onto x_0 stays Euler
        x0_e = self._teacher_x0(euler, (i + 1).clamp(max=last), cond, dc.teacher_clip)
        a1_finite = torch.where(onto_x0, a0, a1)  # ε̂ at ᾱ = 1 divides by 0: keep the unused rows finite
        heun = heun_step(x, eps_from_x0(x, x0, a0), eps_from_x0(euler, x0_e, a1_finite), a0, a1)
        return torch.where(onto_x0, euler, heun)

    @torch.no_grad()
    def target(self, x_t: torch.Tensor, j: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The student's x̂_0 target at its step j: the guided teacher's x̂_w ("guided"), or x̃ of two teacher
        steps ("halve", ``_teacher_step``)."""
        if self.config.distill.phase == "guided":
            return self._teacher_x0(x_t, j, cond, None)
        i = 2 * j
        x2 = self._teacher_step(self._teacher_step(x_t, i, cond), i + 1, cond)
        return distill_target(x_t, x2, self._column(i, x_t), self._column(i + 2, x_t))

    def _call(self, net, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """A student-shaped network's raw output at (x, t) under ``cond`` (labels and w as it takes them)."""
        labels, w = cond
        if labels is None:
            return net(x, t)
        if self.config.model.guidance_embed:
            return net(x, t, labels, w=w)
        return net(x, t, labels)

    def student(self, net, x_t: torch.Tensor, j: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The student's x̂_0 at its step j (no clamp: its own update is the plain DDIM step)."""
        out = self._call(net, x_t, self.tau_student.to(x_t.device)[j], cond)
        return x0_from_output(out, x_t, self._column(self.stride * j, x_t), self.config.prediction)

    def compute_loss(self, x0: torch.Tensor, j: torch.Tensor, eps: torch.Tensor, cond) -> torch.Tensor:
        """weight(ᾱ_t) · ‖x̂_0^student(x_t) − target‖² averaged over pixels, then over the batch."""
        abar = self._column(self.stride * j, x0)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        with torch.autocast(x_t.device.type, enabled=False):  # float32 targets under --bf16: x̃ divides by small
            target = self.target(x_t, j, cond)                 # numbers, which would magnify bf16 rounding
        weight = loss_weight(abar.flatten().float(), self.config.distill.weighting)
        return weighted_mse(self.student(self.net, x_t, j, cond), target, weight)

    def sampling(self) -> dict:
        """``ddim.sample``'s keywords for the student's sample grids: DDIM (η = 0) on its own grid, its x̂_0 rule."""
        clip = self.config.distill.clip
        return {"timesteps": self.tau_student, "clip": clip, "eps_from_clipped_x0": clip is not None}

    @torch.no_grad()
    def sample_grid(self, path: Optional[Path] = None) -> torch.Tensor:
        """The EMA student as it samples (``sampling``), w = 0.5 where it takes w; one class per column; the same
        noise at every call. Saved as a PNG grid if ``path``."""
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
        x0 = sample(net, self.schedule, x_T, prediction=tc.prediction, generator=g, **self.sampling()).float()
        if path is not None:
            save_grid(x0, path, nrow=m.num_classes if self.class_cond and m.num_classes <= tc.num_samples else None)
        return x0
