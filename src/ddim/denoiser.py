"""A network read as a denoiser: (x̂_0, ε̂) and the score at (x_t, t), in one place.

Whatever a network predicts (``prediction``: ε, x_0 or v), the samplers, the score view, guidance and
inversion see the same estimates (EDM's preconditioning wrappers, in DDIM's terms):

    x̂_0 = f_θ(x_t) = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t       (DDIM eq. 9)
    ε̂ = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)
    ∇ₓ log q(x_t) ≈ −ε̂ / √(1 − ᾱ_t)                     (Tweedie; Song et al. 2021)

(``ddim.forward`` holds the formulas; this is the one place that reads a network's output through them.)
A ``Denoiser`` holds the network, any callable ``net(x_t, t)`` returning its prediction, the schedule and
the prediction type. Guidance wrappers (``ddim.guidance``) are networks around networks, combining the
predictions of their branches (a linear combination is the same for every prediction type), so a guided
network is read by a Denoiser like any other.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .checks import check_finite_result, check_float_dtype, check_images
from .forward import PREDICTIONS, abar_at, predict_x0_eps, score_from_eps
from .schedule import Schedule

__all__ = ["Denoiser", "score", "network_prediction", "own_prediction"]

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _inner(net):
    """The network a known prediction-keeping wrapper holds, else None: DataParallel/DDP (``.module``),
    torch.compile's module (``._orig_mod``), and ddim's wrappers that say so (``passes_prediction``:
    ``conditioned``'s, CFG, a student's w input, classifier guidance). Anything else may change what the
    output means, so nothing is looked for behind it."""
    if isinstance(net, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return net.module
    if type(net).__name__ == "OptimizedModule":  # torch._dynamo's, not imported here: that import is slow
        return getattr(net, "_orig_mod", None)
    return getattr(net, "model", None) if getattr(type(net), "passes_prediction", False) else None


def own_prediction(net) -> Optional[str]:
    """The prediction ``net`` declares (a string ``prediction`` attribute, which ``ddim.load_checkpoint`` sets
    from the run's config), looked for through known wrappers (``_inner``); None when nothing declares one.
    A declared string that is no prediction type (diffusers' "v_prediction") is an error."""
    for _ in range(16):  # wrappers of wrappers, but never a cycle
        own = getattr(net, "prediction", None)
        if isinstance(own, str):
            if own not in PREDICTIONS:
                raise ValueError(f"the network's prediction attribute is {own!r}, not a prediction type (allowed: "
                                 f"{', '.join(PREDICTIONS)})")
            return own
        net = _inner(net)
        if net is None:
            return None
    return None


def network_prediction(net, prediction: Optional[str] = None) -> str:
    """What ``net``'s output means: ``prediction`` when given, else the network's own (``own_prediction``),
    else ε.

    A given prediction that contradicts the network's own is an error, not a choice: a v-network read as ε
    samples noise, and nothing downstream would say so.
    """
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {prediction!r}; allowed: {', '.join(PREDICTIONS)}")
    own = own_prediction(net)
    if prediction is None:
        return own or "epsilon"
    if own is not None and prediction != own:
        raise ValueError(f"prediction={prediction!r} disagrees with the network's own {own!r} (its prediction "
                         "attribute, from its checkpoint or its wrapper); leave prediction unset to use it")
    return prediction


class Denoiser:
    """``net`` (``net(x_t, t)`` -> its prediction) read as (x̂_0, ε̂) on ``schedule``.

    Args:
        net: x_t (B, C, H, W) float and t (B,) int64 training-step indices -> a tensor shaped like x_t
            holding the prediction named by ``prediction``.
        schedule: the ``ddim.Schedule`` the network was trained on.
        prediction: "epsilon", "sample" (x_0) or "v"; None: the network's own (``network_prediction``), else ε.
        io_dtype: the floating-point dtype the network takes, which every caller then uses (None: the caller's
            choice, by default x's); its output comes back in x's dtype, so a float64 chain can run a float32
            network.
    """

    def __init__(self, net: Net, schedule: Schedule, prediction: Optional[str] = None,
                 io_dtype: Optional[torch.dtype] = None):
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a ddim.Schedule, got {type(schedule).__name__}")
        if not callable(net):
            raise TypeError(f"the model must be callable as model(x_t, t), got {type(net).__name__}")
        prediction = network_prediction(net, prediction)
        self.net, self.schedule, self.prediction = net, schedule, prediction
        self.io_dtype = check_float_dtype("io_dtype", io_dtype)

    @classmethod
    def of(cls, model, schedule: Schedule, prediction: Optional[str] = None) -> "Denoiser":
        """``model`` itself if it is a Denoiser (then ``schedule`` must be its own and ``prediction`` None or
        its own), else ``Denoiser(model, schedule, network_prediction(model, prediction))`` (when None: the
        network's own prediction if it has one, else ε)."""
        if not isinstance(model, Denoiser):
            return cls(model, schedule, network_prediction(model, prediction))
        if prediction is not None and prediction != model.prediction:
            raise ValueError(f"prediction={prediction!r} disagrees with the Denoiser's own {model.prediction!r}")
        if schedule is not model.schedule and not (
                isinstance(schedule, Schedule) and torch.equal(schedule.alphas_cumprod, model.schedule.alphas_cumprod)):
            raise ValueError("the schedule differs from the Denoiser's own")
        return model

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's raw prediction (a Denoiser can stand wherever a network is expected)."""
        return self.net(x, t)

    def denoise(self, x: torch.Tensor, t: torch.Tensor, abar_t=None, io_dtype: Optional[torch.dtype] = None):
        """(x̂_0, ε̂) at x_t (module docstring).

        Args:
            x: (B, …) x_t in the caller's working dtype (the samplers' float32 or float64).
            t: (B,) int64 training steps.
            abar_t: ᾱ_t as a float or a tensor broadcasting against x (a loop passes its own float64-derived
                column); None: gathered from the schedule at t.
            io_dtype: the dtype the network sees unless the Denoiser has its own (default: x's); its output
                comes back in x's dtype.
        Returns:
            (x̂_0, ε̂), both shaped like x, in x's dtype.
        """
        out = _call(self.net, x, t, self.io_dtype or io_dtype or x.dtype)
        if abar_t is None:
            abar_t = abar_at(self.schedule.alphas_cumprod, t, x)
        return self.read(out, x, abar_t)

    def read(self, out: torch.Tensor, x: torch.Tensor, abar_t):
        """(x̂_0, ε̂) from a raw prediction ``out`` of this denoiser's type at x_t: the one place a prediction
        is read (guidance methods read their branches through it). out, x: (B, …); abar_t broadcasts."""
        return predict_x0_eps(out, x, abar_t, self.prediction)

    @property
    def split_pair(self) -> bool:
        """Whether ``denoise`` returns an (x̂_0, ε̂) that is not one prediction (CFG++: x̂_0 of the guided ε̂, ε̂
        the unconditional one). Only a solver stepping with both reads such a pair as meant, and ε̂ must not be
        re-derived from x̂_0 (``ddim.samplers.loop.bind``)."""
        return False

    @property
    def graph_safe(self) -> bool:
        """Whether ``denoise`` never reads a device value on the host nor keeps state between calls, so a loop
        over it can be captured as one CUDA graph (``ddim.samplers.fast``)."""
        return True

    def start_run(self) -> None:
        """Called by the sampling loop before step 0: a denoiser that carries state between the steps of a
        run (APG's momentum) forgets the previous run's here. Stateless by default."""

    def score(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """∇ₓ log q(x_t) as the network estimates it, −ε̂/√(1 − ᾱ_t): (B, …) in x's dtype (computed in at
        least float32: in bf16, ᾱ = 0.9999 would round to 1). NaN or Inf in the result is refused."""
        check_images(x, "x_t")
        if not torch.is_tensor(t) or t.dtype != torch.int64 or t.shape != (x.shape[0],):
            raise ValueError(f"t must be an int64 tensor shaped ({x.shape[0]},), got {t!r}")
        T = self.schedule.num_steps
        if int(t.min()) < 0 or int(t.max()) >= T:
            raise ValueError(f"t must lie in [0, {T - 1}], got values in [{int(t.min())}, {int(t.max())}]")
        work = torch.promote_types(x.dtype, torch.float32)
        abar = abar_at(self.schedule.alphas_cumprod, t, x.to(work))
        if bool((abar >= 1).any()):
            raise ValueError("the score is undefined at ᾱ_t = 1 (no noise)")
        _, eps = self.denoise(x.to(work), t, abar, io_dtype=x.dtype)
        s = score_from_eps(eps, abar).to(x.dtype)
        check_finite_result(s, "scores")
        return s


def score(model, schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
          prediction: Optional[str] = None) -> torch.Tensor:
    """∇ₓ log q(x_t) as ``model`` estimates it, from any prediction type: ``Denoiser.score``.

    Args:
        model: ``model(x_t, t)`` returning its prediction (or a ``Denoiser``). schedule: the ``ddim.Schedule``
            it was trained on. x_t: (B, …) float. t: (B,) int64 training steps. prediction: "epsilon",
            "sample" or "v"; None: the network's own (``network_prediction``), else ε.
    Returns:
        (B, …) in x_t's dtype.
    """
    return Denoiser.of(model, schedule, prediction).score(x_t, t)


def _call(net: Net, x: torch.Tensor, t: torch.Tensor, io_dtype: torch.dtype) -> torch.Tensor:
    """The network sees x in ``io_dtype``; its output, checked, comes back in x's dtype."""
    out = net(x.to(io_dtype), t)
    if not torch.is_tensor(out):
        raise ValueError(f"the model must return a torch.Tensor, got {type(out).__module__}.{type(out).__name__}")
    if not out.is_floating_point():  # an int or bool output is a bug, and complex would lose its imaginary part
        raise ValueError(f"the model must return a floating-point tensor, got dtype {out.dtype}")
    if out.shape != x.shape:
        raise ValueError(f"model output has shape {tuple(getattr(out, 'shape', ()))}, "
                         f"expected {tuple(x.shape)} (the shape of x_t)")
    return out.to(x.dtype)
