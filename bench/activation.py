"""The "Linear+activation" case: one training step of Y = act(X·W + b), fused against unfused.

    python -m bench.activation                                   # CPU times, numpy backend, and the byte counts
    python -m bench.activation --shape 512,1024,1024 --activation gelu --repeats 5 --backend numpy
    python -m bench.activation --backend cuda --dtype bfloat16 --shape 8192,4096,11008 --json OUT.json

Unfused is what a user writes without the activation argument: Z = linear.forward(x, w, b), Y = act(Z) as a
separate pass, then dZ = dY ⊙ act'(Z) as another, and linear.backward(dZ, x, w) (whose db is one more pass
over dZ). Fused is linear.forward(..., activation=, preact_out=) and linear.backward(..., activation=,
preact=). Arrays are the backend's (CuPy on cuda), and so are the unfused step's elementwise passes. Both
steps are checked against each other, then timed by bench/timers.py: one warm-up call each, then `repeats`
interleaved rounds, the median kept; device events on cuda, the wall clock elsewhere (emulate included).

Bytes per step (step_bytes), each array moved once per kernel that touches it (the minimum a kernel needs),
B×F×D with elements of s bytes, no gradient accumulation (dW written, not added to):
    the three GEMMs           X, W → Z | dZ, W → dX | X, dZ → dW:        (3·B·F + 3·F·D + 2·B·D)·s
    unfused elementwise       Z written, read, Y written; dY, Z read, dZ written; dZ read for db:  7·B·D·s
    fused, gelu/gelu_tanh/silu  Y and Z written by the GEMM; dY, Z read, dZ written (db beside):   5·B·D·s
    fused, relu               Y written by the GEMM; dY, Y read, dZ written (db beside):          4·B·D·s
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

import linear
from linear import activations
from linear.arrays import array_module, to_host
from linear.backends import get_backend
from linear.dtypes import dtype_of

from .cases import parse_shape
from .gpu_checks import write_json
from .timers import Entry, cpu_ms, gpu_ms, time_interleaved

ELEMENTWISE_PASSES = {"unfused": 7, "fused": 5, "fused relu": 4}  # B·D-sized arrays moved, as counted above


def step_bytes(b: int, f: int, d: int, itemsize: int, activation: str, fused: bool) -> int:
    """Bytes one training step moves at least (the formula in the module docstring)."""
    gemms = 3 * b * f + 3 * f * d + 2 * b * d
    passes = ELEMENTWISE_PASSES["unfused" if not fused else "fused relu" if activation == "relu" else "fused"]
    return (gemms + passes * b * d) * itemsize


def unfused_step(x, w, b, dy, activation: str, backend: str):
    xp = array_module(x)
    z = linear.forward(x, w, b, backend=backend)
    y = activations.forward(activation, z)
    dz = (activations.derivative(activation, z) * dy) if activation != "relu" else xp.where(z <= 0, 0, dy)
    return (y, *linear.backward(dz.astype(x.dtype, copy=False), x, w, backend=backend))


def fused_step(x, w, b, dy, activation: str, backend: str):
    z = None if activation == "relu" else array_module(x).empty(dy.shape, x.dtype)
    y = linear.forward(x, w, b, activation=activation, preact_out=z, backend=backend)
    return (y, *linear.backward(dy, x, w, activation=activation, preact=y if z is None else z, backend=backend))


def measure(shape, dtype: str, activation: str, backend: str, repeats: int) -> dict[str, float]:
    """Median milliseconds of each step (interleaved rounds, after a warm-up), once the two agree."""
    xp = get_backend(backend).xp
    rng = np.random.default_rng(0)
    values = lambda *s: xp.asarray(rng.uniform(-1, 1, s).astype(dtype_of(dtype)))
    x, w, b, dy = values(shape.b, shape.f), values(shape.f, shape.d), values(shape.d), values(shape.b, shape.d)
    steps = {"unfused": unfused_step, "fused": fused_step}
    results = {name: step(x, w, b, dy, activation, backend) for name, step in steps.items()}
    for ours, theirs in zip(results["fused"], results["unfused"]):
        error = linear.testing.relative_error(to_host(ours), to_host(theirs).astype(np.float64))
        if error > linear.testing.TOLERANCE[dtype]:
            raise AssertionError(f"fused and unfused steps differ: relative error {error:.2e}")
    del results
    clock = gpu_ms if backend == "cuda" else cpu_ms
    entries = {name: Entry([lambda step=step: step(x, w, b, dy, activation, backend)], clock, repeats, warmup=1,
                           max_seconds=math.inf) for name, step in steps.items()}
    time_interleaved(list(entries.values()))
    return {name: float(np.median(entry.times_ms)) for name, entry in entries.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", type=parse_shape, help="B,F,D (repeatable)")
    parser.add_argument("--activation", action="append", choices=[a for a in activations.ACTIVATIONS if a])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here (replaced whole after each case)")
    args = parser.parse_args(argv)
    shapes = args.shape or [parse_shape("512,1024,1024")]
    itemsize = dtype_of(args.dtype).itemsize
    rows = []
    print(f"{'shape':>16} {'activation':>10} {'MB unfused':>11} {'MB fused':>9} {'ms unfused':>11} {'ms fused':>9}")
    for shape in shapes:
        for activation in args.activation or ["relu", "gelu"]:
            ms = measure(shape, args.dtype, activation, args.backend, args.repeats)
            mb = [step_bytes(shape.b, shape.f, shape.d, itemsize, activation, fused) / 1e6 for fused in (False, True)]
            print(f"{str(shape):>16} {activation:>10} {mb[0]:11.1f} {mb[1]:9.1f} "
                  f"{ms['unfused']:11.2f} {ms['fused']:9.2f}", flush=True)
            rows.append({"shape": [shape.b, shape.f, shape.d], "activation": activation,
                         "mb_unfused": mb[0], "mb_fused": mb[1], "ms_unfused": ms["unfused"], "ms_fused": ms["fused"]})
            if args.json:
                write_json(args.json, {"backend": args.backend, "dtype": args.dtype, "repeats": args.repeats,
                                       "clock": "gpu events" if args.backend == "cuda" else "wall", "results": rows})


if __name__ == "__main__":
    main()
