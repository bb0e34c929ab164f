#!/usr/bin/env bash
# Mini reproduction: MiniLM on vader_movie5 + vader_tweets3, KaSA vs LoRA/PiSSA/MiLoRA/DoRA/FFT
# (seeds 0-2) and the KaSA component ablation, then the tables and figures (docs/mini_six_methods.md, docs/figures/).
#   experiments/mini/run.sh [SWEEP_DIR]        (default outputs/mini; `make mini` runs it)
# Every point goes through sweep_dir: rerunning skips finished runs, an interrupted run resumes from its
# last.ckpt. One worker per task, one thread each (MINI_THREADS): on 2 cores two single-thread MiniLM runs
# side by side beat one two-thread run (tiny matmuls). Seeds are the outer loop of each worker, so a run cut
# short still leaves whole seeds behind. SEEDS="0" or TASKS="vader_movie5" narrow the grid.
set -u
cd "$(dirname "$0")/../.."
SWEEP=${1:-outputs/mini}
KT=${KASA_TRAIN:-.venv/bin/kasa-train}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${MINI_THREADS:-1} MKL_NUM_THREADS=${MINI_THREADS:-1}
mkdir -p "$SWEEP"

worker() {  # all points of one task, seed by seed
  local task=$1 seed
  for seed in ${SEEDS:-0 1 2}; do
    "$KT" -m experiment=mini dataset=$task method=kasa,lora,pissa,milora,dora,fft seed=$seed \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/mini-$task-s$seed" \
        || echo "[mini] experiment=mini $task seed=$seed exited with $?"
    # the l3 stage (= KaSA with the same settings) is the kasa run above
    "$KT" -m experiment=mini_ablation dataset=$task study.stage=lora,learnable_sv,l2 seed=$seed \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/ablation-$task-s$seed" \
        || echo "[mini] experiment=mini_ablation $task seed=$seed exited with $?"
  done
}

start=$(date +%s)
for task in ${TASKS:-vader_movie5 vader_tweets3}; do
  worker "$task" > "$SWEEP/worker-$task.log" 2>&1 &
done
wait
wall=$(( $(date +%s) - start ))
echo "[mini] training wall time: $wall s"
echo "$wall" > "$SWEEP/wall_time_s.txt"
"$PY" experiments/mini/render.py "$SWEEP" --out docs/mini_six_methods.md --figures docs/figures
