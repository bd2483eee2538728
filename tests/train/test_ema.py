"""EMA of weights: the warm-up decay, the update rule, exact save/load."""

import copy

import pytest
import torch

from ddim.train.ema import EMA, ema_decay


def test_decay_warms_up_then_saturates():
    assert ema_decay(0.9999, 0) == pytest.approx(0.1)
    assert ema_decay(0.9999, 10) == pytest.approx(11 / 20)
    assert ema_decay(0.99, 10_000) == 0.99
    seq = [ema_decay(0.999, n) for n in range(2000)]
    assert all(a <= b for a, b in zip(seq, seq[1:]))


def test_update_is_the_exponential_average():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, decay=0.5)
    start = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    d = ema.update(net)
    assert d == pytest.approx(0.1)
    for k, v in ema.model.state_dict().items():
        assert torch.allclose(v, d * start[k] + (1 - d) * net.state_dict()[k])
    assert int(ema.num_updates) == 1
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_state_dict_round_trip_is_exact():
    net = torch.nn.Linear(3, 2)
    a = EMA(net, 0.9)
    for _ in range(5):
        with torch.no_grad():
            net.weight.mul_(1.1)
        a.update(net)
    b = EMA(torch.nn.Linear(3, 2), 0.9)
    b.load_state_dict(a.state_dict())
    assert int(b.num_updates) == 5
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["_extra_state"] == sb["_extra_state"] == {"num_updates": 5}
    assert all(torch.equal(sa[k], sb[k]) for k in sa if k != "_extra_state")


def test_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(torch.nn.Linear(1, 1), 1.0)
