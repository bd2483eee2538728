"""FID, KID, precision/recall (against closed forms and torchmetrics), on real Fashion-MNIST features
(corruption monotonicity), and the on-disk cache of reference statistics."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ddim.data import ImageData, load_dataset
from fmnist import needs_full_fmnist
from ddim.evaluate import (FeatureExtractor, class_agreement, compute_metrics, evaluate_images, extract_features, fid,
                           fid_bootstrap_std, frechet_distance, gaussian_stats, kid, precision_recall, reference_stats,
                           wilson_interval)
from ddim.evaluate.reference import _cache_path

N_REAL = 2000   # images per set in the real-data tests: enough for a stable 128-d covariance, fast on a CPU


class Identity(torch.nn.Module):
    """Features in, features out: lets torchmetrics' image metrics run on given features."""

    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------------------- oracles

def test_fid_matches_closed_form_for_diagonal_gaussians():
    # Commuting (diagonal) covariances: tr (Σ1 Σ2)^{1/2} = Σ √(s1 s2), so FID = ‖Δμ‖² + Σ (√s1 − √s2)².
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 9.0]), torch.tensor([4.0, 1.0, 9.0])
    expected = (mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum()
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(float(expected), rel=1e-12)   # 5 + 1 + 1 = 7


def test_fid_matches_torchmetrics_on_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = randn(600, 24, seed=1), randn(500, 24, seed=2) @ (torch.eye(24) + 0.2 * randn(24, 24, seed=3)) + 0.3
    tm = FrechetInceptionDistance(feature=Identity(24))
    tm.update(a, real=True)
    tm.update(b, real=False)
    assert fid(a, b) == pytest.approx(float(tm.compute()), rel=1e-6)
    assert fid(a, a) == pytest.approx(0.0, abs=1e-9)
    assert fid(a, b) == pytest.approx(fid(b, a), rel=1e-9)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_matches_torchmetrics_when_subsets_are_whole_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    # With subset_size = N every subset is a permutation of the whole set, and the unbiased MMD² is
    # permutation invariant, so the seeded draws and torchmetrics' global-RNG draws must agree.
    a, b = randn(300, 16, seed=4), randn(300, 16, seed=5) * 1.2 + 0.1
    tm = KernelInceptionDistance(feature=Identity(16), subsets=2, subset_size=300)
    tm.update(a, real=True)
    tm.update(b, real=False)
    mean, std = kid(a, b, subsets=2, subset_size=300)
    assert mean == pytest.approx(float(tm.compute()[0]), rel=1e-6)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_precision_recall_on_a_line():
    # Real points 0..9 with k = 1: every ball has radius 1 (endpoints too: 0's nearest other is 1).
    real = torch.arange(10.0)[:, None]
    fake = torch.tensor([[4.5], [20.0], [9.9], [-3.0]])
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == 0.5   # 4.5 and 9.9 lie within 1 of a real point; 20 and −3 do not
    # Fake balls (k = 1): 4.5 → 5.4, 9.9 → 5.4, 20 → 10.1, −3 → 7.5: every real point in 0..9 is covered.
    assert recall == 1.0
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)


def test_fid_bootstrap_std_shrinks_as_one_over_root_n():
    """FID's sampling spread at N samples: for a shifted Gaussian it is dominated by the mean term, whose
    spread falls as 1/√N, so 16× the samples give about 1/4 of the std; the estimate is seeded."""
    d = 8
    mu_r, sigma_r = torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)
    small, large = randn(200, d, seed=8) + 0.5, randn(3200, d, seed=9) + 0.5
    s_small, s_large = fid_bootstrap_std(mu_r, sigma_r, small), fid_bootstrap_std(mu_r, sigma_r, large)
    assert s_small == fid_bootstrap_std(mu_r, sigma_r, small) and s_small != fid_bootstrap_std(mu_r, sigma_r, small,
                                                                                                  seed=1)
    # the mean term ‖μ̂ − μ_r‖² has std 2‖Δμ‖/√N = 2·√2/√200 = 0.2 at N = 200, 0.05 at N = 3200
    assert 0.1 < s_small < 0.4 and 2.5 < s_small / s_large < 6.5
    with pytest.raises(ValueError, match="rounds must be an int >= 2"):
        fid_bootstrap_std(mu_r, sigma_r, small, rounds=1)


def test_metrics_are_deterministic():
    a, b = randn(400, 32, seed=6), randn(350, 32, seed=7) + 0.5
    first = compute_metrics(a, b, kid_subsets=20, kid_subset_size=200)
    assert compute_metrics(a, b, kid_subsets=20, kid_subset_size=200) == first
    assert compute_metrics(a.float(), b.float(), kid_subsets=20, kid_subset_size=200)["fid"] == pytest.approx(
        first["fid"], rel=1e-5)
    assert kid(a, b, subsets=5, subset_size=100, seed=1) != kid(a, b, subsets=5, subset_size=100, seed=2)
    assert first["fid"] > 0 and first["kid_mean"] > 0 and 0 <= first["precision"] <= 1


@pytest.mark.parametrize("call, match", [
    (lambda: fid(randn(1, 4), randn(5, 4)), "1 samples; at least 2"),
    (lambda: fid(randn(5, 4), randn(5, 3)), "differ in width"),
    (lambda: gaussian_stats(randn(5)), r"features \(N, d\)"),
    (lambda: fid(torch.full((3, 2), math.nan), randn(5, 2)), "NaN or Inf"),
    (lambda: gaussian_stats(torch.zeros(3, 2, dtype=torch.int64)), "float tensor"),
    (lambda: kid(randn(50, 4), randn(50, 4), subset_size=100), "50 samples; at least 100"),
    (lambda: kid(randn(50, 4), randn(50, 4), subsets=0, subset_size=10), "subsets must be"),
    (lambda: precision_recall(randn(50, 4), randn(50, 4), k=0), "k must be"),
    (lambda: precision_recall(randn(3, 4), randn(50, 4), k=3), "3 samples; at least 4"),
    (lambda: frechet_distance(randn(3), torch.eye(3), randn(2), torch.eye(2)), "one d"),
    (lambda: wilson_interval(5, 4), "0 <= k <= n"),
    (lambda: wilson_interval(0, 0), "n >= 1"),
    (lambda: class_agreement(torch.zeros(3), torch.zeros(4), 2), "of one length, got 3 and 4"),
])
def test_bad_input_is_a_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("k, n", [(0, 10), (0, 11), (3, 10), (881, 1000), (1000, 1000), (12, 12), (1, 1)])
def test_wilson_interval_is_the_score_tests_acceptance_region(k, n):
    """Its ends are the p where the score statistic |p̂ − p| / √(p(1−p)/n) equals z (clipped to [0, 1])."""
    z, p_hat = 1.96, k / n
    low, high = wilson_interval(k, n)
    assert 0 <= low <= p_hat <= high <= 1
    for end in (low, high):
        if 0 < end < 1:
            assert (p_hat - end) ** 2 == pytest.approx(z * z * end * (1 - end) / n, rel=1e-9)
    if k == 0:
        assert low == 0 and high == pytest.approx(z * z / (n + z * z))  # not the empty [0, 0] of p̂ ± z·SE
    if k == n:
        assert high == 1 and low == pytest.approx(n / (n + z * z))


def test_wilson_interval_covers_about_95_percent():
    """Exact coverage under Binomial(n, p), summed over k: near the nominal 95 % for moderate n."""
    for n, p in ((200, 0.5), (1000, 0.9), (100, 0.3)):
        k = torch.arange(n + 1, dtype=torch.float64)
        pmf = torch.exp(torch.lgamma(torch.tensor(n + 1.0)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
                        + k * math.log(p) + (n - k) * math.log(1 - p))
        covered = torch.tensor([lo <= p <= hi for lo, hi in (wilson_interval(int(i), n) for i in k)])
        assert 0.93 < float(pmf[covered].sum()) < 0.97, (n, p)


def test_class_agreement_counts_overall_and_per_class():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2, 2, 2])
    got = class_agreement(predicted, labels, num_classes=4)
    assert got["value"] == 6 / 8 and got["n"] == 8
    assert got["per_class"] == [0.5, round(2 / 3, 4), 1.0, None]
    assert got["low"] == pytest.approx(0.4093, abs=1e-4) and got["high"] == pytest.approx(0.9285, abs=1e-4)  # by hand


# ---------------------------------------------------------------------------------------- real data

def gaussian_blur(x, sigma):
    """Separable Gaussian blur of (N, 1, H, W) with std ``sigma`` pixels (edges replicated)."""
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1.0).square() / (2 * sigma**2))
    k = (k / k.sum()).view(1, 1, 1, -1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.transpose(-1, -2))


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor()


@pytest.fixture(scope="module")
def held_out_images():
    return load_dataset("fashion-mnist", split="test").to_float(slice(0, N_REAL))  # fewer with the subset


@pytest.fixture(scope="module")
def held_out_features(extractor, held_out_images):
    return extract_features(extractor, held_out_images)


@pytest.fixture(scope="module")
def real_fid(extractor, held_out_features):
    """FID between 2,000 test and 2,000 train images: the floor set by finite samples."""
    train = load_dataset("fashion-mnist", split="train")
    return fid(extract_features(extractor, train.to_float(slice(0, N_REAL))), held_out_features)


@needs_full_fmnist
def test_fid_between_real_splits_is_small(real_fid):
    # Seen 0.113 with the shipped weights (2,000 vs 2,000 images; finite-sample bias, mostly), while
    # the mildest corruptions below score 0.41 (noise 0.05) and 0.57 (blur 0.5).
    print(f"FID(test[:{N_REAL}], train[:{N_REAL}]) = {real_fid:.4f}")
    assert 0 < real_fid < 0.3


@needs_full_fmnist
@pytest.mark.parametrize("kind, levels", [("blur", (0.5, 1.0, 1.5, 2.0)), ("noise", (0.05, 0.1, 0.2, 0.4))])
def test_fid_grows_with_corruption_strength(extractor, held_out_images, held_out_features, real_fid, kind, levels):
    # blur: Gaussian std in pixels; noise: std of added N(0, 1) on the [-1, 1] scale, then clamped.
    # Seen: blur 0.57, 5.57, 13.3, 20.0; noise 0.41, 2.02, 8.47, 19.3.
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(held_out_images.shape, generator=g)
    scores = []
    for level in levels:
        x = gaussian_blur(held_out_images, level) if kind == "blur" else (held_out_images + level * noise).clamp(-1, 1)
        scores.append(fid(held_out_features, extract_features(extractor, x)))
    print(f"FID under {kind} {levels}: {[round(s, 3) for s in scores]}")
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert scores[0] > 2 * real_fid   # even the mildest level is told apart from another real sample


# ---------------------------------------------------------------------------------------- cache

class Renamed(torch.nn.Module):
    """The shipped extractor under another weights hash (what new weights would look like to the cache)."""

    def __init__(self, inner, sha256):
        super().__init__()
        self.inner, self.sha256, self.num_features = inner, sha256, inner.num_features

    def forward(self, x):
        return self.inner(x)


@pytest.fixture(scope="module")
def small_set():
    data = load_dataset("fashion-mnist", split="test")
    return ImageData(data.images[:200], data.labels[:200], data.num_classes, "fashion-mnist/test-first200")


def test_cache_is_reused_and_recomputed_when_the_hash_changes(tmp_path, extractor, small_set):
    first = reference_stats(small_set, extractor=extractor, cache_dir=tmp_path)
    again = reference_stats(small_set, extractor=extractor, cache_dir=tmp_path)
    assert not first.from_cache and again.from_cache
    for field in ("features", "mu", "sigma"):
        assert torch.equal(getattr(first, field), getattr(again, field))
    assert first.n == 200 and first.extractor_sha256 == extractor.sha256

    # Same 12-character prefix, hence the same cache file, but another full hash: stale, recomputed.
    clash = Renamed(extractor, extractor.sha256[:12] + "0" * 52)
    path = _cache_path(tmp_path, small_set.name, extractor.sha256)
    assert _cache_path(tmp_path, small_set.name, clash.sha256) == path
    stale = reference_stats(small_set, extractor=clash, cache_dir=tmp_path)
    assert not stale.from_cache and stale.extractor_sha256 == clash.sha256
    assert reference_stats(small_set, extractor=clash, cache_dir=tmp_path).from_cache
    assert not reference_stats(small_set, extractor=extractor, cache_dir=tmp_path).from_cache

    # Other image data under the same name is stale too; a corrupt file is rebuilt, not trusted.
    flipped = dataclasses.replace(small_set, images=small_set.images.flip(-1))
    assert not reference_stats(flipped, extractor=extractor, cache_dir=tmp_path).from_cache
    path.write_bytes(b"garbage")
    rebuilt = reference_stats(small_set, extractor=extractor, cache_dir=tmp_path)
    assert not rebuilt.from_cache and torch.equal(rebuilt.features, first.features)


def test_reference_by_name_with_limit_and_evaluation(tmp_path, extractor, held_out_images):
    ref = reference_stats("fashion-mnist", split="test", extractor=extractor, cache_dir=tmp_path, limit=300)
    assert ref.name == "fashion-mnist/test-first300" and ref.n == 300
    out = evaluate_images(held_out_images[:300], ref, extractor, kid_subsets=5)
    assert out["fid"] == pytest.approx(0.0, abs=1e-6) and out["precision"] == out["recall"] == 1.0
    assert out["extractor_sha256"] == extractor.sha256
    with pytest.raises(ValueError, match="made with extractor"):
        evaluate_images(held_out_images[:300], ref, Renamed(extractor, "f" * 64))


def test_reference_needs_two_images(tmp_path, extractor, small_set):
    one = ImageData(small_set.images[:1], name="one")
    with pytest.raises(ValueError, match="at least 2 images"):
        reference_stats(one, extractor=extractor, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="limit must be an int >= 2"):
        reference_stats(small_set, extractor=extractor, cache_dir=tmp_path, limit=1)
