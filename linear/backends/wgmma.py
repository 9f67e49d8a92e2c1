"""The Hopper GEMM family (kernels/wgmma_gemm.cu), launched directly on either runtime: its tile shapes,
the tensor maps of its operands (made once per pointer, shape, strides and box, then cached), its
persistent grid and its argument list.

The launch plan does not choose this family yet (see README, "The Hopper kernel"): bench/gpu_check.py
and tests/test_wgmma_gemm.py call gemm() here.

    gemm(runtime, a, b, c, trans_a=..., trans_b=..., alpha=..., beta=..., bias=..., config=..., splits=...)

a, b and c are stacks as stored (batch, rows, columns), row-major, rows a multiple of 16 bytes apart and
16-byte aligned (what TMA takes): a is (batch, M, K), or (batch, K, M) with trans_a; b is (batch, K, N),
or (batch, N, K) with trans_b; a batch of 1 in b is shared by every matrix of the stack; c is
(batch, M, N) with contiguous rows (any leading dimension).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cost import split_k
from .plan import address
from .tensor_map import TensorMap, tensor_map
from .tiles import ELEMENT_TYPES

SOURCE = "wgmma_gemm.cu"
ARCH_OPTIONS = ("-arch=sm_90a",)  # wgmma, setmaxnreg: the architecture-specific sm_90a only
MIN_ARCH = 90
BM, BK, PANEL = 128, 64, 64  # the block's rows, k per stage, an MN-major box's width (wgmma_gemm.cu)
THREADS = 384                # a producer warpgroup and two consumer warpgroups
ALIGNMENT_SLACK = 1024       # the stages start on the first 1024-byte boundary of the dynamic shared memory
SWIZZLE = 128                # bytes: TMA's and the descriptors' swizzle
DTYPES = ("bfloat16", "float16")
REDUCE_THREADS = 256


@dataclass(frozen=True)
class WgmmaConfig:
    """One tile shape of linear_wgmma_gemm: BM x bn, k in stages of BK."""
    name: str
    bn: int      # C tile columns per block: the wgmma's N (128 or 256)
    stages: int  # depth of the shared-memory ring

    def template_name(self, t_cpp: str, c_cpp: str, trans_a: bool, trans_b: bool) -> str:
        flags = ", ".join("true" if f else "false" for f in (trans_a, trans_b))
        return f"linear_wgmma_gemm<{t_cpp}, {c_cpp}, {flags}, {self.bn}, {self.stages}>"

    def shared_bytes(self) -> int:
        return self.stages * (BM + self.bn) * BK * 2 + ALIGNMENT_SLACK

    def tiles(self, m: int, n: int) -> int:
        return -(-m // BM) * -(-n // self.bn)


WGMMA_CONFIGS = (WgmmaConfig("wgmma_wide", bn=256, stages=4), WgmmaConfig("wgmma", bn=128, stages=6))


def box(config: WgmmaConfig, operand: str, trans: bool) -> tuple[int, int, int]:
    """The TMA box of an operand stack (batch, rows, columns as stored): the K-major ones (A, Bᵀ) one box
    of all the tile's rows by BK, the MN-major ones (Aᵀ, B) boxes of BK k-rows by 64 (wgmma_gemm.cu)."""
    k_major = (operand == "a") != trans
    return (1, BM if operand == "a" else config.bn, BK) if k_major else (1, BK, PANEL)


class TensorMapCache:
    """Tensor maps by (runtime, pointer, shape, strides, dtype, box): the driver (or the emulator) encodes a
    map once; a later call with the same operand copies its 128 bytes. The bytes hold no reference to the
    array, so the cache keeps no array alive; a map is only passed along with the array it describes."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._maps: OrderedDict[tuple, bytes] = OrderedDict()
        self.encoded = 0  # how many maps were made (the rest came from the cache)

    def get(self, runtime: Any, array: Any, box: tuple[int, ...]) -> TensorMap:
        key = (runtime.name, address(array), array.shape, array.strides, array.dtype.name, box)
        data = self._maps.get(key)
        if data is None:
            data = tensor_map(runtime, array, box, swizzle=SWIZZLE).bytes.tobytes()
            self.encoded += 1
            self._maps[key] = data
            if len(self._maps) > self.capacity:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(key)
        return TensorMap(data, array, box, SWIZZLE)


TENSOR_MAPS = TensorMapCache()


def _check_operand(name: str, x: Any) -> None:
    if x.ndim != 3:
        raise ValueError(f"wgmma gemm: {name} must be a stack (batch, rows, columns), got shape {x.shape}")
    if x.dtype.name not in DTYPES:
        raise TypeError(f"wgmma gemm: {name} has dtype {x.dtype.name} and shape {x.shape}; the kernel takes "
                        f"{' or '.join(DTYPES)}")
    rows_bytes = x.strides[1]
    if x.strides[2] != x.itemsize or rows_bytes % 16 or address(x) % 16 or (x.shape[0] > 1 and x.strides[0] % 16):
        raise ValueError(f"wgmma gemm: {name} (shape {x.shape}, dtype {x.dtype.name}, byte strides {x.strides}) is "
                         f"not what TMA takes: contiguous rows, 16-byte aligned, a multiple of 16 bytes apart")


def _positive_batch_stride(xp: Any, x: Any) -> Any:
    """x itself, or for a stack of one matrix (x[None] has batch stride 0, which a tensor map refuses)
    the same memory with the stride of a whole matrix: a map reads batch 0 only."""
    if x.shape[0] > 1 or x.strides[0] > 0:
        return x
    return xp.lib.stride_tricks.as_strided(x, x.shape, (x.shape[1] * x.strides[1], *x.strides[1:]))


def gemm(runtime: Any, a: Any, b: Any, c: Any, *, trans_a: bool = False, trans_b: bool = False,
         alpha: float = 1.0, beta: float = 0.0, bias: Any = None, config: WgmmaConfig = WGMMA_CONFIGS[0],
         splits: int = 1, grid: int | None = None) -> None:
    """C = alpha · op(A) · op(B) + beta · C (+ bias), into c, on the Hopper kernel (see the module's
    docstring for the layouts). splits > 1 (a batch of 1 only) sums K slices in the float32 workspace
    with linear_sum_splits; grid: persistent blocks (default: one per SM, at most one per unit)."""
    if runtime.compute_capability() < MIN_ARCH:
        raise ValueError(f"wgmma gemm: the kernel needs compute capability 9.0 (sm_90a), the device has "
                         f"{runtime.compute_capability() / 10}")
    for name, x in (("a", a), ("b", b)):
        _check_operand(name, x)
    if c.ndim != 3 or c.strides[2] != c.itemsize or c.strides[1] % c.itemsize or c.strides[0] % c.itemsize:
        raise ValueError(f"wgmma gemm: c (shape {c.shape}, byte strides {c.strides}) must be a stack of row-major "
                         f"matrices with contiguous rows")
    batch, m, k = a.shape[0], *(a.shape[:0:-1] if trans_a else a.shape[1:])
    n = b.shape[1] if trans_b else b.shape[2]
    if (b.shape[2] if trans_b else b.shape[1]) != k or b.shape[0] not in (1, batch) or c.shape != (batch, m, n):
        raise ValueError(f"wgmma gemm: shapes a {a.shape} (trans_a={trans_a}), b {b.shape} (trans_b={trans_b}) "
                         f"and c {c.shape} do not make a product")
    if c.dtype != a.dtype or b.dtype != a.dtype or (bias is not None and (bias.dtype != a.dtype or bias.shape != (n,))):
        raise TypeError(f"wgmma gemm: a {a.dtype.name}, b {b.dtype.name}, c {c.dtype.name} and bias "
                        f"{None if bias is None else (bias.dtype.name, bias.shape)} must share one dtype (bias: ({n},))")
    if k == 0:
        raise ValueError(f"wgmma gemm: K = 0 (a {a.shape} by {b.shape} product): a tensor map needs at least one "
                         f"element per dimension; the other kernels handle an empty K")
    if splits > 1 and batch > 1:
        raise ValueError(f"wgmma gemm: split-K takes one matrix, not a stack of {batch}")
    t = ELEMENT_TYPES[a.dtype.name]
    xp = runtime.xp
    k_per_split, splits = split_k(k, splits, BK) if splits > 1 else (k, 1)
    map_a = TENSOR_MAPS.get(runtime, _positive_batch_stride(xp, a), box(config, "a", trans_a))
    map_b = TENSOR_MAPS.get(runtime, _positive_batch_stride(xp, b), box(config, "b", trans_b))
    units = config.tiles(m, n) * batch * splits
    if units >= 2**31:  # the kernel counts units in 32 bits
        raise ValueError(f"wgmma gemm: {units} tiles of work (M {m}, N {n}, batch {batch}, splits {splits}) "
                         f"exceed the kernel's 2**31")
    blocks = max(1, min(units, grid or runtime.device_limits().sms))
    bias_arg = c if bias is None else bias  # an unused stand-in when there is no bias
    ldc, batch_stride_c = c.strides[1] // c.itemsize, c.strides[0] // c.itemsize
    if splits == 1:
        target, c_cpp, epilogue = c, t.cpp, (np.float32(alpha), np.float32(beta), bias_arg, np.int32(bias is not None))
    else:  # the bare product per slice; linear_sum_splits applies alpha, beta and the bias
        target, c_cpp = xp.empty((splits, m, n), np.float32), "float"
        epilogue = (np.float32(1.0), np.float32(0.0), bias_arg, np.int32(0))
        ldc, batch_stride_c = n, 0
    kernel = runtime.function(SOURCE, config.template_name(t.cpp, c_cpp, trans_a, trans_b), options=ARCH_OPTIONS)
    kernel((blocks, 1, 1), (THREADS, 1, 1),
           (np.int32(m), np.int32(n), np.int32(k), np.int32(k_per_split), np.int32(splits), np.int32(batch),
            map_a, np.int32(1), map_b, np.int32(b.shape[0] > 1),
            target, np.int64(ldc), np.int64(batch_stride_c), np.int64(m * n)) + epilogue,
           shared_mem=config.shared_bytes())
    if splits > 1:
        total = runtime.function("reduce.cu", f"linear_sum_splits<{t.cpp}>")
        total((min(-(-m * n // REDUCE_THREADS), 8 * runtime.device_limits().sms), 1, 1), (REDUCE_THREADS, 1, 1),
              (np.int32(m), np.int32(n), np.int32(splits), target, c[0], np.int64(c.strides[1] // c.itemsize),
               np.float32(alpha),
               np.float32(beta), bias_arg, np.int32(bias is not None),
               np.int32(0), c[0], np.int32(0)))  # no activation, no Z (an unused stand-in): kernels/epilogue.cuh
