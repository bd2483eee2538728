"""Guidance methods on one Pareto chart: FID against class agreement, a curve per method, in two feature spaces.

Each cell samples n images (labels i mod 10, image i from seed (--seed, i): the same x_T in every cell) from a
class-conditional checkpoint with one guidance method at one strength, and measures:

    class agreement   the shipped classifier's verdict on the asked class, with its 95 % Wilson interval, and
                      per class (the hardest, Shirt = class 6, printed)
    FID, precision,   against the Fashion-MNIST test split in the shipped extractor's features (FID with its
    recall            bootstrap std), and FID/precision/recall again in a second, independently trained
                      classifier's features (--second: trained with another seed, width and regulariser;
                      benchmarks/train_classifier.py), which no choice here is allowed to rest on alone
    calls/img         network forward passes per image, counted by hooks on the model and on the guide
                      (a guided step is two; the guide's calls are listed apart: its network is smaller)
    seconds           wall time of the sampling

Cells: --cells takes `METHOD[(key=value,...)]:STRENGTH,...` specs, e.g. `cfg:0,0.5,1`, `interval:1,2`,
`interval(lo=0.28,hi=2):1,2`, `apg(eta=0,momentum=-0.5,cap=inf):2,4`, `cfgpp:0.2,0.6` (λ, DDIM only), `auto:1,2`
(needs --guide). Samplers: --sampler `SOLVER:STEPS:SPACING`, default the CLI's (`dpmpp-2m:10:logsnr`), with the
CLI's x̂₀ rule (clamp to [−1, 1], ε̂ re-derived; CFG++ keeps its unconditional ε̂). Every finished cell is
written to --json at once and skipped on a rerun, so a stopped sweep resumes. --picture draws the chart
from the JSON (all samplers in it; one panel per feature space).

    python benchmarks/guidance_pareto.py --n 2000 --sampler dpmpp-2m:10:logsnr \\
        --cells cfg:0,0.25,0.5,1,2 interval:0.5,1,2,3 apg:1,2,4,8 auto:0.5,1,2 --guide runs/guide_16 \\
        --second benchmarks/results/second_classifier.safetensors \\
        --json benchmarks/results/guidance_pareto_cpu.json --picture docs/guidance_pareto.png
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

import torch

from ddim.allocator import keep_freed_memory
from ddim.checkpoint import BUNDLED_MODEL, load_checkpoint
from ddim.evaluate import FeatureExtractor, class_agreement, evaluate_images, load_classifier, reference_stats
from ddim.generate import RunOptions, check_guide, class_labels, generate
from ddim.guidance import GuidanceOptions, MethodOptions
from ddim.samplers import SampleOptions

SHIRT = 6
_KEYS = {"lo": "interval", "hi": "interval", "eta": "apg_eta", "cap": "apg_norm_cap", "momentum": "apg_momentum"}


def parse_cell_spec(spec: str) -> list[tuple[MethodOptions, float]]:
    """`METHOD[(key=value,...)]:S1,S2` -> [(MethodOptions, strength), ...] (keys: lo, hi, eta, cap, momentum)."""
    m = re.fullmatch(r"(\w+)(?:\(([^)]*)\))?:([-0-9.,e]+)", spec)
    if not m:
        raise ValueError(f"cell spec {spec!r} is not METHOD[(key=value,...)]:S1,S2,...")
    method, params, strengths = m.groups()
    fields, interval = {}, list(MethodOptions().interval)
    for item in filter(None, (params or "").split(",")):
        key, _, value = item.partition("=")
        if key not in _KEYS:
            raise ValueError(f"unknown key {key!r} in {spec!r}; allowed: {', '.join(_KEYS)}")
        if key in ("lo", "hi"):
            interval[key == "hi"] = float(value)
        else:
            fields[_KEYS[key]] = float(value)
    options = MethodOptions(method, interval=tuple(interval), **fields)
    return [(options, float(s)) for s in strengths.split(",")]


class CallCounter:
    """Images through a network's forward, by a hook (a batch of B counts B). The hook is a closure, not a
    bound method, so the inference copies ``generate`` makes (channels_last) share this counter."""

    def __init__(self, module: torch.nn.Module):
        seen = [0]

        def count(module, args, kwargs):
            seen[0] += int((args[0] if args else kwargs["x"]).shape[0])

        self._seen = seen
        self.handle = module.register_forward_pre_hook(count, with_kwargs=True)

    @property
    def images(self) -> int:
        return self._seen[0]


def agreement_fields(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    a = class_agreement(predicted, labels, num_classes)
    return {"class_agreement": a["value"], "class_agreement_95": [a["low"], a["high"]], "per_class": a["per_class"],
            "shirt_agreement": a["per_class"][SHIRT]}


def metric_fields(images: torch.Tensor, spaces: dict) -> dict:
    """FID ± bootstrap std, precision and recall of ``images`` in each feature space {name: (extractor, ref)}."""
    out = {}
    for name, (extractor, reference) in spaces.items():
        m = evaluate_images(images, reference, extractor)
        out[name] = {"fid": m["fid"], "fid_std": m["fid_std"], "precision": m["precision"], "recall": m["recall"]}
    return out


def cell_label(method: MethodOptions, guide) -> str:
    """The method's label, with autoguidance's guide directory named (guides of several steps are compared)."""
    return method.label + (f"[{Path(guide).name}]" if method.method == "auto" else "")


def cell_key(sampler: str, label: str, w: float, n: int) -> str:
    return f"{sampler}|{label}|{w:g}|{n}"


def run_cell(ctx: dict, sampler: str, method: MethodOptions, w: float) -> dict:
    """Sample, time and measure one cell (``ctx``: model, schedule, config, guide, counters, spaces, args)."""
    solver, steps, spacing = sampler.split(":")
    args, model = ctx["args"], ctx["model"]
    options = SampleOptions(steps=int(steps), spacing=spacing, prediction=ctx["config"].prediction, solver=solver,
                            clip=1.0, eps_from_clipped_x0=True)
    guidance = GuidanceOptions(w=w, method=method, guide=ctx["guide"] if method.method == "auto" else None)
    counters = ctx["counters"]
    before = [c.images for c in counters]
    t0 = time.perf_counter()
    x = generate(model, ctx["schedule"], args.n, options, guidance, RunOptions(seed=args.seed,
                                                                                batch_size=args.batch_size))
    seconds = time.perf_counter() - t0
    calls = [(c.images - b) / args.n for c, b in zip(counters, before)]
    shown = x.clamp(-1, 1)  # what a PNG shows
    predicted = ctx["classifier"](shown).argmax(1)
    label = cell_label(method, args.guide)
    return {"key": cell_key(sampler, label, w, args.n), "sampler": sampler, "method": method.method,
            "label": label, "w": w, "n": args.n,
            **agreement_fields(predicted, ctx["labels"], model.config.num_classes),
            **metric_fields(shown, ctx["spaces"]),
            "calls_per_image": calls[0], "guide_calls_per_image": calls[1] if len(calls) > 1 else 0.0,
            "seconds": round(seconds, 1)}


def _line(row: dict, spaces) -> str:
    lo, hi = row["class_agreement_95"]
    fids = " ".join(f"{row[s]['fid']:>6.3f}±{row[s]['fid_std']:.3f} {row[s]['recall']:>5.2f}" for s in spaces)
    return (f"{row['sampler']:>18} {row['label']:>28} {row['w']:>5g} {row['class_agreement']:>6.3f} "
            f"{lo:.3f}-{hi:.3f} {row['shirt_agreement']:>5.2f} {fids} {row['calls_per_image']:>5.1f}"
            f"+{row['guide_calls_per_image']:<4.1f} {row['seconds']:>6.0f}")


def fid_at_agreement(rows: list[dict], space: str, target: float):
    """FID of a curve (rows in strength order) at class agreement ``target``, linear between the two cells that
    bracket it; None when the curve never reaches it."""
    for a, b in zip(rows, rows[1:]):
        if a["class_agreement"] < target <= b["class_agreement"]:
            f = (target - a["class_agreement"]) / (b["class_agreement"] - a["class_agreement"])
            return a[space]["fid"] + f * (b[space]["fid"] - a[space]["fid"])
    if rows and rows[0]["class_agreement"] >= target:
        return rows[0][space]["fid"]
    return None


def summary(rows: list[dict], spaces, target: float = 0.97) -> dict:
    """Per sampler and space: unguided FID, each curve's FID increase over it at agreement ``target`` (lowest
    cell at or above target, and CFG's interpolated), and whether it is at most half of CFG's."""
    out = {}
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        base = next((r for r in mine if r["method"] == "cfg" and r["w"] == 0), None)
        if base is None:
            continue
        for space in spaces:
            cfg = sorted((r for r in mine if r["method"] == "cfg"), key=lambda r: r["w"])
            cfg_fid = fid_at_agreement(cfg, space, target)
            entry = {"unguided_fid": base[space]["fid"], "unguided_agreement": base["class_agreement"],
                     "cfg_increase": None if cfg_fid is None else cfg_fid - base[space]["fid"], "methods": {}}
            for label in dict.fromkeys(r["label"] for r in mine):
                ok = [r for r in mine if r["label"] == label and r["class_agreement"] >= target]
                if not ok:
                    continue
                best = min(ok, key=lambda r: r[space]["fid"])
                rise = best[space]["fid"] - base[space]["fid"]
                entry["methods"][label] = {"w": best["w"], "agreement": best["class_agreement"],
                                           "fid_increase": rise,
                                           "ratio_to_cfg": None if not entry["cfg_increase"]
                                           else rise / entry["cfg_increase"]}
            out[f"{sampler} / {space}"] = entry
    return out


def draw(rows: list[dict], spaces, path: str, min_agreement: float = 0.89) -> None:
    """FID against class agreement: a row of panels per sampler, a column per feature space, a curve per method
    label (its strengths written at the points). Cells below ``min_agreement`` are named in the panel's corner
    instead of stretching its axes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    colours = dict(zip(labels, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    fig, axes = plt.subplots(len(samplers), len(spaces), figsize=(6.5 * len(spaces), 4.6 * len(samplers)),
                             squeeze=False)
    for row_axes, sampler in zip(axes, samplers):
        mine = [r for r in rows if r["sampler"] == sampler]
        for ax, space in zip(row_axes, spaces):
            for label in labels:
                curve = sorted((r for r in mine if r["label"] == label and r["class_agreement"] >= min_agreement),
                               key=lambda r: r["w"])
                if not curve:
                    continue
                ax.errorbar([r["class_agreement"] for r in curve], [r[space]["fid"] for r in curve],
                            yerr=[r[space]["fid_std"] for r in curve], color=colours[label], marker="o",
                            markersize=4, capsize=2, label=label)
                for r in curve:
                    ax.annotate(f"{r['w']:g}", (r["class_agreement"], r[space]["fid"]), fontsize=7,
                                textcoords="offset points", xytext=(3, 3), color=colours[label])
            off = [f"{r['label']} w {r['w']:g}: {r['class_agreement']:.2f}, FID {r[space]['fid']:.2f}"
                   for r in mine if r["class_agreement"] < min_agreement]
            if off:
                ax.text(0.02, 0.98, "off the chart:\n" + "\n".join(off), transform=ax.transAxes, fontsize=6,
                        va="top")
            ax.axvline(0.97, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xlabel("class agreement (shipped classifier)")
            ax.set_ylabel(f"FID ({space} features)")
            ax.set_title(f"{sampler}, {space} feature space", fontsize=10)
            ax.grid(alpha=0.3)
        row_axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _load(path) -> dict:
    p = Path(path) if path else None
    return json.loads(p.read_text()) if p and p.is_file() else {"rows": []}


def _write(args, record: dict, spaces) -> None:
    record.update({"command": "python benchmarks/guidance_pareto.py " + " ".join(sys.argv[1:]),
                   "date": time.strftime("%Y-%m-%d"),
                   "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                   "checkpoint": args.checkpoint, "guide": args.guide, "second_extractor": args.second,
                   "summary": summary(record["rows"], spaces)})
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(args.json)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--guide", default=None, help="autoguidance's worse model (a checkpoint directory)")
    p.add_argument("--second", default=None, help="the second feature space's classifier .safetensors")
    p.add_argument("--n", type=int, default=2000, help="samples per cell")
    p.add_argument("--sampler", nargs="+", default=["dpmpp-2m:10:logsnr"], help="SOLVER:STEPS:SPACING ...")
    p.add_argument("--cells", nargs="+", default=["cfg:0,0.25,0.5,1,2"], help="METHOD[(k=v,...)]:S1,S2 ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: ddim.data's)")
    p.add_argument("--json", default=None, help="rows go here after every cell; cells already in it are skipped")
    p.add_argument("--picture", default=None, help="draw the chart of every row in --json here")
    args = p.parse_args()
    cells = [c for spec in args.cells for c in parse_cell_spec(spec)]
    if any(m.method == "auto" for m, _ in cells) and args.guide is None:
        p.error("auto cells need --guide")

    keep_freed_memory()
    torch.set_grad_enabled(False)
    model, schedule, config = load_checkpoint(args.checkpoint, ema=True)
    guide = None
    if args.guide:
        guide, g_schedule, _ = load_checkpoint(args.guide, ema=True)
        check_guide(model, schedule, guide, g_schedule)
    extractors = {"shipped": FeatureExtractor(), **({"second": FeatureExtractor(args.second)} if args.second else {})}
    spaces = {k: (e, reference_stats("fashion-mnist", split="test", extractor=e, data_dir=args.data_dir))
              for k, e in extractors.items()}
    ctx = {"args": args, "model": model, "schedule": schedule, "config": config, "guide": guide, "spaces": spaces,
           "counters": [CallCounter(model)] + ([CallCounter(guide)] if guide is not None else []),
           "classifier": load_classifier()[0], "labels": class_labels(range(args.n), model.config.num_classes)}
    record = _load(args.json)
    done = {r["key"] for r in record["rows"]}
    print(f"{'sampler':>18} {'method':>28} {'w':>5} {'agree':>6} {'95 % int.':>11} {'shirt':>5} "
          + " ".join(f"{'FID ' + s:>12} {'rec':>5}" for s in spaces) + f" {'calls':>10} {'s':>6}")
    for sampler in args.sampler:
        for method, w in cells:
            if method.method == "cfgpp" and not sampler.startswith(("ddim:", "pc:")):
                print(f"skip {method.label} {w:g} at {sampler}: CFG++ steps with DDIM (ddim, pc)")
                continue
            if cell_key(sampler, cell_label(method, args.guide), w, args.n) in done:
                continue
            row = run_cell(ctx, sampler, method, w)
            record["rows"].append(row)
            print(_line(row, spaces), flush=True)
            if args.json:
                _write(args, record, spaces)
    for name, entry in summary(record["rows"], spaces).items():
        print(f"{name}: unguided FID {entry['unguided_fid']:.3f} (agreement {entry['unguided_agreement']:.3f}); "
              f"CFG's rise at agreement 0.97: {entry['cfg_increase']}")
        for label, m in entry["methods"].items():
            ratio = "-" if m["ratio_to_cfg"] is None else f"{m['ratio_to_cfg']:.2f}"
            print(f"    {label:>28} w {m['w']:<5g} agreement {m['agreement']:.3f} FID rise {m['fid_increase']:+.3f} "
                  f"(x CFG's: {ratio})")
    if args.picture:
        draw(record["rows"], list(spaces), args.picture)


if __name__ == "__main__":
    main()
