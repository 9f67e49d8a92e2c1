"""What the benchmark ran on, and the peak throughput of the cards whose peak we know."""
from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Dense peak TFLOP/s per dtype, from NVIDIA's "H100 Tensor Core GPU Architecture" whitepaper (table
# "NVIDIA H100 SXM5" column: FP32 66.9, FP64 Tensor Core 66.9, FP16/BF16 Tensor Core 989.4 without
# sparsity) and the H200 datasheet (the same compute as H100 SXM: FP32 67, FP64 Tensor 67, FP16/BF16
# Tensor 1979 with sparsity = 989.5 dense). FP64 is the tensor-core peak because cuBLAS's DGEMM runs
# on the FP64 tensor cores (the plain FP64 peak, 33.5, would put cuBLAS above 100 %).
# H100 PCIe / NVL and H200 NVL run at lower clocks and are left out.
_HOPPER_SXM = {"float32": 66.9, "float64": 66.9, "float16": 989.4, "bfloat16": 989.4}
PEAK_TFLOPS = {"H100 SXM": _HOPPER_SXM, "H200 SXM": _HOPPER_SXM}


def card_model(gpu_name: str, multiprocessors: int) -> str | None:
    """The key of PEAK_TFLOPS for this GPU, or None when its peak is not known here."""
    if "PCIE" in gpu_name.upper() or "NVL" in gpu_name.upper() or multiprocessors != 132:
        return None
    for model in ("H100", "H200"):
        if model in gpu_name:
            return f"{model} SXM"
    return None


def _run(command: list[str]) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> dict:
    try:
        config = np.show_config(mode="dicts")["Build Dependencies"]
        return {key: config[key] for key in ("blas", "lapack") if key in config}
    except Exception:  # numpy < 1.25 has no mode="dicts"
        return {}


def _version(ver: int) -> str:
    """CUDA's integer version (12040) as text (12.4)."""
    return f"{ver // 1000}.{ver % 1000 // 10}"


def gpu_info() -> dict | None:
    """Name, driver, CUDA and CuPy versions of GPU 0; None without CuPy or a GPU."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() == 0:
            return None
    except Exception:
        return None
    runtime = cupy.cuda.runtime
    props = runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"])
    info = {
        "name": name,
        "compute_capability": f"{props['major']}.{props['minor']}",
        "multiprocessors": int(props["multiProcessorCount"]),
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "l2_cache_mib": round(props["l2CacheSize"] / 2**20, 1),
        "driver": driver or "unknown (nvidia-smi not found)",
        "cuda_driver_api": _version(runtime.driverGetVersion()),
        "cuda_runtime": _version(runtime.runtimeGetVersion()),
        "cupy": cupy.__version__,
        "cupy_tf32": os.environ.get("CUPY_TF32", "unset (off)"),
    }
    info["peak_model"] = card_model(name, info["multiprocessors"])
    return info


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    commit = _run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    if commit and _run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"]):
        commit += " (with uncommitted changes)"
    return commit


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all CPUs since boot, from /proc/stat; None elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return values[3] + values[4], sum(values[:8])   # idle + iowait; user..steal


def load_check(seconds: float = 0.5) -> dict:
    """How busy the machine is with other work, just before (or after) the run: the 1-minute load
    average, and the share of all CPUs busy over `seconds` while this process sleeps (Linux)."""
    cpus = os.cpu_count() or 1
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    before = _cpu_times()
    time.sleep(seconds if before else 0)
    after = _cpu_times()
    busy = None
    if before and after and after[1] > before[1]:
        busy = round(1 - (after[0] - before[0]) / (after[1] - before[1]), 2)
    # Busy: more than a quarter of the cores in use by others, measured now; the load average, which lags
    # a minute behind (and counts work that has just ended), only where nothing can be measured.
    is_busy = busy > 0.25 if busy is not None else load is not None and load > 0.25 * cpus
    return {"load_average_1min": load, "cpu_count": cpus, "busy_fraction": busy, "busy": is_busy}


def describe_load(check: dict) -> str:
    busy = check["busy_fraction"]
    measured = (f"{busy * check['cpu_count']:.1f} of {check['cpu_count']} logical cores busy with other work"
                if busy is not None else f"{check['cpu_count']} logical cores")
    return f"{'BUSY' if check['busy'] else 'quiet'}: {measured}, load average {check['load_average_1min']} (1 min)"


def machine_info(torch_version: str | None) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": blas_info(),
        "gpu": gpu_info(),
        "linear_commit": _git_commit(),
    }
    if torch_version:
        info["torch"] = torch_version
    return info


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_label(info: dict) -> str:
    """A short name for directories: the GPU's name, else cpu-<CPU model>."""
    if info["gpu"]:
        return slug(info["gpu"]["name"].removeprefix("NVIDIA "))
    return "cpu-" + slug(info["cpu"])
