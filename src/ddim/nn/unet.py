"""The DDPM UNet (Ho, Jain, Abbeel 2020, appendix B), optionally class-conditional.

Layout, with L = len(channel_mult) levels and C_i = base_channels · channel_mult[i]:

    x (B, in, H, W) -> [patch_size p > 1: pixel-unshuffle to (B, in·p², H/p, W/p)] -> 3×3 conv to C_0
    down level i = 0..L−1:  num_res_blocks × [ResBlock -> C_i, (+ SelfAttention if H/(p·2^i) ∈ attn_resolutions)],
                            then Downsample unless i = L−1        (every output is kept as a skip)
    middle:                 ResBlock, SelfAttention, ResBlock
    up level i = L−1..0:    (num_res_blocks + 1) × [concat a skip, ResBlock -> C_i, (+ SelfAttention)],
                            then Upsample unless i = 0
    GroupNorm, SiLU, 3×3 conv to out channels (·p², then pixel-shuffle back to H × W)

The time embedding (sinusoid of width C_0, then a 2-layer MLP to E = 4·C_0) is added inside every
ResBlock. A class-conditional model adds a learned label embedding (num_classes + 1 rows; the last
row is the "null" label used for classifier-free guidance) to the time embedding. A guidance-distilled
student (``guidance_embed``) adds a third term, the embedding of its guidance weight w (Meng et al. 2023,
"On Distillation of Guided Diffusion Models", §4.1: w is embedded like t).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .layers import Downsample, ResBlock, SelfAttention, TimeEmbedding, Upsample
from .unet_config import LIMITS, MAX_CLASSES, MAX_PARAMETERS, UNetConfig  # re-exported: the UNet's config lives there

__all__ = ["UNetConfig", "UNet", "PRESETS", "GUIDANCE_EMBED_SCALE", "unet_from_preset", "count_parameters",
           "init_ddpm_", "LIMITS", "MAX_CLASSES", "MAX_PARAMETERS"]


# w is embedded as the sinusoid of the "step" 100·w: the sinusoid's frequencies are laid out for step
# indices up to ~1000, so guidance weights up to ~10 use its whole range.
GUIDANCE_EMBED_SCALE = 100.0


class _Level(nn.Module):
    """One resolution level: ResBlocks, each optionally followed by attention, then a resampler."""

    def __init__(self, res: list[ResBlock], attn: list[SelfAttention], resample: nn.Module | None):
        super().__init__()
        self.res = nn.ModuleList(res)
        self.attn = nn.ModuleList(attn)  # empty, or one per ResBlock
        self.resample = resample


def res_block(c: UNetConfig, ch_in: int, ch_out: int, *, resample: str | None = None, scale: float = 1.0) -> ResBlock:
    """A ResBlock with ``c``'s norm, dropout and embedding settings."""
    return ResBlock(ch_in, ch_out, c.embed_dim, c.dropout, c.norm_groups, c.norm_eps, scale_shift=c.scale_shift,
                    output_scale=scale, resample=resample)


def attention(c: UNetConfig, ch: int, *, groups: int | None = None, scale: float = 1.0) -> SelfAttention:
    """A SelfAttention with ``c``'s head width (GroupNorm groups: ``groups``, default norm_groups; 0: none)."""
    groups = c.norm_groups if groups is None else groups
    return SelfAttention(ch, groups or None, c.norm_eps, head_dim=c.head_dim, output_scale=scale)


def _resampler(c: UNetConfig, ch: int, size: int, direction: str) -> nn.Module:
    if size in c.resblock_resample:
        return res_block(c, ch, ch, resample=direction)
    return Downsample(ch, c.downsample_padding) if direction == "down" else Upsample(ch)


def down_path(c: UNetConfig) -> tuple[nn.ModuleList, list[int]]:
    """The encoder half of the UNet (shared with ``NoisyClassifier``): per level, ``num_res_blocks``
    ResBlocks (each followed by attention at ``attn_resolutions``), then a down-sampler except on the last.
    Returns (the levels, the channels of every tensor ``encode`` keeps, in order; the last is the output's)."""
    skips, ch, downs = [c.base_channels], c.base_channels, []
    for i, (ch_out, size) in enumerate(zip(c.channels, c.resolutions)):
        res, attn = [], []
        for _ in range(c.num_res_blocks):
            res.append(res_block(c, ch, ch_out))
            ch = ch_out
            if size in c.attn_resolutions:
                attn.append(attention(c, ch))
            skips.append(ch)
        last = i == len(c.channels) - 1
        downs.append(_Level(res, attn, None if last else _resampler(c, ch, size, "down")))
        if not last:
            skips.append(ch)
    return nn.ModuleList(downs), skips


def encode(levels: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> list[torch.Tensor]:
    """Run ``down_path``'s levels on h (B, C_0, H, W) with embedding emb (B, E); returns every kept
    tensor (the UNet's skips), the first being h and the last the deepest level's output."""
    hs = [h]
    for level in levels:
        for j, block in enumerate(level.res):
            h = block(h, emb)
            if len(level.attn):
                h = level.attn[j](h)
            hs.append(h)
        if level.resample is not None:
            h = level.resample(h, emb)
            hs.append(h)
    return hs


class _Middle(nn.Module):
    """ResBlock, SelfAttention (unless ``mid_attention`` is off), ResBlock, each output divided by ``mid_scale``."""

    def __init__(self, ch: int, c: UNetConfig):
        super().__init__()
        self.res1 = res_block(c, ch, ch, scale=c.mid_scale)
        self.attn = attention(c, ch, groups=c.mid_attn_norm_groups, scale=c.mid_scale) if c.mid_attention else None
        self.res2 = res_block(c, ch, ch, scale=c.mid_scale)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.res1(h, emb)
        return self.res2(h if self.attn is None else self.attn(h), emb)


class UNet(nn.Module):
    """DDPM UNet ε_θ(x_t, t[, y]). Build with keyword arguments named as in ``UNetConfig``, or with
    ``UNet.from_config(cfg)`` / ``unet_from_preset(name)``."""

    def __init__(self, **kwargs: Any):
        super().__init__()
        c = UNetConfig.from_dict(kwargs)
        self._config = c
        # What the output means ("epsilon", "sample" or "v"), when known: ``ddim.load_checkpoint`` sets it from
        # the run's config, and samplers read it where no prediction is given (``ddim.denoiser.network_prediction``).
        self.prediction: Optional[str] = None
        E, groups, eps = c.embed_dim, c.norm_groups, c.norm_eps

        p2 = c.patch_size**2
        self.conv_in = nn.Conv2d(c.in_channels * p2, c.base_channels, 3, padding=1)
        self.time_embed = TimeEmbedding(c.base_channels, E, flip_sin_to_cos=c.flip_sin_to_cos,
                                        freq_shift=c.freq_shift, kind=c.time_embedding)
        self.label_embed = nn.Embedding(c.num_classes + 1, E) if c.num_classes is not None else None
        self.guidance_embed = (TimeEmbedding(c.base_channels, E, flip_sin_to_cos=c.flip_sin_to_cos,
                                             freq_shift=c.freq_shift) if c.guidance_embed else None)

        self.down, skips = down_path(c)
        ch = skips[-1]
        self.mid = _Middle(ch, c) if c.mid_block else None

        # Up path, deepest level first; each ResBlock eats one skip (concatenated after h).
        ups = []
        for i in reversed(range(len(c.channels))):
            ch_out, size = c.channels[i], c.resolutions[i]
            res, attn = [], []
            for _ in range(c.num_res_blocks + 1):
                res.append(res_block(c, ch + skips.pop(), ch_out))
                ch = ch_out
                if size in c.attn_resolutions:
                    attn.append(attention(c, ch))
            ups.append(_Level(res, attn, _resampler(c, ch, size, "up") if i > 0 else None))
        self.up = nn.ModuleList(ups)

        self.norm_out = nn.GroupNorm(groups, ch, eps=eps)
        self.conv_out = nn.Conv2d(ch, c.out_channels * p2, 3, padding=1)
        init_ddpm_(self)
        if self.guidance_embed is not None:
            # zero output layer: a student initialised from its teacher's weights starts as the teacher at every w
            nn.init.zeros_(self.guidance_embed.lin2.weight)
            nn.init.zeros_(self.guidance_embed.lin2.bias)

    # ---- construction helpers -----------------------------------------------------------------
    @classmethod
    def from_config(cls, config: UNetConfig | Mapping[str, Any]) -> "UNet":
        """Build from a ``UNetConfig`` or its ``to_dict()`` form."""
        if isinstance(config, UNetConfig):
            config = config.to_dict()
        return cls(**config)

    @property
    def config(self) -> UNetConfig:
        return self._config

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, E) rows of the label-embedding table for (B,) labels (num_classes = the null label ∅)."""
        if self.label_embed is None:
            raise ValueError("this UNet is unconditional: it has no label embeddings")
        return self.label_embed(labels.to(self.label_embed.weight.device).long())

    @property
    def null_label(self) -> int | None:
        """The label index meaning "no class" (= num_classes), or None for an unconditional model."""
        return self._config.num_classes

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None, *,
                label_emb: torch.Tensor | None = None, w: torch.Tensor | float | None = None) -> torch.Tensor:
        """Predict the training target (ε for DDPM) at noisy images x_t.

        Args:
            x: (B, in_channels, H, W) float; H and W divisible by 2^(levels−1).
            t: (B,) int64 or float training-step indices (a 0-d tensor or number is broadcast).
            labels: (B,) int64 class indices in [0, num_classes] (num_classes = null label), or None
                (all-null on a conditional model). Must be None for an unconditional model.
            label_emb: (B, E) label embeddings used in place of ``labels``' rows of the embedding table
                (null-label inversion optimises these; ``label_embedding`` gives the table's rows).
            w: the guidance weight(s) of a ``guidance_embed`` model, (B,) or a number (None: 0, the plain
                conditional prediction); refused by other models.
        Returns:
            (B, out_channels, H, W) in x's dtype.
        """
        self._check_input(x)
        t = self._check_t(t, x)
        emb = self.time_embed(t)
        if self.label_embed is None and (labels is not None or label_emb is not None):
            raise ValueError("labels were given but this UNet is unconditional (num_classes=None)")
        if label_emb is not None:
            if labels is not None:
                raise ValueError("give labels or label_emb, not both")
            if label_emb.shape != (x.shape[0], self._config.embed_dim):
                raise ValueError(f"label_emb must be ({x.shape[0]}, {self._config.embed_dim}), "
                                 f"got {tuple(label_emb.shape)}")
            emb = emb + label_emb.to(emb.dtype)
        elif self.label_embed is not None:
            emb = emb + self.label_embed(self._check_labels(labels, x))
        if self.guidance_embed is not None:
            w = torch.zeros((), device=x.device) if w is None else torch.as_tensor(w, device=x.device)
            emb = emb + self.guidance_embed(self._check_t(w, x).float() * GUIDANCE_EMBED_SCALE)
        elif w is not None:
            raise ValueError("a guidance weight w was given as an input, but this UNet has no guidance_embed "
                             "(only a guidance-distilled student takes w; guide others with ClassifierFreeGuidance)")

        c = self._config
        p = c.patch_size
        if c.center_input:
            x = 2 * x - 1.0
        hs = encode(self.down, self.conv_in(x if p == 1 else nn.functional.pixel_unshuffle(x, p)), emb)
        h = hs[-1] if self.mid is None else self.mid(hs[-1], emb)
        for level in self.up:
            for j, block in enumerate(level.res):
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
                if len(level.attn):
                    h = level.attn[j](h)
            if level.resample is not None:
                h = level.resample(h, emb)
        out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        out = out if p == 1 else nn.functional.pixel_shuffle(out, p)
        if c.time_embedding == "fourier":  # a score-SDE network: its output is divided by the noise level
            out = out / t.to(out.dtype)[:, None, None, None]
        return out

    def _check_input(self, x: torch.Tensor) -> None:
        c = self._config
        if x.ndim != 4:
            raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(f"x has {x.shape[1]} channels, this UNet takes in_channels={c.in_channels}")
        factor = c.patch_size * 2 ** (len(c.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"image size {tuple(x.shape[2:])} must be divisible by {factor} "
                             f"(patch_size · 2^(levels-1) for {len(c.channel_mult)} levels)")

    @staticmethod
    def _check_t(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},) to match the batch, got {tuple(t.shape)}")
        return t

    def _check_labels(self, labels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        B, n = x.shape[0], self._config.num_classes
        if labels is None:
            return torch.full((B,), n, dtype=torch.long, device=x.device)
        labels = torch.as_tensor(labels, device=x.device)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape ({B},) to match the batch, got {tuple(labels.shape)}")
        # A readable range check on CPU tensors; on an accelerator an asynchronous assert, because a
        # host sync on every forward would stall training and sampling (skipped under torch.compile).
        if not _compiling() and B:
            if labels.device.type == "cpu":
                if labels.min() < 0 or labels.max() > n:
                    raise ValueError(f"labels must lie in [0, {n}] ({n} = null label), "
                                     f"got values in [{labels.min().item()}, {labels.max().item()}]")
            else:
                torch._assert_async(((labels >= 0) & (labels <= n)).all(), f"labels must lie in [0, {n}]")
        return labels.long()


# help(UNet) and IDEs show UNetConfig's fields as UNet's keyword arguments, without restating them.
UNet.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(UNetConfig).parameters.values()])


def _compiling() -> bool:
    """True while torch.compile traces the model (torch.compiler.is_compiling needs torch >= 2.3)."""
    check = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    if check is None:  # torch 2.1-2.2
        check = getattr(getattr(torch, "_dynamo", None), "is_compiling", None)
    return bool(check and check())


def init_ddpm_(model: nn.Module) -> nn.Module:
    """DDPM initialisation, in place: Xavier-uniform weights ("fan_avg" variance scaling), zero biases,
    and zero weights on each residual branch's last layer and on the output conv, so every residual
    block starts as the identity and the initial prediction is 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, ResBlock):
            nn.init.zeros_(m.conv2.weight)
        elif isinstance(m, SelfAttention):
            nn.init.zeros_(m.proj.weight)
    if isinstance(model, UNet):
        nn.init.zeros_(model.conv_out.weight)
    return model


# ---- presets ------------------------------------------------------------------------------------
PRESETS: dict[str, UNetConfig] = {
    # Ho et al. 2020, CIFAR-10: 35.7 M parameters, identical in shape to diffusers' UNet2DModel form.
    "cifar10": UNetConfig(image_size=32, in_channels=3, out_channels=3, base_channels=128,
                          channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1),
    # 28×28 grayscale (Fashion-MNIST), class-conditional: levels at 28, 14, 7 (32, 64, 96 channels),
    # attention at 14 like DDPM's second level; 2.6 M parameters, 5.3 MB as fp16. 8 norm groups
    # because 32 groups over 32 channels would normalise each channel alone.
    "small": UNetConfig(image_size=28, in_channels=1, out_channels=1, base_channels=32,
                        channel_mult=(1, 2, 3), num_res_blocks=2, attn_resolutions=(14,), dropout=0.1,
                        num_classes=10, norm_groups=8),
    # 28×28 grayscale for a CPU: a 2×2 patch stem puts the levels at 14 and 7 (32, 96 channels), attention at 7,
    # so the costliest full-resolution level is gone (a third of "small"'s FLOPs per forward; no diffusers form,
    # for patch_size). Scale-shift norm (ADM's AdaGN) lets the label scale every channel after the norm rather
    # than be partly normalised away; the measurements behind both are in docs/results.md.
    "fashion": UNetConfig(image_size=28, in_channels=1, out_channels=1, base_channels=32, channel_mult=(1, 3),
                          num_res_blocks=2, attn_resolutions=(7,), dropout=0.0, num_classes=10, norm_groups=8,
                          patch_size=2, scale_shift=True),
}


def unet_from_preset(name: str, **overrides: Any) -> UNet:
    """A fresh UNet from ``PRESETS[name]`` with any config field overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; allowed: {', '.join(PRESETS)}")
    return UNet(**{**PRESETS[name].to_dict(), **overrides})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

