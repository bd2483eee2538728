"""Import and export of diffusers ``UNet2DModel`` directories and scheduler configs.

A diffusers model directory holds ``config.json`` (the constructor arguments) beside
``diffusion_pytorch_model.safetensors`` (the weights). Every configuration that
``diffusers_config.unet_config_from_diffusers`` maps becomes our ``UNet`` (so our fast path applies);
for the rest, ``load_diffusers_unet`` runs diffusers' own ``UNet2DModel`` behind the same
``model(x, t[, labels])`` interface when diffusers is installed (``pip install "ddim[diffusers]"``),
says so in one warning line, and otherwise raises one error naming the setting. Weights are read with
safetensors only (never pickle). Class labels: see ``diffusers_config``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import files
from ..schedule import Schedule
from .diffusers_config import UnsupportedConfig, unet_config_from_diffusers, unet_config_to_diffusers
from .unet import UNet
from .unet_config import MAX_PARAMETERS

__all__ = ["load_diffusers_unet", "save_diffusers_unet", "unet_config_from_diffusers", "unet_config_to_diffusers",
           "diffusers_key", "schedule_from_diffusers", "load_diffusers_schedule", "UnsupportedConfig",
           "ve_params_from_diffusers", "read_scheduler_config", "DDPM_FAMILY", "is_diffusers_folder",
           "load_diffusers_model"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"

# ---- weight names -------------------------------------------------------------------------------
# Our parameter name -> diffusers' name, applied in order (each a regex substitution on the key).
_RENAMES: list[tuple[str, str]] = [
    (r"^time_embed\.fourier$", "time_proj.weight"),
    (r"^time_embed\.lin1\.", "time_embedding.linear_1."),
    (r"^time_embed\.lin2\.", "time_embedding.linear_2."),
    (r"^label_embed\.", "class_embedding."),
    (r"^norm_out\.", "conv_norm_out."),
    (r"^mid\.res1\.", "mid_block.resnets.0."),
    (r"^mid\.res2\.", "mid_block.resnets.1."),
    (r"^mid\.attn\.", "mid_block.attentions.0."),
    (r"^down\.(\d+)\.resample\.", r"down_blocks.\1.downsamplers.0."),
    (r"^up\.(\d+)\.resample\.", r"up_blocks.\1.upsamplers.0."),
    (r"^down\.(\d+)\.", r"down_blocks.\1."),
    (r"^up\.(\d+)\.", r"up_blocks.\1."),
    (r"\.res\.(\d+)\.", r".resnets.\1."),
    (r"\.attn\.(\d+)\.", r".attentions.\1."),
    (r"\.temb_proj\.", ".time_emb_proj."),  # only ResBlocks (resamplers included) have these two
    (r"\.skip\.", ".conv_shortcut."),
    (r"(attentions\.\d+)\.norm\.", r"\1.group_norm."),
    (r"(attentions\.\d+)\.(q|k|v)\.", r"\1.to_\2."),
    (r"(attentions\.\d+)\.proj\.", r"\1.to_out.0."),
]
# Attention names written by diffusers before its 0.15 attention rewrite, still found in old files.
_LEGACY: list[tuple[str, str]] = [
    (r"(attentions\.\d+)\.query\.", r"\1.to_q."), (r"(attentions\.\d+)\.key\.", r"\1.to_k."),
    (r"(attentions\.\d+)\.value\.", r"\1.to_v."), (r"(attentions\.\d+)\.proj_attn\.", r"\1.to_out.0."),
]


def diffusers_key(name: str) -> str:
    """The diffusers ``UNet2DModel`` state-dict key for one of our UNet's state-dict keys."""
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def _modernise_key(name: str) -> str:
    for pattern, repl in _LEGACY:
        name = re.sub(pattern, repl, name)
    return name


def _state_from_diffusers(model: UNet, tensors: Mapping[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """Our state dict, filled from diffusers-named tensors; every name and shape must match exactly."""
    tensors = {_modernise_key(k): v for k, v in tensors.items()}
    ours = model.state_dict()
    wanted = {diffusers_key(k): k for k in ours}
    missing = sorted(set(wanted) - set(tensors))
    unexpected = sorted(set(tensors) - set(wanted))
    if missing or unexpected:
        raise ValueError(f"{source} does not match its config: missing {len(missing)} tensor(s) "
                         f"{missing[:3]}, unexpected {len(unexpected)} {unexpected[:3]}")
    state = {}
    for theirs, name in wanted.items():
        v = tensors[theirs]
        if v.shape != ours[name].shape:
            raise ValueError(f"{source}: tensor {theirs} has shape {tuple(v.shape)}, "
                             f"config needs {tuple(ours[name].shape)}")
        state[name] = v
    return state


# ---- files --------------------------------------------------------------------------------------
def _model_dir(path: str | Path) -> Path:
    """The directory holding config.json; a pipeline directory's ``unet/`` is accepted too."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers model directory not found: {path}")
    if not (path / CONFIG_NAME).is_file() and (path / "unet" / CONFIG_NAME).is_file():
        path = path / "unet"
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {path} (expected a diffusers UNet2DModel directory)")
    return path


def _read_json(file: Path) -> dict[str, Any]:
    return files.read_json(file)  # a regular file (links allowed: hub caches link to blobs), bounded


def _check_weights(file: Path) -> None:
    """Refuse, from the header alone, a weights file that is not a regular file or holds non-float tensors
    (cast into the network they would draw garbage)."""
    files.regular_file(file)
    dtypes = files.safetensors_dtypes(file)
    ints = sorted(k for k, d in dtypes.items() if d not in files.FLOAT_DTYPES)
    if ints:
        raise ValueError(f"{file} holds {dtypes[ints[0]]} weights in {ints[0]!r}; weights must be floating point "
                         f"({', '.join(files.FLOAT_DTYPES)})")


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"cannot read {file} as safetensors (truncated or corrupted?): {e}") from e


def load_diffusers_unet(path: str | Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Load a diffusers ``UNet2DModel`` directory, in eval mode: as our ``UNet`` when its configuration
    maps (``unet_config_from_diffusers``), else as diffusers' own model in a ``DiffusersUNet`` (one
    warning line says so).

    Args:
        path: directory with config.json and diffusion_pytorch_model.safetensors (or a pipeline
            directory with them under ``unet/``).
        dtype: parameter dtype of the returned model.
    Raises:
        FileNotFoundError: no such directory, config or weights file.
        ValueError: a setting neither we nor diffusers (or no diffusers installed) can run, unreadable
            weights, or weights that don't fit the config.
    """
    folder = _model_dir(path)
    raw = _read_json(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        if (folder / PICKLE_WEIGHTS_NAME).is_file():
            raise ValueError(f"{folder} has only {PICKLE_WEIGHTS_NAME} (pickle); safetensors is required: "
                             f"convert it to {WEIGHTS_NAME}")
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder}")
    _check_weights(weights)
    try:
        config = unet_config_from_diffusers(raw)
    except UnsupportedConfig as e:
        return _load_with_diffusers(folder, e).to(dtype).eval()
    model = UNet.from_config(config)
    model.load_state_dict(_state_from_diffusers(model, _read_safetensors(weights), weights))
    return model.to(dtype).eval()


def _load_with_diffusers(folder: Path, reason: UnsupportedConfig) -> nn.Module:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise ValueError(f"{reason} (install diffusers, pip install \"ddim[diffusers]\", to run it "
                         "through diffusers' own UNet2DModel)") from None
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its notes (e.g. on missing weights) come as our one line instead
    try:
        return _diffusers_model(UNet2DModel, folder, reason)
    finally:
        diffusers_logging.set_verbosity(level)


def _diffusers_model(UNet2DModel, folder: Path, reason: UnsupportedConfig) -> nn.Module:
    """diffusers' ``UNet2DModel`` of ``folder`` in a ``DiffusersUNet``, after refusing one too large to build
    (sized on the meta device) or whose weights do not fill it."""
    from .diffusers_unet import DiffusersUNet, ForeignUNetConfig

    try:
        config = UNet2DModel.load_config(str(folder))
    except Exception as e:  # noqa: BLE001  diffusers' own refusals come as many types
        raise ValueError(f"{reason}; diffusers could not read its config either: {_first_line(e)}") from None
    ForeignUNetConfig.from_diffusers(config)  # what ddim reads of it (shape, classes), checked before building
    try:
        with torch.device("meta"):  # its size from the config alone: no memory asked for yet
            size = sum(p.numel() for p in UNet2DModel.from_config(config).parameters())
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{reason}; diffusers could not build it either: {_first_line(e)}") from None
    if size > MAX_PARAMETERS:
        raise ValueError(f"{reason}; and as diffusers builds it, it has {size:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} ddim accepts (a damaged or hostile config.json?)")
    try:
        unet, info = UNet2DModel.from_pretrained(str(folder), use_safetensors=True, low_cpu_mem_usage=False,
                                                 output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{reason}; diffusers could not load it either: {_first_line(e)}") from None
    gaps = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if gaps:  # diffusers would fill missing weights with random ones and sample garbage
        raise ValueError(f"{folder / WEIGHTS_NAME} does not fit its config: {gaps[0].replace('_', ' ')} "
                         f"{list(info[gaps[0]])[:3]}")
    model = DiffusersUNet(unet)  # refuses, naming the setting, what ddim cannot drive
    warnings.warn(f"{folder}: {reason.key}={reason.value!r} has no native form; running diffusers' own "
                  "UNet2DModel (no fast path)", RuntimeWarning, stacklevel=5)
    return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def save_diffusers_unet(unet: nn.Module, path: str | Path) -> Path:
    """Write ``unet`` (our ``UNet``, or a ``DiffusersUNet``) as a diffusers ``UNet2DModel`` directory
    (config.json + safetensors weights), loadable by ``diffusers.UNet2DModel.from_pretrained(path)``.
    Returns the directory."""
    from .diffusers_unet import DiffusersUNet

    if isinstance(unet, DiffusersUNet):
        return unet.save_pretrained(path)
    if not isinstance(unet, UNet):
        raise ValueError(f"save_diffusers_unet needs a ddim.nn.UNet, got {type(unet).__name__}")
    config = unet_config_to_diffusers(unet.config)  # refuses what diffusers cannot hold, before any write
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    # safetensors wants contiguous CPU tensors (our parameters never share storage).
    state = {diffusers_key(k): v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    return folder


# ---- schedulers ---------------------------------------------------------------------------------
_PREDICTIONS = {"epsilon": "epsilon", "sample": "sample", "v_prediction": "v"}
_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
# diffusers schedulers whose config describes DDPM's discrete β process (they differ only in how they sample)
DDPM_FAMILY = ("DDPMScheduler", "DDIMScheduler", "DDIMInverseScheduler", "DDPMParallelScheduler",
               "DDIMParallelScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
               "DPMSolverMultistepInverseScheduler", "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler",
               "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
               "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "LMSDiscreteScheduler",
               "UniPCMultistepScheduler", "DEISMultistepScheduler", "SASolverScheduler", "TCDScheduler",
               "LCMScheduler")


def schedule_from_diffusers(config: Mapping[str, Any]) -> tuple[Schedule, str]:
    """Map a diffusers scheduler config (DDPM/DDIM-style scheduler_config.json) onto our Schedule.

    Reads num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
    rescale_betas_zero_snr and prediction_type, with diffusers' defaults for absent keys; other keys
    (clip_sample, timestep_spacing, ...) describe sampling, not the noise process, and are ignored.

    Returns:
        (schedule, prediction) with prediction one of "epsilon", "sample", "v".
    """
    name = config.get("_class_name")
    if name == VE_SCHEDULER:
        raise ValueError(f"{VE_SCHEDULER} describes a variance-exploding score model; load its pipeline with "
                         "ddim.load_checkpoint (ve_params_from_diffusers and ddim.nn.VEScoreModel map it)")
    if name is not None and name not in DDPM_FAMILY:
        raise ValueError(f"scheduler {name!r} is not of the DDPM/DDIM family whose noise process ddim models (a "
                         f"discrete β schedule); allowed: {', '.join(DDPM_FAMILY)}, or {VE_SCHEDULER}")
    T = config.get("num_train_timesteps", 1000)
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    kind = config.get("beta_schedule", "linear")
    zero_snr = config.get("rescale_betas_zero_snr", False)
    if not isinstance(zero_snr, bool):
        raise ValueError(f"rescale_betas_zero_snr must be true or false, got {zero_snr!r}")
    pred = config.get("prediction_type", "epsilon")
    if not isinstance(pred, str) or pred not in _PREDICTIONS:
        raise ValueError(f"unsupported prediction_type {pred!r}; allowed: {', '.join(_PREDICTIONS)}")
    trained = config.get("trained_betas")
    if trained is not None:
        schedule = Schedule.from_betas(trained, zero_terminal_snr=zero_snr)
    elif kind == "linear":
        schedule = Schedule.linear(T, beta_start=start, beta_end=end, zero_terminal_snr=zero_snr)
    elif kind == "scaled_linear":
        schedule = Schedule.scaled_linear(T, beta_start=start, beta_end=end, zero_terminal_snr=zero_snr)
    elif kind == "squaredcos_cap_v2":
        schedule = Schedule.cosine(T, zero_terminal_snr=zero_snr)  # s = 0.008, max_beta = 0.999, as diffusers
    elif kind == "sigmoid":
        schedule = Schedule.sigmoid(T, beta_start=start, beta_end=end, zero_terminal_snr=zero_snr)
    else:  # also a non-string value, which the comparisons above cannot match
        raise ValueError(f"unsupported beta_schedule {kind!r}; allowed: {', '.join(_BETA_SCHEDULES)} "
                         "(or trained_betas)")
    return schedule, _PREDICTIONS[pred]


VE_SCHEDULER = "ScoreSdeVeScheduler"


def ve_params_from_diffusers(config: Mapping[str, Any]) -> tuple[float, float, int] | None:
    """(σ_min, σ_max, T) of a score-SDE VE scheduler config (diffusers' defaults for absent keys), or None
    for any other scheduler. ``ddim.nn.VEScoreModel`` turns the network into an ε-predictor with them."""
    if config.get("_class_name") != VE_SCHEDULER:
        return None
    return (config.get("sigma_min", 0.01), config.get("sigma_max", 1348.0), config.get("num_train_timesteps", 2000))


def read_scheduler_config(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path/scheduler_config.json`` (``path/scheduler/`` of a pipeline directory, or the
    JSON file itself, also work)."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / SCHEDULER_CONFIG_NAME, path / "scheduler" / SCHEDULER_CONFIG_NAME]
    for file in candidates:
        if file.is_file():
            return _read_json(file)
    raise FileNotFoundError(f"no {SCHEDULER_CONFIG_NAME} at {path}")


def load_diffusers_schedule(path: str | Path) -> tuple[Schedule, str]:
    """``schedule_from_diffusers`` on ``read_scheduler_config(path)``."""
    return schedule_from_diffusers(read_scheduler_config(path))


def is_diffusers_folder(path: Path) -> bool:
    """Whether ``path`` is a diffusers model folder: a ``UNet2DModel``'s (config.json naming that class, and
    no ddim manifest) or a pipeline's (a ``unet/`` subfolder)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "unet").is_dir():
        return True
    if not (path / CONFIG_NAME).is_file() or (path / "manifest.json").exists():
        return False
    try:
        return files.read_json(path / CONFIG_NAME).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError):
        return False


def load_diffusers_model(path: str | Path) -> tuple[nn.Module, Schedule, str]:
    """(network, schedule, prediction) of a diffusers folder: a bare ``UNet2DModel`` (its scheduler_config.json
    beside its config.json, if any) or a pipeline (``unet/`` and ``scheduler/``). A score-SDE VE network comes
    wrapped in a ``VEScoreModel`` (an ε-predictor on its own discrete schedule).

    Raises:
        OSError, ValueError (and KeyError/TypeError from a config of the wrong shape): what cannot be loaded.
    """
    from .ve import VEScoreModel

    path = Path(path)
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    # beside the UNet's config.json (a bare model folder), or the pipeline's scheduler/ folder
    sched_dir = next((d for d in (unet_dir, path / "scheduler", path.parent / "scheduler")
                      if (d / SCHEDULER_CONFIG_NAME).is_file()), None)
    model = load_diffusers_unet(unet_dir)
    sched = read_scheduler_config(sched_dir) if sched_dir is not None else {}
    fourier = model.config.time_embedding == "fourier"
    if sched_dir is None and not fourier:
        warnings.warn(f"{unet_dir} has no {SCHEDULER_CONFIG_NAME} (beside config.json, or in scheduler/): assuming "
                      "DDPM's schedule (linear β from 1e-4 to 0.02, T = 1000) and ε-prediction; put the model's "
                      f"{SCHEDULER_CONFIG_NAME} beside its config.json to use another", UserWarning, stacklevel=4)
    ve = ve_params_from_diffusers(sched)
    if ve is not None:  # a score-SDE VE network: called with σ, returns the score
        model = VEScoreModel(model, *ve)
        return model, model.schedule(), "epsilon"
    if fourier:  # a score-SDE network without its VE scheduler
        raise ValueError("this network has time_embedding_type='fourier': it takes noise levels σ, not steps; "
                         f"ddim samples it with its {VE_SCHEDULER} config (scheduler/{SCHEDULER_CONFIG_NAME})")
    if sched:
        return (model, *schedule_from_diffusers(sched))
    return model, Schedule.linear(1000), "epsilon"  # DDPM's, as diffusers' DDPMScheduler defaults
