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
   for every other call, float64 and older cards included. Where the preferred family needs aligned
   operands and an operand is not (a vocabulary of 50257 in bfloat16, attention over 77 tokens), that
   operand is first copied into a buffer with aligned rows, when the cost model says the copies and that
   family beat the next one on the operands as they are (the user's arrays are only read; a broadcast
   matrix is copied once).
3. Launches: the chosen configuration builds them (GemmConfig.launches) from a family-neutral
   launch.GemmCall: template instantiation, grid, block, shared memory, arguments, compiler flags, and
   the split-K reduction.
Vector loads: only when both operands' pointers, leading dimensions and batch strides are 16-byte
aligned. Tuning() overrides the configuration, split-K and the vector path (for tests and tile sweeps).

A plan is made once for many calls: gemm_plan and colsum_plan return a Plan, the launches (launch.py)
with Slots where a call's arrays, alpha and beta go (tensor maps of Slots for the Hopper tiles) and
Buffers (aligned copies, split-K workspaces) made anew for each call; it depends on the arrays only
through layout_key (shapes, strides, dtypes, addresses modulo 16 bytes), so KernelBackend caches it
under that key with the tuning, TF32 setting and device.
plan_gemm, plan_colsum and plan_activation_grad are the plan filled in for one call (Plan.bind).

Activations (linear.activations, kernels/epilogue.cuh) travel as a runtime argument of the same
instantiations: the activation's code is a constant of the plan (a part of its key), the array Z is
written to (preact) one more slot, with C's layout. Every family's epilogue applies them and stores Z,
so they do not change the choice.

Stacks of matrices (numpy.matmul's batch) are one strided-batched launch (gemm.cu, tc_gemm.cu: grid z =
batch · splits; wgmma_gemm.cu: a persistent grid over the stack's tiles), each operand with its own
batch stride, 0 for a broadcast one. Batch dimensions whose strides merge into one (every contiguous
stack, a broadcast matrix) become that one stride; outer dimensions that do not merge (two operands
broadcast along different dimensions) get one launch each, and a batch beyond gridDim.z's limit is cut
into several launches.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..activations import activation_code
from ..dtypes import ElementType, element_type
from .cost import aligned_copies_pay, choose, estimate, split_k
from .device import H100, DeviceLimits
from .launch import REDUCE_THREADS, GemmCall, Launch, Operand, Slot, colsum_partial_name, sum_splits_launch
from .tensor_map import address
from .tiles import CONFIGS_BY_NAME, FAMILIES, MAX_SIZE, GemmConfig, ceil_div, heuristic_configs, round_up

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
    dimension stays broadcast: only the matrices stored are copied. The buffer's first element is
    VECTOR_BYTES-aligned whatever the allocator returns (a cached plan counts on every call's copy
    being aligned)."""
    stored, cols = _stored(x), x.shape[-1]
    lanes = VECTOR_BYTES // x.itemsize
    ld = round_up(max(cols, 1), lanes)
    shape = stored.shape[:-1] + (ld,)
    flat = xp.empty(math.prod(shape) + lanes, x.dtype)
    first = -address(flat) % VECTOR_BYTES // x.itemsize
    buffer = flat[first:first + math.prod(shape)].reshape(shape)
    buffer[..., :cols] = stored
    return Operand(xp.broadcast_to(buffer[..., :cols], x.shape), ld, trans, copied=True)


def vector_aligned(operand: Operand) -> bool:
    """Every VECTOR_BYTES chunk the kernel reads at a multiple of the vector width is aligned, in
    every matrix of the stack."""
    x = operand.array
    return address(x) % VECTOR_BYTES == 0 and (operand.rows <= 1 or operand.ld * x.itemsize % VECTOR_BYTES == 0) \
        and all(stride % VECTOR_BYTES == 0 for n, stride in zip(x.shape[:-2], x.strides[:-2]) if n > 1)


# ----------------------------------------------------------------------------------------------------
# Plans: the launches with each call's arrays left as slots
# ----------------------------------------------------------------------------------------------------


_FIRST_ARRAY = 2  # a plan's values: alpha, beta (launch.ALPHA, launch.BETA), the call's arrays, its buffers


@dataclass(frozen=True)
class AlignedCopy:
    """Value `source` (its transpose when `trans`) copied into aligned rows, as aligned_copy does."""
    source: int
    trans: bool

    def make(self, xp: ModuleType, values: list[Any]) -> Any:
        x = values[self.source]
        return aligned_copy(xp, xp.swapaxes(x, -1, -2) if self.trans else x, self.trans).array


@dataclass(frozen=True)
class Contiguous:
    """Value `source` C-contiguous (a copy unless it is)."""
    source: int

    def make(self, xp: ModuleType, values: list[Any]) -> Any:
        return xp.ascontiguousarray(values[self.source])


@dataclass(frozen=True)
class Workspace:
    """A new array (split-K's partial products, colsum's partial sums)."""
    shape: tuple[int, ...]
    dtype: Any

    def make(self, xp: ModuleType, values: list[Any]) -> Any:
        return xp.empty(self.shape, self.dtype)


Buffer = AlignedCopy | Contiguous | Workspace


@dataclass(frozen=True)
class Plan:
    """A call's launches with its arrays left out: what plan_gemm or plan_colsum decides from the
    arrays' layout_key alone, so that every call with the same key, the same settings and device can
    reuse it (KernelBackend's plan cache). A call's values: alpha and beta as `scalar` (ALPHA, BETA),
    its arrays, then `buffers`, made anew for each call (a workspace is never shared by two calls)."""
    scalar: type
    buffers: tuple[Buffer, ...]
    launches: tuple[Launch, ...]

    def values(self, xp: ModuleType, arrays: tuple, alpha: float, beta: float,
               made: dict[int, Any] | None = None) -> list[Any]:
        """The values a call fills the launches with; made: buffers already made for this call (by
        number), the aligned copies the planner made while it planned."""
        values = [self.scalar(alpha), self.scalar(beta), *arrays]
        for i, buffer in enumerate(self.buffers):
            values.append(made[i] if made and i in made else buffer.make(xp, values))
        return values

    def bind(self, xp: ModuleType, arrays: tuple, alpha: float, beta: float,
             made: dict[int, Any] | None = None) -> list[Launch]:
        """The launches of one call, their slots filled."""
        values = self.values(xp, arrays, alpha, beta, made)
        return [dataclasses.replace(launch, args=launch.arguments(xp, values)) for launch in self.launches]


class _Slots:
    """Hands out the slots of a plan being made: the call's arrays by position, buffers as added."""

    def __init__(self, arrays: int):
        self.arrays = arrays
        self.buffers: list[Buffer] = []
        self.made: dict[int, Any] = {}

    def array(self, position: int) -> Slot:
        return Slot(_FIRST_ARRAY + position)

    def buffer(self, buffer: Buffer, made: Any = None) -> Slot:
        if made is not None:
            self.made[len(self.buffers)] = made
        self.buffers.append(buffer)
        return Slot(_FIRST_ARRAY + self.arrays + len(self.buffers) - 1)


def layout_key(arrays: tuple) -> tuple:
    """Everything a plan reads of the arrays it is made for: each one's shape, strides, dtype and
    address modulo VECTOR_BYTES (the vector path and the aligned copies depend on it); None for one
    left out. Calls whose arrays have the same key (and the same tuning, TF32 setting and device) get
    the same Plan."""
    return tuple([None if x is None else (x.shape, x.strides, x.dtype, address(x) % VECTOR_BYTES) for x in arrays])


def _check_size(**sizes: int) -> None:
    for what, size in sizes.items():
        if size > MAX_SIZE:
            raise ValueError(f"{what} = {size} exceeds the kernels' limit of {MAX_SIZE} (2**31 - 1025)")


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


GEMM_ARRAYS = ("a", "b", "c", "bias", "preact")  # the arrays of a gemm plan's calls, in this order


def plan_gemm(xp: ModuleType, a: Any, b: Any, c: Any, *, alpha: float, beta: float, bias: Any = None,
              tuning: Tuning = Tuning(), arch: int | None = None, tf32: bool = False,
              device: DeviceLimits = H100, activation: str | None = None, preact: Any = None) -> list[Launch]:
    """The launches for c[...] = act(alpha·a·b + beta·c (+ bias)), its argument written to preact when
    given, as in base.Backend.gemm: gemm_plan's Plan, filled in with this call's arrays."""
    plan, made = gemm_plan(xp, a, b, c, bias=bias, tuning=tuning, arch=arch, tf32=tf32, device=device,
                           activation=activation, preact=preact)
    return plan.bind(xp, (a, b, c, bias, preact), alpha, beta, made)


def gemm_plan(xp: ModuleType, a: Any, b: Any, c: Any, *, bias: Any = None, tuning: Tuning = Tuning(),
              arch: int | None = None, tf32: bool = False, device: DeviceLimits = H100,
              activation: str | None = None, preact: Any = None) -> tuple[Plan, dict[int, Any]]:
    """The Plan of c[...] = act(alpha·a·b + beta·c (+ bias)), with that argument (Z) written to preact
    (c's shape, strides and dtype) when given, as in base.Backend.gemm, for every call whose
    arrays (GEMM_ARRAYS) have the layout_key of these; and the buffers made on the way for this call (the
    aligned copies of its operands, which Plan.values takes as `made`). a (M x K) and b (K x N) are
    views, a transposed operand a transposed view (its flag is derived here, by as_operand).

    a, b and c may carry the same leading batch dimensions (a stack of matrices); a's and b's may be
    broadcast views (stride 0) of them. 2-D arrays are one matrix. arch is the device's compute
    capability as an int (90 for 9.0), None for no tensor cores; tf32 allows float32 products to run
    on them with TF32 operands; device: the limits the cost model plans for. The activation is a
    runtime argument of the same instantiations (kernels/epilogue.cuh); with split-K the reduction
    applies it.

    Three steps: the operands (strides, aligned copies), the choice (family, tile, split-K), the launches.
    """
    k = a.shape[-1]
    product = Product(*c.shape[-2:], k, math.prod(c.shape[:-2]), np.dtype(c.dtype).name, element_type(c.dtype))
    _check_size(M=product.m, N=product.n, K=k)
    named = CONFIGS_BY_NAME[tuning.config] if tuning.config else None
    if named is not None and product.dtype not in named.dtypes:
        raise ValueError(f"tile config {named.name!r} is instantiated for {', '.join(named.dtypes)} only, "
                         f"got dtype {product.dtype}")
    code = activation_code(activation)
    if preact is not None and (preact.shape != c.shape or preact.strides != c.strides or preact.dtype != c.dtype):
        raise ValueError(f"preact must have c's shape, strides and dtype {c.shape}, {c.strides}, {c.dtype}; "
                         f"got {preact.shape}, {preact.strides}, {preact.dtype}")
    if product.m == 0 or product.n == 0 or product.batch == 0:
        return Plan(product.t.acc, (), ()), {}
    ldc = _output_ld(c)
    op_a, op_b = as_operand(xp, a), as_operand(xp, b)
    layout = (op_a.trans, op_b.trans)  # the product as the kernels read it (aligned copies keep it)
    families = [(named,)] if named else [heuristic_configs(configs) for configs in reversed(FAMILIES)]
    families = _competing([configs for configs in families if configs[0].runs(product.dtype, arch, tf32, k, layout)])
    op_a, op_b, aligned = _operands(xp, op_a, op_b, product, families, tuning, device)
    choice = _choose(product, families, aligned, named, tuning, device,
                     f"compute capability {arch}, TF32 {'on' if tf32 else 'off'}, K {k}, "
                     f"product {'NT'[op_a.trans]}{'NT'[op_b.trans]}")
    slots = _Slots(len(GEMM_ARRAYS))
    slot_a, slot_b = (slots.buffer(AlignedCopy(slots.array(i).index, op.trans), made=op.array) if op.copied
                      else slots.array(i) for i, op in enumerate((op_a, op_b)))
    slot_bias = None
    if bias is not None:  # the kernels read it with unit stride
        slot_bias = slots.array(3)
        if bias.size > 1 and bias.strides[0] != bias.itemsize:
            slot_bias = slots.buffer(Contiguous(slot_bias.index))
    workspace = slots.buffer(Workspace((choice.splits, product.m, product.n), product.t.acc)) \
        if choice.splits > 1 else None
    launches = choice.config.launches(GemmCall(
        choice.config, product.dtype, product.t, product.m, product.n, k, product.batch, op_a, op_b, c, ldc,
        choice.splits, choice.k_per_split, choice.vector, device, slot_a, slot_b, slots.array(2), slot_bias,
        workspace, code, None if preact is None else slots.array(4)))
    return Plan(product.t.acc, tuple(slots.buffers), tuple(launches)), slots.made


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


COLSUM_ARRAYS = ("a", "out")  # the arrays of a colsum plan's calls, in this order
ACTIVATION_GRAD_ARRAYS = ("dy", "z", "dz", "db")  # the arrays of an activation_grad plan's calls


def plan_colsum(xp: ModuleType, a: Any, out: Any, *, beta: float, device: DeviceLimits = H100) -> list[Launch]:
    """The launches for out[...] = a.sum(axis=0) + beta·out in a fixed order, as in base.Backend.colsum:
    colsum_plan's Plan, filled in with this call's arrays."""
    return colsum_plan(a, out, device=device).bind(xp, (a, out), 1.0, beta)


def colsum_plan(a: Any, out: Any, *, device: DeviceLimits = H100) -> Plan:
    """The Plan of out[...] = a.sum(axis=0) + beta·out for every call whose arrays (COLSUM_ARRAYS) have
    the layout_key of these (its alpha is 1)."""
    return _column_plan(a, None, None, out, len(COLSUM_ARRAYS), (0, None, None, 1), None, device)


def plan_activation_grad(xp: ModuleType, dy: Any, z: Any, dz: Any, db: Any, *, activation: str, beta: float,
                         device: DeviceLimits = H100) -> list[Launch]:
    """The launches for dz[...] = dy ⊙ act'(z) and db[...] = Σ_rows dz + beta·db, as in
    base.Backend.activation_grad: activation_grad_plan's Plan, filled in with this call's arrays."""
    return activation_grad_plan(dy, z, dz, db, activation=activation, device=device).bind(
        xp, (dy, z, dz, db), 1.0, beta)


def activation_grad_plan(dy: Any, z: Any, dz: Any, db: Any, *, activation: str,
                         device: DeviceLimits = H100) -> Plan:
    """The Plan of dz[...] = dy ⊙ act'(z) and db[...] = Σ_rows dz + beta·db for every call whose arrays
    (ACTIVATION_GRAD_ARRAYS) have the layout_key of these: one pass over dy and z (linear_colsum_partial
    writes dz and per-chunk column sums), then the fixed-order sum of the chunks (none when db is None)."""
    return _column_plan(dy, z, dz, db, len(ACTIVATION_GRAD_ARRAYS), (0, 1, 2, 3), activation, device)


def _rows(slots: _Slots, x: Any, position: int) -> tuple[Slot, int]:
    """x's slot and leading dimension as the reduce.cu kernels read it (rows); any other layout is copied."""
    slot, ld = slots.array(position), _row_major_ld(x.shape, x.strides, x.itemsize)
    if ld is None:
        slot, ld = slots.buffer(Contiguous(slot.index)), x.shape[1]
    return slot, ld


def _column_plan(a: Any, z: Any, dz: Any, out: Any, arrays: int, positions: tuple, activation: str | None,
                 device: DeviceLimits) -> Plan:
    """The two passes of a column sum of a (or of a ⊙ act'(z), written to dz, with an activation) into
    out (none when out is None); positions: the call's array numbers of a, z, dz and out."""
    t = element_type(a.dtype)
    rows, cols = a.shape
    _check_size(rows=rows, cols=cols)
    if cols == 0 or out is None and rows == 0:
        return Plan(t.acc, (), ())
    slots = _Slots(arrays)
    source, lda = _rows(slots, a, positions[0])
    z_slot, ldz = _rows(slots, z, positions[1]) if z is not None else (source, lda)  # a: an unused stand-in
    dz_slot = source if dz is None else slots.array(positions[2])
    rows_per_chunk, chunks = colsum_chunks(rows, cols, device)
    partials = slots.buffer(Workspace((chunks, cols), t.acc))
    first = Launch("reduce.cu", colsum_partial_name(t), (ceil_div(cols, REDUCE_THREADS), chunks, 1),
                   (REDUCE_THREADS, 1, 1),
                   (np.int32(rows), np.int32(cols), np.int32(rows_per_chunk), source, np.int64(lda), partials,
                    np.int32(activation_code(activation)), z_slot, np.int64(ldz), dz_slot))
    if out is None:
        return Plan(t.acc, tuple(slots.buffers), (first,))
    last = sum_splits_launch(t, 1, cols, chunks, partials, slots.array(positions[3]), cols, None, device)
    return Plan(t.acc, tuple(slots.buffers), (first, last))
