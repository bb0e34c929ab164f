#!/usr/bin/env bash
# Powered mini reproduction (conf/experiment/mini_powered.yaml): 15 paired seeds x {KaSA, LoRA, KaSA
# truncation=none, KaSA truncation=activation_aware} on vader_movie5, 3 epochs, then kasa-report
# (paired differences against KaSA and LoRA, --plots) into SWEEP/report.
#   experiments/mini/powered.sh [SWEEP_DIR]    (default outputs/mini_powered; `make mini-powered` runs it)
# Two single-thread workers (even and odd seeds) on 2 cores; rerunning skips finished runs and resumes an
# interrupted one from its last.ckpt. SEEDS="0 1" narrows the grid.
set -u
cd "$(dirname "$0")/../.."
SWEEP=${1:-outputs/mini_powered}
KT=${KASA_TRAIN:-.venv/bin/kasa-train}
REPORT=${KASA_REPORT:-.venv/bin/kasa-report}
export OMP_NUM_THREADS=${MINI_THREADS:-1} MKL_NUM_THREADS=${MINI_THREADS:-1}
SEEDS=${SEEDS:-$(seq 0 14)}
mkdir -p "$SWEEP"

worker() {  # KaSA (paper) and LoRA for each of its seeds first, then the two truncation arms: a cut-short sweep
  # leaves whole KaSA-LoRA pairs
  local seed
  for seed in "$@"; do
    "$KT" -m experiment=mini_powered method=kasa method.truncation=paper seed=$seed \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/kasa-s$seed" \
        || echo "[powered] kasa seed=$seed exited with $?"
    "$KT" -m experiment=mini_powered method=lora seed=$seed \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/lora-s$seed" \
        || echo "[powered] lora seed=$seed exited with $?"
  done
  for seed in "$@"; do
    "$KT" -m experiment=mini_powered method=kasa method.truncation=none,activation_aware seed=$seed \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/kasa-trunc-s$seed" \
        || echo "[powered] kasa truncation arms seed=$seed exited with $?"
  done
}

even=() odd=()
for s in $SEEDS; do if (( s % 2 )); then odd+=("$s"); else even+=("$s"); fi; done
start=$(date +%s)
worker "${even[@]}" > "$SWEEP/worker-even.log" 2>&1 &
[ ${#odd[@]} -gt 0 ] && worker "${odd[@]}" > "$SWEEP/worker-odd.log" 2>&1 &
wait
wall=$(( $(date +%s) - start ))
echo "[powered] training wall time: $wall s"
echo "$wall" > "$SWEEP/wall_time_s.txt"
"$REPORT" "$SWEEP" --out "$SWEEP/report" --baseline lora --plots --no-wandb-images
