"""Reference statistics of a real image set (features, mean, covariance), cached on disk.

Extracting features of the 60,000 Fashion-MNIST training images takes a while on a CPU and is the
same for every evaluation, so it is done once per (dataset, split, extractor weights, image data)
and kept in a safetensors file::

    <cache_dir>/reference/<dataset>-<split>[-first<N>]-<extractor sha256[:12]>.safetensors
        tensors:  features (N, d) float32, mu (d,) float64, sigma (d, d) float64
        metadata: format, dataset name, extractor_sha256, data_sha256 (of the uint8 images), n, d

``cache_dir`` defaults to $DDIM_CACHE_DIR, else $XDG_CACHE_HOME/ddim, else ~/.cache/ddim. On load
every key is compared with what is asked for: a file written for other extractor weights, other
image data or an older format, or one that cannot be read, is stale and recomputed (atomically
replaced, so concurrent readers never see half a file).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..data import ImageData, load_dataset
from .features import FeatureExtractor, extract_features
from .metrics import compute_metrics, gaussian_stats

__all__ = ["ReferenceStats", "default_cache_dir", "compute_reference", "reference_stats", "evaluate_images"]

FORMAT = "ddim-reference-v1"


@dataclass(frozen=True, eq=False)
class ReferenceStats:
    """Features of a real image set and their Gaussian fit.

    Attributes:
        features: (N, d) float32, in dataset order.
        mu: (d,) float64 mean; sigma: (d, d) float64 unbiased covariance (from all N features).
        name: what was measured, e.g. "fashion-mnist/test".
        extractor_sha256: the extractor's weights hash (numbers are comparable only with the same one).
        data_sha256: hash of the uint8 images.
        from_cache: True when read from disk rather than computed in this call.
    """

    features: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    name: str
    extractor_sha256: str
    data_sha256: str
    from_cache: bool = False

    @property
    def n(self) -> int:
        """Number of images N."""
        return self.features.shape[0]


def default_cache_dir() -> Path:
    """$DDIM_CACHE_DIR, else $XDG_CACHE_HOME/ddim, else ~/.cache/ddim."""
    if os.environ.get("DDIM_CACHE_DIR"):
        return Path(os.environ["DDIM_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddim"


def _data_sha256(data: ImageData) -> str:
    # Shape goes in too: the same bytes as 1×28×28 or 28×1×28 are different data.
    h = hashlib.sha256(repr(tuple(data.images.shape)).encode())
    h.update(data.images.contiguous().numpy().tobytes())
    return h.hexdigest()


def compute_reference(data: ImageData, extractor: nn.Module, batch_size: int = 500) -> ReferenceStats:
    """Reference statistics of ``data`` (at least 2 images) with ``extractor`` (which needs ``.sha256``)."""
    if not isinstance(data, ImageData):
        raise ValueError(f"data must be a ddim.data.ImageData, got {type(data).__name__}")
    if len(data) < 2:
        raise ValueError(f"reference statistics need at least 2 images (a covariance); got {len(data)}")
    sha = getattr(extractor, "sha256", None)
    if not isinstance(sha, str):
        raise ValueError(f"the extractor needs a .sha256 string (its weights hash, the cache key); "
                         f"got {type(extractor).__name__} without one")
    features = extract_features(extractor, data, batch_size)
    mu, sigma = gaussian_stats(features)
    return ReferenceStats(features, mu, sigma, data.name, sha, _data_sha256(data))


def _cache_path(cache_dir: Path, name: str, extractor_sha: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return cache_dir / "reference" / f"{safe}-{extractor_sha[:12]}.safetensors"


def _save(stats: ReferenceStats, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "name": stats.name, "extractor_sha256": stats.extractor_sha256,
            "data_sha256": stats.data_sha256, "n": str(stats.n), "d": str(stats.features.shape[1])}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({"features": stats.features.contiguous(), "mu": stats.mu.contiguous(),
               "sigma": stats.sigma.contiguous()}, str(tmp), metadata=meta)
    os.replace(tmp, path)   # atomic: a reader sees the old file or the new one, never a partial one


def _load(path: Path, name: str, extractor_sha: str, data_sha: str) -> Optional[ReferenceStats]:
    """The cached statistics if ``path`` holds exactly these keys, else None (missing, stale, corrupt)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            wanted = {"format": FORMAT, "name": name, "extractor_sha256": extractor_sha, "data_sha256": data_sha}
            if any(meta.get(k) != v for k, v in wanted.items()):
                return None
            t = {k: f.get_tensor(k) for k in ("features", "mu", "sigma")}
    except Exception:   # truncated or foreign file: treat as stale and rebuild
        return None
    n, d = t["features"].shape
    if str(n) != meta.get("n") or t["mu"].shape != (d,) or t["sigma"].shape != (d, d):
        return None
    return ReferenceStats(t["features"], t["mu"], t["sigma"], name, extractor_sha, data_sha, from_cache=True)


def reference_stats(data: Union[str, ImageData] = "fashion-mnist", split: str = "test",
                    extractor: Optional[nn.Module] = None, cache_dir: Union[str, Path, None] = None,
                    data_dir=None, limit: Optional[int] = None, batch_size: int = 500,
                    use_cache: bool = True) -> ReferenceStats:
    """Reference statistics of a real image set, from the cache when it is fresh.

    Args:
        data: a dataset name for ``ddim.data.load_dataset`` (default "fashion-mnist"), or an ImageData
            (then ``split`` and ``data_dir`` are ignored and its ``name`` is the cache key).
        split: "train" or "test".
        extractor: feature module with ``.sha256``; None: the shipped Fashion-MNIST ``FeatureExtractor``.
        cache_dir: root of the cache (see ``default_cache_dir``).
        data_dir: passed to ``load_dataset``.
        limit: use only the first ``limit`` images (>= 2), a deterministic subset; None: all.
        batch_size: images per extractor call.
        use_cache: False computes afresh and neither reads nor writes the cache.
    Returns:
        ReferenceStats; ``from_cache`` says whether it was read from disk.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
        raise ValueError(f"limit must be an int >= 2 (a covariance needs 2 images) or None, got {limit!r}")
    if not isinstance(data, ImageData):
        data = load_dataset(data, data_dir, split=split)
    if limit is not None and limit < len(data):
        data = ImageData(data.images[:limit], None if data.labels is None else data.labels[:limit],
                         data.num_classes, f"{data.name}-first{limit}", data.class_names)
    if len(data) < 2:
        raise ValueError(f"reference statistics need at least 2 images (a covariance); {data.name} has {len(data)}")
    extractor = extractor if extractor is not None else FeatureExtractor()
    if not use_cache:
        return compute_reference(data, extractor, batch_size)
    path = _cache_path(Path(cache_dir) if cache_dir is not None else default_cache_dir(), data.name,
                       str(getattr(extractor, "sha256", "")))
    cached = _load(path, data.name, getattr(extractor, "sha256", None), _data_sha256(data))
    if cached is not None:
        return cached
    stats = compute_reference(data, extractor, batch_size)
    _save(stats, path)
    return stats


def evaluate_images(images, reference: ReferenceStats, extractor: Optional[nn.Module] = None,
                    batch_size: int = 500, **metric_kwargs) -> dict:
    """FID, KID and precision/recall of generated ``images`` against ``reference``.

    Args:
        images: float (N, C, H, W) in [-1, 1] or an ImageData, N >= 2.
        reference: from ``reference_stats``, made with the same extractor (checked by hash).
        extractor: None: the shipped Fashion-MNIST ``FeatureExtractor``.
        metric_kwargs: passed to ``ddim.evaluate.metrics.compute_metrics`` (k, kid_subsets, ...).
    Returns:
        ``compute_metrics``'s dict plus "reference" (its name) and "extractor_sha256".
    """
    extractor = extractor if extractor is not None else FeatureExtractor()
    if getattr(extractor, "sha256", None) != reference.extractor_sha256:
        raise ValueError(f"the reference statistics were made with extractor {reference.extractor_sha256[:12]}, "
                         f"not this one ({str(getattr(extractor, 'sha256', None))[:12]}); recompute them")
    fake = extract_features(extractor, images, batch_size)
    out = compute_metrics(reference.features, fake, real_stats=(reference.mu, reference.sigma), **metric_kwargs)
    return {**out, "reference": reference.name, "extractor_sha256": reference.extractor_sha256}
