"""The sampling loop: sampling (x_T → x_0) and inversion (x_0 → x_T) along a grid τ, with any solver.

Both loops share one plan: the grid τ (descending), each entry paired with the **next entry of the
grid** (ᾱ = 1 after the last one, or ᾱ_0 with ``set_alpha_to_one=False``), and per-step coefficients
computed once in float64 on the host, then moved to the sample's device as one small tensor. The loop
body is the solver's step, which reads the denoiser (model call → (x̂_0, ε̂), ``ddim.Denoiser``); it never
reads a device value back to the host. The η-family of DDIM (``solvers.ddim``):

    η = 0                DDIM, deterministic (the probability-flow ODE's Euler steps, eq. 13-14)
    η = 1, steps = T     DDPM ancestral sampling with the posterior variance β̃_t
    η = "large"          DDPM with σ̂_t = √(1 − ᾱ_t/ᾱ_{t−1}) ("fixed large"; DDIM Table 1's σ̂)
    any η ≥ 0, S < T     the η-family on the shorter chain (improved-diffusion's respacing for η = 1)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional

import torch

from ..checks import check_finite_result, check_images
from ..denoiser import Denoiser
from ..forward import eps_from_x0
from ..noise import Generators, randn
from ..schedule import Schedule
from ..timesteps import check_timesteps
from ..timesteps import timesteps as make_timesteps
from .options import Eta, SampleOptions, check_eta
from .solvers import SOLVERS, Solver, get_solver
from .steps import sigma_eta, sigma_hat

__all__ = ["sample", "run_sample", "bind", "invert", "run_invert", "check_finite_result", "Trajectory", "Plan", "plan",
           "SampleSetup", "sample_setup", "denoise", "sample_loop", "noise_drawer", "SampleOptions"]

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Trajectory(NamedTuple):
    """What a run visited. x: (S+1, B, …) from the start to the end; x0_pred: (S, B, …) per step;
    timesteps: (S,) int64, the model's t at each step."""

    timesteps: torch.Tensor
    x: torch.Tensor
    x0_pred: torch.Tensor


@dataclass(frozen=True)
class Plan:
    """Per-step quantities of a run over grid τ (float64 on the CPU; row k belongs to step k).

    timesteps: τ_k, descending. abar_t: ᾱ_{τ_k}. abar_prev: ᾱ of the next grid point (1 or ᾱ_0 at the
    end). sigma: σ_t of eq. 12's direction term. noise_std: the std of the added noise (σ_t, or σ̂_t;
    0 on the step that lands on x_0 for σ̂, as in DDPM, whose last step returns the mean); each (S,).
    table: the solver's own columns (``Solver.table``: (S,) or (S, 3)), empty for DDIM.
    """

    timesteps: torch.Tensor
    abar_t: torch.Tensor
    abar_prev: torch.Tensor
    sigma: torch.Tensor
    noise_std: torch.Tensor
    table: dict = field(default_factory=dict)

    def to(self, device, dtype) -> "Plan":
        """The coefficient columns on ``device`` in float64 for float64 samples, else float32."""
        dt = torch.float64 if dtype == torch.float64 else torch.float32
        return Plan(self.timesteps.to(device), *(getattr(self, f).to(device, dt)
                                                 for f in ("abar_t", "abar_prev", "sigma", "noise_std")),
                    {name: col.to(device, dt) for name, col in self.table.items()})


def plan(schedule: Schedule, steps: Optional[int] = None, eta: Eta = 0.0, spacing: str = "uniform",
         timesteps=None, set_alpha_to_one: bool = True, solver="ddim") -> Plan:
    """Compute the grid and per-step coefficients for ``sample``/``invert`` (host side, float64): the
    η-family's columns, with ``eta`` as ``solver`` takes it (``Solver.eta``), and the solver's table.

    Give either ``steps`` (+ ``spacing``) or an explicit descending ``timesteps`` grid.
    """
    if not isinstance(schedule, Schedule):
        raise TypeError(f"schedule must be a ddim.Schedule, got {type(schedule).__name__}")
    solver = get_solver(solver)
    eta = solver.eta(check_eta(eta))
    if timesteps is None:
        if steps is None:
            raise ValueError("give steps (with spacing) or an explicit timesteps grid")
        tau = make_timesteps(schedule, steps, spacing)
    else:
        tau = check_timesteps(timesteps, schedule.num_steps)
        if steps is not None and steps != tau.numel():
            raise ValueError(f"steps={steps!r} disagrees with the {tau.numel()} given timesteps")
    abar = schedule.alphas_cumprod
    final = torch.ones(1, dtype=torch.float64) if set_alpha_to_one else abar[:1]
    abar_t = abar[tau]
    abar_prev = torch.cat([abar[tau[1:]], final])  # pairs read from the grid itself
    if eta == "large":
        sigma = sigma_eta(abar_t, abar_prev, 1.0)
        noise_std = sigma_hat(abar_t, abar_prev)
        noise_std[-1] = 0.0
    else:
        if isinstance(eta, tuple) and len(eta) != tau.numel():
            raise ValueError(f"eta has {len(eta)} values, one per step, but the grid has {tau.numel()} steps")
        etas = torch.tensor(eta, dtype=torch.float64) if isinstance(eta, tuple) else torch.full_like(abar_t, eta)
        sigma = sigma_eta(abar_t, abar_prev, etas)
        noise_std = sigma
        bad = (1 - abar_prev - sigma**2) < -1e-12
        if bad.any():
            k = int(bad.nonzero()[0])
            raise ValueError(f"eta={float(etas[k])!r} is too large at t={int(tau[k])}: σ_t² exceeds 1 − ᾱ_(t-1) "
                             "(DDIM eq. 12 needs η <= 1 there)")
    table = solver.table(abar_t, abar_prev)
    if not isinstance(table, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in table.items()):
        raise TypeError(f"solver {solver.name!r}: table() must return a dict of name -> tensor, got "
                        f"{type(table).__name__}")
    return Plan(tau, abar_t, abar_prev, sigma, noise_std, table)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    """The sampler's own arithmetic runs in at least float32, whatever the model's dtype: in bf16 the
    state would lose ~3 digits per step and ᾱ_t ≈ 1 rounds to 1 (√(1−ᾱ_t) = 0)."""
    return torch.promote_types(x.dtype, torch.float32)


@dataclass(frozen=True)
class SampleSetup:
    """The validated arguments of one ``sample`` call, ready for a loop (host side).

    options: the run's ``SampleOptions``. plan: the grid and its float64 coefficients (the solver's table
    included). post: the x̂_0 transform (clip or dynamic threshold) or None. eps_from_clipped_x0: re-derive
    ε̂ after ``post`` (as the solver needs it, see ``sample_setup``). draws: (S,) ints, the N(0, I) draws
    of each step (``Solver.draws``).
    """

    options: SampleOptions
    plan: Plan
    post: Optional[Callable[[torch.Tensor], torch.Tensor]]
    eps_from_clipped_x0: bool
    draws: tuple

    @property
    def solver(self) -> Solver:
        return self.options.solver

    def model_key(self) -> tuple:
        """What decides how a model output becomes (x̂_0, ε̂) in this run (the effective ε̂ rule included): a
        cache key for bound model calls."""
        o = self.options
        return (o.prediction, o.clip, o.threshold, o.threshold_max, self.eps_from_clipped_x0)


def sample_setup(schedule: Schedule, x_T: torch.Tensor, options: SampleOptions = SampleOptions()) -> SampleSetup:
    """Check a run's x_T against ``options`` (raising ``sample``'s errors) and compute its plan."""
    check_images(x_T, "x_T")
    o, solver = options, options.solver
    p = plan(schedule, None if o.timesteps is not None else o.steps, o.eta, o.spacing, o.timesteps,
             o.set_alpha_to_one, solver)
    if o.prediction in ("epsilon", None) and float(p.abar_t[0]) == 0.0:
        raise ValueError("prediction='epsilon' cannot start at ᾱ_t = 0 (zero terminal SNR): x_0 = (x_t − ε)/0; "
                         "use prediction='v' or 'sample'")
    solver.check(p.abar_t)
    post = o.x0_transform()
    # Only DDIM reads both x̂_0 and ε̂ and so has a choice: Heun reads ε̂ alone, which must then come from the
    # transformed x̂_0 for the transform to act at all; the multistep solvers read x̂_0 alone.
    eps_from = bool(o.eps_from_clipped_x0) if solver.reads_x0_and_eps else post is not None
    return SampleSetup(o, p, post, eps_from, solver.draws(p))


def denoise(denoiser: Denoiser, x: torch.Tensor, t: torch.Tensor, abar_t, post=None,
            eps_from_clipped_x0: bool = False, io_dtype=None):
    """The model's half of a step: (x̂_0, ε̂) from the denoiser, then the x̂_0 transform.

    Args:
        x: (B, …) x_t in the sampler's dtype (float32 or float64). t: (B,) int64.
        abar_t: ᾱ_t, a 0-d tensor on x's device or a float.
        post: the x̂_0 transform (``SampleSetup.post``) or None; with ``eps_from_clipped_x0`` ε̂ is re-derived
            from the transformed x̂_0 (DDIM eq. 9 solved for ε).
        io_dtype: the dtype the model sees (default x's).
    Returns:
        (x̂_0, ε̂), both shaped like x, in x's dtype.
    """
    x0_pred, eps = denoiser.denoise(x, t, abar_t, io_dtype)
    if post is not None:
        x0_pred = post(x0_pred)
        if eps_from_clipped_x0:
            eps = eps_from_x0(x, x0_pred, abar_t)
    return x0_pred, eps


def sample_loop(predict: Callable, setup: SampleSetup, coef: Plan, x: torch.Tensor,
                noise_at: Callable[..., Optional[torch.Tensor]], *, return_trajectory: bool = False,
                callback=None):
    """Run the S steps of ``setup.solver`` (for DDIM: (x̂_0, ε̂) = predict(x, t_k, ᾱ_t), then x ← eq. 12
    with noise_at(k)), k = 0..S−1.

    Never reads a device value back to the host, so with ``callback=None`` the loop can be captured
    as a CUDA graph (``samplers.fast``).

    Args:
        predict: ``denoise`` with the model and options bound.
        coef: ``setup.plan`` on x's device (``Plan.to``).
        x: (B, …) x_T in the sampler's dtype.
        noise_at: (k, j=0) -> the j-th N(0, I) draw of step k, or None for j ≥ ``setup.draws[k]``; the solver scales it and calls it in a fixed order (after the model call it
            belongs to: the order of ``sample``'s global-RNG draws).
    Returns:
        x_0, or (x_0, xs (S+1, B, …), x0_preds (S, B, …)) with ``return_trajectory``.
    """
    t_batch = coef.timesteps[:, None].expand(-1, x.shape[0]).contiguous()  # (S, B): row k is step k's t
    xs, x0s = ([x], []) if return_trajectory else (None, None)
    state: dict = {}  # the solver's, for this run only
    shape = x.shape
    for k in range(len(setup.draws)):
        x, x0_pred = setup.solver.step(k, x, predict, t_batch, coef, state, noise_at)
        if x.shape != shape:  # shapes are host metadata: checking them costs no device read
            raise ValueError(f"solver {setup.solver.name!r} returned x shaped {tuple(x.shape)} at step {k}, "
                             f"expected {tuple(shape)}")
        if return_trajectory:
            xs.append(x)
            x0s.append(x0_pred)
        if callback is not None:
            callback(k, int(setup.plan.timesteps[k]), x, x0_pred)
    return (x, torch.stack(xs), torch.stack(x0s)) if return_trajectory else x


def noise_drawer(setup: SampleSetup, coef: Plan, x: torch.Tensor, generator: Generators):
    """``noise_at`` for ``sample_loop`` that draws z ~ N(0, I) shaped like x from ``generator`` at each
    call, in call order (the order a pre-drawn buffer must follow to give the same numbers)."""
    def noise_at(k: int, j: int = 0) -> Optional[torch.Tensor]:
        if j >= setup.draws[k]:  # a step asking beyond its draws (e.g. an η = 0 predictor in a pc) gets none
            return None
        return randn(x.shape, generator, x.device, x.dtype)
    return noise_at


def sample(model: Model, schedule: Schedule, x_T: torch.Tensor, steps: Optional[int] = 50,
           eta: Eta = 0.0, spacing: str = "uniform", prediction: Optional[str] = None,
           generator: Generators = None, *, timesteps=None, set_alpha_to_one: bool = True,
           clip: Optional[float] = None, threshold: Optional[float] = None, threshold_max: float = 1.0,
           eps_from_clipped_x0: bool = False, return_trajectory: bool = False,
           callback: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None, solver="ddim",
           options: Optional[SampleOptions] = None):
    """Generate x_0 from x_T over a sub-sequence τ: by default with the generalized DDIM update (eq. 12),
    or with another ``solver`` (``ddim.samplers.solvers``).

    Args:
        model: ``model(x_t, t)`` with x_t (B, C, H, W) float and t (B,) int64 training-step indices;
            returns a tensor shaped like x_t holding the prediction named by ``prediction``; or a
            ``ddim.Denoiser``, which carries its schedule and prediction type.
        schedule: the training noise schedule.
        x_T: (B, …) starting noise (N(0, I) for generation, or the output of ``invert``).
        steps: S, the number of steps, 1 ≤ S ≤ T (ignored when ``timesteps`` is given); one model call each
            (Heun: 2S − 1 in all).
        eta: η ≥ 0 of σ_t(η) (eq. 16), "large" for σ̂_t, or a sequence of one η per step (the first for the
            highest t), e.g. η = 1 only where t > 250.
        spacing: how τ is chosen, see ``ddim.timesteps``.
        prediction: "epsilon", "sample" (x_0) or "v"; None: the network's own (a Denoiser's, or what a loaded
            checkpoint declares: ``ddim.denoiser.network_prediction``), else ε.
        generator: for the noise when σ > 0: one ``torch.Generator`` or one per sample.
        timesteps: an explicit descending grid, instead of ``steps``/``spacing``.
        set_alpha_to_one: the last step lands on ᾱ = 1 (x_0); False lands on ᾱ_0 instead.
        clip: clamp x̂_0 to [−clip, clip] each step.
        threshold: dynamic thresholding quantile (e.g. 0.995), with ``threshold_max`` as s's cap.
        eps_from_clipped_x0: re-derive ε̂ from the clipped x̂_0 (GLIDE; DDPM's posterior mean does this).
            DDIM only: with another solver a clipped x̂_0 always comes with ε̂ re-derived (Heun reads ε̂
            alone, the multistep solvers x̂_0 alone).
        return_trajectory: also return a ``Trajectory``.
        callback: called as ``callback(k, t, x_{t_prev}, x0_pred)`` after each step k.
        solver: a name from ``ddim.samplers.SOLVERS`` (default "ddim", the η-family) or a ``Solver``; all
            but "ddim" take η = 0 only (dpmpp-2m-sde adds η = 1's noise itself).
        options: all of steps … solver above as one ``SampleOptions``, instead of those keywords.
    Returns:
        x_0 (B, …) shaped like x_T, or (x_0, Trajectory) if ``return_trajectory``.
    """
    opts = SampleOptions.of(options, steps=steps, eta=eta, spacing=spacing, prediction=prediction,
                            timesteps=timesteps, set_alpha_to_one=set_alpha_to_one, clip=clip, threshold=threshold,
                            threshold_max=threshold_max, eps_from_clipped_x0=eps_from_clipped_x0, solver=solver)
    denoiser = Denoiser.of(model, schedule, opts.prediction)
    out = run_sample(denoiser, x_T, opts, generator, return_trajectory=return_trajectory, callback=callback)
    check_finite_result(out[0] if return_trajectory else out)
    return out


def bind(denoiser: Denoiser, options: SampleOptions) -> SampleOptions:
    """``options`` as they apply to ``denoiser``: its prediction type (``options.prediction`` must be None or
    the same), and for a split (x̂_0, ε̂) pair (``Denoiser.split_pair``) a solver that steps with both, with
    ε̂ kept when x̂_0 is clipped."""
    options = options.replace(prediction=Denoiser.of(denoiser, denoiser.schedule, options.prediction).prediction)
    if not denoiser.split_pair:
        return options
    if not options.solver.reads_x0_and_eps:
        raise ValueError(f"this guidance (CFG++) steps with x̂_0 of the guided prediction and the unconditional ε̂; "
                         f"solver {options.solver.name!r} reads one of them alone (allowed: "
                         + ", ".join(n for n, s in SOLVERS.items() if s.reads_x0_and_eps) + ")")
    return options.replace(eps_from_clipped_x0=False)


def run_sample(denoiser: Denoiser, x_T: torch.Tensor, options: SampleOptions, generator: Generators = None, *,
               return_trajectory: bool = False, callback=None):
    """``sample`` with the model read by a ``Denoiser`` and its options bundled (result as in ``sample``;
    ``options.prediction`` must be None or the denoiser's)."""
    options = bind(denoiser, options)
    setup = sample_setup(denoiser.schedule, x_T, options)
    denoiser.start_run()
    x = x_T.to(_work_dtype(x_T))
    c = setup.plan.to(x.device, x.dtype)
    predict = functools.partial(denoise, denoiser, post=setup.post, eps_from_clipped_x0=setup.eps_from_clipped_x0,
                                io_dtype=x_T.dtype)  # the Denoiser's own io_dtype, if set, comes first
    out = sample_loop(predict, setup, c, x, noise_drawer(setup, c, x, generator),
                      return_trajectory=return_trajectory, callback=callback)
    if return_trajectory:
        x, xs, x0s = out
        return x.to(x_T.dtype), Trajectory(setup.plan.timesteps, xs, x0s)
    return out.to(x_T.dtype)


def invert(model: Model, schedule: Schedule, x0: torch.Tensor, steps: Optional[int] = 50,
           spacing: str = "uniform", prediction: Optional[str] = None, *, timesteps=None,
           set_alpha_to_one: bool = True, return_trajectory: bool = False,
           callback: Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]] = None, solver="ddim"):
    """DDIM inversion: encode x_0 into x_T by running the η = 0 ODE (eq. 13-14) backwards on τ.

    The grid and its pairs are exactly those of ``sample`` with the same arguments, visited in reverse:
    the step from level ᾱ_{t−1} up to ᾱ_t calls the model at the same t as the sampling step from t
    down to t−1 (the only point available is x_{t−1}, so ε̂ is read there: the usual first-order
    approximation, whose error shrinks as S grows).

        x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε̂,   x̂_0 = (x_{t−1} − √(1 − ᾱ_{t−1}) ε̂)/√ᾱ_{t−1}

    Args:
        x0: (B, …) clean images (or x at ᾱ_0 with ``set_alpha_to_one=False``).
        solver: a solver with an inverse step (``Solver.invertible``: "ddim").
        others: as in ``sample``.
    Returns:
        x_T (B, …), or (x_T, Trajectory) if ``return_trajectory``; the trajectory runs x_0 → x_T and its
        timesteps ascend.
    """
    o = SampleOptions(steps=steps, spacing=spacing, prediction=prediction, timesteps=timesteps,
                      set_alpha_to_one=set_alpha_to_one, solver=solver)
    out = run_invert(Denoiser.of(model, schedule, o.prediction), x0, o, return_trajectory=return_trajectory,
                     callback=callback)
    check_finite_result(out[0] if return_trajectory else out, "latents")
    return out


def run_invert(denoiser: Denoiser, x0: torch.Tensor, options: SampleOptions, *, return_trajectory: bool = False,
               callback=None):
    """``invert`` with the model read by a ``Denoiser`` and the grid as ``SampleOptions`` (its steps or
    timesteps, spacing, set_alpha_to_one and solver; result as in ``invert``)."""
    check_images(x0, "x0")
    o, solver = options, options.solver
    if not solver.invertible:
        raise ValueError(f"solver {solver.name!r} has no inversion; allowed: "
                         + ", ".join(n for n, s in SOLVERS.items() if s.invertible))
    p = plan(denoiser.schedule, None if o.timesteps is not None else o.steps, 0.0, o.spacing, o.timesteps,
             o.set_alpha_to_one)
    x = x0.to(_work_dtype(x0))
    c = p.to(x.device, x.dtype)
    S, B = p.timesteps.numel(), x.shape[0]
    t_batch = c.timesteps[:, None].expand(-1, B).contiguous()

    def eps_at(x, t, abar_t):
        return denoiser.denoise(x, t, abar_t, io_dtype=x0.dtype)[1]

    xs, x0s = ([x], []) if return_trajectory else (None, None)
    for k in reversed(range(S)):
        x, x0_pred = solver.invert_step(k, x, eps_at, t_batch, c)
        if return_trajectory:
            xs.append(x)
            x0s.append(x0_pred)
        if callback is not None:
            callback(S - 1 - k, int(p.timesteps[k]), x, x0_pred)
    x = x.to(x0.dtype)
    if return_trajectory:
        return x, Trajectory(p.timesteps.flip(0), torch.stack(xs), torch.stack(x0s))
    return x
