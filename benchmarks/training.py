"""Training speed: our train step against the same step training diffusers' UNet2DModel, same weights.

Every row runs ``ddim.train.Trainer.train_step`` (CPU-drawn t and ε, the L_simple loss, backward, grad
clip, AdamW, EMA): "ours" with our UNet, "diffusers" with ``diffusers.UNet2DModel`` loaded from our
initial weights (exported with ``ddim.nn.save_diffusers_unet``), so the network is the only difference.
Modes:
    fp32      fp32 throughout
    channels_last   fp32, channels_last weights (and so activations)
    compile   fp32, torch.compile (inductor) of the network
    bf16      bf16 autocast of the forward (CUDA, and the CPU: fast where it has AMX or AVX512-BF16)
    fastest   bf16 + torch.compile + fused AdamW (CUDA) + channels_last weights
Reported: steps/s (median of --repeats windows of --steps steps after --warmup steps; ours' and
diffusers' windows alternate), their ratio,
achieved TFLOP/s (FLOPs of one forward + backward counted with torch's FlopCounterMode, the optimizer's
elementwise work left out) and its fraction of --peak-tflops, peak GPU memory.

--curve-steps N trains ours in fp32 and in "fastest" from the same initial weights and data order and
reports the mean loss over the last 200 steps of each, their difference, and that difference in units
of the fp32 run's step-to-step standard deviation there.

    python benchmarks/training.py --device cpu --batch 4 --steps 3          # small preset, smoke test
    python benchmarks/training.py --device cuda --batch 128 --json benchmarks/results/training_h100.json
    python benchmarks/training.py --device cuda --modes fp32,fastest --curve-steps 2000
    python benchmarks/training.py --device cpu --presets small,fashion --batch 128 --steps 2 --repeats 5

--presets A,B,... compares our networks instead (no diffusers): one row per preset and mode, every
preset's trainer built as configured (class-conditional presets keep their labels), timed windows
alternating between all of them (every mode of every preset) in one run, images/s = steps/s × batch.

Data: smooth random images (deterministic, nothing to download), or --dataset/--data-dir for any
dataset ``ddim.data`` reads. Needs diffusers (the test extra).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddim.atomic import atomic_write
from ddim.data import ImageData, load_dataset
from ddim.nn import PRESETS, UNet, count_parameters, save_diffusers_unet
from ddim.train import RunConfig, TrainConfig, Trainer, diffusion_loss
from ddim.train.batches import STREAM_INIT, derive_seed

MODES = ("fp32", "channels_last", "compile", "bf16", "fastest")


class DiffusersNet(nn.Module):
    """diffusers' UNet2DModel called like ours: ``net(x_t, t) -> prediction`` (unconditional)."""

    null_label = None

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, labels=None):
        return self.unet(x, t).sample


class BenchTrainer(Trainer):
    """The Trainer with the network (ours or diffusers'), layout and optimizer a row asks for."""

    def __init__(self, *args, diffusers_dir=None, channels_last=False, fused=False, **kwargs):
        self._diffusers_dir, self._channels_last, self._fused = diffusers_dir, channels_last, fused
        super().__init__(*args, **kwargs)

    def build_model(self):
        if self._diffusers_dir is None:
            net = super().build_model()
        else:
            import diffusers

            net = DiffusersNet(diffusers.UNet2DModel.from_pretrained(self._diffusers_dir, low_cpu_mem_usage=False))
        return net.to(memory_format=torch.channels_last) if self._channels_last else net

    def build_optimizer(self, params):
        if not self._fused:
            return super().build_optimizer(params)
        tc = self.config.train
        return torch.optim.AdamW(params, lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay, fused=True)


def synthetic_images(n: int, channels: int, size: int, seed: int = 0) -> ImageData:
    """n smooth random uint8 images (4×4 uniform noise, upsampled bilinearly): learnable, offline."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand((n, channels, 4, 4), generator=g)
    x = nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return ImageData((x * 255).round().to(torch.uint8), name=f"synthetic {n}×{channels}×{size}²")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_config(model_cfg, args, mode: str, steps: int) -> RunConfig:
    train = TrainConfig(steps=steps, batch_size=args.batch, bf16=mode in ("bf16", "fastest"),
                        compile=mode in ("compile", "fastest"), seed=args.seed,
                        label_dropout=0.0, checkpoint_every=0, sample_every=0, log_every=steps, keep_last=0)
    return RunConfig(model=model_cfg, train=train)


def _trainer(model_cfg, args, mode, data, device, out, steps, diffusers_dir=None) -> BenchTrainer:
    return BenchTrainer(_run_config(model_cfg, args, mode, steps), out, data=data, device=str(device), quiet=True,
                        diffusers_dir=diffusers_dir, channels_last=mode in ("channels_last", "fastest"),
                        fused=mode == "fastest" and device.type == "cuda")


def _window(trainer: Trainer, steps: int, device) -> tuple[float, torch.Tensor]:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = trainer.train_step()
    _sync(device)
    return steps / (time.perf_counter() - t0), loss


def steps_per_second(factories: dict, args, device) -> dict:
    """{name: (median steps/s, last loss, peak GPU memory GB)} for the trainers ``factories`` build.

    Each is built and warmed up in turn; its memory is the peak during that, less what was allocated
    before it was built (the other trainers' weights). The timed windows then alternate between the
    trainers, so a change in the machine's load hits all of them alike."""
    trainers, mem = {}, {}
    for name, make in factories.items():
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) if cuda else 0
        trainers[name] = make()
        for _ in range(args.warmup):  # compile, cuDNN autotuning, allocator
            trainers[name].train_step()
        _sync(device)
        mem[name] = (torch.cuda.max_memory_allocated(device) - before) / 2**30 if cuda else float("nan")
    rates, losses = {name: [] for name in trainers}, {}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            rate, losses[name] = _window(trainer, args.steps, device)
            rates[name].append(rate)
    return {name: (statistics.median(rates[name]), float(losses[name]), mem[name]) for name in trainers}


def _release(device) -> None:
    """Free the last row's trainer before the next one measures its peak memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def flops_per_step(model_cfg, schedule, batch: int, device) -> int:
    """FLOPs of one forward + backward of our UNet on a batch (FlopCounterMode; fp32 shapes)."""
    net = UNet.from_config(model_cfg).to(device)
    shape = (batch, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
    x0, eps = torch.zeros(shape, device=device), torch.randn(shape, device=device)
    t = torch.randint(0, schedule.num_steps, (batch,), device=device)
    with FlopCounterMode(display=False) as counter:
        diffusion_loss(net, schedule, x0, t, eps).backward()
    return counter.get_total_flops()


def loss_curve(model_cfg, args, data, device, tmp) -> dict:
    """Ours in fp32 and in "fastest" for --curve-steps steps from the same init and data order."""
    tail = min(200, args.curve_steps)
    out = {}
    for mode in ("fp32", "fastest"):
        trainer = _trainer(model_cfg, args, mode, data, device, f"{tmp}/curve_{mode}", args.curve_steps)
        losses = torch.stack([trainer.train_step()[0] for _ in range(args.curve_steps)]).double().cpu()
        out[mode] = losses[-tail:]
    fp32, fast = out["fp32"], out["fastest"]
    diff, std = (fast.mean() - fp32.mean()).item(), fp32.std().item()
    return dict(steps=args.curve_steps, window=tail, fp32_mean=fp32.mean().item(), fastest_mean=fast.mean().item(),
                difference=diff, fp32_step_std=std, difference_in_std=diff / std if std > 0 else float("nan"))


def compare_presets(args, device, modes) -> None:
    """Our train step on several presets, side by side: steps/s, images/s, FLOPs, parameters."""
    presets = args.presets.split(",")
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise SystemExit(f"unknown preset(s) {unknown}; allowed: {', '.join(PRESETS)}")
    cfgs = {p: PRESETS[p] for p in presets}
    shapes = {(c.in_channels, c.image_size) for c in cfgs.values()}
    if len(shapes) != 1:
        raise SystemExit(f"the presets take different images {sorted(shapes)}; compare presets of one data shape")
    (c, s), = shapes
    data = load_dataset(args.dataset, args.data_dir, "train", s, c) if args.dataset else synthetic_images(
        max(4 * args.batch, 1024), c, s, args.seed)
    if any(cfg.num_classes for cfg in cfgs.values()) and data.labels is None:  # random labels for the table
        g = torch.Generator().manual_seed(args.seed)
        data = ImageData(data.images, torch.randint(0, 10, (len(data),), generator=g), 10, data.name)
    flops = {p: flops_per_step(cfg, RunConfig(model=cfg).make_schedule(), args.batch, device) for p, cfg in cfgs.items()}
    params = {p: count_parameters(UNet.from_config(cfg)) for p, cfg in cfgs.items()}
    print(f"batch {args.batch}, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"data {data.name}")
    print(f"{'mode':>13} {'preset':>10} {'params':>8} {'GFLOP/img f+b':>14} {'steps/s':>8} {'images/s':>9} "
          f"{'GFLOP/s':>8}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Every (mode, preset) trainer in one interleaved set of windows: a CPU's speed drifts between minutes.
        total = args.warmup + args.repeats * args.steps
        data_for = {p: data if cfg.num_classes else ImageData(data.images, name=data.name) for p, cfg in cfgs.items()}
        factories = {(mode, p): functools.partial(_trainer, cfg, args, mode, data_for[p], device, f"{tmp}/{p}_{mode}",
                                                  total)
                     for mode in modes for p, cfg in cfgs.items()}
        got = steps_per_second(factories, args, device)
        for (mode, p), (rate, _, _) in got.items():
            row = dict(mode=mode, preset=p, parameters=params[p], flops_per_step=flops[p], steps_per_s=rate,
                       images_per_s=rate * args.batch, gflops_per_s=flops[p] * rate / 1e9)
            rows.append(row)
            print(f"{mode:>13} {p:>10} {params[p] / 1e6:>7.2f}M {flops[p] / args.batch / 1e9:>14.3f} {rate:>8.2f} "
                  f"{row['images_per_s']:>9.1f} {row['gflops_per_s']:>8.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(benchmark="training-presets", presets=presets, batch=args.batch, device=str(device),
                           threads=torch.get_num_threads(), torch=torch.__version__, data=data.name, rows=rows),
                      fh, indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default=None, help="UNet preset (default: cifar10 on CUDA, small on CPU)")
    ap.add_argument("--presets", default=None, help="comma-separated presets to compare with each other (ours only)")
    ap.add_argument("--batch", type=int, default=None, help="global batch (default 128 on CUDA, 4 on CPU)")
    ap.add_argument("--modes", default=None, help=f"comma-separated from {MODES} (default: all on CUDA, fp32 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed window (default 50 CUDA, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 CUDA, 1 CPU)")
    ap.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    ap.add_argument("--no-diffusers", action="store_true", help="ours only")
    ap.add_argument("--curve-steps", type=int, default=0, help="also compare fp32 and fastest loss curves")
    ap.add_argument("--peak-tflops", type=float, default=775.0, help="the device's bf16 peak (H100 SXM: 775)")
    ap.add_argument("--dataset", default=None, help="a ddim.data dataset instead of synthetic images")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.batch = args.batch or (128 if cuda else 4)
    args.steps = args.steps or (50 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    modes = (args.modes or ("fp32,bf16,fastest" if cuda else "fp32")).split(",")
    if any(m not in MODES for m in modes):
        raise SystemExit(f"unknown mode in {modes}; allowed: {MODES}")
    if args.presets:
        return compare_presets(args, device, modes)
    preset = args.preset or ("cifar10" if cuda else "small")
    model_cfg = PRESETS[preset]
    model_cfg = replace(model_cfg, num_classes=None)  # unconditional: diffusers' form has no label table here
    c, s = model_cfg.in_channels, model_cfg.image_size
    data = load_dataset(args.dataset, args.data_dir, "train", s, c) if args.dataset else synthetic_images(
        max(4 * args.batch, 1024), c, s, args.seed)
    schedule = RunConfig(model=model_cfg).make_schedule()
    flops = flops_per_step(model_cfg, schedule, args.batch, device)
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    params = count_parameters(UNet.from_config(model_cfg))
    print(f"UNet {preset} ({params / 1e6:.2f} M params), batch {args.batch}, {flops / 1e12:.3f} TFLOP per step "
          f"(fwd+bwd), device {device} ({name}), torch {torch.__version__}, data {data.name}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(derive_seed(args.seed, STREAM_INIT))  # the Trainer's own init, exported for diffusers
        save_diffusers_unet(UNet.from_config(model_cfg), f"{tmp}/diffusers")
        print(f"{'mode':>8} {'ours steps/s':>13} {'diffusers steps/s':>18} {'ratio':>6} {'TFLOP/s':>8} {'of peak':>8} "
              f"{'ours mem GB':>12} {'diff. mem GB':>13}")
        for mode in modes:
            total = args.warmup + args.repeats * args.steps
            names = ("ours",) if args.no_diffusers else ("ours", "diffusers")
            factories = {n: functools.partial(_trainer, model_cfg, args, mode, data, device, f"{tmp}/{n}_{mode}", total,
                                              diffusers_dir=f"{tmp}/diffusers" if n == "diffusers" else None)
                         for n in names}
            got = steps_per_second(factories, args, device)
            _release(device)
            none = (None, None, None)
            row = dict(mode=mode)
            row["ours_steps_per_s"], row["ours_loss"], row["ours_mem_gb"] = got["ours"]
            row["diffusers_steps_per_s"], row["diffusers_loss"], row["diffusers_mem_gb"] = got.get("diffusers", none)
            row["ratio"] = None if args.no_diffusers else row["ours_steps_per_s"] / row["diffusers_steps_per_s"]
            row["tflops"] = flops * row["ours_steps_per_s"] / 1e12
            row["fraction_of_peak"] = row["tflops"] / args.peak_tflops
            rows.append(row)
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            print(f"{mode:>8} {row['ours_steps_per_s']:>13.2f} {fmt(row['diffusers_steps_per_s'], '>18.2f')} "
                  f"{fmt(row['ratio'], '>6.2f')} {row['tflops']:>8.2f} {100 * row['fraction_of_peak']:>7.1f}% "
                  f"{row['ours_mem_gb']:>12.2f} {fmt(row['diffusers_mem_gb'], '>13.2f')}")
            if args.json:  # after every mode: a run stopped by a time limit keeps the modes it measured
                _write(args.json, preset, args, device, name, flops, data, rows, None)
        curve = loss_curve(model_cfg, args, data, device, tmp) if args.curve_steps else None
    if curve:
        print(f"loss over the last {curve['window']} of {curve['steps']} steps: fp32 {curve['fp32_mean']:.5f}, "
              f"fastest {curve['fastest_mean']:.5f}, difference {curve['difference']:+.5f} = "
              f"{curve['difference_in_std']:+.3f} × the fp32 step-to-step std ({curve['fp32_step_std']:.5f})")
    if args.json:
        _write(args.json, preset, args, device, name, flops, data, rows, curve)


def _write(path, preset, args, device, name, flops, data, rows, curve) -> None:
    """The benchmark's JSON, replaced whole (atomic): after each mode, and with the loss curve at the end."""
    record = dict(benchmark="training", preset=preset, batch=args.batch, device=str(device), device_name=name,
                  torch=torch.__version__, flops_per_step=flops, peak_tflops=args.peak_tflops, data=data.name,
                  rows=rows, loss_curve=curve)
    atomic_write(path, lambda f: f.write(json.dumps(record, indent=1).encode()))


if __name__ == "__main__":
    main()
