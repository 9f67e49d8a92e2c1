"""The Python steps of bench/gpu_session.sh (run from the repository root with PYTHONPATH=.).

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
wgmma:       the Hopper kernel (both tile shapes) beside tc_large, tc_wide, the plan's own choice, cuBLAS and torch, in bfloat16
             and float16, C = A·B at WGMMA_SHAPES (M, N, K); the same checks and times. Split-K where its
             tiles fill less than the SMs; rows TMA cannot take (K = 50257: 100,514-byte rows) are
             copied into 16-byte-aligned rows first, as the plan would, and the copy is timed with it.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np

RUNS = 10
STOP = 3   # preflight's exit status when nothing else can run: the session stops early


def write_json(path: Path, value) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


def digest(x) -> str:
    return hashlib.sha256((x.get() if hasattr(x, "get") else np.asarray(x)).tobytes()).hexdigest()


def layer_step(backend, x, w, b, dy, x_long, dy_long) -> dict[str, str]:
    """The digests of one layer step's outputs, each computed into fresh NaN-filled arrays."""
    xp = backend.xp
    y = xp.full((x.shape[0], w.shape[1]), np.nan, np.float32)
    backend.gemm(x, w, y, alpha=1.0, beta=0.0, bias=b)
    dx = xp.full(x.shape, np.nan, np.float32)
    backend.gemm(dy, w.T, dx, alpha=1.0, beta=0.0)
    dw = xp.ones(w.shape, np.float32)  # accumulate onto an existing gradient
    backend.gemm(x.T, dy, dw, alpha=1.0, beta=1.0)
    db = xp.ones(w.shape[1], np.float32)
    backend.colsum(dy, db, beta=1.0)
    dw_split = xp.full((x_long.shape[1], dy_long.shape[1]), np.nan, np.float32)  # K >> M·N: split-K
    backend.gemm(x_long.T, dy_long, dw_split, alpha=1.0, beta=0.0)
    return {name: digest(value) for name, value in
            [("y", y), ("dx", dx), ("dw", dw), ("db", db), ("dw_split_k", dw_split)]}


def determinism(out: Path, backend_name: str, scale: float) -> bool:
    from linear.backends import get_backend
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
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return result["ok"]


TC_TILE_SHAPES = [(4096, 4096, 4096), (8192, 4096, 11008), (2048, 768, 50257)]  # layer (B, F, D)
TC_TILE_REPEATS = 10
WGMMA_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (8192, 4096, 11008), (2048, 768, 50257)]  # M, N, K


def tc_tiles(out: Path, backend_name: str, scale: float) -> bool:
    import ml_dtypes
    from linear.backends import get_backend, tiles
    from linear.backends.kernel import KernelBackend
    from linear.backends.plan import Tuning
    from linear.testing import TOLERANCE, relative_error
    from bench.timers import cpu_ms, gpu_ms
    runtime = get_backend(backend_name).runtime
    xp, on_gpu = runtime.xp, backend_name == "cuda"
    clock, repeats = (gpu_ms, TC_TILE_REPEATS) if on_gpu else (cpu_ms, 1)
    rng = np.random.default_rng(0)
    rows, results = 64, []
    for shape in TC_TILE_SHAPES:
        b, f, d = (max(16, int(n * scale)) for n in shape)
        host = {name: rng.uniform(-1, 1, dims).astype(ml_dtypes.bfloat16)
                for name, dims in (("x", (b, f)), ("w", (f, d)), ("dy", (b, d)))}
        arrays = {name: xp.asarray(a) for name, a in host.items()}
        for product, left, right, trans_a, trans_b in (("NN", "x", "w", False, False), ("NT", "dy", "w", False, True),
                                                       ("TN", "x", "dy", True, False)):
            a, bm = host[left].astype(np.float64), host[right].astype(np.float64)
            a, bm = (a.T if trans_a else a), (bm.T if trans_b else bm)
            picked = rng.choice(a.shape[0], min(rows, a.shape[0]), replace=False)
            expected = a[picked] @ bm
            m, n = a.shape[0], bm.shape[1]
            contenders = [(c.name, c) for c in tiles.TC_CONFIGS] + ([("cublas", None)] if on_gpu else [])
            for name, config in contenders:
                row = {"shape": [b, f, d], "product": product, "config": name}
                try:
                    c = xp.full((m, n), np.nan, ml_dtypes.bfloat16)
                    op_a = arrays[left].T if trans_a else arrays[left]
                    op_b = arrays[right].T if trans_b else arrays[right]
                    if config is None:
                        call = lambda: xp.matmul(op_a, op_b, out=c)
                    else:
                        backend = KernelBackend(runtime, Tuning(config=name, splits=1))
                        call = lambda: backend.gemm(op_a, op_b, c, alpha=1.0, beta=0.0)
                    call()
                    got = (c.get() if on_gpu else c)[picked].astype(np.float64)
                    row["rel_err"] = float(relative_error(got, expected))
                    if not row["rel_err"] <= TOLERANCE["bfloat16"]:
                        row["error"] = "wrong result: not timed"
                    else:
                        row["median_ms"] = float(np.median([clock(call) for _ in range(repeats)]))
                        row["tflops"] = 2 * m * n * a.shape[1] / row["median_ms"] * 1e-9
                except Exception as e:  # one configuration failing must not lose the others
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                results.append(row)
                print(json.dumps(row), flush=True)
                write_json(out, {"backend": backend_name, "scale": scale, "results": results})
    return all("error" not in row for row in results)


def wgmma(out: Path, backend_name: str, scale: float) -> bool:
    import ml_dtypes
    from linear.backends import get_backend, tiles as families
    from linear.backends.cost import split_k
    from linear.backends.kernel import KernelBackend
    from linear.backends.plan import Tuning
    from linear.testing import TOLERANCE, relative_error
    from bench.timers import cpu_ms, gpu_ms
    runtime = get_backend(backend_name).runtime
    xp, on_gpu = runtime.xp, backend_name == "cuda"
    clock, repeats = (gpu_ms, TC_TILE_REPEATS) if on_gpu else (cpu_ms, 1)
    sms = runtime.device_limits().sms
    torch = None
    if on_gpu:
        try:
            import torch
            torch = torch if torch.cuda.is_available() else None
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    rows, results = 64, []
    for dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        for shape in WGMMA_SHAPES:
            # Scaled down (the emulator), each dimension stays a multiple of 8 as the full shapes are
            # (but K = 50257, whose rows need the aligned copy at any scale).
            m, n, k = (d if scale == 1 else max(16, int(d * scale)) // 8 * 8 + d % 8 for d in shape)
            a = xp.asarray(rng.uniform(-1, 1, (m, k)).astype(dtype))
            b = xp.asarray(rng.uniform(-1, 1, (k, n)).astype(dtype))
            picked = rng.choice(m, min(rows, m), replace=False)
            host_a, host_b = (x.get() if on_gpu else x for x in (a, b))
            expected = host_a[picked].astype(np.float64) @ host_b.astype(np.float64)
            contenders = [(config.name, config) for config in families.WGMMA_CONFIGS]
            contenders += [("tc_large", families.CONFIGS_BY_NAME["tc_large"]),
                           ("tc_wide", families.CONFIGS_BY_NAME["tc_wide"]), ("plan", "plan")]
            contenders += [("cublas", None)] if on_gpu else []
            contenders += [("torch", None)] if torch is not None else []
            for name, config in contenders:
                row = {"dtype": dtype.name, "shape": [m, n, k], "config": name}
                try:
                    c = xp.full((m, n), np.nan, dtype)
                    if isinstance(config, families.WgmmaConfig):
                        # A persistent grid: split K where there are fewer tiles than SMs; rows TMA cannot
                        # take (K = 50257) get the plan's aligned copy.
                        tiles = config.tiles(m, n)
                        splits = min(16, -(-2 * sms // tiles)) if tiles < sms else 1
                        row["splits"] = split_k(k, splits, config.k_depth(dtype.itemsize))[1]
                        row["copied"] = k * dtype.itemsize % 16 != 0
                        backend = KernelBackend(runtime, Tuning(config=config.name, splits=splits))
                    elif config is not None:
                        # tc tiles with one split as before; "plan": the cost model's own choice.
                        backend = KernelBackend(runtime, Tuning() if config == "plan" else Tuning(config=name, splits=1))
                    if config is not None:
                        call = lambda backend=backend: backend.gemm(a, b, c, alpha=1.0, beta=0.0)
                    elif name == "cublas":
                        call = lambda: xp.matmul(a, b, out=c)
                    else:
                        ta, tb, tc = (torch.as_tensor(x, device="cuda") for x in (a, b, c))
                        call = lambda: torch.matmul(ta, tb, out=tc)
                    call()
                    got = (c.get() if on_gpu else c)[picked].astype(np.float64)
                    row["rel_err"] = float(relative_error(got, expected))
                    if not row["rel_err"] <= TOLERANCE[dtype.name]:
                        row["error"] = "wrong result: not timed"
                    else:
                        row["median_ms"] = float(np.median([clock(call) for _ in range(repeats)]))
                        row["tflops"] = 2 * m * n * k / row["median_ms"] * 1e-9
                except Exception as e:  # one contender failing must not lose the others
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                results.append(row)
                print(json.dumps(row), flush=True)
                write_json(out, {"backend": backend_name, "scale": scale, "results": results})
    return all("error" not in row for row in results)


def _tool(command: list[str]) -> str:
    """The last line a tool prints about its version, or why it cannot be used."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return f"not usable ({type(e).__name__})"
    lines = (done.stdout + done.stderr).strip().splitlines() or [""]
    return lines[-1] if done.returncode == 0 else f"not usable (exit {done.returncode}: {lines[-1]})"


def preflight(outdir: Path) -> int:
    """Prints and records what the session runs on, then compiles, runs and checks one kernel."""
    info: dict = {"python": sys.version.split()[0], "CUDA_PATH": os.environ.get("CUDA_PATH")}
    for dist in importlib.metadata.distributions():   # the packages that matter here, those installed
        if dist.metadata["Name"] in ("numpy", "cupy-cuda13x", "cupy-cuda12x", "torch", "ml_dtypes", "pytest"):
            info[dist.metadata["Name"]] = dist.version
    info["nvidia-smi"] = _tool(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    for tool in ("nvcc", "ncu", "compute-sanitizer"):
        info[tool] = _tool([tool, "--version"])
    from bench.machine import gpu_info
    from linear.backends.cuda import cuda_include_dirs
    info["nvrtc_include_dirs"] = cuda_include_dirs()
    info["gpu"] = gpu_info()
    for key, value in info.items():
        print(f"{key:>20}: {value}")
    info["ok"], info["stop"] = False, ""
    try:
        import cupy

        import linear
        rng = np.random.default_rng(0)
        x, w, b = (rng.standard_normal(shape, dtype=np.float32) for shape in ((64, 32), (32, 48), (48,)))
        y = cupy.asnumpy(linear.forward(cupy.asarray(x), cupy.asarray(w), cupy.asarray(b), backend="cuda"))
        error = linear.testing.relative_error(y, x.astype(np.float64) @ w + b)
        info["one_kernel"] = f"a 64x32x48 float32 forward compiled and ran: rel_err {error:.1e}"
        info["ok"] = error <= linear.testing.TOLERANCE["float32"]
        if not info["ok"]:
            info["stop"] = f"kernels compile but compute wrong results ({info['one_kernel']})"
    except Exception as e:   # no CuPy, no GPU, NVRTC or its headers missing: nothing else can run
        first = (str(e).strip().splitlines() or [""])[0][:300]
        info["stop"] = f"kernels cannot compile or run: {type(e).__name__}: {first}"
    write_json(outdir / "preflight.json", info)
    print(info["one_kernel"] if info["ok"] else f"preflight: STOP: {info['stop']}")
    return 0 if info["ok"] else STOP


def profile() -> int:
    """The main kernels once each at 4096³ float32 (forward, dX, dW + db), and cuBLAS's NN for comparison."""
    import cupy

    import linear
    x, w, dy = (cupy.random.standard_normal((4096, 4096), dtype=cupy.float32) for _ in range(3))
    linear.forward(x, w, cupy.zeros(4096, cupy.float32), backend="cuda")
    linear.backward(dy, x, w, backend="cuda")
    cupy.matmul(x, w)
    cupy.cuda.Device().synchronize()
    return 0


# The counters that explain a kernel's speed, picked by pattern from ncu's raw page (names vary a little
# between versions): (label, pattern, how many matches to keep, largest first; 1 keeps a plain value).
COUNTERS = [
    ("duration", r"^gpu__time_duration\.sum$", 1),
    ("achieved_occupancy_pct", r"^sm__warps_active\.avg\.pct_of_peak_sustained_active$", 1),
    ("shared_bank_conflicts", r"^l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_(ld|st)\.sum$", 2),
    ("pipe_utilisation_pct", r"^sm__pipe_(fma\w*|fp64|tensor\w*|alu|lsu)_cycles_active\.avg\.pct_of_peak_sustained_active$", 4),
    ("dram_throughput_pct", r"^(?:gpu__)?dram__throughput\.avg\.pct_of_peak_sustained_elapsed$", 1),
    ("top_stalls", r"^smsp__average_warps?_(?:latency_)?issue_stalled_(?!selected)(\w+?)(?:_per_issue_active)?\.ratio$", 3),
]


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def counters(outdir: Path) -> int:
    """counters.csv (ncu --page raw --csv: a header row, a units row, a row per kernel) -> counters.json."""
    rows = list(csv.reader((outdir / "counters.csv").read_text().splitlines()))
    start = next(i for i, row in enumerate(rows) if "Kernel Name" in row)
    header, units = rows[start], rows[start + 1]
    kernels = []
    for row in rows[start + 2:]:
        values = dict(zip(header, row))
        picked: dict = {"kernel": values.get("Kernel Name", "?")[:100]}
        for label, pattern, keep in COUNTERS:
            found = sorted(((_number(values.get(column, "")), match.group(1) if match.groups() else unit)
                            for column, unit in zip(header, units) if (match := re.match(pattern, column))
                            and _number(values.get(column, "")) is not None), reverse=True)[:keep]
            if found:
                picked[label] = f"{found[0][0]:g} {found[0][1]}" if keep == 1 else {k: v for v, k in found}
        kernels.append(picked)
    write_json(outdir / "counters.json", kernels)
    return 0 if kernels else 1


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def summary(outdir: Path) -> int:
    """Prints what a person reads first: what ran and how it ended, the key figures, and where each file is."""
    steps = [line.split("\t") for line in (outdir / "steps.tsv").read_text().splitlines()[1:]] \
        if (outdir / "steps.tsv").exists() else []
    pre = _read_json(outdir / "preflight.json") or {}
    gpu = pre.get("gpu") or {}
    out = [f"linear GPU session {outdir.name} at commit {_git('rev-parse', '--short', 'HEAD')}"
           + (" (uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else "")]
    if gpu:
        out.append(f"GPU {gpu['name']} (cc {gpu['compute_capability']}, {gpu['multiprocessors']} SMs), driver "
                   f"{gpu['driver']}, CUDA runtime {gpu['cuda_runtime']}, CuPy {gpu['cupy']}, numpy {pre.get('numpy')}, "
                   f"torch {pre.get('torch')}; NVRTC headers {pre.get('nvrtc_include_dirs')}")
    if pre.get("stop"):
        out.append(f"STOPPED EARLY: {pre['stop']}")
    out += ["", f"{'phase':<13} {'status':<9} {'exit':>4} {'s':>4} {'limit':>5}  log / why"]
    out += [f"{name:<13} {status:<9} {code:>4} {secs:>4} {limit:>5}  {why}" for name, status, code, secs, limit, why in steps]
    junit = outdir / "pytest.xml"
    if junit.exists():
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        out.append("\ntests (pytest.xml): " + ", ".join(f"{suite.get(k)} {k}" for k in ("tests", "failures", "errors", "skipped")))
    det = _read_json(outdir / "determinism.json")
    if det:
        out.append(f"determinism (determinism.json): {'bitwise identical' if det['ok'] else 'DIFFERS'} over "
                   f"{det['runs']} runs: {det['identical']}")
    bench = _read_json(outdir / "bench" / "results.json")
    if bench:
        out.append(f"\nbenchmark (bench/results.md){' PARTIAL' if bench.get('partial') else ''}: ours / cublas, "
                   "speed ratio >1 is faster; ? = untrusted (interquartile range shown)")
        for c in bench["cases"]:
            if c["backend"] == "linear-cuda" and c["ratio"] is not None:
                shape = "x".join(str(v) for v in c["shape"].values())
                low, high = c["ratio_iqr"]
                mark = "" if c["ratio_trusted"] else f"?  ({low:.2f}-{high:.2f})"
                out.append(f"  {c['op']:<8} {shape:>16} {c['dtype']:<9} {c['median_ms']:9.3f} ms  {c['ratio']:.2f}x{mark}")
    sweep = _read_json(outdir / "sweep" / "sweep.json")
    if sweep:
        from bench.sweep import recommend
        out += ["", "sweep (sweep/sweep.json):", recommend(sweep)]
    for kernel in _read_json(outdir / "counters.json") or []:
        out.append("" if kernel is None else "counters: " + json.dumps(kernel))
    out += ["", f"files (in {outdir.name}/):"]
    out += [f"  {path.relative_to(outdir)}  {path.stat().st_size} B" for path in sorted(outdir.rglob("*")) if path.is_file()]
    print("\n".join(out))
    return 0


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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
    if args.command in ("determinism", "tc_tiles", "wgmma"):
        run = {"determinism": determinism, "tc_tiles": tc_tiles, "wgmma": wgmma}[args.command]
        return 0 if run(args.out, args.backend, args.scale) else 1
    if args.command == "profile":
        return profile()
    return {"preflight": preflight, "counters": counters, "summary": summary}[args.command](args.outdir)


if __name__ == "__main__":
    sys.exit(main())
