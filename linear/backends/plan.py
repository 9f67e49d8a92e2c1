"""The launch plan shared by the cuda and emulate backends.

Given the arrays of one backend call, the plan decides everything a GPU bug could hide in: how each
operand's strides map to a leading dimension and a transpose flag, the tile configuration, split-K,
the vector path, the template instantiation, grid, block, dynamic shared memory and the argument
tuple. The two backends differ only in the runtime that compiles and launches the result, so the
emulator exercises all of it in CI.

plan_gemm works in three steps, each computed once per call:
1. Operands (_operands): each view's strides as a leading dimension and a transpose flag (as_operand),
   and copies into aligned rows where needed (below).
2. Choice (_choose): the kernel families are the newest ones (tiles.FAMILIES) whose requirements the
   call meets (GemmConfig.runs: dtype, compute capability, TF32, K; vector_only: 16-byte aligned
   operands), neighbouring families of the same alignment requirement weighed together (_competing);
   the tile and split-K among their configurations come from the cost model (cost.choose). Today: on
   compute capability 9.0 (the emulator's) with aligned operands, the Hopper tiles (kernels/
   wgmma_gemm.cu) and the tensor-core tiles weighed together for float16 and bfloat16 (K >= 1); tensor
   cores (kernels/tc_gemm.cu) for float16 and bfloat16 from 8.0 on, and for float32 when TF32 is
   allowed, with aligned operands (cp.async moves 16-byte chunks); the SIMT kernel (kernels/gemm.cu)
   for every other call, float64 and older cards included. Where the preferred family needs aligned operands and an operand is not (a vocabulary of
   50257 in bfloat16, attention over 77 tokens), that operand is first copied into a buffer with
   aligned rows, when the cost model says the copies and that family beat the next one on the operands
   as they are (the user's arrays are only read; a broadcast matrix is copied once).
3. Launches: the chosen configuration builds them (GemmConfig.launches) from a family-neutral
   launch.GemmCall: template instantiation, grid, block, shared memory, arguments, compiler flags, and
   the split-K reduction.
Vector loads: only when both operands' pointers, leading dimensions and batch strides are 16-byte
aligned. Tuning() overrides the configuration, split-K and the vector path (for tests and tile sweeps).

Stacks of matrices (numpy.matmul's batch) are one strided-batched launch (gemm.cu, tc_gemm.cu: grid z =
batch · splits; wgmma_gemm.cu: a persistent grid over the stack's tiles), each operand with its own batch
stride, 0 for a broadcast one. Batch dimensions whose strides merge into one
(every contiguous stack, a broadcast matrix) become that one stride; outer dimensions that do not merge
(two operands broadcast along different dimensions) get one launch each, and a batch beyond gridDim.z's
limit is cut into several launches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..dtypes import ElementType, element_type
from .cost import aligned_copies_pay, choose, estimate, split_k
from .device import H100, DeviceLimits
from .launch import REDUCE_THREADS, GemmCall, Launch, Operand, sum_splits_launch
from .tensor_map import address
from .tiles import (CONFIGS_BY_NAME, FAMILIES, MAX_SIZE, GemmConfig, ceil_div, colsum_partial_name,
                    heuristic_configs, round_up)

VECTOR_BYTES = 16
COLSUM_MIN_ROWS_PER_CHUNK = 64


@dataclass(frozen=True)
class Tuning:
    """Overrides of the cost model; a field left None is chosen by it."""
    config: str | None = None  # a name in CONFIGS_BY_NAME
    splits: int | None = None  # requested K splits (fewer are used when K is short)
    vector: bool | None = None  # True raises ValueError where the operands are not 16-byte aligned

    def __post_init__(self):
        if self.config is not None and self.config not in CONFIGS_BY_NAME:
            raise ValueError(f"config must be one of {sorted(CONFIGS_BY_NAME)}, got {self.config!r}")
        if self.splits is not None and not 1 <= self.splits <= H100.max_grid[2]:
            raise ValueError(f"splits must be in [1, {H100.max_grid[2]}], got {self.splits}")


# ----------------------------------------------------------------------------------------------------
# Operands: strides -> (leading dimension, transpose flag)
# ----------------------------------------------------------------------------------------------------


def _row_major_ld(shape: tuple[int, ...], strides: tuple[int, ...], itemsize: int) -> int | None:
    """The leading dimension of a row-major matrix with these byte strides, None if it is not one."""
    rows, cols = shape
    if cols > 1 and strides[1] != itemsize:
        return None
    if rows <= 1:
        return max(cols, 1)
    row_stride = strides[0]
    if row_stride <= 0 or row_stride % itemsize or row_stride // itemsize < cols:
        return None
    return row_stride // itemsize


def _stored(x: Any) -> Any:
    """The matrices of a stack that are stored: a broadcast (stride 0) dimension cut to its one."""
    return x[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in x.strides[:-2])]


def as_operand(xp: ModuleType, x: Any) -> Operand:
    """x (a matrix, or a stack of them) as the kernels see it. The one place a transpose flag comes
    from: a row-major x as it is (trans False), a column-major one (a transposed view, a Fortran-ordered
    array) as its row-major storage with trans True, anything else (negative or non-unit inner strides,
    batch strides that are not whole elements) as an aligned copy (aligned_copy)."""
    cols = max(x.shape[-1], 1)
    if x.size == 0:  # never read
        return Operand(x, cols, False)
    if all(stride % x.itemsize == 0 for stride in x.strides[:-2]):
        shape, strides = x.shape[-2:], x.strides[-2:]
        ld = _row_major_ld(shape, strides, x.itemsize)
        if ld is not None:
            return Operand(x, ld, False)
        ld = _row_major_ld(shape[::-1], strides[::-1], x.itemsize)
        if ld is not None:
            return Operand(xp.swapaxes(x, -1, -2), ld, True)
    return aligned_copy(xp, x, False)


def aligned_copy(xp: ModuleType, x: Any, trans: bool) -> Operand:
    """x copied into a buffer whose rows start every VECTOR_BYTES (its leading dimension rounded up to
    the vector width); the kernel never reads the padding at the end of each row. A broadcast
    dimension stays broadcast: only the matrices stored are copied."""
    stored, cols = _stored(x), x.shape[-1]
    ld = round_up(max(cols, 1), VECTOR_BYTES // x.itemsize)
    buffer = xp.empty(stored.shape[:-1] + (ld,), x.dtype)
    buffer[..., :cols] = stored
    return Operand(xp.broadcast_to(buffer[..., :cols], x.shape), ld, trans)


def vector_aligned(operand: Operand) -> bool:
    """Every VECTOR_BYTES chunk the kernel reads at a multiple of the vector width is aligned, in
    every matrix of the stack."""
    x = operand.array
    return address(x) % VECTOR_BYTES == 0 and (operand.rows <= 1 or operand.ld * x.itemsize % VECTOR_BYTES == 0) \
        and all(stride % VECTOR_BYTES == 0 for n, stride in zip(x.shape[:-2], x.strides[:-2]) if n > 1)


# ----------------------------------------------------------------------------------------------------
# Launches
# ----------------------------------------------------------------------------------------------------


def _check_size(**sizes: int) -> None:
    for what, size in sizes.items():
        if size > MAX_SIZE:
            raise ValueError(f"{what} = {size} exceeds the kernels' limit of {MAX_SIZE} (2**31 - 1025)")


def _contiguous_vector(xp: ModuleType, v: Any) -> Any:
    return v if v.size <= 1 or v.strides[0] == v.itemsize else xp.ascontiguousarray(v)


def _output_ld(c: Any) -> int:
    ld = _row_major_ld(c.shape[-2:], c.strides[-2:], c.itemsize)
    if ld is None or any(stride % c.itemsize for stride in c.strides[:-2]):
        raise ValueError(f"the output must be row-major, got shape {c.shape} and strides {c.strides}")
    return ld


@dataclass(frozen=True)
class Product:
    """What one plan_gemm call multiplies: op(a) (M x K) by op(b) (K x N), `batch` times, in `dtype`."""
    m: int
    n: int
    k: int
    batch: int
    dtype: str
    t: ElementType


@dataclass(frozen=True)
class Choice:
    """The kernel, tile and split-K that run a product: `config` on the vector path or not, K cut into
    `splits` slices of `k_per_split`."""
    config: GemmConfig
    vector: bool
    splits: int
    k_per_split: int


def plan_gemm(xp: ModuleType, a: Any, b: Any, c: Any, *, alpha: float, beta: float, bias: Any = None,
              tuning: Tuning = Tuning(), arch: int | None = None, tf32: bool = False,
              device: DeviceLimits = H100) -> list[Launch]:
    """The launches for c[...] = alpha·a·b + beta·c (+ bias), as in base.Backend.gemm: a (M x K) and b
    (K x N) are views, a transposed operand a transposed view (its flag is derived here, by as_operand).

    a, b and c may carry the same leading batch dimensions (a stack of matrices); a's and b's may be
    broadcast views (stride 0) of them. 2-D arrays are one matrix. arch is the device's compute
    capability as an int (90 for 9.0), None for no tensor cores; tf32 allows float32 products to run
    on them with TF32 operands; device: the limits the cost model plans for.

    Three steps: the operands (strides, aligned copies), the choice (family, tile, split-K), the launches.
    """
    k = a.shape[-1]
    product = Product(*c.shape[-2:], k, math.prod(c.shape[:-2]), np.dtype(c.dtype).name, element_type(c.dtype))
    _check_size(M=product.m, N=product.n, K=k)
    named = CONFIGS_BY_NAME[tuning.config] if tuning.config else None
    if named is not None and product.dtype not in named.dtypes:
        raise ValueError(f"tile config {named.name!r} is instantiated for {', '.join(named.dtypes)} only, "
                         f"got dtype {product.dtype}")
    if product.m == 0 or product.n == 0 or product.batch == 0:
        return []
    ldc = _output_ld(c)
    families = [(named,)] if named else [heuristic_configs(configs) for configs in reversed(FAMILIES)]
    families = _competing([configs for configs in families if configs[0].runs(product.dtype, arch, tf32, k)])
    op_a, op_b, aligned = _operands(xp, as_operand(xp, a), as_operand(xp, b), product,
                                    families, tuning, device)
    choice = _choose(product, families, aligned, named, tuning, device,
                     f"compute capability {arch}, TF32 {'on' if tf32 else 'off'}, K {k}")
    if bias is not None:
        bias = _contiguous_vector(xp, bias)
    return choice.config.launches(xp, GemmCall(
        choice.config, product.dtype, product.t, product.m, product.n, product.k, product.batch, op_a, op_b, c,
        ldc, alpha, beta, bias, choice.splits, choice.k_per_split, choice.vector, device))


def _competing(families: list[tuple[GemmConfig, ...]]) -> list[tuple[GemmConfig, ...]]:
    """The families that run a call, newest first, with neighbours of the same alignment requirement
    (vector_only) merged into one tuple: the cost model weighs their configurations against each other
    (the newest listed first, so ties go to it)."""
    merged: list[tuple[GemmConfig, ...]] = []
    for configs in families:
        if merged and merged[-1][0].vector_only == configs[0].vector_only:
            merged[-1] += configs
        else:
            merged.append(configs)
    return merged


def _operands(xp: ModuleType, op_a: Operand, op_b: Operand, product: Product,
              families: list[tuple[GemmConfig, ...]], tuning: Tuning, device: DeviceLimits
              ) -> tuple[Operand, Operand, bool]:
    """Step 1: (op_a, op_b, aligned). Where the preferred family needs 16-byte aligned operands (the
    vector path) and an operand is not, it is copied into aligned rows: when its configuration was
    named, or when the cost model says the copies and that family beat the best family on the operands
    as they are. aligned: whether both operands, as returned, take 16-byte loads."""
    operands = [op_a, op_b]
    unaligned = [not vector_aligned(op) for op in operands]
    if any(unaligned) and tuning.vector is None and families and families[0][0].vector_only:
        as_they_are = next((configs for configs in families if not configs[0].vector_only), None)
        copied = [_stored(op.array).nbytes for op, u in zip(operands, unaligned) if u]
        if tuning.config or as_they_are is None or aligned_copies_pay(
                product.m, product.n, product.k, product.batch, product.dtype, copied, aligned=families[0],
                as_they_are=as_they_are, device=device):
            operands = [aligned_copy(xp, op.array, op.trans) if u else op for op, u in zip(operands, unaligned)]
            unaligned = [u and not vector_aligned(op) for op, u in zip(operands, unaligned)]
    return operands[0], operands[1], not any(unaligned)


def _choose(product: Product, families: list[tuple[GemmConfig, ...]], aligned: bool, named: GemmConfig | None,
            tuning: Tuning, device: DeviceLimits, device_text: str) -> Choice:
    """Step 2: the vector path where the operands allow it (or as tuned), the newest family that can
    run the call, and its tile and split-K by the cost model (or as tuned)."""
    if tuning.vector and not aligned:
        raise ValueError("Tuning(vector=True) needs 16-byte aligned operands, leading dimensions and batch strides")
    vector = aligned if tuning.vector is None else tuning.vector
    configs = next((configs for configs in families if vector or not configs[0].vector_only), None)
    if configs is None:  # only a named configuration can be refused: some family runs every call
        raise ValueError(f"tile config {named.name!r} runs on {named.hardware}, which this call cannot use "
                         f"(dtype {product.dtype}, {device_text}, operands {'' if aligned else 'not '}16-byte "
                         "aligned)")
    m, n, k, batch, dtype = product.m, product.n, product.k, product.batch, product.dtype
    if tuning.splits is not None:
        splits = tuning.splits if batch == 1 else 1
        best = min((estimate(config, splits, m, n, k, batch, dtype, vector, device) for config in configs),
                   key=lambda e: e.seconds)
    else:
        best = choose(m, n, k, batch, dtype, vector, configs, device)
    k_per_split, splits = split_k(k, best.splits, best.config.k_depth(product.t.itemsize))
    return Choice(best.config, vector, splits, k_per_split)


def colsum_chunks(rows: int, cols: int, device: DeviceLimits = H100) -> tuple[int, int]:
    """(rows_per_chunk, chunks) for the first pass: enough blocks to fill the card (4 per SM), each
    chunk at least COLSUM_MIN_ROWS_PER_CHUNK rows, at least one chunk (an empty one writes zeros)."""
    column_blocks = ceil_div(cols, REDUCE_THREADS)
    wanted = max(1, min(ceil_div(4 * device.sms, column_blocks), rows // COLSUM_MIN_ROWS_PER_CHUNK))
    rows_per_chunk = max(1, ceil_div(rows, wanted))
    return rows_per_chunk, max(1, ceil_div(rows, rows_per_chunk))


def plan_colsum(xp: ModuleType, a: Any, out: Any, *, beta: float, device: DeviceLimits = H100) -> list[Launch]:
    """The launches for out[...] = a.sum(axis=0) + beta·out in a fixed order, as in base.Backend.colsum."""
    t = element_type(out.dtype)
    rows, cols = a.shape
    _check_size(rows=rows, cols=cols)
    if cols == 0:
        return []
    lda = _row_major_ld(a.shape, a.strides, a.itemsize)
    if lda is None:  # the kernel reads rows; any other layout is copied
        a, lda = xp.ascontiguousarray(a), cols
    rows_per_chunk, chunks = colsum_chunks(rows, cols, device)
    partials = xp.empty((chunks, cols), t.acc)
    first = Launch("reduce.cu", colsum_partial_name(t), (ceil_div(cols, REDUCE_THREADS), chunks, 1),
                   (REDUCE_THREADS, 1, 1),
                   (np.int32(rows), np.int32(cols), np.int32(rows_per_chunk), a, np.int64(lda), partials))
    return [first, sum_splits_launch(t, 1, cols, chunks, partials, out, cols, 1.0, beta, None, device)]
