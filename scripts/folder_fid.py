"""FID of generated images (.npz files from `ddim sample --npz`) against an image folder.

    python scripts/folder_fid.py SAMPLES.npz [SAMPLES.npz ...] --data-dir FOLDER --image-size 32 \
        [--inception-weights weights-inception-2015-12-05-6726825d.pth] [--json fid.json]

The folder is read as `ddim train --dataset folder` reads it (``ddim.data.load_folder``: shorter side resized
to --image-size, centre crop, RGB), with no flips: those are the images the model was trained to match.

Two feature spaces, and the report always says which one gave the numbers:
    inception  Inception-v3 pool3 (2048-d), the standard FID network, when --inception-weights names
               torch-fidelity's weights file (``ddim.evaluate.InceptionFeatureExtractor``; nothing is
               downloaded). Images are resized to 299×299 without antialiasing (pytorch-fid's convention;
               --inception-antialias for torchmetrics' default). Only these numbers compare with published FIDs.
    fallback   a fixed, randomly initialised conv net (``RandomConvFeatures``, 256-d), built from a seeded
               generator on the CPU, so it is the same on every machine without any file. It ranks
               models and settings against each other; its values are on another scale from Inception's
               and must never be set beside a published FID.

Samples are rounded to uint8 first (what a saved PNG holds), like the training images. Besides FID the
report holds KID, precision/recall and the FID's bootstrap spread (``ddim.evaluate.compute_metrics``),
and a floor: the FID of N real training images against all of them (what real images score at the
samples' N, at most half the folder; they are part of the reference, so it is an optimistic floor).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

FALLBACK_NAME = "fallback: random-conv-256 (seed 0), NOT Inception; not comparable with published FIDs"
INCEPTION_NAME = "Inception-v3 pool3 (2048-d), the standard FID features"
FLOOR_SEED = 0


class FeatureError(ValueError):
    """A samples file or a feature option a user can fix."""


# ------------------------------------------------------------------------------ the fallback space

class RandomConvFeatures(nn.Module):
    """Fallback features: a fixed random conv net, (N, 3, H, W) in [-1, 1] -> (N, 256) float32.

    Four 3×3 conv + ReLU stages (32, 64, 128, 256 channels), 2×2 average pooling between them, then the
    global mean over positions. Inputs are resized to 32×32 first, so the space is one for every image
    size. Weights are He-normal (std √(2 / fan_in), which keeps activations from vanishing through the
    ReLUs) drawn from ``torch.Generator().manual_seed(seed)`` on the CPU, biases zero: no file, no training,
    identical everywhere. ``sha256`` hashes the weights, so a report names exactly which net it used.
    """

    widths = (32, 64, 128, 256)
    side = 32

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers, c_in = [], 3
        for k, c_out in enumerate(self.widths):
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (c_in * 9)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()] + ([nn.AvgPool2d(2)] if k < len(self.widths) - 1 else [])
            c_in = c_out
        self.body = nn.Sequential(*layers).requires_grad_(False).eval()
        h = hashlib.sha256()
        for p in self.body.parameters():
            h.update(p.detach().contiguous().numpy().tobytes())
        self.sha256 = h.hexdigest()
        self.num_features = self.widths[-1]

    def train(self, mode: bool = True) -> "RandomConvFeatures":
        return super().train(False)   # no dropout or norm statistics, but keep the contract of the others

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [-1, 1] -> (N, 256) float32."""
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
            raise FeatureError(f"the fallback features take RGB images (N, 3, H, W), got "
                               f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        x = x.float()
        if x.shape[-2:] != (self.side, self.side):
            x = nn.functional.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True,
                                          align_corners=False)
        return self.body(x).mean(dim=(2, 3))


def make_extractor(inception_weights: Optional[str], antialias: bool = False):
    """(extractor, description dict) for --inception-weights (None: the fallback space).

    The dict says which space the numbers live in: {"space": "inception" | "fallback", "name",
    "comparable_with_published": bool, "sha256"}.
    """
    if inception_weights:
        from ddim.evaluate import InceptionFeatureExtractor

        ext = InceptionFeatureExtractor(inception_weights, antialias=antialias)
        info = {"space": "inception", "name": INCEPTION_NAME, "comparable_with_published": True,
                "antialias": antialias, "weights": str(inception_weights)}
    else:
        ext = RandomConvFeatures(FLOOR_SEED)
        info = {"space": "fallback", "name": FALLBACK_NAME, "comparable_with_published": False}
    return ext, {**info, "sha256": ext.sha256}


# ------------------------------------------------------------------------------ inputs

def _read_npz(path) -> tuple[list, Optional[np.ndarray]]:
    """(the array names, the 'images' array or None) of an .npz file; ``FeatureError`` if it cannot be read."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as f:
                return list(f.files), (f["images"] if "images" in f.files else None)
    except (OSError, ValueError, zipfile.BadZipFile) as e:   # missing, damaged, or pickled objects
        raise FeatureError(f"cannot read samples file {path}: {e}") from None
    raise FeatureError(f"{path} is not an .npz archive (a bare array?); write one with `ddim sample --npz`")


def load_samples(path, shape: Sequence[int]) -> torch.Tensor:
    """The ``images`` array of a `ddim sample --npz` file, as float (N, C, H, W) on the uint8 grid in [-1, 1].

    Args:
        path: the .npz file. shape: the (C, H, W) the reference images have.
    """
    from ddim.images import to_uint8

    names, a = _read_npz(path)
    if a is None:
        raise FeatureError(f"{path} has no 'images' array (arrays: {', '.join(names) or 'none'}); "
                           "write it with `ddim sample --npz`")
    if a.ndim != 4 or tuple(a.shape[1:]) != tuple(shape) or a.shape[0] < 2 or a.dtype.kind != "f":
        raise FeatureError(f"{path}: expected float images (N >= 2, {'×'.join(map(str, shape))}), got {a.dtype} "
                           f"{tuple(a.shape)}")
    x = torch.from_numpy(a)
    if not torch.isfinite(x).all():
        raise FeatureError(f"{path} holds NaN or Inf values")
    return to_uint8(x).float() / 127.5 - 1.0   # what a saved PNG holds, like the training images


def load_reference(data_dir, image_size: int):
    """The training images as ``ImageData`` (N, 3, S, S), read as `ddim train --dataset folder` reads them."""
    from ddim.data import load_folder

    return load_folder(data_dir, image_size=image_size, channels=3)


# ------------------------------------------------------------------------------ metrics

def floor_metrics(reference, n: int, **metric_kwargs) -> dict:
    """Metrics of min(n, N/2) real images (a seeded random subset) against all N: what real images score
    (optimistic: the subset is part of the reference; at most half of it, so it never is all of it)."""
    from ddim.evaluate import compute_metrics

    g = torch.Generator().manual_seed(FLOOR_SEED)
    idx = torch.randperm(reference.n, generator=g)[:max(2, min(n, reference.n // 2))]
    return compute_metrics(reference.features, reference.features[idx], real_stats=(reference.mu, reference.sigma),
                           **metric_kwargs)


def score_files(files: Sequence, data, extractor, cache_dir=None, batch_size: int = 250, fid_rounds: int = 20,
                kid_subsets: int = 100) -> dict:
    """FID (and KID, precision/recall) of each samples file against ``data``'s images.

    Args:
        files: .npz paths from `ddim sample --npz`. data: ImageData of the reference folder.
        extractor: from ``make_extractor``. cache_dir: where reference features are cached (None: not cached).
        batch_size: images per extractor call. fid_rounds: bootstrap resamples for each FID's spread.
        kid_subsets: random subsets KID averages over.
    Returns:
        {"reference": {...}, "floor": metrics, "rows": [{"file", **metrics}, ...]}.
    """
    from ddim.evaluate import evaluate_images, reference_stats

    ref = reference_stats(data, extractor=extractor, cache_dir=cache_dir, use_cache=cache_dir is not None,
                          batch_size=batch_size)
    samples = [load_samples(f, (data.channels, data.image_size, data.image_size)) for f in files]  # all, before scoring
    kw = {"fid_rounds": fid_rounds, "kid_subsets": kid_subsets}
    rows = [{"file": str(f), **evaluate_images(x, ref, extractor, batch_size=batch_size, **kw)}
            for f, x in zip(files, samples)]
    n = max(r["n_fake"] for r in rows)
    return {"reference": {"name": data.name, "n": ref.n}, "floor": floor_metrics(ref, n, **kw), "rows": rows}


def markdown(report: dict) -> str:
    """The report as a small markdown table (one row per samples file), the feature space named on top."""
    space = report["features"]
    lines = [f"Features: **{space['name']}** (sha256 {space['sha256'][:12]}).",
             f"Reference: {report['reference']['name']} ({report['reference']['n']} images).", "",
             "| samples | N | FID | ± (bootstrap) | KID ×10³ | precision | recall |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = [*report["rows"], {"file": "floor: real training images", **report["floor"]}]
    for r in rows:
        lines.append(f"| {Path(r['file']).stem if r['file'].endswith('.npz') else r['file']} | {r['n_fake']} | "
                     f"{r['fid']:.2f} | {r['fid_std']:.2f} | {1e3 * r['kid_mean']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("samples", nargs="+", help=".npz files written by `ddim sample --npz`")
    ap.add_argument("--data-dir", required=True, help="the image folder the model was trained on")
    ap.add_argument("--image-size", type=int, default=32, help="side the folder's images are resized to (pixels)")
    ap.add_argument("--inception-weights", default=None, metavar="FILE",
                    help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth: Inception features "
                         "(default: the fallback space, not comparable with published FIDs)")
    ap.add_argument("--inception-antialias", action="store_true",
                    help="resize to 299 with antialiasing (torchmetrics' default) instead of pytorch-fid's plain "
                         "bilinear")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (feature extraction)")
    ap.add_argument("--batch-size", type=int, default=250, help="images per feature-extractor call")
    ap.add_argument("--fid-rounds", type=int, default=20, help="bootstrap resamples for each FID's spread")
    ap.add_argument("--kid-subsets", type=int, default=100, help="random subsets KID averages over")
    ap.add_argument("--cache-dir", default=None, help="cache reference features here (default: no cache)")
    ap.add_argument("--json", default=None, help="write the report here")
    ap.add_argument("--md", default=None, help="write the markdown table here")
    return ap


def run(args) -> dict:
    """Score ``args.samples``; returns the report dict (also written to --json / --md when given)."""
    from ddim.device import resolve_device

    device = resolve_device(args.device)
    extractor, info = make_extractor(args.inception_weights, args.inception_antialias)
    data = load_reference(args.data_dir, args.image_size)
    report = {"features": info, **score_files(args.samples, data, extractor.to(device), args.cache_dir,
                                              args.batch_size, args.fid_rounds, args.kid_subsets)}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(report))
    return report


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = run(args)
    except (ValueError, OSError) as e:   # DatasetError and FeatureError are ValueErrors
        print(f"folder_fid: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(markdown(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
