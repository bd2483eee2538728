"""Evaluation runs: FID over a grid of (S, η) cells (DDIM Table 1), reconstruction error of DDIM
inversion against S (Table 2), and how close η = 0 samples at S steps stay to those at T (section 5.3).

Sampling is the slow part, so a grid run keeps its images on disk, one folder per cell::

    OUT/samples/S{S}_eta{η}/key.json                      what the images depend on (seed, S, η, weights, ...)
    OUT/samples/S{S}_eta{η}/{start:07d}-{stop:07d}.npy    uint8 (stop − start, C, H, W): samples start … stop−1

Chunk k holds samples [k·b, (k+1)·b), b the batch size, drawn as one batch and written to a temporary
file that is then renamed into place, so a chunk file is either complete or absent. A rerun reuses
every chunk present and draws only the missing ones: sample i depends only on (seed, i) and a chunk is
always drawn as the same batch, so a resumed run gives bit-identical images, hence identical metrics.
Under torchrun every rank lists the missing chunks, then draws a contiguous share of them; rank 0
scores the cells once all ranks are done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from ..atomic import atomic_write
from ..checks import check_images, check_int
from ..data import ImageData
from ..denoiser import Denoiser
from ..distributed import DistInfo, barrier
from ..files import open_regular, read_json
from ..generate import RunOptions, conditioned, generate_batch, sampling_network
from ..guidance import GuidanceOptions
from ..images import to_uint8
from ..samplers import SampleOptions, get_solver, run_invert, run_sample
from ..samplers.loop import sample_setup
from ..schedule import Schedule
from .reference import ReferenceStats, evaluate_images

__all__ = ["Cell", "CellSamples", "SampleStore", "eta_label", "chunk_ranges", "rank_share", "weights_sha256",
           "per_image_mse", "per_image_mae", "sample_grid", "score_cell", "floor_metrics", "reconstruction_errors",
           "consistency"]

Eta = Union[float, str]
STORE_FORMAT = "ddim-eval-samples-v1"
KEY_FILE = "key.json"
# Sample-key fields added after stores were first written, with the value every older store was drawn with.
KEY_DEFAULTS = {"channels_last": False, "eps_from_clipped_x0": False, "solver": "ddim", "guidance_method": "cfg",
                "guide_sha256": None}
PR_NEIGHBOURS = 3   # k of precision/recall (Kynkäänniemi et al. 2019), fewer only when n ≤ 3
_FOLDER_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a solver name that is one plain folder-name part


def eta_label(eta: Eta) -> str:
    """η as written in folder names and tables: "0", "0.2", "1", "large"."""
    return eta if isinstance(eta, str) else f"{float(eta):g}"


@dataclass(frozen=True)
class Cell:
    """One grid cell: S sampling steps with noise level η (a number >= 0, or "large" for σ̂) of the DDIM
    solver, or with another solver (η = 0; see ``ddim.samplers.solvers``)."""

    steps: int
    eta: Eta
    solver: str = "ddim"

    def __post_init__(self):
        # checked here, before a cell's name becomes a folder: a solver name must be a registered one
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"a cell's steps must be an integer >= 1, got {self.steps!r}")
        if self.eta != "large" and not (isinstance(self.eta, (int, float)) and not isinstance(self.eta, bool)
                                        and math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"a cell's eta must be a number >= 0 or 'large', got {self.eta!r}")
        if not isinstance(self.solver, str) or not _FOLDER_SAFE.fullmatch(self.solver):
            raise ValueError(f"a cell's solver must be a solver's name, got {self.solver!r}")
        get_solver(self.solver)  # unknown: a ValueError naming the allowed ones

    @property
    def name(self) -> str:
        tail = f"eta{eta_label(self.eta)}" if self.solver == "ddim" else self.solver
        return f"S{self.steps}_{tail}"

    @property
    def nfe(self) -> int:
        """Model calls per image (Heun: 2S − 1)."""
        return get_solver(self.solver).nfe(self.steps)


def chunk_ranges(n: int, size: int) -> list[range]:
    """[0, n) cut into consecutive ranges of ``size`` (the last one shorter)."""
    return [range(s, min(n, s + size)) for s in range(0, n, size)]


def rank_share(items: Sequence, info: DistInfo) -> list:
    """This rank's contiguous slice of ``items``; the slices of all ranks partition it."""
    k, w, r = len(items), info.world_size, info.rank
    return list(items[k * r // w:k * (r + 1) // w])


def weights_sha256(model: torch.nn.Module) -> str:
    """Hex SHA-256 over the names, dtypes, shapes and bytes of ``model.state_dict()``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> [0, 1], clamped as when they are shown or saved; float64 for exact means."""
    return (x.detach().double().cpu().clamp(-1, 1) + 1) / 2


def per_image_mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared difference per dimension on the [0, 1] scale (DDIM Table 2's unit).
    x, y: (B, C, H, W) in [-1, 1] (values outside are clamped)."""
    return (_unit(x) - _unit(y)).pow(2).flatten(1).mean(1)


def per_image_mae(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute difference per dimension on the [0, 1] scale."""
    return (_unit(x) - _unit(y)).abs().flatten(1).mean(1)


def _mean_std(v: torch.Tensor) -> tuple[float, float]:
    return float(v.mean()), float(v.std()) if v.numel() > 1 else 0.0


def _atomic_write(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary sibling, fsync, rename over ``path``: readers see all or nothing."""
    atomic_write(path, write)


# ------------------------------------------------------------------------------------ sample store

class SampleStore:
    """One cell's samples on disk (see the module docstring).

    Args:
        root: the cell's folder.
        key: JSON dict of everything the images depend on; None to only read.
    """

    def __init__(self, root: Union[str, Path], key: Optional[dict] = None):
        self.root, self.key = Path(root), key

    def path(self, r: range) -> Path:
        return self.root / f"{r.start:07d}-{r.stop:07d}.npy"

    def open(self, create: bool) -> None:
        """Refuse a folder drawn under another key; with ``create`` (one process only) write the key
        and delete temporary files a killed run left behind."""
        key_file = self.root / KEY_FILE
        if os.path.lexists(key_file):  # a pipe, a folder or a broken link there is unreadable, not absent
            try:
                saved = read_json(key_file)
            except (OSError, ValueError):
                raise ValueError(f"{key_file} is unreadable; delete {self.root} to redraw its samples") from None
            # a key a store predates reads as its value then (KEY_DEFAULTS), not as a difference
            differ = sorted(k for k in set(saved) | set(self.key)
                            if saved.get(k, KEY_DEFAULTS.get(k)) != self.key.get(k, KEY_DEFAULTS.get(k)))
            if differ:
                raise ValueError(f"{self.root} holds samples drawn with other settings ({', '.join(differ)} "
                                 "differ); use another output directory or delete that folder")
        elif self.root.is_dir() and any(self.root.glob("*.npy")):
            # the key is written before any chunk: chunks without one were drawn with unknown settings
            raise ValueError(f"{self.root} holds sample chunks but no {KEY_FILE}, so what they were drawn with is "
                             "unknown; delete that folder to redraw them")
        elif create:
            self.root.mkdir(parents=True, exist_ok=True)
            _atomic_write(key_file, lambda f: f.write(json.dumps(self.key, indent=2, sort_keys=True).encode()))
        if create:
            for tmp in self.root.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def missing(self, ranges: Sequence[range], shape: Optional[Sequence[int]] = None) -> list[range]:
        """The chunks of ``ranges`` still to draw: absent, or (given the image ``shape``) damaged, i.e. not
        a whole .npy of uint8 (len(r), *shape), which is then redrawn over (an interrupted copy, a full disk;
        a pipe, a device or a link in its place is replaced by the new chunk, never written through).

        Raises:
            ValueError: a folder in a chunk's place, which no write can replace (found before any sampling).
        """
        todo = [r for r in ranges if not (self._intact(r, shape) if shape is not None else self.path(r).is_file())]
        for r in todo:
            p = self.path(r)
            if p.is_dir() and not p.is_symlink():
                raise ValueError(f"{p} is a folder where a sample chunk goes; remove it")
        return todo

    def _intact(self, r: range, shape: Sequence[int]) -> bool:
        """Whether chunk ``r`` is a complete .npy of uint8 (len(r), *shape), from its header and size alone."""
        try:
            with open_regular(self.path(r)) as f:  # a pipe would block a plain open
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                got, fortran, dtype = read_header(f)
                data_start = f.tell()
                size = os.fstat(f.fileno()).st_size
        except (OSError, ValueError, EOFError):
            return False
        want = (len(r), *shape)
        return (tuple(got) == want and dtype == np.uint8 and not fortran
                and size == data_start + int(np.prod(want)))

    def write(self, r: range, images: torch.Tensor) -> None:
        """Store uint8 images (len(r), C, H, W) as chunk ``r``."""
        if images.dtype != torch.uint8 or images.shape[0] != len(r):
            raise ValueError(f"chunk {r.start}-{r.stop} needs {len(r)} uint8 images, got {images.dtype} "
                             f"{tuple(images.shape)}")
        _atomic_write(self.path(r), lambda f: np.save(f, images.cpu().numpy(), allow_pickle=False))

    def read(self, ranges: Sequence[range], shape: Sequence[int]) -> torch.Tensor:
        """The chunks ``ranges`` as one uint8 tensor (N, *shape); a missing or malformed chunk is an error."""
        parts = []
        for r in ranges:
            p = self.path(r)
            try:
                with open_regular(p) as f:
                    a = np.load(f, allow_pickle=False)
            except FileNotFoundError:
                raise ValueError(f"{p} is missing; rerun to draw it") from None
            except Exception as e:  # noqa: BLE001  NumPy reports a damaged .npy as any of several types
                raise ValueError(f"{p} is unreadable ({type(e).__name__}); rerun to redraw it") from None
            if a.dtype != np.uint8 or a.shape != (len(r), *shape):
                raise ValueError(f"{p} holds {a.dtype} {a.shape}, expected uint8 {(len(r), *shape)}; delete it "
                                 "and rerun to redraw it")
            parts.append(torch.from_numpy(a))
        return torch.cat(parts)


@dataclass(frozen=True)
class CellSamples:
    """A cell's samples after ``sample_grid``: where they are and what this run did.

    ranges: the chunks holding samples 0 … n−1. reused/sampled: chunks found on disk / drawn now (by
    all ranks). seconds: this rank's wall time drawing its share.
    """

    cell: Cell
    store: SampleStore
    ranges: tuple
    shape: tuple
    reused: int
    sampled: int
    seconds: float

    @property
    def n(self) -> int:
        return self.ranges[-1].stop

    def images(self) -> torch.Tensor:
        """All n samples, uint8 (n, C, H, W)."""
        return self.store.read(self.ranges, self.shape)

    def first(self, k: int) -> torch.Tensor:
        """Samples 0 … min(k, n)−1, uint8 (min(k, n), C, H, W), reading only the chunks that hold them."""
        ranges = [r for r in self.ranges if r.start < k]
        return self.store.read(ranges, self.shape)[:k]


def _image_shape(model) -> tuple:
    cfg = model.config
    return cfg.in_channels, cfg.image_size, cfg.image_size


def _cell_options(cells: Sequence[Cell], opts: SampleOptions, schedule: Schedule, shape) -> list[SampleOptions]:
    """Each cell's SampleOptions, checked against the schedule as sampling would (steps <= T, η the solver
    takes), so that a bad cell is refused before any cell's folder or key is written."""
    out = []
    for cell in cells:
        if not isinstance(cell, Cell):
            raise TypeError(f"cells must be Cell objects, got {type(cell).__name__}")
        o = opts.replace(steps=cell.steps, eta=cell.eta, solver=cell.solver)
        sample_setup(schedule, torch.zeros(1, *shape), o)
        out.append(o)
    return out


def sample_grid(model, schedule: Schedule, cells: Sequence[Cell], n: int, out_dir: Union[str, Path],
                options: Optional[SampleOptions] = None, guidance: Optional[GuidanceOptions] = None,
                run: Optional[RunOptions] = None, info: DistInfo = DistInfo(), progress=None) -> list[CellSamples]:
    """Draw n samples for every cell into ``out_dir/samples/<cell>/``, reusing the chunks already there.

    Sample i of every cell starts from the x_T of (run.seed, i) and, for a class-conditional ``model``
    (a ``ddim.nn.UNet``), has label i mod num_classes (optionally under ``guidance``). Call it on every
    rank under torchrun; it returns when all ranks are done.

    Args:
        options: what every cell shares (spacing, prediction, the x̂_0 rule); each cell sets steps, η and
            the solver.
        run: seed, batch size (the chunk size) and device.
        progress: a progress bar (``reset(total)``, ``update()``), told the number of sampling steps this rank
            will run over all its batches (Heun makes two model calls per step), then each step.
    Returns:
        one ``CellSamples`` per cell, in order.
    """
    opts, g, r = options or SampleOptions(), guidance or GuidanceOptions(), run or RunOptions()
    opts = opts.for_network(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    shape, device = _image_shape(model), torch.device(r.device)
    net = sampling_network(model, device)  # what `ddim sample` runs: chunk i holds its images i
    base = {"format": STORE_FORMAT, "seed": r.seed, "spacing": opts.spacing, "prediction": opts.net_prediction,
            "channels_last": net is not model, "guidance": float(g.w), "guidance_method": g.method.label,
            "guide_sha256": weights_sha256(g.guide) if g.guide is not None else None, "clip": opts.clip,
            "eps_from_clipped_x0": bool(opts.eps_from_clipped_x0), "weights_sha256": weights_sha256(model),
            "image_shape": list(shape), "num_classes": model.config.num_classes,
            "noise_device": device.type,  # generators draw there
            "schedule_sha256": hashlib.sha256(schedule.alphas_cumprod.numpy().tobytes()).hexdigest()}
    ranges = chunk_ranges(n, r.batch_size)
    cell_opts = _cell_options(cells, opts, schedule, shape)  # every cell checked before any folder is written
    stores, todo = [], []
    for cell in cells:
        store = SampleStore(Path(out_dir) / "samples" / cell.name,
                            {**base, "steps": cell.steps, "eta": cell.eta, "solver": cell.solver})
        store.open(create=info.is_main)
        stores.append(store)
        todo.append(store.missing(ranges, shape))
    barrier(info)  # every rank has listed the missing chunks before any is written: the shares agree
    mine = [rank_share(missing, info) for missing in todo]
    if progress is not None:
        progress.reset(total=sum(cell.steps * len(m) for cell, m in zip(cells, mine)))
    on_step = progress.update if progress is not None else None
    out = []
    for cell, store, missing, my_chunks, o in zip(cells, stores, todo, mine, cell_opts):
        start = time.perf_counter()
        for rng in my_chunks:
            x = generate_batch(net, schedule, rng, o, g, r, on_step=on_step)
            store.write(rng, to_uint8(x))
        out.append(CellSamples(cell, store, tuple(ranges), shape, len(ranges) - len(missing), len(missing),
                               time.perf_counter() - start))
    barrier(info)  # all chunks are on disk
    return out


# ------------------------------------------------------------------------------------------ metrics

def _metrics(images, reference: ReferenceStats, extractor, n: int) -> dict:
    # Precision/recall need k + 1 points per set; keep k = 3 unless n is tiny (k is reported).
    return evaluate_images(images, reference, extractor, k=min(PR_NEIGHBOURS, n - 1))


def score_cell(samples: CellSamples, reference: ReferenceStats, extractor=None) -> dict:
    """FID, KID, precision/recall of a cell's samples against ``reference`` (see ``evaluate_images``),
    with "steps", "eta", "solver", "nfe", "n", "reused_chunks", "sampled_chunks", "sample_seconds" and
    "metric_seconds"."""
    start = time.perf_counter()
    images = samples.images().float() / 127.5 - 1  # exactly the uint8 images, as saved PNGs would be
    m = _metrics(images, reference, extractor, samples.n)
    c = samples.cell
    return {"steps": c.steps, "eta": c.eta, "solver": c.solver, "nfe": c.nfe, "n": samples.n, **m,
            "reused_chunks": samples.reused, "sampled_chunks": samples.sampled,
            "sample_seconds": samples.seconds, "metric_seconds": time.perf_counter() - start}


def floor_metrics(real: ImageData, n: int, reference: ReferenceStats, extractor=None) -> dict:
    """The metrics of the first n images of another real set (e.g. the training split) against
    ``reference``: what a perfect model scores with n samples, finite-sample bias included."""
    m = min(n, len(real))
    if m < 2:
        raise ValueError(f"the floor needs at least 2 real images, {real.name} has {len(real)}")
    return {"images": real.name, **_metrics(ImageData(real.images[:m]), reference, extractor, m)}


# ------------------------------------------------------------------------------ reconstruction

def reconstruction_errors(model, schedule: Schedule, images: torch.Tensor, labels: Optional[torch.Tensor],
                          steps_list: Sequence[int], options: Optional[SampleOptions] = None,
                          run: Optional[RunOptions] = None, on_step: Optional[Callable[[], None]] = None) -> list[dict]:
    """DDIM inversion x_0 -> x_T with S steps, then η = 0 sampling back with the same S (DDIM Table 2).

    Args:
        model: a network (conditioned on ``labels`` when class-conditional) or any ``model(x_t, t)``.
        images: (N, C, H, W) float in [-1, 1]. labels: (N,) int64 for a class-conditional model, else None.
        steps_list: the S values.
        options: spacing and prediction (the rest is DDIM η = 0 at each S). run: batch size and device.
        on_step: called after each model call (2·S per batch and S).
    Returns:
        per S: {"steps", "mse_mean", "mse_std" (per-dimension MSE on the [0, 1] scale, over images),
        "n", "seconds"}.
    """
    opts, r = SampleOptions.of(options), run or RunOptions()
    opts = opts.for_network(model)  # before conditioned() hides it
    check_images(images, "images")
    # plain DDIM both ways: an x̂_0 transform or another solver would measure something else than eq. 13's round trip
    if opts.solver.name != "ddim" or opts.x0_transform() is not None:
        raise ValueError(f"reconstruction runs DDIM without clip or threshold; got solver {opts.solver.name!r}, "
                         f"clip={opts.clip!r}, threshold={opts.threshold!r}")
    device = torch.device(r.device)
    callback = (lambda *_: on_step()) if on_step is not None else None
    rows = []
    for steps in steps_list:
        start, errors = time.perf_counter(), []
        step_opts = opts.replace(steps=steps, eta=0.0)
        for rng in chunk_ranges(images.shape[0], r.batch_size):
            m = conditioned(model, None if labels is None else labels[rng.start:rng.stop])
            denoiser = Denoiser(m, schedule, opts.net_prediction)
            x0 = images[rng.start:rng.stop].to(device)
            with torch.inference_mode():
                x_T = run_invert(denoiser, x0, step_opts, callback=callback)
                back = run_sample(denoiser, x_T, step_opts, callback=callback)
            errors.append(per_image_mse(back, x0))
        mean, std = _mean_std(torch.cat(errors))
        rows.append({"steps": steps, "mse_mean": mean, "mse_std": std, "n": images.shape[0],
                     "seconds": time.perf_counter() - start})
    return rows


# ------------------------------------------------------------------------------------ consistency

def consistency(model, schedule: Schedule, steps_list: Sequence[int], k: int,
                options: Optional[SampleOptions] = None, guidance: Optional[GuidanceOptions] = None,
                run: Optional[RunOptions] = None, on_step: Optional[Callable[[], None]] = None):
    """Sample the same x_T (seeds (run.seed, 0 … k−1)) with η = 0 at each S and at S = T, and measure how far
    each S lands from the T-step sample (DDIM section 5.3: η = 0 samples share high-level features).
    ``options``: spacing, prediction and the x̂_0 rule (steps and η are this function's).

    Returns:
        rows: per S < T, {"steps", "mse_mean", "mse_std", "mae_mean" (per dimension, [0, 1] scale, over
        the k seeds), "k", "seconds"};
        images: (k, len(columns), C, H, W) float in [-1, 1], columns = the S values then T.
    """
    opts, r = SampleOptions.of(options), run or RunOptions()
    check_int("k", k, 1)
    T = schedule.num_steps
    columns = [s for s in dict.fromkeys(steps_list) if s != T] + [T]
    net = sampling_network(model, r.device)
    samples, seconds = [], []
    for steps in columns:
        start = time.perf_counter()
        step_opts = opts.replace(steps=steps, eta=0.0)
        samples.append(torch.cat([generate_batch(net, schedule, rng, step_opts, guidance, r, on_step=on_step)
                                  .float().cpu() for rng in chunk_ranges(k, r.batch_size)]))
        seconds.append(time.perf_counter() - start)
    ref, rows = samples[-1], []
    for steps, x, sec in zip(columns[:-1], samples, seconds):
        mse_mean, mse_std = _mean_std(per_image_mse(x, ref))
        rows.append({"steps": steps, "mse_mean": mse_mean, "mse_std": mse_std,
                     "mae_mean": float(per_image_mae(x, ref).mean()), "k": k, "seconds": sec})
    return rows, torch.stack(samples, 1).clamp(-1, 1)
