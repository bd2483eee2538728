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

__all__ = ["timestep_embedding", "TimeEmbedding", "ResBlock", "SelfAttention", "Downsample", "Upsample"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of training-step indices, exactly as in the original DDPM code.

    emb[:, i] = sin(t · ω_i), emb[:, half + i] = cos(t · ω_i), ω_i = max_period^(−i / (half − 1)),
    i = 0..half−1, half = dim // 2 (sin first, frequencies ending at exactly 1/max_period; in
    diffusers terms ``flip_sin_to_cos=False, freq_shift=1``).

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
    omega = torch.exp(-math.log(max_period) * i / (half - 1))
    angles = t.to(torch.float32)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TimeEmbedding(nn.Module):
    """Sinusoid (width C) -> Linear -> SiLU -> Linear, giving the (B, E) vector every ResBlock reads."""

    def __init__(self, sinusoid_dim: int, embed_dim: int):
        super().__init__()
        self.sinusoid_dim = sinusoid_dim
        self.lin1 = nn.Linear(sinusoid_dim, embed_dim)
        self.lin2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) step indices -> (B, E) in the weights' dtype."""
        emb = timestep_embedding(t, self.sinusoid_dim).to(self.lin1.weight.dtype)
        return self.lin2(F.silu(self.lin1(emb)))


class ResBlock(nn.Module):
    """GroupNorm, SiLU, 3×3 conv, + projected time embedding, GroupNorm, SiLU, dropout, 3×3 conv,
    added to the input (through a 1×1 conv when the channel count changes).

    Args:
        in_ch, out_ch: input / output channels C_in, C_out.
        embed_dim: E, width of the time (+ label) embedding.
        dropout: drop probability before the second conv.
        groups, eps: GroupNorm settings (32 groups, eps 1e-6 in DDPM).
    """

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, dropout: float, groups: int, eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(embed_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # A 1×1 conv only where the residual cannot be added as is (the original DDPM's "nin_shortcut").
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W), emb: (B, E) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.skip is None else self.skip(x)) + h


class SelfAttention(nn.Module):
    """Single-head self-attention over all H·W positions, full channel width, with a residual.

    GroupNorm, then q, k, v = linear maps of the C channels at each position, softmax(q kᵀ / √C) v,
    an output linear map, and the input added back.
    """

    def __init__(self, ch: int, groups: int, eps: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=eps)
        self.q = nn.Linear(ch, ch)
        self.k = nn.Linear(ch, ch)
        self.v = nn.Linear(ch, ch)
        self.proj = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        # (B, C, H, W) -> (B, 1 head, H·W tokens, C) so SDPA sees one full-width head.
        h = self.norm(x).reshape(B, C, H * W).transpose(1, 2)
        q, k, v = (lin(h).unsqueeze(1) for lin in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # default scale 1/√C
        h = self.proj(h).transpose(1, 2).reshape(B, C, H, W)
        return x + h


class Downsample(nn.Module):
    """Halve H and W: pad one zero row/column at the bottom/right, then a stride-2 3×3 conv without
    padding (the original DDPM's asymmetric padding; diffusers ``downsample_padding=0``)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) with H, W even -> (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
