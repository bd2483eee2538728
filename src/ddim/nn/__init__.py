"""Networks: the DDPM UNet, its presets, diffusers import/export, and the noisy classifier."""

from .classifier import CLASSIFIER_PRESETS, ClassifierConfig, NoisyClassifier
from .diffusers_config import UnsupportedConfig, unet_config_from_diffusers, unet_config_to_diffusers
from .diffusers_io import load_diffusers_schedule, load_diffusers_unet, save_diffusers_unet, schedule_from_diffusers
from .diffusers_unet import DiffusersUNet, ForeignUNetConfig
from .ve import VEScoreModel, ve_schedule
from .unet import PRESETS, UNet, UNetConfig, count_parameters, unet_from_preset

__all__ = ["NoisyClassifier", "ClassifierConfig", "CLASSIFIER_PRESETS", "UNet", "UNetConfig", "PRESETS", "unet_from_preset", "count_parameters", "load_diffusers_unet",
           "save_diffusers_unet", "schedule_from_diffusers", "load_diffusers_schedule", "DiffusersUNet", "ForeignUNetConfig",
           "UnsupportedConfig", "unet_config_from_diffusers", "unet_config_to_diffusers", "VEScoreModel", "ve_schedule"]
