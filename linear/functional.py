"""The equations of the layer, in one place.

    forward:   Y  = X·W + b          X (B, F), W (F, D), b (D,), Y (B, D)
    backward:  dX = dY·Wᵀ            (B, F)   GEMM "NT"
               dW = Xᵀ·dY            (F, D)   GEMM "TN", beta = 1 when accumulating
               db = Σ_rows dY        (D,)
    No 1/B in dW: when the loss is a batch mean, the 1/B is already inside dY.

With an activation (linear.activations: "relu", "gelu", "gelu_tanh", "silu"):
    forward:   Z  = X·W + b,  Y = act(Z)           (Z written to preact_out when given)
    backward:  dZ = dY ⊙ act'(Z),  db = Σ_rows dZ   (one pass over dY and Z)
               dX = dZ·Wᵀ,  dW = Xᵀ·dZ

Leading dimensions of X and dY are flattened into B (as torch's Linear does) and restored on the
results. This module validates, picks a backend, allocates outputs, and hands the backend 2-D views (or
stacks of them); a transpose travels as a transposed view (Wᵀ is w.T), never as a copy.
"""
from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np

from .activations import check_activation
from .backends import Backend, default_backend_name, get_backend
from .dtypes import SUPPORTED_DTYPES

Array = Any  # a numpy.ndarray or a cupy.ndarray


class Gradients(NamedTuple):
    """The gradients of a linear layer; an entry that was not asked for is None."""
    dx: Array | None
    dw: Array | None
    db: Array | None


# ----------------------------------------------------------------------------------------------------
# Checks and dispatch
# ----------------------------------------------------------------------------------------------------

def describe(a: Array) -> str:
    """An array's shape and dtype, as the error messages name them."""
    return f"shape {tuple(a.shape)} and dtype {a.dtype}"


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _fast_backend(a: Any, backend: str | Backend | None) -> Backend | None:
    """The backend of a call whose arrays are all of a's type, where that is exactly the array type the
    backend takes (numpy's, or CuPy's for the cuda backend); None otherwise. The fast paths of forward,
    backward and matmul start here: a call it answers None for takes the general path, which names the
    fault."""
    kind = type(a)
    if kind is np.ndarray:
        be = _backend(backend)
    elif _is_cupy(a):
        be = _backend(backend, True)
    else:
        return None
    return be if be.xp.ndarray is kind else None


def _backend(backend: str | Backend | None, on_gpu: bool = False) -> Backend:
    """The backend named, or given (a Linear passes the one it resolved once), else the default for the
    inputs: cuda for CuPy arrays, $LINEAR_BACKEND or numpy for the rest."""
    if backend is None or isinstance(backend, str):
        return get_backend(backend or ("cuda" if on_gpu else default_backend_name()))
    return backend


def _resolve(arrays: dict[str, Any], backend: str | Backend | None, optional: tuple[str, ...] = ()
             ) -> tuple[Backend, dict[str, Array]]:
    """Pick the backend from the inputs and check that every array belongs to its array module.
    Only outputs (names ending in "out") and the `optional` names may be None. Returns `arrays`,
    updated in place: inputs on the host that are not plain numpy arrays (lists, scalars, ndarray
    subclasses) go through np.asarray.

    It runs on every call, where a small layer feels each microsecond: a plain numpy array, the
    common case, costs one type test."""
    on_gpu, convert, missing = [], [], 0
    for name, a in arrays.items():
        if type(a) is np.ndarray:
            continue
        if a is None:
            missing += 1
            if not name.endswith("out") and name not in optional:
                raise TypeError(f"{name} must be an array; got None")
        elif _is_cupy(a):
            on_gpu.append(name)
        elif not name.endswith("out"):  # a wrong out= is _Output's to report
            convert.append(name)
    present = lambda: [name for name, a in arrays.items() if a is not None]  # for the messages
    if on_gpu and len(on_gpu) + missing != len(arrays):
        on_host = [name for name in present() if name not in on_gpu]
        raise TypeError(f"cannot mix CuPy and numpy arrays: {', '.join(on_gpu)} on the GPU (CuPy), "
                        f"{', '.join(on_host)} on the host (numpy)")
    chosen = _backend(backend, bool(on_gpu))
    name = chosen.name
    if not on_gpu:
        if chosen.xp is not np:
            raise TypeError(f"backend {name!r} takes {chosen.xp.__name__} arrays; "
                            f"got numpy arrays ({', '.join(present())})")
        for k in convert:
            arrays[k] = np.asarray(arrays[k])
    elif chosen.xp.__name__ != "cupy":
        raise TypeError(f"backend {name!r} takes numpy arrays; got CuPy arrays ({', '.join(on_gpu)}); "
                        "use backend='cuda' or move them with .get()")
    return chosen, arrays


def _is_bfloat16(dtype: np.dtype) -> bool:
    """ml_dtypes' bfloat16 (dtype.name takes ~0.5 µs, enough to show in the per-call overhead; its scalar
    type's name ~0.05)."""
    return dtype.kind == "V" and dtype.type.__name__ == "bfloat16"


def _is_kernel_dtype(dtype: np.dtype) -> bool:
    """One of SUPPORTED_DTYPES."""
    return dtype.kind == "f" and dtype.itemsize <= 8 or _is_bfloat16(dtype)


def _check_dtype(name: str, a: Array) -> None:
    if not _is_kernel_dtype(a.dtype):
        raise TypeError(f"{name} has {describe(a)}; supported dtypes are {', '.join(SUPPORTED_DTYPES)}")


# numpy hands out the native float dtypes as singletons, so `is` finds them at once (and ml_dtypes its bfloat16).
_FLOAT16, _FLOAT32, _FLOAT64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


def _plain_float(dtype: np.dtype) -> bool:
    """One of SUPPORTED_DTYPES as numpy (or ml_dtypes) hands it out, found with `is` first."""
    return dtype is _FLOAT32 or dtype is _FLOAT64 or dtype is _FLOAT16 or _is_bfloat16(dtype)


def _one_float(dtypes: list[np.dtype]) -> bool:
    """All of one supported dtype: the common case, whose result is that dtype, with neither the
    per-array checks nor result_type (together ~1.5 µs a call, ~2.5 for bfloat16). A dtype equal to the
    singleton (metadata aside) promotes to it too."""
    first = dtypes[0]
    return _plain_float(first) and dtypes.count(first) == len(dtypes)


def _promote(dtypes: list[np.dtype]) -> np.dtype:
    """numpy.result_type. numpy cannot promote bfloat16 with float16 (or with integers); there bfloat16
    counts as float32 (as torch promotes it), so float16 + bfloat16 + float64 is still float64."""
    if _one_float(dtypes):
        return dtypes[0]
    try:
        return np.result_type(*dtypes)
    except TypeError:  # DTypePromotionError
        return np.result_type(*(np.float32 if _is_bfloat16(d) else d for d in dtypes))


def _result_dtype(arrays: dict[str, Array]) -> np.dtype:
    """The dtype of the result: the inputs, all of SUPPORTED_DTYPES, promoted as _promote does."""
    dtypes = [a.dtype for a in arrays.values() if a is not None]
    if _one_float(dtypes):
        return dtypes[0]
    for name, a in arrays.items():
        if a is not None:
            _check_dtype(name, a)
    return _promote(dtypes)


def _check_ndim(name: str, a: Array, ndim: int) -> None:
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got {describe(a)}")


def _check_flag(name: str, value: Any) -> bool:
    if value is False or value is True:  # the common case, without the isinstance tests
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; got {value!r} of type {type(value).__name__}")
    return bool(value)


def _check_distinct(xp, outputs: dict[str, Array | None]) -> None:
    """Two out= arrays that share memory would silently overwrite each other's result."""
    given = [(name, a) for name, a in outputs.items() if a is not None and isinstance(a, xp.ndarray)]
    for i, (name, a) in enumerate(given):
        for other, b in given[i + 1:]:
            if xp.may_share_memory(a, b):
                raise ValueError(f"{name} and {other} share memory; each result needs its own array")


def _check_scalar(name: str, value: Any) -> float:
    if type(value) is float:  # the common case, without the isinstance tests
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number; got {value!r} of type {type(value).__name__}")
    return float(value)


class _Output:
    """A result array and the C-contiguous 2-D view the backend writes.

    The user's `out` is written directly when it is C-contiguous and overlaps no input; otherwise the
    backend writes a temporary that finish() copies into `out` (so overlap is never silently wrong).
    """

    def __init__(self, xp, name: str, out: Array | None, shape: tuple[int, ...], work_shape: tuple[int, ...],
                 dtype: np.dtype, inputs: list[Array], keep: bool, cast: bool = False):
        """work_shape: the result's shape as the backend writes it (2-D, or a stack of matrices).
        cast=True accepts an `out` of another dtype that the result casts to as numpy's ufuncs do
        (casting="same_kind"); the result is then computed in `dtype` and copied."""
        self.copy_back = False
        if out is None:
            self.result = xp.empty(shape, dtype)
            # reshape costs ~0.3 µs even when it changes nothing, and small layers feel it
            self.work = self.result if work_shape == shape else self.result.reshape(work_shape)
            return
        if not isinstance(out, xp.ndarray):
            raise TypeError(f"{name} must be a {xp.__name__} array like the inputs; got {type(out).__name__}")
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"{name} has {describe(out)}; expected shape {tuple(shape)}")
        if out.dtype != dtype and not (cast and not keep and np.can_cast(dtype, out.dtype, "same_kind")):
            rule = (f". Cannot cast ufunc 'matmul' output from {dtype} to {out.dtype} with casting rule "
                    "'same_kind'") if cast else ""
            raise TypeError(f"{name} has {describe(out)}; expected dtype {dtype}{rule}")
        if xp is np and not out.flags.writeable:
            raise ValueError(f"{name} is read-only ({describe(out)})")
        self.result = out
        if out.dtype == dtype and out.flags.c_contiguous and not any(xp.may_share_memory(out, a) for a in inputs):
            self.work = out if work_shape == shape else out.reshape(work_shape)
        else:
            self.copy_back = True
            self.work = (xp.array(out, order="C") if keep else xp.empty(shape, dtype)).reshape(work_shape)

    def finish(self) -> Array:
        if self.copy_back:
            self.result[...] = self.work.reshape(self.result.shape)
        return self.result


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------

def matmul(a: Array, b: Array, /, out: Array | tuple[Array] | None = None, *, trans_a: bool = False,
           trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0, axes: list | None = None,
           axis: int | None = None, backend: str | Backend | None = None) -> Array:
    """numpy.matmul, extended to C = alpha·op(A)·op(B) + beta·C with op(X) = X with its last two axes
    swapped when its flag is set.

    As numpy.matmul: a 1-D operand is a row (a) or a column (b) vector whose added dimension is removed
    from the result; stacks of matrices broadcast over the leading dimensions; `out` (positional or
    keyword, or a 1-tuple) must have the result's shape and a dtype the result casts to
    (casting="same_kind"); `axes` names the matrix axes of a, b and the result; `axis` is refused as
    numpy refuses it; result dtypes and exception types are numpy's. Two 1-D numpy operands give a
    numpy scalar.

    Result dtypes float16, bfloat16, float32 and float64 run our kernels (on the cuda and emulate
    backends; a stack is one strided-batched launch) or the numpy backend; any other result dtype (int,
    bool, complex, longdouble, object) runs numpy.matmul, or cupy.matmul for CuPy arrays, where alpha
    and beta must keep their defaults. With beta != 0, `out` holds C on entry and is required, with
    the result's dtype. Returns `out` when given.
    """
    if (out is None and axes is None and axis is None and trans_a is False and trans_b is False
            and type(alpha) is float and type(beta) is float and beta == 0 and type(b) is type(a)):
        c = _matmul_plain(a, b, alpha, backend)
        if c is not None:
            return c
    if axis is not None:
        raise TypeError("matmul: axis can only be used with a single shared core dimension, not with the 3 "
                        "distinct ones implied by signature (n?,k),(k,m?)->(n?,m?).")
    if isinstance(out, tuple):  # numpy's ufuncs also take out=(array,)
        if len(out) != 1:
            raise ValueError(f"matmul has 1 output; got a tuple of {len(out)} for out")
        out = out[0]
    be, arr = _resolve({"a": a, "b": b, "out": out}, backend)
    a, b, out = arr["a"], arr["b"], arr["out"]
    alpha, beta = _check_scalar("alpha", alpha), _check_scalar("beta", beta)
    trans_a, trans_b = _check_flag("trans_a", trans_a), _check_flag("trans_b", trans_b)
    xp = be.xp
    given_out, out_axes = out, None
    if axes is not None:  # the named matrix axes moved last; out as a view, so writing it writes out
        a, b, out, out_axes = _move_axes(xp, axes, a, b, out)
    op_a, op_b, batch, shape = _matmul_operands(xp, a, b, out, trans_a, trans_b)
    if beta != 0 and out is None:
        raise ValueError("matmul: beta != 0 needs out= holding C")
    dtype = _promote([a.dtype, b.dtype])
    if not _is_kernel_dtype(dtype):
        return _matmul_other_dtype(xp, a, b, op_a, op_b, out, given_out, out_axes, shape, alpha, beta)
    (m, k), n = op_a.shape[-2:], op_b.shape[-1]
    c = _Output(xp, "out", out, shape, batch + (m, n), dtype, [a, b], keep=beta != 0, cast=True)
    # op(a), op(b) as views (a swapped view is how a transpose reaches the backend), the stacks broadcast.
    be.gemm(_as_stack(xp, op_a, dtype, batch + (m, k)), _as_stack(xp, op_b, dtype, batch + (k, n)), c.work,
            alpha=alpha, beta=beta)
    c.finish()
    return given_out if given_out is not None else _finish(xp, c.result, out_axes)


def _matmul_plain(a: Array, b: Array, alpha: float, backend: str | Backend | None) -> Array | None:
    """matmul's common case in few steps, as in forward: matrices (or stacks of the same batch shape) of
    the type the backend takes, of one supported dtype, nothing but alpha given. None when the call is
    not that case (the general path then takes it)."""
    be = _fast_backend(a, backend)
    if (be is not None and _plain_float(dtype := a.dtype) and b.dtype is dtype
            and a.ndim >= 2 and a.ndim == b.ndim and a.shape[-1] == b.shape[-2] and a.shape[:-2] == b.shape[:-2]):
        c = be.xp.empty(a.shape[:-1] + b.shape[-1:], dtype)
        be.gemm(a, b, c, alpha=alpha, beta=0.0)
        return c
    return None


def _matmul_operands(xp, a: Array, b: Array, out: Array | None, trans_a: bool, trans_b: bool
                     ) -> tuple[Array, Array, tuple[int, ...], tuple[int, ...]]:
    """(op(a), op(b), batch, result shape) of matmul, its operands' shapes checked: op(a) and op(b) as
    stacks of matrices (a 1-D a a row, a 1-D b a column), the broadcast batch, and numpy's result shape."""
    for name, x, trans in (("a", a, trans_a), ("b", b, trans_b)):
        if x.ndim == 0:
            raise ValueError(f"matmul: {name} has {describe(x)}; a scalar (0-D) operand is not allowed, "
                             "use multiply")
        if trans and x.ndim == 1:
            raise ValueError(f"matmul: {name} has {describe(x)}; trans_{name} needs a matrix (2-D or more)")
    vector_a, vector_b = a.ndim == 1, b.ndim == 1
    op_a = a[None, :] if vector_a else xp.swapaxes(a, -1, -2) if trans_a else a
    op_b = b[:, None] if vector_b else xp.swapaxes(b, -1, -2) if trans_b else b
    (m, k), (k_b, n) = op_a.shape[-2:], op_b.shape[-2:]
    batch = op_a.shape[:-2]
    try:
        if op_b.shape[:-2] != batch:  # np.broadcast_shapes takes ~3 µs even for two 2-D operands
            batch = np.broadcast_shapes(batch, op_b.shape[:-2])
    except ValueError:
        raise ValueError(f"matmul: a has shape {tuple(a.shape)} and b has shape {tuple(b.shape)}: their stacks "
                         f"{tuple(op_a.shape[:-2])} and {tuple(op_b.shape[:-2])} do not broadcast") from None
    if k != k_b:
        raise ValueError(f"matmul: op(a) is {m}x{k} and op(b) is {k_b}x{n} (a has shape {tuple(a.shape)}, "
                         f"trans_a={trans_a}; b has shape {tuple(b.shape)}, trans_b={trans_b}): "
                         f"inner dimensions {k} and {k_b} differ")
    shape = batch + (() if vector_a else (m,)) + (() if vector_b else (n,))
    if out is not None and tuple(out.shape) != shape:
        raise ValueError(f"matmul: out has {describe(out)}; the result has shape {shape} "
                         "(non-broadcastable output operand: out is never broadcast)")
    return op_a, op_b, batch, shape


def _matmul_other_dtype(xp, a: Array, b: Array, op_a: Array, op_b: Array, out: Array | None,
                        given_out: Array | None, out_axes, shape: tuple[int, ...], alpha: float,
                        beta: float) -> Array:
    """matmul of a result dtype our kernels do not take (int, bool, complex, ...): the array module's own."""
    if alpha != 1 or beta != 0:
        raise TypeError(f"matmul: alpha and beta need a float result; a has {describe(a)}, b has {describe(b)}")
    product = xp.matmul(op_a, op_b).reshape(shape)
    if out is None:
        return _finish(xp, product, out_axes)
    if not np.can_cast(product.dtype, out.dtype, "same_kind"):
        raise TypeError(f"matmul: out has {describe(out)}. Cannot cast ufunc 'matmul' output from "
                        f"{product.dtype} to {out.dtype} with casting rule 'same_kind'")
    out[...] = product
    return given_out


def _as_stack(xp, a: Array, dtype: np.dtype, shape: tuple[int, ...]) -> Array:
    """a in `dtype`, broadcast to `shape` as a view; broadcast_to (~3 µs) only where the shape differs."""
    a = a.astype(dtype, copy=False)
    return a if a.shape == shape else xp.broadcast_to(a, shape)


def _move_axes(xp, axes: list, a: Array, b: Array, out: Array | None
               ) -> tuple[Array, Array, Array | None, tuple[int, ...]]:
    """numpy's axes= for matmul: a, b and out (views) with the matrix axes that `axes` names moved
    last, and the output's entry (where _finish moves the result's matrix axes back to)."""
    counts = (min(a.ndim, 2), min(b.ndim, 2), 2 - (a.ndim == 1) - (b.ndim == 1))
    if not isinstance(axes, (list, tuple)) or len(axes) != 3:
        raise ValueError("axes should be a list with an entry for all 3 inputs and outputs; entries for "
                         "outputs can only be omitted if none of them has core axes.")
    entries = [tuple(entry) if isinstance(entry, (list, tuple)) else (entry,) for entry in axes]
    for i, (entry, count) in enumerate(zip(entries, counts)):
        if len(entry) != count:
            raise np.exceptions.AxisError(f"matmul: operand {i} has {count} core dimensions, but {len(entry)} "
                                          "dimensions are specified by axes tuple.")
    last = lambda count: tuple(range(-count, 0))
    a, b = (xp.moveaxis(x, entry, last(len(entry))) for x, entry in zip((a, b), entries))
    if out is not None:
        out = xp.moveaxis(out, entries[2], last(len(entries[2])))
    return a, b, out, entries[2]


def _finish(xp, result: Array, out_axes: tuple[int, ...] | None) -> Array:
    """A new result as numpy.matmul returns it: matrix axes where axes= put them; 0-D as a scalar."""
    if out_axes:
        result = xp.moveaxis(result, tuple(range(-len(out_axes), 0)), out_axes)
    return result[()] if xp is np and result.ndim == 0 else result


def forward(x: Array, w: Array, b: Array | None = None, *, activation: str | None = None,
            preact_out: Array | None = None, out: Array | None = None,
            backend: str | Backend | None = None) -> Array:
    """Y = act(X·W + b). x is (..., F), w is (F, D), b is (D,) or None; Y is (..., D). backend: a name, or a
    Backend from get_backend (resolved once by its caller).

    activation: None, "relu", "gelu", "gelu_tanh" or "silu" (linear.activations), applied in the same
    kernel as the product. preact_out, when given, receives Z = X·W + b (Y's shape and dtype): what
    backward needs for the activation's gradient (relu needs only Y)."""
    if activation is not None:
        check_activation(activation)
    # The common case in few steps (a small layer in a training loop feels each µs of checks): arrays of
    # the type the backend takes (numpy's, or CuPy's), of one supported dtype and matching shapes, no
    # out=, preact_out either not given or written directly (as Linear.forward gives it). Whatever fails a
    # test here takes the general path, which checks it all and names the fault.
    if (out is None and type(w) is type(x) and (b is None or type(b) is type(x))
            and (preact_out is None or type(preact_out) is type(x))):
        be = _fast_backend(x, backend)
        if (be is not None and _plain_float(dtype := x.dtype) and w.dtype is dtype
                and w.ndim == 2 and x.ndim >= 1 and x.shape[-1] == w.shape[0]
                and (b is None or b.dtype is dtype and b.shape == w.shape[1:])):
            shape = x.shape[:-1] + w.shape[1:]
            z = None if preact_out is None else _direct_out(be.xp, preact_out, True, False, shape, dtype,
                                                            (x, w) if b is None else (x, w, b))
            if z is not False:
                y = be.xp.empty(shape, dtype)
                if x.ndim == 2:  # reshape costs ~0.3 µs even when it changes nothing
                    be.gemm(x, w, y, alpha=1.0, beta=0.0, bias=b, activation=activation, preact=z)
                else:
                    rows, d = math.prod(x.shape[:-1]), w.shape[1]
                    be.gemm(x.reshape(rows, x.shape[-1]), w, y.reshape(rows, d), alpha=1.0, beta=0.0, bias=b,
                            activation=activation, preact=None if z is None else z.reshape(rows, d))
                return y
    be, arr = _resolve({"x": x, "w": w, "b": b, "out": out, "preact_out": preact_out}, backend, optional=("b",))
    x, w, b, out = arr["x"], arr["w"], arr["b"], arr["out"]
    if out is not None and arr["preact_out"] is not None:  # two outputs that might overlap
        _check_distinct(be.xp, {"out": out, "preact_out": arr["preact_out"]})
    _check_ndim("w", w, 2)
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 dimension (..., F); got {describe(x)}")
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
    inputs = [x, w] + ([b] if b is not None else [])
    y = _Output(be.xp, "out", out, lead + (d,), (rows, d), dtype, inputs, keep=False)
    z = None if preact_out is None else _Output(be.xp, "preact_out", arr["preact_out"], lead + (d,), (rows, d),
                                                dtype, inputs, keep=False)
    be.gemm(_as_dtype(x if x.ndim == 2 else x.reshape(rows, features), dtype), _as_dtype(w, dtype), y.work,
            alpha=1.0, beta=0.0, bias=None if b is None else _as_dtype(b, dtype),
            activation=activation, preact=None if z is None else z.work)
    if z is not None:
        z.finish()
    return y.finish()


def _checked_preact(preact: Array, dy: Array, dtype: np.dtype) -> Array:
    """backward's preact: dY's shape and the gradients' dtype, as forward's preact_out has them."""
    if tuple(preact.shape) != tuple(dy.shape):
        raise ValueError(f"preact has {describe(preact)}; expected dy's shape {tuple(dy.shape)} "
                         "(forward's preact_out)")
    if preact.dtype != dtype:
        raise TypeError(f"preact has {describe(preact)}; expected dtype {dtype}, that of dy, x and w")
    return preact


def backward(dy: Array, x: Array, w: Array, *, activation: str | None = None, preact: Array | None = None,
             need_dx: bool = True, need_dw: bool = True,
             need_db: bool = True, dx_out: Array | None = None, dw_out: Array | None = None,
             db_out: Array | None = None, accumulate: bool = False,
             backend: str | Backend | None = None) -> Gradients:
    """The gradients of Y = X·W + b given dY = ∂L/∂Y: dX = dY·Wᵀ, dW = Xᵀ·dY, db = Σ_rows dY.

    With an activation, Y = act(Z), Z = X·W + b: preact is Z (forward's preact_out; for "relu" Y itself
    serves, since Y > 0 exactly where Z > 0), and the gradients are those of Y through the activation:
    dZ = dY ⊙ act'(Z) and db = Σ_rows dZ in one pass over dY and Z, then dX = dZ·Wᵀ, dW = Xᵀ·dZ.

    accumulate=True adds dW and db into dw_out and db_out (gradient accumulation over micro-batches);
    dx is always overwritten.
    """
    if activation is not None:
        check_activation(activation)
        if preact is None:
            raise ValueError(f"activation={activation!r} needs preact, the pre-activation X·W + b that forward "
                             "wrote to preact_out (for 'relu' forward's output serves)")
    elif preact is not None:
        raise ValueError("preact is given but activation is None: name the activation it belongs to")
    # The common case in few steps, as in forward: arrays of the type the backend takes, of one supported
    # dtype and matching shapes, no dx_out, dw_out and db_out either not given or written directly (as
    # Linear.backward gives its parameters' gradients to add into). Anything else takes the general path.
    if (dx_out is None and type(x) is type(dy) and type(w) is type(dy) and type(need_dx) is bool
            and type(need_dw) is bool and type(need_db) is bool and type(accumulate) is bool
            and (activation is None or type(preact) is type(dy))):
        be = _fast_backend(x, backend)
        if (be is not None and _plain_float(dtype := x.dtype) and w.dtype is dtype
                and dy.dtype is dtype and w.ndim == 2 and x.ndim >= 1 and x.shape[-1] == w.shape[0]
                and dy.shape == x.shape[:-1] + w.shape[1:]
                and (activation is None or preact.dtype is dtype and preact.shape == dy.shape)):
            features, d = w.shape
            empty = be.xp.empty
            if dw_out is None and db_out is None and accumulate is False:  # new arrays (~0.4 µs sooner)
                dw = empty((features, d), dtype) if need_dw else None
                db = empty(d, dtype) if need_db else None
            else:
                inputs = (dy, x, w) if activation is None else (dy, x, w, preact)
                dw = _direct_out(be.xp, dw_out, need_dw, accumulate, (features, d), dtype, inputs)
                db = _direct_out(be.xp, db_out, need_db, accumulate, (d,), dtype, inputs)
                if dw_out is not None and db_out is not None and be.xp.may_share_memory(dw_out, db_out):
                    dw = False  # two results in one memory: the general path names the fault
            if dw is not False and db is not False:
                dx = empty(x.shape, dtype) if need_dx else None
                beta = 1.0 if accumulate else 0.0
                if x.ndim == 2:  # reshape costs ~0.3 µs even when it changes nothing
                    _gradients(be, dy, x, w, dx, dw, db, beta=beta, activation=activation, z=preact)
                else:
                    rows = math.prod(x.shape[:-1])
                    _gradients(be, dy.reshape(rows, d), x.reshape(rows, features), w,
                               None if dx is None else dx.reshape(rows, features), dw, db, beta=beta,
                               activation=activation, z=None if preact is None else preact.reshape(rows, d))
                return Gradients(dx, dw, db)
    be, arr = _resolve({"dy": dy, "x": x, "w": w, "preact": preact, "dx_out": dx_out, "dw_out": dw_out,
                        "db_out": db_out}, backend, optional=("preact",))
    dy, x, w = arr["dy"], arr["x"], arr["w"]
    _check_ndim("w", w, 2)
    features, d = w.shape
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"x has shape {tuple(x.shape)} and w has shape {tuple(w.shape)}: x must be (..., {features})")
    if dy.shape != x.shape[:-1] + (d,):
        raise ValueError(f"dy has shape {tuple(dy.shape)}, x has shape {tuple(x.shape)} and w has shape "
                         f"{tuple(w.shape)}: dy must be {tuple(x.shape[:-1]) + (d,)}")
    need_dx, need_dw = _check_flag("need_dx", need_dx), _check_flag("need_dw", need_dw)
    need_db, accumulate = _check_flag("need_db", need_db), _check_flag("accumulate", accumulate)
    _check_distinct(be.xp, {"dx_out": arr["dx_out"], "dw_out": arr["dw_out"], "db_out": arr["db_out"]})
    if accumulate:
        for need, name in ((need_dw, "dw_out"), (need_db, "db_out")):
            if need and arr[name] is None:
                raise ValueError(f"accumulate=True needs {name}, the gradient to add into")
    dtype = _result_dtype({"dy": dy, "x": x, "w": w})
    rows = math.prod(x.shape[:-1])
    z = None if activation is None else _checked_preact(arr["preact"], dy, dtype)
    inputs = [dy, x, w] + ([z] if z is not None else [])
    # Every result is written (to out= directly, or to a temporary) only after the outputs are set up,
    # and copied into a user's out= that may alias an input only after every product has read them.
    dx = _Output(be.xp, "dx_out", arr["dx_out"], tuple(x.shape), (rows, features), dtype, inputs,
                 keep=False) if need_dx else None
    dw = _Output(be.xp, "dw_out", arr["dw_out"], (features, d), (features, d), dtype, inputs,
                 keep=accumulate) if need_dw else None
    db = _Output(be.xp, "db_out", arr["db_out"], (d,), (d,), dtype, inputs, keep=accumulate) if need_db else None
    if x.ndim != 2:
        dy, x = dy.reshape(rows, d), x.reshape(rows, features)
        z = None if z is None else z.reshape(rows, d)
    _gradients(be, _as_dtype(dy, dtype), _as_dtype(x, dtype), _as_dtype(w, dtype), None if dx is None else dx.work,
               None if dw is None else dw.work, None if db is None else db.work, beta=1.0 if accumulate else 0.0,
               activation=activation, z=z)
    return Gradients(None if dx is None else dx.finish(), None if dw is None else dw.finish(),
                     None if db is None else db.finish())


def _direct_out(xp: Any, out: Array | None, need: bool, accumulate: bool, shape: tuple[int, ...], dtype: np.dtype,
                inputs: tuple[Array, ...]) -> Array | None | Literal[False]:
    """For the fast paths of forward and backward, the array a result is written to: None when it is not
    needed (and no out given), a new array when no out is given and nothing is accumulated, out itself when
    it can be written directly (its type, dtype and shape, C-contiguous, sharing no memory with an input);
    False for anything else, which the general path takes (to copy through a temporary, or to name the
    fault)."""
    if out is None:
        return None if not need else False if accumulate else xp.empty(shape, dtype)
    if not (need and type(out) is type(inputs[0]) and out.dtype is dtype and out.shape == shape
            and out.flags.c_contiguous):
        return False
    for a in inputs:
        if xp.may_share_memory(out, a):
            return False
    return out


def _as_dtype(a: Array, dtype: np.dtype) -> Array:
    """a in dtype (astype costs ~0.3 µs even when it changes nothing)."""
    return a if a.dtype == dtype else a.astype(dtype)


def _gradients(be: Backend, dy: Array, x: Array, w: Array, dx: Array | None, dw: Array | None, db: Array | None,
               *, beta: float, activation: str | None = None, z: Array | None = None) -> None:
    """The backward products, each into the array given for it (None: not computed): dx = dY·Wᵀ,
    dw = Xᵀ·dY + beta·dw, db = Σ_rows dY + beta·db, for 2-D dy (B, D), x (B, F), w (F, D). With an
    activation, dY is first replaced by dZ = dY ⊙ act'(z) (z: the pre-activation, 2-D as dy), made with
    db in one pass over dY and z (Backend.activation_grad)."""
    if activation is not None:
        dz = be.xp.empty(dy.shape, dy.dtype)
        be.activation_grad(dy, z, dz, db, activation=activation, beta=beta)
        dy, db = dz, None
    if dx is not None:
        be.gemm(dy, w.T, dx, alpha=1.0, beta=0.0)
    if dw is not None:
        be.gemm(x.T, dy, dw, alpha=1.0, beta=beta)
    if db is not None:
        be.colsum(dy, db, beta=beta)
