"""Samplers: pure step functions (``steps``), the solvers behind one seam (``solvers``: the DDIM η-family,
DPM-Solver++, UniPC, Heun, the score view's reverse SDE, probability flow, Langevin and predictor-corrector,
and multistep consistency sampling), the options of a run (``options``), the one loop they all run in
(``loop``), and that loop made fast on CUDA (``fast``: bf16, channels_last, torch.compile, one CUDA graph)."""

from .fast import FastSampler, fast_module, fast_sample
from .loop import Plan, Trajectory, invert, plan, run_invert, run_sample, sample
from .options import SampleOptions
from .solvers import (SOLVERS, AnnealedLangevin, PredictorCorrector, ProbabilityFlow, ReverseSDE, Solver, get_solver,
                      register)
from .steps import clip_x0, ddim_invert_step, ddim_step, dynamic_threshold, posterior_variance, sigma_eta, sigma_hat

__all__ = ["sample", "invert", "run_sample", "run_invert", "SampleOptions", "ReverseSDE", "ProbabilityFlow",
           "AnnealedLangevin", "PredictorCorrector", "plan", "Plan", "Trajectory", "FastSampler", "fast_sample",
           "fast_module", "Solver", "SOLVERS", "get_solver", "register", "ddim_step", "ddim_invert_step", "sigma_eta",
           "sigma_hat", "posterior_variance", "clip_x0", "dynamic_threshold"]
