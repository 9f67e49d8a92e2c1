"""Shared test helpers: the dtypes, random operands in any memory layout, float64 references and the
comparison against them, the emulator."""
from __future__ import annotations

import numpy as np

from conftest import require
from linear import get_tf32
from linear.backends import BackendUnavailable, get_backend
from linear.backends.launch import Launch
from linear.backends.tiles import TILE_CONFIGS
from linear.dtypes import ELEMENT_TYPES, dtype_of
from linear.testing import TF32_TOLERANCE, TOLERANCE, relative_error


def to_numpy(a):
    """A numpy copy of a numpy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64, on the host; inf when out has a NaN (an element left unwritten)."""
    return relative_error(to_numpy(out), to_numpy(ref))


def assert_close(out, ref, dtype) -> None:
    name = np.dtype(dtype).name
    tolerance = TF32_TOLERANCE if name == "float32" and get_tf32() else TOLERANCE[name]
    err = rel_err(out, ref)
    assert err <= tolerance, f"relative error {err:.3e} > {tolerance:.0e} for {name}"


def poisoned(xp, shape, dtype):
    """An output array filled with NaN so that unwritten elements show."""
    return xp.full(shape, np.nan, dtype=dtype)


# Every dtype the kernels run, by name (bfloat16 needs ml_dtypes, which the test extra installs).
DTYPES = {name: dtype_of(name) for name in ELEMENT_TYPES}


# Every (dtype, SIMT tile configuration) pair that is instantiated.
DTYPE_CONFIGS = [(dtype, config.name) for dtype in DTYPES for config in TILE_CONFIGS if dtype in config.dtypes]
TRANS = [(False, False), (False, True), (True, False), (True, True)]


def stored(rng, shape, dtype, ld=None) -> np.ndarray:
    """Random normal values as a row-major view with leading dimension ld; the rest of each row is NaN."""
    rows, cols = shape
    storage = np.full((rows, cols if ld is None else ld), np.nan, dtype=dtype)
    storage[:, :cols] = rng.standard_normal((rows, cols))
    return storage[:, :cols]


def op(x: np.ndarray, trans: bool) -> np.ndarray:
    """op(x): x with its last two axes swapped when trans (a view: how a transpose reaches a backend)."""
    return np.swapaxes(x, -1, -2) if trans else x


def gemm_reference(a, b, trans_a, trans_b, alpha, beta, c, bias) -> np.ndarray:
    """alpha·op(a)·op(b) + beta·c + bias in float64."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if beta != 0:
        out += beta * c.astype(np.float64)
    if bias is not None:
        out += bias.astype(np.float64)
    return out


def output(rng, shape, dtype, beta) -> np.ndarray:
    """C before the call: NaN where it must not be read (beta = 0), random values otherwise."""
    return poisoned(np, shape, dtype) if beta == 0 else stored(rng, shape, dtype).copy()


def layout(x: np.ndarray, name: str) -> np.ndarray:
    """The same values as x in another memory layout."""
    if name == "fortran":
        return np.asfortranarray(x)
    if name == "transposed":  # a transposed view of a C array
        return np.ascontiguousarray(x.T).T
    if name == "reversed":  # negative strides
        return np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    if name == "strided":  # a non-unit inner stride
        wide = np.empty((x.shape[0], 2 * x.shape[1]), x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    if name == "sliced":  # ld > cols
        wide = np.full((x.shape[0], x.shape[1] + 5), np.nan, x.dtype)
        wide[:, :x.shape[1]] = x
        return wide[:, :x.shape[1]]
    return x


LAYOUTS = ["c", "fortran", "transposed", "reversed", "strided", "sliced"]


def batched(rng, batch, shape, dtype, broadcast=False):
    """A stack of random matrices; with broadcast, one matrix seen batch times (stride 0)."""
    if broadcast:
        return np.broadcast_to(rng.standard_normal(shape).astype(dtype), batch + shape)
    return rng.standard_normal(batch + shape).astype(dtype)


def emulator(**options):
    """An EmulatorRuntime (skipped locally, failed in CI, without a C++ compiler)."""
    try:
        from linear.backends.emulate import EmulatorRuntime
        return EmulatorRuntime(**options)
    except BackendUnavailable as e:
        require(False, f"the emulate backend ({e})")


def emulate_backend():
    """The emulate backend (skipped locally, failed in CI, without a C++ compiler)."""
    try:
        return get_backend("emulate")
    except BackendUnavailable as e:
        require(False, f"the emulate backend ({e})")


class RecordingRuntime:
    """A runtime that launches through `runtime` and records each launch as a launch.Launch (its args as
    the kernel got them) in `launched`, and each kernel function it hands out in `looked_up`."""

    def __init__(self, runtime):
        self.runtime, self.name, self.xp = runtime, runtime.name, runtime.xp
        self.launched, self.looked_up = [], []

    def function(self, source, name, options=()):
        self.looked_up.append((source, name))
        kernel = self.runtime.function(source, name, options=options)

        def launch(grid, block, args, shared_mem=0):
            self.launched.append(Launch(source, name, tuple(grid), tuple(block), tuple(args), shared_mem, tuple(options)))
            kernel(grid, block, args, shared_mem=shared_mem)
        return launch

    def compute_capability(self):
        return self.runtime.compute_capability()

    def encode_tensor_map(self, array, *layout):  # the emulator's
        return self.runtime.encode_tensor_map(array, *layout)

    def device_limits(self):
        return self.runtime.device_limits()

    def device_id(self):
        return self.runtime.device_id()
