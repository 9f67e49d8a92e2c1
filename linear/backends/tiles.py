"""The kernels that exist: the kernel families and their tile configurations, their template names, and
every instantiation a launch plan can ask for (what kernels/REGISTERS.md and the compile checks cover).

A kernel family is a kernel file and its tile configurations, each a GemmConfig. GemmConfig is the one
interface the plan (plan.py) and the cost model (cost.py) ask a configuration through, so that neither
asks which family it holds: adding a family is adding its kernel, a GemmConfig subclass and its tiles
(in FAMILIES, and their registers in registers.py). Each family builds its own launches from a
family-neutral description of the product (GemmConfig.launches, launch.GemmCall). Today: SIMT tiles
(kernels/gemm.cu, TILE_CONFIGS) for every dtype; tensor-core tiles (kernels/tc_gemm.cu, TC_CONFIGS) for
float16, bfloat16 and float32 as TF32; Hopper tiles (kernels/wgmma_gemm.cu, WGMMA_CONFIGS: wgmma, TMA,
a persistent grid; sm_90a) for float16 and bfloat16, and float32 as TF32 in the NT product only.
"""
from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ..dtypes import ELEMENT_TYPES, ElementType
from . import launch
from .launch import GemmCall, Launch, ceil_div, colsum_partial_name, round_up, sum_splits_name


WARP_SIZE = 32
# Sizes are int in the kernels, and a tile's start plus its extent (m0 + BM, k0 + BK, ...) must not wrap:
# keep every size one largest tile (and one K step) below 2**31.
MAX_SIZE = 2**31 - 1 - 1024


# The products (trans_a, trans_b): NN (Y = X·W), NT (dX = dY·Wᵀ), TN (dW = Xᵀ·dY), TT.
LAYOUTS = ((False, False), (False, True), (True, False), (True, True))


def _cpp_bool(flag: bool) -> str:
    return "true" if flag else "false"


class GemmConfig(ABC):
    """One tile configuration of a GEMM kernel family. Every family answers the same questions:

    source, hardware                 its kernel file in kernels/; what it runs on (for messages)
    name, bm, bn, threads            its name; the C tile of one block; threads per block
    template_name(t, c_cpp, trans_a, trans_b, vector)   the instantiation a launch names
    k_depth(itemsize)                K per shared-memory stage for elements of that size
    shared_bytes(dtype)              dynamic shared memory per block
    fma_per_clock(dtype)             peak FMA per SM per clock (the cost model's numerator)
    efficiency(dtype)                the share of that peak the tile can reach with latency hidden
    overhead_k_steps                 a tile's prologue and epilogue, in k steps of its stage (estimate)
    min_arch, max_arch, dtypes,      what it requires: compute capability (from, up to), dtypes it is
    tf32_dtypes, min_k,              instantiated for, those that run only with TF32 allowed, the least K,
    layouts(dtype)                   the products (trans_a, trans_b) it is instantiated for with dtype: all
                                     four, or fewer where the hardware reads some operand in one layout only
    vector_only, arch_flags          16-byte aligned operands, leading dimensions and batch strides (the
                                     vector path) or not, extra compiler flags (e.g. -arch=sm_90a)
    candidate                        only Tuning(config=...) launches it; the cost model never chooses it
    launches(call)                   its launches for one product (launch.GemmCall), split-K reduction included
    """
    source: ClassVar[str]
    hardware: ClassVar[str]
    min_arch: ClassVar[int] = 0
    max_arch: ClassVar[int | None] = None
    min_k: ClassVar[int] = 0
    overhead_k_steps: ClassVar[int] = 32  # a block of gemm.cu or tc_gemm.cu (estimate)
    tf32_dtypes: ClassVar[tuple[str, ...]] = ()
    vector_only: ClassVar[bool] = False
    arch_flags: ClassVar[tuple[str, ...]] = ()
    FMA_PER_CLOCK: ClassVar[dict[str, int]]  # by dtype
    name: str
    bm: int
    bn: int
    dtypes: tuple[str, ...]
    candidate: bool

    @property
    @abstractmethod
    def threads(self) -> int: ...

    @abstractmethod
    def template_name(self, t: ElementType, c_cpp: str, trans_a: bool, trans_b: bool, vector: bool) -> str: ...

    @abstractmethod
    def k_depth(self, itemsize: int) -> int: ...

    @abstractmethod
    def shared_bytes(self, dtype: str) -> int: ...

    @abstractmethod
    def efficiency(self, dtype: str) -> float: ...

    @abstractmethod
    def launches(self, call: GemmCall) -> list[Launch]: ...

    def fma_per_clock(self, dtype: str) -> int:
        return self.FMA_PER_CLOCK[dtype]

    def tiles(self, m: int, n: int) -> int:
        return ceil_div(m, self.bm) * ceil_div(n, self.bn)

    def layouts(self, dtype: str) -> tuple[tuple[bool, bool], ...]:
        return LAYOUTS

    def runs(self, dtype: str, arch: int | None, tf32: bool, k: int = 1,
             layout: tuple[bool, bool] | None = None) -> bool:
        """Whether it runs dtype on a device of compute capability arch (None: no device named, the
        kernels every device runs), with TF32 allowed or not, for a product of depth k, for the product
        layout (trans_a, trans_b) of the operands as the kernel reads them (None: some layout); alignment
        aside (vector_only). Every family's epilogue applies the activations and stores Z
        (kernels/epilogue.cuh)."""
        arch = arch or 0
        return dtype in self.dtypes and self.min_arch <= arch and (self.max_arch is None or arch <= self.max_arch) \
            and (tf32 or dtype not in self.tf32_dtypes) and k >= self.min_k \
            and (layout is None or layout in self.layouts(dtype))

    def vectors(self) -> tuple[bool, ...]:
        """The load paths it is instantiated for: 16-byte loads, and scalar ones unless vector_only."""
        return (True,) if self.vector_only else (False, True)


# ----------------------------------------------------------------------------------------------------
# SIMT: kernels/gemm.cu
# ----------------------------------------------------------------------------------------------------

SHARED_PAD = 4  # kernels/gemm.cu: SMEM_PAD
OVERHEAD_PER_K = 4  # a SIMT thread's address, store and barrier instructions per k (test_sass's loops: 3.7-4.3)


@dataclass(frozen=True)
class TileConfig(GemmConfig):
    """One tile shape of linear_gemm (see the pictures at the top of kernels/gemm.cu)."""
    source: ClassVar[str] = "gemm.cu"
    hardware: ClassVar[str] = "the SIMT cores"
    FMA_PER_CLOCK: ClassVar[dict[str, int]] = {"float32": 128, "float64": 64, "float16": 128, "bfloat16": 128}
    name: str
    bm: int  # C tile rows per block
    bn: int  # C tile columns per block
    bk: int  # K depth of one shared-memory stage (a multiple of 8: one 16-byte load of halves)
    wm: int  # C rows of one group of threads' sub-tile: bm (one group) or a warp tile's rows
    wn: int  # C columns of that sub-tile: bn (one group) or a warp tile's columns
    tm: int  # C rows per thread (a multiple of 4)
    tn: int  # C columns per thread (a multiple of 4)
    dtypes: tuple[str, ...] = tuple(ELEMENT_TYPES)  # the element types it is instantiated for
    candidate: bool = False

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

    def template_name(self, t: ElementType, c_cpp: str, trans_a: bool, trans_b: bool, vector: bool) -> str:
        flags = ", ".join(map(_cpp_bool, (trans_a, trans_b)))
        tile = ", ".join(str(v) for v in (self.bm, self.bn, self.bk, self.wm, self.wn, self.tm, self.tn))
        return f"linear_gemm<{t.cpp}, {c_cpp}, {flags}, {tile}, {_cpp_bool(vector)}>"

    def k_depth(self, itemsize: int) -> int:
        return self.bk

    def shared_bytes(self, dtype: str) -> int:
        # Two stages of As [BK][BM + pad] and Bs [BK][BN + pad] accumulators (gemm.cu, SMEM_PAD).
        return 2 * self.bk * (self.bm + SHARED_PAD + self.bn + SHARED_PAD) * ELEMENT_TYPES[dtype].acc_itemsize

    def launches(self, call: GemmCall) -> list[Launch]:
        return launch.strided_batched(call)

    def efficiency(self, dtype: str) -> float:
        """FFMA over all the instructions a thread issues per k: TM·TN FFMA, (TM+TN)/4 LDS.128 and
        OVERHEAD_PER_K others (large 0.89; test_sass counts 0.886-0.892)."""
        ffma = self.tm * self.tn
        return ffma / (ffma + (self.tm + self.tn) / 4 + OVERHEAD_PER_K)


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


# ----------------------------------------------------------------------------------------------------
# Tensor cores (mma.sync): kernels/tc_gemm.cu
# ----------------------------------------------------------------------------------------------------

TC_STAGE_BYTES_PER_ROW = 64  # the k depth of a tensor-core stage: 32 halves or 16 TF32 values per row
SHARED_BYTES_PER_CLOCK = 128  # an SM's shared memory returns one 128-byte wavefront per clock


@dataclass(frozen=True)
class TensorCoreConfig(GemmConfig):
    """One tile shape of linear_tc_gemm (see the top of kernels/tc_gemm.cu): mma.sync for bf16 and TF32,
    ldmatrix and cp.async (16-byte chunks: aligned operands only) from sm_80 on."""
    source: ClassVar[str] = "tc_gemm.cu"
    hardware: ClassVar[str] = "tensor cores"
    min_arch: ClassVar[int] = 80
    tf32_dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    vector_only: ClassVar[bool] = True
    # Dense tensor-core FMA per SM per clock (H100: 989 TFLOP/s half, 494 TF32, over 132 SMs at 1.83 GHz).
    FMA_PER_CLOCK: ClassVar[dict[str, int]] = {"float16": 2048, "bfloat16": 2048, "float32": 1024}
    name: str
    bm: int  # C tile rows per block
    bn: int  # C tile columns per block
    wm: int  # C rows of one warp's sub-tile (a multiple of 16)
    wn: int  # C columns of one warp's sub-tile (a multiple of 16)
    stages: int  # depth of the cp.async pipeline
    candidate: bool = False
    dtypes: tuple[str, ...] = ("float16", "bfloat16", "float32")  # float32 as TF32, only when allowed

    def __post_init__(self):
        if self.bm % self.wm or self.bn % self.wn or self.wm % 16 or self.wn % 16 or self.stages < 2:
            raise ValueError(f"tensor-core config {self.name!r} does not tile: {self}")

    @property
    def threads(self) -> int:
        return (self.bm // self.wm) * (self.bn // self.wn) * WARP_SIZE

    def template_name(self, t: ElementType, c_cpp: str, trans_a: bool, trans_b: bool, vector: bool) -> str:
        flags = ", ".join(map(_cpp_bool, (trans_a, trans_b)))  # always the vector path: no parameter
        tile = ", ".join(str(v) for v in (self.bm, self.bn, self.k_depth(t.itemsize), self.wm, self.wn, self.stages))
        return f"linear_tc_gemm<{t.cpp}, {c_cpp}, {flags}, {tile}>"

    def k_depth(self, itemsize: int) -> int:
        return TC_STAGE_BYTES_PER_ROW // itemsize

    def shared_bytes(self, dtype: str) -> int:
        # STAGES stages of the A and B tiles, elements as stored (tc_gemm.cu).
        return self.stages * (self.bm + self.bn) * TC_STAGE_BYTES_PER_ROW

    def launches(self, call: GemmCall) -> list[Launch]:
        return launch.strided_batched(call)

    def efficiency(self, dtype: str) -> float:
        """The lesser of its FLOPs per staged byte over the 128 x 128 tile's and shared_bound."""
        staged = self.bm * self.bn / (self.bm + self.bn) / 64
        return min(1.0, staged, self.shared_bound(dtype))

    def shared_bound(self, dtype: str) -> float:
        """The share of the tensor-core peak that shared memory's bandwidth allows (bench/NOTES.md). Per
        k, a warp reads its fragments ((WM + WN) elements: ldmatrix or loads), its share of the block's
        cp.async chunks is written, and for TF32 the rounding pass reads and writes those once more; the
        mma work is WM · WN. tc_large: 0.5 in bf16/f16, 1/3 in TF32; tc_wide 0.73; tc_small 1/3."""
        itemsize = ELEMENT_TYPES[dtype].itemsize
        rounding = 3 if dtype in self.tf32_dtypes else 1
        staged = (self.bm + self.bn) * itemsize / (self.threads // WARP_SIZE) * rounding
        bytes_per_k = (self.wm + self.wn) * itemsize + staged
        return SHARED_BYTES_PER_CLOCK * self.wm * self.wn / bytes_per_k / self.fma_per_clock(dtype)


# The cost model weighs these as it does TILE_CONFIGS (ties go to the first).
TC_CONFIGS = (
    # 8 warps of 64 x 32; 4 stages of 16 KiB: two blocks per SM for the half types (<= 128 registers).
    TensorCoreConfig("tc_large", bm=128, bn=128, wm=64, wn=32, stages=4),
    # 4 warps of 32 x 32; 3 stages of 8 KiB, for the shapes with few tiles.
    TensorCoreConfig("tc_small", bm=64, bn=64, wm=32, wn=32, stages=3),
    # tc_large with 64 x 64 warp tiles in a 128 x 256 block: half the shared-memory reads per mma (the
    # bound of 64 x 32 tiles, bench/NOTES.md); 4 stages of 24 KiB, one block of 8 warps per SM
    # (about 240 registers). A candidate until a GPU measures it (python bench/gpu_check.py tc_tiles).
    TensorCoreConfig("tc_wide", bm=128, bn=256, wm=64, wn=64, stages=4, candidate=True),
)
TC_HEURISTIC_CONFIGS = tuple(config for config in TC_CONFIGS if not config.candidate)


# ----------------------------------------------------------------------------------------------------
# Hopper (wgmma, TMA, a persistent grid): kernels/wgmma_gemm.cu
# ----------------------------------------------------------------------------------------------------

WGMMA_BM = 128  # C tile rows per block: two consumer warpgroups of 64 rows (wgmma_gemm.cu, WGMMA_BM)
WGMMA_ROWS_PER_CONSUMER = 64  # one m64nNk16 per consumer warpgroup
WGMMA_STAGE_ROW_BYTES = 128  # a stage's k depth: one 128-byte swizzled row (64 halves, 32 floats)
WGMMA_PANEL = 64  # the width of an MN-major operand's box (one 128-byte row of halves)
# wgmma reads 32-bit (TF32) operands K-major only (no imm-trans for them): A stored M x K (not
# transposed) and B stored N x K (transposed), the NT product (dX = dY·Wᵀ).
WGMMA_K_MAJOR_LAYOUTS = ((False, True),)
WGMMA_SWIZZLE = 128  # bytes: the tensor maps' and the descriptors' swizzle
WGMMA_ALIGNMENT_SLACK = 1024  # the stages start on the first 1024-byte boundary of the dynamic shared memory
WGMMA_EPILOGUE_COLUMNS = 64  # C columns per chunk of the epilogue (wgmma_gemm.cu)
# The activation epilogue's staging areas after the ring, one per consumer warpgroup: a chunk's accumulators of
# each of its 128 threads, as floats (wgmma_gemm.cu, WGMMA_STAGING_BYTES): 32 KiB.
WGMMA_STAGING_BYTES = WGMMA_BM // WGMMA_ROWS_PER_CONSUMER * 4 * WARP_SIZE * WGMMA_EPILOGUE_COLUMNS // 2 * 4


@dataclass(frozen=True)
class WgmmaConfig(GemmConfig):
    """One tile shape of linear_wgmma_gemm (see the top of kernels/wgmma_gemm.cu): WGMMA_BM x bn, a ring
    of `stages` stages of 128 bytes of k (64 halves, 32 floats) that a TMA producer warpgroup fills for
    two consumer warpgroups issuing wgmma, a persistent grid; sm_90a only, operands as TMA tensor maps
    (16-byte aligned, leading dimensions and batch strides multiples of 16 bytes: the vector path), K of
    at least 1 (a map has no empty dimension). float32 runs as TF32 (wgmma reads the top 19 bits of each
    float), with TF32 allowed and in the NT product only (layouts): for NN, TN and TT the plan keeps the
    other families (tc_gemm's TF32 tiles, which transpose through ldmatrix)."""
    source: ClassVar[str] = "wgmma_gemm.cu"
    hardware: ClassVar[str] = "Hopper tensor cores (wgmma, TMA; sm_90a)"
    min_arch: ClassVar[int] = 90
    max_arch: ClassVar[int | None] = 90  # sm_90a code runs on compute capability 9.0 only
    min_k: ClassVar[int] = 1
    # The epilogue's stores, a few thousand clocks per 128 x 256 tile (bench/NOTES.md): about 4 k-blocks; the
    # ring's fill overlaps the previous tile's epilogue (the producer runs ahead on a persistent grid).
    overhead_k_steps: ClassVar[int] = 4
    vector_only: ClassVar[bool] = True
    arch_flags: ClassVar[tuple[str, ...]] = ("-arch=sm_90a",)  # wgmma, setmaxnreg: sm_90a only
    tf32_dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    FMA_PER_CLOCK: ClassVar[dict[str, int]] = TensorCoreConfig.FMA_PER_CLOCK
    swizzle: ClassVar[int] = WGMMA_SWIZZLE
    name: str
    bn: int  # C tile columns per block: the wgmma's N (128 or 256)
    stages: int  # depth of the shared-memory ring
    bm: int = WGMMA_BM
    candidate: bool = False
    dtypes: tuple[str, ...] = ("bfloat16", "float16", "float32")  # float32 as TF32, only when allowed

    def __post_init__(self):
        if self.bn not in (128, 256) or self.stages < 2 or self.bm != WGMMA_BM:
            raise ValueError(f"wgmma config {self.name!r} does not tile: {self}")

    def layouts(self, dtype: str) -> tuple[tuple[bool, bool], ...]:
        return WGMMA_K_MAJOR_LAYOUTS if dtype in self.tf32_dtypes else LAYOUTS

    @property
    def threads(self) -> int:
        return (1 + self.bm // WGMMA_ROWS_PER_CONSUMER) * 4 * WARP_SIZE  # a producer and the consumers

    def template_name(self, t: ElementType, c_cpp: str, trans_a: bool, trans_b: bool, vector: bool) -> str:
        flags = ", ".join(map(_cpp_bool, (trans_a, trans_b)))  # TMA: no load-path parameter
        return f"linear_wgmma_gemm<{t.cpp}, {c_cpp}, {flags}, {self.bn}, {self.stages}>"

    def k_depth(self, itemsize: int) -> int:
        return WGMMA_STAGE_ROW_BYTES // itemsize

    def shared_bytes(self, dtype: str) -> int:
        # The 1024-byte alignment slack, STAGES stages of the A and B tiles, elements as stored, and the
        # epilogue's staging areas: 1 + 192 + 32 KiB for both tiles, of the 227 KiB a block may have.
        k_depth = self.k_depth(ELEMENT_TYPES[dtype].itemsize)
        ring = self.stages * (self.bm + self.bn) * k_depth * ELEMENT_TYPES[dtype].itemsize
        return WGMMA_ALIGNMENT_SLACK + ring + WGMMA_STAGING_BYTES

    def efficiency(self, dtype: str) -> float:
        """The shared-memory bound of bench/NOTES.md (issue does not bind: the consumers issue 19 % of the
        clocks for 128 x 256, 34 % for 128 x 128): per k-block each consumer's wgmmas read its 64 rows of A
        and all of B, TMA writes the stage, and shared memory moves SHARED_BYTES_PER_CLOCK a clock while the
        tensor cores take bm · bn · k / fma_per_clock: 1.0 for 128 x 256, 0.8 for 128 x 128 (counting TMA's
        writes on the same port as wgmma's reads, which NVIDIA does not document)."""
        itemsize = ELEMENT_TYPES[dtype].itemsize
        k = self.k_depth(itemsize)
        consumers = self.bm // WGMMA_ROWS_PER_CONSUMER
        moved = (consumers * (WGMMA_ROWS_PER_CONSUMER + self.bn) + self.bm + self.bn) * k * itemsize
        tensor_clocks = self.bm * self.bn * k / self.fma_per_clock(dtype)
        return min(1.0, tensor_clocks / (moved / SHARED_BYTES_PER_CLOCK))

    def box(self, operand: str, trans: bool, itemsize: int) -> tuple[int, int, int]:
        """The TMA box of an operand stack of elements of `itemsize` bytes (batch, rows, columns as stored):
        the K-major ones (A, Bᵀ) one box of all the tile's rows by a stage's k, the MN-major ones (Aᵀ, B;
        16-bit elements only) boxes of a stage's k by WGMMA_PANEL (wgmma_gemm.cu)."""
        k = self.k_depth(itemsize)
        k_major = (operand == "a") != trans
        return (1, self.bm if operand == "a" else self.bn, k) if k_major else (1, k, WGMMA_PANEL)

    def launches(self, call: GemmCall) -> list[Launch]:
        return launch.persistent_tma(call)


# The cost model weighs them with the tensor-core tiles (ties go to the first).
WGMMA_CONFIGS = (
    # 4 stages of 48 KiB (192 KiB + slack + staging), one block per SM: the tile for large products.
    WgmmaConfig("wgmma_wide", bn=256, stages=4),
    # 6 stages of 32 KiB: half the columns, for the shapes with fewer tiles.
    WgmmaConfig("wgmma", bn=128, stages=6),
)


# ----------------------------------------------------------------------------------------------------
# Every family
# ----------------------------------------------------------------------------------------------------

# Each family's configurations, oldest first (as kernels/REGISTERS.md lists them): the plan runs a call on
# the newest family that can run it.
FAMILIES: tuple[tuple[GemmConfig, ...], ...] = (TILE_CONFIGS, TC_CONFIGS, WGMMA_CONFIGS)
CONFIGS_BY_NAME: dict[str, GemmConfig] = {config.name: config for configs in FAMILIES for config in configs}


def heuristic_configs(configs: tuple[GemmConfig, ...]) -> tuple[GemmConfig, ...]:
    """The configurations of a family the cost model chooses among (its candidates left out)."""
    return tuple(config for config in configs if not config.candidate)


@dataclass(frozen=True)
class Instantiation:
    source: str  # a file in kernels/
    name: str  # a C++ expression naming the template instantiation
    shared_mem: int  # the dynamic shared memory its launches ask for
    arch_flags: tuple[str, ...] = ()  # its family's extra compiler flags (GemmConfig.arch_flags)


def gemm_instantiations(configs: tuple[GemmConfig, ...]) -> list[tuple[GemmConfig, str, bool, Instantiation]]:
    """(config, dtype, vector, instantiation) for every template instantiation of these configurations: per
    dtype, C itself or a split-K workspace, each product layout it has, each load path."""
    found = []
    for dtype in dict.fromkeys(dtype for config in configs for dtype in config.dtypes):
        t = ELEMENT_TYPES[dtype]
        for c_cpp in dict.fromkeys((t.cpp, t.acc_cpp)):
            for (trans_a, trans_b), config in itertools.product(LAYOUTS, configs):
                if dtype in config.dtypes and (trans_a, trans_b) in config.layouts(dtype):
                    for vector in config.vectors():
                        name = config.template_name(t, c_cpp, trans_a, trans_b, vector)
                        kernel = Instantiation(config.source, name, config.shared_bytes(dtype), config.arch_flags)
                        found.append((config, dtype, vector, kernel))
    return found


def instantiations() -> list[Instantiation]:
    """Every template instantiation a plan can launch (what the compile checks build)."""
    found = [kernel for configs in FAMILIES for *_, kernel in gemm_instantiations(configs)]
    for t in ELEMENT_TYPES.values():
        found += [Instantiation("reduce.cu", colsum_partial_name(t), 0),
                  Instantiation("reduce.cu", sum_splits_name(t), 0)]
    return list(dict.fromkeys(found))
