"""Checks of the values a public function takes, each raising one ``ValueError``/``TypeError`` line that names
the bad value and what is allowed (the library's refusals; the CLI prints the same line with exit code 2).

The bottom layer: torch and the standard library only, so every module may use these.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch

__all__ = ["check_int", "check_interval", "check_bool", "check_number", "check_power_of_two", "check_images",
           "check_labels", "check_device", "check_finite_result", "check_float_dtype"]


def check_int(name: str, v, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """``v`` as an int in [lo, hi] (a bool, a float such as 2.0 and a string are refused: each is a typo)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        allowed = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {v}")
    return v


def check_bool(name: str, v) -> bool:
    """``v`` if it is True or False: a string such as "no" is truthy, so it is refused rather than read."""
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return v


def check_number(name: str, v, lo: float = -math.inf, hi: float = math.inf, *, finite: bool = True) -> float:
    """``v`` as a float in [lo, hi] (NaN never passes; ``finite=False`` lets ±inf through)."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise ValueError(f"{name} must be a number, got {v!r}")
    v = float(v)
    if math.isnan(v) or (finite and math.isinf(v)) or not lo <= v <= hi:
        rng = "" if (lo, hi) == (-math.inf, math.inf) else f" in [{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number{rng}, got {v!r}")
    return v


def check_power_of_two(name: str, v) -> int:
    """``v`` if it is an int 1, 2, 4, 8, …: the step counts progressive distillation halves."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
        raise ValueError(f"{name} must be a power of two (1, 2, 4, 8, ...), got {v!r}")
    return v


def check_images(x, name: str = "x0", finite: bool = True) -> None:
    """``x`` must be a floating-point tensor shaped (B, …), B ≥ 1, holding no NaN or Inf (one host read)."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        kind = f"{type(x).__name__} {tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point tensor shaped (B, ...) with B >= 1, got {kind}")
    if finite and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains non-finite values (nan or inf)")


def check_labels(labels, n: int, num_classes: int, name: str = "labels", allow_null: bool = False) -> torch.Tensor:
    """Class labels as an int64 tensor (n,) with values in 0..num_classes−1 (``allow_null``: num_classes too,
    the null label ∅ of classifier-free guidance)."""
    if not torch.is_tensor(labels):
        raise ValueError(f"{name} must be an int64 tensor of class numbers, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be integers, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must be shaped ({n},), one per image, got {tuple(labels.shape)}")
    top = num_classes if allow_null else num_classes - 1
    if n and (int(labels.min()) < 0 or int(labels.max()) > top):
        raise ValueError(f"{name} must lie in 0..{top}, got values in [{int(labels.min())}, {int(labels.max())}]")
    return labels.long()


def check_device(device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine ("cpu", "cuda", "cuda:N", "mps")."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be like 'cpu', 'cuda' or 'cuda:0', got {device!r}") from None
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (d.index is not None and d.index >= count):
            raise ValueError(f"device {device!r} is not available here ({count} CUDA device(s))")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} is not available here")
    elif d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported; allowed: cpu, cuda, cuda:N, mps")
    return d


def check_float_dtype(name: str, dtype) -> Optional[torch.dtype]:
    """None or a floating-point ``torch.dtype`` (a string such as "float16" is refused, not guessed at)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"{name} must be None or a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    return dtype


def check_finite_result(x: torch.Tensor, what: str = "samples") -> None:
    """Refuse a finished result holding NaN or Inf (one read back to the host, after the last step): a
    diverged model must be an error naming how many of the B results it spoiled, never a black image.
    x: (B, ...)."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        raise ValueError(f"the model produced NaN or Inf in {bad} of {x.shape[0]} {what} (broken weights, or a "
                         "model or guidance setting that diverges)")


def check_interval(v) -> tuple[float, float]:
    """A guidance interval (σ_lo, σ_hi] as two floats with 0 <= σ_lo < σ_hi; ValueError naming ``v`` otherwise (an
    empty or reversed interval guides nowhere: a typo, not a method)."""
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or any(isinstance(e, bool) or not isinstance(e, numbers.Real) or math.isnan(e) for e in v)):
        raise ValueError(f"the guidance interval must be two numbers (σ_lo, σ_hi), got {v!r}")
    lo, hi = float(v[0]), float(v[1])
    if not 0 <= lo < hi:
        raise ValueError(f"the guidance interval (σ_lo, σ_hi] must have 0 <= σ_lo < σ_hi, got ({lo}, {hi}]")
    return lo, hi
