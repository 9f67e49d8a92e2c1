#!/usr/bin/env bash
# The whole GPU session as ONE device call, under one deadline, losing nothing it measured:
#
#     bench/gpu_session.sh OUTDIR [--archive-only]
#
# Results go straight into OUTDIR/<date>-<card>/ as the phases write them. After every phase the folder
# is packed into OUTDIR/<date>-<card>.tar.gz and OUTDIR/summary.txt is rewritten (each through a rename,
# never half-written). --archive-only removes the folder at the end, leaving the archive and the summary
# (the device tool brings back at most 8 files). Unpack the archive under bench/results/ and commit it.
#
# One deadline (DEADLINE_S, default 540 s after the start): each phase gets min(its own limit, the time
# left - MARGIN_S) and is not started with under MIN_S (5) left; at its limit it is sent SIGINT, so that
# it can write what it has, and GRACE_S later
# SIGKILL. A phase that fails does not stop the others; only a failed preflight stops the session (kernels
# that cannot compile make every later phase pointless). A tool that refuses the device (compute-sanitizer
# "Device not supported", ncu without counter permission) is recorded as "refused", not as a failure.
set -u -o pipefail

# The phases, in order, as name:limit_seconds. Each is a function phase_<name>, run from the repository
# root with $R (the results folder), $PY and $LIMIT (its time limit) set. Add a phase here and below;
# GPU_SESSION_PHASES names a bash file sourced after these definitions that may redefine them (tests).
PHASES=(preflight:60 compile:60 tests:90 bench:100 bench_half:80 bench_tf32:50 tc_tiles:45 wgmma:90 activation:45
        sweep:100 determinism:30 counters:60 launch_all:30 memcheck:50 racecheck:45 torch_linear:40)

phase_preflight() {   # the tests' own dependencies (one missing is a collection error, and pytest then runs
    # no test at all), then versions, GPU, driver, include dirs, one kernel
    "$PY" -c 'import sys
missing = []
for name in ("pytest", "xdist", "hypothesis", "ml_dtypes"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit("preflight: STOP: the tests need " + ", ".join(missing) + ": pip install .[test]")' &&
    "$PY" bench/gpu_check.py preflight "$R"
}
phase_compile()     { "$PY" bench/gpu_sanitize.py --compile-only --jobs 8; }   # every instantiation, into CuPy's cache
phase_tests()       { "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$R/pytest.xml" tests; }
phase_bench()       { "$PY" -m bench --quick --backends linear-cuda,cublas,torch-gpu --out "$R/bench"; }
phase_bench_half()  { "$PY" -m bench --quick --dtype bfloat16,float16 --shape 2048,768,50257 \
                        --backends linear-cuda,cublas,torch-gpu --out "$R/bench-half"; }   # + a vocabulary: unaligned rows
phase_bench_tf32()  { "$PY" -m bench --quick --tf32 --backends linear-cuda,cublas,torch-gpu --out "$R/bench-tf32"; }
phase_tc_tiles()    { "$PY" bench/gpu_check.py tc_tiles "$R/tc_tiles.json"; }   # tc_wide (candidate) beside tc_large
phase_wgmma()       { "$PY" bench/gpu_check.py wgmma "$R/wgmma.json"; }   # the Hopper kernel beside tc_*, cuBLAS, torch
phase_activation()  {   # the Linear+activation training step, fused against unfused (issue 22's Measure)
    "$PY" -m bench.activation --backend cuda --dtype bfloat16 --shape 8192,4096,11008 --shape 4096,4096,4096 \
        --activation relu --activation gelu --repeats 10 --json "$R/activation.json"
}
phase_sweep()       { "$PY" -m bench.sweep --budget-s $((LIMIT - 20)) --out "$R/sweep"; }
phase_determinism() { "$PY" bench/gpu_check.py determinism "$R/determinism.json"; }
phase_counters() {   # Nsight Compute: the main kernels at 4096³ and cuBLAS's (nvjet_* on Hopper), the sections that explain speed
    ncu --target-processes all --kernel-name regex:'linear_|gemm|cutlass|nvjet' --launch-count 12 --section SpeedOfLight \
        --section Occupancy --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
        --section WarpStateStats --export "$R/counters" --force-overwrite "$PY" bench/gpu_check.py profile &&
    ncu --import "$R/counters.ncu-rep" --csv --page raw >"$R/counters.csv" && "$PY" bench/gpu_check.py counters "$R"
}
phase_launch_all()  { "$PY" bench/gpu_sanitize.py; }   # every instantiation once, results checked
# Under compute-sanitizer gpu_sanitize.py turns CuPy's memory pool off (--no-pool), so each array is its own allocation.
phase_memcheck()    { compute-sanitizer --tool memcheck --leak-check no --error-exitcode 1 "$PY" bench/gpu_sanitize.py --no-pool; }
phase_racecheck()   { compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" bench/gpu_sanitize.py --splits 1 --no-pool; }
phase_torch_linear() {   # nn.Linear vs linear.torch.Linear; needs a CUDA build of torch, which the machine may lack
    "$PY" -c "import torch; assert torch.cuda.is_available()" || { echo "no CUDA build of torch"; return 0; }
    "$PY" bench/torch_linear.py "$R/torch_linear.json" --shape 8,16,16 --shape 32,784,256 --shape 256,1024,1024 \
        --shape 4096,4096,4096   # small layers show the host cost per step
}
REFUSED='Device not supported|not supported on this (device|GPU|platform)|ERR_NVGPUCTRPERM|permission to access'

OUT=${1:?usage: bench/gpu_session.sh OUTDIR [--archive-only]}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
[ -n "${GPU_SESSION_PHASES:-}" ] && source "$GPU_SESSION_PHASES"
DEADLINE_S=${DEADLINE_S:-540} MARGIN_S=${MARGIN_S:-25} GRACE_S=${GRACE_S:-10} MIN_S=${MIN_S:-5}
export PY=${PYTHON:-python3} PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" CUPY_TF32=0 PYTHONUNBUFFERED=1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '-')
NAME="$(date -u +%Y-%m-%d)-${card:-no-gpu}"
export R="$OUT/$NAME"
mkdir -p "$R"
printf 'phase\tstatus\texit\tseconds\tlimit\tlog\n' >"$R/steps.tsv"

pack() {   # the summary (also into the folder), then the archive; each replaced whole
    { "$PY" bench/gpu_check.py summary "$R" 2>&1 || column -t -s $'\t' "$R/steps.tsv"; } >"$OUT/summary.txt.partial"
    cp "$OUT/summary.txt.partial" "$R/summary.txt" && mv -f "$OUT/summary.txt.partial" "$OUT/summary.txt"
    tar -czf "$OUT/$NAME.tar.gz.partial" -C "$OUT" "$NAME" && mv -f "$OUT/$NAME.tar.gz.partial" "$OUT/$NAME.tar.gz"
}

STOP=""   # why the remaining phases do not run
NOT_OK=0
STEP_PID=""
on_signal() { STOP="the session itself was interrupted"; [ -n "$STEP_PID" ] && kill -INT "$STEP_PID" 2>/dev/null; }
trap on_signal INT TERM

for phase in "${PHASES[@]}"; do
    name=${phase%%:*} own=${phase##*:}
    left=$((DEADLINE_S - SECONDS - MARGIN_S))
    export LIMIT=$((own < left ? own : left))
    if [ -n "$STOP" ] || [ "$LIMIT" -lt $((own < MIN_S ? own : MIN_S)) ]; then   # too little time to be of use
        printf '%s\tnot run\t-\t0\t%s\t%s\n' "$name" "$own" "${STOP:-no time left before the deadline}" >>"$R/steps.tsv"
        NOT_OK=$((NOT_OK + 1))
        continue
    fi
    echo "=== $name (limit ${LIMIT}s of its ${own}s, ${left}s left)"
    start=$SECONDS
    export -f "phase_$name"
    # Its own process group under timeout: SIGINT at the limit reaches every process of the phase.
    timeout -s INT -k "$GRACE_S" "$LIMIT" bash -c "phase_$name" >"$R/$name.log" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID"; code=$?
    while kill -0 "$STEP_PID" 2>/dev/null; do wait "$STEP_PID"; code=$?; done   # woken by a signal: wait on
    STEP_PID=""
    why="$name.log"
    case $code in
        0) status=ok ;;
        124|137) status=timeout; why="$name.log: stopped at its ${LIMIT}s limit" ;;
        127) status=missing; why="$name.log: $(tail -n 1 "$R/$name.log")" ;;
        *) status=failed ;;
    esac
    if [ "$code" != 0 ] && refusal=$(grep -m 1 -E "$REFUSED" "$R/$name.log"); then
        status=refused; why="$name.log: ${refusal:0:150}"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$code" "$((SECONDS - start))" "$LIMIT" "$why" >>"$R/steps.tsv"
    case $status in ok|refused|missing) ;; *) NOT_OK=$((NOT_OK + 1)) ;; esac
    echo "=== $name: $status (exit $code) after $((SECONDS - start))s"
    if [ "$name" = preflight ] && [ "$status" != ok ]; then
        STOP="stopped after the failed preflight"
        echo "gpu_session: STOP: $(tail -n 1 "$R/preflight.log")"
    fi
    pack
done
pack
[ "${2:-}" = --archive-only ] && [ -s "$OUT/$NAME.tar.gz" ] && rm -rf "$R"
cat "$OUT/summary.txt"
exit $((NOT_OK > 0))   # 0 only when every phase ran and passed, or was refused or missing a tool
