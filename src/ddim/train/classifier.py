"""Training the noisy classifier of classifier guidance with the Trainer's loop and safeguards.

Everything but the network and the loss is ``Trainer``'s: the same batches and noise draws per
(seed, step), AdamW with warm-up/decay, EMA, atomic checkpoints, exact resume, SIGINT/SIGTERM handling,
metrics.jsonl. The loss is ``classifier_loss`` (cross-entropy on x_t at t ~ U{0..T−1}); no sample grids.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..config import RunConfig
from .loss import classifier_loss
from .trainer import Trainer

__all__ = ["ClassifierTrainer", "classifier_accuracy"]


class ClassifierTrainer(Trainer):
    """``Trainer`` for a ``RunConfig`` whose model is a ``ClassifierConfig`` (arguments as ``Trainer``'s)."""

    def __init__(self, config: RunConfig, out_dir, **kwargs):
        if not config.is_classifier:
            raise ValueError("ClassifierTrainer trains a noisy classifier: the config's model must be a ClassifierConfig")
        if config.train.label_dropout:
            raise ValueError(f"label_dropout must be 0 for a classifier (every label is its target), "
                             f"got {config.train.label_dropout}")
        super().__init__(config, out_dir, **kwargs)

    def build_model(self) -> torch.nn.Module:
        from ..nn import NoisyClassifier

        return NoisyClassifier.from_config(self.config.model)

    def compute_loss(self, x0, t, eps, labels) -> torch.Tensor:
        return classifier_loss(self.net, self.schedule, x0, t, eps, labels)

    def sample_grid(self, path=None) -> Optional[torch.Tensor]:
        return None  # a classifier draws no images


@torch.no_grad()
def classifier_accuracy(classifier, schedule, images: torch.Tensor, labels: torch.Tensor, steps, seed: int = 0,
                        batch_size: int = 500) -> list[float]:
    """Top-1 accuracy of a noisy classifier on x_t from the given clean images at each t in ``steps``.

    Args:
        classifier: ``classifier(x_t, t)`` -> (B, K) logits. schedule: its ``ddim.Schedule``.
        images: (N, C, H, W) float in [-1, 1]. labels: (N,) int64.
        steps: training steps t to test at; the noise for image i is the same at every t (seeded by ``seed``).
    Returns:
        one accuracy in [0, 1] per t.
    """
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(images.shape, generator=g)
    dev = next(classifier.parameters()).device if isinstance(classifier, torch.nn.Module) else images.device
    out = []
    for t in steps:
        abar = float(schedule.alphas_cumprod[int(t)])
        hits = 0
        for i in range(0, len(images), batch_size):
            x = (abar**0.5 * images[i:i + batch_size] + (1 - abar) ** 0.5 * eps[i:i + batch_size]).to(dev)
            tt = torch.full((x.shape[0],), int(t), dtype=torch.int64, device=dev)
            hits += int((classifier(x, tt).argmax(1).cpu() == labels[i:i + batch_size]).sum())
        out.append(hits / len(images))
    return out
