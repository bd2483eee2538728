"""Sample-quality metrics computed from features (N, d): FID, KID and precision/recall.

    FID   Heusel et al. 2017: ‖μ_r − μ_g‖² + tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2}) between Gaussians fitted
          to the two feature sets.                                            lower is better, >= 0
          Its spread from the finite sample is estimated by bootstrap (``fid_bootstrap_std``).
    KID   Bińkowski et al. 2018: unbiased MMD² with the cubic kernel k(x, y) = (xᵀy / d + 1)³,
          averaged over random equal-size subsets (mean and std).             lower is better, ~0 for equal sets
    P/R   Kynkäänniemi et al. 2019: each set's manifold is the union of balls around its points with
          radius = distance to the k-th nearest neighbour (k = 3) within the set; precision is the
          fraction of generated points inside the real manifold, recall the fraction of real points
          inside the generated one.                                           in [0, 1], higher is better
    agreement   the fraction of class-conditional samples a classifier assigns to the asked class, with a
          Wilson score interval (Wilson 1927) for its uncertainty from n samples, and per class.

Why these functions take features and not images, and how torchmetrics is used:
  torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` are stateful ``Metric``s that
  extract the real set's features from images on every run. Here the real side comes from reference
  statistics cached on disk (``ddim.evaluate.reference``), so the natural input is two feature sets.
  - FID from (μ, Σ) is a few lines; we evaluate tr (Σ_r Σ_g)^{1/2} in the symmetric form
    tr (A Σ_g A)^{1/2} with A = Σ_r^{1/2} (``eigh`` on symmetric PSD matrices, float64), which cannot
    give the complex or negative eigenvalues ``eigvals(Σ_r Σ_g)`` (torchmetrics' form) can. The tests
    check it against torchmetrics' ``FrechetInceptionDistance`` on the same features.
  - KID uses torchmetrics' own kernel and unbiased MMD estimator (``torchmetrics.image.kid.poly_mmd``);
    only the subset draws are ours, from a seeded generator, so results are deterministic (torchmetrics'
    ``KernelInceptionDistance`` draws them from the global RNG).
  - torchmetrics has no precision/recall for generative models, so that one is written here.
All three are deterministic: the same inputs (and ``seed``) give the same numbers.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["gaussian_stats", "frechet_distance", "fid", "fid_bootstrap_std", "kid", "knn_radii", "precision_recall",
           "compute_metrics", "wilson_interval", "class_agreement"]

_CHUNK_ELEMENTS = 1 << 23   # distance-matrix entries held at once (64 MiB of float64)


def _check_features(f, name: str, min_n: int = 2) -> torch.Tensor:
    """A (N, d) floating tensor with N >= min_n, as float64 on the CPU."""
    if not isinstance(f, torch.Tensor) or f.ndim != 2 or not f.is_floating_point():
        got = f"{f.dtype} {tuple(f.shape)}" if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(f"{name} must be a float tensor of features (N, d); got {got}")
    if f.shape[0] < min_n:
        raise ValueError(f"{name} has {f.shape[0]} samples; at least {min_n} are needed")
    if not bool(torch.isfinite(f).all()):
        raise ValueError(f"{name} holds NaN or Inf; features must be finite")
    return f.detach().to("cpu", torch.float64)


def _check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"feature sets differ in width: d = {a.shape[-1]} and {b.shape[-1]}; "
                         f"both must come from the same extractor")


def gaussian_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and unbiased covariance (d, d), float64, of features (N, d) with N >= 2."""
    f = _check_features(features, "features")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _psd_sqrt(a: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues -> 0)."""
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mus (d,), sigmas (d, d).

    tr (Σ1 Σ2)^{1/2} = tr (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}: the eigenvalues of Σ1 Σ2 equal those of the
    symmetric PSD matrix on the right, whose square root ``eigh`` computes stably. Clamped at 0.
    """
    mu1, mu2, s1, s2 = (t.detach().to("cpu", torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"means must be (d,) and covariances (d, d) with one d; got {tuple(mu1.shape)}, "
                         f"{tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}")
    return _frechet(mu1, s1, _psd_sqrt(s1), mu2, s2)


def _frechet(mu1: torch.Tensor, s1: torch.Tensor, r1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """``frechet_distance`` of checked float64 inputs, with r1 = Σ1^{1/2} given (reused across calls)."""
    tr_sqrt = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)


def fid(real_features: torch.Tensor, fake_features: torch.Tensor) -> float:
    """FID between two feature sets (N_r, d) and (N_g, d), each with at least 2 samples."""
    _check_same_dim(real_features, fake_features)
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))


def fid_bootstrap_std(mu_r: torch.Tensor, sigma_r: torch.Tensor, fake_features: torch.Tensor, rounds: int = 50,
                      seed: int = 0) -> float:
    """Standard deviation of FID over ``rounds`` resamples (with replacement) of the generated features.

    It measures how much the FID of N_g samples moves with the samples drawn: two cells whose FIDs
    differ by less than about two of these are not told apart by this N_g. The real side (μ_r, Σ_r)
    is held fixed (reference statistics over many images). Resampling with replacement repeats points,
    which biases each FID upward a little; its spread is what is reported.

    Args:
        mu_r, sigma_r: (d,), (d, d) reference statistics. fake_features: (N_g, d), N_g >= 2.
        rounds: number of resamples (>= 2). seed: seeds them, so the result is a pure function of the inputs.
    Returns:
        the sample standard deviation of the ``rounds`` FIDs.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 2:
        raise ValueError(f"rounds must be an int >= 2, got {rounds!r}")
    fake = _check_features(fake_features, "fake_features")
    _check_same_dim(mu_r[None], fake)
    mu_r, sigma_r = (t.detach().to("cpu", torch.float64) for t in (mu_r, sigma_r))
    root = _psd_sqrt(sigma_r)   # once: the real side does not change between resamples
    g = torch.Generator().manual_seed(seed)
    values = [_frechet(mu_r, sigma_r, root, *gaussian_stats(fake[torch.randint(fake.shape[0], (fake.shape[0],),
                                                                                 generator=g)]))
              for _ in range(rounds)]
    return float(torch.tensor(values, dtype=torch.float64).std())


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: Optional[float] = None, coef: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of the unbiased MMD² over ``subsets`` random subsets.

    Args:
        real_features, fake_features: (N_r, d), (N_g, d); both need N >= subset_size.
        subsets: number of subset pairs drawn (torchmetrics' default 100).
        subset_size: samples per subset, drawn without replacement (torchmetrics' default 1000).
        degree, gamma, coef: polynomial kernel (xᵀy·gamma + coef)^degree; gamma None means 1/d.
        seed: seeds the subset draws, so the result is a pure function of the inputs.
    Returns:
        (mean, population std) over subsets, as torchmetrics' ``KernelInceptionDistance`` reports them.
    """
    from torchmetrics.image.kid import poly_mmd

    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be a positive int, got {subsets!r}")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an int >= 2, got {subset_size!r}")
    real = _check_features(real_features, "real_features", subset_size)
    fake = _check_features(fake_features, "fake_features", subset_size)
    _check_same_dim(real, fake)
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        r = real[torch.randperm(real.shape[0], generator=g)[:subset_size]]
        f = fake[torch.randperm(fake.shape[0], generator=g)[:subset_size]]
        scores.append(poly_mmd(r, f, degree, gamma, coef))
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N_a, N_b), float64, never negative."""
    d2 = a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T
    return d2.clamp_(min=0)


def _row_chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMENTS // max(n_cols, 1))
    return (slice(s, min(s + step, n_rows)) for s in range(0, n_rows, step))


def knn_radii(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Squared distance from each point (N, d) to its k-th nearest other point: (N,) float64."""
    f = _check_features(features, "features", k + 1)
    out = torch.empty(f.shape[0], dtype=torch.float64)
    for rows in _row_chunks(f.shape[0], f.shape[0]):
        d2 = _pairwise_sq_dist(f[rows], f)
        # k + 1 smallest: the first is the point itself (distance 0), so the (k+1)-th is the k-th other.
        out[rows] = d2.topk(k + 1, dim=1, largest=False).values[:, k]
    return out


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> float:
    """Fraction of query points inside at least one ball (support[j], radius √radii[j])."""
    inside = 0
    for rows in _row_chunks(queries.shape[0], support.shape[0]):
        inside += int((_pairwise_sq_dist(queries[rows], support) <= radii).any(1).sum())
    return inside / queries.shape[0]


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Args:
        real_features, fake_features: (N_r, d), (N_g, d); each set needs more than k samples.
            The paper uses equal sizes (radii depend on the sample density, hence on N).
        k: neighbour defining each ball's radius (the paper's k = 3).
    Returns:
        (precision, recall), each in [0, 1].
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    real = _check_features(real_features, "real_features", k + 1)
    fake = _check_features(fake_features, "fake_features", k + 1)
    _check_same_dim(real, fake)
    precision = _coverage(fake, real, knn_radii(real, k))
    recall = _coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def compute_metrics(real_features: torch.Tensor, fake_features: torch.Tensor, real_stats=None, k: int = 3,
                    kid_subsets: int = 100, kid_subset_size: int = 1000, fid_rounds: int = 50,
                    seed: int = 0) -> dict:
    """FID, KID and precision/recall of ``fake_features`` against ``real_features`` in one dict.

    Args:
        real_features, fake_features: (N_r, d), (N_g, d) from the same extractor.
        real_stats: optional precomputed (μ, Σ) of the real set (e.g. from reference statistics
            over more images than ``real_features`` holds); None computes them from real_features.
        k: precision/recall neighbourhood size.
        kid_subsets, kid_subset_size: KID subsets; the size is capped at min(N_r, N_g) so that small
            runs still get a KID (the cap is reported as "kid_subset_size").
        fid_rounds: bootstrap resamples for "fid_std" (``fid_bootstrap_std``).
        seed: KID subset draws and bootstrap resamples.
    Returns:
        {"fid", "fid_std", "kid_mean", "kid_std", "kid_subset_size", "precision", "recall", "k", "n_real",
        "n_fake", "feature_dim"}: plain floats and ints, ready for JSON.
    """
    fake = _check_features(fake_features, "fake_features")
    real = _check_features(real_features, "real_features")
    _check_same_dim(real, fake)
    mu_r, sigma_r = real_stats if real_stats is not None else gaussian_stats(real)
    size = min(kid_subset_size, real.shape[0], fake.shape[0])
    kid_mean, kid_std = kid(real, fake, kid_subsets, size, seed=seed)
    precision, recall = precision_recall(real, fake, k)
    fid_value = frechet_distance(mu_r, sigma_r, *gaussian_stats(fake))
    fid_std = fid_bootstrap_std(mu_r, sigma_r, fake, fid_rounds, seed)
    return {"fid": fid_value, "fid_std": fid_std, "kid_mean": kid_mean, "kid_std": kid_std,
            "kid_subset_size": size, "precision": precision, "recall": recall, "k": k, "n_real": real.shape[0], "n_fake": fake.shape[0],
            "feature_dim": real.shape[1]}


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion k/n (Wilson 1927):
    (p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n); z = 1.96: 95 %. Unlike p̂ ± z √(p̂(1−p̂)/n) it stays
    inside [0, 1] and is not empty at k = 0 or n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(k, bool) or not isinstance(k, int) \
            or not 0 <= k <= n:
        raise ValueError(f"need integers 0 <= k <= n with n >= 1, got k={k!r}, n={n!r}")
    p, z2 = k / n, z * z
    centre, half = p + z2 / (2 * n), z * (p * (1 - p) / n + z2 / (4 * n * n)) ** 0.5
    low, high = (centre - half) / (1 + z2 / n), (centre + half) / (1 + z2 / n)
    # exact ends where rounding would leave p̂ outside (k = 0 gave low = 2e-17 at n = 11)
    return (0.0 if k == 0 else min(low, p)), (1.0 if k == n else max(high, p))


def class_agreement(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """How often a classifier's ``predicted`` classes (N,) match the asked ``labels`` (N,).

    Returns {"value": fraction, "low"/"high": its 95 % Wilson interval, "n": N, "per_class": [fraction of
    the images asked as class c, or None where none were]}."""
    predicted, labels = torch.as_tensor(predicted).flatten(), torch.as_tensor(labels).flatten()
    if predicted.shape != labels.shape or labels.numel() == 0:
        raise ValueError(f"predicted and labels must be non-empty and of one length, got {predicted.numel()} "
                         f"and {labels.numel()}")
    hits = predicted == labels
    k, n = int(hits.sum()), hits.numel()
    low, high = wilson_interval(k, n)
    per_class = [round(float(hits[labels == c].float().mean()), 4) if (labels == c).any() else None
                 for c in range(num_classes)]
    return {"value": k / n, "low": low, "high": high, "n": n, "per_class": per_class}
