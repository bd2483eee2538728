"""ddim: train diffusion models with the DDPM objective, sample them fast with DDIM.

Public API (see README): ``Schedule``, ``timesteps``, ``sample`` (with ``SampleOptions``), ``invert``,
``Denoiser`` and ``score``, ``ClassifierFreeGuidance``, ``ClassifierGuidance``, ``load_checkpoint``,
``load_noisy_classifier``, and the noise helpers ``randn`` and ``generators``.
"""

from .checkpoint import load_checkpoint, load_noisy_classifier
from .denoiser import Denoiser, score
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .noise import generators, randn
from .samplers import SampleOptions, Trajectory, invert, sample
from .schedule import Schedule
from .timesteps import timesteps

__version__ = "0.1.0"

__all__ = ["Schedule", "timesteps", "sample", "SampleOptions", "score", "invert", "Trajectory",
           "ClassifierFreeGuidance", "ClassifierGuidance", "load_checkpoint", "load_noisy_classifier", "generators",
           "randn", "Denoiser", "__version__"]
