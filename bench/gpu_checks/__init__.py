"""The Python steps of bench/gpu_session.sh, one module per job; bench/gpu_check.py is their command line.

    preflight.py    versions, GPU, driver, CUDA include dirs, tools; one kernel compiled and checked
    determinism.py  one layer step ten times: every output bitwise identical across the runs
    tc_tiles.py     every tensor-core configuration beside cuBLAS in bfloat16, checked, then timed
    wgmma.py        the Hopper kernel beside tc_large, tc_wide, cuBLAS and torch in bf16 and f16, checked, then timed
    counters.py     the workload Nsight Compute profiles, and its raw page -> counters.json
    summary.py      the readable summary of a session folder
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def write_json(path: Path, value) -> None:
    """Replaces `path` whole (never half-written): the session may be stopped at any moment."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)


def check_then_time(row: dict, call, result, expected, tolerance: float, clock, repeats: int, flop: float) -> None:
    """Runs `call` once and records in `row` the relative error of `result()` against `expected`; times it
    (median of `repeats` runs of `clock(call)`, in ms, and TFLOP/s) only when the error is within `tolerance`."""
    from linear.testing import relative_error
    call()
    row["rel_err"] = float(relative_error(result(), expected))
    if not row["rel_err"] <= tolerance:
        row["error"] = "wrong result: not timed"
        return
    row["median_ms"] = float(np.median([clock(call) for _ in range(repeats)]))
    row["tflops"] = flop / row["median_ms"] * 1e-9


@contextlib.contextmanager
def contender(row: dict, results: list[dict], save: Callable[[], None]) -> Iterator[None]:
    """One contender's row: an exception inside becomes the row's error (one contender failing must not
    lose the others); then the row is appended to `results`, printed, and `save()` rewrites the file."""
    try:
        yield
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"[:300]
    results.append(row)
    print(json.dumps(row), flush=True)
    save()
