"""The kernels that exist: tile configurations, element types, template names, and every instantiation a
launch plan can ask for (what kernels/REGISTERS.md and the compile checks cover).

SIMT tiles (kernels/gemm.cu, TILE_CONFIGS) for every dtype; tensor-core tiles (kernels/tc_gemm.cu,
TC_CONFIGS) for float16, bfloat16 and float32 as TF32. The cost model (cost.py) chooses among them; the
plan (plan.py) launches the choice.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_up(a: int, b: int) -> int:
    return ceil_div(a, b) * b


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
        return ceil_div(m, self.bm) * ceil_div(n, self.bn)

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
        return ceil_div(m, self.bm) * ceil_div(n, self.bn)

    def shared_bytes(self) -> int:
        # STAGES stages of the A and B tiles, elements as stored (tc_gemm.cu).
        return self.stages * (self.bm + self.bn) * TC_STAGE_BYTES_PER_ROW


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
CONFIGS_BY_NAME = {config.name: config for config in TILE_CONFIGS + TC_CONFIGS}

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
