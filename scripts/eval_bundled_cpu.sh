#!/bin/bash
# The DDIM paper's Table 1, Table 2 and Figure 5 analogues for the bundled model at a scale a 2-core
# CPU finishes in about two hours (the full n = 10,000 tables need a GPU: see README "Results").
# Usage: bash scripts/eval_bundled_cpu.sh [OUT_DIR]   (default eval-cpu; a rerun resumes the FID grids
# from their stored samples and recomputes the other two)
# Then copy the reports next to the README: bash scripts/eval_bundled_cpu.sh OUT --publish docs/eval
set -euo pipefail
out=${1:-eval-cpu}
mkdir -p "$out"
# FID grid with x̂_0 clipped (how `ddim sample` draws by default), then the paper's plain update
ddim eval --steps 10,20,50,100 --eta 0,0.2,0.5,1,large --n 400 --batch-size 200 --clip 1 --device cpu \
    --out "$out/table1_clip1"
ddim eval --consistency --n 8 --device cpu --out "$out/consistency"
ddim eval --reconstruction --n 16 --batch-size 16 --device cpu --out "$out/reconstruction"
ddim eval --steps 10,20,50,100 --eta 0,1 --n 400 --batch-size 200 --device cpu --out "$out/table1_plain"
if [[ ${2:-} == --publish ]]; then
    dest=${3:?--publish needs a directory}
    for d in table1_clip1 table1_plain consistency reconstruction; do
        mkdir -p "$dest/$d"
        find "$out/$d" -maxdepth 1 -type f \( -name '*.md' -o -name '*.json' -o -name '*.csv' -o -name '*.png' \) \
            -exec cp {} "$dest/$d/" \;
    done
fi
