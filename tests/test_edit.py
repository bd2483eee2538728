"""``ddim.edit`` on the Gaussian-mixture oracle (exact ε): the edit grid, inversion + regeneration, SDEdit."""

import pytest
import torch

import ddim
from ddim.edit import edit_timesteps, invert_regenerate, sdedit
from gmm import GaussianMixture

S1000 = ddim.Schedule.linear(1000)
MIX = GaussianMixture([0.5, 0.5], [[-2.0, 0.0], [2.0, 0.0]], [0.3, 0.3])


def _x0(n: int = 64, seed: int = 0) -> torch.Tensor:
    return MIX.sample(n, torch.Generator().manual_seed(seed))[0]


def test_edit_grid_is_the_low_noise_part_of_the_full_grid():
    full = ddim.timesteps(S1000, 20)
    assert torch.equal(edit_timesteps(S1000, 20, 1.0), full)
    half = edit_timesteps(S1000, 20, 0.5)
    assert torch.equal(half, full[full <= round(0.5 * 999)]) and half.numel() == 11  # 500, 450, ..., 0
    with pytest.raises(ValueError, match="strength 0.01 keeps no step of the 5-step trailing grid .*lowest step is 199"):
        edit_timesteps(S1000, 5, 0.01, "trailing")
    for bad in (0, 1.5, True, "0.5"):
        with pytest.raises(ValueError, match="strength must be a number in \\(0, 1\\]"):
            edit_timesteps(S1000, 20, bad)


def test_invert_then_regenerate_with_the_same_model_gives_the_image_back():
    """Source = target: DDIM inversion and η = 0 sampling over the same grid are one ODE run both ways;
    what remains is the inversion's first-order error, which shrinks with the steps."""
    model, x0 = MIX.model(S1000), _x0()
    errors = {S: (invert_regenerate(model, model, S1000, x0, 0.6, ddim.SampleOptions(steps=S)) - x0).abs().max()
              for S in (20, 200)}
    assert errors[200] < 0.05 and errors[200] < errors[20] / 4, errors  # measured 0.024 and 0.22


def test_sdedit_keeps_the_layout_at_low_strength_and_forgets_it_at_full_strength():
    model, x0 = MIX.model(S1000), _x0()
    opts = ddim.SampleOptions(steps=50)
    near = sdedit(model, S1000, x0, 0.05, opts, torch.Generator().manual_seed(1))
    far = sdedit(model, S1000, x0, 1.0, opts, torch.Generator().manual_seed(1))
    same_side = lambda x: float((torch.sign(x[:, 0]) == torch.sign(x0[:, 0])).double().mean())  # noqa: E731
    assert (near - x0).abs().mean() < 0.15 and same_side(near) == 1.0
    assert 0.25 < same_side(far) < 0.75  # the component is drawn afresh: about half keep their side
    again = sdedit(model, S1000, x0, 1.0, opts, torch.Generator().manual_seed(1))
    assert torch.equal(far, again)  # the generator is the only randomness
