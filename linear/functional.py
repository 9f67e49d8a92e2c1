"""The equations of the layer, in one place.

    forward:   Y  = X·W + b          X (B, F), W (F, D), b (D,), Y (B, D)
    backward:  dX = dY·Wᵀ            (B, F)   GEMM "NT"
               dW = Xᵀ·dY            (F, D)   GEMM "TN", beta = 1 when accumulating
               db = Σ_rows dY        (D,)
    No 1/B in dW: when the loss is a batch mean, the 1/B is already inside dY.

Leading dimensions of X and dY are flattened into B (as torch's Linear does) and restored on the
results. This module validates, picks a backend, allocates outputs, and hands the backend 2-D views;
transposes travel as flags, never as copies.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .backends import Backend, default_backend_name, get_backend

Array = Any  # a numpy.ndarray or a cupy.ndarray

SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")


class Gradients(NamedTuple):
    """The gradients of a linear layer; an entry that was not asked for is None."""
    dx: Array | None
    dw: Array | None
    db: Array | None


# ----------------------------------------------------------------------------------------------------
# Checks and dispatch
# ----------------------------------------------------------------------------------------------------

def _describe(a: Array) -> str:
    return f"shape {tuple(a.shape)} and dtype {a.dtype}"


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _resolve(arrays: dict[str, Any], backend: str | None) -> tuple[Backend, dict[str, Array]]:
    """Pick the backend from the inputs and check that every array belongs to its array module."""
    present = {name: a for name, a in arrays.items() if a is not None}
    on_gpu = [name for name, a in present.items() if _is_cupy(a)]
    if on_gpu and len(on_gpu) != len(present):
        on_host = [name for name in present if name not in on_gpu]
        raise TypeError(f"cannot mix CuPy and numpy arrays: {', '.join(on_gpu)} on the GPU (CuPy), "
                        f"{', '.join(on_host)} on the host (numpy)")
    name = backend or ("cuda" if on_gpu else default_backend_name())
    chosen = get_backend(name)
    if not on_gpu:
        if chosen.xp is not np:
            raise TypeError(f"backend {name!r} takes {chosen.xp.__name__} arrays; "
                            f"got numpy arrays ({', '.join(present)})")
        present = {k: a if k.endswith("out") else np.asarray(a) for k, a in present.items()}
    elif chosen.xp.__name__ != "cupy":
        raise TypeError(f"backend {name!r} takes numpy arrays; got CuPy arrays ({', '.join(on_gpu)}); "
                        "use backend='cuda' or move them with .get()")
    return chosen, {k: present.get(k) for k in arrays}


def _check_dtype(name: str, a: Array) -> None:
    dtype = a.dtype  # (dtype.name is slow enough to show in the per-call overhead; it is left for bfloat16)
    if not (dtype.kind == "f" and dtype.itemsize <= 8 or dtype.kind == "V" and dtype.name == "bfloat16"):
        raise TypeError(f"{name} has {_describe(a)}; supported dtypes are {', '.join(SUPPORTED_DTYPES)}")


def _result_dtype(arrays: dict[str, Array]) -> np.dtype:
    """numpy.result_type of the inputs. numpy cannot promote bfloat16 with float16; there bfloat16
    counts as float32 (as torch promotes it), so float16 + bfloat16 + float64 is still float64."""
    for name, a in arrays.items():
        if a is not None:
            _check_dtype(name, a)
    dtypes = [a.dtype for a in arrays.values() if a is not None]
    try:
        return np.result_type(*dtypes)
    except TypeError:  # DTypePromotionError
        return np.result_type(*(np.float32 if d.name == "bfloat16" else d for d in dtypes))


def _check_ndim(name: str, a: Array, ndim: int) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got {_describe(a)}")


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} of type {type(value).__name__}")
    return bool(value)


def _check_distinct(xp, outputs: dict[str, Array | None]) -> None:
    """Two out= arrays that share memory would silently overwrite each other's result."""
    given = [(name, a) for name, a in outputs.items() if isinstance(a, xp.ndarray)]
    for i, (name, a) in enumerate(given):
        for other, b in given[i + 1:]:
            if xp.may_share_memory(a, b):
                raise ValueError(f"{name} and {other} share memory; each result needs its own array")


def _check_scalar(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    return float(value)


class _Output:
    """A result array and the C-contiguous 2-D view the backend writes.

    The user's `out` is written directly when it is C-contiguous and overlaps no input; otherwise the
    backend writes a temporary that finish() copies into `out` (so overlap is never silently wrong).
    """

    def __init__(self, xp, name: str, out: Array | None, shape: tuple[int, ...], shape2d: tuple[int, ...],
                 dtype: np.dtype, inputs: list[Array], keep: bool):
        self.copy_back = False
        if out is None:
            self.result = xp.empty(shape, dtype)
            self.work = self.result.reshape(shape2d)
            return
        if not isinstance(out, xp.ndarray):
            raise TypeError(f"{name} must be a {xp.__name__} array like the inputs; got {type(out).__name__}")
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"{name} has {_describe(out)}; expected shape {tuple(shape)}")
        if out.dtype != dtype:
            raise TypeError(f"{name} has {_describe(out)}; expected dtype {dtype}")
        if xp is np and not out.flags.writeable:
            raise ValueError(f"{name} is read-only ({_describe(out)})")
        self.result = out
        if out.flags.c_contiguous and not any(xp.may_share_memory(out, a) for a in inputs):
            self.work = out.reshape(shape2d)
        else:
            self.copy_back = True
            self.work = (xp.array(out, order="C") if keep else xp.empty(shape, dtype)).reshape(shape2d)

    def finish(self) -> Array:
        if self.copy_back:
            self.result[...] = self.work.reshape(self.result.shape)
        return self.result


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------

def matmul(a: Array, b: Array, *, trans_a: bool = False, trans_b: bool = False, alpha: float = 1.0,
           beta: float = 0.0, out: Array | None = None, backend: str | None = None) -> Array:
    """GEMM: C = alpha·op(A)·op(B) + beta·C, op(X) = Xᵀ when its flag is set.

    With beta != 0, `out` holds C on entry and is required. Returns C (`out` when given).
    """
    be, arr = _resolve({"a": a, "b": b, "out": out}, backend)
    a, b, out = arr["a"], arr["b"], arr["out"]
    alpha, beta = _check_scalar("alpha", alpha), _check_scalar("beta", beta)
    trans_a, trans_b = _check_flag("trans_a", trans_a), _check_flag("trans_b", trans_b)
    _check_ndim("a", a, 2)
    _check_ndim("b", b, 2)
    dtype = _result_dtype({"a": a, "b": b})
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k_b, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != k_b:
        raise ValueError(f"matmul: op(a) is {m}x{k} and op(b) is {k_b}x{n} (a has shape {tuple(a.shape)}, "
                         f"trans_a={trans_a}; b has shape {tuple(b.shape)}, trans_b={trans_b}): "
                         f"inner dimensions {k} and {k_b} differ")
    if beta != 0 and out is None:
        raise ValueError("matmul: beta != 0 needs out= holding C")
    c = _Output(be.xp, "out", out, (m, n), (m, n), dtype, [a, b], keep=beta != 0)
    be.gemm(a.astype(dtype, copy=False), b.astype(dtype, copy=False), c.work,
            trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta)
    return c.finish()


def forward(x: Array, w: Array, b: Array | None = None, *, out: Array | None = None,
            backend: str | None = None) -> Array:
    """Y = X·W + b. x is (..., F), w is (F, D), b is (D,) or None; Y is (..., D)."""
    be, arr = _resolve({"x": x, "w": w, "b": b, "out": out}, backend)
    x, w, b, out = arr["x"], arr["w"], arr["b"], arr["out"]
    _check_ndim("w", w, 2)
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension (..., F); got {_describe(x)}")
    features, d = w.shape
    if x.shape[-1] != features:
        raise ValueError(f"x has shape {tuple(x.shape)} and w has shape {tuple(w.shape)}: x's last dimension "
                         f"must equal w's first (F)")
    if b is not None:
        _check_ndim("b", b, 1)
        if b.shape[0] != d:
            raise ValueError(f"b has shape {tuple(b.shape)} and w has shape {tuple(w.shape)}: b must be ({d},)")
    dtype = _result_dtype({"x": x, "w": w, "b": b})
    lead = tuple(x.shape[:-1])
    rows = math.prod(lead)
    y = _Output(be.xp, "out", out, lead + (d,), (rows, d), dtype, [x, w] + ([b] if b is not None else []),
                keep=False)
    be.gemm(x.reshape(rows, features).astype(dtype, copy=False), w.astype(dtype, copy=False), y.work,
            trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
            bias=None if b is None else b.astype(dtype, copy=False))
    return y.finish()


def backward(dy: Array, x: Array, w: Array, *, need_dx: bool = True, need_dw: bool = True,
             need_db: bool = True, dx_out: Array | None = None, dw_out: Array | None = None,
             db_out: Array | None = None, accumulate: bool = False, backend: str | None = None) -> Gradients:
    """The gradients of Y = X·W + b given dY = ∂L/∂Y: dX = dY·Wᵀ, dW = Xᵀ·dY, db = Σ_rows dY.

    accumulate=True adds dW and db into dw_out and db_out (gradient accumulation over micro-batches);
    dx is always overwritten.
    """
    be, arr = _resolve({"dy": dy, "x": x, "w": w, "dx_out": dx_out, "dw_out": dw_out, "db_out": db_out},
                       backend)
    dy, x, w = arr["dy"], arr["x"], arr["w"]
    _check_ndim("w", w, 2)
    features, d = w.shape
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"x has shape {tuple(x.shape)} and w has shape {tuple(w.shape)}: x must be (..., {features})")
    if dy.shape != x.shape[:-1] + (d,):
        raise ValueError(f"dy has shape {tuple(dy.shape)}, x has shape {tuple(x.shape)} and w has shape "
                         f"{tuple(w.shape)}: dy must be {tuple(x.shape[:-1]) + (d,)}")
    need_dx, need_dw, need_db, accumulate = (_check_flag(name, flag) for name, flag in (
        ("need_dx", need_dx), ("need_dw", need_dw), ("need_db", need_db), ("accumulate", accumulate)))
    _check_distinct(be.xp, {"dx_out": arr["dx_out"], "dw_out": arr["dw_out"], "db_out": arr["db_out"]})
    if accumulate:
        for need, name in ((need_dw, "dw_out"), (need_db, "db_out")):
            if need and arr[name] is None:
                raise ValueError(f"accumulate=True needs {name}, the gradient to add into")
    dtype = _result_dtype({"dy": dy, "x": x, "w": w})
    rows = math.prod(x.shape[:-1])
    dy2 = dy.reshape(rows, d).astype(dtype, copy=False)
    x2 = x.reshape(rows, features).astype(dtype, copy=False)
    w = w.astype(dtype, copy=False)
    inputs = [dy, x, w]
    beta = 1.0 if accumulate else 0.0

    # Every product reads the inputs before any result is copied into a user's out= that may alias them.
    dx = dw = db = None
    if need_dx:
        dx = _Output(be.xp, "dx_out", arr["dx_out"], tuple(x.shape), (rows, features), dtype, inputs, keep=False)
        be.gemm(dy2, w, dx.work, trans_a=False, trans_b=True, alpha=1.0, beta=0.0)
    if need_dw:
        dw = _Output(be.xp, "dw_out", arr["dw_out"], (features, d), (features, d), dtype, inputs, keep=accumulate)
        be.gemm(x2, dy2, dw.work, trans_a=True, trans_b=False, alpha=1.0, beta=beta)
    if need_db:
        db = _Output(be.xp, "db_out", arr["db_out"], (d,), (d,), dtype, inputs, keep=accumulate)
        be.colsum(dy2, db.work, beta=beta)
    return Gradients(*(None if g is None else g.finish() for g in (dx, dw, db)))
