"""What is measured: the operations, the shapes of each preset, the dtypes and their error limits."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    name: str
    gemms: int          # GEMMs of 2·B·F·D flops each; bias adds and column sums are not counted
    formula: str


OPS = {op.name: op for op in (
    Op("forward", 1, "Y = X·W + b"),
    Op("dx", 1, "dX = dY·Wᵀ"),
    Op("dw", 1, "dW = Xᵀ·dY, db = Σ rows of dY"),
    Op("step", 3, "forward, dX, and dW, db added in (accumulate=True)"),
)}


@dataclass(frozen=True)
class Shape:
    """A linear layer X (B×F) · W (F×D)."""
    b: int
    f: int
    d: int

    @property
    def volume(self) -> int:
        return self.b * self.f * self.d

    def flops(self, op: Op) -> int:
        return 2 * self.volume * op.gemms

    def __str__(self) -> str:
        return f"{self.b}x{self.f}x{self.d}"


def parse_shape(text: str) -> Shape:
    """'B,F,D' (or BxFxD) -> Shape; ValueError with the text when it is not three positive integers."""
    parts = text.replace("x", ",").split(",")
    try:
        b, f, d = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"shape must be three integers B,F,D (e.g. 256,1024,1024); got {text!r}") from None
    if min(b, f, d) < 1:
        raise ValueError(f"shape dimensions must be positive; got {text!r}")
    return Shape(b, f, d)


def squares(*sizes: int) -> list[Shape]:
    return [Shape(n, n, n) for n in sizes]


# Training shapes (B, F, D): an MNIST MLP layer, a small MLP, a large square layer, an LLM MLP up-projection.
TRAINING = [Shape(32, 784, 256), Shape(256, 1024, 1024), Shape(4096, 4096, 4096), Shape(8192, 4096, 11008)]
# --full adds a BERT-base MLP pair and the LLM MLP down-projection.
TRAINING_FULL = TRAINING + [Shape(2048, 768, 3072), Shape(2048, 3072, 768), Shape(8192, 11008, 4096)]


@dataclass(frozen=True)
class Preset:
    name: str
    shapes: list[Shape]
    dtypes: list[str]
    gpu_repeats: int
    gpu_warmup: int
    cpu_repeats: int
    cpu_warmup: int
    max_seconds: dict[str, float]   # device -> time budget of one case (see runner.py)


PRESETS = {p.name: p for p in (
    Preset("quick", squares(256, 512, 1024, 2048, 4096, 8192) + TRAINING, ["float32"],
           gpu_repeats=20, gpu_warmup=3, cpu_repeats=10, cpu_warmup=1, max_seconds={"gpu": 10, "cpu": 2}),
    Preset("default", squares(256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192) + TRAINING, ["float32"],
           gpu_repeats=100, gpu_warmup=10, cpu_repeats=20, cpu_warmup=1, max_seconds={"gpu": 30, "cpu": 10}),
    Preset("full", squares(*range(256, 8192 + 1, 256)) + TRAINING_FULL,
           ["float32", "float16", "bfloat16", "float64"],
           gpu_repeats=200, gpu_warmup=10, cpu_repeats=30, cpu_warmup=2, max_seconds={"gpu": 60, "cpu": 60}),
)}

DTYPES = ("float32", "float16", "bfloat16", "float64")
