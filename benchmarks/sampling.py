"""Sampling speed: ddim.sample with our UNet against diffusers' DDIMPipeline on the same weights and x_T.

Side by side in one run: images/s for each, the ratio ours/diffusers, achieved FLOP/s (FLOPs counted
with torch's FlopCounterMode on one forward), the fraction of a given peak, peak GPU memory, and the
max relative difference between the two image batches (same precision), and for every precision
after fp32 the max absolute difference of our images from our fp32 images (on the [0, 1] scale).

Precision "fast" is ``ddim.samplers.FastSampler`` on a ``fast_module`` copy (CUDA: bf16 autocast,
channels_last, torch.compile, the loop as one CUDA graph; CPU: channels_last, and bf16 autocast where the
CPU has bf16 in hardware); its reference row is diffusers' UNet given the same treatment short of the graph
(channels_last, bf16 autocast wherever ours has it, and on CUDA torch.compile with the same mode).

    python benchmarks/sampling.py --device cpu                     # small model, CI/laptop mode
    python benchmarks/sampling.py --device cuda --preset cifar10 --batch 256,1024 --precision fp32,bf16,fast

Needs diffusers (the test extra). The weights are a randomly initialised UNet with every parameter
perturbed (DDPM's initialisation zeroes the output layers, which would make the model trivial),
exported with ddim.nn.save_diffusers_unet and loaded by diffusers.UNet2DModel.from_pretrained.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import ddim
from ddim.atomic import atomic_write
from ddim.device import cpu_native_bf16
from ddim.nn import count_parameters, save_diffusers_unet, unet_from_preset
from ddim.samplers import FastSampler, fast_module

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fast": None}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def build_models(preset, device, seed=0):
    """Our UNet (unconditional) with perturbed weights, and diffusers' copy of the same weights."""
    import diffusers

    torch.manual_seed(seed)
    ours = unet_from_preset(preset, num_classes=None, dropout=0.0)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.02 * torch.randn_like(p))
    with tempfile.TemporaryDirectory() as tmp:
        save_diffusers_unet(ours, tmp)
        theirs = diffusers.UNet2DModel.from_pretrained(tmp, low_cpu_mem_usage=False)
    return ours.to(device).eval(), theirs.to(device).eval()


def flops_per_forward(model, shape, device):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(shape, device=device), torch.zeros(shape[0], dtype=torch.int64, device=device))
    return counter.get_total_flops()


def _fast_pipeline(theirs, pipe, device, compile_mode):
    """diffusers' reference for the fast rows: a channels_last copy of its UNet, compiled on CUDA."""
    import diffusers

    net = fast_module(theirs)
    if device.type == "cuda":
        net = torch.compile(net, mode=compile_mode, dynamic=False)
    fast = diffusers.DDIMPipeline(unet=net, scheduler=pipe.scheduler)
    fast.set_progress_bar_config(disable=True)
    return fast


def _measure(args, device, schedule, B, prec, pair, shape1, sampler):
    """One row: ours and diffusers (``pair`` = our UNet, their pipeline) at batch B and precision ``prec``;
    images on the [0, 1] scale. ``sampler``: the FastSampler of a "fast" row."""
    shape = (B, *shape1[1:])
    fast, dtype = prec == "fast", PRECISIONS[prec]
    bf16 = fast and (device.type == "cuda" or (device.type == "cpu" and cpu_native_bf16()))
    amp = torch.bfloat16 if bf16 else dtype  # diffusers' fast row: bf16 wherever ours has it
    net, their_pipe = pair

    def run_ours():
        x_T = torch.randn(shape, generator=torch.Generator(device).manual_seed(0), device=device)
        g = torch.Generator(device).manual_seed(1)
        with torch.inference_mode():
            if fast:
                x = sampler.sample(net, schedule, x_T, steps=args.steps, eta=args.eta, spacing="leading", generator=g)
            else:
                with _autocast(device, dtype):
                    x = ddim.sample(net, schedule, x_T, steps=args.steps, eta=args.eta, spacing="leading",
                                    generator=g)
        return (x.float() / 2 + 0.5).clamp(0, 1)

    def run_theirs():
        with torch.inference_mode(), _autocast(device, amp):
            return their_pipe(batch_size=B, generator=torch.Generator(device).manual_seed(0), eta=args.eta,
                              num_inference_steps=args.steps, output_type="pt").images.float()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run_ours()  # warm-up (kernels, allocator; compile and graph capture for "fast")
    t_ours, img_ours = _time(run_ours, device, args.repeats)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    run_theirs()
    t_theirs, img_theirs = _time(run_theirs, device, args.repeats)
    # diffusers' pipeline draws x_T from generator seed 0 exactly as run_ours does
    diff = ((img_ours - img_theirs.to(img_ours.device)).abs().max() / img_theirs.abs().max()).item()
    ips_ours, ips_theirs = B / t_ours, B / t_theirs
    return dict(batch=B, precision=prec, ours_images_per_s=ips_ours, diffusers_images_per_s=ips_theirs,
                ratio=ips_ours / ips_theirs, max_rel_diff=diff, peak_mem_gb=mem, images=img_ours)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default=None, help="UNet preset (default: small on CPU, cifar10 on CUDA)")
    ap.add_argument("--batch", default=None, help="comma-separated batch sizes (default 16 on CPU, 256,1024 on CUDA)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--precision", default="fp32", help=f"comma-separated, from {list(PRECISIONS)}")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="measured peak of this device (e.g. 775 for bf16 on the H100 here)")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode for the fast rows on CUDA (e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import diffusers

    device = torch.device(args.device)
    preset = args.preset or ("cifar10" if device.type == "cuda" else "small")
    batches = [int(b) for b in (args.batch or ("256,1024" if device.type == "cuda" else "16")).split(",")]
    ours, theirs = build_models(preset, device)
    cfg = ours.config
    schedule = ddim.Schedule.linear(1000)
    pipe = diffusers.DDIMPipeline(unet=theirs, scheduler=diffusers.DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
        timestep_spacing="leading"))
    pipe.set_progress_bar_config(disable=True)
    shape1 = (1, cfg.in_channels, cfg.image_size, cfg.image_size)
    flops_img = flops_per_forward(ours, shape1, device) * args.steps
    print(f"preset {preset} ({count_parameters(ours) / 1e6:.2f} M params), {flops_per_forward(ours, shape1, device) / 1e9:.2f} "
          f"GFLOP/forward, {args.steps} steps, eta {args.eta}, device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")
    rows = []
    header = f"{'batch':>6} {'prec':>5} {'ours img/s':>11} {'diffusers img/s':>16} {'ratio':>6} {'TFLOP/s':>8} " \
             f"{'of peak':>8} {'max rel diff':>13} {'vs fp32':>8} {'peak mem GB':>12}"
    print(header)
    precisions = args.precision.split(",")
    fast_pair = (fast_module(ours), _fast_pipeline(theirs, pipe, device, args.compile_mode)) \
        if "fast" in precisions else None
    for B in batches:
        fp32_images = None
        for prec in precisions:
            # one sampler per batch size: its captured graph serves the warm-up and the timed runs
            sampler = FastSampler(compile_mode=args.compile_mode) if prec == "fast" else None
            pair = fast_pair if prec == "fast" else (ours, pipe)
            row = _measure(args, device, schedule, B, prec, pair, shape1, sampler)
            row["tflops"] = flops_img * row["ours_images_per_s"] / 1e12
            row["fraction_of_peak"] = row["tflops"] / args.peak_tflops if args.peak_tflops else None
            images = row.pop("images")
            if prec == "fp32":
                fp32_images = images
            row["max_abs_diff_vs_fp32"] = None if fp32_images is None or prec == "fp32" else \
                (images - fp32_images).abs().max().item()
            if sampler is not None:
                row["fallbacks"] = sampler.reasons
            rows.append(row)
            peak = f"{100 * row['fraction_of_peak']:.1f}%" if args.peak_tflops else "-"
            vs = "-" if row["max_abs_diff_vs_fp32"] is None else f"{row['max_abs_diff_vs_fp32']:.2e}"
            print(f"{B:>6} {prec:>5} {row['ours_images_per_s']:>11.2f} {row['diffusers_images_per_s']:>16.2f} "
                  f"{row['ratio']:>6.2f} {row['tflops']:>8.3f} {peak:>8} {row['max_rel_diff']:>13.2e} {vs:>8} "
                  f"{row['peak_mem_gb']:>12.2f}")
            if args.json:  # after every row: a run stopped by a time limit keeps the rows it measured
                record = dict(benchmark="sampling", preset=preset, steps=args.steps, eta=args.eta, device=str(device),
                              device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              compile_mode=args.compile_mode, torch=torch.__version__,
                              diffusers=diffusers.__version__, flops_per_image=flops_img, rows=rows)
                text = json.dumps(record, indent=1).encode()
                atomic_write(args.json, lambda f: f.write(text))


if __name__ == "__main__":
    main()
