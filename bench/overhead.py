"""`python -m bench.overhead`: what linear's checks and dispatch cost per call, next to the raw numpy
expression, on a small layer where that cost shows (the default numpy backend; BLAS pinned to one thread).

    python -m bench.overhead                          # 64x128x128 float32, 2000 rounds
    python -m bench.overhead --shape 32,784,256 --rounds 5000
    python -m bench.overhead --stand-in cuda          # the cuda path's host time, without a GPU
    python -m bench.overhead --stand-in cuda --dtype bfloat16   # ... on the Hopper kernel, with its tensor maps

Each round times the linear call and the raw expression once each, on the same (cache-warm) inputs, in
alternating order. Reports, in µs, min and median of each, and the overhead two ways: min(linear) -
min(raw), the cost on a quiet moment, and the median of the round-by-round differences, which load
from other work on the machine hits on both sides alike.

--stand-in cuda times everything of a cuda call but the GPU's part: the kernel backend (its plan cache
hit on every timed call) over the cuda runtime with kernels that do nothing (CupyRuntime's launcher, which
passes tensor maps by value, around a CuPy kernel function that does nothing), with arrays that pass for
CuPy's (numpy arrays of a class in a module named cupy, so that linear takes the path CuPy arrays take).
An array's address costs the stand-in numpy's ~0.9 µs (ctypes) the first time it is read from that array
object (every new output, every view), ~0.15 µs after; CuPy's x.data.ptr is two attribute reads of its
Cython objects (not measured here: no CuPy). Not in it:
CuPy's own costs (cupy.empty from its memory pool, a kernel launch through the driver, reading the
current device), and what the kernels do. Its raw expression is an empty call. The stand-in
reports an H100 (compute capability 9.0), so with --dtype bfloat16 the products run the Hopper kernel,
whose two tensor maps per product come from tensor_map's cache on every timed call (the stand-in's
encoder, called once per operand, makes 128 zero bytes instead of the driver's map).
"""
from __future__ import annotations

import argparse
import statistics
import time
import types

import numpy as np

import linear
from linear.backends.cuda import CupyRuntime
from linear.backends.device import H100
from linear.backends.kernel import KernelBackend
from linear.backends.tensor_map import TENSOR_MAP_BYTES
from linear.dtypes import dtype_of

from .machine import describe_load, load_check
from .timers import pin_threads


def _pairs(shape: tuple[int, int, int]) -> dict:
    """op -> (linear call, raw numpy expression computing the same)."""
    rng = np.random.default_rng(0)
    batch, features, d = shape
    x, dy = rng.standard_normal((batch, features), np.float32), rng.standard_normal((batch, d), np.float32)
    w, b = rng.standard_normal((features, d), np.float32), rng.standard_normal(d, np.float32)
    dw, db = np.zeros_like(w), np.zeros_like(b)
    return {
        "forward": (lambda: linear.forward(x, w, b), lambda: x @ w + b),
        "backward": (lambda: linear.backward(dy, x, w), lambda: (dy @ w.T, x.T @ dy, dy.sum(axis=0))),
        "matmul": (lambda: linear.matmul(x, w), lambda: x @ w),
        # Linear.backward's call: gradients added into the parameters' .grad
        "backward-acc": (lambda: linear.backward(dy, x, w, dw_out=dw, db_out=db, accumulate=True),
                         lambda: (dy @ w.T, np.add(dw, x.T @ dy, out=dw), np.add(db, dy.sum(axis=0), out=db))),
    }


class _StandInArray(np.ndarray):
    """A numpy array that linear takes for a CuPy array (its class lives in a module named cupy). Its address
    (x.ctypes.data, read by linear where CuPy's x.data.ptr is two attribute reads) costs numpy's ~0.9 µs once
    per array object, then ~0.15 µs: read once and kept (the stand-in never resizes an array in place)."""

    @property
    def ctypes(self):
        kept = self.__dict__.get("_ctypes")
        if kept is None:
            kept = self.__dict__["_ctypes"] = types.SimpleNamespace(data=np.ndarray.ctypes.__get__(self).data)
        return kept


_StandInArray.__module__ = "cupy.stand_in"


def _stand_in_cupy() -> types.ModuleType:
    """numpy, as far as linear, the plan and the cuda runtime use CuPy, making _StandInArrays."""
    cupy = types.ModuleType("cupy")
    cupy.__getattr__ = lambda name: getattr(np, name)
    cupy.ndarray = _StandInArray
    cupy.empty = lambda shape, dtype=float: np.empty(shape, dtype).view(_StandInArray)
    cupy.make_aligned_dtype = lambda dtype, alignment: np.dtype(dtype, align=True)  # the alignment aside
    return cupy


class _NoKernel:
    """A CuPy kernel function that does nothing."""
    max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0) -> None:
        pass


class NoLaunchRuntime(CupyRuntime):
    """The cuda runtime's stand-in: an H100's compute capability and limits, and CupyRuntime's launcher
    (what the cuda runtime does with a launch's arguments for CuPy) around kernels that do nothing."""
    name = "cuda"

    def __init__(self) -> None:
        super().__init__(xp=_stand_in_cupy())  # nothing of CuPy's to find or compile with
        self.kernels: dict[tuple, _NoKernel] = {}

    def function(self, source: str, name: str, options: tuple[str, ...] = ()):
        kernel = self.kernels.setdefault((source, name, options), _NoKernel())  # kept, as CupyRuntime keeps its own
        return self.launcher(kernel)

    def compute_capability(self) -> int:
        return 90

    def device_limits(self):
        return H100

    def device_id(self) -> int:
        return 0

    def encode_tensor_map(self, array, *layout) -> bytes:
        return bytes(TENSOR_MAP_BYTES)


def _stand_in_pairs(shape: tuple[int, int, int], dtype: np.dtype) -> dict:
    """op -> (linear call on the cuda stand-in, an empty call)."""
    backend = KernelBackend(NoLaunchRuntime())
    rng = np.random.default_rng(0)
    batch, features, d = shape
    x, dy, w, b = (rng.standard_normal(s).astype(dtype).view(_StandInArray)
                   for s in [(batch, features), (batch, d), (features, d), (d,)])
    dw, db, y = np.zeros_like(w), np.zeros_like(b), np.empty((batch, d), dtype).view(_StandInArray)
    nothing = lambda: None
    return {
        # the one call linear.torch makes per product
        "backend.gemm": (lambda: backend.gemm(x, w, y, alpha=1.0, beta=0.0, bias=b), nothing),
        "forward": (lambda: linear.forward(x, w, b, backend=backend), nothing),
        "backward": (lambda: linear.backward(dy, x, w, backend=backend), nothing),
        "matmul": (lambda: linear.matmul(x, w, backend=backend), nothing),
        "backward-acc": (lambda: linear.backward(dy, x, w, dw_out=dw, db_out=db, accumulate=True, backend=backend),
                         nothing),
    }


def _time_us(call) -> float:
    start = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - start) / 1e3


def measure(ours, raw, rounds: int, warmup: int = 200) -> dict[str, list[float]]:
    for _ in range(warmup):
        ours(), raw()
    times: dict[str, list[float]] = {"linear": [], "raw": [], "overhead": []}
    for i in range(rounds):
        if i % 2:  # alternate which runs first, so neither always follows the other
            t_raw, t_ours = _time_us(raw), _time_us(ours)
        else:
            t_ours, t_raw = _time_us(ours), _time_us(raw)
        times["linear"].append(t_ours)
        times["raw"].append(t_raw)
        times["overhead"].append(t_ours - t_raw)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="64,128,128", help="B,F,D of X (B×F) · W (F×D)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16 only with --stand-in (the Hopper kernel; needs ml_dtypes)")
    parser.add_argument("--rounds", type=int, default=2000, help="timed rounds per op (default 2000)")
    parser.add_argument("--ops", help="comma-separated (default: all; forward, backward, matmul, backward-acc, "
                        "and backend.gemm with --stand-in)")
    parser.add_argument("--stand-in", choices=["cuda"], help="time the cuda path's host work with kernels that "
                        "do nothing, against an empty call (see the module's docstring)")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    # The calls name no backend, as users write them: that path (reading $LINEAR_BACKEND) is measured.
    if not args.stand_in and linear.backends.default_backend_name() != "numpy":
        parser.error("it measures the numpy backend, the default: unset LINEAR_BACKEND")
    if args.dtype != "float32" and not args.stand_in:
        parser.error("--dtype bfloat16 measures the cuda stand-in: add --stand-in cuda")
    dtype = np.dtype(np.float32) if args.dtype == "float32" else dtype_of("bfloat16")
    print(f"load: {describe_load(load_check())}")
    pin_threads(1)
    pairs = _stand_in_pairs(shape, dtype) if args.stand_in else _pairs(shape)
    ops = args.ops.split(",") if args.ops else list(pairs)
    if set(ops) - set(pairs):
        parser.error(f"--ops: choose from {', '.join(pairs)}")
    where = "cuda stand-in (no kernel runs; raw: an empty call)" if args.stand_in else "numpy backend"
    print(f"{'x'.join(map(str, shape))} {dtype.name}, {where}, {args.rounds} rounds; µs per call")
    print(f"{'op':<12} {'linear min/median':>18} {'raw min/median':>16} {'overhead Δmin/median':>22}")
    for op in ops:
        t = measure(*pairs[op], args.rounds)
        cells = [f"{min(t[k]):.1f} / {statistics.median(t[k]):.1f}" for k in ("linear", "raw")]
        cells.append(f"{min(t['linear']) - min(t['raw']):.1f} / {statistics.median(t['overhead']):.1f}")
        print(f"{op:<12} {cells[0]:>18} {cells[1]:>16} {cells[2]:>22}")
    print(f"load after: {describe_load(load_check())}")


if __name__ == "__main__":
    main()
