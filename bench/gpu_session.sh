#!/usr/bin/env bash
# Everything a session lent a GPU should run, as ONE device call (the lease is 15 minutes, starts included):
#
#     bench/gpu_session.sh OUTDIR      # from the repository root on the GPU machine; no network needed
#
#   1. bench/gpu_check.sh   GPU tests, sanitizers, determinism, ours vs cupy.matmul at 4096³  (limit 6 min)
#   2. python -m bench.sweep  every tile configuration x NN/NT/TN x shape vs cuBLAS          (limit 2 min)
#   3. python -m bench --quick   the benchmark suite, GPU and CPU backends                   (limit 1.5 min)
#
# Results go into one folder named <date>-<card>, packed as OUTDIR/<date>-<card>.tar.gz (the device tool
# returns at most 8 files), plus OUTDIR/summary.txt. Unpack the archive under bench/results/ and commit it.
set -u -o pipefail

OUT=${1:?usage: bench/gpu_session.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUPY_TF32=0
PY=${PYTHON:-python3}

card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '-')
name="$(date -u +%Y-%m-%d)-${card:-no-gpu}"
WORK=$(mktemp -d)
RESULTS="$WORK/$name"
mkdir -p "$RESULTS"

bench/gpu_check.sh "$RESULTS/gpu_check"; check=$?
timeout --kill-after=10 120 "$PY" -m bench.sweep --budget-s 90 --out "$RESULTS/sweep" \
    >"$RESULTS/sweep.log" 2>&1; sweep=$?
timeout --kill-after=10 90 "$PY" -m bench --quick --out "$RESULTS/bench" >"$RESULTS/bench.log" 2>&1; bench=$?

{
    echo "$name: gpu_check exit $check, sweep exit $sweep, bench exit $bench"
    echo "command: bench/gpu_session.sh OUTDIR at commit $(git rev-parse --short HEAD 2>/dev/null)"
    tail -n 25 "$RESULTS/gpu_check/gpu_check.log" 2>/dev/null
    "$PY" -m bench.sweep --winners "$RESULTS/sweep/sweep.json" 2>&1 | tail -n 30
    grep -E "^(forward|dx|dw|step) " "$RESULTS/bench.log" | head -n 60
} >"$OUT/summary.txt"
tar -czf "$OUT/$name.tar.gz" -C "$WORK" "$name"
cat "$OUT/summary.txt"
[ "$check$sweep$bench" = "000" ]
