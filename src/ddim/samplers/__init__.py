"""Samplers: pure step functions (``steps``) and the loops built on them (``ddim``)."""

from .ddim import Plan, Trajectory, invert, plan, sample
from .steps import clip_x0, ddim_step, dynamic_threshold, posterior_variance, sigma_eta, sigma_hat

__all__ = ["sample", "invert", "plan", "Plan", "Trajectory", "ddim_step", "sigma_eta", "sigma_hat",
           "posterior_variance", "clip_x0", "dynamic_threshold"]
