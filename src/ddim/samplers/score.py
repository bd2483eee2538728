"""The score view's earlier import path, kept so existing imports work: the names of
``ddim.samplers.solvers.score``, with ``score`` (``ddim.score``) and ``score_from_eps`` (``ddim.forward``)."""

from ..denoiser import score
from ..forward import score_from_eps
from .solvers import SOLVERS
from .solvers.score import (PC_PREDICTORS, AnnealedLangevin, PredictorCorrector, ProbabilityFlow, ReverseSDE,
                            langevin_step, sde_coefficients, snr_step_size)

__all__ = ["score", "score_from_eps", "langevin_step", "snr_step_size", "sde_coefficients", "ReverseSDE",
           "ProbabilityFlow", "AnnealedLangevin", "PredictorCorrector", "SCORE_SOLVERS", "PC_PREDICTORS"]

SCORE_SOLVERS = {n: s for n, s in SOLVERS.items() if isinstance(s, (ReverseSDE, ProbabilityFlow, AnnealedLangevin))}
"""The score view's solvers by name (all of them are also in ``SOLVERS``)."""
