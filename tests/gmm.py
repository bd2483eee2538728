"""A Gaussian mixture and its exact (Bayes-optimal) denoisers, for oracle tests of the samplers.

Data:   x_0 ~ Σ_k π_k N(μ_k, s_k² I)  in d dimensions.
Noised: q(x_t | x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I), hence in closed form

    q(x_t) = Σ_k π_k N(√ᾱ_t μ_k, v_k I),          v_k = ᾱ_t s_k² + 1 − ᾱ_t
    r_k(x_t) = q(k | x_t) ∝ π_k N(x_t; √ᾱ_t μ_k, v_k I)        (computed with logsumexp)
    ∇ log q(x_t) = −Σ_k r_k (x_t − √ᾱ_t μ_k) / v_k
    ε*(x_t)  = E[ε | x_t]  = −√(1−ᾱ_t) ∇ log q(x_t)             (Tweedie)
    x̂_0*(x_t) = E[x_0 | x_t] = Σ_k r_k (μ_k + √ᾱ_t s_k²/v_k · (x_t − √ᾱ_t μ_k))   (Gaussian conditioning)
    v*(x_t)  = √ᾱ_t ε* − √(1−ᾱ_t) x̂_0*

x̂_0* is computed from the per-component Gaussian posteriors, *not* from ε* through DDIM eq. 9, so
the two are independent formulas; ``x0_from_eps(x_t, ε*, ᾱ) == x̂_0*`` is Tweedie's identity and is
checked by the tests. These are the minimisers of the DDPM objective for each prediction type, so
a sampler fed them should reproduce the mixture up to its own discretisation error.

Everything is float64 and vectorised over the batch (no matrix products, so the result for one
sample does not depend on what else is in the batch).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["GaussianMixture", "PREDICTIONS"]

_F64 = torch.float64
PREDICTIONS = ("epsilon", "sample", "v")


def _column(abar) -> torch.Tensor:
    """ᾱ as a float64 column (B, 1) (or (1, 1) for one shared value) to broadcast against (B, K)."""
    return torch.as_tensor(abar, dtype=_F64).reshape(-1, 1)


class GaussianMixture:
    """x_0 ~ Σ_k π_k N(μ_k, s_k² I).

    Args:
        weights: (K,) mixture weights π_k (normalised here).
        means: (K, d) component means μ_k.
        stds: (K,) isotropic component standard deviations s_k > 0.
    """

    def __init__(self, weights: Sequence[float], means: Sequence[Sequence[float]], stds: Sequence[float]):
        w = torch.as_tensor(weights, dtype=_F64)
        self.weights = w / w.sum()
        self.means = torch.as_tensor(means, dtype=_F64)
        self.stds = torch.as_tensor(stds, dtype=_F64)
        K = self.weights.numel()
        if self.means.ndim != 2 or self.means.shape[0] != K or self.stds.shape != (K,):
            raise ValueError("need weights (K,), means (K, d) and stds (K,)")
        if (self.stds <= 0).any() or (self.weights <= 0).any():
            raise ValueError("weights and stds must be positive")
        self.K, self.d = K, self.means.shape[1]

    # ---- data ------------------------------------------------------------------------------------
    @property
    def mean(self) -> torch.Tensor:
        """(d,) overall mean Σ_k π_k μ_k."""
        return (self.weights[:, None] * self.means).sum(0)

    def sample(self, n: int, generator: torch.Generator | None = None):
        """n draws of x_0 and their component labels: ((n, d) float64, (n,) int64)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=_F64)
        return self.means[labels] + self.stds[labels, None] * z, labels

    def nearest_mode(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) index of the closest μ_k to each row of x (n, d)."""
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        return d2.argmin(1)

    # ---- the noised marginal q(x_t) and the optimal predictions --------------------------------
    def _parts(self, x: torch.Tensor, abar: torch.Tensor):
        """For x (B, d) and ᾱ (B,) or (1,): responsibilities r (B, K), residuals x − √ᾱ μ_k (B, K, d), v_k (B, K)."""
        logits, resid, var, a = self._logits(x, abar)
        r = torch.softmax(logits, dim=1)  # = exp(logits − logsumexp(logits)), the stable form
        return r, resid, var, a

    def _logits(self, x: torch.Tensor, abar: torch.Tensor):
        a = _column(abar)                                            # (B, 1) or (1, 1)
        var = a * self.stds[None] ** 2 + (1 - a)                     # (B or 1, K)  v_k
        resid = x[:, None, :] - a.sqrt()[:, :, None] * self.means[None]  # (B, K, d)
        # log π_k + log N(x; √ᾱ μ_k, v_k I), up to the k-independent −(d/2) log 2π
        logits = (torch.log(self.weights)[None] - 0.5 * self.d * torch.log(var)) - 0.5 * (resid**2).sum(-1) / var
        return logits, resid, var, a

    def classifier(self, schedule) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The exact noisy classifier as ``classifier(x_t, t)`` -> (B, K) logits: log q(k | x_t) up to a
        per-sample constant (differentiable in x_t, float64)."""
        abar_table = schedule.alphas_cumprod.to(_F64)

        def classifier(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            flat = x_t.reshape(x_t.shape[0], -1).to(_F64)
            return self._logits(flat, abar_table[t.cpu()].to(flat.device))[0]

        return classifier

    def log_prob(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """(B,) log q(x_t) at ᾱ (B,)."""
        a = _column(abar)
        var = a * self.stds[None] ** 2 + (1 - a)
        resid = x[:, None, :] - a.sqrt()[:, :, None] * self.means[None]
        log_n = -0.5 * (resid**2).sum(-1) / var - 0.5 * self.d * torch.log(2 * math.pi * var)
        return torch.logsumexp(torch.log(self.weights)[None] + log_n, dim=1)

    def score(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """(B, d) ∇_x log q(x_t)."""
        r, resid, var, _ = self._parts(x, abar)
        return -(r[:, :, None] * resid / var[:, :, None]).sum(1)

    def eps(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """(B, d) ε* = E[ε | x_t] = −√(1−ᾱ) ∇ log q(x_t)."""
        return -(1 - _column(abar)).sqrt() * self.score(x, abar)

    def x0(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """(B, d) x̂_0* = E[x_0 | x_t], from the per-component Gaussian posteriors (not from ε*)."""
        r, resid, var, a = self._parts(x, abar)
        gain = a.sqrt() * self.stds[None] ** 2 / var                   # (B, K)
        post_mean = self.means[None] + gain[:, :, None] * resid         # (B, K, d)
        return (r[:, :, None] * post_mean).sum(1)

    def v(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """(B, d) v* = √ᾱ ε* − √(1−ᾱ) x̂_0*."""
        a = _column(abar)
        return a.sqrt() * self.eps(x, abar) - (1 - a).sqrt() * self.x0(x, abar)

    def predict(self, x: torch.Tensor, abar: torch.Tensor, prediction: str = "epsilon") -> torch.Tensor:
        if prediction == "epsilon":
            return self.eps(x, abar)
        if prediction == "sample":
            return self.x0(x, abar)
        if prediction == "v":
            return self.v(x, abar)
        raise ValueError(f"unknown prediction {prediction!r}")

    def model(self, schedule, prediction: str = "epsilon") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The optimal denoiser as a sampler-ready ``model(x_t, t)``.

        x_t may be (B, d) or (B, d, 1, 1) (anything whose trailing dims hold d numbers); t is an int64
        (B,) tensor of training-step indices into ``schedule.alphas_cumprod``. The output has x_t's shape
        and dtype.
        """
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}")
        abar_table = schedule.alphas_cumprod.to(_F64)

        def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            B = x_t.shape[0]
            flat = x_t.reshape(B, -1).to(_F64)
            if flat.shape[1] != self.d:
                raise ValueError(f"expected {self.d} numbers per sample, got shape {tuple(x_t.shape)}")
            if t.shape != (B,) or t.dtype != torch.int64:
                raise ValueError(f"t must be int64 (B,), got {t.dtype} {tuple(t.shape)}")
            t = t.cpu()
            # One ᾱ for the whole batch when all t agree (what the samplers pass): cheaper, same values.
            idx = t[:1] if bool((t == t[0]).all()) else t
            out = self.predict(flat, abar_table[idx].to(flat.device), prediction)
            return out.to(x_t.dtype).reshape(x_t.shape)

        return model


class ConditionalOracle(nn.Module):
    """Exact ε* of a Gaussian mixture whose prior over components is tilted by a label embedding e (B, K):
    π_k ∝ π_k · exp(e_k). Class rows: 2 · one-hot (favour that component; the classes overlap, so guidance
    matters); the null row (K, the number of components): zeros,
    the whole mixture. Called as the UNet is: ``model(x, t, labels)`` or ``model(x, t, label_emb=e)``."""

    def __init__(self, gmm: GaussianMixture, schedule: ddim.Schedule):
        super().__init__()
        self.gmm, self.abar = gmm, schedule.alphas_cumprod.to(torch.float64)
        self.table = nn.Parameter(torch.cat([2.0 * torch.eye(gmm.K), torch.zeros(1, gmm.K)]).double(), requires_grad=False)
        self.null_label = gmm.K

    def label_embedding(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table[labels]

    def forward(self, x, t, labels=None, *, label_emb=None):
        e = self.table[labels] if label_emb is None else label_emb
        flat = x.reshape(x.shape[0], -1).double()
        logits, resid, var, a = self.gmm._logits(flat, self.abar[t])
        r = torch.softmax(logits + e, dim=1)
        score = -(r[:, :, None] * resid / var[:, :, None]).sum(1)
        return (-(1 - a).sqrt() * score).reshape(x.shape).to(x.dtype)
