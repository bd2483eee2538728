"""The mapping between diffusers ``UNet2DModel`` configs (config.json) and our ``UNetConfig``.

Natively mapped (our UNet, so our fast path applies): blocks DownBlock2D / AttnDownBlock2D /
ResnetDownsampleBlock2D and their up counterparts in mirror image (attention and the kind of
resampling agree level by level), any ``attention_head_dim``, both sinusoid layouts and shifts,
``time_embedding_type`` "positional" and "fourier", both ``downsample_padding`` values,
``downsample_type`` / ``upsample_type`` "conv" and "resnet", ``resnet_time_scale_shift`` "default" and
"scale_shift", the middle block with or without attention (or none), ``mid_block_scale_factor``,
``attn_norm_num_groups``, ``center_input_sample``, norm settings and a class-embedding table. Anything
else raises ``UnsupportedConfig`` naming the key; ``load_diffusers_unet`` then runs diffusers' own model
if diffusers is installed.

Class labels: a diffusers table of N rows becomes ``num_classes = N − 1`` with row N − 1 as our null
label (every row stays reachable; only ``labels=None`` picks row N − 1). Export writes
``num_class_embeds = num_classes + 1``, so a round trip is exact.
"""

from __future__ import annotations

from typing import Any, Mapping

from .unet import UNetConfig

__all__ = ["UnsupportedConfig", "unet_config_from_diffusers", "unet_config_to_diffusers", "DIFFUSERS_DEFAULTS"]

# diffusers' own UNet2DModel defaults, applied to keys a config.json leaves out.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0,
    "act_fn": "silu", "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None,
    "norm_eps": 1e-5, "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None,
    "num_class_embeds": None, "num_train_timesteps": None,
}

# block type -> (has attention, resamples with a ResBlock); None: decided by downsample_type / upsample_type
_DOWN = {"DownBlock2D": (False, False), "ResnetDownsampleBlock2D": (False, True), "AttnDownBlock2D": (True, None)}
_UP = {"UpBlock2D": (False, False), "ResnetUpsampleBlock2D": (False, True), "AttnUpBlock2D": (True, None)}
_RESAMPLE = {"conv": False, "resnet": True, None: False}  # diffusers reads None as "conv"


class UnsupportedConfig(ValueError):
    """A diffusers ``UNet2DModel`` setting our UNet cannot represent (diffusers itself may still run it)."""

    def __init__(self, key: str, value: Any, allowed: str):
        super().__init__(f"unsupported diffusers UNet2DModel setting {key}={value!r}; natively allowed: {allowed}")
        self.key, self.value = key, value


def _block_kinds(types: list[str], table: Mapping[str, tuple[bool, bool | None]], resnet: bool,
                 key: str, levels: int) -> list[tuple[bool, bool]]:
    kinds = []
    for b in types:
        b = b[len("UNetRes"):] if isinstance(b, str) and b.startswith("UNetRes") else b  # diffusers' alias
        if b not in table:
            raise UnsupportedConfig(key, types, f"{levels} entries from {sorted(table)}")
        attn, res = table[b]
        kinds.append((attn, resnet if res is None else res))
    if len(kinds) != levels:
        raise UnsupportedConfig(key, types, f"{levels} entries (one per block_out_channels entry)")
    return kinds


def _choice(c: Mapping[str, Any], key: str, allowed: Mapping[Any, Any]) -> Any:
    value = c[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))) or value not in allowed:
        raise UnsupportedConfig(key, value, ", ".join(repr(a) for a in allowed))
    return allowed[value]


def _check_types(c: Mapping[str, Any]) -> None:
    """ValueError (not a TypeError later) for values that diffusers could not build either."""
    for key in ("dropout", "norm_eps", "mid_block_scale_factor", "freq_shift"):
        if isinstance(c[key], bool) or not isinstance(c[key], (int, float)):
            raise ValueError(f"diffusers UNet2DModel config: {key} must be a number, got {c[key]!r}")
    for key in ("down_block_types", "up_block_types"):
        if not isinstance(c[key], (list, tuple)):
            raise ValueError(f"diffusers UNet2DModel config: {key} must be a list of block names, got {c[key]!r}")
    if c["sample_size"] is None:
        raise ValueError("diffusers UNet2DModel config: sample_size is null; ddim needs the image size to sample "
                         "(set \"sample_size\" in config.json to the training resolution)")
    g = c["attn_norm_num_groups"]
    if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
        raise ValueError(f"diffusers UNet2DModel config: attn_norm_num_groups must be null or a positive integer, "
                         f"got {g!r}")


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """Map a diffusers ``UNet2DModel`` config dict (config.json) onto a ``UNetConfig``.

    Raises:
        UnsupportedConfig: a setting our UNet cannot represent (names the key and what is allowed).
        ValueError: not a UNet2DModel config, or values that build no working network.
    """
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"unsupported diffusers model class _class_name={cls!r}; allowed: 'UNet2DModel'")
    unknown = sorted(k for k in config if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
    if unknown:
        raise UnsupportedConfig(unknown[0], config[unknown[0]], f"the keys {sorted(DIFFUSERS_DEFAULTS)}")
    c = {**DIFFUSERS_DEFAULTS, **config}
    _check_types(c)

    boc = c["block_out_channels"]
    if not isinstance(boc, (list, tuple)) or not boc or not all(isinstance(ch, int) and ch > 0 for ch in boc):
        raise ValueError(f"block_out_channels must be a non-empty list of positive integers, got {boc!r}")
    if any(ch % boc[0] for ch in boc):
        raise UnsupportedConfig("block_out_channels", boc, "integer multiples of the first entry")
    L = len(boc)
    down = _block_kinds(list(c["down_block_types"]), _DOWN, _choice(c, "downsample_type", _RESAMPLE),
                        "down_block_types", L)
    up = _block_kinds(list(c["up_block_types"]), _UP, _choice(c, "upsample_type", _RESAMPLE), "up_block_types", L)
    up = up[::-1]  # up block j serves level L-1-j
    resblock = []
    for i in range(L):
        # level i downsamples unless it is the last and upsamples unless it is the first
        used = [kind[1] for kind, applies in ((down[i], i < L - 1), (up[i], i > 0)) if applies]
        if down[i][0] != up[i][0] or len(set(used)) > 1:
            raise UnsupportedConfig("up_block_types", c["up_block_types"],
                                    f"the mirror image of down_block_types {list(c['down_block_types'])}")
        resblock.append(bool(used and used[0]))

    size = c["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise UnsupportedConfig("sample_size", size, "an int or a square [n, n]")
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool):
        raise UnsupportedConfig("sample_size", size, "an integer image size")

    _choice(c, "act_fn", {"silu": "silu", "swish": "silu"})
    scale_shift = _choice(c, "resnet_time_scale_shift", {"default": False, "scale_shift": True})
    mid_block = _choice(c, "mid_block_type", {"UNetMidBlock2D": True, None: False})
    _choice(c, "class_embed_type", {None: None})
    time_embedding = _choice(c, "time_embedding_type", {"positional": "positional", "fourier": "fourier"})
    if c["norm_num_groups"] is None:
        raise UnsupportedConfig("norm_num_groups", None, "an integer")
    attn_groups = c["attn_norm_num_groups"]
    if attn_groups is None:  # diffusers' rule: the resnets' groups, or no norm with scale-shift resnets
        attn_groups = 0 if scale_shift else None
    n = c["num_class_embeds"]
    if n is not None and (not isinstance(n, int) or n < 2):
        raise UnsupportedConfig("num_class_embeds", n, "None or an integer >= 2 (the last row is our null label)")
    sizes = [size // 2**i for i in range(L)]

    return UNetConfig(
        image_size=size, in_channels=c["in_channels"], out_channels=c["out_channels"], base_channels=boc[0],
        channel_mult=tuple(ch // boc[0] for ch in boc), num_res_blocks=c["layers_per_block"],
        attn_resolutions=tuple(s for s, (a, _) in zip(sizes, down) if a), dropout=float(c["dropout"]),
        num_classes=None if n is None else n - 1, norm_groups=c["norm_num_groups"], norm_eps=float(c["norm_eps"]),
        head_dim=c["attention_head_dim"], flip_sin_to_cos=c["flip_sin_to_cos"], freq_shift=c["freq_shift"],
        time_embedding=time_embedding, time_embed_dim=c["time_embedding_dim"] or None,  # diffusers: 0 means default
        downsample_padding=c["downsample_padding"], scale_shift=scale_shift,
        resblock_resample=tuple(s for s, r in zip(sizes, resblock) if r), mid_block=mid_block,
        mid_attention=c["add_attention"], mid_scale=c["mid_block_scale_factor"], mid_attn_norm_groups=attn_groups,
        center_input=c["center_input_sample"])


def unet_config_to_diffusers(config: UNetConfig) -> dict[str, Any]:
    """The diffusers ``UNet2DModel`` config.json dict equivalent to ``config``.

    Raises ValueError for what ``UNet2DModel`` cannot express (a patch stem, attention levels that
    resample in different ways, a norm-free middle attention beside plain ResBlocks).
    """
    if config.patch_size != 1:
        raise ValueError(f"patch_size={config.patch_size} has no diffusers UNet2DModel equivalent (allowed: 1)")
    if config.guidance_embed:
        raise ValueError("guidance_embed (a guidance-distilled student's w input) has no diffusers UNet2DModel "
                         "equivalent")
    L = len(config.channel_mult)
    attn = [r in config.attn_resolutions for r in config.resolutions]
    res = [r in config.resblock_resample for r in config.resolutions]
    # diffusers has one downsample_type / upsample_type for all attention blocks
    down_kinds = {res[i] for i in range(L - 1) if attn[i]}
    up_kinds = {res[i] for i in range(1, L) if attn[i]}
    if len(down_kinds) > 1 or len(up_kinds) > 1:
        raise ValueError(f"resblock_resample={config.resblock_resample} resamples some attention levels with a "
                         "ResBlock and others with a conv: diffusers' UNet2DModel allows one kind for all")
    g = config.mid_attn_norm_groups
    if not (config.mid_block and config.mid_attention):
        g = None  # no middle attention: the setting has no effect
    if g == 0 and not config.scale_shift:
        raise ValueError("mid_attn_norm_groups=0 (no norm) needs scale_shift=True in diffusers' UNet2DModel")
    if g is None and config.scale_shift:
        g = config.norm_groups  # diffusers' None would mean no norm here

    def names(suffix: str) -> list[str]:
        return [f"Attn{suffix}Block2D" if a else (f"Resnet{suffix}sampleBlock2D" if r else f"{suffix}Block2D")
                for a, r in zip(attn, res)]

    return {
        "_class_name": "UNet2DModel",
        "sample_size": config.image_size, "in_channels": config.in_channels, "out_channels": config.out_channels,
        "center_input_sample": config.center_input, "time_embedding_type": config.time_embedding,
        "time_embedding_dim": config.time_embed_dim, "freq_shift": config.freq_shift,
        "flip_sin_to_cos": config.flip_sin_to_cos, "down_block_types": names("Down"),
        "mid_block_type": "UNetMidBlock2D" if config.mid_block else None, "up_block_types": names("Up")[::-1],
        "block_out_channels": list(config.channels), "layers_per_block": config.num_res_blocks,
        "mid_block_scale_factor": config.mid_scale, "downsample_padding": config.downsample_padding,
        "downsample_type": "resnet" if True in down_kinds else "conv",
        "upsample_type": "resnet" if True in up_kinds else "conv", "dropout": config.dropout, "act_fn": "silu",
        "attention_head_dim": config.head_dim, "norm_num_groups": config.norm_groups,
        "attn_norm_num_groups": None if g == 0 else g, "norm_eps": config.norm_eps,
        "resnet_time_scale_shift": "scale_shift" if config.scale_shift else "default",
        "add_attention": config.mid_attention, "class_embed_type": None,
        "num_class_embeds": None if config.num_classes is None else config.num_classes + 1,
        "num_train_timesteps": None,
    }
