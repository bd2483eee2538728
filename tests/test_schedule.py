"""Schedules match their closed forms, the reference library, and round-trip through their config."""

import math

import pytest
import torch

import ddim
from ddim.schedule import rescale_zero_terminal_snr

MAKERS = {
    "linear": lambda: ddim.Schedule.linear(1000, 1e-4, 0.02),
    "scaled_linear": lambda: ddim.Schedule.scaled_linear(1000, 0.00085, 0.012),
    "cosine": lambda: ddim.Schedule.cosine(1000),
    "sigmoid": lambda: ddim.Schedule.sigmoid(1000, 1e-4, 0.02),
}


def test_linear_closed_form():
    s = ddim.Schedule.linear(1000, 1e-4, 0.02)
    assert s.betas.dtype == torch.float64 and s.num_steps == 1000 and len(s) == 1000
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-18)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-17)
    assert torch.allclose(s.betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    # ᾱ_t = ∏(1-β_s), computed independently in log space
    assert torch.allclose(s.alphas_cumprod, torch.log1p(-s.betas).cumsum(0).exp(), rtol=1e-12)


def test_scaled_linear_closed_form():
    s = ddim.Schedule.scaled_linear(1000, 0.00085, 0.012)
    assert torch.allclose(s.betas.sqrt().diff(), torch.full((999,), (0.012**0.5 - 0.00085**0.5) / 999,
                                                              dtype=torch.float64))


def test_cosine_closed_form():
    s = ddim.Schedule.cosine(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):  # uncapped region: ᾱ_t = f((t+1)/T) / f(0)
        assert s.alphas_cumprod[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), rel=1e-10)
    assert s.betas.max().item() == pytest.approx(0.999)  # the cap bites at the end


def test_sigmoid_closed_form():
    s = ddim.Schedule.sigmoid(1000, 1e-4, 0.02)
    u = torch.linspace(-6, 6, 1000, dtype=torch.float64)
    assert torch.allclose(s.betas, 1e-4 + (0.02 - 1e-4) / (1 + torch.exp(-u)), rtol=1e-12)


@pytest.mark.parametrize("name", list(MAKERS))
def test_zero_terminal_snr(name):
    base = MAKERS[name]()
    z = ddim.Schedule.from_config({**base.to_config(), "zero_terminal_snr": True})
    assert z.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    # √ᾱ is an affine map of the old √ᾱ
    old, new = base.alphas_cumprod.sqrt(), z.alphas_cumprod.sqrt()
    slope = (new[0] - new[-1]) / (old[0] - old[-1])
    assert torch.allclose(new, (old - old[-1]) * slope, atol=1e-12)


@pytest.mark.parametrize("name", list(MAKERS))
def test_config_round_trip(name):
    s = MAKERS[name]()
    again = ddim.Schedule.from_config(s.to_config())
    assert torch.equal(again.betas, s.betas) and again.name == s.name
    custom = ddim.Schedule.from_betas(s.betas)
    assert torch.equal(ddim.Schedule.from_config(custom.to_config()).betas, s.betas)


@pytest.mark.parametrize("name,diffusers_name", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                                 ("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")])
@pytest.mark.parametrize("zsnr", [False, True])
def test_matches_diffusers(name, diffusers_name, zsnr):
    diffusers = pytest.importorskip("diffusers")
    s = MAKERS[name]()
    if zsnr:
        s = ddim.Schedule.from_config({**s.to_config(), "zero_terminal_snr": True})
    ref = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name,
                                  beta_start=s.params.get("beta_start", 1e-4),
                                  beta_end=s.params.get("beta_end", 0.02), rescale_betas_zero_snr=zsnr)
    # diffusers builds its schedule in float32; agreement is to float32 precision
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod.double(), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("call,msg", [
    (lambda: ddim.Schedule.linear(0), "num_steps"),
    (lambda: ddim.Schedule.linear(1000, beta_start=0.0), "beta_start"),
    (lambda: ddim.Schedule.linear(1000, beta_end=1.5), "beta_end"),
    (lambda: ddim.Schedule.cosine(1000, max_beta=1.0), "max_beta"),
    (lambda: ddim.Schedule.from_betas([0.1, float("nan")]), "finite"),
    (lambda: ddim.Schedule.from_betas([1.0, 0.5]), "last beta"),
    (lambda: ddim.Schedule.from_config({"name": "exp"}), "unknown schedule"),
])
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_rescale_is_pure():
    b = torch.linspace(1e-4, 0.02, 10, dtype=torch.float64)
    before = b.clone()
    rescale_zero_terminal_snr(b)
    assert torch.equal(b, before)
