"""diffusers' own ``UNet2DModel`` behind our ``model(x, t[, labels])`` interface.

For the configurations ``diffusers_config`` cannot map onto our UNet (NCSN++'s skip blocks with FIR
resampling, other activations, ...). Models whose class input is not a label table ("timestep" or
"identity" class embeddings) are refused: ddim can only hand a network class indices. Needs diffusers
(``pip install "ddim[diffusers]"``); the rest of ddim (samplers, guidance, inversion, evaluation) reads
only ``.config.image_size / in_channels / num_classes`` and ``.null_label``, so it runs these models
unchanged, without our fast path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["ForeignUNetConfig", "DiffusersUNet"]


@dataclass(frozen=True)
class ForeignUNetConfig:
    """What ddim needs to know of a network it runs but did not build: image shape, classes, time input
    ("positional" steps or "fourier" noise levels), plus the diffusers config (sorted JSON text, so the
    config stays hashable)."""

    image_size: int
    in_channels: int
    out_channels: int
    num_classes: int | None
    time_embedding: str
    diffusers_json: str

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> "ForeignUNetConfig":
        """What ddim reads of a diffusers UNet config, checked (before the network is built): a square sample
        size, 1-64 channels, and classes only as a label table."""
        kind = config.get("class_embed_type")
        if kind is not None:
            raise ValueError(f"class_embed_type={kind!r} takes per-call class inputs that ddim cannot supply "
                             "(allowed: null, with num_class_embeds for a label table)")
        size = config.get("sample_size")
        if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
            size = size[0]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"sample_size must be a positive integer (or a square [n, n]) to sample, got {size!r}")
        n = config.get("num_class_embeds")
        if n is not None and (type(n) is not int or n < 2):
            raise ValueError(f"num_class_embeds must be None or an integer >= 2 (one row per class, the last ∅), "
                             f"got {n!r}")
        channels = [config.get(k, 3) for k in ("in_channels", "out_channels")]
        if any(type(c) is not int or not 1 <= c <= 64 for c in channels):
            raise ValueError(f"in_channels and out_channels must be integers in [1, 64], got {channels}")
        return cls(image_size=size, in_channels=channels[0], out_channels=channels[1],
                   num_classes=None if n is None else n - 1,
                   time_embedding=str(config.get("time_embedding_type", "positional")),
                   diffusers_json=json.dumps(dict(config), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        return {"diffusers": json.loads(self.diffusers_json), "image_size": self.image_size,
                "in_channels": self.in_channels, "out_channels": self.out_channels, "num_classes": self.num_classes,
                "time_embedding": self.time_embedding}


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` called as ``model(x, t, labels=None)`` -> (B, C_out, H, W).

    Labels follow our convention: a table of N rows gives ``num_classes = N − 1`` and ``labels=None``
    means row N − 1 (the null label). ``load_diffusers_unet`` builds it where no native form exists.
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self._config = ForeignUNetConfig.from_diffusers(dict(unet.config))

    @property
    def config(self) -> ForeignUNetConfig:
        return self._config

    @property
    def null_label(self) -> int | None:
        return self._config.num_classes

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        raise ValueError("label embeddings (null-label inversion) need a natively loaded model; "
                         "this one runs through diffusers")

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, *,
                label_emb: torch.Tensor | None = None) -> torch.Tensor:
        if label_emb is not None:
            self.label_embedding(label_emb)  # raises: no embedding input through diffusers
        n = self._config.num_classes
        if n is None and labels is not None:
            raise ValueError("labels were given but this model is unconditional")
        if n is not None and labels is None:
            labels = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        t = torch.as_tensor(t, device=x.device)
        return self.unet(x, t.expand(x.shape[0]) if t.ndim == 0 else t, class_labels=labels).sample

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write the wrapped model as a diffusers directory (safetensors)."""
        self.unet.save_pretrained(str(folder), safe_serialization=True)
        return Path(folder)
