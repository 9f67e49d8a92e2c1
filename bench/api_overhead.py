"""The cost of linear.forward's checks and dispatch over a raw `x @ w` (numpy backend, float32).

    python bench/api_overhead.py

A script, not a test: it prints the median of many runs for each size, side by side in one process.
"""
from __future__ import annotations

import timeit

import numpy as np

import linear


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    number = max(1, int(0.05 / max(timeit.timeit(fn, number=1), 1e-7)))  # ~50 ms per sample
    return float(np.median(timeit.repeat(fn, number=number, repeat=repeats))) / number


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"{'B x F x D':>16} {'x @ w':>12} {'linear.forward':>15} {'overhead':>10}")
    for b, f, d in ((64, 128, 128), (2048, 2048, 2048)):
        x = rng.standard_normal((b, f), dtype=np.float32)
        w = rng.standard_normal((f, d), dtype=np.float32)
        raw = median_seconds(lambda: x @ w, repeats=15)
        ours = median_seconds(lambda: linear.forward(x, w), repeats=15)
        print(f"{f'{b}x{f}x{d}':>16} {raw * 1e6:>10.1f}us {ours * 1e6:>13.1f}us {ours / raw - 1:>+9.1%}"
              f"  ({(ours - raw) * 1e6:+.1f} us)")


if __name__ == "__main__":
    main()
