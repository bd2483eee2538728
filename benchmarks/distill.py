"""Distilled students against their teacher: quality and time per cell, one protocol for every cell.

Cells (labels i mod 10, sample i from seed (seed, i), so the same x_T in every cell):
    student N      `ddim distill`'s N-step student (RUN/steps_N), DDIM η = 0 on its own trailing grid, its own
                   x̂₀ rule, w = --w fed to its input (a cell per weight): N forward passes per image
    guided K S     with --guided-solvers S,…: RUN/guided_K, the w-input student of the guided phase (the first
                   halving round's teacher), with solver S (ddim: K passes; heun: 2K − 1) on its K-step trailing grid,
                   x̂_0 clamped and ε̂ re-derived as it learnt, w = the first --w fed to its input
    consistency N  with --consistency DIR, `ddim distill --method consistency`'s student (DIR, e.g. OUT/consistency),
                   multistep consistency sampling (solver "consistency") on the trailing grid of N, its own x̂₀ rule
                   (none), w fed to its input: N forward passes per image; its fresh noise at each point comes from
                   each sample's own generator, like x_T
    teacher ddim   the teacher, DDIM η = 0 on the trailing grid of S steps, x̂₀ clamped and ε̂ re-derived, with
                   the guidance the students learnt (plain CFG, or interval guidance on the students' recorded
                   interval) at the first --w
    teacher 2M     the same with DPM-Solver++(2M) on the log-SNR grid of S steps (`ddim sample`'s solver)
    teacher default  `ddim sample`'s default: DPM-Solver++(2M), 10 log-SNR steps, interval guidance at w = 2
    teacher CFG 0.5  `ddim sample`'s default before interval guidance: the same solver, plain CFG at w = 0.5
The teacher cells take S = N sampler steps, the same number of sequential model calls as the N-step student;
guidance makes each call a batched one on 2B images where it guides. Forward passes per image are counted by a
hook on the network.
Per cell: FID ± bootstrap std, precision and recall (the shipped feature extractor against the Fashion-MNIST
test split), class agreement by the shipped classifier with its 95 % Wilson interval, and seconds of sampling;
with --second, FID, precision and recall again in a second classifier's features.

    python benchmarks/distill.py --run runs/distill --n 2000 --json benchmarks/results/distill_cpu.json \
        --picture docs/distill.png --second benchmarks/results/second_classifier.safetensors
    python benchmarks/distill.py --run runs/distill --steps 1,2,4 --consistency runs/cd_pilot/consistency --n 2000 \
        --teacher-steps 1 --no-default --json benchmarks/results/distill_cd_pilot_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ddim.allocator import keep_freed_memory
from ddim.checkpoint import BUNDLED_MODEL, load_checkpoint
from ddim.evaluate import FeatureExtractor, class_agreement, evaluate_images, load_classifier, reference_stats
from ddim.generate import CFG_GUIDANCE, DEFAULT_GUIDANCE, RunOptions, class_labels, generate
from ddim.guidance import GuidanceOptions, MethodOptions
from guidance_pareto import CallCounter
from ddim.images import save_grid
from ddim.samplers import SampleOptions

CLIP = {"clip": 1.0, "eps_from_clipped_x0": True}  # `ddim sample`'s x̂₀ rule for an ordinary model


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _solvers(text: str) -> list[str]:
    names = [v for v in text.split(",") if v]
    bad = [v for v in names if v not in ("ddim", "heun")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown solver {bad[0]!r}; allowed: ddim, heun")
    return names


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _guidance(record) -> MethodOptions:
    """The guidance a student learnt from its teacher (its record's interval, else plain CFG)."""
    interval = None if record is None else record.guidance_interval
    return MethodOptions("cfg") if interval is None else MethodOptions("interval", interval=interval)


def cells(args) -> list[dict]:
    """Every cell to run: label, checkpoint, sampling keywords, guidance (method, w)."""
    out, learnt = [], None
    for n in args.steps:
        student = Path(args.run) / f"steps_{n}"
        if student.exists():
            rec = load_checkpoint(student)[2].distill
            learnt = learnt or _guidance(rec)
            rule = {} if rec.clip is None else {"clip": rec.clip, "eps_from_clipped_x0": True}
            for w in args.w:
                out.append({"label": f"student {n}" + (f" w {w:g}" if len(args.w) > 1 else ""),
                            "checkpoint": str(student), "guidance": (MethodOptions(), w),
                            "kw": {"steps": n, "spacing": "trailing", "solver": "ddim", **rule}})
    for guided in sorted(Path(args.run).glob("guided_*")) if args.guided_solvers else []:
        rec = load_checkpoint(guided)[2].distill
        if rec is None or rec.phase != "guided":
            raise SystemExit(f"{guided} is not a guided phase of `ddim distill`")
        learnt = learnt or _guidance(rec)
        rule = {} if rec.clip is None else {"clip": rec.clip, "eps_from_clipped_x0": True}
        for solver in args.guided_solvers:
            out.append({"label": f"guided {rec.steps} {solver}", "checkpoint": str(guided),
                        "guidance": (MethodOptions(), args.w[0]),
                        "kw": {"steps": rec.steps, "spacing": "trailing", "solver": solver, **rule}})
    if args.consistency:
        rec = load_checkpoint(args.consistency)[2].distill
        if rec is None or rec.method != "consistency":
            raise SystemExit(f"--consistency {args.consistency} is not a consistency student (`ddim distill --method "
                             "consistency`)")
        learnt = learnt or _guidance(rec)
        rule = {} if rec.clip is None else {"clip": rec.clip, "eps_from_clipped_x0": True}
        for n in args.consistency_steps:
            out.append({"label": f"consistency {n}", "checkpoint": args.consistency,
                        "guidance": (MethodOptions(), args.w[0]),
                        "kw": {"steps": n, "spacing": "trailing", "solver": "consistency", **rule}})
    learnt = learnt or MethodOptions("cfg")
    for n in args.teacher_steps:
        out.append({"label": f"teacher ddim {n}", "checkpoint": args.teacher, "guidance": (learnt, args.w[0]),
                    "kw": {"steps": n, "spacing": "trailing", "solver": "ddim", **CLIP}})
        out.append({"label": f"teacher 2M {n}", "checkpoint": args.teacher, "guidance": (learnt, args.w[0]),
                    "kw": {"steps": n, "spacing": "logsnr", "solver": "dpmpp-2m", **CLIP}})
    if args.default:
        default = {"steps": 10, "spacing": "logsnr", "solver": "dpmpp-2m", **CLIP}
        out.append({"label": "teacher default (2M 10)", "checkpoint": args.teacher,
                    "guidance": (MethodOptions("interval"), DEFAULT_GUIDANCE), "kw": default})
        out.append({"label": "teacher CFG 0.5 (2M 10)", "checkpoint": args.teacher,
                    "guidance": (MethodOptions("cfg"), CFG_GUIDANCE), "kw": default})
    return [c for c in out if not args.only or any(c["label"].startswith(o) for o in args.only)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="`ddim distill --out` folder (its steps_N/ students)")
    p.add_argument("--consistency", default=None, metavar="DIR",
                   help="a consistency student (`ddim distill --method consistency`'s OUT/consistency): cells "
                        "'consistency N' for N in --consistency-steps")
    p.add_argument("--consistency-steps", type=_ints, default=[1, 2, 4], help="the consistency student's steps")
    p.add_argument("--guided-solvers", type=_solvers, default=[],
                   help="cells 'guided K SOLVER': RUN's guided phase (RUN/guided_K, the halving rounds' first teacher) "
                        "on its own K-step trailing grid with each solver (ddim, heun), x̂_0 clamped as it learnt")
    p.add_argument("--teacher", default=str(BUNDLED_MODEL))
    p.add_argument("--steps", type=_ints, default=[1, 2, 4, 8], help="the students' steps")
    p.add_argument("--teacher-steps", type=_ints, default=[1, 2, 4, 8], help="the teacher's sampler steps S")
    p.add_argument("--no-default", dest="default", action="store_false", help="skip the teacher's default cell")
    p.add_argument("--only", action="append", default=[], help="only cells whose label starts with this (repeat)")
    p.add_argument("--w", type=_floats, default=[0.5],
                   help="guidance weight of the students (several: a student cell per weight, labelled with it) and of "
                        "the consistency and teacher S-step cells (the first)")
    p.add_argument("--n", type=int, default=2000, help="samples per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--second", default=None, help="a second feature space: classifier .safetensors whose features "
                   "give FID/precision/recall again (benchmarks/results/second_classifier.safetensors)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--fast", action="store_true",
                   help="sample every cell on the fast path (RunOptions.fast: on the CPU channels_last, and bf16 "
                        "where the CPU has it in hardware; every guidance method takes it on the CPU)")
    p.add_argument("--json", default=None, help="write the rows here (after every cell)")
    p.add_argument("--picture", default=None,
                   help="PNG: rows teacher default, student 8/4/2/1, consistency 4/2/1 (those run), 10 columns = "
                        "classes 0..9, the same x_T down each column")
    args = p.parse_args()
    keep_freed_memory()
    torch.set_grad_enabled(False)
    classifier, _ = load_classifier()
    reference = reference_stats("fashion-mnist", split="test", data_dir=args.data_dir)
    second = FeatureExtractor(args.second) if args.second else None
    second_ref = reference_stats("fashion-mnist", split="test", extractor=second, data_dir=args.data_dir) \
        if second is not None else None
    rows, shown_by_label = [], {}
    print(f"{'cell':>24} {'NFE':>4} {'FID':>12} {'agree':>6} {'95 % interval':>13} {'prec':>5} {'rec':>5} {'s':>6}")
    for cell in cells(args):
        model, schedule, config = load_checkpoint(cell["checkpoint"])
        labels = class_labels(range(args.n), model.config.num_classes)
        method, w = cell["guidance"]
        counter = CallCounter(model)
        t0 = time.perf_counter()
        x = generate(model, schedule, args.n, SampleOptions(prediction=config.prediction, **cell["kw"]),
                     GuidanceOptions(w=w, method=method),
                     RunOptions(seed=args.seed, batch_size=args.batch_size, fast=args.fast))
        seconds = time.perf_counter() - t0
        cell["nfe"] = counter.images / args.n
        shown = x.clamp(-1, 1)  # what a PNG shows
        a = class_agreement(classifier(shown).argmax(1), labels, model.config.num_classes)
        m = evaluate_images(shown, reference)
        row = {"cell": cell["label"], "checkpoint": cell["checkpoint"], "forward_passes": cell["nfe"],
               "sampling": {k: str(v) for k, v in cell["kw"].items()}, "w": w, "n": args.n,
               "guidance": "w input" if cell["label"].startswith(("student", "consistency")) else method.label,
               "fid": m["fid"], "fid_std": m.get("fid_std"), "precision": m["precision"], "recall": m["recall"],
               "class_agreement": a["value"], "class_agreement_95": [a["low"], a["high"]],
               "per_class": a["per_class"], "seconds": round(seconds, 1), "fast": args.fast}
        if second is not None:
            m2 = evaluate_images(shown, second_ref, second)
            row["second"] = {k: m2[k] for k in ("fid", "fid_std", "precision", "recall")}
        rows.append(row)
        shown_by_label[cell["label"]] = shown[:10]
        print(f"{cell['label']:>24} {cell['nfe']:>4g} {m['fid']:>6.2f} ± {m.get('fid_std') or 0:.2f} "
              f"{a['value']:>6.3f} {a['low']:.3f}-{a['high']:.3f} {m['precision']:>5.2f} {m['recall']:>5.2f} "
              f"{seconds:>6.0f}" + (f"   second: FID {row['second']['fid']:.2f} ± {row['second']['fid_std']:.2f} "
                                    f"rec {row['second']['recall']:.2f}" if second is not None else ""), flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({
                "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "rows": rows}, indent=1) + "\n")
    if args.picture:
        order = ["teacher default (2M 10)"] + [f"{kind} {n}" for kind in ("student", "consistency")
                                                for n in (8, 4, 2, 1)]
        save_grid(torch.cat([shown_by_label[k] for k in order if k in shown_by_label]), args.picture, nrow=10)


if __name__ == "__main__":
    main()
