"""Helpers for arrays of either array module, numpy or CuPy, shared by the layer, its checkpoints, the
optimizers and linear.testing: which module an array belongs to, a host copy, a dtype from its name."""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from .functional import SUPPORTED_DTYPES

Array = Any  # a numpy.ndarray or a cupy.ndarray


def array_module(a: Array):
    """numpy or cupy, whichever `a` belongs to (a CuPy array exists only once cupy is imported)."""
    cupy = sys.modules.get("cupy")
    return np if cupy is None else cupy.get_array_module(a)


def to_host(a: Array) -> np.ndarray:
    """`a` as a numpy array: a CuPy array is copied to the host, a numpy array is returned as it is."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def dtype_named(name: Any) -> np.dtype:
    """The numpy dtype for a supported dtype or its name (bfloat16 comes from ml_dtypes when installed);
    TypeError for any other."""
    if str(name) == "bfloat16":
        try:
            import ml_dtypes
        except ImportError as e:
            raise TypeError("dtype 'bfloat16' needs the ml_dtypes package (pip install ml_dtypes)") from e
        return np.dtype(ml_dtypes.bfloat16)
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}; got {name!r}")
    return dtype
