#!/bin/sh
# The consistency-distillation pilot on the 2-core CPU, at the budget of one progressive round (the 4 -> 2 round:
# 2,600 optimizer steps at batch 64, two processes of one thread, 36 minutes logged; a CD step costs what a
# halving step costs: two teacher-side forwards without gradients (teacher, target network) and one with).
# It starts from a finished guided phase (the w-input student on the 32-step grid), read only, and writes one
# phase, OUT/consistency/, whose student samples in 1 step by default (--steps 2 or 4 at sampling time):
#     sh scripts/pilot_consistency_cpu.sh [OUT] [LR] [GUIDED] [--resume]
# defaults: OUT runs/cd_pilot, LR 1e-3 (the progressive rounds' own), GUIDED /work/wt34/runs/distill/guided_32.
# Then, beside the progressive students (n = 2,000 per cell, w = 0.5):
#     python benchmarks/distill.py --run runs/distill --steps 1,2,4 --consistency OUT/consistency --n 2000 \
#         --teacher-steps 1 --no-default --json benchmarks/results/distill_cd_pilot_cpu.json
# GNU time reports the CPU seconds (user + sys, both processes) and the wall seconds of the whole run.
set -e
out=${1:-runs/cd_pilot}; lr=${2:-1e-3}; guided=${3:-/work/wt34/runs/distill/guided_32}
if [ $# -ge 3 ]; then shift 3; else shift $#; fi
mkdir -p "$(dirname "$out")"
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's ddim, whichever one is installed
OMP_NUM_THREADS=1 /usr/bin/time -f "consistency cpu_user_s=%U cpu_sys_s=%S wall_s=%e" \
  python -m torch.distributed.run --standalone --nproc_per_node=2 -m ddim distill --method consistency \
    --teacher "$guided" --steps 1 --cd-steps 2600 --target-decay 0.95 --weighting uniform \
    --batch-size 64 --lr "$lr" --warmup 20 --ema-decay 0.999 --w-range 0,2 \
    --checkpoint-every 100 --keep-last 2 --log-every 25 --device cpu --out "$out" "$@"
