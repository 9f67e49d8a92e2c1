"""Launches: what a kernel family's launch hook (tiles.GemmConfig.launches) builds from a family-neutral
description of one product (GemmCall), and how a runtime runs them (run).

Two launch contracts exist today, each a builder here that a family's hook calls:
- strided_batched (kernels/gemm.cu, kernels/tc_gemm.cu): one block per C tile, grid z = batch · splits,
  operands as pointers with leading dimensions and batch strides;
- persistent_tma (kernels/wgmma_gemm.cu): a persistent grid of at most one block per SM, operands as TMA
  tensor maps (tensor_map.TensorMapArg, encoded per runtime and cached when launched), a batch flag per
  operand (0: one matrix shared by the whole stack), compiled with the family's arch flags.
Both write a split-K product into a float32 workspace that linear_sum_splits (kernels/reduce.cu) sums in a
fixed order and passes through the epilogue (alpha, beta·C, bias).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..dtypes import ElementType
from .device import DeviceLimits
from .tensor_map import TensorMapArg

REDUCE_THREADS = 256  # block size of the reduce.cu kernels
REDUCE_BLOCKS_PER_SM = 8  # linear_sum_splits's grid: enough to fill the card; it loops over the rest
MAX_UNITS = 2**31  # a persistent kernel counts its tiles of work in 32 bits


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def sum_splits_name(t: ElementType) -> str:
    return f"linear_sum_splits<{t.cpp}>"


def colsum_partial_name(t: ElementType) -> str:
    return f"linear_colsum_partial<{t.cpp}>"


@dataclass(frozen=True)
class Launch:
    """runtime.function(source, name, options)(grid, block, args, shared_mem=shared_mem); an argument that
    is a TensorMapArg is encoded for the runtime first (run)."""
    source: str
    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple
    shared_mem: int = 0
    options: tuple[str, ...] = ()  # extra compiler flags (the family's arch_flags)


def run(runtime: Any, launches: list[Launch]) -> None:
    """Launch each in order on `runtime` (cuda or emulate)."""
    for launch in launches:
        kernel = runtime.function(launch.source, launch.name, options=launch.options)
        args = tuple(arg.encode(runtime) if isinstance(arg, TensorMapArg) else arg for arg in launch.args)
        kernel(launch.grid, launch.block, args, shared_mem=launch.shared_mem)


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


@dataclass(frozen=True)
class GemmCall:
    """One product as every family's launch hook receives it: c[...] = alpha·op(a)·op(b) + beta·c (+ bias),
    op(a) M x K and op(b) K x N, `batch` matrices (a, b and c may share leading batch dimensions; a's and
    b's may be broadcast), on the configuration the plan chose, K cut into `splits` slices of
    `k_per_split`, on the vector (16-byte) load path or not."""
    config: Any  # tiles.GemmConfig
    dtype: str
    t: ElementType
    m: int
    n: int
    k: int
    batch: int
    a: Operand
    b: Operand
    c: Any
    ldc: int
    alpha: float
    beta: float
    bias: Any  # None or a contiguous vector of N
    splits: int
    k_per_split: int
    vector: bool
    device: DeviceLimits


def sum_splits_launch(t: ElementType, m: int, n: int, splits: int, partials: Any, c: Any, ldc: int,
                      alpha: float, beta: float, bias: Any, device: DeviceLimits) -> Launch:
    blocks = max(1, min(ceil_div(m * n, REDUCE_THREADS), REDUCE_BLOCKS_PER_SM * device.sms))
    args = (np.int32(m), np.int32(n), np.int32(splits), partials, c, np.int64(ldc),
            t.acc(alpha), t.acc(beta), c if bias is None else bias, np.int32(bias is not None))
    return Launch("reduce.cu", sum_splits_name(t), (blocks, 1, 1), (REDUCE_THREADS, 1, 1), args)


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


def _split_target(xp: ModuleType, call: GemmCall) -> tuple[str, Any, int, tuple]:
    """(C type of the instantiation, what the GEMM writes, its leading dimension, the GEMM's epilogue
    arguments): c itself, or for split-K the float32 workspace (the reduction applies the epilogue)."""
    t = call.t
    if call.splits == 1:
        bias = call.c if call.bias is None else call.bias  # c: an unused stand-in for a missing bias
        return t.cpp, call.c, call.ldc, (t.acc(call.alpha), t.acc(call.beta), bias, np.int32(call.bias is not None))
    workspace = xp.empty((call.splits, call.m, call.n), t.acc)
    return t.acc_cpp, workspace, call.n, (t.acc(1), t.acc(0), call.c, np.int32(0))


def _with_reduction(call: GemmCall, launches: list[Launch], workspace: Any) -> list[Launch]:
    if call.splits == 1:
        return launches
    return launches + [sum_splits_launch(call.t, call.m, call.n, call.splits, workspace, call.c, call.ldc,
                                         call.alpha, call.beta, call.bias, call.device)]


def strided_batched(xp: ModuleType, call: GemmCall) -> list[Launch]:
    """The launches of gemm.cu and tc_gemm.cu: grid (M tiles, N tiles, batch · splits), a stack cut
    where its batch dimensions do not merge or grid z ends, then the split-K reduction."""
    config, m, n, splits = call.config, call.m, call.n, call.splits
    grid_xy = (ceil_div(m, config.bm), ceil_div(n, config.bn))
    if grid_xy[1] > call.device.max_grid[1]:
        raise ValueError(f"N = {n} needs {grid_xy[1]} column tiles, more than one launch allows "
                         f"({call.device.max_grid[1]})")
    c_cpp, target, target_ld, epilogue = _split_target(xp, call)
    split_stride = 0 if splits == 1 else m * n
    name = config.template_name(call.t, c_cpp, call.a.trans, call.b.trans, call.vector)
    shared = config.shared_bytes(call.dtype)
    operands = [call.a.array, call.b.array] + ([call.c] if splits == 1 else [])
    launches = []
    for part in batch_launches(xp, operands, call.device.max_grid[2] // splits):
        part_a, part_b, part_c = part.arrays if splits == 1 else (*part.arrays, target)
        stride_a, stride_b, stride_c = part.strides if splits == 1 else (*part.strides, 0)
        launches.append(Launch(
            config.source, name, grid_xy + (part.count * splits,), (config.threads, 1, 1),
            (np.int32(m), np.int32(n), np.int32(call.k), np.int32(call.k_per_split), np.int32(splits),
             part_a, np.int64(call.a.ld), np.int64(stride_a), part_b, np.int64(call.b.ld), np.int64(stride_b),
             part_c, np.int64(target_ld), np.int64(stride_c), np.int64(split_stride)) + epilogue,
            shared, config.arch_flags))
    return _with_reduction(call, launches, target)


def _map_stack(xp: ModuleType, stored: Any, ld: int, batch_stride: int, count: int) -> tuple[Any, bool]:
    """(a (count, rows, columns) view of an operand's stored matrices that a tensor map takes, whether the
    stack is batched): a broadcast operand (batch stride 0, or one matrix) as one matrix with the positive
    batch stride of a whole matrix (a map has no stride 0 and reads batch 0 only); a single row with a
    row stride rounded up to 16 bytes (a map needs one; only row 0 is read)."""
    rows, cols = stored.shape[-2:]
    itemsize = stored.itemsize
    row_bytes = ld * itemsize if rows > 1 else round_up(max(ld, 1) * itemsize, 16)
    batched = count > 1 and batch_stride != 0
    batch_bytes = batch_stride * itemsize if batched else rows * row_bytes
    first = stored[(0,) * (stored.ndim - 2)]
    view = xp.lib.stride_tricks.as_strided(first, (count if batched else 1, rows, cols),
                                           (batch_bytes, row_bytes, itemsize))
    return view, batched


def persistent_tma(xp: ModuleType, call: GemmCall) -> list[Launch]:
    """The launches of wgmma_gemm.cu: per launch of the stack (batch dimensions that do not merge are
    launches of their own), a persistent grid of min(tiles of work, SMs) blocks, A and B as tensor maps
    with the family's boxes, C by pointer, leading dimension and batch stride; then the split-K
    reduction (split-K takes one matrix: the plan splits only those)."""
    config, m, n, splits = call.config, call.m, call.n, call.splits
    c_cpp, target, target_ld, epilogue = _split_target(xp, call)
    name = config.template_name(call.t, c_cpp, call.a.trans, call.b.trans, call.vector)
    launches = []
    for part in batch_launches(xp, [call.a.array, call.b.array, call.c], MAX_UNITS):
        units = config.tiles(m, n) * part.count * splits
        if units >= MAX_UNITS:
            raise ValueError(f"{units} tiles of work (M {m}, N {n}, batch {part.count}, splits {splits}) exceed "
                             f"{config.name}'s 2**31")
        part_a, part_b, part_c = part.arrays
        maps = []
        for operand, which, stored, stride in (("a", call.a, part_a, part.strides[0]),
                                               ("b", call.b, part_b, part.strides[1])):
            view, batched = _map_stack(xp, stored, which.ld, stride, part.count)
            maps += [TensorMapArg(view, config.box(operand, which.trans), config.swizzle), np.int32(batched)]
        c_arg, batch_stride_c = (part_c, part.strides[2]) if splits == 1 else (target, 0)
        launches.append(Launch(
            config.source, name, (max(1, min(units, call.device.sms)), 1, 1), (config.threads, 1, 1),
            (np.int32(m), np.int32(n), np.int32(call.k), np.int32(call.k_per_split), np.int32(splits),
             np.int32(part.count), *maps, c_arg, np.int64(target_ld), np.int64(batch_stride_c), np.int64(m * n))
            + epilogue, config.shared_bytes(call.dtype), config.arch_flags))
    return _with_reduction(call, launches, target)
