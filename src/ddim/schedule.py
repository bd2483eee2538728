"""Noise schedules: β_t for t = 0..T-1 and ᾱ_t = ∏_{s≤t} (1 − β_s).

Notation (DDPM, Ho et al. 2020; the DDIM paper writes α_t for our ᾱ_t):
    β_t        noise variance added by the forward step q(x_t | x_{t-1}) = N(√(1−β_t) x_{t−1}, β_t I)
    ᾱ_t        signal fraction of q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I)          (DDPM eq. 4)

Everything is float64: the schedule is tiny and the sampler's coefficients are derived from it, so
rounding here would show up in every step. Index t runs over training steps 0..T-1 (step t=0 is
already slightly noisy; ᾱ = 1 is "x_0" itself and has no index).
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

__all__ = ["Schedule", "rescale_zero_terminal_snr"]

_F64 = torch.float64


MAX_T = 100_000  # diffusion steps; real schedules use 1,000-4,000 (a config asking for 2e9 is damaged)


def _check_T(num_steps: int) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= MAX_T:
        raise ValueError(f"num_steps must be an integer in [1, {MAX_T:,}], got {num_steps!r}")
    return num_steps


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_flag(name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false, got {v!r}")


def _check_range(beta_start: float, beta_end: float) -> None:
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not _is_real(v):
            raise ValueError(f"{name} must be a number in (0, 1), got {type(v).__name__} {v!r:.60}")
    if not (0.0 < beta_start < 1.0 and 0.0 < beta_end < 1.0):
        raise ValueError(f"beta_start and beta_end must lie in (0, 1), got {beta_start!r}, {beta_end!r}")


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Rescale β so that ᾱ_{T-1} = 0 (zero terminal SNR), keeping ᾱ_0 (Lin et al. 2023, Algorithm 1).

    √ᾱ is shifted so its last value is 0, then scaled so its first value is unchanged. A model sampled
    from such a schedule must not predict ε alone at t = T-1 (x_0 = (x_t − ε)/0 is undefined there):
    use prediction="v" or "sample".

    Args:
        betas: (T,) β_t.
    Returns:
        (T,) float64 rescaled β_t; the last one is exactly 1.
    """
    betas = torch.as_tensor(betas, dtype=_F64)
    sqrt_abar = torch.cumprod(1.0 - betas, 0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


@dataclass(frozen=True, eq=False)
class Schedule:
    """A frozen β schedule. Build it with a class method (``linear``, ``cosine``, ...).

    Attributes:
        betas: (T,) float64 β_t, t = 0..T-1.
        name: how it was made ("linear", "scaled_linear", "cosine", "sigmoid", "custom").
        params: the constructor arguments, so ``Schedule.from_config(s.to_config())`` rebuilds it.
    """

    betas: torch.Tensor
    name: str = "custom"
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        b = torch.as_tensor(self.betas, dtype=_F64).detach().cpu().clone()
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(b.shape)}")
        if not torch.isfinite(b).all() or (b <= 0).any() or (b > 1).any():
            raise ValueError("betas must be finite and lie in (0, 1]; got values in "
                             f"[{b.min().item():.3g}, {b.max().item():.3g}]")
        if (b[:-1] >= 1).any() or b[0] >= 1:
            raise ValueError("only the last beta may equal 1 (zero terminal SNR), and not β_0 (ᾱ_0 = 0 would leave "
                             "no signal at any step)")
        if b.numel() > MAX_T:
            raise ValueError(f"betas has {b.numel():,} entries; a schedule has at most {MAX_T:,} steps")
        abar = torch.cumprod(1.0 - b, 0)
        flat = torch.nonzero(abar[1:] >= abar[:-1]).flatten()
        if flat.numel():  # every solver steps in log-SNR: two equal levels would be a step of zero length
            t = int(flat[0]) + 1
            raise ValueError(f"betas must make ᾱ strictly decreasing in float64, but β_{t} = {b[t].item():.3g} leaves "
                             f"ᾱ_{t} = ᾱ_{t - 1} = {abar[t].item():.3g} (a β too small to change it, or ᾱ already 0)")
        object.__setattr__(self, "betas", b)
        object.__setattr__(self, "params", dict(self.params))
        # Cached derived quantity: the frozen dataclass never changes, so neither does ᾱ.
        object.__setattr__(self, "_abar", torch.cumprod(1.0 - b, 0))

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """T, the number of training steps."""
        return self.betas.numel()

    T = num_steps

    @property
    def alphas(self) -> torch.Tensor:
        """(T,) float64 α_t = 1 − β_t."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """(T,) float64 ᾱ_t = ∏_{s≤t} α_s (DDPM eq. 4; "α_t" in the DDIM paper)."""
        return self._abar  # type: ignore[attr-defined]

    abar = alphas_cumprod

    @property
    def snr(self) -> torch.Tensor:
        """(T,) float64 signal-to-noise ratio ᾱ_t / (1 − ᾱ_t)."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    def __len__(self) -> int:
        return self.num_steps

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "betas")
        return f"Schedule.{self.name}({args})" if self.name != "custom" else f"Schedule(T={self.num_steps})"

    # ---- constructors -------------------------------------------------------------------------
    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               zero_terminal_snr: bool = False) -> "Schedule":
        """β_t linear from beta_start to beta_end (DDPM, Ho et al. 2020, section 4)."""
        T = _check_T(num_steps)
        _check_range(beta_start, beta_end)
        betas = torch.linspace(beta_start, beta_end, T, dtype=_F64)
        return cls._make(betas, "linear", dict(num_steps=T, beta_start=beta_start, beta_end=beta_end),
                         zero_terminal_snr)

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                      zero_terminal_snr: bool = False) -> "Schedule":
        """√β_t linear from √beta_start to √beta_end (latent diffusion / Stable Diffusion)."""
        T = _check_T(num_steps)
        _check_range(beta_start, beta_end)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=_F64) ** 2
        return cls._make(betas, "scaled_linear", dict(num_steps=T, beta_start=beta_start, beta_end=beta_end),
                         zero_terminal_snr)

    @classmethod
    def cosine(cls, num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999,
               zero_terminal_snr: bool = False) -> "Schedule":
        """ᾱ(u) = cos²((u + s)/(1 + s) · π/2), β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), max_beta)
        (Nichol & Dhariwal 2021, eq. 17; the "squaredcos_cap_v2" of other libraries)."""
        T = _check_T(num_steps)
        if not (_is_real(max_beta) and _is_real(s) and 0.0 < max_beta < 1.0 and s >= 0):
            raise ValueError(f"need 0 < max_beta < 1 and s >= 0, got max_beta={max_beta!r}, s={s!r}")

        def f(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = torch.tensor([min(1 - f((t + 1) / T) / f(t / T), max_beta) for t in range(T)], dtype=_F64)
        return cls._make(betas, "cosine", dict(num_steps=T, s=s, max_beta=max_beta), zero_terminal_snr)

    @classmethod
    def sigmoid(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                zero_terminal_snr: bool = False) -> "Schedule":
        """β_t = beta_start + (beta_end − beta_start) · sigmoid(u_t), u_t linear on [−6, 6] (GeoDiff)."""
        T = _check_T(num_steps)
        _check_range(beta_start, beta_end)
        betas = torch.sigmoid(torch.linspace(-6, 6, T, dtype=_F64)) * (beta_end - beta_start) + beta_start
        return cls._make(betas, "sigmoid", dict(num_steps=T, beta_start=beta_start, beta_end=beta_end),
                         zero_terminal_snr)

    @classmethod
    def from_betas(cls, betas, zero_terminal_snr: bool = False) -> "Schedule":
        """Any explicit (T,) sequence of β_t in (0, 1) (a list of numbers, a 1-D array or tensor)."""
        if torch.is_tensor(betas) or hasattr(betas, "__array__"):
            betas = torch.as_tensor(betas)
            if betas.is_complex() or betas.dtype == torch.bool or betas.ndim != 1:
                raise ValueError(f"betas must be a 1-D sequence of numbers in (0, 1], got a {betas.dtype} tensor of "
                                 f"shape {tuple(betas.shape)}")
        elif not isinstance(betas, (list, tuple)):
            raise ValueError(f"betas must be a 1-D sequence of numbers in (0, 1], got {type(betas).__name__} "
                             f"{betas!r:.60}")
        else:
            bad = next((i for i, b in enumerate(betas) if not _is_real(b)), None)
            if bad is not None:
                raise ValueError(f"betas must be a 1-D sequence of numbers in (0, 1], got {betas[bad]!r:.40} at "
                                 f"index {bad}")
        betas = torch.as_tensor(betas, dtype=_F64).flatten()
        return cls._make(betas, "custom", dict(betas=betas.tolist()), zero_terminal_snr)

    @classmethod
    def _make(cls, betas: torch.Tensor, name: str, params: dict, zero_terminal_snr: bool) -> "Schedule":
        _check_flag("zero_terminal_snr", zero_terminal_snr)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
            params = dict(params, zero_terminal_snr=True)
        return cls(betas, name, params)

    # ---- config round trip --------------------------------------------------------------------
    def to_config(self) -> dict:
        """A JSON-serialisable dict; ``Schedule.from_config`` inverts it exactly."""
        return {"name": self.name, **self.params}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Schedule":
        if not isinstance(config, Mapping):
            raise ValueError(f"a schedule config must be a JSON object (name, num_steps, ...), got "
                             f"{type(config).__name__} {config!r:.60}")
        config = dict(config)
        name = config.pop("name", "custom")
        makers = {"linear": cls.linear, "scaled_linear": cls.scaled_linear, "cosine": cls.cosine,
                  "sigmoid": cls.sigmoid, "custom": cls.from_betas}
        if not isinstance(name, str) or name not in makers:
            raise ValueError(f"unknown schedule name {name!r:.60}; allowed: {', '.join(makers)}")
        allowed = [p for p in inspect.signature(makers[name]).parameters]
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ValueError(f"unknown {name} schedule key(s) {unknown}; allowed: {allowed}")
        return makers[name](**config)
