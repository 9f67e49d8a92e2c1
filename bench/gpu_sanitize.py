"""Launch every kernel instantiation once, on small shapes with partial tiles, and check each result.

    PYTHONPATH=. python bench/gpu_sanitize.py [--backend cuda|emulate] [--splits 1 3] [--no-pool]
    PYTHONPATH=. python bench/gpu_sanitize.py --compile-only --jobs 8

bench/gpu_session.sh first compiles every instantiation into CuPy's kernel cache in parallel
processes (--compile-only), then runs the launches plainly and under compute-sanitizer memcheck and
racecheck, there with --no-pool: CuPy's memory pool off, so that each array is its own cudaMalloc
(memcheck sees only allocations: inside a pool's large block an access past an array's end is unseen).
Every configuration of every family that runs on the device (the Hopper tiles on compute capability 9.0),
each dtype, product layout and load path, C itself and (splits 3) a split-K workspace; float32 on the
tensor-core tiles as TF32. Prints one line per launch; exits 1 if a result is wrong or an instantiation of
linear.backends.tiles.instantiations() that runs on the device was never launched.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import sys

import numpy as np

from linear.backends import get_backend, plan, tiles
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from linear.dtypes import dtype_of
from linear.testing import TF32_TOLERANCE, TOLERANCE, relative_error

# Partial tiles in M and N, three K steps (the last one partial), so edges and the pipeline run: the SIMT
# tiles by name, every tensor-core and Hopper tile (k-blocks of 32 or 64) at TENSOR_CORE_SHAPE.
SHAPES = {"large": (130, 70, 20), "medium": (70, 40, 20), "small": (40, 36, 20), "warp": (130, 70, 20),
          "warp_deep": (130, 70, 40), "warp_wide": (130, 260, 20), "warp_medium": (70, 40, 20)}
TENSOR_CORE_SHAPE = (130, 200, 150)


def host(x) -> np.ndarray:
    return x.get() if hasattr(x, "get") else np.asarray(x)


def matrix(xp, rng, rows: int, cols: int, dtype: np.dtype, ld: int):
    """Random values as a row-major view with leading dimension ld (NaN between cols and ld)."""
    storage = np.full((rows, ld), np.nan, dtype)
    storage[:, :cols] = rng.standard_normal((rows, cols))
    return xp.asarray(storage)[:, :cols]


def check_gemm(backend, dtype: str, trans_a: bool, trans_b: bool, config: str, vector: bool, splits: int,
               rng, arch: int) -> tuple[str, float, float]:
    """(the launches' names, the relative error against float64, its tolerance) of one GEMM on `config`;
    float32 on the tensor-core tiles runs as TF32."""
    xp, t = backend.xp, dtype_of(dtype)
    m, n, k = SHAPES.get(config, TENSOR_CORE_SHAPE)
    tf32 = dtype in tiles.CONFIGS_BY_NAME[config].tf32_dtypes
    ld = (lambda cols: -(-cols // 8) * 8) if vector else (lambda cols: cols + 1)
    a_shape, b_shape = ((k, m) if trans_a else (m, k)), ((n, k) if trans_b else (k, n))
    a = matrix(xp, rng, *a_shape, t, ld(a_shape[1]))
    b = matrix(xp, rng, *b_shape, t, ld(b_shape[1]))
    bias = xp.asarray(rng.standard_normal(n).astype(t))
    c0 = rng.standard_normal((m, n)).astype(t)
    c = xp.array(c0)  # a copy, also for numpy
    tuned = KernelBackend(backend.runtime, Tuning(config=config, vector=vector, splits=splits))
    launches = plan.plan_gemm(xp, a.T if trans_a else a, b.T if trans_b else b, c, alpha=0.5, beta=0.25, bias=bias,
                              tuning=tuned.tuning, arch=arch, tf32=tf32)
    tuned.launch(launches)
    a64, b64 = host(a).astype(np.float64), host(b).astype(np.float64)
    ref = 0.5 * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64)) + 0.25 * c0.astype(np.float64) \
        + host(bias).astype(np.float64)
    return (" + ".join(launch.name for launch in launches), relative_error(host(c), ref),
            TF32_TOLERANCE if tf32 else TOLERANCE[dtype])


def check_colsum(backend, dtype: str, rng) -> tuple[str, float, float]:
    xp, t = backend.xp, dtype_of(dtype)
    a = matrix(xp, rng, 1000, 37, t, 40)
    out = xp.full(37, np.nan, t)
    launches = plan.plan_colsum(xp, a, out, beta=0.0)
    backend.launch(launches)
    expected = host(a).astype(np.float64).sum(axis=0)
    return " + ".join(launch.name for launch in launches), relative_error(host(out), expected), TOLERANCE[dtype]


def compile_kernels(backend_name: str, kernels: list[tuple[str, str, tuple[str, ...]]]) -> int:
    runtime = get_backend(backend_name).runtime
    for source, name, arch_flags in kernels:
        runtime.function(source, name, arch_flags)
    return len(kernels)


def compile_all(backend_name: str, jobs: int, kernels: list[tuple[str, str, tuple[str, ...]]] | None = None) -> None:
    """The kernels (source, name, arch flags), by default every instantiation the device runs (one whose
    family's arch flags name an architecture, sm_90a, only on that compute capability), compiled `jobs`
    processes at a time (into CuPy's on-disk cache, so that a later first call only loads them)."""
    arch = get_backend(backend_name).runtime.compute_capability()
    kernels = kernels or [(kernel.source, kernel.name, kernel.arch_flags) for kernel in tiles.instantiations()
                          if all(f"-arch=sm_{arch}" in flag for flag in kernel.arch_flags)]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        done = sum(pool.map(compile_kernels, [backend_name] * jobs, [kernels[i::jobs] for i in range(jobs)]))
    print(f"{done} kernels compiled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cuda", choices=["cuda", "emulate"])
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 3],
                        help="split-K counts to run (3 also launches the workspace and sum_splits kernels)")
    parser.add_argument("--compile-only", action="store_true", help="only compile every instantiation")
    parser.add_argument("--jobs", type=int, default=8, help="compiler processes for --compile-only")
    parser.add_argument("--no-pool", action="store_true", help="CuPy's memory pool off (for compute-sanitizer)")
    args = parser.parse_args()
    if args.compile_only:
        compile_all(args.backend, args.jobs)
        return 0
    backend = get_backend(args.backend)
    if args.no_pool and backend.name == "cuda":
        backend.xp.cuda.set_allocator(None)
    rng = np.random.default_rng(0)
    arch = backend.runtime.compute_capability()
    launched, failures = set(), 0
    for dtype in TOLERANCE:
        for configs in tiles.FAMILIES:  # every configuration that runs dtype on this device, in every layout
            for config in configs:
                for trans_a, trans_b in tiles.LAYOUTS:
                    k = SHAPES.get(config.name, TENSOR_CORE_SHAPE)[2]
                    if not config.runs(dtype, arch, True, k, (trans_a, trans_b)):
                        continue
                    for vector in config.vectors():
                        for splits in args.splits:
                            failures += report(*check_gemm(backend, dtype, trans_a, trans_b, config.name, vector,
                                                           splits, rng, arch), launched)
        failures += report(*check_colsum(backend, dtype, rng), launched)
    runs_here = [kernel.name for kernel in tiles.instantiations()
                 if all(f"-arch=sm_{arch}" in flag for flag in kernel.arch_flags)]  # sm_90a: only on 9.0
    missing = set(runs_here) - launched
    if 1 in args.splits and 3 in args.splits and missing:
        print(f"NOT LAUNCHED: {sorted(missing)}")
        failures += 1
    print(f"{len(launched)} kernels launched, {failures} failures")
    return 1 if failures else 0


def report(names: str, err: float, tolerance: float, launched: set) -> int:
    launched.update(names.split(" + "))
    ok = err <= tolerance
    print(f"{'ok  ' if ok else 'FAIL'} rel_err {err:.2e}  {names}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
