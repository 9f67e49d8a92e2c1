"""The Hopper kernel (both tile shapes) beside tc_large, tc_wide, the plan's own choice, cuBLAS and torch, in bfloat16 and float16,
C = A·B at WGMMA_SHAPES (M, N, K): each result checked against float64 first, then the median of
device-event times (the wall clock on the emulator). Split-K where its tiles fill less than the SMs; rows
TMA cannot take (K = 50257: 100,514-byte rows) are copied into 16-byte-aligned rows first, as the plan
would, and the copy is timed with it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.gpu_checks import check_then_time, contender, write_json
from bench.gpu_checks.tc_tiles import TC_TILE_REPEATS

WGMMA_SHAPES = [(4096, 4096, 4096), (8192, 8192, 8192), (8192, 4096, 11008), (2048, 768, 50257)]  # M, N, K


def wgmma(out: Path, backend_name: str, scale: float) -> bool:
    import ml_dtypes
    from linear.backends import get_backend, tiles as families
    from linear.backends.cost import split_k
    from linear.backends.kernel import KernelBackend
    from linear.backends.plan import Tuning
    from linear.testing import TOLERANCE
    from bench.timers import cpu_ms, gpu_ms
    runtime = get_backend(backend_name).runtime
    xp, on_gpu = runtime.xp, backend_name == "cuda"
    clock, repeats = (gpu_ms, TC_TILE_REPEATS) if on_gpu else (cpu_ms, 1)
    sms = runtime.device_limits().sms
    torch = None
    if on_gpu:
        try:
            import torch
            torch = torch if torch.cuda.is_available() else None
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    rows, results = 64, []
    save = lambda: write_json(out, {"backend": backend_name, "scale": scale, "results": results})
    for dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16)):
        for shape in WGMMA_SHAPES:
            # Scaled down (the emulator), each dimension stays a multiple of 8 as the full shapes are
            # (but K = 50257, whose rows need the aligned copy at any scale).
            m, n, k = (d if scale == 1 else max(16, int(d * scale)) // 8 * 8 + d % 8 for d in shape)
            a = xp.asarray(rng.uniform(-1, 1, (m, k)).astype(dtype))
            b = xp.asarray(rng.uniform(-1, 1, (k, n)).astype(dtype))
            picked = rng.choice(m, min(rows, m), replace=False)
            host_a, host_b = (x.get() if on_gpu else x for x in (a, b))
            expected = host_a[picked].astype(np.float64) @ host_b.astype(np.float64)
            contenders = [(config.name, config) for config in families.WGMMA_CONFIGS]
            contenders += [("tc_large", families.CONFIGS_BY_NAME["tc_large"]),
                           ("tc_wide", families.CONFIGS_BY_NAME["tc_wide"]), ("plan", "plan")]
            contenders += [("cublas", None)] if on_gpu else []
            contenders += [("torch", None)] if torch is not None else []
            for name, config in contenders:
                row = {"dtype": dtype.name, "shape": [m, n, k], "config": name}
                with contender(row, results, save):
                    c = xp.full((m, n), np.nan, dtype)
                    if isinstance(config, families.WgmmaConfig):
                        # A persistent grid: split K where there are fewer tiles than SMs; rows TMA cannot
                        # take (K = 50257) get the plan's aligned copy.
                        tiles = config.tiles(m, n)
                        splits = min(16, -(-2 * sms // tiles)) if tiles < sms else 1
                        row["splits"] = split_k(k, splits, config.k_depth(dtype.itemsize))[1]
                        row["copied"] = k * dtype.itemsize % 16 != 0
                        backend = KernelBackend(runtime, Tuning(config=config.name, splits=splits))
                    elif config is not None:
                        # tc tiles with one split as before; "plan": the cost model's own choice.
                        backend = KernelBackend(runtime, Tuning() if config == "plan" else Tuning(config=name, splits=1))
                    if config is not None:
                        call = lambda backend=backend: backend.gemm(a, b, c, alpha=1.0, beta=0.0)
                    elif name == "cublas":
                        call = lambda: xp.matmul(a, b, out=c)
                    else:
                        ta, tb, tc = (torch.as_tensor(x, device="cuda") for x in (a, b, c))
                        call = lambda: torch.matmul(ta, tb, out=tc)
                    check_then_time(row, call, lambda: (c.get() if on_gpu else c)[picked].astype(np.float64),
                                    expected, TOLERANCE[dtype.name], clock, repeats, 2 * m * n * k)
    return all("error" not in row for row in results)
