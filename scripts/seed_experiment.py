"""The seed's own experiment: DDPM on AFHQ-cat at 32×32, 150,000 steps, FID of 2,000 DDIM samples.

    bash scripts/seed_experiment.sh DATA_DIR [OUT]       # DATA_DIR: e.g. afhq/train/cat; OUT: runs/seed_experiment
    bash scripts/seed_experiment.sh DATA_DIR OUT --slice-only          # train ~2 minutes, print the projection, stop
    bash scripts/seed_experiment.sh DATA_DIR OUT --inception-weights weights-inception-2015-12-05-6726825d.pth
    bash scripts/seed_experiment.sh --dry-run [OUT]      # the whole recipe at toy size on the CPU (the test suite's)

Stages; each is skipped when its output exists, so the same command run again resumes where it stopped:
    check   every image of DATA_DIR read as training reads it (``ddim.data.load_folder``: shorter side to 32,
            centre crop, RGB); a missing folder, a folder without images or an unreadable file stop here
            in one line, exit 2, before anything is trained.
    train   ``ddim train`` with the DDPM CIFAR-10 recipe (``train_command``) into OUT/train, always with
            --resume. After --slice-seconds of measured training it prints steps/s and the projected wall
            time of the whole run (also OUT/slice.json); --slice-only stops there (with a checkpoint, so the
            full run continues from it). Ctrl-C stops after the current step with a checkpoint.
    sample  ``ddim sample`` of 2,000 images from the EMA weights for S = 50, 100 and η = 0, 1 into
            OUT/samples/step<N>/ (.npz for FID, .png grids to look at).
    fid     ``scripts/folder_fid.py``: FID (KID, precision/recall) of each against the training images, in
            Inception features with --inception-weights, else in the clearly labelled fallback space.

``--synthetic N`` trains on N smooth random 32×32 PNGs it writes into OUT/data (the GPU check's slice);
``--dry-run`` is 64 generated 512×512 JPEGs laid out like AFHQ, a tiny network, 20 steps, 64 samples at S = 5, 10.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))   # folder_fid, when imported from elsewhere

NOTES_FID = 45              # what the study notes report for this run (Inception, 2,000 samples)
IMAGE_SIZE = 32
SAMPLE_CELLS = ((50, 0.0), (50, 1.0), (100, 0.0), (100, 1.0))   # (S, η)
# The dry run: the cifar10 preset's layout at 0.03 GFLOPs per forward (the preset: 12.4), and ten times
# fewer sampling steps, so the whole recipe runs on one CPU core in well under a minute.
TINY_SHAPE = ["--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1", "--norm-groups", "4",
              "--attn-resolutions", "16"]
DRY_CELLS = ((5, 0.0), (5, 1.0), (10, 0.0), (10, 1.0))
POLL_S = 0.5


class RecipeError(ValueError):
    """Something the user can fix; reported as one line, exit 2."""


@dataclasses.dataclass
class Recipe:
    """Everything one run of the experiment needs; the defaults are the experiment itself.

    Attributes:
        data_dir: the training image folder. out: where everything is written.
        steps: optimizer steps. batch: global batch. samples: images per (S, η) cell.
        sample_batch: images per `ddim sample` model call. cells: the (S, η) pairs sampled.
        log_every: steps per metrics line (the slice's resolution). checkpoint_every: steps between
        checkpoints. tiny: the dry run's small network.
        device: for training, sampling and features. bf16: bf16 autocast in training (CUDA).
        slice_seconds: measured training time before the projection is printed. slice_only: stop after it.
        inception_weights: the Inception weights file, or None for the fallback features.
        fid_rounds, kid_subsets: cost of the FID spread and of KID.
    """

    data_dir: Path
    out: Path
    steps: int = 150_000
    batch: int = 128
    samples: int = 2_000
    sample_batch: int = 500
    cells: tuple = SAMPLE_CELLS
    log_every: int = 10
    checkpoint_every: int = 5_000
    tiny: bool = False
    device: str = "auto"
    bf16: bool = False
    slice_seconds: float = 90.0
    slice_only: bool = False
    inception_weights: Optional[str] = None
    fid_rounds: int = 20
    kid_subsets: int = 100

    @property
    def run_dir(self) -> Path:
        return self.out / "train"


# ------------------------------------------------------------------------------ commands

def train_command(r: Recipe) -> list[str]:
    """`ddim train` arguments: DDPM's CIFAR-10 recipe (Ho et al. 2020, appendix B) on the folder at 32×32.

    Linear β from 1e-4 to 0.02 over T = 1000, ε-prediction, the 35.7 M-parameter CIFAR-10 UNet (dropout 0.1),
    Adam(W without decay) at 2e-4 with 5,000 warm-up steps, gradient clipping at 1, EMA 0.9999, random
    horizontal flips, unconditional (one class of AFHQ).
    """
    shape = TINY_SHAPE if r.tiny else []
    return ["train", "--dataset", "folder", "--data-dir", str(r.data_dir), "--image-size", str(IMAGE_SIZE),
            "--channels", "3", "--hflip", "--no-class-cond",
            "--preset", "cifar10", *shape, "--schedule", "linear", "--num-train-steps", "1000",
            "--prediction", "epsilon",
            "--steps", str(r.steps), "--batch-size", str(r.batch), "--lr", "2e-4", "--warmup", "5000",
            "--weight-decay", "0", "--grad-clip", "1", "--ema-decay", "0.9999", "--seed", "0",
            "--checkpoint-every", str(r.checkpoint_every), "--keep-last", "2",
            "--sample-every", "0" if r.tiny else "10000", "--sample-steps", "50", "--num-samples", "64",
            "--log-every", str(r.log_every), *(["--bf16"] if r.bf16 else []),
            "--device", r.device, "--out", str(r.run_dir), "--resume"]


def sample_command(r: Recipe, steps: int, eta: float, npz: Path) -> list[str]:
    """`ddim sample` arguments for one (S, η) cell: EMA weights, uniform sub-sequence, seed 0, x̂₀ clipped to
    [-1, 1] (the sampler's default, as in DDPM's own sampler)."""
    return ["sample", "--checkpoint", str(r.run_dir), "--n", str(r.samples), "--steps", str(steps),
            "--eta", f"{eta:g}", "--spacing", "uniform", "--seed", "0",
            "--batch-size", str(min(r.sample_batch, r.samples)), "--device", r.device,
            "--npz", str(npz), "--out", str(npz.with_suffix(".png"))]


def fid_arguments(r: Recipe, files: list[Path], json_path: Path, md_path: Path) -> list[str]:
    """scripts/folder_fid.py arguments: the cells against the training folder."""
    weights = ["--inception-weights", r.inception_weights] if r.inception_weights else []
    return [*map(str, files), "--data-dir", str(r.data_dir), "--image-size", str(IMAGE_SIZE), *weights,
            "--device", r.device, "--fid-rounds", str(r.fid_rounds), "--kid-subsets", str(r.kid_subsets),
            "--cache-dir", str(r.out / "cache"), "--json", str(json_path), "--md", str(md_path)]


def _say(text: str) -> None:
    print(f"seed_experiment: {text}", file=sys.stderr, flush=True)


def _ddim(args: list[str]) -> tuple[list[str], dict]:
    """The `ddim` command line for ``args`` run from this checkout (its src/ first on the path), and its env."""
    _say("$ ddim " + shlex.join(args))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "ddim", *args], env


# ------------------------------------------------------------------------------ data

def write_synthetic(folder: Path, n: int, size: int, suffix: str, seed: int = 0) -> Path:
    """n smooth random RGB images (4×4 colour noise, bilinear upsampling: learnable, offline) of size×size
    pixels into ``folder`` as ``synthetic_NNNNNN<suffix>`` (".png" or ".jpg"); files already there are kept."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        low = (rng.random((4, 4, 3)) * 255).astype(np.uint8)   # drawn for every i, so file i never depends on n
        path = folder / f"synthetic_{i:06d}{suffix}"
        if not path.exists():
            Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR).save(path, quality=90)
    return folder


def check_data(data_dir: Path):
    """Read every image as training will (32×32 RGB): ``ImageData`` or a ``DatasetError`` naming the file."""
    from ddim.data import load_folder

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_folder(data_dir, image_size=IMAGE_SIZE, channels=3)
    for w in caught:
        _say(f"warning: {' '.join(str(w.message).split())}")
    classes = f" in {len(data.class_names)} class folders ({', '.join(data.class_names)})" if data.class_names else ""
    _say(f"data: {len(data):,} readable images{classes} in {data_dir}, resized and centre-cropped to "
         f"{IMAGE_SIZE}×{IMAGE_SIZE} RGB")
    if data.class_names and len(data.class_names) > 1:
        _say("note: all classes train one unconditional model; the notes' run is one class (afhq/train/cat)")
    return data


# ------------------------------------------------------------------------------ the timed slice

def latest_step(run_dir: Path) -> int:
    """Step of the run's latest checkpoint (0: none)."""
    from ddim.checkpoint import list_checkpoints

    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        return 0
    return int(json.loads((ckpts[-1] / "state.json").read_text())["step"])


def new_windows(metrics: Path, start: int, batch: int) -> list[tuple[int, float]]:
    """(steps, seconds) of each metrics.jsonl window logged after step ``start``, in order.

    A window's seconds come from its own images_per_s, so they are the trainer's measurement, not this
    process's polling. Lines a kill cut short are skipped.
    """
    if not metrics.is_file():
        return []
    out, prev = [], start
    for line in metrics.read_text(errors="replace").splitlines():
        try:
            m = json.loads(line)
            step, ips = int(m["step"]), float(m["images_per_s"])
        except (ValueError, KeyError, TypeError):
            continue
        if step > prev and ips > 0:
            out.append((step - prev, (step - prev) * batch / ips))
            prev = step
    return out


def measure(windows: list[tuple[int, float]], batch: int) -> Optional[dict]:
    """Steps/s over the windows after the first (its steps pay for start-up: allocator, cuDNN's choices);
    with one window only, that one, marked. None without any."""
    if not windows:
        return None
    kept = windows[1:] or windows
    steps, seconds = sum(s for s, _ in kept), sum(t for _, t in kept)
    return {"steps_measured": steps, "seconds_measured": round(seconds, 2), "steps_per_s": steps / seconds,
            "images_per_s": steps * batch / seconds, "includes_warmup": len(windows) == 1}


def train_flops_per_image(run_dir: Path) -> Optional[float]:
    """FLOPs of one forward + backward of the run's network on one image (torch's FlopCounterMode, CPU)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ddim.nn import UNet, UNetConfig

    try:
        cfg = UNetConfig.from_dict(json.loads((run_dir / "config.json").read_text())["model"])
    except (OSError, ValueError, KeyError):
        return None
    net = UNet.from_config(cfg)
    x = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        net(x, torch.zeros(1, dtype=torch.int64)).square().mean().backward()
    return float(counter.get_total_flops())


def _hours(seconds: float) -> str:
    """A duration in the unit that reads best: h, min or s."""
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 \
        else f"{seconds:.1f} s"


def projection(r: Recipe, m: dict, start: int, peak_tflops: Optional[float]) -> dict:
    """The slice's measurement turned into the run's expected wall time (and FLOP/s where counted)."""
    import torch

    from ddim.device import resolve_device

    device = resolve_device(r.device)
    flops = train_flops_per_image(r.run_dir)
    # Sampling: every cell costs samples × S forwards; one training step costs batch × (forward + backward),
    # about 3 forwards each, so sampling takes this many training steps' worth of time.
    sample_forwards = r.samples * sum(s for s, _ in r.cells)
    sampling_s = sample_forwards / (3 * r.batch) / m["steps_per_s"]
    tflops = None if flops is None else flops * m["images_per_s"] / 1e12
    return {**m, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "batch": r.batch, "bf16": r.bf16, "tiny": r.tiny, "target_steps": r.steps, "start_step": start,
            "projected_hours": r.steps / m["steps_per_s"] / 3600,
            "remaining_hours": max(r.steps - start, 0) / m["steps_per_s"] / 3600,
            "sampling_estimate_minutes": sampling_s / 60,
            "train_gflops_per_image": None if flops is None else flops / 1e9, "tflops": tflops,
            "fraction_of_peak": tflops / peak_tflops if tflops and peak_tflops else None}


def report_projection(p: dict) -> None:
    warm = " (one window only: includes start-up, so it is pessimistic)" if p["includes_warmup"] else ""
    flops = "" if not p.get("tflops") else f", {p['tflops']:.1f} TFLOP/s" if p["tflops"] >= 1 \
        else f", {1e3 * p['tflops']:.1f} GFLOP/s"
    _say(f"slice: {p['steps_measured']:,} steps in {p['seconds_measured']:.1f} s of training on {p['device_name']}: "
         f"{p['steps_per_s']:.2f} steps/s, {p['images_per_s']:.0f} images/s{flops}{warm}")
    _say(f"expected wall time: {p['target_steps']:,} steps ≈ {_hours(p['projected_hours'] * 3600)} of training"
         + (f" ({_hours(p['remaining_hours'] * 3600)} left from step {p['start_step']:,})" if p["start_step"] else "")
         + f", then sampling ≈ {_hours(p['sampling_estimate_minutes'] * 60)} (an estimate from the same rate)")


def train(r: Recipe, peak_tflops: Optional[float] = None) -> Optional[dict]:
    """Run (or resume) `ddim train`, printing the projection after the slice; returns it (None: nothing
    was trained, the run had reached its steps). Raises ``RecipeError`` if training fails."""
    from ddim.train.monitor import truncate_metrics

    start = latest_step(r.run_dir)
    if start >= r.steps:
        _say(f"train: {r.run_dir} is at step {start:,} of {r.steps:,}; nothing to train")
        return None
    # Lines a killed run logged after its last checkpoint would read as this run's: drop them first
    # (the trainer does the same on start).
    truncate_metrics(r.run_dir / "metrics.jsonl", start)
    cmd, env = _ddim(train_command(r))
    proc = subprocess.Popen(cmd, env=env)
    found, stopped = None, False
    try:
        while proc.poll() is None:
            time.sleep(POLL_S)
            m = None if found else measure(new_windows(r.run_dir / "metrics.jsonl", start, r.batch), r.batch)
            if m and not m["includes_warmup"] and m["seconds_measured"] >= r.slice_seconds:
                found = _finish_slice(r, m, start, peak_tflops)
                if r.slice_only:
                    proc.send_signal(signal.SIGINT)   # the trainer finishes its step and checkpoints
                    stopped = True
        rc = proc.wait()
    except KeyboardInterrupt:   # the terminal's SIGINT reached the trainer too: let it checkpoint
        proc.wait()
        raise
    if found is None:   # the run ended before a full slice: measure what there is
        m = measure(new_windows(r.run_dir / "metrics.jsonl", start, r.batch), r.batch)
        found = _finish_slice(r, m, start, peak_tflops) if m else None
    # Our SIGINT ends the trainer with 128 + SIGINT after its checkpoint, or (if it came as the run was
    # ending anyway) with the signal itself: both are the slice working.
    if rc != 0 and not (stopped and rc in (128 + signal.SIGINT, -signal.SIGINT)):
        raise RecipeError(f"ddim train failed (exit {rc}); its message is above. Rerun the same command to "
                          "resume from the last checkpoint")
    return found


def _finish_slice(r: Recipe, m: dict, start: int, peak_tflops: Optional[float]) -> dict:
    p = projection(r, m, start, peak_tflops)
    report_projection(p)
    (r.out / "slice.json").write_text(json.dumps(p, indent=1) + "\n")
    return p


# ------------------------------------------------------------------------------ sampling and FID

def sample(r: Recipe) -> tuple[Path, list[Path]]:
    """The (S, η) cells from the latest checkpoint; returns (their folder, the .npz files)."""
    step = latest_step(r.run_dir)
    if step == 0:
        raise RecipeError(f"{r.run_dir} holds no checkpoint to sample from")
    folder = r.out / "samples" / f"step{step:06d}"
    files = []
    for steps, eta in r.cells:
        npz = folder / f"ddim{steps}_eta{eta:g}.npz"
        files.append(npz)
        if npz.is_file():   # written atomically: present means complete
            _say(f"sample: {npz} exists; kept")
            continue
        cmd, env = _ddim(sample_command(r, steps, eta, npz))
        rc = subprocess.run(cmd, env=env).returncode
        if rc != 0:
            raise RecipeError(f"ddim sample failed (exit {rc}); its message is above")
    return folder, files


def score(r: Recipe, folder: Path, files: list[Path]) -> dict:
    """FID of the cells against the training folder (scripts/folder_fid.py in this process)."""
    import folder_fid

    space = "inception" if r.inception_weights else "fallback"
    json_path, md_path = folder / f"fid_{space}.json", folder / f"fid_{space}.md"
    if json_path.is_file():
        _say(f"fid: {json_path} exists; kept")
        return json.loads(json_path.read_text())
    argv = fid_arguments(r, files, json_path, md_path)
    _say("$ python scripts/folder_fid.py " + shlex.join(argv))
    return folder_fid.run(folder_fid.build_parser().parse_args(argv))


def summary(report: dict, step: int, cells=SAMPLE_CELLS) -> str:
    """The FID table (rows S, columns η) with how to read it against the notes."""
    by_name = {Path(row["file"]).stem: row for row in report["rows"]}
    space = report["features"]
    lines = [f"FID of {report['rows'][0]['n_fake']:,} samples against {report['reference']['n']:,} training images, "
             f"step {step:,}, features: {space['name']}", "", "| S | η = 0 | η = 1 |", "| --- | ---: | ---: |"]
    for s in sorted({s for s, _ in cells}):
        row = [by_name.get(f"ddim{s}_eta{eta:g}") for eta in (0.0, 1.0)]
        lines.append(f"| {s} | " + " | ".join("-" if c is None else f"{c['fid']:.2f} ± {c['fid_std']:.2f}"
                                              for c in row) + " |")
    floor = report["floor"]
    lines.append(f"\nfloor ({floor['n_fake']:,} real training images against all): {floor['fid']:.2f}")
    if space["comparable_with_published"]:
        lines.append(f"the notes report ≈ {NOTES_FID} (Inception, 2,000 samples, 150,000 steps); "
                     "see docs/seed_experiment.md for how to read the difference")
    else:
        lines.append(f"FALLBACK feature space: these numbers cannot be compared with the notes' ≈ {NOTES_FID}; "
                     "pass --inception-weights FILE for Inception features")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 usage="seed_experiment.sh DATA_DIR [OUT] [options] | --dry-run [OUT] | "
                                       "--synthetic N [OUT]")
    ap.add_argument("paths", nargs="*", metavar="DATA_DIR [OUT]",
                    help="the training image folder (e.g. afhq/train/cat) and the output folder "
                         "(default: runs/seed_experiment); with --dry-run or --synthetic only OUT")
    ap.add_argument("--dry-run", action="store_true",
                    help="64 generated 512×512 JPEGs, a tiny network, 20 steps, 64 samples at S = 5, 10 "
                         "(CPU, under a minute)")
    ap.add_argument("--synthetic", type=int, default=None, metavar="N",
                    help="train on N generated 32×32 PNGs written into OUT/data (speed checks)")
    ap.add_argument("--slice-seconds", type=float, default=None,
                    help="measured training seconds before the projection is printed (default: 90; dry run 0)")
    ap.add_argument("--slice-only", action="store_true",
                    help="stop after the projection (with a checkpoint: the same command without it continues)")
    ap.add_argument("--inception-weights", default=None, metavar="FILE",
                    help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth for Inception FID "
                         "(default: the labelled fallback features)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in training (CUDA; faster, not the notes')")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: 150,000; dry run 20)")
    ap.add_argument("--samples", type=int, default=None, help="images per (S, η) cell (default: 2,000; dry run 64)")
    ap.add_argument("--json", default=None, help="also write the slice's projection here")
    ap.add_argument("--peak-tflops", type=float, default=None, help="report achieved FLOP/s as a fraction of this")
    return ap


def check_inception(weights: str) -> None:
    """Build the Inception extractor once now, so a missing file or package is found before hours of
    training rather than after them."""
    import folder_fid

    if not Path(weights).is_file():
        raise RecipeError(f"--inception-weights {weights} does not exist")
    try:
        folder_fid.make_extractor(weights)
    except ValueError:
        raise
    except Exception as e:   # a file that is not the Inception weights fails deep inside torch
        raise RecipeError(f"--inception-weights {weights}: cannot load it as torch-fidelity's Inception weights "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None


def recipe_from_args(args) -> Recipe:
    """The Recipe the arguments ask for, every argument checked (nothing is written yet)."""
    generated = args.dry_run or args.synthetic is not None
    if args.dry_run and args.synthetic is not None:
        raise RecipeError("--dry-run and --synthetic each generate their data; give one")
    if len(args.paths) > (1 if generated else 2) or (not generated and not args.paths):
        raise RecipeError("usage: seed_experiment.sh DATA_DIR [OUT] | --dry-run [OUT] | --synthetic N [OUT]")
    if args.synthetic is not None and args.synthetic < 2:
        raise RecipeError(f"--synthetic needs at least 2 images, got {args.synthetic}")
    default_out = "runs/seed_experiment_dry" if args.dry_run else "runs/seed_experiment"
    out = Path(args.paths[-1] if len(args.paths) == (1 if generated else 2) else default_out)
    data_dir = (out / "data" / "afhq" / "train" / "cat" if args.dry_run else out / "data" / "synthetic"
                if args.synthetic is not None else Path(args.paths[0]))
    r = Recipe(data_dir=data_dir, out=out, device=args.device, bf16=args.bf16, slice_only=args.slice_only,
               inception_weights=args.inception_weights)
    if args.dry_run:
        r = dataclasses.replace(r, steps=20, batch=16, samples=64, cells=DRY_CELLS, log_every=5, checkpoint_every=10,
                                tiny=True, slice_seconds=0.0, fid_rounds=2, kid_subsets=10)
    if args.slice_seconds is not None:
        r = dataclasses.replace(r, slice_seconds=args.slice_seconds)
    r = dataclasses.replace(r, steps=args.steps or r.steps, samples=args.samples or r.samples)
    if r.samples < 2 or r.steps < 1:
        raise RecipeError(f"--samples must be >= 2 and --steps >= 1, got {r.samples} and {r.steps}")
    if r.inception_weights:
        check_inception(r.inception_weights)
    return r


def generate_data(args, r: Recipe) -> None:
    """Write the --dry-run or --synthetic images into ``r.data_dir`` (nothing for a user's folder)."""
    if args.dry_run:   # laid out and sized as AFHQ ships its images, so resizing and cropping are exercised
        write_synthetic(r.data_dir, 64, 512, ".jpg")
    elif args.synthetic is not None:
        write_synthetic(r.data_dir, args.synthetic, IMAGE_SIZE, ".png")


def run(args) -> int:
    """check, train (with the slice), sample, score; each stage skips what is already done."""
    r = recipe_from_args(args)
    generate_data(args, r)
    check_data(r.data_dir)
    r.out.mkdir(parents=True, exist_ok=True)
    found = train(r, args.peak_tflops)
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1) + "\n")
    if r.slice_only:
        if found is None:
            _say("no slice measured: the run had already reached its steps")
        return 0
    folder, files = sample(r)
    report = score(r, folder, files)
    text = summary(report, latest_step(r.run_dir), r.cells)
    (r.out / "results.md").write_text(text)
    print(text, end="")
    _say(f"wrote {r.out / 'results.md'}, {folder}/ (samples, FID report), {r.run_dir}/ (checkpoints)")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        _say("stopped; the same command resumes from the last checkpoint")
        return 130
    except (ValueError, OSError) as e:   # RecipeError, DatasetError (a ValueError), unwritable paths
        _say(f"error: {' '.join(str(e).split())}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
