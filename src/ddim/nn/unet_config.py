"""``UNetConfig``: every constructor argument of the UNet, JSON round trip, and the checks that run
before any weight is allocated (a damaged or hostile config.json gets an error, not a request for 64 GB)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["UNetConfig", "LIMITS", "MAX_PARAMETERS", "MAX_CLASSES", "from_mapping"]


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
        guidance_embed: take a guidance weight w as an input (a guidance-distilled student, Meng et al. 2023):
            a sinusoid of w through its own 2-layer MLP, added to the time embedding as the label's is.
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
    guidance_embed: bool = False

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
        return from_mapping(cls, d)


def from_mapping(cls, d: Mapping[str, Any]):
    """The frozen dataclass ``cls`` built from a JSON object, refusing anything that is not an object and
    any key that is not a field (a typo must not be silently ignored). Every config class reads through it."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{cls.__name__} must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; allowed: {sorted(known)}")
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
    if not (_finite(c.norm_eps) and 0 < c.norm_eps <= 1):  # a variance floor: inf or 1e308 zeroes every norm
        raise ValueError(f"norm_eps must be a number in (0, 1], got {c.norm_eps!r}")
    _validate_form(c)
    if c.guidance_embed is True and c.num_classes is None:
        raise ValueError("guidance_embed needs a class-conditional model (num_classes): w weighs a class against ∅")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate_form(c: UNetConfig) -> None:
    """The fields beyond the DDPM UNet (attention heads, sinusoid layout, resampling, middle block)."""
    for name in ("flip_sin_to_cos", "scale_shift", "mid_block", "mid_attention", "center_input", "guidance_embed"):
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
    if not _finite(c.freq_shift) or not -half < c.freq_shift or (c.time_embedding == "positional"
                                                                    and not c.freq_shift < half - 1e-3):
        # the frequencies are max_period^(−i/(half − freq_shift)): at or past half they overflow, and far below
        # −half they all collapse to one frequency (diffusers' models use 0 or 1)
        raise ValueError(f"freq_shift must be a number in (−{half}, {half}) (half of base_channels), got "
                         f"{c.freq_shift!r}")
    if c.time_embed_dim is not None and (not _is_int(c.time_embed_dim) or not 1 <= c.time_embed_dim <= 16384):
        raise ValueError(f"time_embed_dim must be None or an integer in [1, 16384], got {c.time_embed_dim!r}")
    if c.downsample_padding not in (0, 1) or isinstance(c.downsample_padding, bool):
        raise ValueError(f"downsample_padding must be 0 or 1, got {c.downsample_padding!r}")
    stray = [r for r in c.resblock_resample if r not in c.resolutions]
    if stray:
        raise ValueError(f"resblock_resample {stray} match no level; level sizes are {c.resolutions}")
    if not _finite(c.mid_scale) or not 0 < c.mid_scale <= 100:  # 1 or √2 in the known models
        raise ValueError(f"mid_scale must be a number in (0, 100], got {c.mid_scale!r}")
    g = c.mid_attn_norm_groups
    if g is not None and (not _is_int(g) or g < 0 or (g and c.channels[-1] % g)):
        raise ValueError(f"mid_attn_norm_groups must be None, 0 (no norm) or a divisor of {c.channels[-1]}, got {g!r}")
