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
row is the "null" label used for classifier-free guidance) to the time embedding.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from .layers import Downsample, ResBlock, SelfAttention, TimeEmbedding, Upsample

__all__ = ["UNetConfig", "UNet", "PRESETS", "unet_from_preset", "count_parameters", "init_ddpm_"]


@dataclass(frozen=True)
class UNetConfig:
    """Every constructor argument of ``UNet``; JSON-serialisable through ``to_dict`` / ``from_dict``.

    Attributes:
        image_size: training resolution (square), pixels; decides where attention goes.
        in_channels, out_channels: image channels in and prediction channels out.
        base_channels: C_0, channels of the first level (the sinusoid width; E = 4·C_0).
        channel_mult: C_i / C_0 per level; its length L sets the number of levels.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attn_resolutions: feature-map sizes (pixels) that get self-attention after each ResBlock.
        dropout: drop probability inside every ResBlock.
        num_classes: None for an unconditional model, else the number of real classes.
        norm_groups, norm_eps: GroupNorm settings for every norm in the network.
        patch_size: p; 1 is the DDPM UNet. p > 1 folds each p×p patch into channels first (pixel-unshuffle)
            and unfolds the output (pixel-shuffle), so every level runs at 1/p of the image side: the
            full-resolution level, the costliest per channel on a CPU, is gone.

    The remaining fields default to the DDPM UNet; they let the other common ``UNet2DModel`` forms
    (diffusers) load natively (``ddim.nn.diffusers_io``):
        head_dim: channels per attention head; None for one head of full width.
        flip_sin_to_cos, freq_shift: the sinusoid's layout (``layers.timestep_embedding``).
        time_embedding: "positional" (t = step index) or "fourier" (t = noise level σ; the output is
            divided by σ, as score-SDE NCSN++ models do).
        time_embed_dim: E; None for 4·C_0.
        downsample_padding: 0 (pad bottom/right only, DDPM) or 1 (pad all sides).
        scale_shift: ResBlocks apply the embedding as a scale and shift after their second norm.
        resblock_resample: feature-map sizes whose level down/up-samples with a ResBlock (average pool /
            nearest neighbour inside it) instead of a conv.
        mid_block, mid_attention: whether the middle ResBlock–attention–ResBlock exists, and its attention.
        mid_scale: divides the middle blocks' outputs.
        mid_attn_norm_groups: GroupNorm groups of the middle attention; None: norm_groups; 0: no norm.
        center_input: map inputs from [0, 1] to [−1, 1] first (x ↦ 2x − 1).
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_classes: int | None = None
    norm_groups: int = 32
    norm_eps: float = 1e-6
    patch_size: int = 1
    head_dim: int | None = None
    flip_sin_to_cos: bool = False
    freq_shift: float = 1.0
    time_embedding: str = "positional"
    time_embed_dim: int | None = None
    downsample_padding: int = 0
    scale_shift: bool = False
    resblock_resample: tuple[int, ...] = ()
    mid_block: bool = True
    mid_attention: bool = True
    mid_scale: float = 1.0
    mid_attn_norm_groups: int | None = None
    center_input: bool = False

    def __post_init__(self) -> None:
        # Lists from JSON become tuples so the frozen config stays hashable and compares equal.
        for name in ("channel_mult", "attn_resolutions", "resblock_resample"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{name} must be a list or tuple of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        _validate(self)

    @property
    def channels(self) -> tuple[int, ...]:
        """C_i for each level i."""
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Feature-map size at each level for an image_size input."""
        return tuple(self.image_size // self.patch_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def embed_dim(self) -> int:
        """E (4·C_0 unless ``time_embed_dim`` says otherwise), width of the time (and label) embedding."""
        return 4 * self.base_channels if self.time_embed_dim is None else self.time_embed_dim

    @property
    def attention_widths(self) -> tuple[int, ...]:
        """Channels at every attention layer's level (the middle one included when it exists)."""
        mid = (self.channels[-1],) if self.mid_block and self.mid_attention else ()
        return tuple(ch for ch, r in zip(self.channels, self.resolutions) if r in self.attn_resolutions) + mid

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attn_resolutions"] = list(self.attn_resolutions)
        d["resblock_resample"] = list(self.resblock_resample)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Inverse of ``to_dict``; an unknown key is an error (a typo must not be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown UNetConfig key(s) {unknown}; allowed: {sorted(known)}")
        return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Upper bounds checked before any weight is allocated: a damaged or hostile config.json must get an
# error, not a request for 64 GB. Generous for real models (DDPM's largest: 256 px, 128 channels).
LIMITS = {"image_size": 4096, "in_channels": 64, "out_channels": 64, "base_channels": 2048, "num_res_blocks": 32,
          "norm_groups": 2048, "patch_size": 64}
MAX_PARAMETERS = 4_000_000_000
MAX_CLASSES = 100_000  # ImageNet-21k has 21,841; a larger table is a damaged config, not a model


def _validate(c: UNetConfig) -> None:
    """Raise ValueError naming the first field that cannot build a working network."""
    for name in ("image_size", "in_channels", "out_channels", "base_channels", "num_res_blocks", "norm_groups",
                 "patch_size"):
        v = getattr(c, name)
        if not _is_int(v) or not 1 <= v <= LIMITS[name]:
            raise ValueError(f"{name} must be an integer in [1, {LIMITS[name]}], got {v!r}")
    if len(c.channel_mult) > 12 or any(_is_int(m) and m > 64 for m in c.channel_mult):
        raise ValueError(f"channel_mult must have at most 12 levels of at most 64, got {c.channel_mult!r}")
    widest = c.base_channels * max((m for m in c.channel_mult if _is_int(m)), default=1)
    # two 3×3 convs per ResBlock, (2·num_res_blocks + 1) ResBlocks per level up and down: a coarse upper bound
    if 18 * widest**2 * (2 * c.num_res_blocks + 3) * len(c.channel_mult) > MAX_PARAMETERS:
        raise ValueError(f"this UNet config would have billions of parameters (base_channels={c.base_channels}, "
                         f"channel_mult={c.channel_mult}); at most {MAX_PARAMETERS:,} are built")
    if c.base_channels % 2 or c.base_channels < 4:
        raise ValueError(f"base_channels must be even and >= 4 (sinusoid width), got {c.base_channels}")
    if not c.channel_mult or not all(_is_int(m) and m >= 1 for m in c.channel_mult):
        raise ValueError(f"channel_mult must be a non-empty sequence of integers >= 1, got {c.channel_mult!r}")
    bad = [ch for ch in c.channels if ch % c.norm_groups]
    if bad:
        raise ValueError(f"every level's channels {c.channels} must be divisible by norm_groups={c.norm_groups}")
    factor = c.patch_size * 2 ** (len(c.channel_mult) - 1)
    if c.image_size % factor:
        raise ValueError(f"image_size={c.image_size} must be divisible by patch_size · 2^(levels-1) = {factor}")
    stray = [r for r in c.attn_resolutions if r not in c.resolutions]
    if stray:
        raise ValueError(f"attn_resolutions {stray} match no level; level sizes are {c.resolutions}")
    if not (isinstance(c.dropout, (int, float)) and 0.0 <= c.dropout < 1.0):
        raise ValueError(f"dropout must lie in [0, 1), got {c.dropout!r}")
    if c.num_classes is not None and (not _is_int(c.num_classes) or not 1 <= c.num_classes <= MAX_CLASSES):
        raise ValueError(f"num_classes must be None or an integer in [1, {MAX_CLASSES:,}], got {c.num_classes!r}")
    if not (isinstance(c.norm_eps, (int, float)) and c.norm_eps > 0):
        raise ValueError(f"norm_eps must be > 0, got {c.norm_eps!r}")
    _validate_form(c)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate_form(c: UNetConfig) -> None:
    """The fields beyond the DDPM UNet (attention heads, sinusoid layout, resampling, middle block)."""
    for name in ("flip_sin_to_cos", "scale_shift", "mid_block", "mid_attention", "center_input"):
        if not isinstance(getattr(c, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(c, name)!r}")
    if c.head_dim is not None:
        widths = c.attention_widths
        if not _is_int(c.head_dim) or c.head_dim < 1 or any(c.head_dim > w for w in widths):
            raise ValueError(f"head_dim must be None or an integer in [1, {min(widths, default=c.head_dim)}] "
                             f"(the narrowest attention's channels), got {c.head_dim!r}")
    if c.time_embedding not in ("positional", "fourier"):
        raise ValueError(f"time_embedding must be 'positional' or 'fourier', got {c.time_embedding!r}")
    half = c.base_channels // 2
    if not _finite(c.freq_shift) or (c.time_embedding == "positional" and not c.freq_shift < half - 1e-3):
        # the frequencies are max_period^(−i/(half − freq_shift)): at or past half they overflow
        raise ValueError(f"freq_shift must be a finite number below base_channels/2 = {half}, got {c.freq_shift!r}")
    if c.time_embed_dim is not None and (not _is_int(c.time_embed_dim) or not 1 <= c.time_embed_dim <= 16384):
        raise ValueError(f"time_embed_dim must be None or an integer in [1, 16384], got {c.time_embed_dim!r}")
    if c.downsample_padding not in (0, 1) or isinstance(c.downsample_padding, bool):
        raise ValueError(f"downsample_padding must be 0 or 1, got {c.downsample_padding!r}")
    stray = [r for r in c.resblock_resample if r not in c.resolutions]
    if stray:
        raise ValueError(f"resblock_resample {stray} match no level; level sizes are {c.resolutions}")
    if not _finite(c.mid_scale) or c.mid_scale <= 0:
        raise ValueError(f"mid_scale must be a finite number > 0, got {c.mid_scale!r}")
    g = c.mid_attn_norm_groups
    if g is not None and (not _is_int(g) or g < 0 or (g and c.channels[-1] % g)):
        raise ValueError(f"mid_attn_norm_groups must be None, 0 (no norm) or a divisor of {c.channels[-1]}, got {g!r}")


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
        E, groups, eps = c.embed_dim, c.norm_groups, c.norm_eps

        p2 = c.patch_size**2
        self.conv_in = nn.Conv2d(c.in_channels * p2, c.base_channels, 3, padding=1)
        self.time_embed = TimeEmbedding(c.base_channels, E, flip_sin_to_cos=c.flip_sin_to_cos,
                                        freq_shift=c.freq_shift, kind=c.time_embedding)
        self.label_embed = nn.Embedding(c.num_classes + 1, E) if c.num_classes is not None else None

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
                label_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the training target (ε for DDPM) at noisy images x_t.

        Args:
            x: (B, in_channels, H, W) float; H and W divisible by 2^(levels−1).
            t: (B,) int64 or float training-step indices (a 0-d tensor or number is broadcast).
            labels: (B,) int64 class indices in [0, num_classes] (num_classes = null label), or None
                (all-null on a conditional model). Must be None for an unconditional model.
            label_emb: (B, E) label embeddings used in place of ``labels``' rows of the embedding table
                (null-label inversion optimises these; ``label_embedding`` gives the table's rows).
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
    # 28×28 grayscale for a CPU (issue 12): a 2×2 patch stem puts the levels at 14 and 7 (32, 96 channels),
    # attention at 7. 0.25 GFLOPs per forward against "small"'s 0.68, 1.95 M parameters; 2.8× its sampling and
    # 3.2× its training images/s on 2 CPU cores (benchmarks/architectures.py); no diffusers form (patch_size).
    "fashion": UNetConfig(image_size=28, in_channels=1, out_channels=1, base_channels=32, channel_mult=(1, 3),
                          num_res_blocks=2, attn_resolutions=(7,), dropout=0.0, num_classes=10, norm_groups=8,
                          patch_size=2),
}


def unet_from_preset(name: str, **overrides: Any) -> UNet:
    """A fresh UNet from ``PRESETS[name]`` with any config field overridden by keyword."""
    if name not in PRESETS:
        raise ValueError(f"unknown UNet preset {name!r}; allowed: {', '.join(PRESETS)}")
    return UNet(**{**PRESETS[name].to_dict(), **overrides})


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

