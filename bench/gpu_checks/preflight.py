"""What a GPU session runs on (versions, GPU, driver, CUDA include dirs, tools), then one kernel compiled,
run and checked: exit STOP, with one line saying why, when it cannot be (nothing else can run then)."""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.gpu_checks import write_json

STOP = 3   # preflight's exit status when nothing else can run: the session stops early


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
