"""Where training reports to: metrics.jsonl (always), TensorBoard (only if installed), a tqdm bar.

Only rank 0 constructs a ``Monitor`` with ``enabled=True``; the others get a silent one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

__all__ = ["Monitor", "format_metrics", "read_metrics", "truncate_metrics"]


def format_metrics(m: Mapping[str, float]) -> dict[str, str]:
    """Short strings for the progress bar."""
    return {"loss": f"{m['loss']:.4f}", "img/s": f"{m['images_per_s']:.0f}"}


def _tensorboard_writer(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional; metrics.jsonl always has everything
        return None
    return SummaryWriter(str(log_dir))


class Monitor:
    """Append one JSON object per logged step to ``out_dir/metrics.jsonl``, mirror it to TensorBoard,
    and drive the progress bar.

    Args:
        out_dir: the run directory.
        total: the run's total steps (for the bar).
        initial: steps already done (a resumed run).
        enabled: False on ranks other than 0 (then every method does nothing).
        quiet: no progress bar.
    """

    def __init__(self, out_dir: Path, total: int, initial: int = 0, enabled: bool = True, quiet: bool = False):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = _tensorboard_writer(Path(out_dir) / "tensorboard") if enabled else None
        self._bar = None
        if enabled and not quiet:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")

    def log(self, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` (must contain "step"; floats must be finite or are written as null)."""
        if not self.enabled:
            return
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, metrics["step"])
        if self._bar is not None and "loss" in metrics:
            self._bar.set_postfix(format_metrics(metrics), refresh=False)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def write(self, message: str) -> None:
        """A line of text that does not break the bar (rank 0 only)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def add_image(self, tag: str, image_chw_uint8, step: int) -> None:
        if self._tb is not None:
            self._tb.add_image(tag, image_chw_uint8, step)


def read_metrics(path: Path) -> list[dict]:
    """All lines of a metrics.jsonl file as dicts (handy in tests and notebooks)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]



def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after ``step`` (a run killed after its last checkpoint logged steps that the
    resumed run will log again)."""
    path = Path(path)
    if path.is_file():
        keep = [line for line in path.read_text(errors="replace").splitlines(keepends=True)
                if _step_of(line) is not None and _step_of(line) <= step]
        path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in keep))


def _step_of(line: str):
    """The step of one metrics line, or None for a line a kill cut short (or any other damage): dropped."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    step = record.get("step") if isinstance(record, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None
