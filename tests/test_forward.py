"""Forward process moments and prediction-target conversions."""

import pytest
import torch

import ddim
from ddim import forward as F


def test_q_sample_moments():
    g = torch.Generator().manual_seed(0)
    s = ddim.Schedule.linear(1000)
    x0 = torch.tensor([0.7, -1.3], dtype=torch.float64)
    n = 200_000
    for t in (0, 250, 999):
        abar = s.alphas_cumprod[t]
        xt = F.q_sample(x0.expand(n, 2), abar, torch.randn(n, 2, generator=g, dtype=torch.float64))
        se = (1 - abar).sqrt() / n**0.5  # standard error of the mean
        assert torch.allclose(xt.mean(0), abar.sqrt() * x0, atol=5 * se.item())
        assert torch.allclose(xt.var(0), (1 - abar).expand(2), rtol=0.02)


@pytest.mark.parametrize("abar", [0.9999, 0.5, 1e-4])
def test_round_trips(abar):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 8, 3, 4, 4, generator=g, dtype=torch.float64)
    xt = F.q_sample(x0, abar, eps)
    v = F.v_from_x0_eps(x0, eps, abar)
    assert torch.allclose(F.x0_from_eps(xt, eps, abar), x0, atol=1e-9 / abar**0.5)
    assert torch.allclose(F.eps_from_x0(xt, x0, abar), eps, atol=1e-9 / (1 - abar) ** 0.5)
    assert torch.allclose(F.x0_from_v(xt, v, abar), x0, atol=1e-12)
    assert torch.allclose(F.eps_from_v(xt, v, abar), eps, atol=1e-12)
    for pred in F.PREDICTIONS:  # each target read back gives the same (x0, eps)
        target = F.target_from_x0_eps(x0, eps, abar, pred)
        got_x0, got_eps = F.predict_x0_eps(target, xt, abar, pred)
        assert torch.allclose(got_x0, x0, atol=1e-8) and torch.allclose(got_eps, eps, atol=1e-8)


def test_abar_at_broadcasts_per_sample():
    s = ddim.Schedule.linear(1000)
    x = torch.zeros(3, 1, 2, 2)
    a = F.abar_at(s.alphas_cumprod, torch.tensor([0, 10, 999]), x)
    assert a.shape == (3, 1, 1, 1) and a.dtype == torch.float32
    assert a[2].item() == pytest.approx(s.alphas_cumprod[999].item(), rel=1e-6)


def test_unknown_prediction():
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="unknown prediction type 'x0'"):
        F.predict_x0_eps(x, x, 0.5, "x0")
