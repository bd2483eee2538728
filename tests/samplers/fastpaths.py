"""Shared by the fast path's tests: stand-in models, a quiet sampler, the bundled model with `ddim sample`'s
options, and the bf16 tolerance (with the measurement it rests on)."""

import warnings

import torch

import ddim
from ddim.nn import unet_from_preset
from ddim.samplers import FastSampler

S1000 = ddim.Schedule.linear(1000)


def affine_model(x, t):
    """A deterministic elementwise stand-in model (as in test_samplers)."""
    return torch.tanh(0.5 * x) + 0.001 * t.to(x.dtype).view(-1, *[1] * (x.ndim - 1))


def quiet_sampler(**kw) -> FastSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FastSampler(**kw)


def run_quietly(fn, *args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


def perturbed_tiny_unet():
    """A tiny 8×8 class-conditional UNet with all weights moved off their init (zero-init layers too)."""
    torch.manual_seed(0)
    net = unet_from_preset("small", image_size=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                           dropout=0.0).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


# Tolerance of bf16 against fp32, on images clamped to [-1, 1], the bundled model sampled as `ddim sample`
# does (its v parameterisation, x̂_0 clipped), same seeds. Measured on the CPU (torch.autocast("cpu",
# bfloat16), 64 images; `python benchmarks/bf16_drift.py --device cpu --n 64`, results/bf16_drift_cpu.json):
# mean |diff| 0.0018, 0.0012 and 0.0014 (20 steps η = 0; 50 steps η = 0 and 1); pixels off by more than
# 4 grey levels (8/255): 0.38 %, 0.11 %, 0.11 %. The max is no bound: a trajectory that bf16 nudges across
# an edge moves a few pixels far (0.79 once in 64 images). The bounds leave 3-4× headroom over the worst.
MEAN_TOL, SHARE_TOL = 0.006, 0.015


def within_bf16(got, want) -> bool:
    diff = (got.clamp(-1, 1) - want.clamp(-1, 1)).abs()
    return bool(diff.mean() <= MEAN_TOL and (diff > 8 / 255).float().mean() <= SHARE_TOL)


def our_warnings(record) -> list:
    return [str(w.message) for w in record if "ddim fast sampling" in str(w.message)]


def bundled(device):
    """The bundled model, its schedule and `ddim sample`'s options for it (its v parameterisation, x̂_0 clip)."""
    from ddim.checkpoint import load_checkpoint

    model, schedule, config = load_checkpoint(device=device)
    return model.eval(), schedule, dict(prediction=config.prediction, clip=1.0, eps_from_clipped_x0=True)
