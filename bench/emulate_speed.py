"""How long a 256x256x256 float32 GEMM takes through the emulate backend (goal: <= 50 ms).

    python bench/emulate_speed.py [--size 256] [--repeats 5]

Times linear.matmul(a, b, backend="emulate") after one warm-up call (which compiles the kernel on a
cold cache), checks the result against a float64 reference, and prints the best and median times.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import linear  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="M = N = K")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    n = options.size
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)

    start = time.perf_counter()
    c = linear.matmul(a, b, backend="emulate")
    first = time.perf_counter() - start
    reference = a.astype(np.float64) @ b
    error = np.linalg.norm(c - reference) / np.linalg.norm(reference)

    times = []
    for _ in range(options.repeats):
        start = time.perf_counter()
        linear.matmul(a, b, backend="emulate")
        times.append(time.perf_counter() - start)
    print(f"emulate float32 GEMM {n}x{n}x{n}: best {min(times) * 1e3:.1f} ms, "
          f"median {statistics.median(times) * 1e3:.1f} ms over {options.repeats} runs "
          f"(first call {first * 1e3:.0f} ms, including any compile); relative error {error:.1e}")
    if error > 1e-5:
        sys.exit(f"relative error {error:.1e} > 1e-5")


if __name__ == "__main__":
    main()
