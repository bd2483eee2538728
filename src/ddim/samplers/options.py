"""``SampleOptions``: every choice of a sampling run except the model, the noise and x_T, in one frozen,
validated, hashable object.

``ddim.sample``, ``FastSampler.sample``, ``generate`` and the CLI pass one of these along instead of
repeating a dozen keywords; each of them still accepts the same options as keywords (built into a
``SampleOptions`` on entry) or as ``options=`` (then with no option keyword besides it).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch

from ..checks import check_bool
from ..denoiser import network_prediction
from ..forward import PREDICTIONS
from .solvers import Solver, get_solver
from .steps import clip_x0, dynamic_threshold

__all__ = ["SampleOptions", "Eta", "check_eta", "grid_tuple", "OPTION_NAMES"]

Eta = Union[float, str, Sequence[float]]


def check_eta(eta: Eta) -> Eta:
    """η as a float ≥ 0, "large" (σ̂), or one η ≥ 0 per step as a tuple of floats (a list, tuple or 1-D tensor,
    first entry for the first, highest-t step; ``plan`` checks its length against the grid); anything else
    raises."""
    if isinstance(eta, str):
        if eta != "large":
            raise ValueError(f"eta must be a number >= 0 or 'large', got {eta!r}")
        return eta
    if (isinstance(eta, torch.Tensor) or hasattr(eta, "__array__")) and getattr(eta, "ndim", None) == 1:
        eta = [float(e) if isinstance(e, numbers.Real) else e for e in eta.tolist()]  # a tensor or a NumPy array
    if isinstance(eta, (list, tuple)):
        if not eta or any(isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e) or e < 0
                          for e in eta):
            raise ValueError(f"per-step eta must be a non-empty sequence of finite numbers >= 0, got {eta!r}")
        return tuple(float(e) for e in eta)
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0 or 'large', got {eta!r}")
    return float(eta)


def grid_tuple(timesteps) -> Optional[tuple]:
    """An explicit grid as a tuple of ints (hashable); its order and range are checked by ``plan``, which
    knows T (with ``ddim.timesteps.check_timesteps``'s messages, which these share)."""
    if timesteps is None:
        return None
    if torch.is_tensor(timesteps):
        if timesteps.ndim != 1 or timesteps.numel() == 0:
            raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(timesteps.shape)}")
        if timesteps.is_floating_point() or timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {timesteps.dtype}")
        return tuple(int(t) for t in timesteps.tolist())
    try:
        values = tuple(timesteps)
    except TypeError:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got {timesteps!r}") from None
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in values):
        raise ValueError(f"timesteps must be integers, got {list(values)[:12]!r}")
    big = [int(t) for t in values if not -2**62 < t < 2**62]  # torch's int64 would overflow; plan names the range
    if big:
        raise ValueError(f"timesteps must be training steps (0 <= t < T), got {big[0]}")
    return tuple(int(t) for t in values)


@dataclass(frozen=True)
class SampleOptions:
    """How a run walks the grid and reads the model (arguments of ``ddim.sample``, which see).

    Attributes:
        steps: S, 1 ≤ S ≤ T (ignored when ``timesteps`` is given; checked against T by ``plan``).
        eta: η ≥ 0 of σ_t(η) (DDIM eq. 16), "large" for σ̂_t, or one η per step (first: the highest t).
        spacing: how the grid is chosen (``ddim.timesteps``).
        prediction: the model's target, "epsilon", "sample" or "v"; None: the network's own (a Denoiser's, or
            what a loaded checkpoint declares: ``ddim.denoiser.network_prediction``), else ε.
        timesteps: an explicit descending grid (a tuple of ints once built), instead of steps/spacing.
        set_alpha_to_one: the last step lands on ᾱ = 1 (x_0); False: on ᾱ_0.
        clip: clamp x̂_0 to [−clip, clip] each step (None: off).
        threshold: dynamic-thresholding quantile in (0, 1] (None: off); ``threshold_max`` caps its s.
        eps_from_clipped_x0: re-derive ε̂ from the transformed x̂_0 (DDIM's choice; see ``ddim.sample``).
        solver: a ``Solver`` (a name from ``ddim.samplers.SOLVERS`` is looked up).
    """

    steps: Optional[int] = 50
    eta: Eta = 0.0
    spacing: str = "uniform"
    prediction: Optional[str] = None
    timesteps: Optional[tuple] = None
    set_alpha_to_one: bool = True
    clip: Optional[float] = None
    threshold: Optional[float] = None
    threshold_max: float = 1.0
    eps_from_clipped_x0: bool = False
    solver: Union[str, Solver] = "ddim"

    def __post_init__(self) -> None:
        set_ = lambda name, v: object.__setattr__(self, name, v)  # noqa: E731  (frozen)
        if self.prediction is not None and self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {self.prediction!r}; allowed: {', '.join(PREDICTIONS)}")
        set_("eta", check_eta(self.eta))
        set_("timesteps", grid_tuple(self.timesteps))  # steps are checked by ``plan``, which knows T
        check_bool("set_alpha_to_one", self.set_alpha_to_one)
        check_bool("eps_from_clipped_x0", self.eps_from_clipped_x0)
        if isinstance(self.clip, bool) or isinstance(self.threshold, bool):
            raise ValueError(f"clip and threshold take numbers, got clip={self.clip!r}, threshold={self.threshold!r}")
        if self.clip is not None and self.threshold is not None:
            raise ValueError("use either clip or threshold, not both")
        if self.clip is not None and not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise ValueError(f"clip must be > 0, got {self.clip!r}")
        if self.threshold is not None and not (isinstance(self.threshold, (int, float))
                                               and 0 < self.threshold <= 1):
            raise ValueError(f"threshold must be a quantile in (0, 1], got {self.threshold!r}")
        m = self.threshold_max  # s is clamped to [1, threshold_max]: NaN makes NaN images, < 1 flips signs
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 1 <= m:
            raise ValueError(f"threshold_max must be a number >= 1 (inf: no cap, as in Imagen), got {m!r}")
        set_("solver", get_solver(self.solver))

    @classmethod
    def of(cls, options: Optional["SampleOptions"] = None, **given) -> "SampleOptions":
        """``options`` itself, or ``SampleOptions(**given)``. With both, every given keyword must hold its
        default or ``options``' own value: ``sample(..., options=o, steps=20)`` with o.steps = 50 is refused
        rather than resolved silently."""
        unknown = sorted(set(given) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown sampling option(s) {', '.join(unknown)}; allowed: {', '.join(OPTION_NAMES)}")
        if options is None:
            return cls(**given)
        if not isinstance(options, SampleOptions):
            raise TypeError(f"options must be a ddim.SampleOptions, got {type(options).__name__}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        clash = [k for k, v in given.items() if not (_same(k, v, defaults[k]) or _same(k, v, getattr(options, k)))]
        if clash:
            raise ValueError(f"give the sampling options either as options= or as keywords, not both "
                             f"(got options and {', '.join(clash)})")
        return options

    @property
    def net_prediction(self) -> str:
        """``prediction``, ε when None: the options alone, not what a network declares. The entry points resolve
        ``prediction`` against the network first (``ddim.denoiser.network_prediction``), so after that this is
        what the network is read as."""
        return self.prediction or "epsilon"

    def for_network(self, net) -> "SampleOptions":
        """These options with ``prediction`` resolved against ``net`` (``ddim.denoiser.network_prediction``: the
        network's own when None, refused when contradicting it); call it before a wrapper hides the network."""
        return self.replace(prediction=network_prediction(net, self.prediction))

    def replace(self, **changes) -> "SampleOptions":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def x0_transform(self) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
        """The x̂_0 transform: clip, dynamic threshold, or None."""
        if self.clip is not None:
            clip = self.clip
            return lambda x0: clip_x0(x0, clip)
        if self.threshold is not None:
            q, s_max = self.threshold, self.threshold_max
            return lambda x0: dynamic_threshold(x0, q, s_max)
        return None



def _same(name: str, value, default) -> bool:
    """Whether a keyword holds ``default`` (a ``Solver`` counts by its name; any tensor as given)."""
    if name == "solver":
        return getattr(value, "name", value) == getattr(default, "name", default)
    return not torch.is_tensor(value) and value == default


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(SampleOptions))
