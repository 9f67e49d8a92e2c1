"""DeviceLimits: what a device allows, the one owner of every hardware limit the package uses.

Each runtime reports its device's (runtime.device_limits(): the cuda runtime from CUDA's device
attributes, the emulator an H100's); the plan and the cost model plan for them, the emulator enforces
them, the cuda runtime opts into dynamic shared memory beyond `shared_per_block_default`.
"""
from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class DeviceLimits:
    """A device's limits, as CUDA's device attributes name them (defaults: an H100 SXM, sm_90)."""
    sms: int
    registers_per_sm: int = 65536
    shared_per_sm: int = 228 * KIB  # bytes
    shared_per_block: int = 227 * KIB  # the most a block may have, dynamic shared memory opted into
    shared_per_block_default: int = 48 * KIB  # without opting in; also the limit of static __shared__
    threads_per_sm: int = 2048
    threads_per_block: int = 1024
    blocks_per_sm: int = 32
    max_block: tuple[int, int, int] = (1024, 1024, 64)
    max_grid: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
    clock_hz: float = 1.98e9  # boost clock
    bandwidth: float = 3.35e12  # DRAM bytes per second


# H100 SXM (and H200, the same SMs; bench/NOTES.md has the sources): the emulator's device, and the
# plan's when no runtime names one.
H100 = DeviceLimits(sms=132)
# A100 SXM 80 GB (sm_80, CUDA programming guide and datasheet): the oldest card the compile checks build for.
A100 = DeviceLimits(sms=108, shared_per_sm=164 * KIB, shared_per_block=163 * KIB, clock_hz=1.41e9,
                    bandwidth=2.039e12)
