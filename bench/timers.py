"""Timing: one call at a time, contenders interleaved (A B A B …), warm-up first, every repeat kept.

Interleaving makes other work on the machine hit every contender alike, so a ratio taken round by
round stays fair on a busy machine. Each repeat calls the next of several copies of the inputs (a
rotation), so that one call's inputs are not still in the cache from the previous one: enough copies
to overflow the last-level cache (the GPU's L2, the CPU's L3) twice, when memory allows.
"""
from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

MAX_SETS = 256   # rotation copies at most; tiny cases stay small in memory

stop_requested = threading.Event()   # set by a signal handler: the run ends after the call in flight


class Interrupted(Exception):
    """The run was asked to stop (stop_requested); raised between calls, never inside one."""


def stop_point() -> None:
    if stop_requested.is_set():
        raise Interrupted


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


def cpu_ms(call: Callable[[], None]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def gpu_ms(call: Callable[[], None]) -> float:
    """CUDA events around one call on CuPy's current stream (the one our kernels, CuPy and torch launch
    on by default); cupyx.profiler.benchmark waits for the end event, so calls never overlap."""
    from cupyx.profiler import benchmark
    return float(benchmark(call, n_repeat=1, n_warmup=0).gpu_times[0][0]) * 1e3


@dataclass
class Entry:
    """One contender's calls (a rotation over input copies), its clock and its limits."""
    calls: list[Callable[[], None]]
    clock: Callable[[Callable[[], None]], float]
    repeats: int
    warmup: int
    max_seconds: float                  # stop timing it once its repeats have used this up
    times_ms: list[float] = field(default_factory=list)


def time_interleaved(entries: list[Entry]) -> None:
    """Fills each entry's times_ms: warm-up calls, then rounds that time every entry still running once.

    An entry stops after its repeats, or once its timed calls have used up its max_seconds (at least
    one call is always timed). Round i of every entry ran at the same moment as round i of the others.
    """
    rotations = [itertools.cycle(entry.calls) for entry in entries]
    for entry, rotation in zip(entries, rotations):
        for _ in range(entry.warmup):
            stop_point()
            next(rotation)()
    while True:
        running = [(entry, rotation) for entry, rotation in zip(entries, rotations)
                   if len(entry.times_ms) < entry.repeats
                   and (not entry.times_ms or sum(entry.times_ms) < entry.max_seconds * 1e3)]
        if not running:
            return
        for entry, rotation in running:
            stop_point()
            entry.times_ms.append(entry.clock(next(rotation)))


def pin_threads(threads: int) -> dict:
    """Limits the BLAS and OpenMP thread pools (threadpoolctl) to `threads` for the rest of the run;
    0 leaves the libraries' defaults. Returns what was asked and what each pool now uses."""
    record: dict = {"requested": threads or "library default"}
    torch = sys.modules.get("torch")   # torch's own pool: only when a torch contender was loaded
    if torch is not None and threads:
        torch.set_num_threads(threads)
    try:
        import threadpoolctl
    except ImportError:
        record["pinned"] = False
        record["why"] = "threadpoolctl is not installed (pip install 'linear[bench]'): thread pools not pinned"
        return record
    if threads:
        threadpoolctl.threadpool_limits(limits=threads)   # not as a context: for the rest of the run
    record["pinned"] = bool(threads)
    record["pools"] = [{key: pool.get(key) for key in ("user_api", "internal_api", "num_threads", "version")}
                       for pool in threadpoolctl.threadpool_info()]
    return record
