"""A loaded network knows what it predicts (``net.prediction``, set by ``load_checkpoint``), and every sampling
entry point given no prediction reads it (``ddim.denoiser.network_prediction``): the bundled v-model sampled
without ``prediction=`` gives its images, not noise; a prediction that contradicts it is refused."""

import warnings

import pytest
import torch

import ddim
from ddim.denoiser import Denoiser, network_prediction
from ddim.evaluate.runner import reconstruction_errors
from ddim.generate import GuidanceOptions, RunOptions, generate, generate_batch, interpolate
from ddim.guidance import MethodOptions
from ddim.inversion import invert_image, regenerate
from ddim.nn import unet_from_preset
from ddim.samplers import FastSampler, SampleOptions

RULE = dict(clip=1.0, eps_from_clipped_x0=True)  # `ddim sample`'s x̂_0 rule


@pytest.fixture(scope="module")
def bundled():
    model, schedule, config = ddim.load_checkpoint()
    return model, schedule, config


class _Net(torch.nn.Module):
    def __init__(self, prediction):
        super().__init__()
        self.prediction = prediction

    def forward(self, x, t):
        return x


@pytest.mark.parametrize("own, given, want", [
    (None, None, "epsilon"), ("v", None, "v"), ("v", "v", "v"), (None, "sample", "sample"),
    (3, "v", "v"), (3, None, "epsilon"),  # an attribute that is no string is no declaration (e.g. an output head)
])
def test_network_prediction(own, given, want):
    assert network_prediction(_Net(own), given) == want
    assert Denoiser.of(_Net(own), ddim.Schedule.linear(10), given).prediction == want
    assert Denoiser(_Net(own), ddim.Schedule.linear(10), given).prediction == want


@pytest.mark.parametrize("own, given, match", [
    ("v", "epsilon", "prediction='epsilon' disagrees with the network's own 'v'"),
    ("v_prediction", None, "prediction attribute is 'v_prediction', not a prediction type"),  # diffusers' spelling
    ("v", "bogus", "unknown prediction type 'bogus'"),
])
def test_a_contradicting_or_unknown_prediction_is_refused(own, given, match):
    with pytest.raises(ValueError, match=match):
        network_prediction(_Net(own), given)
    with pytest.raises(ValueError, match=match):
        Denoiser(_Net(own), ddim.Schedule.linear(10), given)


def test_wrappers_do_not_hide_it(bundled):
    """The library's own wrappers, DataParallel/DDP (.module) and torch.compile (._orig_mod) keep the wrapped
    network's prediction reachable."""
    from ddim.generate import conditioned
    from ddim.guidance import ClassifierFreeGuidance, ClassifierGuidance

    model, schedule, _ = bundled
    labels = torch.zeros(2, dtype=torch.long)

    for wrapped in (conditioned(model, labels), conditioned(model, labels, guidance=1.0),
                    ClassifierFreeGuidance(model, labels, w=1.0), torch.nn.DataParallel(model), torch.compile(model),
                    ClassifierGuidance(conditioned(model, labels), torch.nn.Identity(), labels, 1.0, schedule)):
        assert network_prediction(wrapped) == "v", type(wrapped).__name__

    class ToEps(torch.nn.Module):  # a user's wrapper that changes what the output means: nothing is read through it
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, x, t):
            return x  # (a stand-in for v -> ε)

    assert network_prediction(ToEps(model)) == "epsilon" and network_prediction(ToEps(model), "sample") == "sample"
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    told = ddim.sample(conditioned(model, labels), schedule, x, 3, prediction="v", **RULE)
    assert torch.equal(ddim.sample(conditioned(model, labels), schedule, x, 3, **RULE), told)


def test_loaded_networks_carry_their_prediction(bundled):
    model, _, config = bundled
    assert config.prediction == "v" and model.prediction == "v"
    assert unet_from_preset("small", image_size=8, channel_mult=(1, 2), num_res_blocks=1,
                            attn_resolutions=()).prediction is None  # a fresh network: nobody has said
    from ddim.checkpoint import BUNDLED_STUDENT

    student, _, student_config = ddim.load_checkpoint(BUNDLED_STUDENT)
    assert student.prediction == student_config.prediction


def test_generate_without_prediction_samples_the_network_s_own(bundled):
    """The bug this guards: the bundled v-model sampled as ε gave pixel values of ±300 (noise)."""
    model, schedule, _ = bundled
    run = RunOptions(seed=3, batch_size=4)
    told = generate(model, schedule, 4, SampleOptions(steps=5, prediction="v", **RULE), GuidanceOptions(w=1.0), run)
    untold = generate(model, schedule, 4, SampleOptions(steps=5, **RULE), GuidanceOptions(w=1.0), run)
    assert torch.equal(told, untold)
    bare = generate(model, schedule, 4, SampleOptions(steps=5), run=run)  # no clip: noise would show as |x| >> 1
    assert bare.abs().max() < 1.5
    batch = generate_batch(model, schedule, range(4), SampleOptions(steps=5, **RULE), GuidanceOptions(w=1.0), run)
    torch.testing.assert_close(batch, untold, atol=1e-5, rtol=0)  # generate runs a channels_last copy
    with pytest.raises(ValueError, match="disagrees with the network's own 'v'"):
        generate(model, schedule, 4, SampleOptions(steps=5, prediction="epsilon"), run=run)


def test_sample_fast_sampler_and_interpolate_read_it(bundled):
    model, schedule, _ = bundled
    net = lambda x, t: model(x, t, torch.zeros(len(x), dtype=torch.long))  # noqa: E731
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    want = ddim.sample(Denoiser(net, schedule, "v"), schedule, x, 4, **RULE)
    model_labels = torch.zeros(2, dtype=torch.long)

    class Labelled(torch.nn.Module):  # the raw network with fixed labels, keeping its prediction attribute
        def __init__(self):
            super().__init__()
            self.inner, self.prediction = model, model.prediction

        def forward(self, x, t):
            return self.inner(x, t, model_labels)

    assert torch.equal(ddim.sample(Labelled(), schedule, x, 4, **RULE), want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the CPU note
        fast = FastSampler(bf16=False).sample(Labelled(), schedule, x, 4, **RULE)
    assert (fast - want).abs().max() < 1e-4
    frames = interpolate(model, schedule, x[:1], x[1:], 3, SampleOptions(steps=4, **RULE), label=0)
    told = interpolate(model, schedule, x[:1], x[1:], 3, SampleOptions(steps=4, prediction="v", **RULE), label=0)
    assert torch.equal(frames, told)


def test_inversion_and_reconstruction_read_it(bundled):
    model, schedule, _ = bundled
    x0 = generate(model, schedule, 2, SampleOptions(steps=5, **RULE), GuidanceOptions(w=1.0), RunOptions(seed=1))
    labels = torch.tensor([0, 1])
    inv = invert_image(model, schedule, x0, labels, steps=5)
    told = invert_image(model, schedule, x0, labels, steps=5, prediction="v")
    assert torch.equal(inv.x_T, told.x_T)
    assert torch.equal(regenerate(model, schedule, inv), regenerate(model, schedule, told, prediction="v"))
    untold = reconstruction_errors(model, schedule, x0, labels, [5], SampleOptions())
    told = reconstruction_errors(model, schedule, x0, labels, [5], SampleOptions(prediction="v"))
    assert len(untold) == 1 and untold[0]["mse_mean"] == told[0]["mse_mean"]


def test_edit_guide_and_loss_read_it(bundled, tmp_path):
    """invert_regenerate reads one prediction for both networks; an autoguidance guide that predicts something
    else is refused; the training loss of a loaded v-network trains v targets."""
    import copy

    from ddim.edit import invert_regenerate
    from ddim.generate import check_guide, conditioned
    from ddim.train.loss import training_loss

    model, schedule, _ = bundled
    labels = torch.tensor([0, 1])
    x0 = generate(model, schedule, 2, SampleOptions(steps=5, **RULE), GuidanceOptions(w=1.0), RunOptions(seed=1))
    opts = SampleOptions(steps=10)
    untold = invert_regenerate(conditioned(model, labels), conditioned(model, labels), schedule, x0, 0.5, opts)
    told = invert_regenerate(conditioned(model, labels), conditioned(model, labels), schedule, x0, 0.5,
                             opts.replace(prediction="v"))
    assert torch.equal(untold, told) and (untold - x0).pow(2).mean() < 0.05
    other = copy.deepcopy(model)
    other.prediction = "epsilon"
    with pytest.raises(ValueError, match="the guide predicts 'epsilon' but the model predicts 'v'"):
        check_guide(model, schedule, other, schedule)
    with pytest.raises(ValueError, match="disagrees with the network's own"):
        generate(model, schedule, 2, SampleOptions(steps=3), GuidanceOptions(w=1.0, guide=other,
                                                                            method=MethodOptions("auto")))
    x = torch.randn(4, 1, 28, 28).clamp(-1, 1)
    y = torch.arange(4)
    own = training_loss(model, schedule, x, y, generator=torch.Generator().manual_seed(0))
    as_v = training_loss(model, schedule, x, y, generator=torch.Generator().manual_seed(0), prediction="v")
    assert torch.equal(own, as_v)


def test_a_trained_network_declares_what_it_learnt(tmp_path):
    from ddim.train import Trainer
    from tests.tiny import tiny_config

    trainer = Trainer(tiny_config(prediction="v"), tmp_path / "run", device="cpu", quiet=True)
    assert trainer.model.prediction == "v" and trainer.ema.model.prediction == "v"
