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

The cost model (choose): for each configuration of the kernel family and each split-K count it
estimates the time from the device's limits (DeviceLimits: SMs, registers, shared memory, threads per
SM; the runtime's device_limits(), an H100 for the emulator) and picks the fastest:
1. Blocks per SM: the fewest that registers (REGISTERS, ptxas's counts on sm_90, allocated per warp
   in units of 256), shared memory (plus 1 KiB a block) and threads allow.
2. The busiest SM runs ⌈blocks / SMs⌉ blocks (waves and uneven loads alike), up to blocks-per-SM at a
   time. Its FMA rate is the peak times the lesser of the tile's efficiency (SIMT: the FFMA share of
   its instruction stream; tensor cores: its FLOPs per staged byte next to the 128 x 128 tile's) and
   the warps it holds over WARPS_TO_HIDE_LATENCY (fewer warps hide proportionally less latency).
3. Split-K (a single matrix only: a stack fills the card with its batch) adds the workspace's
   traffic at the device's bandwidth and a reduction launch; slices of at least MIN_K_PER_SPLIT.
Candidates (TileConfig.candidate) are never chosen: they are there for bench/sweep.py until a GPU
measurement justifies choosing them. The model's constants are estimates, to be checked by the sweep.
Vector loads: only when both operands' pointers, leading dimensions and batch strides are 16-byte
aligned. Tuning() overrides the configuration, split-K and the vector path (for tests and tile sweeps).

Stacks of matrices (numpy.matmul's batch) are one strided-batched launch: grid z = batch · splits, each
operand with its own batch stride, 0 for a broadcast one. Batch dimensions whose strides merge into one
(every contiguous stack, a broadcast matrix) become that one stride; outer dimensions that do not merge
(two operands broadcast along different dimensions) get one launch each, and a batch beyond gridDim.z's
limit is cut into several launches.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------------------------------


ALL_DTYPES = ("float32", "float64", "float16", "bfloat16")
TENSOR_CORE_DTYPES = ("float16", "bfloat16", "float32")  # float32 as TF32, only when allowed
TENSOR_CORE_MIN_ARCH = 80  # mma.sync for bf16 and TF32, ldmatrix and cp.async: sm_80 and later
TC_STAGE_BYTES_PER_ROW = 64  # the k depth of a tensor-core stage: 32 halves or 16 TF32 values per row


@dataclass(frozen=True)
class TileConfig:
    """One tile shape of linear_gemm (see the pictures at the top of kernels/gemm.cu)."""
    name: str
    bm: int  # C tile rows per block
    bn: int  # C tile columns per block
    bk: int  # K depth of one shared-memory stage (a multiple of 8: one 16-byte load of halves)
    wm: int  # C rows of one group of threads' sub-tile: bm (one group) or a warp tile's rows
    wn: int  # C columns of that sub-tile: bn (one group) or a warp tile's columns
    tm: int  # C rows per thread (a multiple of 4)
    tn: int  # C columns per thread (a multiple of 4)
    dtypes: tuple[str, ...] = ALL_DTYPES  # the element types it is instantiated for
    candidate: bool = False  # only Tuning(config=...) launches it; the cost model never chooses it

    def __post_init__(self):
        group = (self.wm // self.tm) * (self.wn // self.tn)
        if self.bm % self.wm or self.bn % self.wn or self.wm % self.tm or self.wn % self.tn or \
                self.tm % 4 or self.tn % 4 or self.bk % 8:
            raise ValueError(f"tile config {self.name!r} does not tile: {self}")
        if group != self.threads and group != WARP_SIZE:
            raise ValueError(f"tile config {self.name!r}: a group of {group} threads is neither the block "
                             f"({self.threads}) nor a warp ({WARP_SIZE})")

    @property
    def threads(self) -> int:
        return (self.bm // self.tm) * (self.bn // self.tn)

    def tiles(self, m: int, n: int) -> int:
        return _ceil_div(m, self.bm) * _ceil_div(n, self.bn)

    def shared_bytes(self, acc_itemsize: int) -> int:
        # Two stages of As [BK][BM + pad] and Bs [BK][BN + pad] accumulators (gemm.cu, SMEM_PAD).
        return 2 * self.bk * (self.bm + SHARED_PAD + self.bn + SHARED_PAD) * acc_itemsize


SHARED_PAD = 4  # kernels/gemm.cu: SMEM_PAD
WARP_SIZE = 32

# The cost model's configurations, largest first (ties go to the first), then the
# candidates that bench/sweep.py measures against them, each one idea away from its parent. They are
# float32 only (the dtype the sweep measures); none is chosen until a GPU measurement says so.
TILE_CONFIGS = (
    TileConfig("large", bm=128, bn=128, bk=8, wm=128, wn=128, tm=8, tn=8),  # 256 threads, 8x8 outputs each
    TileConfig("medium", bm=64, bn=64, bk=8, wm=64, wn=64, tm=4, tn=4),  # 256 threads, 4x4 outputs each
    TileConfig("small", bm=32, bn=32, bk=8, wm=32, wn=32, tm=4, tn=4),  # 64 threads, 4x4 outputs each
    # large, warp-tiled: 8 warps of 32x64, each 4x8 threads: a third fewer shared-memory wavefronts.
    TileConfig("warp", bm=128, bn=128, bk=8, wm=32, wn=64, tm=8, tn=8, dtypes=("float32",), candidate=True),
    # warp with BK = 16: half the barriers and global-load rounds per FLOP, twice the shared memory.
    TileConfig("warp_deep", bm=128, bn=128, bk=16, wm=32, wn=64, tm=8, tn=8, dtypes=("float32",),
               candidate=True),
    # warp with a 128x256 tile, 8 warps of 64x64, 16x8 per thread: 1.33x the FLOPs per loaded byte,
    # one block of 8 warps per SM (about 200 registers a thread).
    TileConfig("warp_wide", bm=128, bn=256, bk=8, wm=64, wn=64, tm=16, tn=8, dtypes=("float32",),
               candidate=True),
    # medium, warp-tiled: 8 warps of 16x32, each 4x8 threads, for the shapes where medium runs.
    TileConfig("warp_medium", bm=64, bn=64, bk=8, wm=16, wn=32, tm=4, tn=4, dtypes=("float32",),
               candidate=True),
)
HEURISTIC_CONFIGS = tuple(config for config in TILE_CONFIGS if not config.candidate)


@dataclass(frozen=True)
class TensorCoreConfig:
    """One tile shape of linear_tc_gemm (see the top of kernels/tc_gemm.cu)."""
    name: str
    bm: int  # C tile rows per block
    bn: int  # C tile columns per block
    wm: int  # C rows of one warp's sub-tile (a multiple of 16)
    wn: int  # C columns of one warp's sub-tile (a multiple of 16)
    stages: int  # depth of the cp.async pipeline
    candidate: bool = False  # only Tuning(config=...) launches it
    dtypes: tuple[str, ...] = TENSOR_CORE_DTYPES

    def __post_init__(self):
        if self.bm % self.wm or self.bn % self.wn or self.wm % 16 or self.wn % 16 or self.stages < 2:
            raise ValueError(f"tensor-core config {self.name!r} does not tile: {self}")

    @property
    def threads(self) -> int:
        return (self.bm // self.wm) * (self.bn // self.wn) * WARP_SIZE

    def bk(self, itemsize: int) -> int:
        return TC_STAGE_BYTES_PER_ROW // itemsize

    def tiles(self, m: int, n: int) -> int:
        return _ceil_div(m, self.bm) * _ceil_div(n, self.bn)

    def shared_bytes(self) -> int:
        # STAGES stages of the A and B tiles, elements as stored (tc_gemm.cu).
        return self.stages * (self.bm + self.bn) * TC_STAGE_BYTES_PER_ROW


# The cost model weighs these as it does TILE_CONFIGS (ties go to the first).
TC_CONFIGS = (
    # 8 warps of 64 x 32; 4 stages of 16 KiB: two blocks per SM for the half types (<= 128 registers).
    TensorCoreConfig("tc_large", bm=128, bn=128, wm=64, wn=32, stages=4),
    # 4 warps of 32 x 32; 3 stages of 8 KiB, for the shapes with few tiles.
    TensorCoreConfig("tc_small", bm=64, bn=64, wm=32, wn=32, stages=3),
)
TC_HEURISTIC_CONFIGS = tuple(config for config in TC_CONFIGS if not config.candidate)
CONFIGS_BY_NAME = {config.name: config for config in TILE_CONFIGS + TC_CONFIGS}

NUM_SMS = 132  # an H100 SXM: the reductions' grid needs only the order of magnitude of the card
MIN_K_PER_SPLIT = 512  # shorter K slices would spend more on the workspace than they gain
MAX_SPLITS = 32
VECTOR_BYTES = 16
REDUCE_THREADS = 256  # block size of the reduce.cu kernels
REDUCE_MAX_BLOCKS = 8 * NUM_SMS  # linear_sum_splits loops over the rest
COLSUM_MIN_ROWS_PER_CHUNK = 64
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z
# Sizes are int in the kernels, and a tile's start plus its extent (m0 + BM, k0 + BK, ...) must not wrap:
# keep every size one largest tile (and one K step) below 2**31.
MAX_SIZE = 2**31 - 1 - 1024


@dataclass(frozen=True)
class ElementType:
    cpp: str  # the C++ type in the kernels
    acc: type  # numpy type of the accumulator: alpha, beta and workspaces have it
    itemsize: int  # bytes per element

    @property
    def acc_cpp(self) -> str:
        return ELEMENT_TYPES[np.dtype(self.acc).name].cpp


ELEMENT_TYPES = {
    "float32": ElementType("float", np.float32, 4),
    "float64": ElementType("double", np.float64, 8),
    "float16": ElementType("__half", np.float32, 2),
    "bfloat16": ElementType("__nv_bfloat16", np.float32, 2),  # ml_dtypes.bfloat16
}


def element_type(dtype: Any) -> ElementType:
    try:
        return ELEMENT_TYPES[np.dtype(dtype).name]
    except KeyError:
        raise TypeError(f"the kernels support {sorted(ELEMENT_TYPES)}, got dtype {np.dtype(dtype).name}") from None


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


@dataclass(frozen=True)
class DeviceLimits:
    """What the cost model needs of a device (CUDA's device attributes)."""
    sms: int
    registers_per_sm: int = 65536
    shared_per_sm: int = 228 * 1024  # bytes
    threads_per_sm: int = 2048
    blocks_per_sm: int = 32
    clock_hz: float = 1.98e9  # boost clock
    bandwidth: float = 3.35e12  # DRAM bytes per second


# H100 SXM (and H200, the same SMs; bench/NOTES.md has the sources): the emulator's device, and the
# plan's when no runtime names one.
H100 = DeviceLimits(sms=132)

# Registers per thread, ptxas on sm_90 (kernels/REGISTERS.md, the most over the products and C types;
# tests/test_compile.py holds this table to it): (config, dtype, 16-byte loads) -> registers.
REGISTERS = {
    ('large', 'float32', False): 163,
    ('large', 'float32', True): 128,
    ('medium', 'float32', False): 80,
    ('medium', 'float32', True): 91,
    ('small', 'float32', False): 93,
    ('small', 'float32', True): 89,
    ('warp', 'float32', False): 163,
    ('warp', 'float32', True): 128,
    ('warp_deep', 'float32', False): 168,
    ('warp_deep', 'float32', True): 163,
    ('warp_wide', 'float32', False): 255,
    ('warp_wide', 'float32', True): 255,
    ('warp_medium', 'float32', False): 79,
    ('warp_medium', 'float32', True): 91,
    ('tc_large', 'float32', True): 158,
    ('tc_small', 'float32', True): 118,
    ('large', 'float64', False): 240,
    ('large', 'float64', True): 240,
    ('medium', 'float64', False): 128,
    ('medium', 'float64', True): 116,
    ('small', 'float64', False): 136,
    ('small', 'float64', True): 140,
    ('large', 'float16', False): 165,
    ('large', 'float16', True): 163,
    ('medium', 'float16', False): 81,
    ('medium', 'float16', True): 92,
    ('small', 'float16', False): 93,
    ('small', 'float16', True): 115,
    ('tc_large', 'float16', True): 128,
    ('tc_small', 'float16', True): 96,
    ('large', 'bfloat16', False): 165,
    ('large', 'bfloat16', True): 159,
    ('medium', 'bfloat16', False): 81,
    ('medium', 'bfloat16', True): 92,
    ('small', 'bfloat16', False): 93,
    ('small', 'bfloat16', True): 115,
    ('tc_large', 'bfloat16', True): 128,
    ('tc_small', 'bfloat16', True): 96,
}
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
SHARED_PER_BLOCK_RESERVED = 1024  # bytes the CUDA runtime keeps per resident block (sm_80 and later)
WARPS_TO_HIDE_LATENCY = 16  # warps per SM at which the latency model stops adding speed (estimate)
OVERHEAD_PER_K = 4  # a SIMT thread's address, store and barrier instructions per k (test_sass's loops: 3.7-4.3)
BLOCK_OVERHEAD_K = 32  # a block's prologue and epilogue, in k steps of its tile (estimate)
EXTRA_LAUNCH_S = 3e-6  # one more small launch: a linear_sum_splits, an operand's aligned copy (estimate)
TIE = 0.03  # estimates this close count as equal
# FMA per clock per SM: SIMT FP32 lanes (128; FP64 64), tensor cores dense (H100: 989 TFLOP/s half,
# 494 TF32, over 132 SMs at 1.83 GHz).
FMA_PER_CLOCK = {"gemm.cu": {"float64": 64}, "tc_gemm.cu": {"float32": 1024}}
FMA_PER_CLOCK_DEFAULT = {"gemm.cu": 128, "tc_gemm.cu": 2048}


def blocks_per_sm(config: TileConfig | TensorCoreConfig, dtype: str, vector: bool,
                  device: DeviceLimits = H100) -> int:
    """Resident blocks of one launch per SM: registers, shared memory and threads."""
    tc = isinstance(config, TensorCoreConfig)
    registers = REGISTERS[config.name, dtype, vector or tc]
    warps = _ceil_div(config.threads, WARP_SIZE)
    shared = config.shared_bytes() if tc else config.shared_bytes(np.dtype(element_type(dtype).acc).itemsize)
    return max(1, min(device.registers_per_sm // (warps * _round_up(registers * WARP_SIZE, REGISTER_UNIT)),
                      device.shared_per_sm // (shared + SHARED_PER_BLOCK_RESERVED),
                      device.threads_per_sm // config.threads, device.blocks_per_sm))


def efficiency(config: TileConfig | TensorCoreConfig) -> float:
    """The share of the peak a tile can reach with latency hidden (estimate). SIMT: FFMA over all the
    instructions a thread issues per k (TM·TN FFMA, (TM+TN)/4 LDS.128, OVERHEAD_PER_K others; large
    0.89, test_sass counts 0.886-0.892). Tensor cores: FLOPs per staged byte over the 128 x 128 tile's."""
    if isinstance(config, TensorCoreConfig):
        return min(1.0, config.bm * config.bn / (config.bm + config.bn) / 64)
    ffma = config.tm * config.tn
    return ffma / (ffma + (config.tm + config.tn) / 4 + OVERHEAD_PER_K)


@dataclass(frozen=True)
class Estimate:
    config: TileConfig | TensorCoreConfig
    splits: int
    seconds: float
    warps_per_sm: float  # resident warps on the busiest SMs


def estimate(config: TileConfig | TensorCoreConfig, splits: int, m: int, n: int, k: int, batch: int, dtype: str,
             vector: bool, device: DeviceLimits = H100) -> Estimate:
    """The cost model's time for one launch plan (see the module's docstring)."""
    tc = isinstance(config, TensorCoreConfig)
    source = "tc_gemm.cu" if tc else "gemm.cu"
    bk = config.bk(element_type(dtype).itemsize) if tc else config.bk
    k_per_split, splits = split_k(k, splits, bk)
    blocks = config.tiles(m, n) * batch * splits
    resident = blocks_per_sm(config, dtype, vector, device)
    busiest = _ceil_div(blocks, device.sms)
    warps = min(resident, busiest) * config.threads / WARP_SIZE
    peak = FMA_PER_CLOCK[source].get(dtype, FMA_PER_CLOCK_DEFAULT[source]) * device.clock_hz
    rate = peak * min(efficiency(config), warps / WARPS_TO_HIDE_LATENCY)
    seconds = busiest * config.bm * config.bn * (_round_up(k_per_split, bk) + BLOCK_OVERHEAD_K * bk) / rate
    if splits > 1:  # the workspace written and read, C written, one more launch
        acc = np.dtype(element_type(dtype).acc).itemsize
        seconds += (2 * splits * acc + element_type(dtype).itemsize) * m * n / device.bandwidth + EXTRA_LAUNCH_S
    return Estimate(config, splits, seconds, warps)


def split_counts(k: int, batch: int) -> range:
    """The split-K counts the model weighs: slices of at least MIN_K_PER_SPLIT, single matrices only."""
    return range(1, 1 + max(1, min(MAX_SPLITS, k // MIN_K_PER_SPLIT) if batch == 1 else 1))


@functools.lru_cache(maxsize=4096)
def choose(m: int, n: int, k: int, batch: int = 1, dtype: str = "float32", vector: bool = True,
           configs: tuple = HEURISTIC_CONFIGS, device: DeviceLimits = H100) -> Estimate:
    """The fastest (configuration, split-K) by the cost model. Estimates within TIE of the fastest
    count as ties (the model is not that exact): they go to fewer splits, then to the configuration
    listed first (the larger tile)."""
    estimates = [estimate(config, splits, m, n, k, batch, dtype, vector, device)
                 for config in configs for splits in split_counts(k, batch)]
    fastest = min(e.seconds for e in estimates)
    return min((e for e in estimates if e.seconds <= (1 + TIE) * fastest),
               key=lambda e: (e.splits, configs.index(e.config)))


def split_k(k: int, splits: int, bk: int) -> tuple[int, int]:
    """(k_per_split, splits): slices that are whole BK steps, none of them empty."""
    k_per_split = _round_up(_ceil_div(k, max(splits, 1)), bk) if k > 0 else bk
    return k_per_split, max(1, _ceil_div(k, k_per_split))


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
    that are not whole elements) as a contiguous copy, which keeps a broadcast (stride 0) dimension
    broadcast."""
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
    return Operand(xp.broadcast_to(xp.ascontiguousarray(_stored(x)), x.shape), cols, trans)


def address(x: Any) -> int:
    """The device (CuPy) or host (numpy) address of x's first element."""
    return x.ctypes.data if isinstance(x, np.ndarray) else x.data.ptr


def aligned_copy(xp: ModuleType, operand: Operand) -> Operand:
    """The operand copied into a buffer whose rows start every VECTOR_BYTES (its leading dimension
    rounded up to the vector width); the kernel never reads the padding at the end of each row. A
    broadcast dimension stays broadcast: only the matrices stored are copied."""
    x = operand.array
    stored, cols = _stored(x), x.shape[-1]
    ld = _round_up(max(cols, 1), VECTOR_BYTES // x.itemsize)
    buffer = xp.empty(stored.shape[:-1] + (ld,), x.dtype)
    buffer[..., :cols] = stored
    return Operand(xp.broadcast_to(buffer[..., :cols], x.shape), ld, operand.trans)


def aligned_copy_pays(m: int, n: int, k: int, batch: int, dtype: str, copied: list[Operand],
                      device: DeviceLimits) -> bool:
    """Whether copying `copied` into aligned buffers and running on tensor cores beats the SIMT kernel
    on the operands as they are, by the cost model (each copy: its bytes read and written, a launch)."""
    copies = sum(2 * _stored(x.array).nbytes / device.bandwidth + EXTRA_LAUNCH_S for x in copied)
    simt = choose(m, n, k, batch, dtype, False, HEURISTIC_CONFIGS, device).seconds
    return copies + choose(m, n, k, batch, dtype, True, TC_HEURISTIC_CONFIGS, device).seconds < simt


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


def _cpp_bool(flag: bool) -> str:
    return "true" if flag else "false"


def gemm_name(t: ElementType, c_cpp: str, trans_a: bool, trans_b: bool, config: TileConfig,
              vector: bool) -> str:
    flags = ", ".join(map(_cpp_bool, (trans_a, trans_b)))
    tile = ", ".join(str(v) for v in (config.bm, config.bn, config.bk, config.wm, config.wn, config.tm, config.tn))
    return f"linear_gemm<{t.cpp}, {c_cpp}, {flags}, {tile}, {_cpp_bool(vector)}>"


def tc_gemm_name(t: ElementType, c_cpp: str, trans_a: bool, trans_b: bool, config: TensorCoreConfig) -> str:
    flags = ", ".join(map(_cpp_bool, (trans_a, trans_b)))
    tile = ", ".join(str(v) for v in (config.bm, config.bn, config.bk(t.itemsize), config.wm, config.wn, config.stages))
    return f"linear_tc_gemm<{t.cpp}, {c_cpp}, {flags}, {tile}>"


def sum_splits_name(t: ElementType) -> str:
    return f"linear_sum_splits<{t.cpp}>"


def colsum_partial_name(t: ElementType) -> str:
    return f"linear_colsum_partial<{t.cpp}>"


@dataclass(frozen=True)
class Instantiation:
    source: str  # a file in kernels/
    name: str  # a C++ expression naming the template instantiation
    shared_mem: int  # the dynamic shared memory its launches ask for


def instantiations() -> list[Instantiation]:
    """Every template instantiation a plan can launch."""
    found = []
    for dtype, t in ELEMENT_TYPES.items():
        configs = [config for config in TILE_CONFIGS if dtype in config.dtypes]
        shared = {config: config.shared_bytes(np.dtype(t.acc).itemsize) for config in configs}
        for c_cpp in dict.fromkeys((t.cpp, t.acc_cpp)):  # C itself, or a split-K workspace
            for trans_a, trans_b, config, vector in itertools.product(
                    (False, True), (False, True), configs, (False, True)):
                name = gemm_name(t, c_cpp, trans_a, trans_b, config, vector)
                found.append(Instantiation("gemm.cu", name, shared[config]))
    for dtype in TENSOR_CORE_DTYPES:
        t = ELEMENT_TYPES[dtype]
        for c_cpp in dict.fromkeys((t.cpp, t.acc_cpp)):
            for trans_a, trans_b, config in itertools.product((False, True), (False, True), TC_CONFIGS):
                name = tc_gemm_name(t, c_cpp, trans_a, trans_b, config)
                found.append(Instantiation("tc_gemm.cu", name, config.shared_bytes()))
    for t in ELEMENT_TYPES.values():
        found += [Instantiation("reduce.cu", colsum_partial_name(t), 0),
                  Instantiation("reduce.cu", sum_splits_name(t), 0)]
    return found


def _check_size(**sizes: int) -> None:
    for what, size in sizes.items():
        if size > MAX_SIZE:
            raise ValueError(f"{what} = {size} exceeds the kernels' limit of 2**31 - 1025")


def _sum_splits_launch(t: ElementType, m: int, n: int, splits: int, partials: Any, c: Any, ldc: int,
                       alpha: float, beta: float, bias: Any) -> Launch:
    blocks = max(1, min(_ceil_div(m * n, REDUCE_THREADS), REDUCE_MAX_BLOCKS))
    args = (np.int32(m), np.int32(n), np.int32(splits), partials, c, np.int64(ldc),
            t.acc(alpha), t.acc(beta), c if bias is None else bias, np.int32(bias is not None))
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
              tf32: bool = False, device: DeviceLimits = H100) -> list[Launch]:
    """The launches for c[...] = alpha·op(a)·op(b) + beta·c (+ bias), as in base.Backend.gemm.

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
    if m == 0 or n == 0 or batch == 0:
        return []
    ldc = _output_ld(c)
    op_a, op_b = as_operand(xp, a, trans_a), as_operand(xp, b, trans_b)
    if bias is not None:
        bias = _contiguous_vector(xp, bias)
    aligned = vector_aligned(op_a) and vector_aligned(op_b)
    to_copy = [not vector_aligned(op) for op in (op_a, op_b)]
    if (any(to_copy) and tuning.vector is None and not isinstance(chosen, TileConfig)
            and tensor_cores_take(dtype, arch=arch, tf32=tf32)
            and (chosen is not None or aligned_copy_pays(
                m, n, k, batch, dtype, [op for op, copy in zip((op_a, op_b), to_copy) if copy], device))):
        op_a, op_b = (aligned_copy(xp, op) if copy else op for op, copy in zip((op_a, op_b), to_copy))
        aligned = vector_aligned(op_a) and vector_aligned(op_b)
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
    grid_xy = (_ceil_div(m, config.bm), _ceil_div(n, config.bn))
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
    operands = [op_a.array, op_b.array] + ([c] if splits == 1 else [])
    launches = []
    for part in batch_launches(xp, operands, MAX_GRID_YZ // splits):
        part_a, part_b, part_c = part.arrays if splits == 1 else (*part.arrays, target)
        stride_a, stride_b, stride_c = part.strides if splits == 1 else (*part.strides, 0)
        launches.append(Launch(
            source, name, grid_xy + (part.count * splits,), (config.threads, 1, 1),
            (np.int32(m), np.int32(n), np.int32(k), np.int32(k_per_split), np.int32(splits),
             part_a, np.int64(op_a.ld), np.int64(stride_a), part_b, np.int64(op_b.ld), np.int64(stride_b),
             part_c, np.int64(target_ld), np.int64(stride_c), np.int64(split_stride)) + epilogue,
            shared))
    if splits == 1:
        return launches
    return launches + [_sum_splits_launch(t, m, n, splits, target, c, ldc, alpha, beta, bias)]


def colsum_chunks(rows: int, cols: int) -> tuple[int, int]:
    """(rows_per_chunk, chunks) for the first pass: enough blocks to fill the card, each chunk at
    least COLSUM_MIN_ROWS_PER_CHUNK rows, at least one chunk (an empty one writes zeros)."""
    column_blocks = _ceil_div(cols, REDUCE_THREADS)
    wanted = max(1, min(_ceil_div(4 * NUM_SMS, column_blocks), rows // COLSUM_MIN_ROWS_PER_CHUNK))
    rows_per_chunk = max(1, _ceil_div(rows, wanted))
    return rows_per_chunk, max(1, _ceil_div(rows, rows_per_chunk))


def plan_colsum(xp: ModuleType, a: Any, out: Any, *, beta: float) -> list[Launch]:
    """The launches for out[...] = a.sum(axis=0) + beta·out in a fixed order, as in base.Backend.colsum."""
    t = element_type(out.dtype)
    rows, cols = a.shape
    _check_size(rows=rows, cols=cols)
    if cols == 0:
        return []
    lda = _row_major_ld(a.shape, a.strides, a.itemsize)
    if lda is None:  # the kernel reads rows; any other layout is copied
        a, lda = xp.ascontiguousarray(a), cols
    rows_per_chunk, chunks = colsum_chunks(rows, cols)
    partials = xp.empty((chunks, cols), t.acc)
    first = Launch("reduce.cu", colsum_partial_name(t), (_ceil_div(cols, REDUCE_THREADS), chunks, 1),
                   (REDUCE_THREADS, 1, 1),
                   (np.int32(rows), np.int32(cols), np.int32(rows_per_chunk), a, np.int64(lda), partials))
    return [first, _sum_splits_launch(t, 1, cols, chunks, partials, out, cols, 1.0, beta, None)]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _ceil_div(a, b) * b
