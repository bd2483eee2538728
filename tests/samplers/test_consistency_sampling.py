"""Solver "consistency": Song et al.'s multistep consistency sampling (Algorithm 1) behind the solver seam.

It is the algorithm written out by hand; its noise comes through the seam (per-sample seeds hold); and with the
exact consistency function of Gaussian data as the model it samples the data distribution at 1, 2 and 4 steps.
"""

from __future__ import annotations

import pytest
import torch

import ddim
from ddim.generate import initial_noise

F64 = torch.float64
SCHEDULE = ddim.Schedule.linear(1000)


def _net():
    net = torch.nn.Conv2d(2, 2, 3, padding=1, dtype=F64)
    torch.nn.init.normal_(net.weight, std=0.4, generator=torch.Generator().manual_seed(3))
    return lambda x, t: net(x) * (1 + t.view(-1, 1, 1, 1) / 1000)


@pytest.mark.parametrize("S", [1, 2, 4])
def test_it_is_algorithm_1(S):
    """x ← f(x_T, τ_0); for each next point τ: x ← f(√ᾱ_τ x + √(1 − ᾱ_τ) z, τ), f the model's x̂_0 (v-prediction)."""
    model = _net()
    xT = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    tau = ddim.timesteps(SCHEDULE, S, "trailing")
    out = ddim.sample(model, SCHEDULE, xT, timesteps=tau, prediction="v", solver="consistency",
                      generator=torch.Generator().manual_seed(1))
    g, abar = torch.Generator().manual_seed(1), SCHEDULE.alphas_cumprod

    def f(x, t):
        a = abar[t]
        return a.sqrt() * x - (1 - a).sqrt() * model(x, torch.full((3,), t))

    x = f(xT, int(tau[0]))
    for t in tau[1:].tolist():
        z = torch.randn(x.shape, generator=g, dtype=F64)
        x = f(abar[t].sqrt() * x + (1 - abar[t]).sqrt() * z, t)
    assert torch.allclose(out, x, atol=1e-12, rtol=0)
    p = ddim.samplers.plan(SCHEDULE, timesteps=tau, solver="consistency")
    assert ddim.samplers.get_solver("consistency").draws(p) == (1,) * (S - 1) + (0,)  # none onto ᾱ = 1


def test_per_sample_seeds_hold():
    """Image i is a function of (seed, i) alone: the same in a batch of 4 and in a batch of its own."""
    model = _net()
    x, gens = initial_noise(7, range(4), (2, 5, 5), dtype=F64)
    full = ddim.sample(model, SCHEDULE, x, steps=4, spacing="trailing", prediction="v", solver="consistency",
                       generator=gens)
    x2, gens2 = initial_noise(7, [2], (2, 5, 5), dtype=F64)
    one = ddim.sample(model, SCHEDULE, x2, steps=4, spacing="trailing", prediction="v", solver="consistency",
                      generator=gens2)
    assert torch.equal(one[0], full[2])


@pytest.mark.parametrize("S", [1, 2, 4])
def test_the_exact_consistency_function_samples_the_data(S):
    """x_0 ~ N(μ, s² I): f(x_t) = μ + s (x_t − α μ)/√(α² s² + σ²) maps the noised marginal onto the data at any t,
    so 1, 2 and 4 steps all give N(μ, s²) (n = 40,000 per dimension, 4 standard errors)."""
    mu, s = torch.tensor([0.3, -0.5], dtype=F64).view(1, 2, 1, 1), 0.6
    abar = SCHEDULE.alphas_cumprod

    def f(x, t):
        a = abar[t].view(-1, 1, 1, 1)
        return mu + s * (x - a.sqrt() * mu) / (a * s**2 + 1 - a).sqrt()

    n = 20_000
    xT = torch.randn(n, 2, 1, 1, generator=torch.Generator().manual_seed(S), dtype=F64)
    x = ddim.sample(f, SCHEDULE, xT, steps=S, spacing="trailing", prediction="sample", solver="consistency",
                    generator=torch.Generator().manual_seed(10 + S)).flatten(1)
    assert ((x.mean(0) - mu.flatten()).abs() < 4 * s / n**0.5).all(), x.mean(0)
    assert ((x.std(0) - s).abs() < 4 * s / (2 * n) ** 0.5).all(), x.std(0)


def test_eta_is_refused():
    x = torch.zeros(1, 1, 2, 2)
    for eta in (0.5, "large", (0.0, 1.0)):
        with pytest.raises(ValueError, match="solver 'consistency' draws fresh noise"):
            ddim.sample(lambda x, t: x, SCHEDULE, x, steps=2, solver="consistency", eta=eta)
