"""diffusers interop: parameter parity, import/export with identical outputs, errors, schedulers.

diffusers is the reference here (a test-only dependency); every model is random-initialised and
saved to tmp_path, nothing is downloaded.
"""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ddim.nn import (UNet, count_parameters, load_diffusers_schedule, load_diffusers_unet,  # noqa: E402
                     save_diffusers_unet, schedule_from_diffusers, unet_from_preset)
from ddim.nn.diffusers_io import (WEIGHTS_NAME, diffusers_key, unet_config_from_diffusers,  # noqa: E402
                                  unet_config_to_diffusers)

# The DDPM CIFAR-10 form of UNet2DModel (google/ddpm-cifar10-32's settings).
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    freq_shift=1, flip_sin_to_cos=False, downsample_padding=0, attention_head_dim=None,
    norm_num_groups=32, norm_eps=1e-6, dropout=0.1)
# The same form shrunk for speed: 16×16 input, 32..64 channels, one ResBlock per level.
DDPM_SMALL = {**DDPM_CIFAR10, "sample_size": 16, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1}
STEPS = (0, 1, 250, 999)


def diffusers_unet(seed=0, **config) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(**config).eval()


def randomise_(model, seed=0):
    """Random weights (our DDPM init zeroes the output, which would make any comparison vacuous)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def max_diff_over_steps(ours, theirs, x, labels=None) -> float:
    """max |ours − theirs| over STEPS, both in float32 and without gradients."""
    worst = 0.0
    with torch.no_grad():
        for step in STEPS:
            t = torch.full((x.shape[0],), step, dtype=torch.long)
            a = ours(x, t, labels)
            b = theirs(x, t, class_labels=labels).sample
            assert a.shape == b.shape
            worst = max(worst, (a - b).abs().max().item())
    return worst


# ---- parameter parity and the name map ----------------------------------------------------------
def test_cifar10_preset_parameter_count_equals_diffusers():
    ours = count_parameters(unet_from_preset("cifar10"))
    theirs = sum(p.numel() for p in UNet2DModel(**DDPM_CIFAR10).parameters())
    assert ours == theirs == 35_746_307


@pytest.mark.parametrize("num_classes", [None, 10])
def test_key_map_is_a_bijection_with_matching_shapes(num_classes):
    ours = UNet(**{**unet_config_from_diffusers(DDPM_SMALL).to_dict(), "num_classes": num_classes})
    theirs = UNet2DModel(**unet_config_to_diffusers(ours.config)).state_dict()
    mapped = {diffusers_key(k): v.shape for k, v in ours.state_dict().items()}
    assert len(mapped) == len(ours.state_dict())                  # no two names collide
    assert mapped == {k: v.shape for k, v in theirs.items()}


def test_config_maps_both_ways():
    cfg = unet_config_from_diffusers(DDPM_CIFAR10)
    assert cfg == unet_from_preset("cifar10").config
    again = unet_config_to_diffusers(cfg)
    assert unet_config_from_diffusers(again) == cfg
    assert json.loads(json.dumps(again)) == again


# ---- import -------------------------------------------------------------------------------------
def test_import_matches_diffusers_outputs(tmp_path):
    theirs = diffusers_unet(**DDPM_SMALL)
    theirs.save_pretrained(tmp_path)
    ours = load_diffusers_unet(tmp_path)
    assert not ours.training and ours.config.image_size == 16
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert max_diff_over_steps(ours, theirs, x) <= 1e-5


def test_import_full_cifar10_config(tmp_path):
    theirs = diffusers_unet(**DDPM_CIFAR10)
    theirs.save_pretrained(tmp_path)
    ours = load_diffusers_unet(tmp_path)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert max_diff_over_steps(ours, theirs, x) <= 1e-5


def test_import_accepts_legacy_attention_names_and_pipeline_dirs(tmp_path):
    theirs = diffusers_unet(**DDPM_SMALL)
    theirs.save_pretrained(tmp_path / "unet")
    file = tmp_path / "unet" / WEIGHTS_NAME
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in load_file(str(file)).items():
        for new, old in legacy.items():
            k = k.replace(f".{new}.", f".{old}.")
        renamed[k] = v
    assert any(".query." in k for k in renamed)
    save_file(renamed, str(file))
    ours = load_diffusers_unet(tmp_path)                          # pipeline root: finds unet/
    assert max_diff_over_steps(ours, theirs, torch.randn(1, 3, 16, 16)) <= 1e-5


def test_import_casts_dtype(tmp_path):
    diffusers_unet(**DDPM_SMALL).save_pretrained(tmp_path)
    assert next(load_diffusers_unet(tmp_path, dtype=torch.float64).parameters()).dtype == torch.float64


# ---- export -------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [None, 5])
def test_export_round_trip(tmp_path, num_classes):
    cfg = {**unet_config_from_diffusers(DDPM_SMALL).to_dict(), "num_classes": num_classes, "dropout": 0.0}
    ours = randomise_(UNet(**cfg)).eval()
    save_diffusers_unet(ours, tmp_path)
    theirs = UNet2DModel.from_pretrained(tmp_path).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    labels = None if num_classes is None else torch.tensor([0, 4, 5])   # 5 = our null label
    assert max_diff_over_steps(ours, theirs, x, labels) <= 1e-5
    back = load_diffusers_unet(tmp_path)
    assert back.config == ours.config and back.null_label == ours.null_label
    for (n, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), n


def test_export_rejects_other_modules(tmp_path):
    with pytest.raises(ValueError, match="needs a ddim.nn.UNet"):
        save_diffusers_unet(torch.nn.Linear(2, 2), tmp_path)


# ---- errors -------------------------------------------------------------------------------------
def test_missing_directory_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_diffusers_unet(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_diffusers_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(DDPM_SMALL))
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_diffusers_unet(tmp_path)


def test_pickle_only_directory_is_refused(tmp_path):
    diffusers_unet(**DDPM_SMALL).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match="safetensors is required"):
        load_diffusers_unet(tmp_path)


def test_unknown_keys_and_classes_are_named():
    with pytest.raises(ValueError, match="frobnicate=1"):
        unet_config_from_diffusers({**DDPM_SMALL, "frobnicate": 1})
    with pytest.raises(ValueError, match="_class_name='UNet2DConditionModel'"):
        unet_config_from_diffusers({**DDPM_SMALL, "_class_name": "UNet2DConditionModel"})


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_weights_give_a_clear_error(tmp_path, damage):
    diffusers_unet(**DDPM_SMALL).save_pretrained(tmp_path)
    file = tmp_path / WEIGHTS_NAME
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\xff" * 64, "empty": b""}[damage])
    with pytest.raises(ValueError, match="cannot read .* as safetensors"):
        load_diffusers_unet(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    diffusers_unet(**DDPM_SMALL).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "layers_per_block": 2}))
    with pytest.raises(ValueError, match="missing .* tensor"):
        load_diffusers_unet(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "in_channels": 1}))
    with pytest.raises(ValueError, match="conv_in.weight has shape"):
        load_diffusers_unet(tmp_path)


def test_bad_json_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_diffusers_unet(tmp_path)


# ---- schedulers ---------------------------------------------------------------------------------
SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="linear", beta_start=0.0002, beta_end=0.03, num_train_timesteps=500),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
    dict(beta_schedule="sigmoid", beta_start=0.0001, beta_end=0.02),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True),
    dict(trained_betas=torch.linspace(1e-4, 0.05, 200).tolist()),
]


@pytest.mark.parametrize("config", SCHEDULES, ids=lambda c: c.get("beta_schedule", "trained_betas"))
def test_schedule_matches_ddpm_scheduler(config):
    reference = DDPMScheduler(**config)
    schedule, prediction = schedule_from_diffusers(dict(reference.config))
    assert prediction == "epsilon"
    assert schedule.num_steps == len(reference.alphas_cumprod)
    torch.testing.assert_close(schedule.alphas_cumprod.float(), reference.alphas_cumprod, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("theirs,ours", [("epsilon", "epsilon"), ("sample", "sample"), ("v_prediction", "v")])
def test_prediction_types(theirs, ours):
    assert schedule_from_diffusers({"prediction_type": theirs})[1] == ours


def test_schedule_errors():
    with pytest.raises(ValueError, match="beta_schedule 'exp'"):
        schedule_from_diffusers({"beta_schedule": "exp"})
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        schedule_from_diffusers({"prediction_type": "flow"})


def test_load_schedule_from_directory(tmp_path):
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                  num_train_timesteps=300).save_pretrained(tmp_path / "scheduler")
    schedule, prediction = load_diffusers_schedule(tmp_path)     # a pipeline root: finds scheduler/
    assert prediction == "v" and schedule.num_steps == 300 and schedule.name == "cosine"
    assert load_diffusers_schedule(tmp_path / "scheduler" / "scheduler_config.json")[1] == "v"
    with pytest.raises(FileNotFoundError, match="scheduler_config.json"):
        load_diffusers_schedule(tmp_path / "elsewhere")
