#!/bin/sh
# The full distillation of the bundled model on the 2-core CPU: two processes (torchrun, gloo) of one thread
# each, which on a shared machine beat one process of two threads by far (OpenMP threads spin on a busy core).
# The guided phase distils interval guidance (σ in (0.28, 5.42], w ~ U[0, 3]); --bf16 runs the students'
# forward passes under bfloat16 autocast (fast on CPUs with AMX; drop it elsewhere), the teacher's targets in
# float32. The first halving round's teacher (the guided phase) takes Heun steps (--teacher-solver heun): its
# own 32-step DDIM chain is what a student would otherwise learn, and Heun's is closer to the ODE. Every phase
# checkpoints every 100 steps; run it again with --resume appended to continue after a stop:
#     sh scripts/distill_bundled_cpu.sh runs/distill LR [--resume]
# GNU time reports the CPU seconds (user + sys, both processes) and the wall seconds of the whole run.
set -e
out=${1:-runs/distill}; lr=${2:-1e-3}; shift 2 || true
mkdir -p "$(dirname "$out")"
OMP_NUM_THREADS=1 /usr/bin/time -f "distill cpu_user_s=%U cpu_sys_s=%S wall_s=%e" \
  python -m torch.distributed.run --standalone --nproc_per_node=2 -m ddim distill --teacher bundled \
    --teacher-steps 32 --steps 1 --guided-steps 2000 --round-steps 1000,1600,2200,2600,2600 \
    --batch-size 64 --lr "$lr" --warmup 20 --ema-decay 0.999 --w-range 0,3 --guidance-interval 0.28,5.42 \
    --teacher-solver heun --bf16 --weighting truncated-snr --checkpoint-every 100 --keep-last 2 --log-every 25 \
    --device cpu --out "$out" "$@"
