"""``ddim.generate``'s pure parts and interpolation: slerp, the frames of ``interpolate``, the options objects; a
guidance-distilled student guided through its w input (one forward per step, whatever path draws it)."""

import math

import pytest
import torch

import ddim
from ddim.generate import GuidanceOptions, RunOptions, class_labels, conditioned, generate, interpolate, slerp
from ddim.guidance import MethodOptions
from ddim.guidance_methods import guided_denoiser
from ddim.nn import UNet

S1000 = ddim.Schedule.linear(1000)


def _net(guidance_embed: bool = False) -> UNet:
    net = UNet(image_size=8, in_channels=1, out_channels=1, base_channels=8, channel_mult=(1,), num_res_blocks=1,
               attn_resolutions=(), norm_groups=4, num_classes=3, guidance_embed=guidance_embed).eval()
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        for p in net.parameters() if guidance_embed else ():  # a trained student's w input moves its output
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    return net


def test_slerp_ends_keep_norms_and_falls_back_to_lerp():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    assert torch.allclose(slerp(z0, z1, 0.0), z0, atol=1e-6) and torch.allclose(slerp(z0, z1, 1.0), z1, atol=1e-6)
    unit0, unit1 = z0 / z0.flatten(1).norm(dim=1).view(-1, 1, 1, 1), z1 / z1.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(slerp(unit0, unit1, 0.3).flatten(1).norm(dim=1), torch.ones(3), atol=1e-5)  # on the sphere
    assert torch.allclose(slerp(z0, 2 * z0, 0.5), 1.5 * z0, atol=1e-5)  # parallel: the straight line
    angle = lambda a, b: math.acos(float((a.flatten() @ b.flatten()) / (a.norm() * b.norm())))  # noqa: E731
    mid = slerp(unit0[:1], unit1[:1], 0.5)
    assert abs(angle(unit0[:1], mid) - angle(mid, unit1[:1])) < 1e-4  # the midpoint halves the angle
    with pytest.raises(ValueError, match="latents must have the same shape"):
        slerp(z0, z1[:2], 0.5)


def test_interpolate_frames_end_on_the_plain_samples():
    net, g = _net(), torch.Generator().manual_seed(1)
    z0, z1 = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
    opts = ddim.SampleOptions(steps=4)
    frames = interpolate(net, S1000, z0, z1, 5, opts, label=2)
    label = torch.tensor([2])
    assert frames.shape == (5, 1, 8, 8)
    for z, frame in ((z0, frames[0]), (z1, frames[-1])):
        want = ddim.sample(lambda x, t: net(x, t, label), S1000, z, steps=4)
        torch.testing.assert_close(frame, want[0], atol=1e-5, rtol=0)
    assert not torch.allclose(frames[1], frames[0], atol=1e-3)  # the middle frames move
    with pytest.raises(ValueError, match="frames must be an integer >= 2"):
        interpolate(net, S1000, z0, z1, 1, opts)
    with pytest.raises(ValueError, match="decodes deterministically"):
        interpolate(net, S1000, z0, z1, 3, opts.replace(eta=1.0))


def test_class_labels_and_options_refuse_what_they_cannot_use():
    assert class_labels(range(5), 3).tolist() == [0, 1, 2, 0, 1]
    assert class_labels(range(2), 3, class_id=1).tolist() == [1, 1] and class_labels(range(2), None) is None
    with pytest.raises(ValueError, match="class 3 is out of range for a model with 3 classes"):
        class_labels(range(2), 3, class_id=3)
    with pytest.raises(ValueError, match="batch size must be an integer >= 1"):
        RunOptions(batch_size=0)
    with pytest.raises(ValueError, match="guidance w must be a finite number >= 0, got inf"):
        GuidanceOptions(w=float("inf"))
    with pytest.raises(ValueError, match="classifier scale 2.0 needs a classifier"):
        GuidanceOptions(classifier_scale=2.0)


def _forwards(net) -> list:
    """(batch, w) of every forward of ``net`` from now on."""
    calls = []

    def hook(module, args, kwargs, out):
        calls.append((args[0].shape[0], float(torch.as_tensor(kwargs["w"]).flatten()[0])))

    net.register_forward_hook(hook, with_kwargs=True)
    return calls


@pytest.mark.filterwarnings("ignore:ddim fast sampling")  # on the CPU the fast path is the plain one
@pytest.mark.parametrize("fast", [False, True])
def test_a_student_is_guided_through_its_w_input_in_one_forward(fast):
    student = _net(guidance_embed=True)
    opts = ddim.SampleOptions(steps=3, spacing="trailing")
    calls = _forwards(student)
    a = generate(student, S1000, 4, opts, GuidanceOptions(w=1.5), RunOptions(fast=fast, channels_last=False))
    if not fast:  # the fast path runs a copy of the network
        assert calls == [(4, 1.5)] * 3  # no second (∅) batch
    b = generate(student, S1000, 4, opts, GuidanceOptions(w=0.0), RunOptions(fast=fast, channels_last=False))
    assert not torch.allclose(a, b, atol=1e-4)  # w reaches the network
    labels = torch.tensor([0, 1])
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    calls.clear()
    interpolate(student, S1000, z, -z, 3, opts, label=1, guidance=GuidanceOptions(w=0.5))
    assert calls == [(3, 0.5)] * 3
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 999)
    assert torch.equal(conditioned(student, labels, 2.0)(x, t), student(x, t, labels, w=2.0))


@pytest.mark.parametrize("method", ["interval", "apg", "cfgpp", "auto"])
def test_a_student_refuses_what_needs_a_second_forward(method):
    student = _net(guidance_embed=True)
    g = GuidanceOptions(w=0.5, method=MethodOptions(method), guide=_net() if method == "auto" else None)
    with pytest.raises(ValueError, match="second \\(∅\\) forward"):
        generate(student, S1000, 2, ddim.SampleOptions(steps=2, solver="ddim"), g)
    with pytest.raises(ValueError, match="second \\(∅\\) forward"):
        guided_denoiser(student, S1000, "epsilon", torch.tensor([0, 1]), g)


def test_a_student_refuses_rescale_and_a_cfg_branch():
    student, labels = _net(guidance_embed=True), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="guidance rescale needs"):
        generate(student, S1000, 2, ddim.SampleOptions(steps=2), GuidanceOptions(w=1.0, rescale=0.7))
    with pytest.raises(ValueError, match="takes w as an input"):
        ddim.ClassifierFreeGuidance(student, labels, w=1.0)
    ddim.ClassifierFreeGuidance(student, labels, w=0.0)  # no ∅ branch at w = 0: the conditional prediction
    with pytest.raises(ValueError, match="guidance-distilled network"):
        ddim.guidance.GuidanceInput(_net(), labels, 1.0)
