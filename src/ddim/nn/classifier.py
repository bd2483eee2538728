"""A time-conditioned noisy classifier p_φ(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

Layout: the UNet's encoder half (``unet.down_path``: patch stem, ResBlocks with the time embedding,
attention where asked, Downsamples), one more ResBlock at the deepest level, then GroupNorm, SiLU,
global average pooling and a linear head to K logits. ADM's classifier is the same encoder with an
attention-pooling head; the mean pool is the cheaper choice at 28×28.

Trained by ``ddim train-classifier`` on x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε at t ~ U{0..T−1} with cross-entropy
(``ddim.train.classifier``); ``ddim.ClassifierGuidance`` reads ∇ₓ log p_φ(y | x_t, t) from it.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .layers import ResBlock, TimeEmbedding
from .unet import MAX_CLASSES, UNetConfig, down_path, encode, init_ddpm_
from .unet_config import from_mapping

__all__ = ["ClassifierConfig", "NoisyClassifier", "CLASSIFIER_KIND", "CLASSIFIER_PRESETS"]

CLASSIFIER_KIND = "noisy-classifier"  # the "kind" key of its config.json (a UNet config has none)


@dataclass(frozen=True)
class ClassifierConfig:
    """Every constructor argument of ``NoisyClassifier``; fields as in ``UNetConfig`` (same meaning and
    checks), plus ``num_classes``, the K classes it predicts."""

    image_size: int = 28
    in_channels: int = 1
    num_classes: int = 10
    base_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0
    norm_groups: int = 8
    norm_eps: float = 1e-6
    patch_size: int = 1

    def __post_init__(self) -> None:
        if (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                or not 2 <= self.num_classes <= MAX_CLASSES):
            raise ValueError(f"num_classes must be an integer >= 2 (at most {MAX_CLASSES:,}), got {self.num_classes!r}")
        enc = self.encoder  # validates every shared field with UNetConfig's checks, lists made tuples there
        for name in ("channel_mult", "attn_resolutions"):
            object.__setattr__(self, name, getattr(enc, name))

    @property
    def encoder(self) -> UNetConfig:
        """The UNet config whose encoder half this classifier is."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "num_classes"}
        return UNetConfig(**d, out_channels=self.in_channels)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"], d["attn_resolutions"] = list(self.channel_mult), list(self.attn_resolutions)
        return {"kind": CLASSIFIER_KIND, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ClassifierConfig":
        d = dict(d)
        if d.pop("kind", CLASSIFIER_KIND) != CLASSIFIER_KIND:
            raise ValueError(f"not a noisy-classifier config (kind must be {CLASSIFIER_KIND!r})")
        return from_mapping(cls, d)


class NoisyClassifier(nn.Module):
    """log p_φ(y | x_t, t) up to a constant: ``classifier(x_t, t)`` -> (B, K) logits. Build with keyword
    arguments named as in ``ClassifierConfig`` or with ``NoisyClassifier.from_config(cfg)``."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        c = ClassifierConfig.from_dict(kwargs)
        self._config, u = c, c.encoder
        p2 = c.patch_size**2
        self.conv_in = nn.Conv2d(c.in_channels * p2, c.base_channels, 3, padding=1)
        self.time_embed = TimeEmbedding(c.base_channels, u.embed_dim)
        self.down, skips = down_path(u)
        ch = skips[-1]
        self.mid = ResBlock(ch, ch, u.embed_dim, c.dropout, c.norm_groups, c.norm_eps)
        self.norm_out = nn.GroupNorm(c.norm_groups, ch, eps=c.norm_eps)
        self.head = nn.Linear(ch, c.num_classes)
        init_ddpm_(self)
        nn.init.zeros_(self.head.weight)  # uniform p(y | x_t) at the start

    @classmethod
    def from_config(cls, config: ClassifierConfig | Mapping[str, Any]) -> "NoisyClassifier":
        return cls(**(config.to_dict() if isinstance(config, ClassifierConfig) else config))

    @property
    def config(self) -> ClassifierConfig:
        return self._config

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) x_t; t: (B,) training steps (a number is broadcast) -> (B, K) logits in x's dtype."""
        c = self._config
        if x.ndim != 4 or x.shape[1] != c.in_channels or x.shape[2:] != (c.image_size, c.image_size):
            raise ValueError(f"x must be (B, {c.in_channels}, {c.image_size}, {c.image_size}), got {tuple(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(x.shape[0]) if t.ndim == 0 else t
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
        emb = self.time_embed(t)
        h0 = self.conv_in(x if c.patch_size == 1 else nn.functional.pixel_unshuffle(x, c.patch_size))
        h = self.mid(encode(self.down, h0, emb)[-1], emb)
        return self.head(nn.functional.silu(self.norm_out(h)).mean(dim=(2, 3)))


NoisyClassifier.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(ClassifierConfig).parameters.values()])

CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    # 28×28 grayscale (the bundled Fashion-MNIST model's data): 2×2 patch stem, levels at 14 and 7
    # (32, 64 channels), attention at 7; about 0.3 M parameters (0.6 MB as fp16).
    "fashion": ClassifierConfig(image_size=28, in_channels=1, num_classes=10, base_channels=32, channel_mult=(1, 2),
                                num_res_blocks=2, attn_resolutions=(7,), norm_groups=8, patch_size=2),
}
