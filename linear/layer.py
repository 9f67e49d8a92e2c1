"""A drop-in linear layer on top of linear.functional: Y = X·W + b, with its parameters and gradients.

weight has shape (in_features, out_features) so that Y = X·W; torch.nn.Linear stores the transpose
(state_dict(layout="torch") and load_state_dict(..., layout="torch") convert, without torch).
"""
from __future__ import annotations

import math
import os
import secrets
import sys
import zipfile
from typing import Any, Iterator, NamedTuple

import numpy as np

from . import functional
from .activations import ACTIVATIONS, check_activation
from .functional import SUPPORTED_DTYPES, describe
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
        self.dtype = _dtype(dtype)
        self.backend = backend or default_backend_name()
        get_backend(self.backend)  # fails now, with the reason, when the backend cannot run here
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
        return get_backend(self.backend).xp

    def __getstate__(self) -> dict[str, Any]:
        # Pickle and deepcopy take the configuration and parameters (with their gradients), not the
        # arrays the last forward kept for backward.
        return {**self.__dict__, "_x": None, "_preact": None}

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
                               activation=self.activation, preact_out=z, backend=self.backend)
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
            accumulate=True, backend=self.backend)
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
        path = os.fspath(path)
        arrays = {name: _to_host(value) for name, value in self.state_dict().items()}
        directory = os.path.dirname(os.path.abspath(path))
        temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            # os.open with O_EXCL: a fresh file with the umask's permissions, as open(path, "wb") makes.
            with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
                np.savez(file, in_features=self.in_features, out_features=self.out_features,
                         has_bias=self.bias is not None, dtype=self.dtype.name,
                         activation=self.activation or "", **arrays)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
        _fsync_directory(directory)  # the rename itself survives a power cut

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str | None = None) -> "Linear":
        """A Linear rebuilt from a file written by save(), its parameters on `backend`.

        The file is checked before anything is allocated (its keys, the configuration's types and
        ranges, each array's shape and dtype against the configuration, and that the file holds every
        byte it declares); anything else is a ValueError naming the file and what is wrong. Never unpickles.
        """
        stored = _read_checkpoint(os.fspath(path))
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


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is what it offers
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Checkpoint(NamedTuple):
    """What Linear.load reads from a file, after _read_checkpoint has checked it."""
    in_features: int
    out_features: int
    has_bias: bool
    dtype: str
    arrays: dict[str, np.ndarray]
    activation: str | None = None  # files written before activations existed have none


_ACTIVATION_KEY = "activation"  # optional (older files lack it); "" for None
_CONFIG_KEYS = ("in_features", "out_features", "has_bias", "dtype")
_MAX_FEATURES = 2**31 - 1  # the kernels' int sizes
_MAX_CONFIG_BYTES = 4096  # a configuration entry is a scalar; anything bigger is not ours


def _read_checkpoint(path: str) -> _Checkpoint:
    """Read and check a file written by Linear.save; ValueError naming the file and the problem."""
    def bad(problem: str) -> ValueError:
        return ValueError(f"{path!r} is not a saved Linear: {problem}")

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        raise bad(f"not an .npz (zip) file ({e})") from None
    with archive:
        try:
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            missing = [key for key in _CONFIG_KEYS if key not in members]
            if missing:
                raise bad(f"missing keys {missing}")
            headers = {key: _npy_header(archive, info, bad) for key, info in members.items()}
            config = {key: _read_small(archive, members[key], headers[key], key, bad) for key in _CONFIG_KEYS}
            in_features, out_features = (_int_in_range(config[key], key, bad) for key in ("in_features", "out_features"))
            if config["has_bias"].dtype != np.bool_:
                raise bad(f"has_bias must be a boolean; got dtype {config['has_bias'].dtype}")
            has_bias = bool(config["has_bias"])
            if config["dtype"].dtype.kind != "U" or str(config["dtype"]) not in SUPPORTED_DTYPES:
                raise bad(f"dtype must be one of {', '.join(SUPPORTED_DTYPES)}; got {config['dtype']!r}")
            dtype = _dtype(str(config["dtype"]))
            expected = {"weight": (in_features, out_features), **({"bias": (out_features,)} if has_bias else {})}
            activation = _read_activation(archive, members, headers, bad)
            unexpected = sorted(members.keys() - expected.keys() - set(_CONFIG_KEYS) - {_ACTIVATION_KEY})
            missing = sorted(expected.keys() - members.keys())
            if missing or unexpected:
                raise bad(f"missing keys {missing}, unexpected keys {unexpected} (has_bias={has_bias})")
            for key, shape in expected.items():
                stored_shape, stored_dtype, _ = headers[key]
                # bfloat16, which numpy does not know, is stored as raw bytes ("V2")
                if stored_shape != shape or stored_dtype not in (dtype, np.dtype(f"V{dtype.itemsize}")):
                    raise bad(f"{key!r} has shape {stored_shape} and dtype {stored_dtype}; the configuration "
                              f"(in_features={in_features}, out_features={out_features}, dtype={dtype.name}) "
                              f"needs shape {shape} and dtype {dtype.name}")
            arrays = {key: _read_array(archive, members[key]).view(dtype) for key in expected}
        except (zipfile.BadZipFile, OSError, EOFError) as e:  # a CRC mismatch, a truncated member, ...
            raise bad(f"corrupt ({type(e).__name__}: {e})") from None
    return _Checkpoint(in_features, out_features, has_bias, dtype.name, arrays, activation)


def _read_activation(archive: zipfile.ZipFile, members: dict, headers: dict, bad) -> str | None:
    """The checkpoint's activation: None when the key is absent (older files) or "" (saved as None)."""
    if _ACTIVATION_KEY not in members:
        return None
    value = _read_small(archive, members[_ACTIVATION_KEY], headers[_ACTIVATION_KEY], _ACTIVATION_KEY, bad)
    names = [name for name in ACTIVATIONS if name is not None]
    if value.dtype.kind != "U" or str(value) not in ["", *names]:
        raise bad(f"activation must be '' (none) or one of {', '.join(names)}; got {value!r}")
    return str(value) or None


def _npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, bad) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran_order) of one .npy member, after checking that the member holds exactly
    the bytes its header declares, uncompressed (as save writes it): so nothing read later is larger
    than the file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise bad(f"{info.filename!r} is compressed; Linear.save writes uncompressed members")
    with archive.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran_order, dtype = read_header(member)
        except ValueError as e:
            raise bad(f"{info.filename!r} has no valid .npy header ({e})") from None
        if dtype.hasobject:
            raise bad(f"{info.filename!r} holds Python objects (dtype {dtype}); they are never unpickled")
        data_bytes = math.prod(shape) * dtype.itemsize
        if info.file_size != member.tell() + data_bytes:
            raise bad(f"{info.filename!r} declares shape {shape} and dtype {dtype} ({data_bytes} bytes) but holds "
                      f"{info.file_size - member.tell()} bytes")
    return shape, dtype, fortran_order


def _read_small(archive: zipfile.ZipFile, info: zipfile.ZipInfo, header, key: str, bad) -> np.ndarray:
    shape, dtype, _ = header
    if shape != () or info.file_size > _MAX_CONFIG_BYTES:
        raise bad(f"{key!r} must be a scalar; got shape {shape} and dtype {dtype}")
    return _read_array(archive, info)


def _read_array(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _int_in_range(value: np.ndarray, key: str, bad) -> int:
    if value.dtype.kind not in "iu" or not 0 <= int(value) <= _MAX_FEATURES:
        raise bad(f"{key} must be an integer in [0, {_MAX_FEATURES}]; got {value!r}")
    return int(value)
