"""The launch plan's cost model: which tile configuration and split-K count run a product.

choose(): for each configuration of the kernel family (tiles.py) and each split-K count it estimates
the time from the device's limits (DeviceLimits: SMs, registers, shared memory, threads per
SM; the runtime's device_limits(), an H100 for the emulator) and picks the fastest:
1. Blocks per SM: the fewest that registers (REGISTERS, ptxas's counts on sm_90, allocated per warp
   in units of 256), shared memory (plus 1 KiB a block) and threads allow.
2. The busiest SM runs ⌈blocks / SMs⌉ blocks (waves and uneven loads alike), up to blocks-per-SM at a
   time. Its FMA rate is the peak times the lesser of the tile's efficiency (SIMT: the FFMA share of
   its instruction stream; tensor cores: its FLOPs per staged byte next to the 128 x 128 tile's, or the
   share of the peak that shared memory's bandwidth allows its warp tiles, if less) and
   the warps it holds over WARPS_TO_HIDE_LATENCY (fewer warps hide proportionally less latency).
3. Split-K (a single matrix only: a stack fills the card with its batch) adds the workspace's
   traffic at the device's bandwidth and a reduction launch; slices of at least MIN_K_PER_SPLIT.
Candidates (TileConfig.candidate) are never chosen: they are there for bench/sweep.py until a GPU
measurement justifies choosing them. The model's constants are estimates, to be checked by the sweep.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .tiles import (HEURISTIC_CONFIGS, TC_HEURISTIC_CONFIGS, WARP_SIZE, TensorCoreConfig, TileConfig, ceil_div,
                    element_type, round_up)

MIN_K_PER_SPLIT = 512  # shorter K slices would spend more on the workspace than they gain
MAX_SPLITS = 32


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
    ('medium', 'float32', False): 81,
    ('medium', 'float32', True): 91,
    ('small', 'float32', False): 91,
    ('small', 'float32', True): 95,
    ('warp', 'float32', False): 163,
    ('warp', 'float32', True): 128,
    ('warp_deep', 'float32', False): 168,
    ('warp_deep', 'float32', True): 163,
    ('warp_wide', 'float32', False): 255,
    ('warp_wide', 'float32', True): 255,
    ('warp_medium', 'float32', False): 81,
    ('warp_medium', 'float32', True): 91,
    ('tc_large', 'float32', True): 154,
    ('tc_small', 'float32', True): 96,
    ('tc_wide', 'float32', True): 241,
    ('large', 'float64', False): 240,
    ('large', 'float64', True): 240,
    ('medium', 'float64', False): 118,
    ('medium', 'float64', True): 116,
    ('small', 'float64', False): 140,
    ('small', 'float64', True): 140,
    ('large', 'float16', False): 165,
    ('large', 'float16', True): 167,
    ('medium', 'float16', False): 81,
    ('medium', 'float16', True): 92,
    ('small', 'float16', False): 89,
    ('small', 'float16', True): 115,
    ('tc_large', 'float16', True): 128,
    ('tc_small', 'float16', True): 96,
    ('tc_wide', 'float16', True): 242,
    ('large', 'bfloat16', False): 165,
    ('large', 'bfloat16', True): 165,
    ('medium', 'bfloat16', False): 81,
    ('medium', 'bfloat16', True): 92,
    ('small', 'bfloat16', False): 89,
    ('small', 'bfloat16', True): 115,
    ('tc_large', 'bfloat16', True): 128,
    ('tc_small', 'bfloat16', True): 96,
    ('tc_wide', 'bfloat16', True): 242,
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
SHARED_BYTES_PER_CLOCK = 128  # an SM's shared memory returns one 128-byte wavefront per clock


def blocks_per_sm(config: TileConfig | TensorCoreConfig, dtype: str, vector: bool,
                  device: DeviceLimits = H100) -> int:
    """Resident blocks of one launch per SM: registers, shared memory and threads."""
    tc = isinstance(config, TensorCoreConfig)
    registers = REGISTERS[config.name, dtype, vector or tc]
    warps = ceil_div(config.threads, WARP_SIZE)
    shared = config.shared_bytes() if tc else config.shared_bytes(np.dtype(element_type(dtype).acc).itemsize)
    return max(1, min(device.registers_per_sm // (warps * round_up(registers * WARP_SIZE, REGISTER_UNIT)),
                      device.shared_per_sm // (shared + SHARED_PER_BLOCK_RESERVED),
                      device.threads_per_sm // config.threads, device.blocks_per_sm))


def efficiency(config: TileConfig | TensorCoreConfig, dtype: str) -> float:
    """The share of the peak a tile can reach with latency hidden (estimate). SIMT: FFMA over all the
    instructions a thread issues per k (TM·TN FFMA, (TM+TN)/4 LDS.128, OVERHEAD_PER_K others; large
    0.89, test_sass counts 0.886-0.892). Tensor cores: the lesser of FLOPs per staged byte over the
    128 x 128 tile's and the shared-memory bound (tensor_core_shared_bound)."""
    if isinstance(config, TensorCoreConfig):
        staged = config.bm * config.bn / (config.bm + config.bn) / 64
        return min(1.0, staged, tensor_core_shared_bound(config, dtype))
    ffma = config.tm * config.tn
    return ffma / (ffma + (config.tm + config.tn) / 4 + OVERHEAD_PER_K)


def tensor_core_shared_bound(config: TensorCoreConfig, dtype: str) -> float:
    """The share of the tensor-core peak that shared memory's bandwidth allows (bench/NOTES.md). Per k, a
    warp reads its fragments ((WM + WN) elements: ldmatrix or loads), its share of the block's cp.async
    chunks is written, and for TF32 the rounding pass reads and writes those once more; the mma work is
    WM · WN. tc_large: 0.5 in bf16/f16, 1/3 in TF32; tc_wide 0.73; tc_small 1/3."""
    itemsize = element_type(dtype).itemsize
    staged = (config.bm + config.bn) * itemsize / (config.threads // WARP_SIZE) * (3 if dtype == "float32" else 1)
    bytes_per_k = (config.wm + config.wn) * itemsize + staged
    fma_per_clock = FMA_PER_CLOCK["tc_gemm.cu"].get(dtype, FMA_PER_CLOCK_DEFAULT["tc_gemm.cu"])
    return SHARED_BYTES_PER_CLOCK * config.wm * config.wn / bytes_per_k / fma_per_clock


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
    busiest = ceil_div(blocks, device.sms)
    warps = min(resident, busiest) * config.threads / WARP_SIZE
    peak = FMA_PER_CLOCK[source].get(dtype, FMA_PER_CLOCK_DEFAULT[source]) * device.clock_hz
    rate = peak * min(efficiency(config, dtype), warps / WARPS_TO_HIDE_LATENCY)
    seconds = busiest * config.bm * config.bn * (round_up(k_per_split, bk) + BLOCK_OVERHEAD_K * bk) / rate
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
    k_per_split = round_up(ceil_div(k, max(splits, 1)), bk) if k > 0 else bk
    return k_per_split, max(1, ceil_div(k, k_per_split))


def aligned_copies_pay(m: int, n: int, k: int, batch: int, dtype: str, copied_bytes: list[int],
                       device: DeviceLimits = H100) -> bool:
    """Whether copying operands of these sizes into buffers with aligned rows and running on tensor cores
    beats the SIMT kernel on the operands as they are (each copy: its bytes read and written, a launch)."""
    copies = sum(2 * nbytes / device.bandwidth + EXTRA_LAUNCH_S for nbytes in copied_bytes)
    simt = choose(m, n, k, batch, dtype, False, HEURISTIC_CONFIGS, device).seconds
    return copies + choose(m, n, k, batch, dtype, True, TC_HEURISTIC_CONFIGS, device).seconds < simt
