"""Checkpoints: one directory per step, safetensors for tensors and JSON for everything else (no pickle).

Layout of a run directory ``OUT``::

    OUT/config.json                      the run's RunConfig (for people; checkpoints carry their own)
    OUT/checkpoints/step_000500/
        config.json                      RunConfig.to_dict() plus "step"
        model.safetensors                the live network's weights
        ema.safetensors                  the EMA weights (same keys; what sampling uses by default)
        training_state.safetensors       optimizer moments and RNG states (for exact resume)
        state.json                       step, data position, optimizer hyper-parameters, ...
        manifest.json                    size and SHA-256 of every file above

A checkpoint is written into a hidden temporary directory, every file and the directory are fsynced,
and only then renamed into place, so a crash never leaves a half-written ``step_*`` directory.
Loading re-hashes every file against the manifest: a truncated or corrupted file is an error, never
silently used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch
from torch import nn

from . import files

__all__ = ["CheckpointError", "NonFiniteError", "save_checkpoint", "load_checkpoint", "find_checkpoint",
           "list_checkpoints", "verify_checkpoint", "read_tensors", "read_json", "load_weights", "check_finite",
           "CHECKPOINTS_DIR", "MANIFEST", "BUNDLED_MODEL", "BUNDLED_NOISY_CLASSIFIER", "BUNDLED_STUDENT",
           "NAMED_CHECKPOINTS", "named_checkpoint", "export_checkpoint",
           "load_noisy_classifier", "clean_leftovers"]

PathLike = Union[str, os.PathLike]
CHECKPOINTS_DIR = "checkpoints"
MANIFEST = "manifest.json"
BUNDLED_MODEL = Path(__file__).resolve().parent / "assets" / "fashion_mnist_small"
"""The pretrained class-conditional Fashion-MNIST model shipped in the package (``ddim sample``'s default)."""
BUNDLED_NOISY_CLASSIFIER = Path(__file__).resolve().parent / "assets" / "fashion_mnist_noisy_classifier"
"""The noisy Fashion-MNIST classifier shipped for classifier guidance of the bundled model."""
BUNDLED_STUDENT = Path(__file__).resolve().parent / "assets" / "fashion_mnist_distilled"
"""The bundled model distilled (``ddim distill``) into a 4-step student that takes the guidance weight as input."""
NAMED_CHECKPOINTS = {"bundled": BUNDLED_MODEL, "distilled": BUNDLED_STUDENT}
"""What the short names ``--checkpoint bundled`` and ``--checkpoint distilled`` stand for."""


def named_checkpoint(path: PathLike) -> str:
    """``path`` itself, or the folder of a short name in ``NAMED_CHECKPOINTS`` (a path that is also a name: prefix
    it with ``./``)."""
    return str(NAMED_CHECKPOINTS.get(str(path), path))


_STEP_DIR = re.compile(r"^step_(\d+)$")
_HASH_CHUNK = 1 << 22  # 4 MiB reads keep memory flat for large files


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupted, or does not fit the network it is loaded into."""


class NonFiniteError(RuntimeError):
    """Training produced NaN or Inf (in the loss or the weights); such weights are never checkpointed."""


# ---------------------------------------------------------------------------------------- low level

def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _sha256(path: Path) -> str:
    """SHA-256 of a regular file inside a checkpoint, read without following a symbolic link."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path} is not a regular file")
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj) -> None:
    """``obj`` as indented JSON at ``path``, atomically (``ddim.atomic``)."""
    from .atomic import atomic_write

    text = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(text))


def read_json(path: PathLike) -> dict:
    """A JSON object from ``path``, a regular file (not a symbolic link) of bounded size and nesting
    (``ddim.files.read_json``); anything else is a ``CheckpointError`` naming the file."""
    try:
        return files.read_json(path, follow_symlinks=False)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(_one_line(e)) from None


def read_tensors(path: PathLike, device="cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; an unreadable (e.g. truncated) file is a ``CheckpointError``."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        files.regular_file(path, follow_symlinks=False)  # a link could point outside the checkpoint
        files.safetensors_dtypes(path)  # a dtype torch cannot hold is named, not reported as damage
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(_one_line(e)) from None
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises its own error types for bad headers and short files
        raise CheckpointError(f"{path} is corrupted or truncated ({_one_line(e)})") from None


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # safetensors wants contiguous CPU tensors that share no storage.
    try:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(path))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path, 0o666 & ~umask)  # safetensors creates its files 0600; give them a plain file's mode
    except Exception as e:  # a full disk surfaces as safetensors' own error type: report it as what it is
        if isinstance(e, OSError):
            raise
        raise OSError(f"cannot write {path}: {_one_line(e)}") from None


# ---------------------------------------------------------------------------------------- checks

def check_finite(named: Mapping[str, nn.Module], step: int) -> None:
    """Raise ``NonFiniteError`` naming the first parameter or buffer holding NaN/Inf."""
    for what, module in named.items():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteError(f"refusing to write the step-{step} checkpoint: {what} weight {name!r} "
                                            "holds NaN or Inf (training diverged; lower --lr or resume from the "
                                            "last checkpoint)")


def load_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``module`` after checking that names and shapes match exactly."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not fit this architecture: missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''}")
    for k, v in expected.items():
        if v.is_floating_point() and not tensors[k].is_floating_point():  # a cast would run garbage
            raise CheckpointError(f"{source} holds {str(tensors[k].dtype).replace('torch.', '')} weights in {k!r}; "
                                  "weights must be floating point (float16, bfloat16, float32, float64 or float8)")
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{source} does not fit this architecture: {k!r} has shape "
                                  f"{tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}")
    # float32 for the check: isfinite has no float8 kernel, and every float8 value is exactly a float32
    bad = next((k for k, v in tensors.items() if v.is_floating_point()
                and not bool(torch.isfinite(v.float() if v.element_size() == 1 else v).all())), None)
    if bad is not None:
        raise CheckpointError(f"{source} holds NaN or Inf in {bad!r}: the weights are unusable (a diverged or "
                              "damaged run; use an earlier checkpoint)")
    module.load_state_dict(dict(tensors), strict=True)


# ---------------------------------------------------------------------------------------- saving

def _step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def list_checkpoints(run_dir: PathLike) -> list[Path]:
    """The complete checkpoint directories under ``run_dir/checkpoints``, oldest step first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    linked = [p.name for _, p in found if p.is_symlink()]
    if linked or root.is_symlink():  # a link could make a run resume from (and prune) a folder outside it
        raise CheckpointError(f"{root / (linked[0] if linked else '')} is a symbolic link; the checkpoints of a run "
                              "must lie inside its folder")
    return [p for _, p in sorted(found)]


def _prune(run_dir: Path, keep_last: int) -> None:
    if keep_last > 0:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _write_dir_atomically(final: Path, jsons: Mapping[str, Mapping],
                          tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Write JSON files, ``{stem}.safetensors`` files and a manifest into ``final`` as one unit.

    Everything goes into a hidden sibling directory that is fsynced and then renamed into place; an
    existing ``final`` is moved aside first and deleted only after the rename, so a crash at any
    point leaves either the old directory or the new one on disk, never neither.
    """
    root = final.parent
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, obj in jsons.items():
            write_json(tmp / name, obj)
        for stem, tensor_dict in tensors.items():
            _save_tensors(tensor_dict, tmp / f"{stem}.safetensors")
        files = sorted(p.name for p in tmp.iterdir())
        for name in files:
            _fsync_file(tmp / name)
        write_json(tmp / MANIFEST, {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                                    for name in files})
        _fsync_file(tmp / MANIFEST)
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = root / f".old-{final.name}-{os.getpid()}"
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(root)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _writer_alive(name: str) -> bool:
    """Whether the process that named a ``.tmp-*`` / ``.old-*`` folder (its pid is the last field) still
    runs: another job writing into the same run directory keeps its folders."""
    pid = name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def clean_leftovers(run_dir: PathLike) -> list[str]:
    """Remove what a killed ``save_checkpoint`` may leave in ``run_dir/checkpoints``: half-written ``.tmp-*``
    folders (deleted), and ``.old-*`` folders, the previous version of a checkpoint moved aside (put back
    if the new one never arrived, else deleted). Returns what it did, one line each."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    done = []
    for p in sorted(root.glob(".tmp-*")) if root.is_dir() else []:
        if _writer_alive(p.name):
            continue
        _remove(p)
        done.append(f"removed the unfinished {p.name}")
    for p in sorted(root.glob(".old-*")) if root.is_dir() else []:
        if _writer_alive(p.name):
            continue
        m = re.match(r"^\.old-(step_\d+)-\d+$", p.name)
        final = root / m.group(1) if m else None
        if final is not None and not final.exists() and p.is_dir() and not p.is_symlink():
            p.rename(final)
            done.append(f"restored {final.name} from {p.name}")
        else:
            _remove(p)
            done.append(f"removed the superseded {p.name}")
    return done


def _remove(p: Path) -> None:
    """Delete a leftover: a folder with its files, anything else (a link included: never what it points to)
    by itself."""
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def save_checkpoint(run_dir: PathLike, step: int, config: Mapping, tensors: Mapping[str, Mapping[str, torch.Tensor]],
                    state: Mapping, keep_last: int = 0) -> Path:
    """Write ``run_dir/checkpoints/step_{step:06d}`` atomically, then delete all but the last ``keep_last``.

    Args:
        run_dir: the run's output directory.
        step: completed optimizer steps.
        config: JSON dict for config.json (``RunConfig.to_dict()``); "step" is added.
        tensors: file stem -> tensors, e.g. {"model": ..., "ema": ..., "training_state": ...}.
        state: JSON dict for state.json.
        keep_last: how many checkpoints to keep (0: all).
    Returns:
        the checkpoint directory.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_dir_name(step)
    _write_dir_atomically(final, {"config.json": {**config, "step": step}, "state.json": dict(state)}, tensors)
    _prune(Path(run_dir), keep_last)
    return final


# ---------------------------------------------------------------------------------------- loading

MAX_MANIFEST_ENTRIES = 64  # a checkpoint holds about six files


def _member(ckpt_dir: Path, name) -> Path:
    """``ckpt_dir / name`` for a name the manifest gives, refused unless it is a plain file name: no folder
    part, no "..", no hidden file, so no manifest can make ddim read (and hash) a file outside it."""
    ok = (isinstance(name, str) and name == os.path.basename(name) and name not in ("", ".", "..")
          and not name.startswith(".") and "\\" not in name and "\0" not in name and name.isprintable()
          and len(name.encode("utf-8", "replace")) <= 255 and name.encode("utf-8", "replace").decode() == name)
    if not ok:
        raise CheckpointError(f"{ckpt_dir / MANIFEST} names {name!r}, which is not a file of the checkpoint (allowed: "
                              "plain file names such as ema.safetensors, no folders)")
    return ckpt_dir / name


def verify_checkpoint(ckpt_dir: PathLike, names: Optional[Iterable[str]] = None) -> dict:
    """Check sizes and SHA-256 of the files against manifest.json; returns the manifest.

    Every file must be a regular file inside ``ckpt_dir`` (a name with a folder part, or a symbolic link,
    is refused before anything is read through it).

    Args:
        ckpt_dir: a ``step_*`` directory.
        names: only these files (default: all in the manifest).
    """
    ckpt_dir = Path(ckpt_dir)
    manifest = read_json(ckpt_dir / MANIFEST)
    if len(manifest) > MAX_MANIFEST_ENTRIES:
        raise CheckpointError(f"{ckpt_dir / MANIFEST} lists {len(manifest)} files; a checkpoint has at most "
                              f"{MAX_MANIFEST_ENTRIES}")
    for name in manifest:
        _member(ckpt_dir, name)
    for name in names if names is not None else sorted(manifest):
        if name not in manifest:
            raise CheckpointError(f"{ckpt_dir} has no {name} in its manifest")
        path, want = _member(ckpt_dir, name), manifest[name]
        if not isinstance(want, dict):  # a hand-edited or damaged manifest must not end in a traceback
            raise CheckpointError(f"{ckpt_dir / MANIFEST} is malformed: its entry for {name} must be an object "
                                  f"with bytes and sha256, got {want!r}")
        try:
            size = files.regular_file(path, follow_symlinks=False).st_size
        except FileNotFoundError:
            raise CheckpointError(f"{path} is missing") from None
        except ValueError as e:
            raise CheckpointError(f"{e}; the files of a checkpoint must be regular files inside it") from None
        if type(want.get("bytes")) is not int or not isinstance(want.get("sha256"), str):
            raise CheckpointError(f"{ckpt_dir / MANIFEST} is malformed: its entry for {name} needs an integer bytes "
                                  f"and a sha256 string, got {want!r:.120}")
        if size != want.get("bytes"):
            raise CheckpointError(f"{path} is truncated or corrupted: {size} bytes, the manifest says {want.get('bytes')}")
        if _sha256(path) != want.get("sha256"):
            raise CheckpointError(f"{path} is corrupted: its SHA-256 differs from the manifest")
    return manifest


def find_checkpoint(path: PathLike) -> Path:
    """The checkpoint directory meant by ``path``: a ``step_*`` dir itself, or a run dir's latest one."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if (path / MANIFEST).is_file() or (path / MANIFEST).is_symlink():  # a link is refused when it is read
        return path
    ckpts = list_checkpoints(path) or (list_checkpoints(path.parent) if path.name == CHECKPOINTS_DIR else [])
    if not ckpts:
        raise CheckpointError(f"{path} holds no checkpoint (expected {MANIFEST}, or {CHECKPOINTS_DIR}/step_*/ "
                              "inside a run directory)")
    return ckpts[-1]


def _load_diffusers(path: Path, device):
    """(model, schedule, RunConfig) of a diffusers model folder (``ddim.nn.diffusers_io.load_diffusers_model``)."""
    from .config import RunConfig, TrainConfig
    from .nn.diffusers_io import load_diffusers_model

    try:
        model, schedule, prediction = load_diffusers_model(path)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:  # TypeError: a config value of a wrong type
        raise CheckpointError(f"cannot load the diffusers model in {path} ({_one_line(e)})") from None
    config = RunConfig(model=model.config, train=TrainConfig(prediction=prediction), schedule=schedule.to_config())
    model.prediction = prediction
    return model.to(device).eval(), schedule, config


def load_checkpoint(path: PathLike = BUNDLED_MODEL, ema: bool = True, device="cpu"):
    """Load a network for sampling: ``(model, schedule, config)``.

    Args:
        path: a run directory (its latest checkpoint), a ``step_*`` checkpoint directory, an exported
            directory (``export_checkpoint``; the default is the bundled Fashion-MNIST model), a diffusers
            ``UNet2DModel`` directory (config.json with "_class_name": "UNet2DModel"), or a diffusers
            pipeline directory with ``unet/`` and ``scheduler/`` subfolders.
        ema: the EMA weights (True) or the live training weights (False); diffusers files have one set.
        device: where to put the model.
    Returns:
        model: a ``ddim.nn.UNet`` in eval mode; call it as ``model(x_t, t[, labels])``. Its ``prediction``
            attribute names what it predicts, and samplers given no prediction read it.
        schedule: the ``ddim.Schedule`` it was trained with.
        config: a ``ddim.train.RunConfig``; ``config.prediction`` names what the model predicts.
    Raises:
        CheckpointError: missing, truncated or corrupted files, or weights that do not fit the config.
    """
    from .device import resolve_device
    from .nn import UNet
    from .nn.diffusers_io import is_diffusers_folder

    device = resolve_device(device)
    p = Path(path)
    if is_diffusers_folder(p):
        return _load_diffusers(p, device)
    return _load_run(p, ema, device, UNet, classifier=False)


def load_noisy_classifier(path: PathLike = BUNDLED_NOISY_CLASSIFIER, ema: bool = True, device="cpu"):
    """Load a noisy classifier (``ddim train-classifier``): ``(classifier, schedule, config)``, arguments and
    errors as in ``load_checkpoint``; the default is the bundled Fashion-MNIST classifier. The classifier
    is a ``ddim.nn.NoisyClassifier`` in eval mode, called as ``classifier(x_t, t)`` -> (B, K) logits."""
    from .device import resolve_device
    from .nn import NoisyClassifier

    return _load_run(Path(path), ema, resolve_device(device), NoisyClassifier, classifier=True)


def _load_run(path: Path, ema: bool, device, cls, classifier: bool):
    """(network, schedule, RunConfig) of a ddim checkpoint holding a denoiser or (``classifier``) a classifier."""
    from .config import RunConfig

    ckpt = find_checkpoint(path)
    weights = "ema.safetensors" if ema else "model.safetensors"
    verify_checkpoint(ckpt, ["config.json", weights])
    try:
        config = RunConfig.from_dict(read_json(ckpt / "config.json"))
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{ckpt / 'config.json'} is not a valid run config ({_one_line(e)})") from None
    if config.is_classifier != classifier:
        raise CheckpointError(f"{ckpt} holds a {'noisy classifier' if config.is_classifier else 'denoiser'}, not a "
                              f"{'noisy classifier' if classifier else 'denoiser'}"
                              + (" (pass it as the classifier, e.g. --classifier)" if config.is_classifier else ""))
    net = cls.from_config(config.model)
    load_weights(net, read_tensors(ckpt / weights), str(ckpt / weights))
    if not classifier:
        net.prediction = config.prediction  # what its output means, for samplers not told (network_prediction)
    return net.to(device).eval(), config.make_schedule(), config


# ---------------------------------------------------------------------------------------- export


def export_checkpoint(src: PathLike, dst: PathLike, dtype: torch.dtype = torch.float16, ema: bool = True,
                      record: Optional[Mapping] = None) -> Path:
    """Write a sampling-only copy of a checkpoint: config.json, ema.safetensors (in ``dtype``), manifest.

    The result loads with ``load_checkpoint(dst)`` like any checkpoint (weights are cast back to the
    model's float32 on load). No optimizer or RNG state: it cannot be resumed. This is how the bundled
    model was made; fp16 halves the size and changes samples by far less than one 8-bit grey level.

    Args:
        src: a run directory (its latest checkpoint) or a ``step_*`` directory.
        dst: the directory to write (replaced atomically if it is a checkpoint directory already; any other
            existing folder, and the source checkpoint itself, are refused: replacing means deleting).
        dtype: floating-point type of the stored weights.
        ema: export the EMA weights (True) or the live ones; either way they are stored as ema.safetensors.
        record: JSON object written as training.json (how the model was made).
    """
    ckpt = find_checkpoint(src)
    dst = Path(dst)
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):  # only an earlier export may be replaced
        what = ("the checkpoint being exported" if dst.resolve() == ckpt.resolve()
                else "not a checkpoint directory" if not (dst / MANIFEST).is_file()
                else "a training checkpoint" if (dst / "training_state.safetensors").exists() else None)
        if what:
            raise CheckpointError(f"cannot export to {dst}: it exists and is {what}, and the export replaces it as "
                                  "a whole; choose a new folder")
    weights = "ema.safetensors" if ema else "model.safetensors"
    verify_checkpoint(ckpt, ["config.json", weights])
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in read_tensors(ckpt / weights).items()}
    jsons = {"config.json": read_json(ckpt / "config.json")}
    if record is not None:
        jsons["training.json"] = dict(record)
    dst.parent.mkdir(parents=True, exist_ok=True)
    _write_dir_atomically(dst, jsons, {"ema": tensors})
    return dst
