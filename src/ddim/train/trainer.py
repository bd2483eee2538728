"""The Trainer: owns the network, its EMA, the optimizer, checkpoints and logging.

One optimizer step k (0-based) of global batch B over W ranks:
    1. indices = batch_indices(seed, k, B, N); g = step_generator(seed, k)
    2. from g, for the whole global batch: t, ε, label-dropout mask (``loss.draw``), then flip mask
    3. rank r takes rows [r·B/W, (r+1)·B/W) of all of them
    4. the global RNG (used by dropout layers) is seeded from (seed, k, r)
    5. loss = L_simple on the shard; backward (DDP averages gradients); clip; AdamW with lr_at(k); EMA
Every random quantity is a function of (seed, k, r), so a resumed run recomputes exactly what the
uninterrupted run would have, and W ranks compute what one process computes for the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import (CHECKPOINTS_DIR, MANIFEST, CheckpointError, NonFiniteError, check_finite, clean_leftovers,
                          find_checkpoint, list_checkpoints, load_weights, read_json, read_tensors, save_checkpoint,
                          verify_checkpoint, write_json)
from ..config import FORMAT, RESUMABLE_FIELDS, DataConfig, RunConfig, config_diff
from ..device import resolve_device
from ..distributed import (RENDEZVOUS_TIMEOUT, DistInfo, all_reduce_sum, any_rank, barrier, dist_info_from_env,
                           init_distributed)
from ..files import claim_folder
from ..images import save_grid
from ..samplers import sample
from ..transfer import to_device
from .batches import STREAM_INIT, STREAM_SAMPLES, apply_flips, batch_indices, derive_seed, flip_mask, step_generator
from .ema import EMA
from .loss import diffusion_loss, draw, drop_labels, log_sigma_table
from .monitor import Monitor, truncate_metrics
from .state import optimizer_from_flat, optimizer_to_flat, rng_from_flat, rng_to_flat

__all__ = ["Trainer", "TrainResult", "load_data", "check_run_dir"]

STREAM_DROPOUT = 5  # the per-(step, rank) seed of the global RNG; distinct from batches.STREAM_*


@dataclass(frozen=True)
class TrainResult:
    """How ``Trainer.fit`` ended: the step reached, the last checkpoint, the mean loss of the last logged
    interval, and the signal number (SIGINT/SIGTERM) that stopped it early, if one did."""

    step: int
    checkpoint: Optional[Path]
    loss: Optional[float]
    signal: Optional[int] = None

    @property
    def interrupted(self) -> bool:
        return self.signal is not None


def check_run_dir(out_dir, resume: bool) -> None:
    """Refuse an ``out_dir`` training must not write into (cheap, so the CLI calls it before loading any
    data): a checkpoint directory, whose config.json the run would overwrite (its manifest then fails),
    a folder whose config.json is someone else's, or a run with checkpoints without ``resume``."""
    out = Path(out_dir)
    if (out / MANIFEST).is_file():
        raise ValueError(f"{out} is a checkpoint directory ({MANIFEST}), not a run directory; training there "
                         "would overwrite its config.json; choose another --out")
    # what the run will write must be what it writes, or nothing yet: found otherwise, it would fail (or
    # hang on a pipe) only after the training it was meant to keep
    for name, want_dir in (("config.json", False), ("metrics.jsonl", False), (CHECKPOINTS_DIR, True),
                           ("samples", True)):
        p = out / name
        wrong = (p.is_symlink() or not p.is_dir()) if want_dir else not p.is_file()  # a file may be a link
        if os.path.lexists(p) and wrong:
            raise ValueError(f"{p} is in the way of the run: it must be a {'folder' if want_dir else 'regular file'} "
                             "(or not exist yet); move it, or choose another --out")
    cfg = out / "config.json"
    if cfg.exists():
        try:
            ours = read_json(cfg).get("format") == FORMAT
        except CheckpointError:
            ours = False
        if not ours:
            raise ValueError(f"{cfg} exists and is not a ddim run config; training would overwrite it; choose "
                             "another --out")
    existing = list_checkpoints(out)
    if existing and not resume:
        raise ValueError(f"{out} already holds checkpoints (latest {existing[-1].name}); pass --resume "
                         "to continue that run, or choose another --out")


def load_data(data: DataConfig):
    """The ``ImageData`` a ``DataConfig`` names."""
    from ..data import load_dataset

    return load_dataset(data.dataset, data.data_dir, data.split, data.image_size, data.channels)


def _check_data_fits(data, config: RunConfig) -> None:
    m = config.model
    if data.image_size != m.image_size or data.channels != m.in_channels:
        raise ValueError(f"the data are {data.channels}×{data.image_size}×{data.image_size} but the model expects "
                         f"{m.in_channels}×{m.image_size}×{m.image_size}")
    if m.num_classes is not None and (data.labels is None or data.num_classes != m.num_classes):
        raise ValueError(f"a class-conditional model with num_classes={m.num_classes} needs labelled data with as "
                         f"many classes; {data.name} has {data.num_classes}")


def _note(text: str) -> None:
    print(f"ddim: note: {text}", file=sys.stderr, flush=True)


class _StopFlag:
    """Records SIGINT/SIGTERM instead of dying, so the loop can finish the step and checkpoint."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)


class Trainer:
    """Train ``config.model`` on ``config.data`` with the DDPM objective.

    Args:
        config: the run's configuration (validated on construction).
        out_dir: run directory; checkpoints, metrics.jsonl and samples/ go there (rank 0 only).
        data: the training images (default: ``load_data(config.data)``).
        device: "auto", "cpu", "cuda" or "cuda:N".
        resume: continue from the latest checkpoint in ``out_dir`` (if there is none, start fresh).
        quiet: no progress bar or messages.
        dist_info: rank and world size (default: from torchrun's environment variables).
        dist_timeout: seconds to wait for the other processes to join (``init_distributed``).

    While it trains (until ``fit`` returns), rank 0 holds ``out_dir``'s claim (``ddim.files.claim_folder``):
    a second run into the same folder is refused instead of overwriting this one's checkpoints.
    """

    def __init__(self, config: RunConfig, out_dir, *, data=None, device: str = "auto", resume: bool = False,
                 quiet: bool = False, dist_info: Optional[DistInfo] = None, dist_timeout: float = RENDEZVOUS_TIMEOUT):
        self.config, self.out_dir, self.quiet = config, Path(out_dir), quiet
        self._claim = contextlib.ExitStack()
        tc = config.train
        if getattr(config.model, "time_embedding", "positional") == "fourier":
            # the DDPM objective feeds step indices (t = 0 included): log t and the output's 1/t would be ±inf
            raise ValueError("time_embedding='fourier' is for imported score-SDE networks that read noise levels σ; "
                             "ddim trains on step indices: use time_embedding='positional'")
        self.info = dist_info or dist_info_from_env()
        if tc.batch_size % self.info.world_size:
            raise ValueError(f"batch_size {tc.batch_size} is not divisible by the number of processes "
                             f"({self.info.world_size}); the global batch is split evenly across them")
        self.local_batch = tc.batch_size // self.info.world_size
        self.device = resolve_device(device, self.info)
        self.use_bf16 = tc.bf16 and self.device.type in ("cuda", "cpu")
        if data is None:
            if config.data is None:
                raise ValueError("no training data: the config has no data section and none was passed")
            data = load_data(config.data)
        _check_data_fits(data, config)
        # Images stay uint8 on the device; each batch is converted there.
        self.data = dataclasses.replace(data, images=data.images.to(self.device),
                                        labels=None if data.labels is None else data.labels.to(self.device))
        self.class_cond = config.model.num_classes is not None
        self.schedule = config.make_schedule()
        self._log_sigma = log_sigma_table(self.schedule, config.train.t_sampling)  # None: uniform steps
        init_distributed(self.info, self.device, dist_timeout, note=None if quiet else _note)

        torch.manual_seed(derive_seed(tc.seed, STREAM_INIT))  # identical initial weights on every rank
        self.model = self.build_model().to(self.device)
        if not config.is_classifier:  # what the network learns to predict, for whoever samples it (and its EMA)
            self.model.prediction = tc.prediction
        self.ema = EMA(self.model, tc.ema_decay).to(self.device)
        self.optimizer = self.build_optimizer(self.model.parameters())
        self.step = 0
        self._saved_step: Optional[int] = None
        self._last_checkpoint: Optional[Path] = None
        try:
            self._prepare_out_dir(resume)
        except BaseException:
            self._claim.close()
            raise
        if self.step == 0 and tc.init_from is not None:  # a resumed fine-tune has its own weights already
            self._init_weights(tc.init_from)
        self.net = self._wrap(self.model)
        self.monitor = Monitor(self.out_dir, tc.steps, self.step, enabled=self.info.is_main, quiet=quiet)
        self._window = self._new_window()

    # ---- setup ----------------------------------------------------------------------------------
    def build_model(self) -> torch.nn.Module:
        """The network to train, built under the run's init seed. A subclass may return any denoiser
        called as ``net(x_t, t[, labels])`` with a ``null_label`` attribute (benchmarks/training.py
        trains diffusers' UNet through this same loop)."""
        from ..nn import UNet

        return UNet.from_config(self.config.model)

    def build_optimizer(self, params) -> torch.optim.Optimizer:
        """AdamW with the run's hyper-parameters (a subclass may pick e.g. ``fused=True`` on CUDA)."""
        tc = self.config.train
        return torch.optim.AdamW(params, lr=tc.lr, betas=tc.adam_betas, weight_decay=tc.weight_decay)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        net = model
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            net = DistributedDataParallel(model, device_ids=ids)
        return torch.compile(net) if self.config.train.compile else net

    def _prepare_out_dir(self, resume: bool) -> None:
        check_run_dir(self.out_dir, resume)  # every rank, before the claim creates the folder: all refuse together
        if self.info.is_main:
            self._claim.enter_context(claim_folder(self.out_dir, "ddim train" + (" (resumed)" if resume else "")))
            for line in clean_leftovers(self.out_dir):  # a kill during a checkpoint write
                if not self.quiet:
                    print(f"ddim: note: {line}")
        barrier(self.info)
        existing = list_checkpoints(self.out_dir)
        if existing:
            self._resume(find_checkpoint(self.out_dir))
        if self.info.is_main:
            write_json(self.out_dir / "config.json", self.config.to_dict())
            truncate_metrics(self.out_dir / "metrics.jsonl", self.step)

    def _resume(self, ckpt: Path) -> None:
        verify_checkpoint(ckpt)
        saved = read_json(ckpt / "config.json")
        saved.pop("step", None)
        # through RunConfig, so fields added since the checkpoint was written take their defaults
        # (e.g. model.patch_size = 1) instead of reading as a difference
        try:
            saved = RunConfig.from_dict(saved).to_dict()
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"cannot resume from {ckpt}: its config.json is not a valid run config "
                                  f"({e})") from None
        now = self.config.to_dict()
        ignore = {f"train.{k}" for k in RESUMABLE_FIELDS}
        diff = [k for k in config_diff(saved, now) if k not in ignore]
        if diff:
            raise CheckpointError(f"cannot resume from {ckpt}: its config differs in {', '.join(diff)} "
                                  "(only train.steps and the checkpoint/sample/log intervals may change)")
        if saved["train"].get("init_from") != now["train"]["init_from"]:
            # a fine-tune's record keeps the source it started from, however the resuming call spelled it
            train = dataclasses.replace(self.config.train, init_from=saved["train"].get("init_from"))
            self.config = dataclasses.replace(self.config, train=train)
        state = read_json(ckpt / "state.json")
        named = int(ckpt.name.split("_")[-1]) if ckpt.name.startswith("step_") else state.get("step")
        if type(state.get("step")) is not int or state["step"] != named:  # a step it is not would overwrite others
            raise CheckpointError(f"{ckpt / 'state.json'} has no valid step (got {state.get('step')!r}; its folder "
                                  f"says {named})")
        if state["step"] > self.config.train.steps:  # resuming would rewrite the run's config to fewer steps
            raise ValueError(f"--steps {self.config.train.steps} is below the step of the latest checkpoint "
                             f"({ckpt.name}, step {state['step']}); pass --steps {state['step']} or more to resume")
        load_weights(self.model, read_tensors(ckpt / "model.safetensors", self.device), str(ckpt / "model.safetensors"))
        load_weights(self.ema.model, read_tensors(ckpt / "ema.safetensors", self.device), str(ckpt / "ema.safetensors"))
        extra = read_tensors(ckpt / "training_state.safetensors")
        try:  # a hand-edited state must end in one line naming it, not in a traceback from deep inside torch
            if not (isinstance(state.get("ema_num_updates"), int) and state["ema_num_updates"] >= 0):
                raise ValueError(f"ema_num_updates must be an integer >= 0, got {state.get('ema_num_updates')!r}")
            self.ema.num_updates = state["ema_num_updates"]
            # On the CPU: load_state_dict moves each moment to its parameter's device (and keeps "step" where
            # AdamW wants it), so a checkpoint from a GPU run resumes on the CPU and vice versa.
            optimizer_from_flat(self.optimizer, extra, state["optimizer"])
            rng_from_flat(extra)
            self.load_extra_state(extra)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise CheckpointError(f"cannot resume from {ckpt}: its state.json or training_state.safetensors is "
                                  f"malformed ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        self.step = self._saved_step = int(state["step"])
        self._last_checkpoint = ckpt

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors a subclass keeps beside the optimizer and RNG states in training_state.safetensors (names
        outside "optimizer.state." and "rng."); none here."""
        return {}

    def load_extra_state(self, tensors) -> None:
        """Restore what ``extra_state`` saved, from a checkpoint's training-state tensors (on resume, inside
        ``Trainer.__init__``, after the network and the optimizer exist)."""

    def _init_weights(self, source: str) -> None:
        """Fine-tuning: copy ``source``'s EMA weights into the live network and its EMA, after checking that
        its model shape, schedule and target are this run's (the weights mean nothing under others). The
        EMA's warm-up then runs as in a fresh run: it starts from trained weights, so there is no random
        initialisation for a long average to forget."""
        from ..checkpoint import load_checkpoint, load_noisy_classifier

        loader = load_noisy_classifier if self.config.is_classifier else load_checkpoint
        net, _, cfg = loader(source, device=self.device)

        def essentials(c) -> dict:
            d = c.to_dict()
            return {"model": d["model"], "schedule": d["schedule"], "prediction": c.prediction}

        diff = config_diff(essentials(cfg), essentials(self.config))
        if diff:
            raise ValueError(f"cannot fine-tune from {source}: it differs from this run in {', '.join(diff)}")
        state = net.state_dict()
        self.model.load_state_dict(state)
        self.ema.model.load_state_dict(state)

    # ---- one step -------------------------------------------------------------------------------
    def _shard(self) -> slice:
        b, r = self.local_batch, self.info.rank
        return slice(r * b, (r + 1) * b)

    def _batch(self):
        """This rank's (x0, t, eps, labels) of global batch ``self.step``, on the device."""
        tc, data, sl = self.config.train, self.data, self._shard()
        g = step_generator(tc.seed, self.step)
        # to_device: pinned, non-blocking copies, so the host never waits for the GPU here
        idx = to_device(batch_indices(tc.seed, self.step, tc.batch_size, len(data))[sl], self.device)
        shape = (tc.batch_size, data.channels, data.image_size, data.image_size)
        d = draw(shape, self.schedule.num_steps, g, tc.label_dropout if self.class_cond else 0.0,
                 self._log_sigma).shard(sl.start, sl.stop)
        flips = flip_mask(tc.batch_size, g)[sl] if self.config.data is not None and self.config.data.hflip else None
        x0 = data.to_float(idx)
        if flips is not None:
            x0 = apply_flips(x0, flips)
        labels = data.labels[idx] if self.class_cond else None
        labels = drop_labels(labels, d.drop, getattr(self.model, "null_label", None))
        return x0, to_device(d.t, self.device), to_device(d.eps, self.device), labels

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; returns (loss, grad norm before clipping) as device scalars."""
        tc = self.config.train
        x0, t, eps, labels = self._batch()
        torch.manual_seed(derive_seed(tc.seed, STREAM_DROPOUT, self.step, self.info.rank))
        for group in self.optimizer.param_groups:
            group["lr"] = tc.lr_at(self.step)
        self.model.train()
        with self.autocast():
            loss = self.compute_loss(x0, t, eps, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = tc.grad_clip if tc.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.ema.update(self.model)
        self.step += 1
        return loss.detach(), grad_norm.detach()

    def autocast(self):
        """bfloat16 autocast on the run's device where ``train.bf16`` asks for it (a no-op context otherwise)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    def compute_loss(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, labels) -> torch.Tensor:
        """The scalar loss of one shard: L_simple (with the run's target and weighting) for a denoiser."""
        tc = self.config.train
        return diffusion_loss(self.net, self.schedule, x0, t, eps, labels, tc.prediction, tc.min_snr_gamma)

    # ---- logging, samples, checkpoints ------------------------------------------------------------
    def _new_window(self) -> dict:
        return {"loss": torch.zeros((), dtype=torch.float64, device=self.device), "n": 0, "t0": time.perf_counter()}

    def _log(self, grad_norm: torch.Tensor) -> dict:
        """Write one metrics line (all ranks take part in the loss all-reduce; rank 0 writes)."""
        w, tc = self._window, self.config.train
        total = all_reduce_sum(w["loss"], self.info).item() / self.info.world_size
        loss = total / max(w["n"], 1)
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss is {loss} at step {self.step} (training diverged; lower --lr or "
                                 "resume from the last checkpoint)")
        elapsed = time.perf_counter() - w["t0"]
        metrics = {"step": self.step, "loss": loss, "lr": tc.lr_at(self.step - 1),
                   "images_per_s": w["n"] * tc.batch_size / max(elapsed, 1e-9), "grad_norm": float(grad_norm),
                   "epoch": (self.step * tc.batch_size) // len(self.data)}
        self.monitor.log(metrics)
        self._window = self._new_window()
        return metrics

    @torch.no_grad()
    def sample_grid(self, path: Optional[Path] = None) -> torch.Tensor:
        """DDIM samples (η = 0, ``sample_steps`` steps) from the EMA weights; saved as a PNG grid if ``path``.

        Returns (num_samples, C, H, W) float in about [-1, 1]. The noise is the same at every call,
        so successive grids show the same samples improving.
        """
        tc, m = self.config.train, self.config.model
        g = torch.Generator().manual_seed(derive_seed(tc.seed, STREAM_SAMPLES))
        x_T = torch.randn((tc.num_samples, m.in_channels, m.image_size, m.image_size), generator=g).to(self.device)
        net = self.ema.model
        if self.class_cond:
            labels = (torch.arange(tc.num_samples) % m.num_classes).to(self.device)
            net = lambda x, t: self.ema.model(x, t, labels)  # noqa: E731  (one class per grid column)
        with self.autocast():
            x0 = sample(net, self.schedule, x_T, steps=min(tc.sample_steps, self.schedule.num_steps),
                        prediction=tc.prediction).float()
        if path is not None:
            ncol = m.num_classes if self.class_cond and m.num_classes <= tc.num_samples else None
            save_grid(x0, path, nrow=ncol)
        return x0

    def save(self) -> Optional[Path]:
        """Write a checkpoint of the current step (rank 0; all ranks check finiteness and wait)."""
        tc = self.config.train
        check_finite({"model": self.model, "ema": self.ema.model}, self.step)
        path = None
        if self.info.is_main:
            opt_tensors, opt_meta = optimizer_to_flat(self.optimizer)
            state = {"step": self.step, "samples_seen": self.step * tc.batch_size,
                     "epoch": (self.step * tc.batch_size) // len(self.data), "ema_num_updates": self.ema.num_updates,
                     "optimizer": opt_meta, "world_size": self.info.world_size, "torch": torch.__version__}
            tensors = {"model": self.model.state_dict(), "ema": self.ema.model.state_dict(),
                       "training_state": {**opt_tensors, **rng_to_flat(), **self.extra_state()}}
            path = save_checkpoint(self.out_dir, self.step, self.config.to_dict(), tensors, state, tc.keep_last)
            self._last_checkpoint = path
        barrier(self.info)
        self._saved_step = self.step
        return path

    # ---- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train up to ``config.train.steps``; SIGINT/SIGTERM stop after the current step with a checkpoint."""
        tc = self.config.train
        stopped_by, last_loss = None, None
        try:
            with _StopFlag() as stop:
                while self.step < tc.steps:
                    loss, grad_norm = self.train_step()
                    self._window["loss"] += loss.double()
                    self._window["n"] += 1
                    self.monitor.advance()
                    if self.step % tc.log_every == 0 or self.step == tc.steps:
                        last_loss = self._log(grad_norm)["loss"]
                    if tc.sample_every and self.step % tc.sample_every == 0 and self.info.is_main:
                        self.sample_grid(self.out_dir / "samples" / f"step_{self.step:06d}.png")
                    if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                        self.save()
                    if any_rank(stop.signum is not None, self.info, self.device):
                        stopped_by = stop.signum or signal.SIGTERM  # another rank's signal
                        break
            if self._saved_step != self.step:
                self.save()
        finally:
            self.monitor.close()
            self._claim.close()
        if stopped_by is not None and not self.quiet:
            self.monitor.write(f"ddim: stopped by a signal at step {self.step}; checkpoint {self._last_checkpoint}; "
                               "continue with --resume")
        return TrainResult(self.step, self._last_checkpoint, last_loss, None if stopped_by is None else int(stopped_by))
