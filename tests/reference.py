"""Helpers for checking results against a float64 reference."""
from __future__ import annotations

import numpy as np

from linear import get_tf32
from linear.testing import TF32_TOLERANCE, TOLERANCE, relative_error


def to_numpy(a):
    """A numpy copy of a numpy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64, on the host; inf when out has a NaN (an element left unwritten)."""
    return relative_error(to_numpy(out), to_numpy(ref))


def assert_close(out, ref, dtype) -> None:
    name = np.dtype(dtype).name
    tolerance = TF32_TOLERANCE if name == "float32" and get_tf32() else TOLERANCE[name]
    err = rel_err(out, ref)
    assert err <= tolerance, f"relative error {err:.3e} > {tolerance:.0e} for {name}"


def poisoned(xp, shape, dtype):
    """An output array filled with NaN so that unwritten elements show."""
    return xp.full(shape, np.nan, dtype=dtype)
