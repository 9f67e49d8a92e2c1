"""The "Linear+activation" case: one training step of Y = act(X·W + b), fused against unfused.

    python -m bench.activation                                   # CPU times, numpy backend, and the byte counts
    python -m bench.activation --shape 512,1024,1024 --activation gelu --repeats 5 --backend numpy

Unfused is what a user writes without the activation argument: Z = linear.forward(x, w, b), Y = act(Z) as a
separate pass, then dZ = dY ⊙ act'(Z) as another, and linear.backward(dZ, x, w) (whose db is one more pass
over dZ). Fused is linear.forward(..., activation=, preact_out=) and linear.backward(..., activation=,
preact=). Both are checked against each other before they are timed.

Bytes per step (step_bytes), each array moved once per kernel that touches it (the minimum a kernel needs),
B×F×D with elements of s bytes, no gradient accumulation (dW written, not added to):
    the three GEMMs           X, W → Z | dZ, W → dX | X, dZ → dW:        (3·B·F + 3·F·D + 2·B·D)·s
    unfused elementwise       Z written, read, Y written; dY, Z read, dZ written; dZ read for db:  7·B·D·s
    fused, gelu/gelu_tanh/silu  Y and Z written by the GEMM; dY, Z read, dZ written (db beside):   5·B·D·s
    fused, relu               Y written by the GEMM; dY, Y read, dZ written (db beside):          4·B·D·s
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import linear
from linear import activations
from linear.dtypes import dtype_of

from .cases import parse_shape

ELEMENTWISE_PASSES = {"unfused": 7, "fused": 5, "fused relu": 4}  # B·D-sized arrays moved, as counted above


def step_bytes(b: int, f: int, d: int, itemsize: int, activation: str, fused: bool) -> int:
    """Bytes one training step moves at least (the formula in the module docstring)."""
    gemms = 3 * b * f + 3 * f * d + 2 * b * d
    passes = ELEMENTWISE_PASSES["unfused" if not fused else "fused relu" if activation == "relu" else "fused"]
    return (gemms + passes * b * d) * itemsize


def unfused_step(x, w, b, dy, activation: str, backend: str):
    z = linear.forward(x, w, b, backend=backend)
    y = activations.forward(activation, z)
    dz = (activations.derivative(activation, z) * dy) if activation != "relu" else np.where(z <= 0, 0, dy)
    return (y, *linear.backward(dz.astype(x.dtype, copy=False), x, w, backend=backend))


def fused_step(x, w, b, dy, activation: str, backend: str):
    z = None if activation == "relu" else np.empty(dy.shape, x.dtype)
    y = linear.forward(x, w, b, activation=activation, preact_out=z, backend=backend)
    return (y, *linear.backward(dy, x, w, activation=activation, preact=y if z is None else z, backend=backend))


def measure(shape, dtype: str, activation: str, backend: str, repeats: int) -> dict[str, float]:
    """Median seconds of each step (interleaved rounds), after checking that the two agree."""
    rng = np.random.default_rng(0)
    values = lambda *s: rng.uniform(-1, 1, s).astype(dtype_of(dtype))
    x, w, b, dy = values(shape.b, shape.f), values(shape.f, shape.d), values(shape.d), values(shape.b, shape.d)
    steps = {"unfused": unfused_step, "fused": fused_step}
    results = {name: step(x, w, b, dy, activation, backend) for name, step in steps.items()}
    for ours, theirs in zip(results["fused"], results["unfused"]):
        error = linear.testing.relative_error(ours, theirs.astype(np.float64))
        if error > linear.testing.TOLERANCE[dtype]:
            raise AssertionError(f"fused and unfused steps differ: relative error {error:.2e}")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step(x, w, b, dy, activation, backend)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", type=parse_shape, help="B,F,D (repeatable)")
    parser.add_argument("--activation", action="append", choices=[a for a in activations.ACTIVATIONS if a])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    shapes = args.shape or [parse_shape("512,1024,1024")]
    itemsize = dtype_of(args.dtype).itemsize
    print(f"{'shape':>16} {'activation':>10} {'MB unfused':>11} {'MB fused':>9} {'ms unfused':>11} {'ms fused':>9}")
    for shape in shapes:
        for activation in args.activation or ["relu", "gelu"]:
            seconds = measure(shape, args.dtype, activation, args.backend, args.repeats)
            mb = [step_bytes(shape.b, shape.f, shape.d, itemsize, activation, fused) / 1e6 for fused in (False, True)]
            print(f"{str(shape):>16} {activation:>10} {mb[0]:11.1f} {mb[1]:9.1f} "
                  f"{seconds['unfused'] * 1e3:11.2f} {seconds['fused'] * 1e3:9.2f}")


if __name__ == "__main__":
    main()
