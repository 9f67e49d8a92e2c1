"""TF32: whether float32 products may run on tensor cores with TF32 operands.

TF32 keeps float32's exponent and 10 of its 23 mantissa bits, so a product carries ~1e-4..1e-3 relative
error instead of ~1e-7, for several times the speed. Off by default, as in torch and CuPy: float32
means float32 unless the user opts in, with `set_tf32(True)` or `LINEAR_TF32=1` in the environment
(`set_tf32` wins). The kernel backends (cuda, and emulate, which rounds exactly as the GPU does) honour
it; the numpy backend always computes in float32, as CPU BLAS has no TF32.
"""
from __future__ import annotations

from .environment import setting

_ENVIRONMENT = "LINEAR_TF32"
_set_by_user: bool | None = None


def set_tf32(enabled: bool | None) -> None:
    """Allow (True) or forbid (False) TF32 tensor cores for float32 products from now on; None goes
    back to the default, $LINEAR_TF32."""
    global _set_by_user
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool or None, got {type(enabled).__name__}")
    _set_by_user = enabled


def get_tf32() -> bool:
    """Whether float32 products may run on TF32 tensor cores."""
    if _set_by_user is not None:
        return _set_by_user
    value = setting(_ENVIRONMENT)
    value = "0" if value is None else value
    if value not in ("0", "1"):
        raise ValueError(f"${_ENVIRONMENT} must be 0 or 1, got {value!r}")
    return value == "1"
