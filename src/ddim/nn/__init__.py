"""Denoising networks: the DDPM UNet, its presets, and diffusers import/export."""

from .diffusers_io import load_diffusers_schedule, load_diffusers_unet, save_diffusers_unet, schedule_from_diffusers
from .unet import PRESETS, UNet, UNetConfig, count_parameters, unet_from_preset

__all__ = ["UNet", "UNetConfig", "PRESETS", "unet_from_preset", "count_parameters", "load_diffusers_unet",
           "save_diffusers_unet", "schedule_from_diffusers", "load_diffusers_schedule"]
