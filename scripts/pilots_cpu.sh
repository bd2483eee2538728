#!/bin/bash
# Pilot runs for the bundled model's recipe (issue 12): short `ddim train` runs on Fashion-MNIST, all on
# the same budget (--steps at --batch-size 128), each scored by `ddim eval` (FID of 500 samples, 20 DDIM
# steps, η = 0, plain update, against the test split), one after the other (OMP_NUM_THREADS as set).
# Usage: bash scripts/pilots_cpu.sh OUT_DIR STEPS NAME... (names below; default: all)
# Prints one line per pilot: name, final loss (mean of the last 100 steps), images/s, FID ± std, class
# agreement (500 samples, 20 steps, no guidance; scripts/bundle_model.py's rule), and writes OUT_DIR/pilots.json.
set -euo pipefail
out=${1:?usage: pilots_cpu.sh OUT_DIR STEPS [NAME...]}
steps=${2:?usage: pilots_cpu.sh OUT_DIR STEPS [NAME...]}
shift 2

# The two architectures measured by benchmarks/architectures.py that fit the 0.25 GFLOP budget best.
P2="--patch-size 2 --base-channels 32 --channel-mult 1,3 --num-res-blocks 2 --attn-resolutions 7"
C16="--base-channels 16 --channel-mult 1,2,4 --num-res-blocks 2 --attn-resolutions 7"
declare -A PILOT=(
  [p2-base]="$P2 --lr 1e-3 --dropout 0.1"
  [p2-nodrop]="$P2 --lr 1e-3 --dropout 0"
  [p2-minsnr]="$P2 --lr 1e-3 --dropout 0 --min-snr-gamma 5"
  [p2-v]="$P2 --lr 1e-3 --dropout 0 --prediction v"
  [p2-lr2e-3]="$P2 --lr 2e-3 --dropout 0"
  [p2-v-minsnr]="$P2 --lr 1e-3 --dropout 0 --prediction v --min-snr-gamma 5"
  [p2-v-minsnr-lr2e-3]="$P2 --lr 2e-3 --dropout 0 --prediction v --min-snr-gamma 5"
  [p2-v-lognormal-lr2e-3]="$P2 --lr 2e-3 --dropout 0 --prediction v --t-sampling lognormal"
  [p2-v-minsnr-lognormal-lr2e-3]="$P2 --lr 2e-3 --dropout 0 --prediction v --min-snr-gamma 5 --t-sampling lognormal"
  [p2-v-minsnr-lr2e-3-ss]="$P2 --lr 2e-3 --dropout 0 --prediction v --min-snr-gamma 5 --scale-shift"
  [c16-nodrop]="$C16 --lr 1e-3 --dropout 0"
)
names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${!PILOT[@]}")

one() {
  local name=$1 dir="$out/$1"
  ddim train --dataset fashion-mnist ${PILOT[$name]} --steps "$steps" --batch-size 128 \
      --warmup 100 --ema-decay 0.999 --checkpoint-every "$steps" --sample-every 0 --log-every 25 --quiet \
      --out "$dir" $([ -d "$dir/checkpoints" ] && echo --resume)
  ddim eval --checkpoint "$dir" --steps 20 --eta 0 --n 500 --batch-size 250 --quiet \
      --out "$dir/eval" > /dev/null
}

mkdir -p "$out"
for name in "${names[@]}"; do
  [ -f "$out/$name/eval/results.json" ] || one "$name"
done

python - "$out" "$(dirname "$0")" "${names[@]}" <<'EOF'
import json, statistics, sys
from pathlib import Path
out, rows = Path(sys.argv[1]), []
sys.path.insert(0, sys.argv[2])
from bundle_model import class_agreement
for name in sys.argv[3:]:
    lines = [json.loads(l) for l in (out / name / "metrics.jsonl").read_text().splitlines() if l.strip()]
    train = [l for l in lines if "loss" in l]
    cell = json.loads((out / name / "eval" / "results.json").read_text())["cells"][0]
    rows.append({"name": name, "steps": train[-1]["step"], "loss_last_100": statistics.mean(
        l["loss"] for l in train if l["step"] > train[-1]["step"] - 100), "images_per_s": statistics.median(
        l["images_per_s"] for l in train), "fid": cell["fid"], "fid_std": cell["fid_std"],
        "precision": cell["precision"], "recall": cell["recall"],
        "class_agreement": class_agreement(out / name, 500, 20)})
    r = rows[-1]
    print(f"{name:<12} step {r['steps']:>5}  loss {r['loss_last_100']:.4f}  {r['images_per_s']:6.1f} img/s  "
          f"FID {r['fid']:.2f} ± {r['fid_std']:.2f}  P {r['precision']:.2f} R {r['recall']:.2f}  "
          f"agreement {r['class_agreement']:.3f}")
(out / "pilots.json").write_text(json.dumps(rows, indent=1) + "\n")
EOF
