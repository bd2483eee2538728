#!/bin/bash
# The DDIM paper's Table 1, Table 2 and Figure 5 analogues for the bundled model, at n = 1,000 per FID
# cell, and a few-step solver grid: one to one and a half hours on a 2-core CPU (53 min on 2026-12-03's fastest
# VM, 8 of them for the S = 200–1000 reconstruction rows; 92 min on a slower one). The n = 10,000 tables with S = 1000 need a GPU: README "Results".
# Usage: bash scripts/eval_bundled_cpu.sh [OUT_DIR]   (default eval-cpu; a rerun resumes the FID grids
# from their stored samples and recomputes the other parts)
# Then copy the reports next to the README: bash scripts/eval_bundled_cpu.sh OUT --publish docs/eval
set -euo pipefail
out=${1:-eval-cpu}
mkdir -p "$out"
n=1000
# FID grid with x̂_0 clipped and ε̂ re-derived (how `ddim sample` draws by default), then the paper's plain update
ddim eval --steps 10,20,50,100 --eta 0,0.2,0.5,1,large --n $n --batch-size 200 --clip 1 --device cpu \
    --out "$out/table1_clip1"
# few-step solvers against DDIM on the log-SNR grid, by model calls (Heun: 2S - 1 per S steps)
ddim eval --steps 5,10,20 --eta 0 --solver ddim,dpmpp-2m,dpmpp-3m,unipc,heun --spacing logsnr --n $n --batch-size 200 \
    --clip 1 --device cpu --out "$out/solvers"
ddim eval --consistency --n 100 --batch-size 100 --device cpu --out "$out/consistency"
ddim eval --steps 10,20,50,100 --eta 0,1 --n $n --batch-size 200 --device cpu --out "$out/table1_plain"
# Table 2: n images per S up to 100, 100 images at S = 200, 500, 1000 (each image costs 2 S model calls)
ddim eval --reconstruction --steps 10,20,50,100 --n $n --batch-size 200 --device cpu --out "$out/reconstruction"
ddim eval --reconstruction --steps 200,500,1000 --n 100 --batch-size 100 --device cpu --out "$out/reconstruction_long"
if [[ ${2:-} == --publish ]]; then
    dest=${3:?--publish needs a directory}
    for d in table1_clip1 table1_plain solvers reconstruction reconstruction_long consistency; do
        mkdir -p "$dest/$d"
        find "$out/$d" -maxdepth 1 -type f \( -name '*.md' -o -name '*.json' -o -name '*.csv' -o -name '*.png' \) \
            -exec cp {} "$dest/$d/" \;
    done
fi
