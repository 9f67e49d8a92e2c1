"""One layer step (forward with bias, dX, dW accumulated, db, and a split-K dW) RUNS times: every output
must be bitwise identical across the runs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from bench.gpu_checks import write_json

RUNS = 10


def digest(x) -> str:
    return hashlib.sha256((x.get() if hasattr(x, "get") else np.asarray(x)).tobytes()).hexdigest()


def layer_step(backend, x, w, b, dy, x_long, dy_long) -> dict[str, str]:
    """The digests of one layer step's outputs, each computed into fresh NaN-filled arrays."""
    xp = backend.xp
    y = xp.full((x.shape[0], w.shape[1]), np.nan, np.float32)
    backend.gemm(x, w, y, alpha=1.0, beta=0.0, bias=b)
    dx = xp.full(x.shape, np.nan, np.float32)
    backend.gemm(dy, w.T, dx, alpha=1.0, beta=0.0)
    dw = xp.ones(w.shape, np.float32)  # accumulate onto an existing gradient
    backend.gemm(x.T, dy, dw, alpha=1.0, beta=1.0)
    db = xp.ones(w.shape[1], np.float32)
    backend.colsum(dy, db, beta=1.0)
    dw_split = xp.full((x_long.shape[1], dy_long.shape[1]), np.nan, np.float32)  # K >> M·N: split-K
    backend.gemm(x_long.T, dy_long, dw_split, alpha=1.0, beta=0.0)
    return {name: digest(value) for name, value in
            [("y", y), ("dx", dx), ("dw", dw), ("db", db), ("dw_split_k", dw_split)]}


def determinism(out: Path, backend_name: str, scale: float) -> bool:
    from linear.backends import get_backend
    backend = get_backend(backend_name)
    xp = backend.xp
    rng = np.random.default_rng(0)

    def array(*shape: int):
        return xp.asarray(rng.standard_normal([max(1, int(s * scale)) for s in shape]).astype(np.float32))

    batch, features, outputs, long_batch, narrow = 4096, 1024, 1024, 65536, 256
    x, w, b, dy = array(batch, features), array(features, outputs), array(outputs), array(batch, outputs)
    x_long, dy_long = array(long_batch, narrow), array(long_batch, narrow)
    runs = [layer_step(backend, x, w, b, dy, x_long, dy_long) for _ in range(RUNS)]
    identical = {name: len({run[name] for run in runs}) == 1 for name in runs[0]}
    result = {"runs": RUNS, "backend": backend_name, "identical": identical, "ok": all(identical.values()),
              "shapes": {"x": list(x.shape), "w": list(w.shape), "x_split_k": list(x_long.shape)}}
    write_json(out, result)
    print(json.dumps(result, indent=2))
    return result["ok"]
