"""Nsight Compute's phase: the workload it profiles (profile), and the counters that explain a kernel's
speed picked from its raw page (counters.csv -> counters.json)."""
from __future__ import annotations

import csv
import re
from pathlib import Path

from bench.gpu_checks import write_json


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
