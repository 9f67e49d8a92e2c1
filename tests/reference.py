"""Helpers for checking results against a float64 reference."""
from __future__ import annotations

import numpy as np

# Largest relative error ||out - ref|| / ||ref|| accepted per dtype name.
TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "float16": 1e-2, "bfloat16": 1e-2}


def to_numpy(a):
    """A numpy copy of a numpy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN (an element left unwritten)."""
    out = to_numpy(out).astype(np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if not np.all(np.isfinite(out)):
        return float("inf")
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(out - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def assert_close(out, ref, dtype) -> None:
    name = np.dtype(dtype).name
    err = rel_err(out, ref)
    assert err <= TOLERANCE[name], f"relative error {err:.3e} > {TOLERANCE[name]:.0e} for {name}"


def poisoned(xp, shape, dtype):
    """An output array filled with NaN so that unwritten elements show."""
    return xp.full(shape, np.nan, dtype=dtype)
