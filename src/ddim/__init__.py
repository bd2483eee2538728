"""ddim: train diffusion models with the DDPM objective, sample them fast with DDIM.

Public API (see README): ``Schedule``, ``timesteps``, ``sample``, ``invert``,
``ClassifierFreeGuidance``, ``load_checkpoint``, and the noise helpers ``randn`` and ``generators``.
"""

from .checkpoint import load_checkpoint
from .guidance import ClassifierFreeGuidance
from .noise import generators, randn
from .samplers import SampleOptions, Trajectory, invert, sample, score
from .schedule import Schedule
from .timesteps import timesteps

__version__ = "0.1.0"

__all__ = ["Schedule", "timesteps", "sample", "SampleOptions", "score", "invert", "Trajectory", "ClassifierFreeGuidance", "load_checkpoint",
           "generators", "randn", "__version__"]
