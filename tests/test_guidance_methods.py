"""The guidance methods (``ddim.guidance_methods``) on the conditional Gaussian-mixture oracle (exact ε for every
class and for ∅): each reduces to what it must at its limits, exactly where the arithmetic is the same, and
refuses parameters outside their ranges."""

import math

import pytest
import torch

import ddim
from ddim.guidance import GuidanceOptions, MethodOptions
from ddim.guidance_methods import guided_denoiser
from gmm import ConditionalOracle, GaussianMixture

S1000 = ddim.Schedule.linear(1000)
K, D, B = 3, 16, 32


@pytest.fixture(scope="module")
def oracle():
    g = torch.Generator().manual_seed(0)
    gmm = GaussianMixture([0.3, 0.3, 0.4], torch.randn(K, D, generator=g, dtype=torch.float64) * 0.6, [0.15, 0.2, 0.25])
    x_T = torch.randn(B, D, 1, 1, generator=g, dtype=torch.float64)
    return ConditionalOracle(gmm, S1000), x_T, torch.arange(B) % K


def run(model, x_T, labels, g: GuidanceOptions, solver="ddim", steps=20):
    den = guided_denoiser(model, S1000, "epsilon", labels, g)
    return ddim.sample(den, S1000, x_T, steps=steps, solver=solver)


def conditional(model, x_T, labels, solver="ddim", steps=20):
    return ddim.sample(lambda x, t: model(x, t, labels), S1000, x_T, steps=steps, solver=solver)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m"])
@pytest.mark.parametrize("method", ["cfg", "interval", "apg"])
def test_strength_zero_is_the_conditional_sampler(oracle, method, solver):
    model, x_T, y = oracle
    got = run(model, x_T, y, GuidanceOptions(w=0.0, method=MethodOptions(method)), solver)
    assert torch.equal(got, conditional(model, x_T, y, solver))


def test_cfgpp_at_lambda_zero_is_the_unconditional_sampler(oracle):
    """CFG++'s x̂_0 comes from ε_u + λ(ε_c − ε_u): at λ = 0 both halves of its step are the unconditional ones
    (where the other methods at strength 0 are the conditional sampler; λ = 1 is CFG++'s counterpart of that)."""
    model, x_T, y = oracle
    got = run(model, x_T, y, GuidanceOptions(w=0.0, method=MethodOptions("cfgpp")))
    assert torch.equal(got, conditional(model, x_T, torch.full_like(y, K)))  # K: the null label's row


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "heun"])
def test_interval_covering_every_level_is_cfg_and_covering_none_is_conditional(oracle, solver):
    model, x_T, y = oracle
    cfg = run(model, x_T, y, GuidanceOptions(w=2.0, method=MethodOptions("cfg")), solver)
    everywhere = run(model, x_T, y, GuidanceOptions(w=2.0, method=MethodOptions("interval", interval=(0.0, 1e9))),
                     solver)
    nowhere = run(model, x_T, y, GuidanceOptions(w=2.0, method=MethodOptions("interval", interval=(1e9, 2e9))),
                  solver)
    assert torch.equal(everywhere, cfg)
    assert torch.equal(nowhere, conditional(model, x_T, y, solver))
    assert not torch.allclose(cfg, nowhere, atol=1e-3)  # guidance did act where it was on


def test_cfg_method_is_classifier_free_guidance(oracle):
    model, x_T, y = oracle
    want = ddim.sample(ddim.ClassifierFreeGuidance(model, y, w=2.0), S1000, x_T, steps=20)
    torch.testing.assert_close(run(model, x_T, y, GuidanceOptions(w=2.0)), want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", ["ddim", "unipc"])
def test_apg_without_its_changes_is_cfg(oracle, solver):
    model, x_T, y = oracle
    cfg = run(model, x_T, y, GuidanceOptions(w=2.0), solver)
    plain = MethodOptions("apg", apg_eta=1.0, apg_norm_cap=math.inf, apg_momentum=0.0)
    torch.testing.assert_close(run(model, x_T, y, GuidanceOptions(w=2.0, method=plain), solver), cfg,
                               rtol=1e-9, atol=1e-9)
    changed = run(model, x_T, y, GuidanceOptions(w=2.0, method=MethodOptions("apg", apg_eta=0.0)), solver)
    assert not torch.allclose(changed, cfg, atol=1e-3)


def test_apg_momentum_is_per_run(oracle):
    """The momentum is state of one run: sampling twice with one denoiser gives the same images."""
    model, x_T, y = oracle
    den = guided_denoiser(model, S1000, "epsilon", y, GuidanceOptions(w=2.0, method=MethodOptions(
        "apg", apg_momentum=-0.5)))
    first = ddim.sample(den, S1000, x_T, steps=10)
    assert torch.equal(ddim.sample(den, S1000, x_T, steps=10), first) and not den.graph_safe


def test_autoguidance_with_the_good_model_as_its_guide_is_the_conditional_sampler(oracle):
    model, x_T, y = oracle
    got = run(model, x_T, y, GuidanceOptions(w=3.0, method=MethodOptions("auto"), guide=model))
    assert torch.equal(got, conditional(model, x_T, y))


def test_guidance_methods_pull_toward_the_class(oracle):
    """Every method at a moderate strength puts more samples in their class's component than the conditional
    sampler does (classes overlap in this mixture, so conditioning alone leaves many outside)."""
    model, x_T, y = oracle
    gmm = model.gmm
    base = float((gmm.nearest_mode(conditional(model, x_T, y).flatten(1)) == y).double().mean())
    for method, w in (("cfg", 2.0), ("interval", 2.0), ("apg", 2.0), ("cfgpp", 1.0)):
        x = run(model, x_T, y, GuidanceOptions(w=w, method=MethodOptions(method, interval=(0.0, 1e9))))
        share = float((gmm.nearest_mode(x.flatten(1)) == y).double().mean())
        assert share > base, (method, share, base)


@pytest.mark.parametrize("kwargs, words", [
    (dict(method=MethodOptions("cfgpp"), w=1.5), "λ \\(the guidance weight of method 'cfgpp'\\) must lie in \\[0, 1\\], got 1.5"),
    (dict(method=MethodOptions("auto"), w=1.0), "takes a guide network"),
    (dict(guide=torch.nn.Identity(), w=1.0), "a guide network is for method 'auto', not 'cfg'"),
    (dict(method=MethodOptions("apg"), w=1.0, rescale=0.7), "guidance rescale applies to methods cfg, interval and auto"),
])
def test_guidance_options_refuse_what_a_method_cannot_take(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GuidanceOptions(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(method="cfg2"), "unknown guidance method 'cfg2'; allowed: cfg, interval, apg, cfgpp, auto"),
    (dict(method="interval", interval=(5.0, 1.0)), "must have 0 <= σ_lo < σ_hi, got \\(5.0, 1.0\\]"),
    (dict(method="interval", interval=(1.0, 1.0)), "must have 0 <= σ_lo < σ_hi"),
    (dict(method="interval", interval=(1.0,)), "must be two numbers"),
    (dict(method="apg", apg_eta=2.0), "apg_eta must be a number in \\[0, 1\\], got 2.0"),
    (dict(method="apg", apg_norm_cap=0.0), "apg_norm_cap must be a number in \\(0, inf\\]"),
    (dict(method="apg", apg_momentum=-1.0), "apg_momentum must be a number in \\(-1, 1\\)"),
])
def test_method_options_refuse_out_of_range_parameters(kwargs, words):
    with pytest.raises(ValueError, match=words):
        MethodOptions(**kwargs)


@pytest.mark.parametrize("solver", ["dpmpp-2m", "heun", "unipc"])
def test_cfgpp_refuses_a_solver_that_reads_half_its_pair(oracle, solver):
    """A multistep solver reads CFG++'s x̂_0 alone (plain CFG at weight λ − 1, weaker than conditioning) and Heun
    its ε̂ alone (no guidance at all): neither is CFG++, so both are refused."""
    model, x_T, y = oracle
    with pytest.raises(ValueError, match=f"solver '{solver}' reads one of them alone"):
        run(model, x_T, y, GuidanceOptions(w=0.5, method=MethodOptions("cfgpp")), solver)


def test_cfgpp_keeps_its_unconditional_eps_when_x0_is_clipped(oracle):
    """Re-deriving ε̂ from a clipped x̂_0 would replace CFG++'s ε̂_u by the guided one: with a clip that clips
    nothing, asking for the re-derivation changes nothing."""
    model, x_T, y = oracle
    den = guided_denoiser(model, S1000, "epsilon", y, GuidanceOptions(w=0.5, method=MethodOptions("cfgpp")))
    plain = ddim.sample(den, S1000, x_T, steps=20)
    clipped = ddim.sample(den, S1000, x_T, steps=20, clip=1e9, eps_from_clipped_x0=True)
    assert torch.equal(plain, clipped)
