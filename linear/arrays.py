"""Helpers for arrays of either array module, numpy or CuPy, shared by the layer, its checkpoints, the
optimizers and linear.testing: which module an array belongs to, and a host copy."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

Array = Any  # a numpy.ndarray or a cupy.ndarray


def array_module(a: Array):
    """numpy or cupy, whichever `a` belongs to (a CuPy array exists only once cupy is imported)."""
    cupy = sys.modules.get("cupy")
    return np if cupy is None else cupy.get_array_module(a)


def to_host(a: Array) -> np.ndarray:
    """`a` as a numpy array: a CuPy array is copied to the host, a numpy array is returned as it is."""
    return a.get() if hasattr(a, "get") else np.asarray(a)
