"""The score view on the bundled model: predictor-corrector against its predictor alone at equal model
calls, the reverse SDE and annealed Langevin at a few calls, and classifier guidance against
classifier-free guidance at matched class agreement.

Every cell draws n class-conditional samples (labels i mod 10, sample i from seed (seed, i): the same x_T
in every cell), x̂₀ clipped to [-1, 1] with ε̂ re-derived (`ddim sample`'s default), and reports the
model calls per image (NFE), class agreement (the shipped clean-image classifier), FID with its
bootstrap std, precision and recall (shipped extractor, Fashion-MNIST test split) and wall seconds.

    python benchmarks/score_sampling.py --n 1000 --json benchmarks/results/score_sampling_cpu.json \
        --picture docs/classifier_guidance.png

Groups (``--groups``): pc (PC vs predictor), sde (reverse SDE, probability flow, Langevin), guidance
(classifier scale s and classifier-free weight w).
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
from ddim.checkpoint import BUNDLED_MODEL, BUNDLED_NOISY_CLASSIFIER, load_checkpoint, load_noisy_classifier
from ddim.evaluate import class_agreement, evaluate_images, load_classifier, reference_stats
from ddim.generate import RunOptions, class_labels, generate
from ddim.guidance import GuidanceOptions
from ddim.images import save_grid
from ddim.samplers import AnnealedLangevin, PredictorCorrector, SampleOptions, get_solver

CLIP = {"clip": 1.0, "eps_from_clipped_x0": True}


def cells(groups: list[str]) -> list[dict]:
    """(label, group, generate keywords) per cell; NFE comes from the solver."""
    out = []
    if "pc" in groups:
        for nfe in (20, 50):
            for eta in (0.0, 1.0):
                out.append(dict(group="pc", label=f"ddim η={eta:g}", steps=nfe, solver="ddim", eta=eta))
                out.append(dict(group="pc", label=f"pc(ddim η={eta:g}) + 1 corrector", steps=nfe // 2,
                                solver=PredictorCorrector(predictor="ddim", corrector_steps=1), eta=eta))
    if "sde" in groups:
        for steps in (20, 50):
            out.append(dict(group="sde", label="reverse-sde (Euler-Maruyama)", steps=steps, solver="reverse-sde"))
            out.append(dict(group="sde", label="pf-ode (Euler)", steps=steps, solver="pf-ode"))
        for steps in (10, 25):
            out.append(dict(group="sde", label="annealed Langevin L=2", steps=steps,
                            solver=AnnealedLangevin(langevin_steps=2)))
    if "guidance" in groups:
        for s in (0.0, 1.0, 2.0, 4.0, 8.0):
            out.append(dict(group="guidance", label=f"classifier s={s:g}", steps=50, solver="ddim", classifier_scale=s))
        for w in (0.5, 1.0, 2.0):
            out.append(dict(group="guidance", label=f"classifier-free w={w:g}", steps=50, solver="ddim", guidance=w))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(BUNDLED_MODEL))
    p.add_argument("--classifier", default=str(BUNDLED_NOISY_CLASSIFIER), help="noisy classifier for guidance")
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--groups", default="pc,sde,guidance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx files (default: ddim.data's)")
    p.add_argument("--json", default=None, help="write the rows here (after every cell)")
    p.add_argument("--picture", default=None, help="PNG: one row per guidance cell, classes 0..9")
    args = p.parse_args()

    keep_freed_memory()
    torch.set_grad_enabled(False)
    model, schedule, config = load_checkpoint(args.checkpoint)
    noisy = None
    judge, _ = load_classifier()
    reference = reference_stats("fashion-mnist", split="test", data_dir=args.data_dir)
    labels = class_labels(range(args.n), model.config.num_classes)
    rows, picture = [], []
    print(f"{'cell':<34} {'S':>4} {'NFE':>4} {'agree':>6} {'FID':>6} {'±':>5} {'prec':>5} {'rec':>5} {'s':>6}")
    for cell in cells(args.groups.split(",")):
        kw = {k: v for k, v in cell.items() if k not in ("group", "label", "guidance", "classifier_scale")}
        if cell.get("classifier_scale") and noisy is None:
            noisy = load_noisy_classifier(args.classifier)[0]
        guidance = GuidanceOptions(w=cell.get("guidance", 0.0), classifier=noisy,
                                   classifier_scale=cell.get("classifier_scale", 0.0))
        t0 = time.perf_counter()
        x = generate(model, schedule, args.n, SampleOptions(prediction=config.prediction, **CLIP, **kw), guidance,
                     RunOptions(seed=args.seed, batch_size=args.batch_size))
        seconds = time.perf_counter() - t0
        shown = x.clamp(-1, 1)
        a = class_agreement(judge(shown).argmax(1), labels, model.config.num_classes)
        agree = a["value"]
        m = evaluate_images(shown, reference)
        nfe = get_solver(cell["solver"]).nfe(cell["steps"])
        row = {"group": cell["group"], "cell": cell["label"], "steps": cell["steps"], "nfe": nfe, "n": args.n,
               "class_agreement": agree, "class_agreement_95": [a["low"], a["high"]], "fid": m["fid"],
               "fid_std": m["fid_std"], "precision": m["precision"], "recall": m["recall"],
               "seconds": round(seconds, 1)}
        rows.append(row)
        print(f"{cell['label']:<34} {cell['steps']:>4} {nfe:>4} {agree:>6.3f} {m['fid']:>6.2f} {m['fid_std']:>5.2f} "
              f"{m['precision']:>5.2f} {m['recall']:>5.2f} {seconds:>6.0f}", flush=True)
        if cell["group"] == "guidance":
            picture.append(shown[:10])
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({
                "command": "python benchmarks/score_sampling.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                "checkpoint": args.checkpoint, "classifier": args.classifier, "rows": rows}, indent=1) + "\n")
    if args.picture and picture:
        save_grid(torch.cat(picture), args.picture, nrow=10)


if __name__ == "__main__":
    main()
