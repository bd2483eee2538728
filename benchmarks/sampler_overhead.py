"""The sampler's own cost per step (everything but the model call), against the model call itself.

Two measurements, interleaved and repeated (medians reported):
  model   S calls of the UNet at the sampler's shapes, nothing else;
  sampler ddim.sample with a free "model" that returns a precomputed tensor: the sampler's own work.
Overhead = sampler / (sampler + model). Also reported: a full ddim.sample with the UNet, for reference.

    python benchmarks/sampler_overhead.py [--preset small] [--batch 16] [--steps 20] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import ddim
from ddim.nn import count_parameters, unet_from_preset


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = unet_from_preset(args.preset).to(device).eval()
    cfg = net.config
    shape = (args.batch, cfg.in_channels, cfg.image_size, cfg.image_size)
    labels = torch.zeros(args.batch, dtype=torch.int64, device=device) if cfg.num_classes else None
    schedule = ddim.Schedule.linear(1000)
    x_T = torch.randn(shape, device=device)
    canned = torch.randn(shape, device=device)
    tau = ddim.timesteps(schedule, args.steps).to(device)

    def unet(x, t):
        return net(x, t, labels)

    def model_only():
        for k in range(args.steps):
            unet(x_T, tau[k].expand(args.batch))

    rows = []
    with torch.inference_mode():
        model_only()  # warm-up
        for eta in (0.0, 1.0):
            g = torch.Generator(device=device).manual_seed(0)
            free = lambda x, t: canned  # noqa: E731  the sampler's work alone
            run_free = lambda: ddim.sample(free, schedule, x_T, args.steps, eta=eta, generator=g)  # noqa: E731
            run_full = lambda: ddim.sample(unet, schedule, x_T, args.steps, eta=eta, generator=g)  # noqa: E731
            run_free()
            m, s, f = [], [], []
            for _ in range(args.repeats):  # interleaved, so load changes hit all three alike
                m.append(_timed(model_only, device))
                s.append(_timed(run_free, device))
                f.append(_timed(run_full, device))
            model_t, own_t, full_t = (statistics.median(v) / args.steps for v in (m, s, f))
            rows.append(dict(eta=eta, model_ms=1e3 * model_t, sampler_ms=1e3 * own_t, full_ms=1e3 * full_t,
                             overhead=own_t / (own_t + model_t)))
    print(f"UNet preset {args.preset!r} ({count_parameters(net) / 1e6:.2f} M params), batch {args.batch}, "
          f"{args.steps} steps, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'eta':>4} {'model ms/step':>14} {'sampler ms/step':>16} {'full ms/step':>13} {'overhead':>9}")
    for r in rows:
        print(f"{r['eta']:>4} {r['model_ms']:>14.2f} {r['sampler_ms']:>16.3f} {r['full_ms']:>13.2f} "
              f"{100 * r['overhead']:>8.2f}%")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(benchmark="sampler_overhead", preset=args.preset, batch=args.batch, steps=args.steps,
                           device=str(device), torch=torch.__version__, rows=rows), fh, indent=1)


if __name__ == "__main__":
    main()
