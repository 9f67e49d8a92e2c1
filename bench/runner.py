"""Every case, correctness first: run once on fresh inputs, compare with float64, then time.

Each case has a time budget (--max-seconds, per device). The timed repeats stop once they have used
it up (at least one is always timed). Cases run in order of growing B·F·D, so that a contender's
throughput on smaller shapes predicts how long a larger one takes: a case whose check, warm-up and one
repeat would already exceed the budget is skipped, and reported as such, instead of running for
minutes on a CPU.
"""
from __future__ import annotations

import functools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from linear import get_tf32
from linear.dtypes import dtype_of
from linear.testing import TF32_TOLERANCE, TOLERANCE, relative_error

from .cases import OPS, Shape
from .contenders import BASELINE, INPUT_NAMES, Contender
from .timers import (Entry, Interrupted, cpu_cache_bytes, cpu_ms, gpu_cache_bytes, gpu_ms, rotation_sets, stop_point,
                     time_interleaved)

CHECK_ROWS = 256   # rows of each output compared with float64 (all of them when there are fewer)
MIN_PAIRS = 3      # repeats needed before a spread, or a ratio, means anything


@dataclass
class Settings:
    shapes: list[Shape]
    dtypes: list[str]
    ops: list[str]
    contenders: list[Contender]
    repeats: dict[str, int]      # device -> timed repeats
    warmup: dict[str, int]       # device -> untimed calls before them
    max_seconds: dict[str, float]   # device -> time budget of one case; 0 = no limit
    seed: int = 0
    max_spread: float = 0.1      # a ratio whose interquartile range exceeds this fraction is untrusted
    peaks: dict[str, float] | None = None   # dtype -> the card's peak TFLOP/s, when known


@dataclass
class Result:
    op: str
    shape: Shape
    dtype: str
    backend: str
    device: str
    status: str = "ok"           # ok | wrong | skipped | unsupported | error
    reason: str = ""
    skip_group: str = ""         # for a skipped case: why, in words shared by similar cases
    rel_err: float | None = None
    tolerance: float | None = None
    rows_checked: str = ""
    times_ms: list[float] = field(default_factory=list)
    input_sets: int = 0
    ratio: float | None = None   # speed relative to the device's baseline (>1: faster)
    ratio_to: str | None = None
    ratio_low: float | None = None    # interquartile range of the paired ratios
    ratio_high: float | None = None
    ratio_doubt: str = ""             # why the ratio is not to be trusted; "" when it is
    peak_fraction: float | None = None

    @property
    def flops(self) -> int:
        return self.shape.flops(OPS[self.op])

    @property
    def median_ms(self) -> float | None:
        return float(np.median(self.times_ms)) if self.times_ms else None

    @property
    def min_ms(self) -> float | None:
        return min(self.times_ms) if self.times_ms else None

    @property
    def spread(self) -> float | None:
        """Interquartile range of the repeats over their median (None below MIN_PAIRS repeats)."""
        if len(self.times_ms) < MIN_PAIRS:
            return None
        q1, q3 = np.percentile(self.times_ms, [25, 75])
        return float((q3 - q1) / self.median_ms)

    @property
    def tflops(self) -> float | None:
        ms = self.median_ms
        return self.flops / (ms * 1e-3) / 1e12 if ms else None


class HostInputs:
    """Fresh random inputs of one shape and dtype on the host, and their float64 reference results.

    Values are uniform in [-1, 1), rounded to the dtype; the reference is computed from the rounded
    values, so it measures the error of the computation alone. Outputs with more than CHECK_ROWS rows
    are compared on CHECK_ROWS random rows (every element is still checked to be finite).
    """

    def __init__(self, shape: Shape, dtype: str, seed: int):
        self.shape = shape
        rng = np.random.default_rng([seed, shape.b, shape.f, shape.d])
        source = np.float64 if dtype == "float64" else np.float32
        sizes = {"x": (shape.b, shape.f), "w": (shape.f, shape.d), "b": (shape.d,), "dy": (shape.b, shape.d),
                 "dw0": (shape.f, shape.d), "db0": (shape.d,)}
        self.arrays: dict[str, np.ndarray] = {}
        for name in INPUT_NAMES:
            a = (rng.random(sizes[name], dtype=source) * 2 - 1).astype(dtype_of(dtype))
            a.flags.writeable = False   # a contender that writes into its inputs fails loudly
            self.arrays[name] = a
        self.rows_b = self._sample(rng, shape.b)
        self.rows_f = self._sample(rng, shape.f)

    @staticmethod
    def _sample(rng, n: int) -> np.ndarray | None:
        return None if n <= CHECK_ROWS else np.sort(rng.choice(n, CHECK_ROWS, replace=False))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def _f64(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        a = self.arrays[name]
        return (a if rows is None else a[rows]).astype(np.float64)

    @functools.cached_property
    def _y(self):
        return self._f64("x", self.rows_b) @ self._f64("w") + self._f64("b")

    @functools.cached_property
    def _dx(self):
        return self._f64("dy", self.rows_b) @ self._f64("w").T

    @functools.cached_property
    def _dw(self):
        x_cols = self.arrays["x"] if self.rows_f is None else self.arrays["x"][:, self.rows_f]
        return x_cols.astype(np.float64).T @ self._f64("dy")

    @functools.cached_property
    def _db(self):
        return self._f64("dy").sum(axis=0)

    def expected(self, op: str) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
        """Output name -> (the rows compared, None for all; their float64 values)."""
        if op == "forward":
            return {"y": (self.rows_b, self._y)}
        if op == "dx":
            return {"dx": (self.rows_b, self._dx)}
        if op == "dw":
            return {"dw": (self.rows_f, self._dw), "db": (None, self._db)}
        return {"y": (self.rows_b, self._y), "dx": (self.rows_b, self._dx),
                "dw": (self.rows_f, self._f64("dw0", self.rows_f) + self._dw),
                "db": (None, self._f64("db0") + self._db)}

    def rows_checked(self, op: str) -> str:
        """Which part of each output was compared, e.g. "y 256/4096 rows, db all"."""
        parts = []
        for name, (rows, _) in self.expected(op).items():
            total = self.shape.f if name == "dw" else self.shape.b
            parts.append(f"{name} all" if rows is None else f"{name} {len(rows)}/{total} rows")
        return ", ".join(parts)


def check(kind, outputs: dict[str, Any], expected: dict) -> float:
    """The largest relative error over the outputs; inf when any element is NaN or infinite."""
    worst = 0.0
    for name, (rows, ref) in expected.items():
        if not kind.all_finite(outputs[name]):
            return math.inf
        worst = max(worst, relative_error(kind.to_host(outputs[name], rows), ref))
    return worst


class Progress:
    """One line on stderr per finished case, numbered, with the time since the start."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.start = time.monotonic()

    def update(self, label: str, outcome: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total} {time.monotonic() - self.start:.0f}s] {label}: {outcome}",
              file=self.stream, flush=True)


def _summary(result: Result) -> str:
    if result.status == "ok":
        return (f"median {result.median_ms:.3f} ms (min {result.min_ms:.3f}), {result.tflops:.3g} TFLOP/s, "
                f"rel_err {result.rel_err:.1e}")
    return f"{result.status}: {result.reason}"


class _ContenderInputs:
    """One contender's copies of one shape's inputs: set 0 first, the rotation copies when timing."""

    def __init__(self, contender: Contender, host: HostInputs):
        self.contender, self.host = contender, host
        self.sets = [{name: contender.kind.adopt(a) for name, a in host.arrays.items()}]

    def rotation(self) -> list[dict]:
        cache = gpu_cache_bytes() if self.contender.device == "gpu" else cpu_cache_bytes()
        wanted = rotation_sets(self.host.nbytes, cache)
        kind = self.contender.kind
        while len(self.sets) < wanted:
            self.sets.append({name: kind.copy(a) for name, a in self.sets[0].items()})
        return self.sets


def run_cases(settings: Settings, progress: Progress,
              checkpoint: Callable[[list[Result]], None] = lambda results: None) -> tuple[list[Result], bool]:
    """The results of every case, and whether the run was interrupted (Ctrl-C, SIGTERM) before the end.

    checkpoint(results) is called after every (shape, dtype, op) group, so that a run stopped later
    has already written what it measured.
    """
    results: list[Result] = []
    try:
        _run_all(settings, progress, results, checkpoint)
    except (Interrupted, KeyboardInterrupt):   # the group in flight was not timed to the end: leave it out
        return [r for r in results if r.status != "ok" or r.times_ms], True
    return results, False


def _tolerance(dtype: str) -> float:
    return TF32_TOLERANCE if dtype == "float32" and get_tf32() else TOLERANCE[dtype]


def _run_all(settings: Settings, progress: Progress, results: list[Result], checkpoint) -> None:
    best_rate: dict[tuple, float] = {}   # (backend, op, dtype) -> highest flop/s measured so far
    for shape in sorted(dict.fromkeys(settings.shapes), key=lambda s: s.volume):
        for dtype in settings.dtypes:
            host = None
            adopted: dict[str, _ContenderInputs | Exception] = {}
            for op in settings.ops:
                group: list[tuple[Result, list, Contender]] = []   # checked and right: to be timed
                for contender in settings.contenders:
                    stop_point()
                    result = Result(op, shape, dtype, contender.name, contender.device,
                                    tolerance=_tolerance(dtype))
                    results.append(result)
                    group_text, reason = _skip_reason(settings, contender, result, best_rate)
                    if reason:
                        result.status, result.reason, result.skip_group = "skipped", reason, group_text
                        continue
                    if host is None:
                        host = HostInputs(shape, dtype, settings.seed)
                    if contender.name not in adopted:
                        try:
                            adopted[contender.name] = _ContenderInputs(contender, host)
                        except Exception as e:   # e.g. an array library without this dtype
                            adopted[contender.name] = e
                    calls = _check(contender, adopted[contender.name], result)
                    if calls:
                        group.append((result, calls, contender))
                _time(settings, group)
                add_ratios(results[-len(settings.contenders):], settings.peaks, settings.max_spread)
                for result in results[-len(settings.contenders):]:
                    if result.status == "ok":
                        key = (result.backend, op, dtype)
                        best_rate[key] = max(best_rate.get(key, 0.0), result.flops / (result.median_ms * 1e-3))
                    progress.update(f"{op} {shape} {dtype} {result.backend}", _summary(result))
                checkpoint(results)
            del adopted, host
            for contender in settings.contenders:
                if contender.kind is not None:
                    contender.kind.release()


def _skip_reason(settings: Settings, contender: Contender, result: Result,
                 best_rate: dict) -> tuple[str, str]:
    """(group, reason) for a case not to run; ("", "") to run it."""
    if contender.max_volume is not None and result.shape.volume > contender.max_volume:
        side = round(contender.max_volume ** (1 / 3))
        limit = f"{contender.name} runs only shapes up to B·F·D = {side}³"
        return limit, limit
    rate = best_rate.get((contender.name, result.op, result.dtype))
    budget = settings.max_seconds[contender.device]
    if budget and rate:
        calls = 1 + settings.warmup[contender.device] + 1   # the check, the warm-up, one repeat
        predicted = result.flops / rate * calls
        if predicted > budget:
            return (f"too slow here: predicted above --max-seconds {budget:g} from the speed on smaller shapes",
                    f"too slow here: ~{predicted:.3g} s predicted for {calls} calls > --max-seconds {budget:g}")
    return "", ""


def _check(contender: Contender, inputs, result: Result) -> list | None:
    """One call on input set 0, compared with float64; the calls to time (over the rotation), or None
    when the case cannot be timed (result.status says why)."""
    if isinstance(inputs, Exception):
        result.status, result.reason = "unsupported", _describe(inputs)
        return None
    try:
        first = contender.prepare(result.op, inputs.sets[0], result.shape)
        first.run()
        result.rel_err = check(contender.kind, first.results(), inputs.host.expected(result.op))
        result.rows_checked = inputs.host.rows_checked(result.op)
        if not result.rel_err <= result.tolerance:
            result.status = "wrong"
            result.reason = f"rel_err {result.rel_err:.2e} > tolerance {result.tolerance:.0e}; not timed"
            return None
        sets = inputs.rotation()
        result.input_sets = len(sets)
        return [first.run] + [contender.prepare(result.op, s, result.shape).run for s in sets[1:]]
    except NotImplementedError as e:
        result.status, result.reason = "unsupported", _describe(e)
    except Exception as e:
        result.status, result.reason = "error", _describe(e)
    return None


def _time(settings: Settings, group: list[tuple[Result, list, Contender]]) -> None:
    """Times the group's contenders interleaved, call by call."""
    entries = [Entry(calls, gpu_ms if c.device == "gpu" else cpu_ms, settings.repeats[c.device],
                     settings.warmup[c.device], settings.max_seconds[c.device] or math.inf)
               for _, calls, c in group]
    try:
        time_interleaved(entries)
    except Exception as e:
        for result, _, _ in group:
            result.status, result.reason = "error", "while timing: " + _describe(e)
        return
    for (result, _, _), entry in zip(group, entries):
        result.times_ms = entry.times_ms


def _describe(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def add_ratios(results: list[Result], peaks: dict[str, float] | None, max_spread: float) -> None:
    """Speed relative to the device's baseline, round by round, and the fraction of the card's peak.

    Contenders were timed interleaved, so repeat i of a case and repeat i of its baseline ran side by
    side: the ratio is the median of those paired ratios, and their interquartile range is its spread.
    A ratio from fewer than MIN_PAIRS pairs, or whose spread exceeds max_spread, is untrusted.
    """
    times = {(r.op, r.shape, r.dtype, r.backend): r.times_ms for r in results if r.status == "ok"}
    for r in results:
        if r.status != "ok":
            continue
        baseline = BASELINE[r.device]
        base = times.get((r.op, r.shape, r.dtype, baseline))
        if base:
            pairs = np.array(base[:len(r.times_ms)]) / np.array(r.times_ms[:len(base)])
            r.ratio, r.ratio_to = float(np.median(pairs)), baseline
            r.ratio_low, r.ratio_high = (float(q) for q in np.percentile(pairs, [25, 75]))
            if len(pairs) < MIN_PAIRS:
                r.ratio_doubt = f"{len(pairs)} paired repeat(s) < {MIN_PAIRS}"
            elif (r.ratio_high - r.ratio_low) / r.ratio > max_spread:
                r.ratio_doubt = (f"ratio spread {(r.ratio_high - r.ratio_low) / r.ratio:.0%} "
                                 f"> --max-spread {max_spread:.0%}")
        if r.device == "gpu" and peaks and r.dtype in peaks:
            r.peak_fraction = r.tflops / peaks[r.dtype]
