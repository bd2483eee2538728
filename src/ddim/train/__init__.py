"""Training: the DDPM loss (pure), the EMA of weights, configs, and the Trainer that ties them together."""

from .classifier import ClassifierTrainer, classifier_accuracy
from ..config import DataConfig, RunConfig, TrainConfig, resolve_model_config
from .ema import EMA, ema_decay
from .loss import Draws, classifier_loss, diffusion_loss, draw, drop_labels, min_snr_weight, training_loss
from .run import run_training
from .trainer import Trainer, TrainResult, load_data

__all__ = ["TrainConfig", "DataConfig", "RunConfig", "resolve_model_config", "EMA", "ema_decay", "Draws", "draw",
           "drop_labels", "min_snr_weight", "diffusion_loss", "classifier_loss", "training_loss", "Trainer", "TrainResult",
           "load_data", "run_training", "ClassifierTrainer", "classifier_accuracy"]
