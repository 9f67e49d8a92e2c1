"""The launch plan's cost model: which tile configuration and split-K count run a product.

choose(): for each configuration of a kernel family (tiles.py) and each split-K count it estimates
the time from the device's limits (device.DeviceLimits: SMs, registers, shared memory, threads per
SM; the runtime's device_limits(), an H100 for the emulator) and picks the fastest. It asks every
configuration the same questions (tiles.GemmConfig), whatever its family:
1. Blocks per SM: the fewest that registers (registers.REGISTERS, ptxas's counts on sm_90, or sm_90a for
   the Hopper tiles, allocated per warp in units of 256), shared memory (plus 1 KiB a block) and threads
   allow.
2. The busiest SM runs ⌈blocks / SMs⌉ blocks (waves and uneven loads alike; a persistent grid's tiles
   of work alike), up to blocks-per-SM at a time, each for its K plus the tile's prologue and epilogue
   (GemmConfig.overhead_k_steps). Its FMA rate is the family's peak (GemmConfig.fma_per_clock) times the lesser of the tile's
   efficiency (GemmConfig.efficiency; SIMT: the FFMA share of its instruction stream; tensor cores:
   its FLOPs per staged byte next to the 128 x 128 tile's, or the share of the peak that shared
   memory's bandwidth allows its warp tiles, if less) and the warps it holds over
   WARPS_TO_HIDE_LATENCY (fewer warps hide proportionally less latency).
3. Split-K (a single matrix only: a stack fills the card with its batch) adds the workspace's
   traffic at the device's bandwidth and a reduction launch; slices of at least MIN_K_PER_SPLIT.
Candidates (GemmConfig.candidate) are never chosen: they are there for bench/sweep.py until a GPU
measurement justifies choosing them. The model's constants are estimates, to be checked by the sweep.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..dtypes import element_type
from .device import H100, DeviceLimits
from .registers import REGISTERS
from .tiles import HEURISTIC_CONFIGS, WARP_SIZE, GemmConfig, ceil_div, round_up

MIN_K_PER_SPLIT = 512  # shorter K slices would spend more on the workspace than they gain
MAX_SPLITS = 32
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
SHARED_PER_BLOCK_RESERVED = 1024  # bytes the CUDA runtime keeps per resident block (sm_80 and later)
WARPS_TO_HIDE_LATENCY = 16  # warps per SM at which the latency model stops adding speed (estimate)
EXTRA_LAUNCH_S = 3e-6  # one more small launch: a linear_sum_splits, an operand's aligned copy (estimate)
TIE = 0.03  # estimates this close count as equal


def blocks_per_sm(config: GemmConfig, dtype: str, vector: bool, device: DeviceLimits = H100) -> int:
    """Resident blocks of one launch per SM: registers, shared memory and threads."""
    registers = REGISTERS[config.name, dtype, vector or config.vector_only]
    warps = ceil_div(config.threads, WARP_SIZE)
    return max(1, min(device.registers_per_sm // (warps * round_up(registers * WARP_SIZE, REGISTER_UNIT)),
                      device.shared_per_sm // (config.shared_bytes(dtype) + SHARED_PER_BLOCK_RESERVED),
                      device.threads_per_sm // config.threads, device.blocks_per_sm))


@dataclass(frozen=True)
class Estimate:
    config: GemmConfig
    splits: int
    seconds: float
    warps_per_sm: float  # resident warps on the busiest SMs


def estimate(config: GemmConfig, splits: int, m: int, n: int, k: int, batch: int, dtype: str,
             vector: bool, device: DeviceLimits = H100) -> Estimate:
    """The cost model's time for one launch plan (see the module's docstring)."""
    t = element_type(dtype)
    bk = config.k_depth(t.itemsize)
    k_per_split, splits = split_k(k, splits, bk)
    blocks = config.tiles(m, n) * batch * splits
    resident = blocks_per_sm(config, dtype, vector, device)
    busiest = ceil_div(blocks, device.sms)
    warps = min(resident, busiest) * config.threads / WARP_SIZE
    peak = config.fma_per_clock(dtype) * device.clock_hz
    rate = peak * min(config.efficiency(dtype), warps / WARPS_TO_HIDE_LATENCY)
    seconds = busiest * config.bm * config.bn * (round_up(k_per_split, bk) + config.overhead_k_steps * bk) / rate
    if splits > 1:  # the workspace written and read, C written, one more launch
        seconds += (2 * splits * t.acc_itemsize + t.itemsize) * m * n / device.bandwidth + EXTRA_LAUNCH_S
    return Estimate(config, splits, seconds, warps)


def split_counts(k: int, batch: int) -> range:
    """The split-K counts the model weighs: slices of at least MIN_K_PER_SPLIT, single matrices only."""
    return range(1, 1 + max(1, min(MAX_SPLITS, k // MIN_K_PER_SPLIT) if batch == 1 else 1))


@functools.lru_cache(maxsize=4096)
def choose(m: int, n: int, k: int, batch: int = 1, dtype: str = "float32", vector: bool = True,
           configs: tuple[GemmConfig, ...] = HEURISTIC_CONFIGS, device: DeviceLimits = H100) -> Estimate:
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


def aligned_copies_pay(m: int, n: int, k: int, batch: int, dtype: str, copied_bytes: list[int], *,
                       aligned: tuple[GemmConfig, ...], as_they_are: tuple[GemmConfig, ...],
                       device: DeviceLimits = H100) -> bool:
    """Whether copying operands of these sizes into buffers with aligned rows and running the `aligned`
    configurations (a family that needs 16-byte aligned operands) beats the `as_they_are` ones on the
    operands as they are (each copy: its bytes read and written, a launch)."""
    copies = sum(2 * nbytes / device.bandwidth + EXTRA_LAUNCH_S for nbytes in copied_bytes)
    return copies + choose(m, n, k, batch, dtype, True, aligned, device).seconds < \
        choose(m, n, k, batch, dtype, False, as_they_are, device).seconds
