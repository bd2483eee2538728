"""One call from a ``RunConfig`` to a finished run: the trainer its model asks for, to the end."""

from __future__ import annotations

from ..config import RunConfig
from ..distributed import RENDEZVOUS_TIMEOUT, shutdown
from .classifier import ClassifierTrainer
from .trainer import Trainer, TrainResult

__all__ = ["run_training"]


def run_training(config: RunConfig, out_dir, *, data=None, device: str = "auto", resume: bool = False,
                 quiet: bool = False, dist_timeout: float = RENDEZVOUS_TIMEOUT) -> TrainResult:
    """Build a ``Trainer`` (a ``ClassifierTrainer`` for a classifier config) and run it to the end (leaving
    the process group, if any, afterwards)."""
    cls = ClassifierTrainer if config.is_classifier else Trainer
    try:
        return cls(config, out_dir, data=data, device=device, resume=resume, quiet=quiet,
                   dist_timeout=dist_timeout).fit()
    finally:
        shutdown()
