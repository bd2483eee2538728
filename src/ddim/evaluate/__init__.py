"""Evaluation: feature extractors, FID / KID / precision-recall, cached reference statistics.

    from ddim.evaluate import FeatureExtractor, reference_stats, evaluate_images
    ref = reference_stats("fashion-mnist", split="test")        # cached under ~/.cache/ddim
    evaluate_images(samples, ref)                               # samples: float (N, 1, 28, 28) in [-1, 1]
    -> {"fid": ..., "kid_mean": ..., "precision": ..., "recall": ..., ...}

Report ``extractor_sha256`` with the numbers: they are comparable only under the same weights.
"""

from .features import (CLASSIFIER_RECORD, CLASSIFIER_WEIGHTS, FashionClassifier, FeatureExtractor,
                       InceptionFeatureExtractor, extract_features, file_sha256, load_classifier)
from .metrics import (class_agreement, compute_metrics, fid, fid_bootstrap_std, frechet_distance, gaussian_stats,
                      kid, knn_radii, precision_recall, wilson_interval)
from .reference import ReferenceStats, compute_reference, default_cache_dir, evaluate_images, reference_stats

__all__ = ["CLASSIFIER_RECORD", "CLASSIFIER_WEIGHTS", "FashionClassifier", "FeatureExtractor",
           "InceptionFeatureExtractor", "extract_features", "file_sha256", "load_classifier",
           "compute_metrics", "fid", "fid_bootstrap_std", "frechet_distance", "gaussian_stats", "kid", "knn_radii",
           "precision_recall", "class_agreement", "wilson_interval",
           "ReferenceStats", "compute_reference", "default_cache_dir", "evaluate_images", "reference_stats"]
