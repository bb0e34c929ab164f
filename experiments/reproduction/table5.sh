#!/usr/bin/env bash
# Table 5-style comparison on SmolLM2-135M-Instruct (conf/experiment/table5_smollm2.yaml, docs/reproduction.md): the
# base model's zero-shot row, then seed by seed (0-2) KaSA, LoRA, PiSSA, MiLoRA, DoRA and KaSA with
# method.truncation=none, then kasa-report with paired differences against LoRA and --plots.
#   experiments/reproduction/table5.sh [SWEEP_DIR]    (default outputs/table5; `make table5` runs it)
# One worker with THREADS threads (default 2). Every point goes through sweep_dir: a rerun skips finished runs and
# resumes an interrupted one from its last.ckpt. SEEDS="0" narrows the grid.
set -u
cd "$(dirname "$0")/../.."
SWEEP=${1:-outputs/table5}
KT=${KASA_TRAIN:-.venv/bin/kasa-train}
REPORT=${KASA_REPORT:-.venv/bin/kasa-report}
export OMP_NUM_THREADS=${THREADS:-2} MKL_NUM_THREADS=${THREADS:-2}
mkdir -p "$SWEEP"

start=$(date +%s)
{
  "$KT" -m experiment=table5_smollm2 method=lora trainer.max_epochs=0 seed=0 \
      logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/zero-shot" \
      || echo "[table5] zero-shot exited with $?"
  # Seed by seed, so that every finished seed holds every arm. The last arm is KaSA without its SVD truncation
  # (docs/findings.md: the truncation alone costs SmolLM2 ~7 nats at t = 8): it tells the truncation apart from
  # the rest of KaSA.
  for seed in ${SEEDS:-0 1 2}; do
    "$KT" -m experiment=table5_smollm2 method=kasa,lora,pissa,milora,dora seed="$seed" \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/s$seed" \
        || echo "[table5] seed=$seed exited with $?"
    "$KT" -m experiment=table5_smollm2 method=kasa method.truncation=none seed="$seed" \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/kasa-none-s$seed" \
        || echo "[table5] kasa truncation=none seed=$seed exited with $?"
  done
} > "$SWEEP/worker.log" 2>&1
wall=$(( $(date +%s) - start ))
echo "[table5] training wall time: $wall s"
echo "$wall" >> "$SWEEP/wall_time_s.txt"
"$REPORT" "$SWEEP" --out "$SWEEP/report" --baseline lora --plots --no-wandb-images
"$REPORT" "$SWEEP" --out "$SWEEP/report_best" --selection best --baseline lora --format md,csv
