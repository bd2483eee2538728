"""Consistency distillation of a (guided) diffusion model: the pure math of its consistency function, target and
target network.

Song, Dhariwal, Chen & Sutskever, "Consistency Models" (ICML 2023), written in this codebase's VP notation:
α = √ᾱ, σ = √(1 − ᾱ); EDM's noise level s = σ/α = √((1 − ᾱ)/ᾱ) and scaled input y = x_t/α = x_0 + s ε.

    consistency function:  f(x_t, t) = the end x_0 of the probability-flow ODE trajectory through x_t;
                           boundary condition f(x, t_min) = x                                       (their §3)
    parametrisation:       f_θ(x, t) = c_skip(t) x + c_out(t) F_θ(x, t),
                           c_skip(t_min) = 1, c_out(t_min) = 0                                   (their eq. 5)
    CD target (Alg. 2):    x_{t_{n+1}} = α x_0 + σ ε;  x̂_{t_n} = one teacher ODE step t_{n+1} → t_n (here DDIM,
                           η = 0, the guided teacher's x̂_0 rule);  target f_θ⁻(x̂_{t_n}, t_n), θ⁻ without gradient
    loss (eq. 7):          λ(t_n) d(f_θ(x_{t_{n+1}}, t_{n+1}), f_θ⁻(x̂_{t_n}, t_n)),  d = squared L2 (mean over
                           pixels), λ ≡ 1 (their choice in every experiment); ``distill.weighted_mse``
    target network (eq. 8): θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ)
    sampling (Alg. 1):     x ← f(x_T, T); for each next grid point τ: x ← f(α_τ x + σ_τ z, τ)
                           (``ddim.samplers.solvers.consistency``)

The boundary. The teacher grid is the descending trailing grid τ_0 = T − 1 > … > τ_{K−1}, and, as everywhere in
this codebase, the step after its last point lands on ᾱ = 1 (σ = s = 0), where x_t = x_0: that is t_min. The n-th
CD pair is (τ_n, τ_{n+1}) with τ_K := t_min, so the last pair's target is the teacher's DDIM step onto x_0
itself: the chain of targets is anchored to the data there, and nowhere else.

The parametrisation. For a v-prediction network, x̂_0 = α x_t − σ v; with y = x_t/α and α² = 1/(1 + s²),

    x̂_0 = y/(1 + s²) + (s/√(1 + s²)) (−v) = c_skip^CM(s) y + c_out^CM(s) (−v),
    c_skip^CM(s) = σ_d²/((s − s_min)² + σ_d²),   c_out^CM(s) = σ_d (s − s_min)/√(s² + σ_d²),   σ_d = 1, s_min = 0,

exactly Song et al.'s skip parametrisation (Appendix C, EDM's preconditioning shifted to s_min) with F_θ = −v.
For an ε-prediction network x̂_0 = y − s ε (c_skip = 1, c_out = −s: also 1 and 0 at s = 0). So the student's
consistency function IS its x̂_0 as ``ddim.denoiser.Denoiser`` reads it (unclamped), the boundary condition
holds for any network output, and at initialisation f_θ is the guided teacher's denoiser, as Song et al.
initialise CD from the diffusion model. In x_t's coordinates (``consistency_scalings``):
v: c_skip = α, c_out = −σ; ε: c_skip = 1/α, c_out = −σ/α. An x_0-prediction network (c_skip = 0) has no
boundary condition and is refused.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["consistency_scalings", "consistency_fn", "cm_scalings", "update_target", "BOUNDARY_PREDICTIONS"]

BOUNDARY_PREDICTIONS = ("v", "epsilon")  # the prediction types whose x̂_0 read satisfies f(x, t_min) = x


def _check_prediction(prediction: str) -> None:
    if prediction not in BOUNDARY_PREDICTIONS:
        raise ValueError(f"a consistency function needs a network whose x̂_0 read keeps f(x, t_min) = x (prediction "
                         f"{' or '.join(BOUNDARY_PREDICTIONS)}); prediction {prediction!r} has c_skip = 0")


def consistency_scalings(abar, prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) of f_θ(x_t, t) = c_skip x_t + c_out F_θ(x_t, t) at ᾱ_t, F_θ the raw network output (module
    docstring): v: (α, −σ); ε: (1/α, −σ/α). At ᾱ = 1 (t_min) both give exactly (1, 0): the boundary condition
    (Song et al. eq. 5). ``abar``: a tensor (any shape, broadcasting against x)."""
    _check_prediction(prediction)
    abar = torch.as_tensor(abar)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    if prediction == "v":
        return alpha, -sigma
    return 1 / alpha, -sigma / alpha


def consistency_fn(out: torch.Tensor, x_t: torch.Tensor, abar, prediction: str) -> torch.Tensor:
    """f_θ(x_t, t) = c_skip x_t + c_out F_θ from the network output ``out`` (``consistency_scalings``): the x̂_0
    a ``Denoiser`` reads, unclamped; at ᾱ = 1 it is x_t exactly, whatever ``out`` holds (if finite)."""
    c_skip, c_out = consistency_scalings(torch.as_tensor(abar, dtype=torch.promote_types(x_t.dtype, torch.float32),
                                                         device=x_t.device), prediction)
    return c_skip * x_t + c_out * out


def cm_scalings(s: torch.Tensor, sigma_data: float = 1.0, s_min: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Song et al.'s (c_skip, c_out) on EDM's scaled input y = x_t/α at noise level s (Appendix C):
    c_skip = σ_d²/((s − s_min)² + σ_d²), c_out = σ_d (s − s_min)/√(s² + σ_d²). With σ_d = 1, s_min = 0 they are
    ``consistency_scalings``' v-prediction pair in y's coordinates (module docstring; the tests check it)."""
    return sigma_data**2 / ((s - s_min) ** 2 + sigma_data**2), sigma_data * (s - s_min) / (s**2 + sigma_data**2).sqrt()


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, mu: float) -> None:
    """θ⁻ ← μ θ⁻ + (1 − μ) θ (Song et al. eq. 8; μ = 0: θ⁻ = θ), buffers copied; ``online`` unwrapped by the
    caller (no DDP or compile wrapper)."""
    mine, theirs = list(target.parameters()), [p.detach() for p in online.parameters()]
    if len(mine) != len(theirs):
        raise ValueError(f"the target network has {len(mine)} parameters but the online one {len(theirs)}")
    torch._foreach_lerp_(mine, theirs, 1.0 - mu)
    for a, b in zip(target.buffers(), online.buffers()):
        a.copy_(b)
