"""The launch plan's choices over the products the tests sweep, as a table (tests/data/plan_choices.json).

The table was written before the planning layer was restructured (issue 18) and test_plan.py holds the
plan to it: a refactoring of plan.py, cost.py or tiles.py must leave every choice (family, tile, split-K,
template instantiation, grid, block, shared memory) as it was. A deliberate change of the cost model
rewrites it, and the diff shows every choice that moved:

    PYTHONPATH=. python tests/plan_table.py            # rewrite tests/data/plan_choices.json

Cases: the training products (NN forward, NT dX, TN dW) of the cost-model tests' layers, the kernel tests'
tile shapes and stacks, for every dtype, TF32 off and (float32) on, on an sm_90 device (the emulator's),
with 16-byte aligned operands (the vector path) and with an unaligned A (one element off, odd rows: the
scalar path or the aligned copy). Aligned operands are strided views of a small buffer: the plan reads
only their strides and addresses, so even 8192 x 11008 costs nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from linear.backends import plan, tiles
from linear.dtypes import SUPPORTED_DTYPES, dtype_of

TABLE = Path(__file__).resolve().parent / "data" / "plan_choices.json"
DTYPE_NAMES = SUPPORTED_DTYPES
# Training shapes (B, F, D) of the cost-model tests, and their three products as (M, N, K, trans_a, trans_b).
LAYERS = [(b, f, d) for b in (32, 256, 2048, 8192) for f in (256, 784, 4096, 11008) for d in (256, 1024, 4096, 11008)]
PRODUCTS = {"NN": lambda b, f, d: (b, d, f, False, False), "NT": lambda b, f, d: (b, f, d, False, True),
            "TN": lambda b, f, d: (f, d, b, True, False)}
# The kernel tests' shapes (M, N, K), and their stacks: (batch of a, of b, of c).
KERNEL_SHAPES = [(129, 131, 65), (70, 66, 33), (70, 50, 33), (129, 259, 33), (37, 21, 19), (64, 64, 63)]
BATCHES = [((3,), (3,), (3,)), ((3,), (), (3,)), ((), (2,), (2,)), ((2, 1), (1, 3), (2, 3))]
UNALIGNED_MAX_ELEMENTS = 2**22  # the unaligned A is a real array (the plan may copy it): keep it small


def _free_view(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A C-ordered array of `shape` whose elements all alias a 64-byte aligned buffer (never read)."""
    strides, step = [], dtype.itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    buffer = np.zeros(64, np.uint8)
    start = -buffer.ctypes.data % 64
    base = buffer[start:start + dtype.itemsize].view(dtype)
    return np.lib.stride_tricks.as_strided(base, shape, tuple(reversed(strides)), writeable=False)


def _unaligned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Zeros whose rows start one element off and are one element longer than they are wide."""
    storage = np.zeros(shape[:-1] + (shape[-1] + 1,), dtype)
    return storage[..., 1:]


def _operand(stored_shape: tuple[int, ...], dtype: np.dtype, trans: bool, aligned: bool) -> np.ndarray:
    """op(x) as the plan receives it: x itself, or its transposed view when trans."""
    x = _free_view(stored_shape, dtype) if aligned else _unaligned(stored_shape, dtype)
    return np.swapaxes(x, -1, -2) if trans else x


def _plan(a: np.ndarray, b: np.ndarray, c: np.ndarray, tf32: bool) -> list[plan.Launch]:
    """The plan for c = op(a)·op(b): a and b are the operands as views (a transpose is a swapped view)."""
    return plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=90, tf32=tf32)


# The configuration each GEMM template instantiation belongs to.
_CONFIG_OF = {kernel.name: config.name for configs in tiles.FAMILIES
              for config, *_, kernel in tiles.gemm_instantiations(configs)}


def describe(launches: list[plan.Launch]) -> list[str]:
    """One line per launch: file, configuration, template, grid, block, dynamic shared memory, K splits."""
    return [f"{launch.source} {_CONFIG_OF.get(launch.name, '-')} {launch.name} grid={launch.grid} "
            f"block={launch.block[0]} smem={launch.shared_mem}"
            + (f" splits={int(launch.args[4])}" if launch.source != "reduce.cu" else "")
            for launch in launches]


def cases():
    """(key, a, b, c, tf32) for every case of the table, in a fixed order."""
    for dtype_name in DTYPE_NAMES:
        dtype = dtype_of(dtype_name)
        for tf32 in ((False, True) if dtype_name == "float32" else (False,)):
            for aligned in (True, False):
                layout = "aligned" if aligned else "unaligned_a"
                shapes = [(product, *mnkt(*layer)) for layer in LAYERS for product, mnkt in PRODUCTS.items()]
                shapes += [(f"{'T' if ta else 'N'}{'T' if tb else 'N'}", m, n, k, ta, tb)
                           for m, n, k in KERNEL_SHAPES for ta in (False, True) for tb in (False, True)]
                for product, m, n, k, trans_a, trans_b in shapes:
                    if not aligned and (m * k + k * n) > UNALIGNED_MAX_ELEMENTS:
                        continue
                    a = _operand((k, m) if trans_a else (m, k), dtype, trans_a, aligned)
                    b = _operand((n, k) if trans_b else (k, n), dtype, trans_b, True)
                    c = _free_view((m, n), dtype)
                    yield f"{product} {m}x{n}x{k} {dtype_name} tf32={int(tf32)} {layout}", a, b, c, tf32
                m, n, k = 37, 21, 19
                for batch_a, batch_b, batch in BATCHES:
                    a = np.broadcast_to(_operand(batch_a + (m, k), dtype, False, aligned), batch + (m, k))
                    b = np.broadcast_to(_operand(batch_b + (k, n), dtype, False, True), batch + (k, n))
                    c = _free_view(batch + (m, n), dtype)
                    yield f"stack {batch_a}x{batch_b} {m}x{n}x{k} {dtype_name} tf32={int(tf32)} {layout}", a, b, c, tf32


def record() -> dict[str, list[str]]:
    return {key: describe(_plan(a, b, c, tf32)) for key, a, b, c, tf32 in cases()}


def write(table: dict[str, list[str]]) -> None:
    TABLE.parent.mkdir(exist_ok=True)
    lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in table.items()]
    TABLE.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def load() -> dict[str, list[str]]:
    return json.loads(TABLE.read_text())


if __name__ == "__main__":
    table = record()
    write(table)
    print(f"{len(table)} cases written to {TABLE}", file=sys.stderr)
