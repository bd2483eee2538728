"""``SampleOptions``: one validated object carries a run's options through sample, FastSampler and generate."""

import warnings

import pytest
import torch

import ddim
from ddim import SampleOptions
from ddim.generate import RunOptions, generate
from ddim.nn import UNet
from ddim.samplers import FastSampler, get_solver

S1000 = ddim.Schedule.linear(1000)


def toy_model(x, t):
    """A smooth ε-model whose output depends on x and t (so a wrong option changes the result)."""
    return 0.3 * torch.tanh(x) + 1e-4 * t.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("kw", [dict(steps=7, eta=0.5, clip=1.0, eps_from_clipped_x0=True),
                                dict(steps=6, solver="dpmpp-2m", spacing="logsnr", threshold=0.9),
                                dict(timesteps=[900, 500, 100, 3], prediction="v", set_alpha_to_one=False)])
def test_options_object_gives_what_the_keywords_give(kw):
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    gens = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    by_keywords = ddim.sample(toy_model, S1000, x, generator=gens(), **kw)
    by_object = ddim.sample(toy_model, S1000, x, generator=gens(), options=SampleOptions(**kw))
    assert torch.equal(by_keywords, by_object)
    with pytest.warns(RuntimeWarning, match="x_T is on cpu, not CUDA"):
        fast = FastSampler().sample(toy_model, S1000, x, generator=gens(), options=SampleOptions(**kw))
    assert torch.equal(by_keywords, fast)
    assert not torch.equal(by_keywords, ddim.sample(toy_model, S1000, x, generator=gens()))


def test_generate_takes_options():
    net = UNet(image_size=8, in_channels=1, out_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attn_resolutions=(), norm_groups=4, dropout=0.0).eval()
    opts = SampleOptions(steps=3, eta=1.0, clip=1.0)
    a = generate(net, S1000, 3, opts, run=RunOptions(seed=5, batch_size=2))
    b = generate(net, S1000, 3, opts, run=RunOptions(seed=5, batch_size=3))
    c = generate(net, S1000, 3, SampleOptions(steps=3, eta=1.0), run=RunOptions(seed=5, batch_size=3))
    assert a.shape == (3, 1, 8, 8) and torch.allclose(a, b, atol=1e-5) and not torch.allclose(b, c)
    with pytest.raises(TypeError):
        generate(net, S1000, 3, steps=4)  # sampling settings travel as one SampleOptions


def test_options_are_validated_frozen_and_hashable():
    o = SampleOptions(steps=10, timesteps=torch.tensor([9, 5, 0]), solver="unipc")
    assert o.timesteps == (9, 5, 0) and o.solver is get_solver("unipc")
    assert hash(o) == hash(SampleOptions(steps=10, timesteps=(9, 5, 0), solver=get_solver("unipc")))
    with pytest.raises(AttributeError):
        o.steps = 3  # frozen
    assert o.replace(clip=2.0).clip == 2.0 and o.clip is None
    for bad, msg in [(dict(prediction="x0"), "unknown prediction type 'x0'"), (dict(eta=-1), "eta must be"),
                     (dict(clip=1, threshold=0.9), "either clip or threshold"), (dict(clip=0), "clip must be > 0"),
                     (dict(threshold=1.5), r"threshold must be a quantile in \(0, 1\]"),
                     (dict(timesteps=[5.0, 1.0]), "timesteps must be integers"),
                     (dict(solver="euler"), "euler")]:
        with pytest.raises(ValueError, match=msg):
            SampleOptions(**bad)


def test_options_and_keywords_do_not_mix():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="not both .*eta, solver"):
        ddim.sample(toy_model, S1000, x, eta=0.5, solver="unipc", options=SampleOptions(steps=3))
    # keywords at their defaults are fine (a Solver object counts by its name)
    ddim.sample(toy_model, S1000, x, solver=get_solver("ddim"), options=SampleOptions(steps=3))
    with pytest.raises(TypeError, match="unknown sampling option"):
        FastSampler().sample(toy_model, S1000, x, stepz=3)
    with pytest.raises(TypeError, match="must be a ddim.SampleOptions"):
        ddim.sample(toy_model, S1000, x, options={"steps": 3})


def test_fast_sampler_cache_follows_the_effective_eps_rule():
    """The bound model call is cached per (model, effective ε̂ rule): DDIM keeps the raw ε̂ with a clip,
    Heun re-derives it; the second call must not reuse the first one's closure."""
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    fs = FastSampler()
    for solver in ("ddim", "heun"):
        with warnings.catch_warnings():  # the sampler's one "x_T is on cpu" note comes with its first call
            warnings.simplefilter("ignore", RuntimeWarning)
            got = fs.sample(toy_model, S1000, x, steps=6, clip=0.05, solver=solver)
        assert torch.equal(got, ddim.sample(toy_model, S1000, x, steps=6, clip=0.05, solver=solver)), solver


def test_every_rule_of_the_guidance_benchmark_is_valid():
    """benchmarks/guidance.py hands each x̂₀ rule straight to generate(): a rule the options refuse would only
    surface after minutes of sampling (as Imagen's uncapped threshold once did)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "guidance.py"
    spec = importlib.util.spec_from_file_location("guidance_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert set(bench.RULES) == {"plain", "clip", "clip-eps", "threshold"}
    for name, rule in bench.RULES.items():
        assert SampleOptions(steps=5, **rule).x0_transform() is not None or name == "plain", name
