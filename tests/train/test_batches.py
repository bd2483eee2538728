"""Deterministic data order: epochs are permutations, batches are functions of (seed, step)."""

import torch

from ddim.train.batches import apply_flips, batch_indices, epoch_permutation, flip_mask, step_generator


def test_each_epoch_visits_every_item_once_in_a_seeded_order():
    p0, p1 = epoch_permutation(7, 0, 100), epoch_permutation(7, 1, 100)
    assert torch.equal(p0.sort().values, torch.arange(100))
    assert not torch.equal(p0, p1)
    assert torch.equal(p0, epoch_permutation(7, 0, 100))
    assert not torch.equal(p0, epoch_permutation(8, 0, 100))


def test_batches_tile_the_epoch_stream_across_epoch_boundaries():
    n, B = 10, 4
    stream = torch.cat([epoch_permutation(0, e, n) for e in range(3)])
    got = torch.cat([batch_indices(0, k, B, n) for k in range(7)])
    assert torch.equal(got, stream[:28])


def test_step_generator_and_flips():
    a = step_generator(0, 5).initial_seed()
    assert a == step_generator(0, 5).initial_seed() and a != step_generator(0, 6).initial_seed()
    m = flip_mask(1000, step_generator(0, 1))
    assert 0.4 < m.float().mean() < 0.6
    x = torch.arange(8.0).reshape(2, 1, 1, 4)
    y = apply_flips(x, torch.tensor([True, False]))
    assert torch.equal(y[0, 0, 0], torch.tensor([3.0, 2.0, 1.0, 0.0])) and torch.equal(y[1], x[1])
