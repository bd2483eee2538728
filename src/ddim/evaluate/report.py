"""Files of an evaluation run: JSON (everything), CSV (one row per measurement), a markdown table and a
plot or picture grid. Every file is written to a temporary name and renamed into place.

    grid            results.json  results.csv  results.md (FID: rows S, columns η or solver)  fid_vs_steps.png
                    samples.png (rows: cells; columns: the first samples, the same x_T down a column)
    reconstruction  reconstruction.json  .csv  .md
    consistency     consistency.json  .md  consistency.png (rows: seeds, columns: S, then T)
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from pathlib import Path
from typing import Optional, Sequence

import torch

from .runner import _atomic_write, eta_label

__all__ = ["versions", "write_grid_report", "write_reconstruction_report", "write_consistency_report",
           "fid_table"]

GRID_COLUMNS = ("steps", "eta", "solver", "nfe", "fid", "fid_std", "kid_mean", "kid_std", "precision", "recall",
                "n", "sample_seconds", "metric_seconds")


def versions() -> dict:
    """Versions of the software that produced the numbers."""
    import numpy

    from .. import __version__

    return {"ddim": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def _write_text(path: Path, text: str) -> Path:
    _atomic_write(path, lambda f: f.write(text.encode()))
    return path


def _write_json(path: Path, obj) -> Path:
    return _write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_csv(path: Path, rows: Sequence[dict], columns: Sequence[str]) -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return _write_text(path, buf.getvalue())


def _eta_header(eta) -> str:
    return "σ̂" if eta == "large" else f"η = {eta_label(eta)}"


def _column(c: dict):
    """A cell's column: its η for the DDIM solver (results without a solver field are DDIM's), else the
    solver's name."""
    solver = c.get("solver", "ddim")
    return c["eta"] if solver == "ddim" else solver


def _header(column) -> str:
    return _eta_header(column) if column == "large" or not isinstance(column, str) else column


def _number(v: float) -> str:
    """Three significant digits in plain notation where possible (FIDs 0.0123 … 367)."""
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _fid_text(m: dict) -> str:
    """"FID ± bootstrap std" (the std where the metrics have one)."""
    return _number(m["fid"]) + (f" ± {_number(m['fid_std'])}" if m.get("fid_std") is not None else "")


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_GRID_KEYS = ("checkpoint", "seed", "spacing", "guidance", "clip", "eps_from_clipped_x0")


def _config_line(config: dict, keys: Sequence[str]) -> str:
    return ", ".join(f"{k} {config[k]}" for k in keys if config.get(k) is not None and config.get(k) is not False)


# ------------------------------------------------------------------------------------------- grid

def _by_cell(cells: Sequence[dict]):
    steps = list(dict.fromkeys(c["steps"] for c in cells))
    columns = list(dict.fromkeys(_column(c) for c in cells))
    return steps, columns, {(c["steps"], _column(c)): c for c in cells}


def fid_table(results: dict) -> str:
    """Markdown: FID ± bootstrap std with rows S and columns η (DDIM) or solver, then the floor and what
    the numbers were measured with. Heun's cells say their model calls (2S − 1)."""
    steps, etas, cell = _by_cell(results["cells"])

    def entry(c: dict) -> str:
        nfe = c.get("nfe", c["steps"])
        return _fid_text(c) + (f" ({nfe} calls)" if nfe != c["steps"] else "")

    rows = [[str(s)] + [entry(cell[(s, e)]) if (s, e) in cell else "—" for e in etas] for s in steps]
    title = "η" if all(not isinstance(e, str) or e == "large" for e in etas) else "η or solver"
    text = f"# FID against sampling steps S and {title}\n\n" + _markdown(["S"] + [_header(e) for e in etas], rows)
    floor = results.get("floor")
    if floor:
        text += (f"\nFloor: FID {_fid_text(floor)} for {floor['n_fake']} real images ({floor['images']}) "
                 "against the same reference: a perfect model would score about this.\n")
    ref = results["reference"]
    text += (f"\n{results['config']['n']} samples per cell against {ref['name']} ({ref['n']} images); "
             "± is the standard deviation of FID over bootstrap resamples of the samples; "
             f"features: Fashion-MNIST classifier, weights SHA-256 {results['extractor_sha256'][:16]}…; "
             f"{_config_line(results['config'], _GRID_KEYS)}.\n")
    return text


def _plot_fid(results: dict, path: Path) -> Path:
    """fid_vs_steps.png: FID against model calls per image (log axis; = S but for Heun), one line per η or
    solver with bootstrap-std bars, the floor dashed."""
    # The object-oriented API with its own canvas: no pyplot, no global backend switch in the caller.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    steps, etas, cell = _by_cell(results["cells"])
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    values = []
    for e in etas:
        ss = [s for s in steps if (s, e) in cell]
        xs = [cell[(s, e)].get("nfe", s) for s in ss]
        ys = [cell[(s, e)]["fid"] for s in ss]
        err = [cell[(s, e)].get("fid_std") or 0.0 for s in ss]   # bootstrap std; 0 where not measured
        values += ys
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3,
                    label="σ̂ (η = large)" if e == "large" else _header(e))
    floor = results.get("floor")
    if floor:
        values.append(floor["fid"])
        ax.axhline(floor["fid"], color="0.4", linestyle="--", linewidth=1, label="real images (floor)")
    ax.set_xscale("log")
    ax.set_xticks(steps)
    ax.set_xticklabels([str(s) for s in steps])
    ax.xaxis.set_minor_formatter(NullFormatter())
    positive = [v for v in values if v > 0]
    if positive and max(positive) > 20 * min(positive):  # FIDs span orders of magnitude across η
        ax.set_yscale("log")
    ax.set_xlabel("model calls per image (NFE; = sampling steps S but for Heun)")
    ax.set_ylabel(f"FID ({results['config']['n']} samples)")
    ax.set_title("FID against model calls")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def write_grid_report(out_dir, results: dict, previews: Optional[torch.Tensor] = None) -> list[Path]:
    """results.json, results.csv, results.md and fid_vs_steps.png in ``out_dir``, and with ``previews``
    samples.png: one row per cell, in the order of ``results["cells"]``.

    ``results``: {"config", "reference": {"name", "n"}, "extractor_sha256", "floor" (or None), "versions",
    "cells": [score_cell dicts]}. ``previews``: uint8 (cells, k, C, H, W), the first k samples of each cell.
    """
    from ..images import save_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, files = fid_table(results), []
    if previews is not None:
        cells, k = previews.shape[:2]
        rows = "; ".join(f"S = {c['steps']} {_header(_column(c))}" for c in results["cells"])
        md += (f"\n![samples](samples.png)\n\nThe first {k} samples of each cell; column i starts from the "
               f"same x_T in every row. Rows: {rows}.\n")
        images = previews.reshape(cells * k, *previews.shape[2:]).float() / 127.5 - 1
        files.append(save_grid(images, out / "samples.png", nrow=k))
    return [_write_json(out / "results.json", results),
            _write_csv(out / "results.csv", results["cells"], GRID_COLUMNS),
            _write_text(out / "results.md", md),
            _plot_fid(results, out / "fid_vs_steps.png")] + files


# ---------------------------------------------------------------------- reconstruction, consistency

def write_reconstruction_report(out_dir, results: dict) -> list[Path]:
    """reconstruction.json / .csv / .md; ``results``: {"config", "images", "versions", "rows"}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = results["rows"]
    md = ("# Reconstruction error of DDIM inversion\n\n"
          "x_0 → x_T (inversion, S steps) → x_0 (η = 0, S steps); per-dimension MSE on the [0, 1] scale, "
          f"over {rows[0]['n'] if rows else 0} images of {results['images']}.\n\n"
          + _markdown(["S", "MSE (mean)", "MSE (std)"],
                      [[str(r["steps"]), _number(r["mse_mean"]), _number(r["mse_std"])] for r in rows]))
    return [_write_json(out / "reconstruction.json", results),
            _write_csv(out / "reconstruction.csv", rows, ("steps", "mse_mean", "mse_std", "n", "seconds")),
            _write_text(out / "reconstruction.md", md)]


def write_consistency_report(out_dir, results: dict, images: Optional[torch.Tensor] = None) -> list[Path]:
    """consistency.json / .md, and with ``images`` (k, columns, C, H, W) the picture grid consistency.png."""
    from ..images import save_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, T = results["rows"], results["config"]["num_train_steps"]
    md = ("# Consistency of η = 0 samples across S\n\n"
          f"Same x_T for {results['config']['n']} seeds; distance of the S-step sample to the {T}-step one, "
          "per dimension on the [0, 1] scale"
          + (f"; x̂_0 clipped to ±{results['config']['clip']:g} at each step, ε̂ re-derived from it"
             if results["config"].get("clip") else "")
          + ".\n\n"
          + _markdown(["S", "MSE (mean)", "MSE (std)", "mean |Δ|"],
                      [[str(r["steps"]), _number(r["mse_mean"]), _number(r["mse_std"]), _number(r["mae_mean"])]
                       for r in rows]))
    files = [_write_json(out / "consistency.json", results)]
    if images is not None:
        k, cols = images.shape[:2]
        md += f"\n![samples](consistency.png)\n\nRows: seeds 0…{k - 1}; columns: S = " \
              f"{', '.join(str(r['steps']) for r in rows)}, then {T}.\n"
        files.append(save_grid(images.reshape(k * cols, *images.shape[2:]), out / "consistency.png", nrow=cols))
    files.append(_write_text(out / "consistency.md", md))
    return files
