#!/usr/bin/env bash
# Table 1-style comparison on MiniLM (conf/experiment/table1_minilm.yaml, docs/reproduction.md):
#   phase 1: KaSA and LoRA, seeds 0-5, on vader_movie5, vader_tweets3 and vader_sst2 (the powered pair);
#   phase 2: FFT, BitFit, Adapter-H/P/L/D, AdaLoRA, DyLoRA, PiSSA, MiLoRA, seeds 0-2, on the same tasks;
# then kasa-report (last epoch, and the best epoch labelled) with paired differences against LoRA and --plots.
#   experiments/reproduction/table1.sh [SWEEP_DIR]    (default outputs/table1; `make table1` runs it)
# Jobs (one task x seed x method list each) are taken from a shared queue by WORKERS single-thread workers (default
# 2: on 2 cores two single-thread MiniLM runs beat one two-thread run). Every point goes through sweep_dir: a rerun
# skips finished runs and resumes an interrupted one from its last.ckpt. PHASES="1" runs only the powered pair.
set -u
cd "$(dirname "$0")/../.."
SWEEP=${1:-outputs/table1}
KT=${KASA_TRAIN:-.venv/bin/kasa-train}
REPORT=${KASA_REPORT:-.venv/bin/kasa-report}
export OMP_NUM_THREADS=${MINI_THREADS:-1} MKL_NUM_THREADS=${MINI_THREADS:-1}
TASKS=${TASKS:-vader_movie5 vader_tweets3 vader_sst2}
BASELINES=fft,bitfit,adapter_h_minilm,adapter_p_minilm,adapter_l_minilm,adapter_d_minilm,adalora_minilm,dylora,pissa,milora
mkdir -p "$SWEEP"

queue="$SWEEP/.queue"
: > "$queue"
for phase in ${PHASES:-1 2}; do
  if [ "$phase" = 1 ]; then seeds="0 1 2 3 4 5" methods=kasa,lora; else seeds="0 1 2" methods=$BASELINES; fi
  for seed in $seeds; do for task in $TASKS; do echo "$task $seed $methods p$phase" >> "$queue"; done; done
done
echo 0 > "$queue.next"

worker() {  # take the next job until the queue is empty
  local i line task seed methods tag
  while :; do
    i=$(flock "$queue.next" sh -c 'i=$(cat "$1"); echo $((i + 1)) > "$1"; echo "$i"' _ "$queue.next")
    line=$(sed -n "$((i + 1))p" "$queue")
    [ -z "$line" ] && return 0
    read -r task seed methods tag <<< "$line"
    "$KT" -m experiment=table1_minilm dataset="$task" method="$methods" seed="$seed" \
        logger=csv sweep_dir="$SWEEP" hydra.sweep.dir="$SWEEP/_hydra/$tag-$task-s$seed" \
        || echo "[table1] $task seed=$seed $methods exited with $?"
  done
}

start=$(date +%s)
for w in $(seq 1 "${WORKERS:-2}"); do worker > "$SWEEP/worker-$w.log" 2>&1 & done
wait
wall=$(( $(date +%s) - start ))
echo "[table1] training wall time: $wall s"
echo "$wall" >> "$SWEEP/wall_time_s.txt"
"$REPORT" "$SWEEP" --out "$SWEEP/report" --baseline lora --plots --no-wandb-images
"$REPORT" "$SWEEP" --out "$SWEEP/report_best" --selection best --baseline lora --format md,csv
