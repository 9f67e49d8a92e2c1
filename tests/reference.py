"""Helpers for checking results against a float64 reference."""
from __future__ import annotations

import numpy as np

from linear.testing import TOLERANCE, relative_error


def to_numpy(a):
    """A numpy copy of a numpy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64, on the host; inf when out has a NaN (an element left unwritten)."""
    return relative_error(to_numpy(out), to_numpy(ref))


def assert_close(out, ref, dtype) -> None:
    name = np.dtype(dtype).name
    err = rel_err(out, ref)
    assert err <= TOLERANCE[name], f"relative error {err:.3e} > {TOLERANCE[name]:.0e} for {name}"


def poisoned(xp, shape, dtype):
    """An output array filled with NaN so that unwritten elements show."""
    return xp.full(shape, np.nan, dtype=dtype)
