"""The command line of the Python steps of bench/gpu_session.sh (run from the repository root with
PYTHONPATH=.); each job is a module of bench/gpu_checks/.

    python bench/gpu_check.py preflight OUTDIR      versions, GPU, driver, CUDA include dirs, tools; one
                                                    kernel compiled and checked (exit 3, one line, if not)
    python bench/gpu_check.py determinism OUT.json [--backend cuda|emulate] [--scale S]
    python bench/gpu_check.py profile               the main kernels once at 4096³ (for Nsight Compute)
    python bench/gpu_check.py counters OUTDIR       counters.csv (ncu's raw page) -> counters.json
    python bench/gpu_check.py summary OUTDIR        the readable summary of a session folder

    python bench/gpu_check.py tc_tiles OUT.json [--backend cuda|emulate] [--scale S]
    python bench/gpu_check.py wgmma OUT.json [--backend cuda|emulate] [--scale S]

determinism: one layer step (forward with bias, dX, dW accumulated, db, and a split-K dW) ten times;
             every output must be bitwise identical across the runs.
tc_tiles:    every tensor-core configuration, candidates included, in bfloat16 on the layer's three
             products at TC_TILE_SHAPES, beside cuBLAS (cupy.matmul): each result checked against float64
             first, then the median of device-event times (the wall clock on the emulator).
wgmma:       the Hopper kernel (both tile shapes) beside tc_large, tc_wide, the plan's own choice, cuBLAS
             and torch, in bfloat16 and float16 at WGMMA_SHAPES (M, N, K); the same checks and times.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# command -> (module of bench/gpu_checks, function); a module is imported only for its own command (summary
# runs after every phase of the session and needs no numpy).
JOBS = {"preflight": ("preflight", "preflight"), "determinism": ("determinism", "determinism"),
        "profile": ("counters", "profile"), "counters": ("counters", "counters"), "summary": ("summary", "summary"),
        "tc_tiles": ("tc_tiles", "tc_tiles"), "wgmma": ("wgmma", "wgmma")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("preflight", "counters", "summary"):
        commands.add_parser(name).add_argument("outdir", type=Path)
    commands.add_parser("profile")
    for name in ("determinism", "tc_tiles", "wgmma"):
        command = commands.add_parser(name)
        command.add_argument("out", type=Path)
        command.add_argument("--backend", default="cuda", choices=["cuda", "emulate"])
        command.add_argument("--scale", type=float, default=1.0, help="shrink every dimension (for the emulator)")
    args = parser.parse_args()
    module, function = JOBS[args.command]
    job = getattr(importlib.import_module(f"bench.gpu_checks.{module}"), function)
    if args.command in ("determinism", "tc_tiles", "wgmma"):
        return 0 if job(args.out, args.backend, args.scale) else 1
    return job() if args.command == "profile" else job(args.outdir)


if __name__ == "__main__":
    sys.exit(main())
