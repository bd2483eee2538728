"""Samplers: pure step functions (``steps``), the solvers behind one seam (``solvers``: DDIM,
DPM-Solver++, UniPC, Heun; ``score``: reverse SDE, probability flow, Langevin, predictor-corrector),
the options of a run (``options``), the loops built on them (``ddim``), and
the same loop made fast on CUDA (``fast``: bf16, channels_last, torch.compile, one CUDA graph)."""

from .ddim import Plan, Trajectory, invert, plan, sample
from .fast import FastSampler, fast_module, fast_sample
from .options import SampleOptions
from .score import AnnealedLangevin, PredictorCorrector, ProbabilityFlow, ReverseSDE, score
from .solvers import SOLVERS, Solver, get_solver
from .steps import clip_x0, ddim_step, dynamic_threshold, posterior_variance, sigma_eta, sigma_hat

__all__ = ["sample", "invert", "SampleOptions", "score", "ReverseSDE", "ProbabilityFlow", "AnnealedLangevin",
           "PredictorCorrector", "plan", "Plan", "Trajectory", "FastSampler", "fast_sample", "fast_module",
           "Solver", "SOLVERS", "get_solver", "ddim_step", "sigma_eta", "sigma_hat", "posterior_variance",
           "clip_x0", "dynamic_threshold"]
