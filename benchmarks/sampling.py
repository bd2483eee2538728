"""Sampling speed: ddim.sample with our UNet against diffusers' DDIMPipeline on the same weights and x_T.

Side by side in one run: images/s for each, the ratio ours/diffusers, achieved FLOP/s (FLOPs counted
with torch's FlopCounterMode on one forward), the fraction of a given peak, peak GPU memory, and the
max relative difference between the two image batches (same precision).

    python benchmarks/sampling.py --device cpu                     # small model, CI/laptop mode
    python benchmarks/sampling.py --device cuda --preset cifar10 --batch 256,1024 --precision fp32,bf16

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
from ddim.nn import count_parameters, save_diffusers_unet, unet_from_preset

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
             f"{'of peak':>8} {'max rel diff':>13} {'peak mem GB':>12}"
    print(header)
    for B in batches:
        for prec in args.precision.split(","):
            dtype = PRECISIONS[prec]
            shape = (B, *shape1[1:])

            def run_ours():
                x_T = torch.randn(shape, generator=torch.Generator(device).manual_seed(0), device=device)
                with torch.inference_mode(), _autocast(device, dtype):
                    x = ddim.sample(ours, schedule, x_T, steps=args.steps, eta=args.eta, spacing="leading",
                                    generator=torch.Generator(device).manual_seed(1))
                return (x.float() / 2 + 0.5).clamp(0, 1)

            def run_theirs():
                with torch.inference_mode(), _autocast(device, dtype):
                    return pipe(batch_size=B, generator=torch.Generator(device).manual_seed(0), eta=args.eta,
                                num_inference_steps=args.steps, output_type="pt").images.float()

            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run_ours()  # warm-up (kernels, allocator)
            t_ours, img_ours = _time(run_ours, device, args.repeats)
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            run_theirs()
            t_theirs, img_theirs = _time(run_theirs, device, args.repeats)
            # diffusers' pipeline draws x_T from generator seed 0 exactly as run_ours does
            diff = ((img_ours - img_theirs.to(img_ours.device)).abs().max() / img_theirs.abs().max()).item()
            ips_ours, ips_theirs = B / t_ours, B / t_theirs
            tflops = flops_img * ips_ours / 1e12
            row = dict(batch=B, precision=prec, ours_images_per_s=ips_ours, diffusers_images_per_s=ips_theirs,
                       ratio=ips_ours / ips_theirs, tflops=tflops,
                       fraction_of_peak=tflops / args.peak_tflops if args.peak_tflops else None,
                       max_rel_diff=diff, peak_mem_gb=mem)
            rows.append(row)
            peak = f"{100 * row['fraction_of_peak']:.1f}%" if args.peak_tflops else "-"
            print(f"{B:>6} {prec:>5} {ips_ours:>11.2f} {ips_theirs:>16.2f} {row['ratio']:>6.2f} {tflops:>8.3f} "
                  f"{peak:>8} {diff:>13.2e} {mem:>12.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(benchmark="sampling", preset=preset, steps=args.steps, eta=args.eta, device=str(device),
                           torch=torch.__version__, diffusers=diffusers.__version__, flops_per_image=flops_img,
                           rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
