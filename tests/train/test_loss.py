"""The training objective: targets, Min-SNR-γ weights, label dropout, determinism."""

import pytest
import torch

from ddim import Schedule
from ddim.forward import abar_at, q_sample, v_from_x0_eps
from ddim.config import TrainConfig
from ddim.train.loss import (diffusion_loss, draw, drop_labels, log_sigma_table, lognormal_t, min_snr_weight,
                             training_loss)

S = Schedule.linear(1000)


def _batch(seed=0, B=6):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 1, 4, 4, generator=g) * 2 - 1
    d = draw(x0.shape, S.num_steps, g)
    return x0, d.t, d.eps


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v"])
def test_oracle_model_has_zero_loss_and_others_do_not(prediction):
    x0, t, eps = _batch()
    abar = abar_at(S.alphas_cumprod, t, x0)
    truth = {"epsilon": eps, "sample": x0, "v": v_from_x0_eps(x0, eps, abar)}

    def oracle(x_t, t_):
        assert torch.allclose(x_t, q_sample(x0, abar, eps))  # the model sees x_t of DDPM eq. 4
        return truth[prediction]

    assert diffusion_loss(oracle, S, x0, t, eps, prediction=prediction).item() == pytest.approx(0.0, abs=1e-12)
    wrong = next(v for k, v in truth.items() if k != prediction)
    assert diffusion_loss(lambda x, t_: wrong, S, x0, t, eps, prediction=prediction).item() > 1e-3


def test_loss_is_mean_squared_error_over_pixels_and_batch():
    x0, t, eps = _batch()
    out = torch.full_like(x0, 0.5)
    expected = ((eps - 0.5) ** 2).mean()
    assert torch.allclose(diffusion_loss(lambda x, t_: out, S, x0, t, eps), expected)


def test_min_snr_weights_match_hang_et_al():
    snr = torch.tensor([0.0, 0.5, 5.0, 20.0], dtype=torch.float64)
    g = 5.0
    assert torch.allclose(min_snr_weight(snr, g, "sample"), torch.tensor([0.0, 0.5, 5.0, 5.0], dtype=torch.float64))
    # ε-target: min(SNR, γ)/SNR, defined as 1 at SNR = 0 (zero terminal SNR) instead of 0/0
    assert torch.allclose(min_snr_weight(snr, g, "epsilon"), torch.tensor([1.0, 1.0, 1.0, 0.25], dtype=torch.float64))
    assert torch.allclose(min_snr_weight(snr, g, "v"), torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 21], dtype=torch.float64))
    assert torch.equal(min_snr_weight(snr, None, "v"), torch.ones_like(snr))


def test_min_snr_weighted_loss_uses_per_sample_weights():
    x0, _, eps = _batch()
    t = torch.tensor([0, 10, 50, 300, 700, 999])  # SNR from ~1e4 down to ~4e-5, so some weights < 1
    out = torch.zeros_like(x0)
    per = eps.pow(2).flatten(1).mean(1)
    w = min_snr_weight(S.snr[t], 5.0, "epsilon").float()
    got = diffusion_loss(lambda x, t_: out, S, x0, t, eps, min_snr_gamma=5.0)
    assert torch.allclose(got, (w * per).mean())
    assert not torch.allclose(got, per.mean())  # the weighting changed something


def test_bad_arguments_raise_clear_errors():
    x0, t, eps = _batch()
    with pytest.raises(ValueError, match="prediction"):
        diffusion_loss(lambda x, t_: x, S, x0, t, eps, prediction="noise")
    with pytest.raises(ValueError, match="min_snr_gamma"):
        min_snr_weight(S.snr[:3], 0.0, "epsilon")
    with pytest.raises(ValueError, match="label_dropout"):
        draw((2, 1, 4, 4), 10, torch.Generator(), label_dropout=1.5)
    with pytest.raises(ValueError, match="shape"):
        diffusion_loss(lambda x, t_: x[:, :, :2], S, x0, t, eps)


def test_label_dropout_replaces_with_null_label_at_rate_p():
    g = torch.Generator().manual_seed(1)
    d = draw((4000, 1, 1, 1), 10, g, label_dropout=0.25)
    labels = torch.arange(4000) % 10
    out = drop_labels(labels, d.drop, null_label=10)
    assert torch.equal(out == 10, d.drop)
    assert torch.equal(out[~d.drop], labels[~d.drop])
    assert abs(d.drop.float().mean().item() - 0.25) < 0.03
    assert drop_labels(None, d.drop, None) is None
    with pytest.raises(ValueError, match="null label"):
        drop_labels(labels, d.drop, None)


def test_draws_come_only_from_the_generator():
    a = draw((8, 1, 4, 4), 1000, torch.Generator().manual_seed(3), 0.5)
    torch.manual_seed(123)  # the global RNG must not matter
    b = draw((8, 1, 4, 4), 1000, torch.Generator().manual_seed(3), 0.5)
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.drop, b.drop)
    assert a.t.min() >= 0 and a.t.max() < 1000
    assert torch.equal(a.shard(2, 5).eps, a.eps[2:5])


def test_training_loss_is_differentiable_and_uses_model_null_label():
    class Net(torch.nn.Module):
        null_label = 3

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(0.5))
            self.seen = None

        def forward(self, x, t, labels=None):
            self.seen = labels
            return self.w * x

    net = Net()
    x0, _, _ = _batch(B=64)
    loss = training_loss(net, S, x0, torch.zeros(64, dtype=torch.int64), generator=torch.Generator().manual_seed(0),
                         label_dropout=0.5)
    loss.backward()
    assert net.w.grad is not None and net.w.grad != 0
    assert set(net.seen.tolist()) == {0, 3}


def _log_sigma(schedule):
    return -0.5 * schedule.snr.log()


def test_lognormal_steps_are_the_nearest_levels_to_edm_draws():
    """Each drawn t is the step whose ln σ_t is nearest to ln σ ~ N(−1.2, 1.2²) (EDM's P_mean, P_std), the
    draws being the generator's first normals; the median lands at σ ≈ e^{−1.2}."""
    ls = _log_sigma(S)
    t = lognormal_t(ls, 4000, torch.Generator().manual_seed(7))
    z = torch.randn(4000, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 1.2 - 1.2
    assert torch.equal(t, (ls[None, :] - z[:, None]).abs().argmin(1))
    assert t.dtype == torch.int64 and 0 <= int(t.min()) and int(t.max()) < 1000
    assert ls[t.median()].item() == pytest.approx(-1.2, abs=0.1)


def test_lognormal_steps_with_zero_terminal_snr_stay_finite():
    """σ = ∞ at the last step of a zero-terminal-SNR schedule: it is never the nearest level of a finite draw."""
    zs = Schedule.linear(1000, zero_terminal_snr=True)
    t = lognormal_t(_log_sigma(zs), 20000, torch.Generator().manual_seed(0), p_mean=4.0, p_std=3.0)
    assert int(t.max()) == 998 and int(t.min()) == 0


def test_draw_with_lognormal_steps():
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b = draw((8, 1, 4, 4), 1000, g(), 0.5, _log_sigma(S)), draw((8, 1, 4, 4), 1000, g(), 0.5, _log_sigma(S))
    assert torch.equal(a.t, b.t) and torch.equal(a.eps, b.eps) and torch.equal(a.drop, b.drop)
    assert not torch.equal(a.t, draw((8, 1, 4, 4), 1000, g(), 0.5).t)
    with pytest.raises(ValueError, match=r"log_sigma must have shape \(10,\)"):
        draw((2, 1, 4, 4), 10, g(), 0.0, _log_sigma(S))
    with pytest.raises(ValueError, match="unknown t_sampling 'edm'; allowed: uniform, lognormal"):
        TrainConfig(t_sampling="edm")


def test_training_loss_draws_lognormal_levels():
    """training_loss(t_sampling="lognormal") is diffusion_loss on ``draw``'s log-normal steps for the same
    generator; the level tables are None for uniform steps and ln σ_t otherwise; a bad name is refused."""
    x0 = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    model = lambda x, t: 0.3 * x  # noqa: E731
    assert log_sigma_table(S, "uniform") is None
    ls = log_sigma_table(S, "lognormal")
    assert torch.allclose(ls, -0.5 * torch.log(S.alphas_cumprod / (1 - S.alphas_cumprod)))
    got = training_loss(model, S, x0, generator=torch.Generator().manual_seed(2), t_sampling="lognormal")
    d = draw(x0.shape, S.num_steps, torch.Generator().manual_seed(2), 0.0, ls)
    assert got.item() == diffusion_loss(model, S, x0, d.t, d.eps).item()
    assert got.item() != training_loss(model, S, x0, generator=torch.Generator().manual_seed(2)).item()
    with pytest.raises(ValueError, match="unknown t_sampling 'edm'; allowed: uniform, lognormal"):
        training_loss(model, S, x0, generator=torch.Generator().manual_seed(2), t_sampling="edm")
