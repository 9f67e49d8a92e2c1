"""Timing: CUDA events on the GPU, a wall clock on the CPU; warm-up first, every repeat kept.

Each repeat calls the next of several copies of the inputs (a rotation), so that the inputs of one call
are not still in the cache from the previous one: enough copies to overflow the last-level cache
(the GPU's L2, the CPU's L3) twice, when memory allows.
"""
from __future__ import annotations

import itertools
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

MAX_SETS = 256   # rotation copies at most; tiny cases stay small in memory


def rotation_sets(set_bytes: int, cache_bytes: int | None) -> int:
    """How many copies of the inputs to rotate through so that they overflow the cache twice."""
    if not cache_bytes or set_bytes <= 0:
        return 1
    return max(1, min(MAX_SETS, math.ceil(2 * cache_bytes / set_bytes)))


def cpu_cache_bytes() -> int | None:
    """The size of the CPU's largest cache (Linux sysfs); None where it cannot be read."""
    sizes = []
    for entry in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = entry.read_text().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=None)


def gpu_cache_bytes() -> int:
    from cupy.cuda import runtime
    return int(runtime.getDeviceProperties(runtime.getDevice())["l2CacheSize"])


def time_cpu(calls: list[Callable[[], None]], *, repeats: int, warmup: int,
             max_seconds: float) -> np.ndarray:
    """Milliseconds of each repeat, by the wall clock, cycling through `calls`.

    Stops early (keeping at least one repeat) once the repeats have used up max_seconds.
    """
    rotation = itertools.cycle(calls)
    for _ in range(warmup):
        next(rotation)()
    times = []
    spent = 0.0
    for _ in range(repeats):
        call = next(rotation)
        start = time.perf_counter()
        call()
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1e3)
        spent += elapsed
        if spent > max_seconds:
            break
    return np.asarray(times)


def time_gpu(calls: list[Callable[[], None]], *, repeats: int, warmup: int,
             max_seconds: float) -> np.ndarray:
    """Milliseconds of each repeat between CUDA events around the call (cupyx.profiler.benchmark).

    The events go on CuPy's current stream, the one our kernels, CuPy and torch all launch on by
    default; benchmark() waits for the end event after every repeat, so repeats never overlap.
    """
    from cupyx.profiler import benchmark
    rotation = itertools.cycle(calls)
    result = benchmark(lambda: next(rotation)(), n_repeat=repeats, n_warmup=warmup,
                       max_duration=max_seconds, name="case")
    return np.asarray(result.gpu_times[0]) * 1e3
