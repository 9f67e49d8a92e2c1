#!/usr/bin/env bash
# The GPU checks, for a fresh GPU machine without network, run from the source tree:
#
#     bench/gpu_check.sh OUTDIR          (PYTHON=... picks the interpreter; it needs numpy, cupy,
#                                         ml_dtypes and pytest; compute-sanitizer is optional)
#
#   machine      nvidia-smi: the card and driver
#   compile      every kernel instantiation into CuPy's kernel cache, 8 processes at a time
#   pytest       the API suite on the cuda backend (pytest -m gpu)
#   launch-all   every kernel instantiation once, results checked (bench/gpu_sanitize.py)
#   memcheck     the same launches under compute-sanitizer --tool memcheck
#   racecheck    the launches without split-K (the same shared-memory code) under --tool racecheck
#   determinism  a whole layer step ten times, bitwise identical outputs (bench/gpu_check.py)
#   speed        ours vs cupy.matmul at 4096³, float32, TF32 off (bench/gpu_check.py)
#   torch        nn.Linear vs linear.torch.Linear, forward + backward (bench/torch_linear.py; needs a CUDA
#                torch, which also runs the torch tests of the pytest step)
#
# Each step has a time limit (together under 6 minutes) and a failing step does not stop the others.
# OUTDIR gets gpu_check.log (everything printed), gpu_check.json (all results, card, date, commit)
# and the steps' own files. Exit status 0 only when every step passed.
set -u -o pipefail

OUT=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUPY_TF32=0  # cuBLAS in true float32, as our kernels compute
PY=${PYTHON:-python3}
LOG="$OUT/gpu_check.log"
: >"$LOG"
: >"$OUT/steps.tsv"

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with a time limit, appends its output to the log,
# records its exit status and duration in steps.tsv.
step() {
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    status=$?
    echo "=== $name: exit $status after $((SECONDS - start))s" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" >>"$OUT/steps.tsv"
}

step machine 15 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
    | tee '$OUT/nvidia-smi.csv' && nvidia-smi"
step compile 65 "$PY" bench/gpu_sanitize.py --compile-only --jobs 8
step pytest 80 "$PY" -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors \
    --junitxml="$OUT/pytest.xml" tests
step launch-all 40 "$PY" bench/gpu_sanitize.py

SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$SANITIZER" ]; then
    step memcheck 55 "$SANITIZER" --tool memcheck --leak-check no --error-exitcode 1 "$PY" bench/gpu_sanitize.py
    step racecheck 50 "$SANITIZER" --tool racecheck --error-exitcode 1 "$PY" bench/gpu_sanitize.py --splits 1
else
    echo "=== compute-sanitizer not found: memcheck and racecheck not run" | tee -a "$LOG"
    printf 'compute-sanitizer-missing\t127\t0\n' >>"$OUT/steps.tsv"
fi

step determinism 25 "$PY" bench/gpu_check.py determinism "$OUT/determinism.json"
step speed 30 "$PY" bench/gpu_check.py speed "$OUT/speed.json"
if "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    step torch 40 "$PY" bench/torch_linear.py "$OUT/torch_linear.json"
else
    # logged, not a failed step: the GPU machines need not have torch
    echo "=== no CUDA build of torch: bench/torch_linear.py not run (the torch tests skip too)" | tee -a "$LOG"
fi

"$PY" bench/gpu_check.py summary "$OUT" | tee -a "$LOG"
