"""The implementations the benchmark compares, each on its own kind of array.

A contender turns one operation on one set of inputs into a call with no arguments (what is timed)
and a way to read what the call wrote (what is checked). Every contender computes the same thing:

    forward  y = x·w + b
    dx       dx = dy·wᵀ
    dw       dw = xᵀ·dy, db = Σ rows of dy
    step     forward, then dx, and dw, db added into gradients that hold dw0, db0 beforehand

Outputs a contender writes into are filled with NaN first, so an element left unwritten shows.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from linear import get_tf32

from .cases import Shape

Array = Any
INPUT_NAMES = ("x", "w", "b", "dy", "dw0", "db0")


class Unavailable(Exception):
    """This contender cannot run on this machine (the message says why)."""


def _import(module: str, hint: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Unavailable(f"{module} is not installed ({hint})") from e


# ----------------------------------------------------------------------------------------------------
# Kinds of array: how host data gets in, how results get out
# ----------------------------------------------------------------------------------------------------

class NumpyArrays:
    name = "numpy"
    xp = np

    def adopt(self, host: np.ndarray) -> Array:
        return host

    def copy(self, a: Array) -> Array:
        return a.copy()

    def poisoned(self, shape: tuple[int, ...], like: Array) -> Array:
        return np.full(shape, np.nan, dtype=like.dtype)

    def to_host(self, a: Array, rows: np.ndarray | None) -> np.ndarray:
        """Rows `rows` of a (all of it when None) as float64 on the host."""
        return np.asarray(a if rows is None else a[rows], dtype=np.float64)

    def all_finite(self, a: Array) -> bool:
        return bool(np.isfinite(a.astype(np.float32, copy=False)).all())

    def release(self) -> None:
        pass


class CupyArrays:
    name = "cupy"

    def __init__(self):
        self.cp = self.xp = _import("cupy", "pip install 'linear[cuda12]' or 'linear[cuda13]'")
        try:
            count = self.cp.cuda.runtime.getDeviceCount()
        except Exception as e:  # CUDARuntimeError: no driver, driver too old, ...
            raise Unavailable(f"CuPy finds no usable GPU ({type(e).__name__}: {e})") from e
        if count == 0:
            raise Unavailable("CuPy finds no GPU")

    def adopt(self, host: np.ndarray) -> Array:
        return self.cp.asarray(host)

    def copy(self, a: Array) -> Array:
        return a.copy()

    def poisoned(self, shape, like):
        return self.cp.full(shape, np.nan, dtype=like.dtype)

    def to_host(self, a, rows):
        part = a if rows is None else a[self.cp.asarray(rows)]
        return self.cp.asnumpy(part).astype(np.float64)

    def all_finite(self, a):
        return bool(self.cp.isfinite(a).all())

    def release(self) -> None:
        self.cp.get_default_memory_pool().free_all_blocks()


class TorchArrays:
    def __init__(self, device: str):
        self.torch = _import("torch", "pip install torch")
        if device == "cuda" and not self.torch.cuda.is_available():
            raise Unavailable("torch finds no CUDA GPU (torch.cuda.is_available() is False)")
        self.device = device
        self.name = f"torch-{device}"

    def adopt(self, host: np.ndarray) -> Array:
        dtype = getattr(self.torch, host.dtype.name)
        # torch cannot read ml_dtypes' bfloat16; half values are exact in float32, so they travel as
        # float32 and are rounded back without change. torch.tensor copies (host arrays are read-only).
        source = host.astype(np.float32) if host.dtype.itemsize == 2 else host
        return self.torch.tensor(source).to(device=self.device, dtype=dtype)

    def copy(self, a):
        return a.clone()

    def to_host(self, a, rows):
        a = a.detach()
        if rows is not None:
            a = a[self.torch.as_tensor(rows, device=a.device)]
        return a.to(self.torch.float64).cpu().numpy()

    def all_finite(self, a):
        return bool(self.torch.isfinite(a.detach()).all())

    def release(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------------
# Contenders
# ----------------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    run: Callable[[], None]
    results: Callable[[], dict[str, Array]]   # output name (y, dx, dw, db) -> array, in our layout


def _outputs(op: str, arrays, t: dict[str, Array], shape: Shape) -> dict[str, Array]:
    """The output buffers of `op`: NaN-poisoned, except the gradients a step adds into."""
    x = t["x"]
    if op == "forward":
        return {"y": arrays.poisoned((shape.b, shape.d), x)}
    if op == "dx":
        return {"dx": arrays.poisoned((shape.b, shape.f), x)}
    if op == "dw":
        return {"dw": arrays.poisoned((shape.f, shape.d), x), "db": arrays.poisoned((shape.d,), x)}
    return {"y": arrays.poisoned((shape.b, shape.d), x), "dx": arrays.poisoned((shape.b, shape.f), x),
            "dw": arrays.copy(t["dw0"]), "db": arrays.copy(t["db0"])}


class Contender:
    """One implementation. `device` is "gpu" or "cpu"; `explicit_only` ones run only when named."""
    name: str
    device: str
    explicit_only = False
    max_volume: int | None = None     # largest B·F·D it is given; None: no limit
    note = ""                         # said in the output when it runs

    kind: Any = None                  # its kind of array, set by load()

    def load(self) -> None:
        """Get ready to run; raises Unavailable (with the reason) when it cannot run here."""
        self.kind = self._arrays()

    def _arrays(self):
        raise NotImplementedError

    def prepare(self, op: str, t: dict[str, Array], shape: Shape) -> Prepared:
        raise NotImplementedError


class Ours(Contender):
    """linear.forward / linear.backward on one of linear's backends."""

    def __init__(self, name: str, backend: str, device: str):
        self.name, self.backend, self.device = name, backend, device

    def _arrays(self):
        from linear.backends import BackendUnavailable, get_backend
        try:
            get_backend(self.backend)
        except BackendUnavailable as e:
            raise Unavailable(str(e)) from e
        return CupyArrays() if self.backend == "cuda" else NumpyArrays()

    def prepare(self, op, t, shape):
        import linear
        out = _outputs(op, self.kind, t, shape)
        x, w, b, dy, be = t["x"], t["w"], t["b"], t["dy"], self.backend
        if op == "forward":
            def run():
                linear.forward(x, w, b, out=out["y"], backend=be)
        elif op == "dx":
            def run():
                linear.backward(dy, x, w, need_dw=False, need_db=False, dx_out=out["dx"], backend=be)
        elif op == "dw":
            def run():
                linear.backward(dy, x, w, need_dx=False, dw_out=out["dw"], db_out=out["db"], backend=be)
        else:
            def run():
                linear.forward(x, w, b, out=out["y"], backend=be)
                linear.backward(dy, x, w, dx_out=out["dx"], dw_out=out["dw"], db_out=out["db"],
                                accumulate=True, backend=be)
        return Prepared(run, lambda: out)


class Raw(Contender):
    """What a user writes with the array library alone: matmul, then the bias add or column sum."""

    def __init__(self, name: str, device: str, note: str = ""):
        self.name, self.device, self.note = name, device, note

    def _arrays(self):
        return CupyArrays() if self.device == "gpu" else NumpyArrays()

    def prepare(self, op, t, shape):
        xp = self.kind.xp
        out = _outputs(op, self.kind, t, shape)
        x, w, b, dy = t["x"], t["w"], t["b"], t["dy"]
        # Half types: the column sum accumulates in float32, as a careful user (and our kernels) would.
        sum_dtype = xp.float32 if x.dtype.itemsize == 2 else None

        def forward():
            xp.matmul(x, w, out=out["y"])
            out["y"] += b

        def dx():
            xp.matmul(dy, w.T, out=out["dx"])

        if op == "forward":
            run = forward
        elif op == "dx":
            run = dx
        elif op == "dw":
            def run():
                xp.matmul(x.T, dy, out=out["dw"])
                out["db"][...] = xp.sum(dy, axis=0, dtype=sum_dtype)
        else:
            # Accumulating: the product goes to a scratch buffer, then is added (matmul has no beta).
            dw_step = self.kind.poisoned((shape.f, shape.d), x)

            def run():
                forward()
                dx()
                xp.matmul(x.T, dy, out=dw_step)
                out["dw"] += dw_step
                out["db"] += xp.sum(dy, axis=0, dtype=sum_dtype).astype(x.dtype)
        return Prepared(run, lambda: out)


class Torch(Contender):
    """torch.nn.functional.linear with autograd; torch stores the weight as (D, F) = Wᵀ."""

    def __init__(self, name: str, device: str):
        self.name, self.device = name, device
        self.torch_device = "cuda" if device == "gpu" else "cpu"

    def _arrays(self):
        kind = TorchArrays(self.torch_device)
        if self.device == "gpu":
            # The GPU timer records CUDA events through CuPy on the legacy default stream, the one
            # torch launches on too.
            CupyArrays()
            kind.torch.backends.cuda.matmul.allow_tf32 = get_tf32()  # bench --tf32 sets it for everyone
            kind.torch.backends.cudnn.allow_tf32 = get_tf32()
        return kind

    def prepare(self, op, t, shape):
        torch = self.kind.torch
        functional = torch.nn.functional
        # detach(): fresh leaf tensors per prepare (sharing storage), so flags set here stay here.
        weight = t["w"].T.contiguous().detach().requires_grad_(True)
        bias = t["b"].detach().requires_grad_(True)
        x = t["x"].detach().requires_grad_(op in ("dx", "step"))
        dy = t["dy"]
        out: dict[str, Array] = {}
        if op == "forward":
            def run():
                out["y"] = functional.linear(x, weight, bias)
            return Prepared(run, lambda: out)
        if op in ("dx", "dw"):
            y = functional.linear(x, weight, bias)
            if op == "dx":
                def run():
                    (out["dx"],) = torch.autograd.grad(y, x, dy, retain_graph=True)
                return Prepared(run, lambda: out)

            def run():
                out["dw"], out["db"] = torch.autograd.grad(y, (weight, bias), dy, retain_graph=True)
            return Prepared(run, lambda: {"dw": out["dw"].T, "db": out["db"]})
        # Copies: the gradients are added into in place.
        weight.grad = t["dw0"].T.clone(memory_format=torch.contiguous_format)
        bias.grad = t["db0"].clone()

        def run():
            x.grad = None    # a fresh dX each step, as in a network; weight and bias grads accumulate
            out["y"] = functional.linear(x, weight, bias)
            out["y"].backward(dy)
        return Prepared(run, lambda: {"y": out["y"], "dx": x.grad, "dw": weight.grad.T, "db": bias.grad})


class Emulated(Ours):
    """Ours on the emulate backend: only when named, and only on tiny shapes (it is slow by design)."""
    explicit_only = True
    max_volume = 256 ** 3
    note = "linear-emulate runs our CUDA source on the CPU: a correctness tool, not a performance backend"


def all_contenders() -> list[Contender]:
    """Every contender, in the order of the report: GPU ones first, each group's baseline after ours."""
    return [
        Ours("linear-cuda", "cuda", "gpu"),
        Raw("cublas", "gpu", note="cublas = cupy.matmul (cuBLAS) + a separate bias add / column sum, as user "
                                  "code writes it; step adds dW, db through a scratch buffer"),
        Torch("torch-gpu", "gpu"),
        Ours("linear-numpy", "numpy", "cpu"),
        Raw("numpy", "cpu"),
        Torch("torch-cpu", "cpu"),
        Emulated("linear-emulate", "emulate", "cpu"),
    ]


# The baseline each device's ratio is taken against.
BASELINE = {"gpu": "cublas", "cpu": "numpy"}
