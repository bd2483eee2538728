"""Sub-sequences τ: shape, order, range, the paper's formulas and the reference library's."""

import numpy as np
import pytest
import torch

import ddim
from ddim.timesteps import SPACINGS

T = 1000


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("S", [1, 2, 3, 7, 10, 50, 99, 100, 333, 500, 501, 999, 1000])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "linear_zsnr"])
def test_invariants(spacing, S, schedule):
    sched = ddim.Schedule.linear(T, zero_terminal_snr=True) if schedule == "linear_zsnr" \
        else getattr(ddim.Schedule, schedule)(T)
    tau = ddim.timesteps(sched, S, spacing)
    assert tau.dtype == torch.int64 and tau.shape == (S,)
    assert (tau[1:] < tau[:-1]).all(), "strictly decreasing, hence unique"
    assert 0 <= tau.min() and tau.max() <= T - 1


def test_uniform_is_the_papers_range():
    for S in (10, 20, 50, 100, 1000):  # divisors of T: the DDIM code's range(0, T, T // S)
        assert ddim.timesteps(T, S, "uniform").flip(0).tolist() == list(range(0, T, T // S))


def test_quadratic_is_the_papers_formula():
    for S in (10, 20):  # no repeats at these S: exactly the DDIM code's sequence
        ref = [int(v) for v in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
        assert ddim.timesteps(T, S, "quadratic").flip(0).tolist() == ref
    # At S=100 the paper's floor repeats small steps; ours keeps S distinct steps and otherwise agrees
    ref = np.array([int(v) for v in np.linspace(0, np.sqrt(T * 0.8), 100) ** 2])
    ours = ddim.timesteps(T, 100, "quadratic").flip(0).numpy()
    assert len(set(ref.tolist())) < 100
    assert (ours[30:] == ref[30:]).all() and (ours >= ref).all()
    # the module docstring's S = 50 figures: the paper's grid has 49 distinct steps, ours differs at 3 points
    ref = np.array([int(v) for v in np.linspace(0, np.sqrt(T * 0.8), 50) ** 2])
    ours = ddim.timesteps(T, 50, "quadratic").flip(0).numpy()
    assert len(set(ref.tolist())) == 49 and (ours != ref).sum() == 3
    assert ours[:4].tolist() == [0, 1, 2, 3] and ref[:4].tolist() == [0, 0, 1, 2]


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("S", [1, 7, 10, 50, 999, 1000])
def test_matches_diffusers(spacing, S):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDIMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    ref.set_timesteps(S)
    assert ddim.timesteps(T, S, spacing).tolist() == ref.timesteps.tolist()


def test_offset_and_schedule_argument():
    s = ddim.Schedule.linear(T)
    assert (ddim.timesteps(s, 10, "leading", offset=1) == ddim.timesteps(T, 10, "leading") + 1).all()
    with pytest.raises(ValueError, match=r"\[0, 999\]"):
        ddim.timesteps(T, 10, "trailing", offset=1)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5, True])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match="1 <= steps <= T=1000"):
        ddim.timesteps(T, steps)


def test_bad_spacing():
    with pytest.raises(ValueError, match="unknown spacing 'cubic'"):
        ddim.timesteps(T, 10, "cubic")
