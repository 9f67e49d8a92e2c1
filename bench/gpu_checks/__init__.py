"""The Python steps of bench/gpu_session.sh, one module per job; bench/gpu_check.py is their command line.

    preflight.py    versions, GPU, driver, CUDA include dirs, tools; one kernel compiled and checked
    determinism.py  one layer step ten times: every output bitwise identical across the runs
    tc_tiles.py     every tensor-core configuration beside cuBLAS in bfloat16, checked, then timed
    wgmma.py        the Hopper kernel beside tc_large, tc_wide, cuBLAS and torch in bf16 and f16, checked, then timed
    counters.py     the workload Nsight Compute profiles, and its raw page -> counters.json
    summary.py      the readable summary of a session folder
"""
from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, value) -> None:
    """Replaces `path` whole (never half-written): the session may be stopped at any moment."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=1) + "\n")
    partial.replace(path)
