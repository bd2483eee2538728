"""The consistency-distillation trainer: ``DistillTrainer``'s teacher, batches, checkpoints and exact resume, with
Song et al.'s CD loss (the math is in ``ddim.train.consistency``) and a target network θ⁻.

One optimizer step k on the teacher grid τ_0 = T − 1 > … > τ_{K−1} (τ_K := t_min, ᾱ = 1):
    1. as ``DistillTrainer``: indices and g = step_generator(seed, k); from g, for the whole global batch, the grid
       index n ~ U{0..K−1}, ε, w ~ U[w_min, w_max] (and flips)
    2. x_{τ_n} = α x_0 + σ ε; without gradients: x̂_{τ_{n+1}} = one DDIM (η = 0) step of the w-guided teacher
       (its own x̂_0 rule), and the target f_θ⁻(x̂_{τ_{n+1}}, τ_{n+1}) (= x̂ itself at τ_K, by the boundary condition)
    3. loss = mean over the batch of λ · mean over pixels of (f_θ(x_{τ_n}, τ_n) − target)²   (Algorithm 2)
    4. AdamW step, the evaluation EMA (``TrainConfig.ema_decay``), then θ⁻ ← μ θ⁻ + (1 − μ) θ
θ⁻ starts as the student (its teacher's weights) and is saved with the optimizer state, so a resumed phase
recomputes exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import copy

import torch

from ..config import DISTILL_SPACING, RunConfig
from ..timesteps import timesteps
from .consistency import consistency_fn, update_target
from .distill import deterministic_step
from .distill_trainer import Conditioning, DistillTrainer

__all__ = ["ConsistencyTrainer"]

TARGET_PREFIX = "target."  # θ⁻'s tensors in training_state.safetensors


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


class ConsistencyTrainer(DistillTrainer):
    """Train the consistency phase (``config.distill.phase == "consistency"``) of the teacher in
    ``config.train.init_from``: arguments as ``Trainer``'s. The student learns at every point of the teacher's
    grid; its EMA samples with multistep consistency sampling on the trailing grid of ``distill.steps``."""

    def __init__(self, config: RunConfig, out_dir, **kwargs):
        if config.distill is None or config.distill.phase != "consistency":
            raise ValueError("a ConsistencyTrainer trains a distill phase 'consistency'")
        self.target_net = None  # θ⁻: restored on resume (``load_extra_state``), else a copy of the initial student
        super().__init__(config, out_dir, **kwargs)
        self.stride, self.tau_student = 1, self.tau_teacher  # the student is trained at every teacher-grid point
        if self.target_net is None:
            self.target_net = _frozen_copy(self.model)

    # ---- θ⁻ -------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {TARGET_PREFIX + k: v for k, v in self.target_net.state_dict().items()}

    def load_extra_state(self, tensors) -> None:
        state = {k[len(TARGET_PREFIX):]: v for k, v in tensors.items() if k.startswith(TARGET_PREFIX)}
        if not state:
            raise ValueError("it holds no target network (θ⁻)")
        target = _frozen_copy(self.model)
        target.load_state_dict(state)
        self.target_net = target

    def train_step(self):
        out = super().train_step()
        update_target(self.target_net, self.model, self.config.distill.target_decay)
        return out

    # ---- the loss (``DistillTrainer.compute_loss`` with these two) -----------------------------------
    def student(self, net, x_t: torch.Tensor, n: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """f(x_t, τ_n) of ``net`` (θ or θ⁻) at grid indices n (B,), 0 ≤ n ≤ K: its unclamped x̂_0 read as
        c_skip x_t + c_out F; at n = K (ᾱ = 1) that is x_t exactly, the network's output there multiplied by 0."""
        t = self.tau_teacher.to(x_t.device)[n.clamp(max=len(self.tau_teacher) - 1)]
        return consistency_fn(self._call(net, x_t, t, cond), x_t, self._column(n, x_t), self.config.prediction)

    @torch.no_grad()
    def target(self, x_t: torch.Tensor, n: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """f_θ⁻(x̂_{τ_{n+1}}, τ_{n+1}) with x̂_{τ_{n+1}} one DDIM step of the teacher from x_t (Algorithm 2)."""
        a0, a1 = self._column(n, x_t), self._column(n + 1, x_t)
        x1 = deterministic_step(x_t, self._teacher_x0(x_t, n, cond, self.config.distill.teacher_clip), a0, a1)
        return self.student(self.target_net, x1, n + 1, cond)

    # ---- sample grids -------------------------------------------------------------------------------
    def sampling(self) -> dict:
        """Multistep consistency sampling (Algorithm 1) on the trailing grid of ``distill.steps``, unclamped."""
        tau = timesteps(self.schedule.num_steps, self.config.distill.steps, DISTILL_SPACING)
        return {"timesteps": tau, "solver": "consistency"}
