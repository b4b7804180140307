#!/usr/bin/env bash
# The checks a CUDA machine can make and a CPU cannot, in one run of about 8 minutes:
#   1. the CUDA-marked tests (repeated rows on the GPU, pinned non-blocking copies, ...)
#   2. the benchmark on the GPU: Wikipedia epoch seconds and evaluation interactions/s of
#      JODIE and LiMNet, float32 beside bf16-mixed, into bench/gpu/results.md (card named)
#   3. the fast test suite with CUDA visible (trainer accelerator "auto" picks the GPU)
# Every step has its own time limit and its log under bench/gpu/, so a step that overruns
# leaves the others' results. Usage: scripts/gpu_check.sh  (from anywhere in the repo)
set -u
cd "$(dirname "$0")/.."
GPU_DIR=bench/gpu
mkdir -p "$GPU_DIR"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
status=0

step() {  # step <name> <seconds> <command...>: run, log, record the exit code
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local start=$SECONDS
    # SIGINT first: the benchmark then kills its case's process group as it stops
    timeout -s INT -k 15 "$limit" "$@" >"$GPU_DIR/$name.log" 2>&1
    local code=$?
    echo "$name: exit $code after $((SECONDS - start)) s" | tee -a "$GPU_DIR/summary.txt"
    tail -n 5 "$GPU_DIR/$name.log"
    [ "$code" -eq 0 ] || status=1
}

: >"$GPU_DIR/summary.txt"
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$GPU_DIR/card.txt"
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to torch: nothing to check" | tee -a "$GPU_DIR/summary.txt"
    exit 1
fi

step cuda_tests 60 python -m pytest -q -m cuda -p no:cacheprovider
step bench 300 python bench/run.py --device cuda --models jodie limnet --shapes wikipedia \
    --samplers tbatch --no-scaling --time-limit 150 --out "$GPU_DIR"
if [ -f "$GPU_DIR/results.md" ]; then  # the card, as nvidia-smi names it, above the tables
    {
        head -n 1 "$GPU_DIR/results.md"
        echo
        echo "GPU (nvidia-smi: name, memory, driver): $(head -n 1 "$GPU_DIR/card.txt")."
        tail -n +2 "$GPU_DIR/results.md"
    } >"$GPU_DIR/results.md.part" && mv "$GPU_DIR/results.md.part" "$GPU_DIR/results.md"
fi
step fast_tests 150 python -m pytest -m "not slow" -q -x -p no:cacheprovider

# on a lent machine, hand the results back through $OUT
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
    cp -r "$GPU_DIR" "$OUT/"
fi
cat "$GPU_DIR/summary.txt"
exit $status
