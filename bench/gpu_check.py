"""The Python steps of bench/gpu_check.sh.

    PYTHONPATH=. python bench/gpu_check.py determinism OUT.json [--backend cuda|emulate] [--scale S]
    PYTHONPATH=. python bench/gpu_check.py speed OUT.json [--size 4096]
    PYTHONPATH=. python bench/gpu_check.py summary OUTDIR

determinism: one layer step (forward with bias, dX, dW accumulated, db, and a split-K dW) ten times;
             every output must be bitwise identical across the runs.
speed:       our GEMM against cupy.matmul (cuBLAS) for NN, NT and TN at size³, float32; run with
             CUPY_TF32=0 so that cuBLAS computes in true float32 as we do.
summary:     merges the steps' results in OUTDIR into OUTDIR/gpu_check.json.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

from linear.backends import get_backend

RUNS = 10
PRODUCTS = {"NN": (False, False), "NT": (False, True), "TN": (True, False)}


def digest(x) -> str:
    return hashlib.sha256((x.get() if hasattr(x, "get") else np.asarray(x)).tobytes()).hexdigest()


def layer_step(backend, x, w, b, dy, x_long, dy_long) -> dict[str, str]:
    """The digests of one layer step's outputs, each computed into fresh NaN-filled arrays."""
    xp = backend.xp
    y = xp.full((x.shape[0], w.shape[1]), np.nan, np.float32)
    backend.gemm(x, w, y, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=b)
    dx = xp.full(x.shape, np.nan, np.float32)
    backend.gemm(dy, w, dx, trans_a=False, trans_b=True, alpha=1.0, beta=0.0)
    dw = xp.ones(w.shape, np.float32)  # accumulate onto an existing gradient
    backend.gemm(x, dy, dw, trans_a=True, trans_b=False, alpha=1.0, beta=1.0)
    db = xp.ones(w.shape[1], np.float32)
    backend.colsum(dy, db, beta=1.0)
    dw_split = xp.full((x_long.shape[1], dy_long.shape[1]), np.nan, np.float32)  # K >> M·N: split-K
    backend.gemm(x_long, dy_long, dw_split, trans_a=True, trans_b=False, alpha=1.0, beta=0.0)
    return {name: digest(value) for name, value in
            [("y", y), ("dx", dx), ("dw", dw), ("db", db), ("dw_split_k", dw_split)]}


def determinism(out: Path, backend_name: str, scale: float) -> bool:
    backend = get_backend(backend_name)
    xp = backend.xp
    rng = np.random.default_rng(0)

    def array(*shape: int):
        return xp.asarray(rng.standard_normal([max(1, int(s * scale)) for s in shape]).astype(np.float32))

    batch, features, outputs, long_batch, narrow = 4096, 1024, 1024, 65536, 256
    x, w, b, dy = array(batch, features), array(features, outputs), array(outputs), array(batch, outputs)
    x_long, dy_long = array(long_batch, narrow), array(long_batch, narrow)
    runs = [layer_step(backend, x, w, b, dy, x_long, dy_long) for _ in range(RUNS)]
    identical = {name: len({run[name] for run in runs}) == 1 for name in runs[0]}
    result = {"runs": RUNS, "backend": backend_name, "identical": identical, "ok": all(identical.values()),
              "shapes": {"x": list(x.shape), "w": list(w.shape), "x_split_k": list(x_long.shape)}}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result["ok"]


def speed(out: Path, size: int) -> bool:
    import cupy
    from cupyx.profiler import benchmark

    backend = get_backend("cuda")
    a = cupy.random.standard_normal((size, size), dtype=cupy.float32)
    b = cupy.random.standard_normal((size, size), dtype=cupy.float32)
    ours, theirs = cupy.empty_like(a), cupy.empty_like(a)
    flops = 2.0 * size**3
    results = {}
    for product, (trans_a, trans_b) in PRODUCTS.items():
        op_a, op_b = (a.T if trans_a else a), (b.T if trans_b else b)

        def run_ours():
            backend.gemm(a, b, ours, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.0)

        def run_theirs():
            cupy.matmul(op_a, op_b, out=theirs)

        seconds = {}
        for name, run in (("ours", run_ours), ("cupy.matmul", run_theirs)):
            timing = benchmark(run, n_repeat=20, n_warmup=3)
            seconds[name] = float(np.median(timing.gpu_times[0]))
        err = float(cupy.linalg.norm(ours - theirs) / cupy.linalg.norm(theirs))
        results[product] = {
            "ours_ms": 1e3 * seconds["ours"], "cupy_ms": 1e3 * seconds["cupy.matmul"],
            "ours_tflops": flops / seconds["ours"] / 1e12, "cupy_tflops": flops / seconds["cupy.matmul"] / 1e12,
            "time_ratio_ours_over_cupy": seconds["ours"] / seconds["cupy.matmul"], "rel_err_vs_cupy": err,
        }
    result = {"size": size, "dtype": "float32", "tf32": False, "products": results,
              "timer": "cupyx.profiler.benchmark, median GPU time of 20 runs after 3 warm-up runs",
              "ok": all(r["rel_err_vs_cupy"] <= 1e-5 for r in results.values())}
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result["ok"]


def summary(outdir: Path) -> bool:
    steps = {}
    for line in (outdir / "steps.tsv").read_text().splitlines():
        name, status, seconds = line.split("\t")
        steps[name] = {"exit": int(status), "seconds": int(seconds)}
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "commit": _git("rev-parse", "HEAD"), "tree_modified": bool(_git("status", "--porcelain")),
                    "steps": steps}
    card = outdir / "nvidia-smi.csv"
    if card.exists():
        result["card"] = card.read_text().strip()
    junit = outdir / "pytest.xml"
    if junit.exists():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        result["pytest"] = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    for part in ("determinism", "speed"):
        path = outdir / f"{part}.json"
        if path.exists():
            result[part] = json.loads(path.read_text())
    result["ok"] = bool(steps) and all(step["exit"] == 0 for step in steps.values())
    (outdir / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result["ok"]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("determinism")
    command.add_argument("out", type=Path)
    command.add_argument("--backend", default="cuda", choices=["cuda", "emulate"])
    command.add_argument("--scale", type=float, default=1.0, help="shrink every dimension (for the emulator)")
    command = commands.add_parser("speed")
    command.add_argument("out", type=Path)
    command.add_argument("--size", type=int, default=4096)
    command = commands.add_parser("summary")
    command.add_argument("outdir", type=Path)
    args = parser.parse_args()
    if args.command == "determinism":
        ok = determinism(args.out, args.backend, args.scale)
    elif args.command == "speed":
        ok = speed(args.out, args.size)
    else:
        ok = summary(args.outdir)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
