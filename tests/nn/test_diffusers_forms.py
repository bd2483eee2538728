"""Every common ``UNet2DModel`` form: imported natively with diffusers' outputs (float32, ≤ 1e-5 of the
output scale), exported back to an identical diffusers model (same config, bit-equal weights), sampled by
``ddim sample --checkpoint DIR``; the configurations we cannot build run through diffusers' own model.

Random weights, small sizes (the real models' block layouts at CPU-friendly widths); nothing is downloaded.
"""

import json
import sys
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import ddim  # noqa: E402
from ddim.cli import main  # noqa: E402
from ddim.nn import (DiffusersUNet, UNet, UnsupportedConfig, load_diffusers_unet,  # noqa: E402
                     save_diffusers_unet, unet_config_from_diffusers)
from nn.test_diffusers_io import randomise_  # noqa: E402  (random weights: a fresh UNet's zero outputs say nothing)

SIX_LEVELS = dict(  # google/ddpm-celebahq-256 and ddpm-church-256 (and ddpm-cat/bedroom): 6 levels, attention at 16 px
    block_out_channels=(32, 32, 64, 64, 128, 128),
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4)
DDPM_FORM = dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, attention_head_dim=None, norm_eps=1e-6)
SMALL = dict(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             norm_num_groups=8)
THREE = dict(SMALL, block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))

FORMS = {
    # diffusers' examples/unconditional_image_generation/train_unconditional.py, at 64 px with channels / 4:
    # every library default (8-channel heads, flipped sinusoid, shift 0, symmetric padding, eps 1e-5)
    "train_unconditional_example": dict(sample_size=64, in_channels=3, out_channels=3, layers_per_block=2,
                                        **SIX_LEVELS),
    "ddpm_cifar10": dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64, 64),
                         layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), **DDPM_FORM),
    "ddpm_celebahq_church": dict(sample_size=64, in_channels=3, out_channels=3, layers_per_block=1, **SIX_LEVELS,
                                 **DDPM_FORM),
    "class_conditional": dict(SMALL, num_class_embeds=6),
    "multi_head_uneven": dict(SMALL, attention_head_dim=24),     # 64 channels: 2 heads of 24 (inner width 48)
    "scale_shift": dict(SMALL, resnet_time_scale_shift="scale_shift"),
    "scale_shift_attn_groups": dict(SMALL, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=4),
    "resnet_resampling": dict(THREE, downsample_type="resnet", upsample_type="resnet",
                              down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"),
                              up_block_types=("ResnetUpsampleBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")),
    "fourier_time": dict(SMALL, time_embedding_type="fourier"),
    "no_mid_block": dict(SMALL, mid_block_type=None),
    "mid_without_attention_scaled": dict(SMALL, add_attention=False, mid_block_scale_factor=2 ** 0.5),
    "centered_input_wide_embedding": dict(SMALL, center_input_sample=True, time_embedding_dim=96, in_channels=1,
                                          out_channels=1, dropout=0.1),
    "grey_in_two_out": dict(SMALL, in_channels=1, out_channels=2),
}


def saved(tmp_path, config, seed=0):
    torch.manual_seed(seed)
    theirs = randomise_(UNet2DModel(**config).eval(), seed)
    theirs.save_pretrained(tmp_path)
    return theirs


def worst_relative(ours, theirs, config, steps=(0, 1, 250, 999)):
    """max |ours − theirs| / max(1, max |theirs|) over steps (σ > 0 for a fourier-time model)."""
    size = config["sample_size"][0] if isinstance(config["sample_size"], list) else config["sample_size"]
    x = torch.randn(2, config.get("in_channels", 3), size, size, generator=torch.Generator().manual_seed(1))
    n = config.get("num_class_embeds")
    labels = None if n is None else torch.tensor([0, n - 1])
    worst = 0.0
    with torch.no_grad():
        for step in steps:
            t = torch.full((2,), float(step) + (0.5 if config.get("time_embedding_type") == "fourier" else 0.0))
            a, b = ours(x, t, labels), theirs(x, t, class_labels=labels).sample
            assert a.shape == b.shape
            worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp(min=1)).item())
    return worst


@pytest.mark.parametrize("form", sorted(FORMS))
def test_form_imports_natively_with_diffusers_outputs_and_exports_identically(tmp_path, form):
    config = FORMS[form]
    theirs = saved(tmp_path / "theirs", config)
    ours = load_diffusers_unet(tmp_path / "theirs")
    assert isinstance(ours, UNet)                                   # native: our fast path applies
    assert worst_relative(ours, theirs, config) <= 1e-5
    save_diffusers_unet(ours, tmp_path / "back")
    back = UNet2DModel.from_pretrained(tmp_path / "back", low_cpu_mem_usage=False)
    public = json.loads(json.dumps({k: v for k, v in theirs.config.items() if not k.startswith("_")}))
    assert json.loads(json.dumps({k: back.config[k] for k in public})) == public   # an identical model ...
    mine, original = load_file(str(tmp_path / "back" / "diffusion_pytorch_model.safetensors")), theirs.state_dict()
    assert mine.keys() == original.keys()
    assert all(torch.equal(mine[k], original[k]) for k in mine)     # ... with bit-equal weights


def test_absent_keys_take_diffusers_defaults():
    cfg = unet_config_from_diffusers({"sample_size": 16, "block_out_channels": [32, 64, 64, 64]})
    assert (cfg.head_dim, cfg.flip_sin_to_cos, cfg.freq_shift, cfg.downsample_padding, cfg.norm_eps) == (8, True, 0, 1, 1e-5)
    assert cfg.attn_resolutions == (8, 4, 2)                         # AttnDownBlock2D at levels 1-3
    with pytest.raises(UnsupportedConfig, match="frobnicate=1"):
        unet_config_from_diffusers({"sample_size": 16, "frobnicate": 1})


@pytest.mark.parametrize("key,value,named", [
    ("down_block_types", ("DownBlock2D", "SkipDownBlock2D"), "down_block_types"),
    ("up_block_types", ("UpBlock2D", "AttnUpBlock2D"), "up_block_types"),      # not the mirror image
    ("upsample_type", "resnet", "up_block_types"),      # level 1 would downsample by conv, upsample by ResBlock
    ("class_embed_type", "timestep", "class_embed_type"),
    ("time_embedding_type", "learned", "time_embedding_type"),
    ("act_fn", "mish", "act_fn"),
    ("mid_block_type", "UNetMidBlock2DCrossAttn", "mid_block_type"),
    ("block_out_channels", (32, 48), "block_out_channels"),
])
def test_settings_without_a_native_form_name_key_and_value(key, value, named):
    config = dict(THREE if key == "upsample_type" else SMALL, **{key: value})
    with pytest.raises(UnsupportedConfig, match=f"{named}="):
        unet_config_from_diffusers(config)


def test_square_list_sample_size_is_the_int():
    assert unet_config_from_diffusers(dict(SMALL, sample_size=[16, 16])) == unet_config_from_diffusers(SMALL)


# ---- through diffusers, where there is no native form ---------------------------------------------------
NCSNPP_LIKE = dict(SMALL, down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                   up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), time_embedding_type="fourier")


def test_unmappable_config_runs_through_diffusers_and_exports_identically(tmp_path):
    theirs = saved(tmp_path / "theirs", NCSNPP_LIKE)
    with pytest.warns(RuntimeWarning, match=r"down_block_types=.*no native form"):
        ours = load_diffusers_unet(tmp_path / "theirs")
    assert isinstance(ours, DiffusersUNet) and ours.config.image_size == 16 and ours.null_label is None
    assert worst_relative(ours, theirs, NCSNPP_LIKE) == 0.0
    save_diffusers_unet(ours, tmp_path / "back")
    mine = load_file(str(tmp_path / "back" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(mine[k], v) for k, v in theirs.state_dict().items())


def test_unmappable_config_without_diffusers_is_one_clear_error(tmp_path, monkeypatch):
    saved(tmp_path, NCSNPP_LIKE)
    monkeypatch.setitem(sys.modules, "diffusers", None)             # import diffusers -> ImportError
    with pytest.raises(ValueError, match=r"down_block_types=.*SkipDownBlock2D.*install diffusers"):
        load_diffusers_unet(tmp_path)


def test_config_neither_can_build_is_one_clear_error(tmp_path):
    saved(tmp_path, SMALL)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "down_block_types": ["DownBlock2D", "NoSuchBlock2D"]}))
    with pytest.raises(ValueError, match="NoSuchBlock2D.*diffusers could not build it either"):
        load_diffusers_unet(tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"dropout": None}, "dropout must be a number"),
    ({"down_block_types": None}, "down_block_types must be a list"),
    ({"sample_size": None}, "sample_size is null"),
    ({"attn_norm_num_groups": 0}, "attn_norm_num_groups must be null or a positive integer"),
    ({"class_embed_type": "timestep"}, "class_embed_type='timestep' takes per-call class inputs"),
])
def test_configs_ddim_cannot_drive_are_one_clear_error(tmp_path, change, message, capsys):
    pipe = pipeline(tmp_path / "pipe", SMALL)
    cfg = json.loads((pipe / "unet" / "config.json").read_text())
    (pipe / "unet" / "config.json").write_text(json.dumps({**cfg, **change}))
    assert main(["sample", "--checkpoint", str(pipe), "--out", str(tmp_path / "s.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


# ---- sampling: the CLI and a v-prediction pipeline ------------------------------------------------------
def pipeline(tmp_path, config, prediction="epsilon"):
    saved(tmp_path / "unet", config)
    DDIMScheduler(prediction_type=prediction, clip_sample=False).save_pretrained(tmp_path / "scheduler")
    return tmp_path


@pytest.mark.parametrize("form,prediction", [("train_unconditional_example", "epsilon"), ("ddpm_cifar10", "epsilon"),
                                             ("ddpm_celebahq_church", "epsilon"), ("class_conditional", "epsilon"),
                                             ("scale_shift", "v_prediction")])
def test_cli_samples_an_imported_model(tmp_path, form, prediction, capsys):
    pipe = pipeline(tmp_path / "pipe", FORMS[form], prediction)
    if form == "train_unconditional_example":
        pipe = pipe / "unet"                                         # a bare UNet2DModel directory also works
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(pipe), "--out", str(out), "--n", "2", "--steps", "2", "--quiet"]) == 0
    assert out.is_file()


def test_cli_samples_through_diffusers_with_one_warning_line(tmp_path, capsys):
    pipe = pipeline(tmp_path / "pipe", dict(NCSNPP_LIKE, time_embedding_type="positional"))
    out = tmp_path / "s.png"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["sample", "--checkpoint", str(pipe), "--out", str(out), "--n", "2", "--steps", "2",
                     "--quiet"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if "no native form" in line]
    assert len(err) == 1 and err[0].startswith("ddim: warning:") and out.is_file()


def test_cli_refuses_a_bad_config_with_exit_2(tmp_path, capsys):
    pipe = pipeline(tmp_path / "pipe", SMALL)
    cfg = json.loads((pipe / "unet" / "config.json").read_text())
    (pipe / "unet" / "config.json").write_text(json.dumps({**cfg, "attention_head_dim": 100}))
    assert main(["sample", "--checkpoint", str(pipe), "--out", str(tmp_path / "s.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "head_dim" in err[0] and "100" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "s.png").exists()


def test_v_prediction_pipeline_samples_as_diffusers_ddim(tmp_path):
    """Our DDIM on the imported v-prediction model = diffusers' DDIMScheduler loop on its own model."""
    pipe = pipeline(tmp_path / "pipe", FORMS["scale_shift"], prediction="v_prediction")
    model, schedule, config = ddim.load_checkpoint(pipe)
    assert config.prediction == "v" and isinstance(model, UNet)
    theirs = UNet2DModel.from_pretrained(pipe / "unet", low_cpu_mem_usage=False).eval()
    sched = DDIMScheduler.from_pretrained(pipe / "scheduler")
    sched.set_timesteps(5)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(theirs(x, t).sample, t, x, eta=0.0).prev_sample
        ours = ddim.sample(model, schedule, x_T, steps=5, eta=0.0, spacing="leading", prediction="v")
    assert (ours - x).abs().max().item() <= 1e-4


# ---- variance-exploding score models (fourier time input, ScoreSdeVeScheduler) ---------------------------
def ve_pipeline(tmp_path, config):
    from diffusers import ScoreSdeVeScheduler

    saved(tmp_path / "unet", config)
    ScoreSdeVeScheduler(num_train_timesteps=100, sigma_min=0.01, sigma_max=50.0).save_pretrained(tmp_path / "scheduler")
    return tmp_path


@pytest.mark.parametrize("config", [FORMS["fourier_time"], NCSNPP_LIKE], ids=["native", "through_diffusers"])
def test_ve_score_model_is_sampled_as_euler_in_sigma(tmp_path, config):
    """DDIM (η = 0) on the mapped schedule is Euler's method in σ (DDIM paper eq. 14): checked against that
    loop written directly on diffusers' network in its own [0, 1] data space, u ← u + (σ'_next − σ')·(−σ' s_θ(u, σ')),
    with our x_T = 2u_T − 1 at σ = 2σ' and our x_0 = 2u_0 − 1."""
    pipe = ve_pipeline(tmp_path / "pipe", config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, schedule, run = ddim.load_checkpoint(pipe)
    theirs = UNet2DModel.from_pretrained(pipe / "unet", low_cpu_mem_usage=False).eval()
    steps = [99, 66, 33, 0]
    sig = [0.01 * (50.0 / 0.01) ** (t / 99) for t in steps]           # the model's own levels σ'
    assert abs(schedule.alphas_cumprod[99].item() - 1 / (1 + (2 * 50.0) ** 2)) < 1e-12
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = ddim.sample(model, schedule, x_T, timesteps=steps, eta=0.0)
        u = (x_T.double() * (1 + (2 * sig[0]) ** 2) ** 0.5 + 1) / 2
        for s, s_next in zip(sig, sig[1:] + [0.0]):
            score = theirs(u.float(), torch.full((2,), s)).sample.double()
            u = u + (s_next - s) * (-s * score)                        # du/dσ' = ε̂ = −σ' s_θ
    assert (ours.double() - (2 * u - 1)).abs().max().item() <= 1e-4 * (2 * u - 1).abs().max().item()


def test_fourier_network_without_its_ve_scheduler_is_refused(tmp_path, capsys):
    pipe = pipeline(tmp_path / "pipe", FORMS["fourier_time"])
    assert main(["sample", "--checkpoint", str(pipe), "--out", str(tmp_path / "s.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fourier" in err[0] and "ScoreSdeVeScheduler" in err[0]


def test_cli_samples_a_ve_pipeline(tmp_path):
    pipe = ve_pipeline(tmp_path / "pipe", FORMS["fourier_time"])
    out = tmp_path / "s.png"
    assert main(["sample", "--checkpoint", str(pipe), "--out", str(out), "--n", "2", "--steps", "3", "--quiet"]) == 0
    assert out.is_file()
