"""docs/extending.md, run: the page's solver, registered from this file, samples through ``ddim.sample``,
the fast path's CPU fallback and ``ddim.generate``, and (being DDIM η = 0 in other variables) gives DDIM's
samples."""

import re
import warnings
from pathlib import Path

import pytest
import torch

import ddim
from ddim.generate import RunOptions, generate
from ddim.nn import UNet
from ddim.samplers import SOLVERS, FastSampler
from gmm import GaussianMixture

PAGE = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
S1000 = ddim.Schedule.linear(1000)


@pytest.fixture
def page_solver():
    """Run the page's code block as written (its @register adds the solver), and take it out again after."""
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102  (our own documentation)
    yield namespace["EulerSigma"]
    del SOLVERS["euler-sigma"]


def test_the_page_solver_is_under_forty_lines():
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) < 40


def test_the_page_solver_samples_everywhere(page_solver):
    mix = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [2.0, 1.0]], [0.5, 0.3])
    model = mix.model(S1000)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = ddim.sample(model, S1000, x_T, steps=20, spacing="logsnr", solver="euler-sigma")
    want = ddim.sample(model, S1000, x_T, steps=20, spacing="logsnr", solver="ddim")
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)  # the same update in other variables
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "x_T is on cpu, not CUDA": the CPU fallback
        fast = FastSampler().sample(model, S1000, x_T, 20, spacing="logsnr", solver="euler-sigma")
    assert torch.equal(fast, got)

    net = UNet(image_size=8, in_channels=1, out_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attn_resolutions=(), norm_groups=4).eval()
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    opts = ddim.SampleOptions(steps=5, solver="euler-sigma")
    images = generate(net, S1000, 3, opts, run=RunOptions(batch_size=2))
    assert images.shape == (3, 1, 8, 8)
    assert torch.allclose(images, generate(net, S1000, 3, opts.replace(solver="ddim"), run=RunOptions(batch_size=2)),
                          atol=1e-5)
