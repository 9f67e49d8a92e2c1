"""Where the CUDA sources live: linear/kernels in an installed wheel, kernels/ in the source tree."""
from __future__ import annotations

from pathlib import Path


def kernels_dir() -> Path:
    installed = Path(__file__).resolve().parent.parent / "kernels"
    if (installed / "gemm.cu").exists():
        return installed
    return Path(__file__).resolve().parent.parent.parent / "kernels"
