"""Builders of hostile inputs for tests/test_hardening.py: damaged checkpoints, model folders, data files and
run folders, each made from scratch in a test's tmp_path (the bundled files are never touched)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ddim.checkpoint import BUNDLED_MODEL, MANIFEST
from ddim.files import claim_folder
from ddim.nn import UNet, save_diffusers_unet

# claims held by a case until its test ends (``release_claims``)
HELD: list = []


def _rehash(ckpt: Path, name: str) -> None:
    """Make the manifest's entry for ``name`` match the file, so the content and not its hash is refused."""
    manifest = json.loads((ckpt / MANIFEST).read_text())
    data = (ckpt / name).read_bytes()
    manifest[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


def bundle_copy(tmp: Path, name: str = "ckpt") -> Path:
    dst = tmp / name
    shutil.copytree(BUNDLED_MODEL, dst)
    return dst


def manifest_naming(tmp: Path, entry: str) -> str:
    """A bundle copy whose manifest also lists ``entry`` (a path outside the checkpoint), with that file's
    true size and hash, so only the name can give it away."""
    dst = bundle_copy(tmp)
    outside = tmp / "secret.txt"
    outside.write_text("the contents a crafted checkpoint would like to confirm")
    manifest = json.loads((dst / MANIFEST).read_text())
    data = outside.read_bytes()
    manifest[entry.replace("SECRET", str(outside))] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return str(dst)


def weights_link(tmp: Path) -> str:
    """A bundle copy whose ema.safetensors is a symbolic link to an identical file outside it."""
    dst = bundle_copy(tmp)
    outside = tmp / "elsewhere.safetensors"
    (dst / "ema.safetensors").rename(outside)
    (dst / "ema.safetensors").symlink_to(outside)
    return str(dst)


def manifest_link(tmp: Path, target: str = "/dev/zero") -> str:
    dst = bundle_copy(tmp)
    (dst / MANIFEST).unlink()
    (dst / MANIFEST).symlink_to(target)
    return str(dst)


def manifest_huge(tmp: Path) -> str:
    """A bundle copy whose manifest is a 65 MiB file (sparse: no disk is used)."""
    dst = bundle_copy(tmp)
    with open(dst / MANIFEST, "r+b") as f:
        f.truncate(65 << 20)
    return str(dst)


def nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def config_nested(tmp: Path) -> str:
    dst = bundle_copy(tmp)
    (dst / "config.json").write_text('{"format": "ddim-run", "model": ' + nested() + "}")
    _rehash(dst, "config.json")
    return str(dst)


def manifest_nested(tmp: Path) -> str:
    dst = bundle_copy(tmp)
    (dst / MANIFEST).write_text('{"config.json": ' + nested() + "}")
    return str(dst)


def int_weights(tmp: Path) -> str:
    """A bundle copy whose EMA weights are stored as int32 (a valid manifest for them)."""
    dst = bundle_copy(tmp)
    tensors = load_file(str(dst / "ema.safetensors"))
    save_file({k: v.float().round().to(torch.int32) for k, v in tensors.items()}, str(dst / "ema.safetensors"))
    _rehash(dst, "ema.safetensors")
    return str(dst)


def schedule_field(tmp: Path, whole: bool = False, **fields) -> str:
    """A bundle copy whose config's schedule section has ``fields`` replaced (``whole``: is ``fields``)."""
    dst = bundle_copy(tmp)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["schedule"] = fields if whole else {**cfg["schedule"], **fields}
    (dst / "config.json").write_text(json.dumps(cfg))
    _rehash(dst, "config.json")
    return str(dst)


def tiny_unet(channels: int = 1, size: int = 8) -> UNet:
    torch.manual_seed(0)
    return UNet(image_size=size, in_channels=channels, out_channels=channels, base_channels=8, channel_mult=(1,),
                num_res_blocks=1, attn_resolutions=(), norm_groups=4).eval()


def diffusers_folder(tmp: Path, channels: int = 1, scheduler: dict | None = None, beside: bool = False,
                     dtype=None) -> str:
    """A diffusers model folder: a bare UNet2DModel (``beside``: with ``scheduler`` as its
    scheduler_config.json), or a pipeline with unet/ and, given ``scheduler``, scheduler/."""
    root = tmp / "diffusers"
    unet_dir = root if beside or scheduler is None else root / "unet"
    save_diffusers_unet(tiny_unet(channels), unet_dir)
    if dtype is not None:
        file = unet_dir / "diffusion_pytorch_model.safetensors"
        save_file({k: v.round().to(dtype) for k, v in load_file(str(file)).items()}, str(file))
    if scheduler is not None:
        folder = unet_dir if beside else root / "scheduler"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "scheduler_config.json").write_text(json.dumps(scheduler))
    return str(root)


def idx_pair(tmp: Path, n: int = 0, split: str = "t10k", gz: bool = True) -> str:
    """A Fashion-MNIST-style folder whose ``split`` idx files hold ``n`` blank 28×28 images."""
    folder = tmp / "idx"
    folder.mkdir(exist_ok=True)
    images = struct.pack(">4B3I", 0, 0, 8, 3, n, 28, 28) + bytes(n * 28 * 28)
    labels = struct.pack(">4BI", 0, 0, 8, 1, n) + bytes(n)
    for stem, data in ((f"{split}-images-idx3-ubyte", images), (f"{split}-labels-idx1-ubyte", labels)):
        (folder / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(data) if gz else data)
    return str(folder)


def idx_overflowing(tmp: Path) -> Path:
    path = tmp / "huge-idx3-ubyte"
    path.write_bytes(struct.pack(">4B4I", 0, 0, 8, 4, *(0xFFFFFFFF,) * 4))
    return path


def images_dir_blocked(tmp: Path) -> str:
    """An --images-dir whose first per-image file name is taken by a folder."""
    (tmp / "imgs" / "000000.png").mkdir(parents=True)
    return str(tmp / "imgs")


def busy(tmp: Path, name: str = "run") -> str:
    """A folder another ddim run holds (claimed through a second open file, as another process would)."""
    folder = tmp / name
    cm = claim_folder(folder, "ddim train")
    cm.__enter__()
    HELD.append(cm)
    return str(folder)


def release_claims() -> None:
    while HELD:
        with contextlib.suppress(Exception):
            HELD.pop().__exit__(None, None, None)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_dir(tmp: Path, argv: list, steps: int = 2) -> str:
    """A run folder of ``ddim train argv`` after ``steps`` steps (checkpoint at the end)."""
    from ddim.cli import main

    out = tmp / "run"
    assert main([*argv, "--quiet", "--steps", str(steps), "--out", str(out)]) == 0
    return str(out)


def run_manifest_naming(tmp: Path, argv: list, entry: str) -> str:
    """A trained run whose latest checkpoint's manifest also names ``entry`` (outside the checkpoint)."""
    from ddim.checkpoint import list_checkpoints

    out = run_dir(tmp, argv)
    ckpt = list_checkpoints(out)[-1]
    manifest = json.loads((ckpt / MANIFEST).read_text())
    manifest[entry] = {"bytes": 1, "sha256": "0" * 64}
    (ckpt / MANIFEST).write_text(json.dumps(manifest))
    return out


def run_state_edited(tmp: Path, argv: list, edit) -> str:
    """A trained run whose latest checkpoint's state.json is ``edit(state)`` (with a matching manifest)."""
    from ddim.checkpoint import list_checkpoints

    out = run_dir(tmp, argv)
    ckpt = list_checkpoints(out)[-1]
    (ckpt / "state.json").write_text(json.dumps(edit(json.loads((ckpt / "state.json").read_text()))))
    _rehash(ckpt, "state.json")
    return out


def float8_weights(tmp: Path) -> str:
    """A bundle copy whose EMA weights are stored as float8 (e4m3): coarse, but floating point."""
    dst = bundle_copy(tmp)
    tensors = load_file(str(dst / "ema.safetensors"))
    save_file({k: v.float().to(torch.float8_e4m3fn) for k, v in tensors.items()}, str(dst / "ema.safetensors"))
    _rehash(dst, "ema.safetensors")
    return str(dst)


def config_field(tmp: Path, section: str, **fields) -> str:
    """A bundle copy whose config's ``section`` has ``fields`` replaced."""
    dst = bundle_copy(tmp)
    cfg = json.loads((dst / "config.json").read_text())
    cfg[section] = {**cfg[section], **fields}
    (dst / "config.json").write_text(json.dumps(cfg))
    _rehash(dst, "config.json")
    return str(dst)


def manifest_entry(tmp: Path, name: str, entry) -> str:
    """A bundle copy whose manifest's entry ``name`` is ``entry``."""
    dst = bundle_copy(tmp)
    manifest = json.loads((dst / MANIFEST).read_text())
    manifest[name] = entry
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return str(dst)


def run_edited(tmp: Path, argv: list, edit) -> str:
    """A trained run (``run_dir``) after ``edit(run folder, latest checkpoint)``."""
    from ddim.checkpoint import list_checkpoints

    out = run_dir(tmp, argv)
    edit(Path(out), list_checkpoints(out)[-1])
    return out


def fifo(tmp: Path, name: str) -> str:
    """A folder holding a named pipe called ``name``."""
    folder = tmp / "piped"
    folder.mkdir()
    os.mkfifo(folder / name)
    return str(folder)


def diffusers_fallback(tmp: Path, drop: int = 0, **config) -> str:
    """A diffusers UNet folder that ddim cannot build natively (act_fn gelu: run through diffusers' own
    UNet2DModel), with ``config`` overrides and its first ``drop`` weight tensors removed."""
    root = Path(diffusers_folder(tmp, 1, {"_class_name": "DDPMScheduler"}))
    cfg = json.loads((root / "unet" / "config.json").read_text())
    (root / "unet" / "config.json").write_text(json.dumps({**cfg, "act_fn": "gelu", **config}))
    file = root / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(file))
    save_file(dict(sorted(tensors.items())[drop:]), str(file))
    return str(root)


def run_config_edited(tmp: Path, argv: list, edit) -> str:
    """A trained run whose latest checkpoint's config.json is ``edit(config)`` (with a matching manifest)."""
    def change(run: Path, ckpt: Path) -> None:
        (ckpt / "config.json").write_text(json.dumps(edit(json.loads((ckpt / "config.json").read_text()))))
        _rehash(ckpt, "config.json")
    return run_edited(tmp, argv, change)


def sandbox_env(**env) -> dict:
    return {**os.environ, **{k: str(v) for k, v in env.items()}}


def png_header_only(path: Path, width: int, height: int) -> str:
    """A PNG that declares width × height grey pixels but holds none: a size check must read the header
    alone (a real 12000 × 12000 image would take seconds and 144 MB to make)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return str(path)


def link_to_fifo(tmp: Path, name: str) -> str:
    """A symbolic link called ``name`` to a named pipe beside it (what /dev/zero is to a root user's output)."""
    os.mkfifo(tmp / "pipe")
    (tmp / name).symlink_to(tmp / "pipe")
    return str(tmp / name)
