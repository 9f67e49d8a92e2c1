"""Every tensor-core configuration, candidates included, in bfloat16 on the layer's three products at
TC_TILE_SHAPES, beside cuBLAS (cupy.matmul): each result checked against float64 first, then the median of
device-event times (the wall clock on the emulator)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.gpu_checks import check_then_time, contender, write_json

TC_TILE_SHAPES = [(4096, 4096, 4096), (8192, 4096, 11008), (2048, 768, 50257)]  # layer (B, F, D)
TC_TILE_REPEATS = 10


def tc_tiles(out: Path, backend_name: str, scale: float) -> bool:
    import ml_dtypes
    from linear.backends import get_backend, tiles
    from linear.backends.kernel import KernelBackend
    from linear.backends.plan import Tuning
    from linear.testing import TOLERANCE
    from bench.timers import cpu_ms, gpu_ms
    runtime = get_backend(backend_name).runtime
    xp, on_gpu = runtime.xp, backend_name == "cuda"
    clock, repeats = (gpu_ms, TC_TILE_REPEATS) if on_gpu else (cpu_ms, 1)
    rng = np.random.default_rng(0)
    rows, results = 64, []
    save = lambda: write_json(out, {"backend": backend_name, "scale": scale, "results": results})
    for shape in TC_TILE_SHAPES:
        b, f, d = (max(16, int(n * scale)) for n in shape)
        host = {name: rng.uniform(-1, 1, dims).astype(ml_dtypes.bfloat16)
                for name, dims in (("x", (b, f)), ("w", (f, d)), ("dy", (b, d)))}
        arrays = {name: xp.asarray(a) for name, a in host.items()}
        for product, left, right, trans_a, trans_b in (("NN", "x", "w", False, False), ("NT", "dy", "w", False, True),
                                                       ("TN", "x", "dy", True, False)):
            a, bm = host[left].astype(np.float64), host[right].astype(np.float64)
            a, bm = (a.T if trans_a else a), (bm.T if trans_b else bm)
            picked = rng.choice(a.shape[0], min(rows, a.shape[0]), replace=False)
            expected = a[picked] @ bm
            m, n = a.shape[0], bm.shape[1]
            contenders = [(c.name, c) for c in tiles.TC_CONFIGS] + ([("cublas", None)] if on_gpu else [])
            for name, config in contenders:
                row = {"shape": [b, f, d], "product": product, "config": name}
                with contender(row, results, save):
                    c = xp.full((m, n), np.nan, ml_dtypes.bfloat16)
                    op_a = arrays[left].T if trans_a else arrays[left]
                    op_b = arrays[right].T if trans_b else arrays[right]
                    if config is None:
                        call = lambda: xp.matmul(op_a, op_b, out=c)
                    else:
                        backend = KernelBackend(runtime, Tuning(config=name, splits=1))
                        call = lambda: backend.gemm(op_a, op_b, c, alpha=1.0, beta=0.0)
                    check_then_time(row, call, lambda: (c.get() if on_gpu else c)[picked].astype(np.float64),
                                    expected, TOLERANCE["bfloat16"], clock, repeats, 2 * m * n * a.shape[1])
    return all("error" not in row for row in results)
