"""Launches: what a kernel family's launch hook (tiles.GemmConfig.launches) builds from a family-neutral
description of one product (GemmCall), and how a runtime runs them (function, call, run).

A launch's arguments are constants, or Slots that each call fills in from its own values (a plan.Plan's:
alpha, beta, the call's arrays, the buffers made for it), so that one plan serves every call with the same
layout. An argument that is a tensor_map.TensorMapArg is a TMA tensor map of an array (in a plan, of a
Slot): filled with the call's array, then encoded for the runtime that launches through tensor_map's cache,
which is keyed by the array's pointer, so a map always names the array of the call that launches it.

Two launch contracts exist today, each a builder here that a family's hook calls:
- strided_batched (kernels/gemm.cu, kernels/tc_gemm.cu): one block per C tile, grid z = batch · splits,
  operands as pointers with leading dimensions and batch strides;
- persistent_tma (kernels/wgmma_gemm.cu): a persistent grid of at most one block per SM, operands as TMA
  tensor maps, a batch flag per operand (0: one matrix shared by the whole stack), compiled with the
  family's arch flags.
Both write a split-K product into a float32 workspace (GemmCall.workspace) that linear_sum_splits
(kernels/reduce.cu) sums in a fixed order and passes through the epilogue (alpha, beta·C, bias, the
activation). Without split-K both apply the activation (kernels/epilogue.cuh) and store its argument Z
themselves.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..dtypes import ElementType
from .base import KernelFunction, Runtime
from .device import DeviceLimits
from .tensor_map import TensorMapArg

REDUCE_THREADS = 256  # block size of the reduce.cu kernels
REDUCE_BLOCKS_PER_SM = 8  # linear_sum_splits's grid: enough to fill the card; it loops over the rest
MAX_UNITS = 2**31  # a persistent kernel counts its tiles of work in 32 bits
TMA_ROW_BYTES = 16  # a tensor map's row stride is a multiple of this


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


def sum_splits_name(t: ElementType) -> str:
    return f"linear_sum_splits<{t.cpp}>"


def colsum_partial_name(t: ElementType) -> str:
    return f"linear_colsum_partial<{t.cpp}>"


# ----------------------------------------------------------------------------------------------------
# Slots: the arguments each call fills in
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    """An array seen with `shape` and byte `strides` from its first element, indexed with `index` and then
    cut to matrices first .. stop - 1 of the next dimension (`batch`): one launch's part of a stack cut into
    several, or the (batch, rows, columns) a tensor map describes. `key`: its fields as one tuple of ints,
    which tensor_map's cache keys hash at C speed."""
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    index: tuple[int, ...] = ()
    batch: tuple[int, int] | None = None  # (first, stop)

    @property
    def key(self) -> tuple:
        return self.shape, self.strides, self.index, self.batch

    def of(self, xp: ModuleType, x: Any) -> Any:
        viewed = xp.lib.stride_tricks.as_strided(x, self.shape, self.strides)
        if self.index:
            viewed = viewed[self.index]
        return viewed if self.batch is None else viewed[self.batch[0]:self.batch[1]]


@dataclass(frozen=True)
class Slot:
    """A launch argument that each call fills in (Launch.arguments): value number `index`, seen through
    `views` in order. An operand goes in as the array the call gave, not as its transposed view: a view
    starts at its first element's address, the same for both."""
    index: int
    views: tuple[View, ...] = ()

    def viewed(self, *views: View | None) -> Slot:
        """This slot seen through views too (None: as it is)."""
        return Slot(self.index, self.views + tuple(view for view in views if view is not None))

    def fill(self, xp: ModuleType, values: list[Any]) -> Any:
        value = values[self.index]
        for view in self.views:
            value = view.of(xp, value)
        return value


ALPHA, BETA = Slot(0), Slot(1)  # a plan's first two values: alpha and beta as its accumulator type


@dataclass(frozen=True)
class Launch:
    """runtime.function(source, name, options)(grid, block, args, shared_mem=shared_mem). In a plan, args
    hold Slots (and TensorMapArgs of Slots) where each call's values go (arguments() fills them in); an
    argument that is a TensorMapArg is encoded for the runtime when launched (call)."""
    source: str
    name: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple
    shared_mem: int = 0
    options: tuple[str, ...] = ()  # extra compiler flags (the family's arch_flags)

    @functools.cached_property
    def _slots(self) -> tuple[tuple[int, Slot], ...]:
        return tuple((i, arg) for i, arg in enumerate(self.args) if isinstance(arg, Slot))

    @functools.cached_property
    def _map_slots(self) -> tuple[tuple[int, int, TensorMapArg], ...]:
        """(position, value number, the map seen through the slot's views, its array left out) of each
        TensorMapArg of a Slot."""
        return tuple((i, arg.array.index, TensorMapArg(None, arg.box, arg.swizzle, arg.array.views))
                     for i, arg in enumerate(self.args) if isinstance(arg, TensorMapArg) and isinstance(arg.array, Slot))

    @functools.cached_property
    def map_positions(self) -> tuple[int, ...]:
        """The positions of the tensor-map arguments."""
        return tuple(i for i, arg in enumerate(self.args) if isinstance(arg, TensorMapArg))

    def arguments(self, xp: ModuleType, values: list[Any]) -> tuple:
        """args with each Slot replaced by its value, and each TensorMapArg of a Slot by the map of its value
        seen through the slot's views."""
        args = list(self.args)
        for i, slot in self._slots:
            args[i] = slot.fill(xp, values)
        for i, index, unfilled in self._map_slots:
            # a map's views are applied by tensor_map's cache, only when it has no map of them yet
            args[i] = unfilled.of(values[index])
        return tuple(args)


def function(runtime: Runtime, launch: Launch) -> KernelFunction:
    """The runtime's kernel function for `launch`."""
    return runtime.function(launch.source, launch.name, options=launch.options)


def call(runtime: Runtime, kernel: KernelFunction, launch: Launch, args: tuple) -> None:
    """Launch `kernel` (function(runtime, launch)) with launch's grid and the filled-in `args`; a tensor
    map argument is encoded for the runtime here, from the array it holds (tensor_map's cache)."""
    if launch.map_positions:
        args = list(args)
        for i in launch.map_positions:
            args[i] = args[i].encode(runtime)
    kernel(launch.grid, launch.block, tuple(args), shared_mem=launch.shared_mem)


def run(runtime: Runtime, launches: list[Launch]) -> None:
    """Launch each in order on `runtime` (cuda or emulate); their arguments filled in already (Plan.bind)."""
    for launch in launches:
        call(runtime, function(runtime, launch), launch, launch.args)


# ----------------------------------------------------------------------------------------------------
# A product as every family's launch hook receives it
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operand:
    """What the kernel receives for one matrix, or a stack of them in the leading dimensions: each
    matrix of `array` (transposed when `trans`) is stored row-major with leading dimension `ld`
    (in elements)."""
    array: Any
    ld: int
    trans: bool
    copied: bool = False  # array is an aligned copy, made anew for each call

    @property
    def rows(self) -> int:
        return self.array.shape[-2]


@dataclass(frozen=True)
class GemmCall:
    """One product as every family's launch hook receives it: c[...] = act(alpha·op(a)·op(b) + beta·c (+ bias)),
    op(a) M x K and op(b) K x N, `batch` matrices (a, b and c may share leading batch dimensions; a's and
    b's may be broadcast), on the configuration the plan chose, K cut into `splits` slices of
    `k_per_split`, on the vector (16-byte) load path or not. a, b, c: the layout the plan was made for (the
    hook reads shapes and strides, never values); slot_a, slot_b, slot_c, slot_bias (None: no bias) and
    workspace (split-K's (splits, M, N) accumulators; None for one split), slot_preact (None: Z not
    stored): where each call's arrays go; activation: act's code (0: none)."""
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
    splits: int
    k_per_split: int
    vector: bool
    device: DeviceLimits
    slot_a: Slot
    slot_b: Slot
    slot_c: Slot
    slot_bias: Slot | None
    workspace: Slot | None
    activation: int = 0  # linear.activations' kernel code of act (0: none)
    slot_preact: Slot | None = None  # where Z = act's argument goes (c's layout); None: not stored


def activation_args(code: int, preact: Slot | None, stand_in: Slot) -> tuple:
    """The epilogue's last arguments (kernels/epilogue.cuh): the activation's code, where Z goes (an unused
    stand-in of C's type when it is not stored) and whether it is stored."""
    return np.int32(code), stand_in if preact is None else preact, np.int32(preact is not None)


def sum_splits_launch(t: ElementType, m: int, n: int, splits: int, partials: Slot, c: Slot, ldc: int,
                      bias: Slot | None, device: DeviceLimits, activation: int = 0,
                      preact: Slot | None = None) -> Launch:
    """out = act(alpha·(the sum of the splits) + beta·out (+ bias)), with the plan's ALPHA and BETA, and
    its argument written to preact (out's leading dimension) when given."""
    blocks = max(1, min(ceil_div(m * n, REDUCE_THREADS), REDUCE_BLOCKS_PER_SM * device.sms))
    args = (np.int32(m), np.int32(n), np.int32(splits), partials, c, np.int64(ldc),
            ALPHA, BETA, c if bias is None else bias, np.int32(bias is not None),
            *activation_args(activation, preact, c))
    return Launch("reduce.cu", sum_splits_name(t), (blocks, 1, 1), (REDUCE_THREADS, 1, 1), args)


@dataclass(frozen=True)
class BatchLaunch:
    """One launch's share of a stack: `count` matrices, each operand's next one `strides` elements
    further (0 for a broadcast operand); `views`: where each array's share is, None for the whole
    array as it is (a launch that takes the whole stack, or a single matrix)."""
    views: tuple[View | None, ...]
    count: int
    strides: tuple[int, ...]


def batch_launches(arrays: list[Any], max_count: int) -> list[BatchLaunch]:
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
    whole = (None,) * len(arrays)
    if not merged:  # one matrix
        return [BatchLaunch(whole, 1, (0,) * len(arrays))]
    count = merged[-1][0]
    element_strides = tuple(stride // x.itemsize for stride, x in zip(merged[-1][1], arrays))
    if len(merged) == 1 and count <= max_count:  # one launch: each array from its first matrix, as it is
        return [BatchLaunch(whole, count, element_strides)]
    # Each array as [merged batch dims..., rows, cols]; its first element is that of matrix 0.
    shapes = [tuple(size for size, _ in merged) + x.shape[-2:] for x in arrays]
    strides = [tuple(s[j] for _, s in merged) + x.strides[-2:] for j, x in enumerate(arrays)]
    launches = []
    for index in itertools.product(*(range(size) for size, _ in merged[:-1])):
        for first in range(0, count, max_count):
            part = (first, first + max_count)
            views = tuple(View(shape, stride, index, part) for shape, stride in zip(shapes, strides))
            launches.append(BatchLaunch(views, min(max_count, count - first), element_strides))
    return launches


def _split_target(call: GemmCall) -> tuple[str, Slot, int, tuple]:
    """(C type of the instantiation, what the GEMM writes, its leading dimension, the GEMM's epilogue
    arguments): c itself, or for split-K the float32 workspace (the reduction applies the epilogue)."""
    t = call.t
    if call.splits == 1:
        bias = call.slot_c if call.slot_bias is None else call.slot_bias  # c: a stand-in for a missing bias
        return t.cpp, call.slot_c, call.ldc, (ALPHA, BETA, bias, np.int32(call.slot_bias is not None))
    return t.acc_cpp, call.workspace, call.n, (t.acc(1), t.acc(0), call.slot_c, np.int32(0))


def _with_reduction(call: GemmCall, launches: list[Launch]) -> list[Launch]:
    if call.splits == 1:
        return launches
    return launches + [sum_splits_launch(call.t, call.m, call.n, call.splits, call.workspace, call.slot_c,
                                         call.ldc, call.slot_bias, call.device, call.activation, call.slot_preact)]


def strided_batched(call: GemmCall) -> list[Launch]:
    """The launches of gemm.cu and tc_gemm.cu: grid (M tiles, N tiles, batch · splits), a stack cut
    where its batch dimensions do not merge or grid z ends, then the split-K reduction (which applies the
    activation). Z (preact) is cut into launches as C is (same strides); a split-K workspace launch
    stores none."""
    config, m, n, splits = call.config, call.m, call.n, call.splits
    grid_xy = (ceil_div(m, config.bm), ceil_div(n, config.bn))
    if grid_xy[1] > call.device.max_grid[1]:
        raise ValueError(f"N = {n} needs {grid_xy[1]} column tiles, more than one launch allows "
                         f"({call.device.max_grid[1]})")
    c_cpp, target, target_ld, epilogue = _split_target(call)
    split_stride = 0 if splits == 1 else m * n
    name = config.template_name(call.t, c_cpp, call.a.trans, call.b.trans, call.vector)
    shared = config.shared_bytes(call.dtype)
    operands, slots = [call.a.array, call.b.array], [call.slot_a, call.slot_b]
    if splits == 1:
        operands.append(call.c)
        slots.append(call.slot_c)
        if call.slot_preact is not None:
            operands.append(call.c)  # Z has c's shape and strides (gemm_plan checks it)
            slots.append(call.slot_preact)
    launches = []
    for part in batch_launches(operands, call.device.max_grid[2] // splits):
        part_a, part_b, *part_c = (slot.viewed(view) for slot, view in zip(slots, part.views))
        stride_a, stride_b, *stride_c = part.strides
        epilogue_activation = (activation_args(call.activation, part_c[1] if call.slot_preact is not None else None,
                                               part_c[0])
                               if splits == 1 else activation_args(0, None, target))
        launches.append(Launch(
            config.source, name, grid_xy + (part.count * splits,), (config.threads, 1, 1),
            (np.int32(m), np.int32(n), np.int32(call.k), np.int32(call.k_per_split), np.int32(splits),
             part_a, np.int64(call.a.ld), np.int64(stride_a), part_b, np.int64(call.b.ld), np.int64(stride_b),
             part_c[0] if part_c else target, np.int64(target_ld), np.int64(stride_c[0] if stride_c else 0),
             np.int64(split_stride)) + epilogue + epilogue_activation,
            shared, config.arch_flags))
    return _with_reduction(call, launches)


def _map_view(operand: Operand, batch_stride: int, count: int) -> tuple[View, bool]:
    """(the (count, rows, columns) view of an operand's stored matrices, from the first of a launch's
    share, that a tensor map takes; whether the stack is batched): a broadcast operand (batch stride 0, or
    one matrix) as one matrix with the positive batch stride of a whole matrix (a map has no stride 0 and
    reads batch 0 only); a single row with a row stride rounded up to 16 bytes (a map needs one; only row
    0 is read)."""
    rows, cols = operand.array.shape[-2:]
    itemsize = operand.array.itemsize
    row_bytes = operand.ld * itemsize if rows > 1 else round_up(max(operand.ld, 1) * itemsize, TMA_ROW_BYTES)
    batched = count > 1 and batch_stride != 0
    batch_bytes = batch_stride * itemsize if batched else rows * row_bytes
    return View((count if batched else 1, rows, cols), (batch_bytes, row_bytes, itemsize)), batched


def persistent_tma(call: GemmCall) -> list[Launch]:
    """The launches of wgmma_gemm.cu: per launch of the stack (batch dimensions that do not merge are
    launches of their own), a persistent grid of min(tiles of work, SMs) blocks, A and B as tensor maps
    with the family's boxes (of each call's arrays: TensorMapArgs of slots), C by pointer, leading
    dimension and batch stride; then the split-K reduction (split-K takes one matrix: the plan splits
    only those, which applies the activation). Z (preact) goes by pointer with C's strides."""
    config, m, n, splits = call.config, call.m, call.n, call.splits
    c_cpp, target, target_ld, epilogue = _split_target(call)
    name = config.template_name(call.t, c_cpp, call.a.trans, call.b.trans, call.vector)
    stores_preact = splits == 1 and call.slot_preact is not None
    launches = []
    arrays = [call.a.array, call.b.array, call.c] + ([call.c] if stores_preact else [])  # Z: c's strides
    for part in batch_launches(arrays, MAX_UNITS):
        units = config.tiles(m, n) * part.count * splits
        if units >= MAX_UNITS:
            raise ValueError(f"{units} tiles of work (M {m}, N {n}, batch {part.count}, splits {splits}) exceed "
                             f"{config.name}'s 2**31")
        maps = []
        for which, operand, slot, view, stride in (("a", call.a, call.slot_a, part.views[0], part.strides[0]),
                                                   ("b", call.b, call.slot_b, part.views[1], part.strides[1])):
            map_view, batched = _map_view(operand, stride, part.count)
            box = config.box(which, operand.trans, call.t.itemsize)
            maps += [TensorMapArg(slot.viewed(view, map_view), box, config.swizzle), np.int32(batched)]
        c_arg, batch_stride_c = (call.slot_c.viewed(part.views[2]), part.strides[2]) if splits == 1 else (target, 0)
        preact = call.slot_preact.viewed(part.views[3]) if stores_preact else None
        activation = activation_args(call.activation, preact, c_arg) if splits == 1 else \
            activation_args(0, None, target)
        launches.append(Launch(
            config.source, name, (max(1, min(units, call.device.sms)), 1, 1), (config.threads, 1, 1),
            (np.int32(m), np.int32(n), np.int32(call.k), np.int32(call.k_per_split), np.int32(splits),
             np.int32(part.count), *maps, c_arg, np.int64(target_ld), np.int64(batch_stride_c), np.int64(m * n))
            + epilogue + activation, config.shared_bytes(call.dtype), config.arch_flags))
    return _with_reduction(call, launches)
