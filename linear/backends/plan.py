"""The launch plan shared by the cuda and emulate backends.

Given the arrays of one backend call, the plan decides everything a GPU bug could hide in: how each
operand's strides map to a leading dimension and a transpose flag, the tile configuration, split-K,
the vector path, the template instantiation, grid, block, dynamic shared memory and the argument
tuple. The two backends differ only in the runtime that compiles and launches the result, so the
emulator exercises all of it in CI.

Kernel family: tensor cores (kernels/tc_gemm.cu, TC_CONFIGS) for float16 and bfloat16, and for float32
when TF32 is allowed, on compute capability >= 8.0 (the emulator counts as 9.0), when both operands'
pointers and leading dimensions are 16-byte aligned (cp.async moves 16-byte chunks). A product whose
operands are not aligned (a vocabulary of 50257 in bfloat16, attention over 77 tokens) copies each
unaligned operand into a buffer with aligned rows first, when the cost model says the copies and the
tensor cores beat the SIMT kernel (the user's arrays are only read; a broadcast matrix is copied once);
every other call runs the SIMT kernel (kernels/gemm.cu, TILE_CONFIGS), float64 and older cards included.

The tile configuration and split-K come from the cost model (cost.choose), among the kernels of
tiles.py. Vector loads: only when both operands' pointers, leading dimensions and batch strides are
16-byte aligned. Tuning() overrides the configuration, split-K and the vector path (for tests and tile
sweeps).

Stacks of matrices (numpy.matmul's batch) are one strided-batched launch: grid z = batch · splits, each
operand with its own batch stride, 0 for a broadcast one. Batch dimensions whose strides merge into one
(every contiguous stack, a broadcast matrix) become that one stride; outer dimensions that do not merge
(two operands broadcast along different dimensions) get one launch each, and a batch beyond gridDim.z's
limit is cut into several launches.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..activations import activation_code
from .cost import H100, DeviceLimits, aligned_copies_pay, choose, estimate, split_k
from .tiles import (CONFIGS_BY_NAME, HEURISTIC_CONFIGS, TC_HEURISTIC_CONFIGS, TENSOR_CORE_DTYPES,
                    TENSOR_CORE_MIN_ARCH, ElementType, TensorCoreConfig, TileConfig, ceil_div, colsum_partial_name,
                    element_type, gemm_name, round_up, sum_splits_name, tc_gemm_name)

NUM_SMS = 132  # an H100 SXM: the reductions' grid needs only the order of magnitude of the card
VECTOR_BYTES = 16
REDUCE_THREADS = 256  # block size of the reduce.cu kernels
REDUCE_MAX_BLOCKS = 8 * NUM_SMS  # linear_sum_splits loops over the rest
COLSUM_MIN_ROWS_PER_CHUNK = 64
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z
# Sizes are int in the kernels, and a tile's start plus its extent (m0 + BM, k0 + BK, ...) must not wrap:
# keep every size one largest tile (and one K step) below 2**31.
MAX_SIZE = 2**31 - 1 - 1024


@dataclass(frozen=True)
class Tuning:
    """Overrides of the cost model; a field left None is chosen by it."""
    config: str | None = None  # a name in CONFIGS_BY_NAME
    splits: int | None = None  # requested K splits (fewer are used when K is short)
    vector: bool | None = None  # True raises ValueError where the operands are not 16-byte aligned

    def __post_init__(self):
        if self.config is not None and self.config not in CONFIGS_BY_NAME:
            raise ValueError(f"config must be one of {sorted(CONFIGS_BY_NAME)}, got {self.config!r}")
        if self.splits is not None and not 1 <= self.splits <= MAX_GRID_YZ:
            raise ValueError(f"splits must be in [1, {MAX_GRID_YZ}], got {self.splits}")


# ----------------------------------------------------------------------------------------------------
# Operands: strides -> (leading dimension, transpose flag)
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """What the kernel receives for one matrix, or a stack of them in the leading dimensions: each
    matrix of `array` (transposed when `trans`) is stored row-major with leading dimension `ld`
    (in elements)."""
    array: Any
    ld: int
    trans: bool

    @property
    def rows(self) -> int:
        return self.array.shape[-2]


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


def as_operand(xp: ModuleType, x: Any, trans: bool) -> Operand:
    """x (a matrix, or a stack of them) as the kernels see it: row-major as is, column-major as the
    transpose with the flag flipped, anything else (negative or non-unit inner strides, batch strides
    that are not whole elements) as an aligned copy (aligned_copy)."""
    cols = max(x.shape[-1], 1)
    if x.size == 0:  # never read
        return Operand(x, cols, trans)
    if all(stride % x.itemsize == 0 for stride in x.strides[:-2]):
        shape, strides = x.shape[-2:], x.strides[-2:]
        ld = _row_major_ld(shape, strides, x.itemsize)
        if ld is not None:
            return Operand(x, ld, trans)
        ld = _row_major_ld(shape[::-1], strides[::-1], x.itemsize)
        if ld is not None:
            return Operand(xp.swapaxes(x, -1, -2), ld, not trans)
    return aligned_copy(xp, x, trans)


def address(x: Any) -> int:
    """The device (CuPy) or host (numpy) address of x's first element."""
    return x.ctypes.data if isinstance(x, np.ndarray) else x.data.ptr


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


@dataclass(frozen=True)
class Launch:
    """runtime.function(source, name)(grid, block, args, shared_mem=shared_mem)"""
    source: str
    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple
    shared_mem: int = 0


def _check_size(**sizes: int) -> None:
    for what, size in sizes.items():
        if size > MAX_SIZE:
            raise ValueError(f"{what} = {size} exceeds the kernels' limit of 2**31 - 1025")


def _activation_args(code: int, preact: Any, stand_in: Any) -> tuple:
    """The epilogue's last arguments (kernels/epilogue.cuh): the activation's code, where Z goes (an unused
    stand-in of C's type when it is not stored) and whether it is stored."""
    return np.int32(code), stand_in if preact is None else preact, np.int32(preact is not None)


def _sum_splits_launch(t: ElementType, m: int, n: int, splits: int, partials: Any, c: Any, ldc: int,
                       alpha: float, beta: float, bias: Any, activation: int = 0, preact: Any = None) -> Launch:
    blocks = max(1, min(ceil_div(m * n, REDUCE_THREADS), REDUCE_MAX_BLOCKS))
    args = (np.int32(m), np.int32(n), np.int32(splits), partials, c, np.int64(ldc),
            t.acc(alpha), t.acc(beta), c if bias is None else bias, np.int32(bias is not None),
            *_activation_args(activation, preact, c))
    return Launch("reduce.cu", sum_splits_name(t), (blocks, 1, 1), (REDUCE_THREADS, 1, 1), args)


def _contiguous_vector(xp: ModuleType, v: Any) -> Any:
    return v if v.size <= 1 or v.strides[0] == v.itemsize else xp.ascontiguousarray(v)


def _output_ld(c: Any) -> int:
    ld = _row_major_ld(c.shape[-2:], c.strides[-2:], c.itemsize)
    if ld is None or any(stride % c.itemsize for stride in c.strides[:-2]):
        raise ValueError(f"the output must be row-major, got shape {c.shape} and strides {c.strides}")
    return ld


def tensor_cores_take(dtype: str, *, arch: int | None, tf32: bool) -> bool:
    """Whether linear_tc_gemm is instantiated for dtype on this device; it also needs the operands that
    16-byte loads need (the vector path), which plan_gemm has checked already."""
    if arch is None or arch < TENSOR_CORE_MIN_ARCH or dtype not in TENSOR_CORE_DTYPES:
        return False
    return dtype != "float32" or tf32


@dataclass(frozen=True)
class BatchLaunch:
    """One launch's share of a stack: the arrays start at its first matrix; `count` matrices, each
    operand's next one `strides` elements further (0 for a broadcast operand)."""
    arrays: tuple[Any, ...]
    count: int
    strides: tuple[int, ...]


def batch_launches(xp: ModuleType, arrays: list[Any], max_count: int) -> list[BatchLaunch]:
    """Split the common batch dimensions of `arrays` (leading dimensions, before each one's matrix)
    into launches: dimensions whose strides merge for every array become one strided dimension (the
    innermost goes to the grid); each index of the outer ones, and each max_count matrices of the
    inner one, is a launch of its own. Only views of the arrays, never a copy."""
    merged: list[tuple[int, tuple[int, ...]]] = []  # (size, byte strides per array), outer first
    for i, size in enumerate(arrays[0].shape[:-2]):
        if size == 1:
            continue
        strides = tuple(x.strides[i] for x in arrays)
        if merged and all(outer == size * inner for outer, inner in zip(merged[-1][1], strides)):
            merged[-1] = (merged[-1][0] * size, strides)
        else:
            merged.append((size, strides))
    if not merged:  # one matrix: the arrays as they are
        return [BatchLaunch(tuple(arrays), 1, (0,) * len(arrays))]
    # Each array as [merged batch dims..., rows, cols]; its first element is that of matrix 0.
    views = [xp.lib.stride_tricks.as_strided(
        x, tuple(size for size, _ in merged) + x.shape[-2:], tuple(s[j] for _, s in merged) + x.strides[-2:])
        for j, x in enumerate(arrays)]
    count = merged[-1][0]
    element_strides = tuple(stride // x.itemsize for stride, x in zip(merged[-1][1], arrays))
    launches = []
    for index in itertools.product(*(range(size) for size, _ in merged[:-1])):
        for first in range(0, count, max_count):
            part = index + (slice(first, first + max_count),)
            launches.append(BatchLaunch(tuple(v[part] for v in views), min(max_count, count - first),
                                        element_strides))
    return launches


def plan_gemm(xp: ModuleType, a: Any, b: Any, c: Any, *, trans_a: bool, trans_b: bool, alpha: float,
              beta: float, bias: Any = None, tuning: Tuning = Tuning(), arch: int | None = None,
              tf32: bool = False, device: DeviceLimits = H100, activation: str | None = None,
              preact: Any = None) -> list[Launch]:
    """The launches for c[...] = act(alpha·op(a)·op(b) + beta·c (+ bias)), with its argument written to
    preact (c's shape and strides) when given, as in base.Backend.gemm. The activation travels as a
    runtime argument of the same instantiations (kernels/epilogue.cuh); with split-K the reduction
    applies it.

    a, b and c may carry the same leading batch dimensions (a stack of matrices); a's and b's may be
    broadcast views (stride 0) of them. 2-D arrays are one matrix. arch is the device's compute
    capability as an int (90 for 9.0), None for no tensor cores; tf32 allows float32 products to run
    on them with TF32 operands; device: the limits the cost model plans for.
    """
    t = element_type(c.dtype)
    dtype = np.dtype(c.dtype).name
    m, n = c.shape[-2:]
    k = a.shape[-2] if trans_a else a.shape[-1]
    batch = math.prod(c.shape[:-2])
    _check_size(M=m, N=n, K=k)
    chosen = CONFIGS_BY_NAME[tuning.config] if tuning.config else None
    if chosen is not None and dtype not in chosen.dtypes:
        raise ValueError(f"tile config {chosen.name!r} is instantiated for {', '.join(chosen.dtypes)} only, "
                         f"got dtype {dtype}")
    code = activation_code(activation)
    if preact is not None and (preact.shape != c.shape or preact.strides != c.strides or preact.dtype != c.dtype):
        raise ValueError(f"preact must have c's shape, strides and dtype {c.shape}, {c.strides}, {c.dtype}; "
                         f"got {preact.shape}, {preact.strides}, {preact.dtype}")
    if m == 0 or n == 0 or batch == 0:
        return []
    ldc = _output_ld(c)
    op_a, op_b = as_operand(xp, a, trans_a), as_operand(xp, b, trans_b)
    if bias is not None:
        bias = _contiguous_vector(xp, bias)
    unaligned = [not vector_aligned(op) for op in (op_a, op_b)]
    if (any(unaligned) and tuning.vector is None and not isinstance(chosen, TileConfig)
            and tensor_cores_take(dtype, arch=arch, tf32=tf32)
            and (chosen is not None or aligned_copies_pay(
                m, n, k, batch, dtype, [_stored(op.array).nbytes for op, u in zip((op_a, op_b), unaligned) if u],
                device))):
        op_a, op_b = (aligned_copy(xp, op.array, op.trans) if u else op for op, u in zip((op_a, op_b), unaligned))
        unaligned = [not vector_aligned(op) for op in (op_a, op_b)]
    aligned = not any(unaligned)
    if tuning.vector and not aligned:
        raise ValueError("Tuning(vector=True) needs 16-byte aligned operands, leading dimensions and batch strides")
    vector = aligned if tuning.vector is None else tuning.vector

    tensor_cores = vector and tensor_cores_take(dtype, arch=arch, tf32=tf32)
    if isinstance(chosen, TensorCoreConfig) and not tensor_cores:
        raise ValueError(f"tile config {chosen.name!r} runs on tensor cores, which this call cannot use "
                         f"(dtype {dtype}, compute capability {arch}, TF32 {'on' if tf32 else 'off'}, "
                         f"operands {'' if aligned else 'not '}16-byte aligned)")
    if tensor_cores and not isinstance(chosen, TileConfig):
        source, configs = "tc_gemm.cu", TC_HEURISTIC_CONFIGS
    else:
        source, configs = "gemm.cu", HEURISTIC_CONFIGS
    configs = (chosen,) if chosen else configs
    if tuning.splits is not None:
        splits = tuning.splits if batch == 1 else 1
        best = min((estimate(c, splits, m, n, k, batch, dtype, vector, device) for c in configs),
                   key=lambda e: e.seconds)
    else:
        best = choose(m, n, k, batch, dtype, vector, configs, device)
    config = best.config
    if source == "tc_gemm.cu":
        bk, shared = config.bk(t.itemsize), config.shared_bytes()
    else:
        bk, shared = config.bk, config.shared_bytes(np.dtype(t.acc).itemsize)
    k_per_split, splits = split_k(k, best.splits, bk)
    grid_xy = (ceil_div(m, config.bm), ceil_div(n, config.bn))
    if grid_xy[1] > MAX_GRID_YZ:
        raise ValueError(f"N = {n} needs {grid_xy[1]} column tiles, more than one launch allows ({MAX_GRID_YZ})")

    if splits == 1:
        c_cpp, target, target_ld, split_stride = t.cpp, c, ldc, 0
        epilogue = (t.acc(alpha), t.acc(beta), c if bias is None else bias, np.int32(bias is not None))
    else:  # partial products into the workspace; linear_sum_splits applies the epilogue
        c_cpp, target, target_ld, split_stride = t.acc_cpp, xp.empty((splits, m, n), t.acc), n, m * n
        epilogue = (t.acc(1), t.acc(0), c, np.int32(0))  # c: an unused stand-in for the bias
    name = (tc_gemm_name(t, c_cpp, op_a.trans, op_b.trans, config) if source == "tc_gemm.cu" else
            gemm_name(t, c_cpp, op_a.trans, op_b.trans, config, vector))
    # Z is split into launches as C is (same strides); a split-K workspace launch stores none.
    stores_preact = splits == 1 and preact is not None
    operands = [op_a.array, op_b.array] + ([c] if splits == 1 else []) + ([preact] if stores_preact else [])
    launches = []
    for part in batch_launches(xp, operands, MAX_GRID_YZ // splits):
        part_a, part_b, part_c = part.arrays[:3] if splits == 1 else (*part.arrays, target)
        stride_a, stride_b, stride_c = part.strides[:3] if splits == 1 else (*part.strides, 0)
        activation_args = (_activation_args(code, part.arrays[3] if stores_preact else None, part_c)
                           if splits == 1 else _activation_args(0, None, target))
        launches.append(Launch(
            source, name, grid_xy + (part.count * splits,), (config.threads, 1, 1),
            (np.int32(m), np.int32(n), np.int32(k), np.int32(k_per_split), np.int32(splits),
             part_a, np.int64(op_a.ld), np.int64(stride_a), part_b, np.int64(op_b.ld), np.int64(stride_b),
             part_c, np.int64(target_ld), np.int64(stride_c), np.int64(split_stride)) + epilogue + activation_args,
            shared))
    if splits == 1:
        return launches
    return launches + [_sum_splits_launch(t, m, n, splits, target, c, ldc, alpha, beta, bias, code, preact)]


def colsum_chunks(rows: int, cols: int) -> tuple[int, int]:
    """(rows_per_chunk, chunks) for the first pass: enough blocks to fill the card, each chunk at
    least COLSUM_MIN_ROWS_PER_CHUNK rows, at least one chunk (an empty one writes zeros)."""
    column_blocks = ceil_div(cols, REDUCE_THREADS)
    wanted = max(1, min(ceil_div(4 * NUM_SMS, column_blocks), rows // COLSUM_MIN_ROWS_PER_CHUNK))
    rows_per_chunk = max(1, ceil_div(rows, wanted))
    return rows_per_chunk, max(1, ceil_div(rows, rows_per_chunk))


def _rows(xp: ModuleType, a: Any) -> tuple[Any, int]:
    """a and its leading dimension as the reduce.cu kernels read it (rows); any other layout is copied."""
    lda = _row_major_ld(a.shape, a.strides, a.itemsize)
    return (a, lda) if lda is not None else (xp.ascontiguousarray(a), a.shape[1])


def plan_colsum(xp: ModuleType, a: Any, out: Any, *, beta: float) -> list[Launch]:
    """The launches for out[...] = a.sum(axis=0) + beta·out in a fixed order, as in base.Backend.colsum."""
    return plan_activation_grad(xp, a, None, None, out, activation=None, beta=beta)


def plan_activation_grad(xp: ModuleType, dy: Any, z: Any, dz: Any, db: Any, *, activation: str | None,
                         beta: float) -> list[Launch]:
    """The launches for dz[...] = dy ⊙ act'(z) and db[...] = Σ_rows dz + beta·db, as in
    base.Backend.activation_grad: one pass over dy and z (linear_colsum_partial writes dz and per-chunk
    column sums), then the fixed-order sum of the chunks (none when db is None). Without an activation
    (z and dz None) it is the column sum db = Σ_rows dy + beta·db."""
    t = element_type(dy.dtype)
    rows, cols = dy.shape
    _check_size(rows=rows, cols=cols)
    if cols == 0 or db is None and rows == 0:
        return []
    dy, ld_dy = _rows(xp, dy)
    z, ld_z = _rows(xp, z) if z is not None else (dy, ld_dy)  # dy: an unused stand-in
    rows_per_chunk, chunks = colsum_chunks(rows, cols)
    partials = xp.empty((chunks, cols), t.acc)
    first = Launch("reduce.cu", colsum_partial_name(t), (ceil_div(cols, REDUCE_THREADS), chunks, 1),
                   (REDUCE_THREADS, 1, 1),
                   (np.int32(rows), np.int32(cols), np.int32(rows_per_chunk), dy, np.int64(ld_dy), partials,
                    np.int32(activation_code(activation)), z, np.int64(ld_z), dy if dz is None else dz))
    if db is None:
        return [first]
    return [first, _sum_splits_launch(t, 1, cols, chunks, partials, db, cols, 1.0, beta, None)]
