"""The element types linear supports, in one place: their names, the numpy dtype of each (bfloat16 is
ml_dtypes.bfloat16, an optional package), the accumulator each sums in, and the C++ type the kernels
name it by."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

def bfloat16() -> np.dtype:
    """ml_dtypes.bfloat16 as a numpy dtype; TypeError saying what to install when ml_dtypes is missing."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise TypeError("dtype 'bfloat16' needs the ml_dtypes package (pip install ml_dtypes)") from e
    return np.dtype(ml_dtypes.bfloat16)


def dtype_of(name: Any) -> np.dtype:
    """The numpy dtype of a supported dtype (a name, a numpy dtype or type); TypeError for any other."""
    if str(name) == "bfloat16":
        return bfloat16()
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}; got {name!r}")
    return dtype


def accumulator_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype sums are carried in: float32 for the half types (float16, bfloat16), else the dtype."""
    return np.dtype(np.float32) if dtype.itemsize == 2 else np.dtype(dtype)


@dataclass(frozen=True)
class ElementType:
    """An element type as the kernels see it."""
    cpp: str  # the C++ type in the kernels
    acc: type  # numpy type of the accumulator: alpha, beta and workspaces have it
    itemsize: int  # bytes per element

    @property
    def acc_cpp(self) -> str:
        return ELEMENT_TYPES[np.dtype(self.acc).name].cpp

    @property
    def acc_itemsize(self) -> int:
        return np.dtype(self.acc).itemsize


ELEMENT_TYPES = {
    "float32": ElementType("float", np.float32, 4),
    "float64": ElementType("double", np.float64, 8),
    "float16": ElementType("__half", np.float32, 2),
    "bfloat16": ElementType("__nv_bfloat16", np.float32, 2),  # ml_dtypes.bfloat16
}
SUPPORTED_DTYPES = tuple(ELEMENT_TYPES)


def element_type(dtype: Any) -> ElementType:
    try:
        return ELEMENT_TYPES[np.dtype(dtype).name]
    except KeyError:
        raise TypeError(f"the kernels support {sorted(ELEMENT_TYPES)}, got dtype {np.dtype(dtype).name}") from None
