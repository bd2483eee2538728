"""The DDPM UNet: config round trips and validation, layer properties, conditioning, input errors."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ddim.nn import PRESETS, UNet, UNetConfig, count_parameters, unet_from_preset
from ddim.nn.layers import Downsample, SelfAttention, timestep_embedding

# A 2-level conditional net that runs in milliseconds: levels 8×8 (attention) and 4×4.
TINY = dict(image_size=8, in_channels=2, out_channels=3, base_channels=32, channel_mult=(1, 2),
            num_res_blocks=1, attn_resolutions=(8,), dropout=0.0, num_classes=4, norm_groups=8)


def randomise_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace the DDPM init (which zeroes the output) with random weights so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture
def tiny() -> UNet:
    return randomise_(UNet(**TINY)).eval()


# ---- config --------------------------------------------------------------------------------------
def test_config_dict_round_trip_through_json():
    cfg = PRESETS["small"]
    again = UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.channel_mult, tuple) and isinstance(again.attn_resolutions, tuple)


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError, match="unknown UNetConfig key.*'chanel_mult'"):
        UNetConfig.from_dict({**PRESETS["cifar10"].to_dict(), "chanel_mult": [1, 2]})


def test_constructor_rejects_unknown_keyword():
    with pytest.raises(ValueError, match="widht"):
        UNet(**TINY, widht=3)


@pytest.mark.parametrize("field,value,msg", [
    ("image_size", 30, "divisible"),                 # 30 is not divisible by 2^(4-1)
    ("base_channels", 100, "norm_groups"),           # 100 channels, 32 groups
    ("attn_resolutions", (12,), "match no level"),
    ("dropout", 1.0, "dropout"),
    ("num_classes", 0, "num_classes"),
    ("channel_mult", (), "channel_mult"),
    ("base_channels", 33, "even"),
    ("channel_mult", 2, "list or tuple"),
    ("num_res_blocks", 0, "num_res_blocks"),
])
def test_config_validation(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        UNetConfig(**{**PRESETS["cifar10"].to_dict(), field: value})


def test_model_exposes_config_and_from_config_rebuilds_it(tiny):
    assert tiny.config == UNetConfig(**TINY)
    assert count_parameters(UNet.from_config(tiny.config)) == count_parameters(tiny)
    assert count_parameters(UNet.from_config(tiny.config.to_dict())) == count_parameters(tiny)


# ---- presets ----------------------------------------------------------------------------------------
def test_cifar10_preset_has_ddpm_parameter_count():
    assert count_parameters(unet_from_preset("cifar10")) == 35_746_307


def test_small_preset_is_small_and_conditional():
    model = unet_from_preset("small")
    n = count_parameters(model)
    assert 2_000_000 <= n <= 4_000_000
    assert 2 * n <= 8_000_000                           # fp16 weights fit in 8 MB
    assert model.null_label == 10
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([0, 999]), torch.tensor([3, 10]))
    assert out.shape == (2, 1, 28, 28)


def test_preset_overrides_and_unknown_name():
    model = unet_from_preset("small", num_classes=None, dropout=0.0)
    assert model.null_label is None and model.config.dropout == 0.0
    assert model.config.base_channels == PRESETS["small"].base_channels
    with pytest.raises(ValueError, match="unknown UNet preset 'imagenet'"):
        unet_from_preset("imagenet")


# ---- layers -------------------------------------------------------------------------------------
def test_timestep_embedding_is_the_original_ddpm_sinusoid():
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, 8)
    omega = [10000 ** (-i / 3) for i in range(4)]      # half = 4, exponent i / (half - 1)
    want = torch.tensor([[math.sin(s * w) for w in omega] + [math.cos(s * w) for w in omega]
                         for s in t.tolist()])
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=0)
    assert emb.dtype == torch.float32
    with pytest.raises(ValueError, match="even"):
        timestep_embedding(t, 7)


def test_downsample_pads_only_bottom_right():
    down = Downsample(1)
    with torch.no_grad():
        down.conv.weight.fill_(1.0)
        down.conv.bias.zero_()
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0                                 # top-left pixel: inside output (0, 0)'s window
    assert down(x)[0, 0, 0, 0] == 1.0
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 3, 3] = 1.0                                 # bottom-right: only output (1, 1) sees it
    y = down(x)[0, 0]
    assert y.shape == (2, 2) and y[1, 1] == 1.0 and y.sum() == 1.0


def test_self_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    attn = SelfAttention(16, groups=4, eps=1e-6)
    x = torch.randn(2, 16, 3, 5)
    h = attn.norm(x).flatten(2).transpose(1, 2)          # (B, HW, C)
    q, k, v = attn.q(h), attn.k(h), attn.v(h)
    w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(16), dim=-1)
    want = x + attn.proj(w @ v).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-5)


# ---- the network ----------------------------------------------------------------------------------
def test_ddpm_init_starts_at_zero_and_trains():
    model = UNet(**TINY)
    x = torch.randn(2, 2, 8, 8)
    out = model(x, torch.tensor([5, 500]))
    assert torch.equal(out, torch.zeros_like(out))      # zero-initialised output conv
    (out - x[:, :1].repeat(1, 3, 1, 1)).square().mean().backward()
    assert model.conv_out.weight.grad.abs().sum() > 0


def test_output_depends_on_time_and_label(tiny):
    x = torch.randn(2, 2, 8, 8)
    t = torch.tensor([10, 10])
    base = tiny(x, t, torch.tensor([1, 1]))
    assert base.shape == (2, 3, 8, 8)
    assert not torch.allclose(base, tiny(x, t + 100, torch.tensor([1, 1])))
    assert not torch.allclose(base, tiny(x, t, torch.tensor([2, 2])))
    # Float steps are accepted and agree with the integer ones.
    torch.testing.assert_close(tiny(x, t.float(), torch.tensor([1, 1])), base)


def test_labels_none_means_null_label(tiny):
    x = torch.randn(3, 2, 8, 8)
    t = torch.tensor([0, 1, 2])
    null = torch.full((3,), tiny.null_label)
    torch.testing.assert_close(tiny(x, t), tiny(x, t, null))


def test_batch_elements_are_independent(tiny):
    x = torch.randn(3, 2, 8, 8)
    t, y = torch.tensor([3, 300, 900]), torch.tensor([0, 2, 4])
    full = tiny(x, t, y)
    torch.testing.assert_close(tiny(x[1:2], t[1:2], y[1:2]), full[1:2], atol=1e-5, rtol=1e-5)


def test_other_image_sizes_work_when_divisible(tiny):
    assert tiny(torch.randn(1, 2, 12, 6), torch.tensor([1])).shape == (1, 3, 12, 6)


@pytest.mark.parametrize("labels,msg", [
    (torch.tensor([0, 5]), r"labels must lie in \[0, 4\]"),
    (torch.tensor([-1, 0]), r"labels must lie in \[0, 4\]"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([0, 1, 2]), r"shape \(2,\)"),
])
def test_bad_labels_raise(tiny, labels, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), labels)


def test_labels_on_unconditional_model_raise():
    model = UNet(**{**TINY, "num_classes": None})
    assert model.null_label is None
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 2, 8, 8), torch.tensor([1]), torch.tensor([0]))


@pytest.mark.parametrize("shape,t,msg", [
    ((2, 3, 8, 8), [1, 2], "3 channels.*in_channels=2"),
    ((2, 2, 7, 8), [1, 2], r"divisible by 2"),
    ((2, 8, 8), [1, 2], r"\(B, C, H, W\)"),
    ((2, 2, 8, 8), [1, 2, 3], r"t must have shape \(2,\)"),
])
def test_bad_inputs_raise(tiny, shape, t, msg):
    with pytest.raises(ValueError, match=msg):
        tiny(torch.randn(*shape), torch.tensor(t))


def test_dropout_only_in_train_mode():
    model = randomise_(UNet(**{**TINY, "dropout": 0.5}))
    x, t = torch.randn(1, 2, 8, 8), torch.tensor([7])
    model.train()
    assert not torch.allclose(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


def test_gradients_reach_every_parameter(tiny):
    tiny.train()
    out = tiny(torch.randn(2, 2, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 4]))
    F.mse_loss(out, torch.zeros_like(out)).backward()
    dead = [n for n, p in tiny.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


# ---- patch_size: the levels run at 1/p of the image side ------------------------------------------------

def _patched(**kw):
    torch.manual_seed(0)
    return UNet(**{**dict(image_size=28, in_channels=1, out_channels=1, base_channels=16, channel_mult=(1, 2),
                          num_res_blocks=1, attn_resolutions=(7,), num_classes=3, norm_groups=4, dropout=0.0,
                          patch_size=2), **kw})


def test_patch_size_folds_pixels_into_channels_and_back():
    m = _patched()
    assert m.config.resolutions == (14, 7) and m.conv_in.in_channels == 4 and m.conv_out.out_channels == 4
    with torch.no_grad():
        m.conv_out.weight.normal_(0, 0.1)   # the DDPM init zeroes it
        x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 900])
        out = m(x, t, torch.tensor([0, 3]))
    assert out.shape == x.shape
    # The output's 2×2 patch (i, j) is channel block (i, j) of conv_out's map at 14×14: pixel_shuffle's layout.
    with torch.no_grad():
        inner = m.conv_out.bias.view(1, 4, 1, 1).expand(2, 4, 14, 14)
        m.conv_out.weight.zero_()
        out = m(x, t, torch.tensor([0, 3]))
    torch.testing.assert_close(out, F.pixel_shuffle(inner, 2))


def test_patch_size_validation_and_config_round_trip():
    with pytest.raises(ValueError, match=r"divisible by patch_size · 2\^\(levels-1\) = 12"):
        _patched(image_size=30, patch_size=3, channel_mult=(1, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match=r"patch_size must be an integer in \[1, 64\]"):
        _patched(patch_size=0)
    c = _patched().config
    assert UNetConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    # configs saved before the field existed load as patch_size 1
    old = {k: v for k, v in PRESETS["small"].to_dict().items() if k != "patch_size"}
    assert UNetConfig.from_dict(old).patch_size == 1


def test_patch_size_has_no_diffusers_form():
    from ddim.nn.diffusers_io import unet_config_to_diffusers

    with pytest.raises(ValueError, match="patch_size=2 has no diffusers UNet2DModel equivalent"):
        unet_config_to_diffusers(_patched().config)


def test_fashion_preset_fits_the_cpu_budget():
    """Issue 12's budget for the CPU model: <= 0.25 GFLOPs per 28×28 forward, >= 2.5× cheaper than "small"."""
    from torch.utils.flop_counter import FlopCounterMode

    def gflops(name):
        m = unet_from_preset(name).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
        return counter.get_total_flops() / 1e9

    fast, small = gflops("fashion"), gflops("small")
    assert fast <= 0.25 and small / fast >= 2.5, (fast, small)
    assert 1.5e6 < count_parameters(unet_from_preset("fashion")) < 2.5e6
