"""The fast path on the CPU: bf16 autocast exactly where the CPU has bf16 in hardware (and the model runs in
float32), images within bf16 rounding of float32's; guidance methods take it there, classifier guidance not."""

import dataclasses
import warnings

import pytest
import torch

import ddim
from ddim.generate import GuidanceOptions, RunOptions, conditioned, generate
from ddim.guidance import MethodOptions
from ddim.samplers import FastSampler
from ddim.samplers import fast as fast_mod
from ddim.samplers.loop import SampleOptions

from .fastpaths import S1000, affine_model, bundled, perturbed_tiny_unet, run_quietly, within_bf16


def _autocast_probe(seen):
    def model(x, t):  # a matmul comes out in bf16 exactly when bf16 autocast is on
        seen.append((x.flatten(1) @ torch.ones(x[0].numel(), 1)).dtype == torch.bfloat16)
        return affine_model(x, t)
    return model


@pytest.mark.parametrize("native, asked, on", [(True, True, True), (False, True, False), (True, False, False)])
def test_cpu_bf16_only_where_the_cpu_has_it(monkeypatch, native, asked, on):
    """bf16 autocast on the CPU exactly when asked for and the CPU has it in hardware; where it is asked for
    and missing, the one note says why it is off."""
    monkeypatch.setattr(fast_mod, "cpu_native_bf16", lambda: native)
    seen = []
    s = FastSampler(bf16=asked)
    with pytest.warns(RuntimeWarning, match="not CUDA"):
        s.sample(_autocast_probe(seen), S1000, torch.randn(2, 1, 4, 4), steps=3)
    assert seen == [on] * 3
    assert ("neither AMX nor AVX512-BF16" in s.reasons[0]) == (asked and not native)


def test_cpu_bf16_images_match_fp32_within_bf16(monkeypatch):
    """generate(fast=True) on a CPU with bf16 in hardware: the bundled model's images within bf16 rounding of
    the float32 ones (the tolerances in fastpaths.py), and not equal to them (bf16 did run)."""
    model, schedule, own = bundled("cpu")
    opts, run = SampleOptions(steps=20, **own), RunOptions(seed=1, batch_size=8)
    want = generate(model, schedule, 8, opts, run=run)
    monkeypatch.setattr(fast_mod, "cpu_native_bf16", lambda: True)
    got = run_quietly(generate, model, schedule, 8, opts, run=dataclasses.replace(run, fast=True))
    assert within_bf16(got, want) and not torch.equal(got, want)


def test_cpu_bf16_stays_off_for_a_model_not_in_float32(monkeypatch):
    """A half model on the CPU: autocast would mix dtypes in its norms, so bf16 stays off (said in the note)
    instead of failing and switching the whole sampler to the plain path."""
    monkeypatch.setattr(fast_mod, "cpu_native_bf16", lambda: True)
    net = perturbed_tiny_unet().half()
    m = conditioned(net, torch.arange(2) % 10)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)).half()
    s = FastSampler()
    with pytest.warns(RuntimeWarning, match="the model runs in torch.float16, not float32"):
        got = s.sample(m, S1000, x, steps=3)
    assert not s._broken and len(s.reasons) == 1
    assert torch.equal(got, ddim.sample(m, S1000, x, steps=3))


def test_a_model_failing_under_cpu_bf16_keeps_the_rest_of_the_fast_path(monkeypatch):
    """On the CPU, a failure under bf16 autocast drops bf16 alone (one note), not the whole fast path."""
    monkeypatch.setattr(fast_mod, "cpu_native_bf16", lambda: True)

    def model(x, t):
        if (x.flatten(1) @ torch.ones(x[0].numel(), 1)).dtype == torch.bfloat16:
            raise RuntimeError("this model has no bf16 kernels")
        return affine_model(x, t)

    s = FastSampler()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning) as record:  # the CPU note, then the one about bf16
        got = s.sample(model, S1000, x, steps=3)
    assert sum("failed under bf16 autocast" in str(w.message) for w in record) == 1
    assert torch.equal(got, ddim.sample(model, S1000, x, steps=3))
    assert not s._broken and not s.bf16
    assert torch.equal(run_quietly(s.sample, model, S1000, x, steps=3), got)  # later calls: float32 straight away


def test_cpu_native_bf16_is_false_when_torch_cannot_tell(monkeypatch):
    from ddim.device import cpu_native_bf16

    assert isinstance(cpu_native_bf16(), bool)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert cpu_native_bf16() is False


@pytest.mark.parametrize("method", ["interval", "apg", "cfgpp"])
def test_generate_fast_on_cpu_takes_guidance_methods(method):
    """The CPU captures no graph, so a guidance method other than cfg keeps the fast path there: the plain
    path's images (to fp32 rounding in another order), no warning about methods."""
    net = perturbed_tiny_unet()
    opts = SampleOptions(steps=4, solver="ddim")
    g = GuidanceOptions(w=0.5, method=MethodOptions(method=method))
    want = generate(net, S1000, 4, opts, g, RunOptions(seed=2, batch_size=4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = generate(net, S1000, 4, opts, g, RunOptions(seed=2, batch_size=4, fast=True))
    assert not any("without the fast path" in str(w.message) for w in record)
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_generate_fast_refuses_classifier_guidance_with_one_warning():
    """A classifier's gradient under bf16 autocast ran 4× slower than float32 on the CPU: the plain path."""
    from ddim.nn import NoisyClassifier

    net = perturbed_tiny_unet()
    torch.manual_seed(1)
    clf = NoisyClassifier(in_channels=1, image_size=8, num_classes=10, base_channels=8, channel_mult=(1,),
                          num_res_blocks=1)
    opts = SampleOptions(steps=3, solver="ddim")
    g = GuidanceOptions(w=0.0, classifier=clf.eval(), classifier_scale=1.0)
    want = generate(net, S1000, 2, opts, g, RunOptions(seed=2, batch_size=2))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        got = generate(net, S1000, 2, opts, g, RunOptions(seed=2, batch_size=2, fast=True))
    said = [str(w.message) for w in record if "without the fast path" in str(w.message)]
    assert len(said) == 1 and "classifier guidance, and on CUDA guidance methods other than cfg" in said[0]
    assert torch.equal(got, want)
