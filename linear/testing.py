"""Checking a result against a float64 reference, as the tests and the benchmarks do.

    relative_error(out, ref) = ||out - ref|| / ||ref||   (in float64; inf when out holds a NaN or an inf,
                                                          which is how an element left unwritten shows)
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import array_module

# The largest relative error accepted per dtype name: float16/bfloat16 inputs and outputs round at
# ~1e-3 even though they accumulate in float32.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}
# float32 products with TF32 allowed (linear.set_tf32): operands keep 10 mantissa bits.
TF32_TOLERANCE = 1e-3


def relative_error(out: Any, ref: Any) -> float:
    """||out - ref|| / ||ref|| (||out - ref|| when ref is zero); out and ref numpy or CuPy arrays."""
    xp = array_module(out)
    out64 = out.astype(np.float64)
    if not bool(xp.isfinite(out64).all()):
        return math.inf
    ref64 = xp.asarray(ref, dtype=np.float64)
    if out64.shape != ref64.shape:
        raise ValueError(f"out has shape {tuple(out64.shape)} but ref has shape {tuple(ref64.shape)}")
    norm = float(xp.linalg.norm(ref64))
    diff = float(xp.linalg.norm(out64 - ref64))
    return diff / norm if norm > 0 else diff
