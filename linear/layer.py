"""A drop-in linear layer on top of linear.functional: Y = act(X·W + b), with its parameters and gradients.

weight has shape (in_features, out_features) so that Y = X·W; torch.nn.Linear stores the transpose
(state_dict(layout="torch") and load_state_dict(..., layout="torch") convert, without torch).
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator

import numpy as np

from . import checkpoint, functional
from .activations import check_activation
from .arrays import array_module, to_host
from .backends import default_backend_name, get_backend
from .dtypes import dtype_of
from .functional import describe

Array = Any  # a numpy.ndarray or a cupy.ndarray


class Parameter:
    """A trainable array and the gradient accumulated for it (same array module, shape and dtype)."""

    def __init__(self, data: Array):
        self.data = data
        self.grad = array_module(data).zeros_like(data)

    def __repr__(self) -> str:
        return f"Parameter({describe(self.data)})"


class Linear:
    """Y = act(X·W + b) for x of shape (..., in_features); call it (or forward) then backward.

    activation: None, "relu", "gelu", "gelu_tanh" or "silu" (linear.activations), applied in the same
    kernel as the product. forward keeps a reference to x (not a copy) for backward, and what the
    activation's gradient needs: the pre-activation Z = X·W + b, written beside Y by the same kernel, or
    for relu Y itself (Y > 0 exactly where Z > 0), which costs nothing more. Modify x (and, for relu, the
    returned Y) in place only after backward.
    backward adds into weight.grad and bias.grad, so gradients accumulate over micro-batches until
    zero_grad(). Inputs must be arrays of `xp` (numpy, or cupy for backend "cuda") of the layer's dtype.
    backend=None means $LINEAR_BACKEND, else "numpy"; seed makes the initial values reproducible.
    """

    # Class-level defaults: a layer pickled before activations existed unpickles without an activation.
    activation: str | None = None
    _preact: Array | None = None

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, dtype: Any = "float32",
                 backend: str | None = None, seed: int | None = None, activation: str | None = None):
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer; got {value!r} of type {type(value).__name__}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.dtype = dtype_of(dtype)
        self.backend = backend or default_backend_name()
        self._backend = get_backend(self.backend)  # fails now, with the reason, when it cannot run here
        # torch.nn.Linear's default: weight and bias uniform in ±1/sqrt(in_features) (0 when it is 0).
        rng = np.random.default_rng(seed)
        bound = 1 / math.sqrt(self.in_features) if self.in_features else 0.0
        self.weight = self._new_parameter(rng.uniform(-bound, bound, (self.in_features, self.out_features)))
        self.bias = self._new_parameter(rng.uniform(-bound, bound, self.out_features)) if bias else None
        self._x: Array | None = None
        self.activation = check_activation(activation)

    @property
    def xp(self):
        """The array module of the layer's arrays: numpy, or cupy for backend "cuda"."""
        return self._backend.xp

    def __getstate__(self) -> dict[str, Any]:
        # Pickle and deepcopy take the configuration and parameters (with their gradients), not the
        # arrays the last forward kept for backward, nor the backend object (resolved again by name).
        state = {**self.__dict__, "_x": None, "_preact": None}
        del state["_backend"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._backend = get_backend(self.backend)

    def _new_parameter(self, host_values: np.ndarray) -> Parameter:
        return Parameter(self.xp.asarray(host_values.astype(self.dtype)))

    def _check(self, name: str, a: Array, shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(a, self.xp.ndarray):
            raise TypeError(f"{name} must be a {self.xp.__name__} array (this layer's backend is "
                            f"{self.backend!r}); got {type(a).__name__}")
        if a.dtype != self.dtype:
            raise TypeError(f"{name} has {describe(a)}; this layer's dtype is {self.dtype} "
                            f"(convert with {name}.astype(...))")
        if shape is not None and tuple(a.shape) != shape:
            raise ValueError(f"{name} has {describe(a)}; expected shape {shape} (the shape of the output "
                             "of the last forward)")

    def forward(self, x: Array) -> Array:
        """Y = act(X·W + b); x has shape (..., in_features), Y has shape (..., out_features)."""
        self._check("x", x)
        z = None
        if self.activation not in (None, "relu"):  # relu's gradient reads Y
            z = self.xp.empty(tuple(x.shape[:-1]) + (self.out_features,), self.dtype)
        y = functional.forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                               activation=self.activation, preact_out=z, backend=self._backend)
        self._x = x
        self._preact = y if self.activation == "relu" else z
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
            dy, self._x, self.weight.data, activation=self.activation, preact=self._preact,
            need_dx=need_dx, need_db=self.bias is not None,
            dw_out=self.weight.grad, db_out=None if self.bias is None else self.bias.grad,
            accumulate=True, backend=self._backend)
        return grads.dx

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad.fill(0)

    def parameters(self) -> Iterator[Parameter]:
        yield from self._named_parameters().values()

    def _named_parameters(self) -> dict[str, Parameter]:
        return {"weight": self.weight, **({"bias": self.bias} if self.bias is not None else {})}

    def state_dict(self, *, layout: str = "linear") -> dict[str, Array]:
        """Copies of the parameter values, by name ("weight", and "bias" when the layer has one).
        layout="torch" gives the weight as torch.nn.Linear stores it: (out_features, in_features)."""
        state = {name: p.data.copy() for name, p in self._named_parameters().items()}
        if _check_layout(layout) == "torch":
            state["weight"] = self.xp.ascontiguousarray(state["weight"].T)
        return state

    def load_state_dict(self, state: dict[str, Array], *, layout: str = "linear") -> None:
        """Copy values into the parameters; nothing changes unless every key, shape and dtype matches.
        layout="torch" takes the weight as torch.nn.Linear stores it: (out_features, in_features)."""
        torch_layout = _check_layout(layout) == "torch"
        params = self._named_parameters()
        missing = sorted(params.keys() - state.keys())
        unexpected = sorted(state.keys() - params.keys())
        if missing or unexpected:
            raise ValueError(f"state_dict does not match {self!r}: missing keys {missing}, "
                             f"unexpected keys {unexpected}")
        values = {}
        for name, p in params.items():
            value = state[name]
            if not hasattr(value, "shape") or not hasattr(value, "dtype"):
                raise TypeError(f"state_dict[{name!r}] must be an array; got {type(value).__name__}")
            if name == "weight" and torch_layout:
                value = value.T
            if tuple(value.shape) != p.data.shape or value.dtype != p.data.dtype:
                hint = ""
                if name == "weight" and tuple(value.shape) == p.data.shape[::-1] and p.data.shape[0] != p.data.shape[1]:
                    hint = (" (its transpose: torch.nn.Linear's (out_features, in_features) layout is "
                            "loaded with layout='torch')" if not torch_layout else
                            " (its transpose: with layout='torch' the weight is (out_features, in_features))")
                shape = tuple(state[name].shape)
                expected = p.data.shape[::-1] if name == "weight" and torch_layout else p.data.shape
                raise ValueError(f"state_dict[{name!r}] has shape {shape} and dtype {value.dtype}; expected "
                                 f"shape {expected} and dtype {p.data.dtype}{hint}")
            values[name] = value
        for name, p in params.items():
            p.data[...] = self.xp.asarray(values[name])

    def save(self, path: str | os.PathLike) -> None:
        """Write the configuration and parameters to an .npz file (read back with Linear.load).

        Atomic: the file is written under a temporary name in the same directory, flushed to disk, then
        renamed over `path`, so a crash at any moment leaves the previous file at `path` whole.
        """
        arrays = {name: to_host(value) for name, value in self.state_dict().items()}
        checkpoint.save(path, checkpoint.Checkpoint(self.in_features, self.out_features, self.bias is not None,
                                                    self.dtype.name, arrays, self.activation))

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str | None = None) -> "Linear":
        """A Linear rebuilt from a file written by save(), its parameters on `backend`.

        The file is checked before anything is allocated (its keys, the configuration's types and
        ranges, each array's shape and dtype against the configuration, and that the file holds every
        byte it declares); anything else is a ValueError naming the file and what is wrong. Never unpickles.
        """
        stored = checkpoint.load(path)
        layer = cls(stored.in_features, stored.out_features, stored.has_bias, dtype=stored.dtype, backend=backend,
                    activation=stored.activation)
        layer.load_state_dict(stored.arrays)
        return layer

    def __repr__(self) -> str:
        extra = "" if self.dtype == np.float32 else f", dtype={self.dtype.name}"
        extra += "" if self.activation is None else f", activation={self.activation!r}"
        return (f"Linear(in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}{extra})")


def _check_layout(layout: str) -> str:
    if layout not in ("linear", "torch"):
        raise ValueError(f"layout must be 'linear' (weight (in_features, out_features)) or 'torch' "
                         f"(weight (out_features, in_features)); got {layout!r}")
    return layout
