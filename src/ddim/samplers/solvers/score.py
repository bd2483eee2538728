"""The score view of the same model (Song et al. 2021, "Score-Based Generative Modeling through SDEs"),
as solvers on the seam of ``solvers.base``.

The network's ε̂ is a scaled score of the noised marginal q(x_t) (Tweedie):

    s_θ(x_t, t) = ∇ₓ log q(x_t) ≈ −ε̂(x_t, t) / √(1 − ᾱ_t)                                        (1)

The DDPM chain is the VP SDE dx = −½β(s) x ds + √β(s) dw discretised; over one grid step from level
t (ᾱ_t) down to the next grid point t' (ᾱ_t' > ᾱ_t) its integrated rate is B = ∫β ds = log(ᾱ_t'/ᾱ_t)
(since ᾱ = exp(−∫β)), so the continuous-time samplers map to the model's discrete t through ᾱ alone:

    reverse SDE   dx = [−½β x − β ∇log q] ds + √β dw̄,  Euler–Maruyama:  x' = x + B (½x + s) + √B z   (6)
    probability-flow ODE  dx = [−½β x − ½β ∇log q] ds,    Euler:           x' = x + B (½x + ½s)       (13)
    Langevin at one level   x ← x + δ s + √(2δ) z   (leaves q(x_t) invariant as δ → 0)

    reverse-sde   Euler–Maruyama on (6); the last step adds no noise (it returns the mean, as DDPM does)
    pf-ode        Euler on (13); converges to DDIM η = 0 (the same ODE) as the steps shrink
    langevin      annealed Langevin dynamics (NCSN, Song & Ermon 2019): L steps at each grid level with
                  δ_t = r (1 − ᾱ_t) (step ∝ the level's noise variance σ_t²), then x̂_0 at the last level;
                  between levels x is scaled by √(ᾱ_t'/ᾱ_t), which carries q_t's signal onto q_t''s (NCSN's
                  VE levels share one scale and need no such move; without it the signal must grow by
                  Langevin mixing alone, which at low noise takes ~s²/δ steps)
    pc            predictor–corrector (Song et al. 2021, Alg. 1 in VP form): at each level n Langevin
                  corrector steps with the signal-to-noise rule δ = 2 α (snr ‖z‖/‖s‖)², per sample
                  (α = ᾱ_t/ᾱ_t', score_sde's α_i for this grid), then one step of a predictor of the seam

(1) is applied to the ε̂ the loop's ``predict`` returns, so clipping x̂_0 acts on the score too (ε̂ is
then re-derived from the clipped x̂_0). Nothing reads a device value back to the host.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .base import Solver, get_solver, register

__all__ = ["langevin_step", "snr_step_size", "sde_coefficients", "ReverseSDE", "ProbabilityFlow",
           "AnnealedLangevin", "PredictorCorrector", "PC_PREDICTORS"]


def langevin_step(x: torch.Tensor, s: torch.Tensor, delta, z: torch.Tensor) -> torch.Tensor:
    """One unadjusted Langevin step x + δ s + √(2δ) z; δ a number or a per-sample (B, 1, …) tensor."""
    return x + delta * s + torch.sqrt(2 * torch.as_tensor(delta, dtype=x.dtype, device=x.device)) * z


def snr_step_size(s: torch.Tensor, z: torch.Tensor, snr: float, alpha) -> torch.Tensor:
    """score_sde's Langevin-corrector step δ = 2 α (snr ‖z‖ / ‖s‖)², one per sample (norms over all of a
    sample's dimensions; score_sde averages them over the batch, which would couple the samples).
    Returns (B, 1, …) shaped to broadcast against s."""
    B = s.shape[0]
    s_norm = s.reshape(B, -1).norm(dim=1).clamp_min(torch.finfo(s.dtype).tiny)
    z_norm = z.reshape(B, -1).norm(dim=1)
    return (2 * alpha * (snr * z_norm / s_norm) ** 2).view(B, *([1] * (s.ndim - 1)))


def sde_coefficients(abar_t, abar_prev) -> dict:
    """Host float64 columns of the score solvers for a plan's (ᾱ_t, ᾱ_t') pairs, each (S,):
    B = log(ᾱ_t'/ᾱ_t) (the step's integrated β), sqrt_B = √B, inv_sigma = 1/√(1 − ᾱ_t) (eq. 1),
    alpha = ᾱ_t/ᾱ_t' (score_sde's α_i, for the corrector), var = 1 − ᾱ_t (σ_t², for annealed Langevin),
    rescale = √(ᾱ_t'/ᾱ_t) (annealed Langevin's move between levels)."""
    at = torch.as_tensor(abar_t, dtype=torch.float64)
    ap = torch.as_tensor(abar_prev, dtype=torch.float64)
    B = torch.log(ap) - torch.log(at)
    return {"B": B, "sqrt_B": B.sqrt(), "inv_sigma": (1 - at).rsqrt(), "alpha": at / ap, "var": 1 - at,
            "rescale": (ap / at).sqrt()}


def _refuse_pure_noise(name: str, abar_t) -> None:
    if float(abar_t[0]) == 0.0:
        raise ValueError(f"solver {name!r} cannot start at ᾱ_t = 0 (zero terminal SNR: the step's ∫β = "
                         "log(ᾱ_t'/ᾱ_t) is infinite); use a grid without the last training step")


@dataclass(frozen=True)
class _ScoreSolver(Solver):
    """Common ground of the score solvers: their table, their refusal of ᾱ_t = 0 starts, no η."""

    def table(self, abar_t, abar_prev) -> dict:
        return sde_coefficients(abar_t.tolist(), abar_prev.tolist())

    def check(self, abar_t) -> None:
        _refuse_pure_noise(self.name, abar_t)

    @staticmethod
    def _score(k: int, x, predict, t_batch, coef):
        """(x̂_0, s) at x on grid level k: one model call, s from its ε̂ by eq. (1)."""
        x0, eps = predict(x, t_batch[k], coef.abar_t[k])
        return x0, -eps * coef.table["inv_sigma"][k]

    def eta(self, eta) -> object:
        if eta not in (0, 0.0):
            raise ValueError(f"eta={eta!r} applies to solver 'ddim' (or a pc with predictor ddim) only; "
                             f"solver {self.name!r} " + ("adds its own noise" if self.noise_eta else "adds no noise"))
        return 0.0


@register()
@dataclass(frozen=True)
class ReverseSDE(_ScoreSolver):
    """Euler–Maruyama on the reverse VP SDE, eq. (6): one model call and one draw per step (none on the last)."""

    name: str = "reverse-sde"
    noise_eta: float = 1.0
    summary: str = "Euler-Maruyama on the reverse VP SDE (score_sde)"

    def draws(self, plan) -> tuple:
        S = plan.timesteps.numel()
        return tuple(int(k < S - 1) for k in range(S))

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        tab = coef.table
        x0, s = self._score(k, x, predict, t_batch, coef)
        x_next = x + tab["B"][k] * (0.5 * x + s)
        z = noise_at(k)
        return (x_next if z is None else x_next + tab["sqrt_B"][k] * z), x0


@register()
@dataclass(frozen=True)
class ProbabilityFlow(_ScoreSolver):
    """Euler on the probability-flow ODE, eq. (13): one model call per step, deterministic."""

    name: str = "pf-ode"
    noise_eta: float = 0.0
    summary: str = "Euler on the probability-flow ODE (score_sde)"

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        x0, s = self._score(k, x, predict, t_batch, coef)
        return x + coef.table["B"][k] * (0.5 * x + 0.5 * s), x0


# Model calls per grid level: S ≤ T levels times this many; 1e8 would run for years, not fail
MAX_LEVEL_STEPS = 1000


def _check_level_steps(name: str, v, least: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= MAX_LEVEL_STEPS:
        raise ValueError(f"{name} must be an integer >= {least} (at most {MAX_LEVEL_STEPS:,}), got {v!r}")


@register()
@dataclass(frozen=True)
class AnnealedLangevin(_ScoreSolver):
    """Annealed Langevin dynamics over the grid's noise levels (NCSN): ``langevin_steps`` L steps at each
    level with δ_t = ``step_size`` · (1 − ᾱ_t), then one more call for x̂_0 at the last level (Tweedie's
    denoising step of NCSN v2). Model calls: L·S + 1; draws: L per level.

    A slow sampler by nature: the move between levels inflates the noise by ᾱ_t'/ᾱ_t and each Langevin step
    removes only a fraction δ/σ² of the excess, so the spreads converge only with many levels and steps
    (on the oracle: 400 levels × 5 steps reproduce the mixture within 10 %)."""

    name: str = "langevin"
    noise_eta: float = 1.0
    summary: str = "annealed Langevin dynamics, L steps per level (NCSN)"

    langevin_steps: int = 2
    step_size: float = 0.1

    def __post_init__(self):
        _check_level_steps("langevin_steps", self.langevin_steps, 1)
        if not (isinstance(self.step_size, (int, float)) and 0 < self.step_size <= 1):
            raise ValueError(f"step_size must be a number in (0, 1] (δ = step_size · σ_t²), got {self.step_size!r}")

    def nfe(self, S: int) -> int:
        return self.langevin_steps * S + 1

    def draws(self, plan) -> tuple:
        return (self.langevin_steps,) * plan.timesteps.numel()

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        tab, t, abar = coef.table, t_batch[k], coef.abar_t[k]
        delta = self.step_size * tab["var"][k]
        x0 = None
        for j in range(self.langevin_steps):
            x0, s = self._score(k, x, predict, t_batch, coef)
            x = langevin_step(x, s, delta, noise_at(k, j))
        if k == t_batch.shape[0] - 1:  # denoise: x̂_0 at the last level (whatever set_alpha_to_one says)
            x, _ = predict(x, t, abar)
            return x, x
        return tab["rescale"][k] * x, x0


# Predictors a pc may run after its corrector: one-step methods, as in score_sde. The multistep ones are
# out: their x̂_0 history differences carry the corrector's noise, which their extrapolation weights (> 1)
# amplify (a Gaussian's variance comes out several times too large); UniPC's corrector would also overwrite
# the Langevin moves.
PC_PREDICTORS = ("ddim", "heun", "reverse-sde", "pf-ode")


@register()
@dataclass(frozen=True)
class PredictorCorrector(_ScoreSolver):
    """Predictor–corrector sampling: at each grid level, ``corrector_steps`` Langevin corrector steps with
    the signal-to-noise rule (``snr_step_size``), then one step of ``predictor`` (score_sde's order:
    corrector first). Model calls: (n + the predictor's) per step; draws: n, then the predictor's."""

    name: str = "pc"
    noise_eta: float = 1.0
    summary: str = "predictor-corrector: Langevin corrector (snr rule), then a predictor"

    predictor: object = "ddim"
    corrector_steps: int = 1
    snr: float = 0.16

    def __post_init__(self):
        pred = get_solver(self.predictor)
        if pred.name not in PC_PREDICTORS or isinstance(pred, (AnnealedLangevin, type(self))):
            raise ValueError(f"predictor {pred.name!r} cannot be a pc predictor; allowed: {', '.join(PC_PREDICTORS)}")
        object.__setattr__(self, "predictor", pred)
        _check_level_steps("corrector_steps", self.corrector_steps, 0)
        if not (isinstance(self.snr, (int, float)) and not isinstance(self.snr, bool) and math.isfinite(self.snr)
                and self.snr > 0):
            raise ValueError(f"snr must be a number > 0, got {self.snr!r}")

    @property
    def reads_x0_and_eps(self) -> bool:
        return self.predictor.reads_x0_and_eps

    def nfe(self, S: int) -> int:
        return self.corrector_steps * S + self.predictor.nfe(S)

    def eta(self, eta) -> object:
        return self.predictor.eta(eta)

    def check(self, abar_t) -> None:
        _refuse_pure_noise(self.name, abar_t)  # the corrector's score at ᾱ = 0 is fine; its α = ᾱ_t/ᾱ_t' is 0
        self.predictor.check(abar_t)

    def table(self, abar_t, abar_prev) -> dict:
        own = sde_coefficients(abar_t.tolist(), abar_prev.tolist())
        return {**{f"p_{k}": v for k, v in self.predictor.table(abar_t, abar_prev).items()}, **own}

    def draws(self, plan) -> tuple:
        return tuple(self.corrector_steps + d for d in self.predictor.draws(plan))

    def step(self, k, x, predict, t_batch, coef, state, noise_at):
        tab = coef.table
        n = self.corrector_steps
        for j in range(n):
            _, s = self._score(k, x, predict, t_batch, coef)
            z = noise_at(k, j)
            x = langevin_step(x, s, snr_step_size(s, z, self.snr, tab["alpha"][k]), z)
        # the predictor sees its own table and its draws after the corrector's
        pcoef = dataclasses.replace(coef, table={key[2:]: v for key, v in tab.items() if key.startswith("p_")})
        return self.predictor.step(k, x, predict, t_batch, pcoef, state,
                                   lambda kk, jj=0: noise_at(kk, jj + n))
