"""The solver seam: what one sampling step does, behind one interface shared by every loop.

A solver (a frozen dataclass, registered by name with ``@register``) owns:
    table   its per-step coefficients, computed once on the host in float64 from the grid's (ᾱ_t, ᾱ_{t−1})
            pairs (``Plan``), then moved to the sample's device with the plan;
    step    the update from x_t to x_{t−1}: it calls ``predict`` (the denoiser: (x̂_0, ε̂) at (x, t, ᾱ_t)) as
            often as it needs and draws noise through ``noise_at``; nothing in it reads a device value back
            to the host, so the loop can be captured as one CUDA graph;
    state   what a multistep method carries between steps (earlier x̂_0), a dict it fills itself, new per run;
    draws   how many N(0, I) draws each step takes, and ``nfe`` how many model calls S steps make.

Notation (DPM-Solver, Lu et al. 2022): α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(α_t/σ_t) (half the
log-SNR), h = λ_{t−1} − λ_t > 0 the step in λ from grid point s = τ_k to the next t = τ_{k+1}. After the last
grid point ᾱ = 1: σ = 0, λ = +∞, h = ∞, e^{−h} = 0. A new solver is one subclass in one file
(docs/extending.md); the loop, the fast path, per-sample noise and trajectories need nothing more.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ...checks import check_int, check_number
from ...timesteps import SPACINGS

__all__ = ["Solver", "register", "SOLVERS", "get_solver", "solver_help", "dpm_lambda", "steps_lambda",
           "multistep_order", "combine"]

SOLVERS: dict = {}
"""Name -> ``Solver`` instance, in registration order (filled by ``register``; the package imports every family)."""


def register(*variants: dict, **fields):
    """Class decorator: add ``cls(**fields)`` to ``SOLVERS`` under its name, or with ``variants`` (dicts of
    fields) one instance per variant, in order: the members of one family (DPM-Solver++ 2M, 3M, ...).
    All or nothing: a refused variant leaves ``SOLVERS`` as it was."""
    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise TypeError(f"register takes a subclass of ddim.samplers.Solver, got {cls!r}")
        if cls.step is Solver.step:
            raise TypeError(f"solver class {cls.__name__} must define step()")
        made = [cls(**kw) for kw in variants or (fields,)]  # each checked by Solver.__post_init__
        names = [s.name for s in made]
        taken = [n for i, n in enumerate(names) if n in SOLVERS or n in names[:i]]
        if taken:
            raise ValueError(f"a solver named {taken[0]!r} is registered already")
        SOLVERS.update(zip(names, made))
        return cls
    return add


@dataclass(frozen=True)
class Solver:
    """One sampling method (module docstring). Instances are immutable and hold no run state.

    name: the CLI/API name. summary: one line for help texts. noise_eta: the η whose noise the solver adds
    (0: none; 1: DDIM's η = 1 noise; None: the caller's η, DDIM only). default_steps, default_spacing: what
    ``ddim sample`` runs it with unless told (few steps on the log-SNR grid suit the higher orders).
    """

    name: str
    summary: str = ""
    noise_eta: Optional[float] = 0.0
    default_steps: int = 50
    default_spacing: str = "uniform"

    def __post_init__(self) -> None:
        # A name is a CLI choice, an eval folder name and a list entry in messages: plain words only.
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", self.name):
            raise ValueError(f"solver name must be letters, digits and _ . + - (not starting with a symbol), "
                             f"got {self.name!r}")
        if self.noise_eta is not None:
            check_number("noise_eta", self.noise_eta, 0.0)
        check_int("default_steps", self.default_steps, 1)
        if self.default_spacing not in SPACINGS:
            raise ValueError(f"unknown default_spacing {self.default_spacing!r}; allowed: {', '.join(SPACINGS)}")

    # ---- what a solver declares -------------------------------------------------------------------
    @property
    def reads_x0_and_eps(self) -> bool:
        """Whether a step reads both x̂_0 and ε̂: only then is re-deriving ε̂ from a clipped x̂_0 a choice
        (``SampleOptions.eps_from_clipped_x0``); a solver reading one of them gets it consistent."""
        return False

    @property
    def invertible(self) -> bool:
        """Whether ``invert_step`` exists (DDIM's η = 0 step run backwards)."""
        return False

    def nfe(self, S: int) -> int:
        """Model calls over S steps."""
        return S

    def eta(self, eta) -> object:
        """The η the plan's noise column is built with: the caller's (``noise_eta`` None), else the solver's own,
        refusing an η the solver does not take."""
        if self.noise_eta is None:
            return eta
        if any(eta) if isinstance(eta, tuple) else eta not in (0, 0.0):  # a per-step η of zeros is η = 0
            shown = f"a per-step η with {sum(e != 0 for e in eta)} non-zero values" if isinstance(eta, tuple) \
                else f"eta={eta!r}"
            raise ValueError(f"{shown} applies to solver 'ddim' only; solver {self.name!r} adds "
                             + ("DDIM's η = 1 noise by construction" if self.noise_eta else "no noise"))
        return self.noise_eta

    def check(self, abar_t) -> None:
        """Refuse a grid the solver cannot run (``abar_t``: (S,) ᾱ at each step's start); default: any grid."""

    def draws(self, plan) -> tuple:
        """(S,) ints: the N(0, I) draws each step of ``plan`` takes (one where its noise_std > 0)."""
        return tuple(int(v > 0) for v in plan.noise_std.tolist())

    def table(self, abar_t, abar_prev) -> dict:
        """Host float64 columns (each (S,) or (S, k)) that ``step`` reads from ``coef.table``."""
        return {}

    # ---- what a solver does -----------------------------------------------------------------------
    def step(self, k: int, x: torch.Tensor, predict: Callable, t_batch: torch.Tensor, coef, state: dict,
             noise_at: Callable):
        """x_t → x_{t−1} for step k. ``predict(x, t, ᾱ_t)`` -> (x̂_0, ε̂); ``t_batch``: (S, B) step indices;
        ``coef``: the device ``Plan`` (its ``table`` holds this solver's columns); ``state``: this run's dict;
        ``noise_at(k, j=0)``: the j-th N(0, I) draw of step k, or None. Returns (x_{t−1}, x̂_0 of the step)."""
        raise NotImplementedError(f"solver {self.name!r} does not define step()")

    def invert_step(self, k: int, x: torch.Tensor, eps_at: Callable, t_batch: torch.Tensor, coef):
        """x_{t−1} → x_t, the reverse of step k (``invertible`` solvers only). Returns (x_t, x̂_0)."""
        raise NotImplementedError(f"solver {self.name!r} has no inverse step")


def get_solver(solver) -> Solver:
    """A ``Solver`` from its name or itself."""
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(SOLVERS)}")
    return SOLVERS[solver]


def solver_help(deterministic: bool = False) -> str:
    """The solvers, one clause each, for help texts (``deterministic``: those adding no noise)."""
    return "; ".join(f"{n}: {s.summary}" for n, s in SOLVERS.items() if not (deterministic and s.noise_eta))


# ---------------------------------------------------------------------------------- shared coordinates

def dpm_lambda(abar: float) -> float:
    """λ = log(α/σ) = ½ log(ᾱ/(1 − ᾱ)) (DPM-Solver eq. 3.1's half log-SNR); +∞ at ᾱ = 1, −∞ at ᾱ = 0."""
    if abar >= 1.0:
        return math.inf
    if abar <= 0.0:
        return -math.inf
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def steps_lambda(abar_t, abar_prev):
    """Per step k: (λ_s, h) for s = τ_k and h = λ_t − λ_s, t the next grid point (host floats)."""
    lam_s = [dpm_lambda(a) for a in abar_t]
    return lam_s, [dpm_lambda(a) - ls for ls, a in zip(lam_s, abar_prev)]


def multistep_order(k: int, S: int, order: int, unipc: bool = False) -> int:
    """The order a multistep method runs at step k of S: warm-up from 1, first order on the last step
    (which lands on σ = 0, or on ᾱ_0 with ``set_alpha_to_one=False``, where an extrapolated x̂_0 is worst),
    and at most second order on the step before it: DPM-Solver++ when S < 15, UniPC always (diffusers'
    ``lower_order_final`` in each scheduler)."""
    o = min(order, k + 1)
    if k == S - 1:
        return 1
    if k == S - 2 and (S < 15 or unipc):
        return min(o, 2)
    return o


def combine(w: torch.Tensor, ms, terms: int) -> torch.Tensor:
    """Σ_{j < terms} w[j] · ms[j] (the order is known on the host; w lives on the device)."""
    out = w[0] * ms[0]
    for j in range(1, terms):
        out = out + w[j] * ms[j]
    return out
