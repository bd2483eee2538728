"""Export a distilled student (`ddim distill`) as the package's bundled student, with the record of every phase.

    python scripts/bundle_student.py RUN/steps_4 --command "sh scripts/distill_bundled_cpu.sh runs/distill 1e-3" \
        --device "CPU, 2 cores (AMD EPYC), 2 processes of 1 thread" [--out src/ddim/assets/fashion_mnist_distilled]

Writes OUT/config.json (the student's config with its distill record: teacher, grid, rounds), OUT/ema.safetensors
(EMA weights in fp16), OUT/training.json and OUT/manifest.json through ``ddim.checkpoint.export_checkpoint``.
training.json holds, for each phase in order (the rounds the student's config names, found beside its run
folder, then the student's own), what ``bundle_model.training_record`` reads from a run's own files, the phase's
own distill record (teacher, grids, weighting, teacher_solver, …; its rounds list left out), and the total time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bundle_model import training_record
from ddim.checkpoint import export_checkpoint, find_checkpoint, read_json

BUNDLED_STUDENT = Path(__file__).resolve().parents[1] / "src" / "ddim" / "assets" / "fashion_mnist_distilled"


def phases(student: Path) -> list[Path]:
    """The run folders of every phase that made ``student``, in order, the student's own last."""
    record = read_json(find_checkpoint(student) / "config.json")["distill"]
    return [student.parent / Path(r["run"]).name for r in record["rounds"]] + [student]


def distill_record(run: Path) -> dict:
    """The distill section of ``run``'s config without its rounds (the phases before it, listed anyway)."""
    record = read_json(find_checkpoint(run) / "config.json")["distill"]
    return {k: v for k, v in record.items() if k != "rounds"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("student", type=Path, help="the student's run folder (RUN/steps_N)")
    p.add_argument("--command", required=True, help="the command line that ran the distillation")
    p.add_argument("--device", required=True, help="what it ran on")
    p.add_argument("--out", type=Path, default=BUNDLED_STUDENT)
    args = p.parse_args()
    runs = phases(args.student)
    records = [{"run": run.name, **training_record(run, args.command, args.device), "distill": distill_record(run)}
               for run in runs]
    for r in records:  # one command and machine for all: said once below
        del r["command"], r["device"]
    record = {"command": args.command, "device": args.device,
              "train_seconds_logged": sum(r["train_seconds_logged"] for r in records),
              "train_seconds_at_median_speed": sum(r["train_seconds_at_median_speed"] for r in records),
              "phases": records}
    out = export_checkpoint(args.student, args.out, dtype=torch.float16, record=record)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.2f} MB): phases {', '.join(r['run'] for r in records)}, "
          f"{record['train_seconds_logged'] / 60:.0f} min logged")


if __name__ == "__main__":
    main()
