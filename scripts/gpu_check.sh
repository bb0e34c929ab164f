#!/usr/bin/env bash
# GPU figures in one go (issue 15 item 4), sized for ~8 minutes of an H100/H200; everything it measures goes
# under ONE folder:
#
#   scripts/gpu_check.sh [--dry] [OUT]          (or: make gpu-check [GPU_OUT=...]; GPU_CHECK_DRY=1 = --dry)
#
# OUT defaults to outputs/gpu_check/<date>. Parts, in priority order (each timed, logged to OUT/<part>.log,
# under its own timeout; a failure never stops the others; OUT/summary.md lists each part, its exit code
# and wall time):
#   perf_steps         python -m kasa.perf --full --skip-methods: bf16 step / memory (with the CUDA peak) of
#                      KaSA, LoRA and HF PEFT's KaSA, regulariser, merged inference, Lightning, and KaSA's
#                      truncation of a whole LLaMA-2-7B-shaped model against the < 60 s target
#   train_*            one short real training run per benchmark family on the GPU (2 training batches,
#                      small evaluation): classification (minilm), e2e, commonsense, instruction (smollm2)
#   quant_lora/kasa    the same short run on an NF4-quantised smollm2 (model.quantization=nf4)
#   planner_cuda       python -m kasa.params --memory --cuda-check: the planner's estimate against
#                      torch.cuda.max_memory_allocated (the bench's 7B-shaped Llama: 8 layers, bf16)
#   planner_test       the CUDA test of tests/test_memory_plan.py
#   perf_methods       python -m kasa.perf --full --skip-truncation: adds the every-method table
#   perf_throughput    python -m kasa.perf --throughput --full --tp-compile inductor: non-padding tokens/s and
#                      padding share of padded, length-grouped and packed batches, compile off and on
#                      (SmolLM2-135M + LoRA r=8, commonsense mix, cutoff 256)
#   perf_generation    python -m kasa.perf --generation --full: greedy evaluation generations/s, plain and
#                      shared-prefix, eval batch 16 and 64 (SmolLM2-135M, commonsense prompts)
# GPU_CHECK_BUDGET (seconds, default 480) caps the whole run: a part gets min(its timeout, what is left), and
# parts left with under 20 s are marked skipped. GPU_CHECK_PYTHON: the interpreter (default .venv/bin/python,
# else python3).
#
# --dry: print every command, write the summary without running anything, and check that each kasa-train
# command composes and passes kasa.config.validate (python -m kasa.perf.gpu_check).
set -u

dry=${GPU_CHECK_DRY:-0}
out=""
for arg in "$@"; do
    case "$arg" in
        --dry) dry=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gpu_check.sh: error: unknown option $arg (use --dry, or give the output folder)" >&2; exit 2 ;;
        *) [ -z "$out" ] || { echo "gpu_check.sh: error: one output folder only (got '$out' and '$arg')" >&2; exit 2; }
           out=$arg ;;
    esac
done
[ "$dry" = 0 ] || [ "$dry" = 1 ] || { echo "gpu_check.sh: error: GPU_CHECK_DRY=$dry (use 0 or 1)" >&2; exit 2; }
budget=${GPU_CHECK_BUDGET:-480}
case "$budget" in ''|*[!0-9]*) echo "gpu_check.sh: error: GPU_CHECK_BUDGET=$budget (whole seconds)" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.." || exit 2
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then py=$GPU_CHECK_PYTHON
elif [ -x .venv/bin/python ]; then py=.venv/bin/python
else py=python3; fi
out=${out:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$out" || { echo "gpu_check.sh: error: cannot create output folder $out" >&2; exit 2; }
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1

if [ "$dry" = 0 ] && ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check.sh: error: no CUDA device visible to $py (on a CPU machine use --dry)" >&2
    exit 2
fi

names=(); cmds=(); limits=(); kinds=(); descs=()
q() { printf '%q ' "$@"; }
part() {  # part NAME KIND(perf|train|quant|planner) TIMEOUT DESCRIPTION COMMAND...
    names+=("$1"); kinds+=("$2"); limits+=("$3"); descs+=("$4"); shift 4
    cmds+=("$(q "$@")")
}
train_common=(trainer.accelerator=gpu trainer.devices=1 trainer.max_epochs=1 trainer.limit_train_batches=2
              trainer.enable_progress_bar=false)
train() {  # train NAME KIND TIMEOUT DESCRIPTION OVERRIDES...
    local name=$1 kind=$2 limit=$3 desc=$4; shift 4
    part "$name" "$kind" "$limit" "$desc" "$py" -m kasa.train "$@" "${train_common[@]}" \
        "hydra.run.dir=$out/$name"
    local fields=("$name" "$@" "${train_common[@]}" "hydra.run.dir=$out/$name")
    (IFS=$'\t'; echo "${fields[*]}") >> "$out/compose_checks.tsv"
}
: > "$out/compose_checks.tsv"

part perf_steps perf 210 "kasa.perf --full --skip-methods: bf16 steps, memory + CUDA peak, truncation of a 7B-shaped model" \
    "$py" -m kasa.perf --full --skip-methods --out "$out/perf_steps.md"
train train_classification train 75 "classification, model=minilm (vader_movie5), 2 batches" \
    model=minilm benchmark=classification trainer.limit_val_batches=2
gen_eval=(dataset.max_eval=3 benchmark.generation.max_new_tokens=32)
train train_e2e train 75 "e2e, model=smollm2 (BIG-bench E2E), 2 batches, 3 MRs decoded" \
    benchmark=e2e model=smollm2 "${gen_eval[@]}"
train train_commonsense train 75 "commonsense, model=smollm2 (Social IQA + StrategyQA), 2 batches, 3 per task" \
    benchmark=commonsense model=smollm2 "${gen_eval[@]}"
train train_instruction train 90 "instruction, model=smollm2, local judge, 2 batches, 2 held-out + 1 MT-Bench" \
    benchmark=instruction model=smollm2 dataset.max_eval=2 benchmark.generation.max_new_tokens=32 \
    benchmark.mtbench.max_questions=1 benchmark.judge.max_new_tokens=64 "benchmark.judge.cache=$out/judge.sqlite"
train quant_lora quant 60 "e2e on an NF4 smollm2, method=lora" \
    benchmark=e2e model=smollm2 method=lora model.quantization=nf4 "${gen_eval[@]}"
train quant_kasa quant 60 "e2e on an NF4 smollm2, method=kasa" \
    benchmark=e2e model=smollm2 method=kasa model.quantization=nf4 "${gen_eval[@]}"
part planner_cuda planner 100 "planner estimate vs torch.cuda.max_memory_allocated (the bench's 7B-shaped Llama, bf16)" \
    "$py" -m kasa.params --memory --cuda-check --models perf:full --methods kasa lora fft
part planner_test planner 60 "tests/test_memory_plan.py on the GPU (its CUDA bounds, RoBERTa-base)" \
    "$py" -m pytest -q tests/test_memory_plan.py -k cuda -p no:cacheprovider
part perf_methods perf 180 "kasa.perf --full --skip-truncation: adds the every-method table (bf16, 7B-shaped)" \
    "$py" -m kasa.perf --full --skip-truncation --out "$out/perf_methods.md"
part perf_throughput perf 240 "kasa.perf --throughput --full --tp-compile inductor: padded / length-grouped / packed tokens/s, compile off and on (SmolLM2-135M, commonsense mix)" \
    "$py" -m kasa.perf --throughput --full --tp-compile inductor --out "$out/perf_throughput.md"
part perf_generation perf 120 "kasa.perf --generation --full: plain vs shared-prefix greedy generations/s, eval batch 16 and 64 (SmolLM2-135M, commonsense prompts)" \
    "$py" -m kasa.perf --generation --full --out "$out/perf_generation.md"

declare -A compose_status compose_reason
if [ "$dry" = 1 ]; then
    "$py" -m kasa.perf.gpu_check "$out/compose_checks.tsv" > "$out/compose_checks.txt" 2> "$out/compose_checks.log"
    compose_rc=$?
    while IFS=$'\t' read -r name status reason; do
        compose_status[$name]=$status; compose_reason[$name]=$reason
    done < "$out/compose_checks.txt"
fi

{
    echo "# GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo
    echo "- folder: $out"
    echo "- mode: $([ "$dry" = 1 ] && echo "dry (nothing run; kasa-train commands composed and validated)" || echo "run, budget ${budget} s")"
    echo "- git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
    echo "- python: $py ($("$py" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch"))"
    echo "- device: $( (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo none) | paste -sd ';')"
    echo
    echo "| part | what | exit code | wall (s) | status | log |"
    echo "|---|---|---:|---:|---|---|"
} > "$out/summary.md"

start=$(date +%s)
failed=0
for i in "${!names[@]}"; do
    name=${names[$i]} kind=${kinds[$i]} cmd=${cmds[$i]}
    echo "== $name: $cmd"
    if [ "$dry" = 1 ]; then
        rc="" wall=""
        if [ "$kind" = train ] || [ "$kind" = quant ]; then
            st=${compose_status[$name]:-error} why=${compose_reason[$name]:-no answer from kasa.perf.gpu_check (see compose_checks.log)}
            case "$st" in
                ok) status="dry: composes" ;;
                *) status="dry: does not compose ($why)"; failed=1 ;;
            esac
            echo "   $status"
        else
            status="dry: not run"
        fi
        echo "$cmd" > "$out/$name.log"
    else
        left=$(( budget - ($(date +%s) - start) ))
        limit=${limits[$i]}
        [ "$left" -lt "$limit" ] && limit=$left
        if [ "$limit" -lt 20 ]; then
            rc="" wall="" status="skipped (budget of ${budget} s spent)"
            echo "$cmd" > "$out/$name.log"
        else
            t0=$(date +%s.%N)
            { echo "\$ $cmd"; echo; } > "$out/$name.log"
            timeout --kill-after=15 "$limit" bash -c "$cmd" >> "$out/$name.log" 2>&1
            rc=$?
            wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
            case "$rc" in
                0) status="ok" ;;
                124|137) status="timeout after ${limit} s"; failed=1 ;;
                *) status="failed"; failed=1 ;;
            esac
        fi
        echo "   $status${rc:+ (exit $rc, $wall s)}"
    fi
    echo "| $name | ${descs[$i]} | ${rc:--} | ${wall:--} | $status | $name.log |" >> "$out/summary.md"
done
if [ "$dry" = 0 ]; then
    echo >> "$out/summary.md"
    echo "total wall: $(( $(date +%s) - start )) s" >> "$out/summary.md"
fi
echo "summary: $out/summary.md"
exit "$failed"
