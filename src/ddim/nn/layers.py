"""Building blocks of the DDPM UNet (Ho, Jain, Abbeel 2020, appendix B).

Shapes use B = batch, C = channels, H × W = feature-map size, E = time-embedding width
(4 × base channels). Every block is a plain ``nn.Module`` with plain constructor arguments; the
UNet in ``unet.py`` only wires them together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["timestep_embedding", "fourier_embedding", "TimeEmbedding", "ResBlock", "SelfAttention", "Downsample", "Upsample"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, *, flip_sin_to_cos: bool = False,
                       freq_shift: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding of training-step indices (DDPM; Vaswani et al. 2017, section 3.5).

    emb[:, i] = sin(t · ω_i), emb[:, half + i] = cos(t · ω_i), ω_i = max_period^(−i / (half − freq_shift)),
    i = 0..half−1, half = dim // 2. The defaults are the original DDPM code (sin first, frequencies
    ending at exactly 1/max_period); ``flip_sin_to_cos=True`` puts cos first and ``freq_shift=0`` is
    the other common spacing (diffusers' ``UNet2DModel`` defaults).

    Args:
        t: (B,) step indices, integer or float (fractional steps are allowed).
        dim: embedding width; must be even and >= 4.
    Returns:
        (B, dim) float32, whatever t's dtype (the angles need full precision at t ≈ 1000).
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"timestep embedding width must be even and >= 4, got {dim}")
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=t.device)
    omega = torch.exp(-math.log(max_period) * i / (half - freq_shift))
    angles = t.to(torch.float32)[:, None] * omega[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    return torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=1)


def fourier_embedding(sigma: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Gaussian Fourier features of a noise level (Tancik et al. 2020; score-SDE NCSN++'s time input).

    angles = 2π · log σ · w_i for fixed random frequencies w (drawn once, N(0, 16²)); returns
    [sin(angles), cos(angles)], (B, 2·len(w)) float32. σ must be > 0.
    """
    angles = torch.log(sigma.to(torch.float32))[:, None] * weight.to(torch.float32)[None, :] * (2 * math.pi)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoid (width C) -> Linear -> SiLU -> Linear, giving the (B, E) vector every ResBlock reads.

    Args:
        sinusoid_dim: C, width of the sinusoid (``kind="fourier"``: number of Fourier frequencies; the
            features are then 2·C wide).
        embed_dim: E.
        flip_sin_to_cos, freq_shift: the sinusoid's layout (``timestep_embedding``).
        kind: "positional" (t is a step index) or "fourier" (t is a noise level σ > 0; score-SDE models).
    """

    def __init__(self, sinusoid_dim: int, embed_dim: int, *, flip_sin_to_cos: bool = False, freq_shift: float = 1.0,
                 kind: str = "positional"):
        super().__init__()
        self.sinusoid_dim, self.flip_sin_to_cos, self.freq_shift, self.kind = (
            sinusoid_dim, flip_sin_to_cos, freq_shift, kind)
        if kind == "fourier":
            # Fixed, not trained (as in score_sde); a buffer so it travels with the weights.
            self.register_buffer("fourier", torch.randn(sinusoid_dim) * 16.0)
        self.lin1 = nn.Linear(2 * sinusoid_dim if kind == "fourier" else sinusoid_dim, embed_dim)
        self.lin2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) step indices (or noise levels σ for ``kind="fourier"``) -> (B, E) in the weights' dtype."""
        if self.kind == "fourier":
            emb = fourier_embedding(t, self.fourier)
        else:
            emb = timestep_embedding(t, self.sinusoid_dim, flip_sin_to_cos=self.flip_sin_to_cos,
                                     freq_shift=self.freq_shift)
        return self.lin2(F.silu(self.lin1(emb.to(self.lin1.weight.dtype))))


class ResBlock(nn.Module):
    """GroupNorm, SiLU, [resample], 3×3 conv, + projected time embedding, GroupNorm, SiLU, dropout, 3×3 conv,
    added to the (resampled) input (through a 1×1 conv when the channel count changes), divided by
    ``output_scale``.

    Args:
        in_ch, out_ch: input / output channels C_in, C_out.
        embed_dim: E, width of the time (+ label) embedding.
        dropout: drop probability before the second conv.
        groups, eps: GroupNorm settings (32 groups, eps 1e-6 in DDPM).
        scale_shift: the embedding gives a scale and a shift applied after the second GroupNorm,
            h·(1 + scale) + shift (improved DDPM / ADM's "scale-shift norm"), instead of being added before it.
        output_scale: divides the block's output (1 in DDPM; √2 in some score-SDE models).
        resample: None, "down" (2×2 average pooling) or "up" (nearest ×2), applied to both branches after
            the first norm (BigGAN-style resampling; ADM's ``resblock_updown``).
    """

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, dropout: float, groups: int, eps: float, *,
                 scale_shift: bool = False, output_scale: float = 1.0, resample: str | None = None):
        super().__init__()
        if resample not in (None, "down", "up"):
            raise ValueError(f"resample must be None, 'down' or 'up', got {resample!r}")
        self.scale_shift, self.output_scale, self.resample = scale_shift, output_scale, resample
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(embed_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # A 1×1 conv only where the residual cannot be added as is (the original DDPM's "nin_shortcut").
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W), emb: (B, E) -> (B, C_out, H', W') (H' = H, H/2 or 2H with ``resample``)."""
        h = self._resample(F.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        e = self.temb_proj(F.silu(emb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        out = (x if self.skip is None else self.skip(x)) + h
        return out if self.output_scale == 1 else out / self.output_scale


class SelfAttention(nn.Module):
    """Multi-head self-attention over all H·W positions, with a residual.

    GroupNorm (unless ``groups`` is None), then q, k, v = linear maps of the C channels at each position
    to n heads of d channels, softmax(q kᵀ / √d) v per head, an output linear map back to C, the input
    added back, and the sum divided by ``output_scale``. DDPM uses one head of full width (d = C).

    Args:
        ch: C.
        groups, eps: GroupNorm settings; ``groups=None``: no norm.
        head_dim: d; None for one head of width C. n = C // d heads (n·d may be < C, as in diffusers).
        output_scale: divides the output (1 in DDPM).
    """

    def __init__(self, ch: int, groups: int | None, eps: float, *, head_dim: int | None = None,
                 output_scale: float = 1.0):
        super().__init__()
        d = ch if head_dim is None else head_dim
        if not 1 <= d <= ch:
            raise ValueError(f"attention head_dim must lie in [1, {ch}] for {ch} channels, got {head_dim}")
        self.heads, self.output_scale = ch // d, output_scale
        inner = self.heads * d
        self.norm = nn.GroupNorm(groups, ch, eps=eps) if groups is not None else None
        self.q = nn.Linear(ch, inner)
        self.k = nn.Linear(ch, inner)
        self.v = nn.Linear(ch, inner)
        self.proj = nn.Linear(inner, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = x if self.norm is None else self.norm(x)
        # (B, C, H, W) -> (B, H·W tokens, C) -> per head (B, n, H·W, d) for SDPA.
        h = h.reshape(B, C, H * W).transpose(1, 2)
        if self.heads == 1:  # DDPM's single head: a plain (B, 1, H·W, C) view
            q, k, v = (lin(h).unsqueeze(1) for lin in (self.q, self.k, self.v))
        else:
            q, k, v = (lin(h).reshape(B, H * W, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # default scale 1/√d
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, -1)).transpose(1, 2).reshape(B, C, H, W)
        out = x + h
        return out if self.output_scale == 1 else out / self.output_scale


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 conv. ``padding=0`` (the original DDPM, diffusers
    ``downsample_padding=0``): one zero row/column at the bottom/right, then the conv without padding;
    ``padding=1``: the conv with one zero on every side."""

    def __init__(self, ch: int, padding: int = 0):
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"Downsample padding must be 0 or 1, got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) with H, W even -> (B, C, H/2, W/2); emb is unused (the ResBlock resamplers read it)."""
        return self.conv(x if self.padding else F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, 2H, 2W); emb is unused (the ResBlock resamplers read it)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
