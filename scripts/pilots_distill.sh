#!/bin/sh
# Distillation pilots on the 2-core CPU: one guided phase (K = 8) and one halving round (8 -> 4) per setting,
# each student scored at n = 500 (FID with the shipped extractor, class agreement) at w = 0.5.
# Usage: OMP_NUM_THREADS=1 sh scripts/pilots_distill.sh OUT "NAME:FLAGS" ...  (time gives CPU and wall per pilot;
# one thread: on a shared machine two threads per process were measured ~15x slower per step)
set -e
out=$1; shift
mkdir -p "$out"
for spec in "$@"; do
  name=${spec%%:*}; flags=${spec#*:}
  echo "== $name: $flags"
  /usr/bin/env time -f "$name cpu_user_s=%U cpu_sys_s=%S wall_s=%e" \
    python -m ddim distill --quiet --teacher-steps 8 --steps 4 --out "$out/$name" $flags
  python benchmarks/guidance.py --checkpoint "$out/$name/guided_8" --n 500 --steps 8 --spacing trailing \
    --weights 0.5 --rules clip-eps --batch-size 250 --json "$out/$name/eval_guided_8.json" | tail -1
  python benchmarks/guidance.py --checkpoint "$out/$name/steps_4" --n 500 --steps 4 --spacing trailing \
    --weights 0.5 --rules plain --batch-size 250 --json "$out/$name/eval_steps_4.json" | tail -1
done
