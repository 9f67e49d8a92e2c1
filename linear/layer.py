"""A drop-in linear layer on top of linear.functional: Y = X·W + b, with its parameters and gradients.

weight has shape (in_features, out_features) so that Y = X·W; torch.nn.Linear stores the transpose.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Iterator

import numpy as np

from . import functional
from .functional import _describe
from .backends import default_backend_name, get_backend

Array = Any  # a numpy.ndarray or a cupy.ndarray


def _dtype(name: Any) -> np.dtype:
    """The numpy dtype for a supported dtype name (bfloat16 comes from ml_dtypes when installed)."""
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
    if dtype is None or dtype.name not in functional.SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(functional.SUPPORTED_DTYPES)}; got {name!r}")
    return dtype


def array_module(a: Array):
    """numpy or cupy, whichever `a` belongs to (a CuPy array exists only once cupy is imported)."""
    cupy = sys.modules.get("cupy")
    return np if cupy is None else cupy.get_array_module(a)


def _to_host(a: Array) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


class Parameter:
    """A trainable array and the gradient accumulated for it (same array module, shape and dtype)."""

    def __init__(self, data: Array):
        self.data = data
        self.grad = array_module(data).zeros_like(data)

    def __repr__(self) -> str:
        return f"Parameter({_describe(self.data)})"


class Linear:
    """Y = X·W + b for x of shape (..., in_features); call it (or forward) then backward.

    forward keeps a reference to x (not a copy) for backward: modify x in place only after backward.
    backward adds into weight.grad and bias.grad, so gradients accumulate over micro-batches until
    zero_grad(). Inputs must be arrays of `xp` (numpy, or cupy for backend "cuda") of the layer's dtype.
    backend=None means $LINEAR_BACKEND, else "numpy"; seed makes the initial values reproducible.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: Any = "float32",
                 backend: str | None = None, seed: int | None = None):
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = _dtype(dtype)
        self.backend = backend or default_backend_name()
        self.xp = get_backend(self.backend).xp
        # torch.nn.Linear's default: weight and bias uniform in ±1/sqrt(in_features) (0 when it is 0).
        rng = np.random.default_rng(seed)
        bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
        self.weight = self._new_parameter(rng.uniform(-bound, bound, (self.in_features, self.out_features)))
        self.bias = self._new_parameter(rng.uniform(-bound, bound, self.out_features)) if bias else None
        self._x: Array | None = None

    def _new_parameter(self, host_values: np.ndarray) -> Parameter:
        return Parameter(self.xp.asarray(host_values.astype(self.dtype)))

    def _check(self, name: str, a: Array, shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array (this layer's backend is "
                            f"{self.backend!r}); got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{name} has {_describe(a)}; this layer's dtype is {self.dtype} "
                            f"(convert with {name}.astype(...))")
        if shape is not None and tuple(a.shape) != shape:
            raise ValueError(f"{name} has {_describe(a)}; expected shape {shape} (the shape of the output "
                             "of the last forward)")

    def forward(self, x: Array) -> Array:
        """Y = X·W + b; x has shape (..., in_features), Y has shape (..., out_features)."""
        self._check("x", x)
        y = functional.forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                               backend=self.backend)
        self._x = x
        return y

    __call__ = forward

    def backward(self, dy: Array, *, need_dx: bool = True) -> Array | None:
        """Add dW = Xᵀ·dY and db = Σ dY into the grads of the last forward's x; return dX = dY·Wᵀ.

        need_dx=False skips dX (the first layer of a network does not need it) and returns None.
        """
        if self._x is None:
            raise RuntimeError("Linear.backward was called before forward: there is no input to differentiate at")
        self._check("dy", dy, tuple(self._x.shape[:-1]) + (self.out_features,))
        grads = functional.backward(
            dy, self._x, self.weight.data, need_dx=need_dx, need_db=self.bias is not None,
            dw_out=self.weight.grad, db_out=None if self.bias is None else self.bias.grad,
            accumulate=True, backend=self.backend)
        return grads.dx

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad.fill(0)

    def parameters(self) -> Iterator[Parameter]:
        yield from self._named_parameters().values()

    def _named_parameters(self) -> dict[str, Parameter]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def state_dict(self) -> dict[str, Array]:
        """Copies of the parameter values, by name ("weight", and "bias" when the layer has one)."""
        return {name: p.data.copy() for name, p in self._named_parameters().items()}

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Copy values into the parameters; nothing changes unless every key, shape and dtype matches."""
        params = self._named_parameters()
        missing = sorted(params.keys() - state.keys())
        unexpected = sorted(state.keys() - params.keys())
        if missing or unexpected:
            raise ValueError(f"state_dict does not match {self!r}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        for name, p in params.items():
            value = state[name]
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                raise TypeError(f"state_dict[{name!r}] must be an array; got {type(value).__name__}")
            if tuple(value.shape) != p.data.shape or value.dtype != p.data.dtype:
                raise ValueError(f"state_dict[{name!r}] has {_describe(value)}; expected {_describe(p.data)}")
        for name, p in params.items():
            p.data[...] = self.xp.asarray(state[name])

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration and parameters to an .npz file (read back with Linear.load)."""
        arrays = {name: _to_host(value) for name, value in self.state_dict().items()}
        with open(path, "wb") as file:  # np.savez(path) would add ".npz" to a name without it
            np.savez(file, in_features=self.in_features, out_features=self.out_features,
                     has_bias=self.bias is not None, dtype=self.dtype.name, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str | None = None) -> "Linear":
        """A Linear rebuilt from a file written by save(), its parameters on `backend`."""
        with np.load(path, allow_pickle=False) as stored:
            config = ("in_features", "out_features", "has_bias", "dtype")
            missing = [key for key in config if key not in stored.files]
            if missing:
                raise ValueError(f"{os.fspath(path)!r} is not a saved Linear: missing keys {missing}")
            layer = cls(int(stored["in_features"]), int(stored["out_features"]), bool(stored["has_bias"]),
                        dtype=str(stored["dtype"]), backend=backend)
            # Types numpy does not know (bfloat16) are stored as raw bytes ("V2"): view them back.
            state = {key: stored[key] for key in stored.files if key not in config}
            state = {key: a.view(layer.dtype) if a.dtype.kind == "V" else a for key, a in state.items()}
        layer.load_state_dict(state)
        return layer

    def __repr__(self) -> str:
        extra = "" if self.dtype == np.float32 else f", dtype={self.dtype.name}"
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{extra})")
