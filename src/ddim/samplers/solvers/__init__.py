"""The solvers, one family per module, each registered by name (``base.register``); importing this package
imports every family, so ``SOLVERS`` is complete wherever a solver is looked up. See ``base`` for the seam."""
# isort: skip_file
# The import order below is the registration order: the order of --solver's choices and of every help text.

from .base import SOLVERS, Solver, dpm_lambda, get_solver, register, solver_help
from .ddim import DDIM
from .dpmpp import DPMSolverPP, multistep_weights
from .unipc import UniPC, unipc_weights
from .heun import Heun, heun_coefficients
from .score import (PC_PREDICTORS, AnnealedLangevin, PredictorCorrector, ProbabilityFlow, ReverseSDE, langevin_step,
                    sde_coefficients, snr_step_size)
from .consistency import Consistency

__all__ = ["SOLVERS", "Solver", "register", "get_solver", "solver_help", "dpm_lambda", "DDIM", "DPMSolverPP",
           "multistep_weights", "UniPC", "unipc_weights", "Heun", "heun_coefficients", "ReverseSDE", "ProbabilityFlow",
           "AnnealedLangevin", "PredictorCorrector", "PC_PREDICTORS", "langevin_step", "snr_step_size",
           "sde_coefficients", "Consistency"]
