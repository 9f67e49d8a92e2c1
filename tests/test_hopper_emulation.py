"""The emulator's sm_90 set against the PTX ISA and CuTe, independently of any kernel of ours.

Expectations are computed here from the definitions themselves, transcribed as data and evaluated by
a small CuTe-layout evaluator: the canonical wgmma shared-memory layouts of CuTe's make_gmma_desc
(include/cute/atom/mma_traits_sm90_gmma.hpp) composed with Swizzle<B,4,3>, the accumulator and
A-register layouts CLayout_64xN, ALayout_64x16 and ALayout_64x8 of the same file, the descriptor's
bit fields of include/cute/arch/mma_sm90_desc.hpp, the TMA box and swizzle rules of the CUDA driver
API and programming guide, and the mbarrier phase rules of the PTX ISA. The kernels are
tests/kernels/hopper.cu (one instruction or a short sequence each) and hopper_gemm.cu (a GEMM of the
Hopper shape: TMA producer, mbarrier ring, two wgmma consumer warpgroups). Every group has negative
controls that must fail: a wrong swizzle, a missing wgmma.wait_group, a wrong mbarrier parity, a
consumer that skips its full-barrier wait.
"""
from __future__ import annotations

import time
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from linear.backends import BackendUnavailable
from linear.backends.emulate import EmulationError, EmulatorRuntime
from linear.backends.tensor_map import tensor_map

KERNELS = Path(__file__).parent / "kernels"
BF16 = np.dtype(ml_dtypes.bfloat16)
TYPES = {"bfloat16": ("__nv_bfloat16", BF16), "float16": ("__half", np.dtype(np.float16)),
         "tf32": ("float", np.dtype(np.float32))}
SWIZZLE_FIELD = {0: 0, 128: 1, 64: 2, 32: 3}   # the descriptor's bits 62-63 by span in bytes
CHUNKS = {0: 1, 32: 2, 64: 4, 128: 8}           # W: 16-byte chunks per swizzle row


@pytest.fixture(scope="module")
def emu() -> EmulatorRuntime:
    try:
        return EmulatorRuntime(kernel_dir=KERNELS, timeout_s=60)
    except BackendUnavailable as error:
        require(False, f"the emulate backend ({error})")


# ---- CuTe layouts, evaluated -------------------------------------------------------------------

def cute_offset(shape, stride, coordinate: int) -> int:
    """The offset of a 1-d coordinate in a (nested) CuTe layout: colexicographic, as CuTe's."""
    if isinstance(shape, int):
        return (coordinate % shape) * stride
    total = 0
    for s, d in zip(shape, stride):
        size = int(np.prod(_flat(s)))
        total += cute_offset(s, d, coordinate % size)
        coordinate //= size
    return total


def _flat(shape):
    return [shape] if isinstance(shape, int) else [x for s in shape for x in _flat(s)]


def swizzle(address: int, span: int) -> int:
    """CuTe's Swizzle<B,4,3> on a byte address: bits [4, 4+B) ^= bits [7, 7+B)."""
    b = {0: 0, 32: 1, 64: 2, 128: 3}[span]
    return address ^ (((address >> 7) & ((1 << b) - 1)) << 4)


def canonical_layout(major: str, span: int, T: int, lbo: int, sbo: int):
    """make_gmma_desc's canonical layouts, in elements (LBO, SBO given in elements): (mn, k) modes."""
    W = CHUNKS[span]
    if major == "K":
        if span == 0:
            return ((8, 64), (T, 2)), ((T, sbo), (1, lbo))
        return ((8, 64), (T, 2)), ((W * T, sbo), (1, T))
    if span == 0:
        return ((T, 1, 64), (8, 4)), ((1, T, sbo), (T, lbo))
    return ((T, W, 64), (8, 4)), ((1, T, lbo), (W * T, sbo))


def place(matrix: np.ndarray, major: str, span: int, lbo: int, sbo: int, start: int, image: np.ndarray) -> None:
    """Writes matrix (MN x K) into the shared-memory image (bytes) at the canonical layout's addresses."""
    size = matrix.dtype.itemsize
    T = 16 // size
    (shape_mn, shape_k), (stride_mn, stride_k) = canonical_layout(major, span, T, lbo // size, sbo // size)
    raw = matrix.view(np.uint8).reshape(matrix.shape[0], matrix.shape[1], size)
    for mn in range(matrix.shape[0]):
        for k in range(matrix.shape[1]):
            offset = cute_offset(shape_mn, stride_mn, mn) + cute_offset(shape_k, stride_k, k)
            address = swizzle(start + offset * size, span)
            image[address:address + size] = raw[mn, k]


def descriptor(lbo: int, sbo: int, span: int) -> np.uint64:
    """mma_sm90_desc.hpp's fields but the start address (the kernel adds it): LBO, SBO >> 4, layout type."""
    return np.uint64((lbo >> 4) << 16 | (sbo >> 4) << 32 | SWIZZLE_FIELD[span] << 62)


def accumulator_position(thread: int, value: int) -> tuple[int, int]:
    """CLayout_64xN: ((4,8,4),(2,2,N/8)):((128,1,16),(64,8,512)) -> m + 64·n."""
    index = cute_offset((4, 8, 4), (128, 1, 16), thread) + cute_offset((2, 2, 32), (64, 8, 512), value)
    return index % 64, index // 64


def a_register_position(thread: int, value: int, size: int) -> tuple[int, int]:
    """ALayout_64x16 (16-bit: ((4,8,4),(2,2,2)):((128,1,16),(64,8,512))) or ALayout_64x8 (tf32:
    ((4,8,4),(2,2)):((64,1,16),(8,256))) -> m + 64·k."""
    if size == 2:
        index = cute_offset((4, 8, 4), (128, 1, 16), thread) + cute_offset((2, 2, 2), (64, 8, 512), value)
    else:
        index = cute_offset((4, 8, 4), (64, 1, 16), thread) + cute_offset((2, 2), (8, 256), value)
    return index % 64, index // 64


def registers_to_matrix(d: np.ndarray, n: int) -> np.ndarray:
    out = np.full((64, n), np.nan)
    for t in range(128):
        for i in range(n // 2):
            out[accumulator_position(t, i)] = d[t, i]
    return out


def tensor_core_values(a: np.ndarray, kind: str) -> np.ndarray:
    """What the tensor core multiplies: 16-bit values exactly, tf32 as the top 19 bits of the float."""
    if kind == "tf32":
        return (a.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


# ---- wgmma -------------------------------------------------------------------------------------

LAYOUTS = {  # (major, swizzle span, LBO, SBO) for a 64- or N-row operand of 32 bytes of K
    "K-none": ("K", 0, 128, 256), "K-none-lbo-far": ("K", 0, 1024 * 4, 128),
    "K-32B": ("K", 32, 16, 512), "K-64B": ("K", 64, 16, 1024), "K-128B": ("K", 128, 16, 1024),
    "K-128B-sbo-gap": ("K", 128, 16, 2048),
    "MN-none": ("MN", 0, 1024, 128), "MN-32B": ("MN", 32, 512, 256), "MN-64B": ("MN", 64, 1024, 512),
    "MN-128B": ("MN", 128, 4096, 1024),
}


def run_wgmma(emu, kind, n, layout_a, layout_b, *, scale_d=1, scale_a=1, scale_b=1, a_from_registers=False,
              wait=True, wrong_swizzle_b=None, seed=0, kernel=None):
    """One m64nNk wgmma: A and B random, placed by the CuTe layouts; returns (D as 64 x N, expected)."""
    rng = np.random.default_rng(seed)
    ctype, dtype = TYPES[kind]
    k = 8 if kind == "tf32" else 16
    a = rng.standard_normal((64, k)).astype(dtype)
    b = rng.standard_normal((k, n)).astype(dtype)
    c = rng.standard_normal((64, n)).astype(np.float32)
    image = np.zeros(65536, np.uint8)
    a_offset, b_offset = 0, 32768
    major_a, span_a, lbo_a, sbo_a = LAYOUTS[layout_a]
    major_b, span_b, lbo_b, sbo_b = LAYOUTS[layout_b]
    if not a_from_registers:
        place(a, major_a, span_a, lbo_a, sbo_a, a_offset, image)
    place(np.ascontiguousarray(b.T), major_b, span_b, lbo_b, sbo_b, b_offset, image)
    if wrong_swizzle_b is not None:
        span_b = wrong_swizzle_b
    registers = np.zeros((128, 4), np.uint32)
    if a_from_registers:  # ALayout: register j of thread t holds value(s) 2j, 2j+1 (16-bit) or j (tf32)
        size = dtype.itemsize
        bits = a.view(np.uint16 if size == 2 else np.uint32).astype(np.uint32)
        for t in range(128):
            for v in range(8 if size == 2 else 4):
                m, kk = a_register_position(t, v, size)
                registers[t, v // 2 if size == 2 else v] |= bits[m, kk] << (16 * (v % 2) if size == 2 else 0)
    d_in = np.zeros((128, n // 2), np.float32)
    for t in range(128):
        for i in range(n // 2):
            d_in[t, i] = c[accumulator_position(t, i)]
    d_out = np.full((128, n // 2), np.nan, np.float32)
    name = f"wgmma_tile<{n}, {ctype}, {str(a_from_registers).lower()}>"
    emu.function(*(kernel or ("hopper.cu", name)))(
        (1,), (128,), (image, np.int32(len(image)), np.int32(a_offset), np.int32(b_offset),
                       descriptor(lbo_a, sbo_a, span_a), descriptor(lbo_b, sbo_b, span_b), registers.reshape(-1),
                       np.int32(scale_d), np.int32(scale_a), np.int32(scale_b), np.int32(major_a == "MN"),
                       np.int32(major_b == "MN"), d_in, d_out) + ((np.int32(wait), np.int32(1)) if kernel is None else ()),
        shared_mem=len(image) + 1024)
    expected = (scale_a * tensor_core_values(a, kind)) @ (scale_b * tensor_core_values(b, kind)) + scale_d * c
    return registers_to_matrix(d_out, n), expected


def rel(out, ref) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("kind", ["bfloat16", "float16"])
@pytest.mark.parametrize("layout_a,layout_b", [
    ("K-128B", "K-128B"), ("K-none", "K-none-lbo-far"), ("K-32B", "K-64B"), ("K-128B-sbo-gap", "K-none"),
    ("MN-128B", "MN-128B"), ("MN-none", "MN-64B"), ("MN-32B", "K-128B"), ("K-64B", "MN-32B")])
def test_wgmma_16_bit_reads_every_canonical_layout(emu, kind, layout_a, layout_b):
    out, expected = run_wgmma(emu, kind, 64, layout_a, layout_b)
    assert rel(out, expected) < 1e-6


@pytest.mark.parametrize("layout", ["K-none", "K-32B", "K-64B", "K-128B"])
def test_wgmma_tf32_k8(emu, layout):
    out, expected = run_wgmma(emu, "tf32", 64, layout, layout)
    assert rel(out, expected) < 1e-6


@pytest.mark.parametrize("n", [8, 256])
def test_wgmma_n_extremes(emu, n):
    out, expected = run_wgmma(emu, "bfloat16", n, "K-128B", "MN-128B" if n == 256 else "K-none", seed=n)
    assert rel(out, expected) < 1e-6


def test_wgmma_scales(emu):
    out, expected = run_wgmma(emu, "bfloat16", 64, "K-128B", "K-128B", scale_d=0, scale_a=-1, scale_b=1)
    assert rel(out, expected) < 1e-6
    out, expected = run_wgmma(emu, "float16", 64, "MN-64B", "K-32B", scale_a=1, scale_b=-1)
    assert rel(out, expected) < 1e-6


@pytest.mark.parametrize("kind", ["bfloat16", "tf32"])
def test_wgmma_a_from_registers(emu, kind):
    out, expected = run_wgmma(emu, kind, 64, "K-128B", "K-128B", a_from_registers=True)
    assert rel(out, expected) < 1e-6


def test_wgmma_f16_accumulators(emu):
    """.f16.f16.f16: value i of the CLayout is half i % 2 of register i / 2; the result rounded to f16."""
    rng = np.random.default_rng(8)
    n = 64
    a = rng.standard_normal((64, 16)).astype(np.float16)
    b = rng.standard_normal((16, n)).astype(np.float16)
    c = rng.standard_normal((64, n)).astype(np.float16)
    image = np.zeros(65536, np.uint8)
    place(a, "MN", 64, 1024, 512, 0, image)
    place(np.ascontiguousarray(b.T), "K", 32, 16, 512, 32768, image)
    values = np.zeros((128, n // 2), np.float16)
    for t in range(128):
        for i in range(n // 2):
            values[t, i] = c[accumulator_position(t, i)]
    d_out = np.full((128, n // 4), 0x7E007E00, np.uint32)
    emu.function("hopper.cu", f"wgmma_tile_f16_accumulator<{n}>")(
        (1,), (128,), (image, np.int32(len(image)), descriptor(1024, 512, 64), descriptor(16, 512, 32),
                       values.view(np.uint32), d_out), shared_mem=len(image) + 1024)
    out = registers_to_matrix(d_out.view(np.float16).astype(np.float64), n)
    expected = a.astype(np.float64) @ b.astype(np.float64) + c
    assert rel(out, expected) < 1e-3
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float64))  # f16 values


def test_wgmma_through_inline_ptx(emu):
    """The translator's wgmma forms: tf32 with A from registers (m64n8k8, imm-scale-b -1, a predicate
    scale-d), f16 from descriptors with imm-trans-a 1 and imm-scale-a -1 (m64n16k16)."""
    out, expected = run_wgmma(emu, "tf32", 8, "K-128B", "K-64B", a_from_registers=True, scale_b=-1,
                              kernel=("hopper_ptx_probe.cu", "wgmma_ptx_tf32_rs"))
    assert rel(out, expected) < 1e-6
    out, expected = run_wgmma(emu, "float16", 16, "MN-64B", "K-32B", scale_a=-1,
                              kernel=("hopper_ptx_probe.cu", "wgmma_ptx_f16_ss"))
    assert rel(out, expected) < 1e-6


def test_mbarrier_and_bulk_copies_through_inline_ptx(emu):
    out = np.full(3, -1, np.int32)
    emu.function("hopper_ptx_probe.cu", "mbarrier_ptx_phases")((1,), (1,), (out,))
    np.testing.assert_array_equal(out, [1, 1, 7])
    rng = np.random.default_rng(9)
    data = rng.standard_normal(8 * 32).astype(np.float32)   # as shared memory will hold the box
    array = np.full((16, 40), np.nan, np.float32)
    tmap = tensor_map(emu, array, (8, 32))
    emu.function("hopper_ptx_probe.cu", "bulk_ptx")((1,), (1,), (tmap, data.view(np.uint8), np.int32(data.nbytes)),
                                                    shared_mem=data.nbytes + 1024)
    expected = np.full_like(array, np.nan)
    expected[:8, :32] = data.reshape(8, 32)
    np.testing.assert_array_equal(array, expected)


def test_wgmma_accumulator_layout_is_clayout_64xn(emu):
    """D = A·B with A = e_0 column (A[m, 0] = m) and B[0, n] = 1, then B[0, n] = n, A[m, 0] = 1: each
    register's value names its row, then its column."""
    n = 64
    for by_row in (True, False):
        image = np.zeros(65536, np.uint8)
        a = np.zeros((64, 16), BF16)
        b = np.zeros((16, n), BF16)
        a[:, 0] = np.arange(64) if by_row else 1
        b[0, :] = 1 if by_row else np.arange(n)
        place(a, "K", 128, 16, 1024, 0, image)
        place(np.ascontiguousarray(b.T), "K", 128, 16, 1024, 32768, image)
        d_out = np.full((128, n // 2), np.nan, np.float32)
        emu.function("hopper.cu", f"wgmma_tile<{n}, __nv_bfloat16, false>")(
            (1,), (128,), (image, np.int32(len(image)), np.int32(0), np.int32(32768), descriptor(16, 1024, 128),
                           descriptor(16, 1024, 128), np.zeros(512, np.uint32), np.int32(0), np.int32(1),
                           np.int32(1), np.int32(0), np.int32(0), np.zeros((128, n // 2), np.float32), d_out,
                           np.int32(1), np.int32(1)),
            shared_mem=len(image) + 1024)
        for t in range(128):
            for i in range(n // 2):
                assert d_out[t, i] == accumulator_position(t, i)[0 if by_row else 1], (t, i, by_row)


def test_wgmma_wrong_swizzle_fails(emu):
    """Negative control: B placed with the 128B swizzle, described as 64B."""
    out, expected = run_wgmma(emu, "bfloat16", 64, "K-128B", "K-128B", wrong_swizzle_b=64)
    assert rel(out, expected) > 0.1


def test_wgmma_missing_wait_reads_poison(emu):
    """Negative control: the accumulators read before wgmma.wait_group are NaN."""
    out, _ = run_wgmma(emu, "bfloat16", 64, "K-128B", "K-128B", wait=False)
    assert np.isnan(out).all()


def test_wgmma_reads_its_shared_operands_at_the_wait(emu):
    """Two chained wgmma (D = 2·A·B); zeroing the operands before the wait makes D zero, not A·B."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((64, 16)).astype(BF16)
    b = rng.standard_normal((16, 64)).astype(BF16)
    image = np.zeros(16384, np.uint8)  # A at 0, B at 8192 (hopper.cu)
    place(a, "K", 128, 16, 1024, 0, image)
    place(np.ascontiguousarray(b.T), "K", 128, 16, 1024, 8192, image)
    results = {}
    for overwrite in (False, True):
        d_out = np.full((128, 32), np.nan, np.float32)
        emu.function("hopper.cu", f"wgmma_chain<64, {str(overwrite).lower()}>")(
            (1,), (128,), (image, np.int32(len(image)), descriptor(16, 1024, 128), descriptor(16, 1024, 128), d_out),
            shared_mem=len(image) + 1024)
        results[overwrite] = registers_to_matrix(d_out, 64)
    expected = 2 * a.astype(np.float64) @ b.astype(np.float64)
    assert rel(results[False], expected) < 1e-6
    assert np.all(results[True] == 0)


# ---- TMA ---------------------------------------------------------------------------------------

def expected_box(array: np.ndarray, coords, box, strides, span: int, base_offset: int = 0) -> np.ndarray:
    """The shared-memory image of a TMA tile load, from the driver API's rules: along axis i (numpy
    order) ceil(box/stride) elements at coords + stride·n, the innermost axis unstrided, zero out of
    bounds, packed innermost fastest; then each 16-byte chunk at shared address a moved to swizzle(a)."""
    counts = [-(-b // s) for b, s in zip(box, strides)]
    strides = list(strides[:-1]) + [1]
    packed = np.zeros(counts, array.dtype)
    for index in np.ndindex(*counts):
        position = tuple(c + s * n for c, s, n in zip(coords, strides, index))
        if all(0 <= p < d for p, d in zip(position, array.shape)):
            packed[index] = array[position]
    raw = packed.reshape(-1).view(np.uint8)
    out = np.zeros_like(raw)
    for offset in range(0, len(raw), 16):
        to = swizzle(base_offset + offset, span) - base_offset
        out[to:to + 16] = raw[offset:offset + 16]
    return out


def run_tma_box(emu, array, coords, box, span, strides=None, wait=True, dst_offset=0):
    strides = strides or (1,) * array.ndim
    tmap = tensor_map(emu, array, box, swizzle=span, element_strides=strides)
    counts = [-(-b // s) for b, s in zip(box, list(strides[:-1]) + [1])]
    nbytes = int(np.prod(counts)) * array.itemsize
    out = np.zeros(nbytes, np.uint8)
    emu.function("hopper.cu", f"tma_box<{array.ndim}>")(
        (1,), (64,), (tmap, np.array(coords[::-1], np.int32), np.int32(nbytes), np.int32(dst_offset), out,
                      np.int32(wait)),
        shared_mem=nbytes + dst_offset + 1024 + 64)
    return out


@pytest.mark.parametrize("span", [0, 32, 64, 128])
def test_tma_2d_box_with_swizzle_and_out_of_bounds(emu, span):
    rng = np.random.default_rng(span)
    array = rng.standard_normal((50, 72)).astype(BF16)  # 144-byte rows
    inner = max(span, 32) // 2                          # box rows of the swizzle's span (32 B without)
    for coords in [(0, 0), (40, 64), (-3, -5)]:         # interior, past both ends, before both starts
        out = run_tma_box(emu, array, coords, (16, inner), span)
        np.testing.assert_array_equal(out, expected_box(array, coords, (16, inner), (1, 1), span), err_msg=str(coords))


def test_tma_out_of_bounds_nan_fill(emu):
    """FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA: out-of-bounds elements load as NaN (the emulator's canonical
    NaN; the hardware's bit pattern is not documented), in-bounds ones as they are."""
    array = np.random.default_rng(11).standard_normal((10, 40)).astype(np.float32)
    tmap = tensor_map(emu, array, (4, 16), oob_nan=True)
    out = np.zeros(4 * 16 * 4, np.uint8)
    emu.function("hopper.cu", "tma_box<2>")(
        (1,), (64,), (tmap, np.array([32, 8], np.int32), np.int32(out.size), np.int32(0), out, np.int32(1)),
        shared_mem=out.size + 1024 + 64)
    box = out.view(np.float32).reshape(4, 16)
    np.testing.assert_array_equal(box[:2, :8], array[8:10, 32:40])
    assert np.isnan(box[2:, :]).all() and np.isnan(box[:, 8:]).all()


def test_tma_box_placement_is_by_shared_address(emu):
    """A 128B-swizzled box written 512 bytes past a 1024-byte boundary takes the pattern of its address."""
    array = np.random.default_rng(1).standard_normal((8, 64)).astype(np.float16)
    out = run_tma_box(emu, array, (0, 0), (8, 64), 128, dst_offset=512)
    np.testing.assert_array_equal(out, expected_box(array, (0, 0), (8, 64), (1, 1), 128, base_offset=512))


def test_tma_1d_3d_and_5d_boxes_with_element_strides(emu):
    rng = np.random.default_rng(3)
    array = rng.standard_normal((5, 9, 16)).astype(np.float32)
    out = run_tma_box(emu, array, (1, -2, 4), (4, 6, 8), 0, strides=(2, 3, 1))
    np.testing.assert_array_equal(out, expected_box(array, (1, -2, 4), (4, 6, 8), (2, 3, 1), 0))
    array1 = rng.standard_normal(100).astype(np.float64)
    out = run_tma_box(emu, array1, (90,), (16,), 0)
    np.testing.assert_array_equal(out, expected_box(array1, (90,), (16,), (1,), 0))
    array5 = rng.integers(0, 2**31, (3, 2, 4, 5, 8)).astype(np.int32)
    out = run_tma_box(emu, array5, (1, 0, 2, -1, 4), (2, 2, 2, 3, 4), 0)
    np.testing.assert_array_equal(out, expected_box(array5, (1, 0, 2, -1, 4), (2, 2, 2, 3, 4), (1,) * 5, 0))


def test_tma_wrong_swizzle_is_told_apart(emu):
    """Negative control: the 128B image differs from the 64B and unswizzled expectations."""
    array = np.random.default_rng(2).standard_normal((16, 64)).astype(BF16)
    out = run_tma_box(emu, array, (0, 0), (16, 64), 128)
    for wrong in (0, 64):
        assert not np.array_equal(out, expected_box(array, (0, 0), (16, 64), (1, 1), wrong))


def test_tma_without_the_barrier_wait_reads_stale_shared_memory(emu):
    """Negative control: threads that skip the mbarrier wait read shared memory before the copy lands."""
    array = np.random.default_rng(4).standard_normal((16, 64)).astype(BF16)
    out = run_tma_box(emu, array, (0, 0), (16, 64), 128, wait=False)
    assert np.all(out == 0xFF)  # the emulator's poison: the copy never landed


def test_tma_store_and_bulk_copies(emu):
    rng = np.random.default_rng(6)
    array = np.full((20, 64), np.nan, np.float32)  # 256-byte rows
    box = (8, 32)                                  # 128-byte box rows, 128B swizzle
    values = rng.standard_normal(box).astype(np.float32)
    coords = (16, 40)                              # rows 16..23 (20..23 out of bounds), columns 40..71
    image = expected_box(values, (0, 0), box, (1, 1), 128)  # the box as TMA would have put it in shared memory
    tmap = tensor_map(emu, array, box, swizzle=128)
    emu.function("hopper.cu", "tma_store_box<2>")(
        (1,), (32,), (tmap, np.array(coords[::-1], np.int32), image, np.int32(len(image))),
        shared_mem=len(image) + 1024)
    expected = np.full_like(array, np.nan)
    expected[16:20, 40:64] = values[:4, :24]
    np.testing.assert_array_equal(array, expected)
    data = rng.integers(0, 256, 4096).astype(np.uint8)
    out = np.zeros_like(data)
    emu.function("hopper.cu", "bulk_round_trip")((1,), (32,), (data, out, np.int32(len(data))),
                                                  shared_mem=len(data) + 1024 + 64)
    np.testing.assert_array_equal(out, data)


def test_tensor_map_checks_are_the_drivers(emu):
    a = np.zeros((64, 64), BF16)
    cases = [
        (dict(array=a, box=(8, 300)), "boxDim[0] = 300"),
        (dict(array=a, box=(8, 4)), "not a multiple of 16"),
        (dict(array=a, box=(8, 128), swizzle=128), "more than the 128-byte span"),
        (dict(array=a, box=(8, 64), element_strides=(9, 1)), "elementStrides[1] = 9"),
        (dict(array=a[:, 1:], box=(8, 8)), "globalAddress"),
        (dict(array=a[:, :60], box=(8, 8)), None),  # 120-byte rows of a 128-byte-strided array: fine
        (dict(array=np.zeros((4, 60), BF16)[:, :56], box=(2, 8)), "globalStrides[0] = 120"),
        (dict(array=np.zeros((2,) * 6, np.float32), box=(1,) * 6), "tensorRank 6"),
    ]
    for kwargs, message in cases:
        array = kwargs.pop("array")
        if message is None:
            tensor_map(emu, array, **kwargs)
            continue
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            tensor_map(emu, array, **kwargs)


# ---- mbarrier ----------------------------------------------------------------------------------

def test_mbarrier_phase_rules(emu):
    out = np.full(16, -7, np.int32)
    emu.function("hopper.cu", "mbarrier_phases")((1,), (1,), (out,))
    np.testing.assert_array_equal(out[:14], [0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 1, 0, 1, -1])


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_mbarrier_ring_passes_every_round(schedule):
    runtime = EmulatorRuntime(kernel_dir=KERNELS, timeout_s=60, schedule=schedule, seed=3)
    rounds = 7
    out = np.full((rounds, 32), -1, np.int32)
    runtime.function("hopper.cu", "mbarrier_ring")((1,), (64,), (np.int32(rounds), np.int32(0), out))
    np.testing.assert_array_equal(out, 1000 * np.arange(rounds)[:, None] + np.arange(32))


def test_mbarrier_wrong_parity_is_a_deadlock_report(emu):
    out = np.full((4, 32), -1, np.int32)
    with pytest.raises(EmulationError, match=r"deadlock.*threads \(32, 0, 0\)\.\.\(63, 0, 0\) wait for the phase of "
                                             r"parity 1 of the mbarrier at shared address 0x[0-9a-f]+.*hopper\.cu:\d+"):
        emu.function("hopper.cu", "mbarrier_ring")((1,), (64,), (np.int32(4), np.int32(1), out))


@pytest.mark.parametrize("what,message", [(0, "not initialized"), (1, "more threads arrive than it expects"),
                                          (2, "count 0 is outside"), (3, "warpgroup-uniform")])
def test_hopper_misuse_is_an_error(emu, what, message):
    with pytest.raises(EmulationError, match=message):
        emu.function("hopper.cu", "hopper_misuse")((1,), (128,), (np.int32(what),))


@pytest.mark.parametrize("what,message", [
    (0, "shared memory address 0x[0-9a-f]+ is not 128-byte aligned"), (1, "a 3-d copy with a tensor map of rank 2"),
    (2, "was not made by cuTensorMapEncodeTiled"), (3, "a descriptor differs between threads of warpgroup 0"),
    (4, r"deadlock: .*threads \(0, 0, 0\)\.\.\(95, 0, 0\) wait for the rest of warpgroup 0 to issue its "
        r"wgmma.mma_async #0 \(issued by 96 of its 128 threads"),
    (5, "N = 12 is not one of 8, 16, .. 256")])
def test_tma_and_wgmma_misuse_is_an_error(emu, what, message):
    from linear.backends.tensor_map import TensorMap
    array = np.zeros((64, 64), BF16)
    tmap = TensorMap(bytes(128), array, (64, 64), 0) if what == 2 else tensor_map(emu, array, (64, 64))
    with pytest.raises(EmulationError, match=message):
        emu.function("hopper.cu", "async_misuse")((1,), (128,), (tmap, np.int32(what)), shared_mem=4096 + 1024)


# ---- End to end: TMA + mbarrier ring + wgmma -----------------------------------------------------

def run_gemm(emu, m, n, k, bn, b_mn_major, skip=0, seed=0, source="hopper_gemm.cu"):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(BF16)
    b = rng.standard_normal((k, n)).astype(BF16)
    c = np.full((m, n), np.nan, np.float32)
    map_a = tensor_map(emu, a, (128, 64), swizzle=128)
    map_b = (tensor_map(emu, b, (64, 64), swizzle=128) if b_mn_major
             else tensor_map(emu, np.ascontiguousarray(b.T), (bn, 64), swizzle=128))
    kernel = emu.function(source, f"hopper_gemm<{bn}, {str(b_mn_major).lower()}>")
    shared = 4 * (128 * 64 * 2 + bn * 64 * 2) + 1024 + 64
    start = time.perf_counter()
    kernel((-(-n // bn), -(-m // 128)), (384,), (map_a, map_b, c, np.int32(m), np.int32(n), np.int32(k), np.int32(skip)),
           shared_mem=shared)
    seconds = time.perf_counter() - start
    return c, a.astype(np.float64) @ b.astype(np.float64), seconds


@pytest.mark.parametrize("bn,b_mn_major", [(256, False), (128, True)])
def test_hopper_gemm_256_cubed(emu, bn, b_mn_major):
    c, expected, seconds = run_gemm(emu, 256, 256, 256, bn, b_mn_major)
    assert rel(c, expected) < 1e-5
    # Speed (issue 19): 256³ bf16 with one producer warp and two consumer warpgroups in <= 1 s; the
    # first call compiles, so time a second one.
    _, _, seconds = run_gemm(emu, 256, 256, 256, bn, b_mn_major, seed=1)
    print(f"hopper_gemm<{bn}, {b_mn_major}> 256^3: {seconds:.3f} s")
    assert seconds < 2.0


def test_hopper_gemm_through_inline_ptx(emu):
    """The same kernel with its mbarrier, TMA, setmaxnreg, fence and wgmma instructions written as inline PTX
    (hopper_gemm_ptx.cu), translated by the emulator: the asm strings a GPU would run."""
    c, expected, seconds = run_gemm(emu, 256, 256, 256, 128, True, source="hopper_gemm_ptx.cu")
    assert rel(c, expected) < 1e-5
    print(f"hopper_gemm_ptx<128, true> 256^3: {seconds:.3f} s")


def test_hopper_gemm_edges(emu):
    """M, N, K that are not tile multiples: TMA zero-fills the loads past the ends."""
    c, expected, _ = run_gemm(emu, 200, 136, 104, 128, True, seed=2)
    assert rel(c, expected) < 1e-5


def test_hopper_gemm_without_the_full_barrier_wait_fails(emu):
    """Negative control: consumers that skip the full-barrier wait multiply shared memory the loads
    have not reached (the emulator's 0xFF poison: NaN in bf16)."""
    c, expected, _ = run_gemm(emu, 256, 256, 256, 256, False, skip=1)
    assert not np.isfinite(c).any()


# ---- The sanitizers on the new paths -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["memcheck", "racecheck", "initcheck", "synccheck"])
def test_sanitizers_pass_the_hopper_gemm(mode):
    """TMA writes, wgmma reads and the mbarriers that order them, seen by every sanitize mode: no false
    report on a correct kernel whose ring wraps around (8 k-tiles through 4 slots)."""
    emu = EmulatorRuntime(kernel_dir=KERNELS, timeout_s=120, sanitize=mode)
    c, expected, _ = run_gemm(emu, 128, 128, 512, 128, True)
    assert rel(c, expected) < 1e-5
    out = np.full((6, 32), -1, np.int32)  # plain shared-memory traffic ordered only by mbarriers
    emu.function("hopper.cu", "mbarrier_ring")((1,), (64,), (np.int32(6), np.int32(0), out))
    np.testing.assert_array_equal(out, 1000 * np.arange(6)[:, None] + np.arange(32))


def test_racecheck_reports_a_missing_proxy_fence():
    """Negative control: threads write wgmma's operands and sync, but never fence.proxy.async."""
    emu = EmulatorRuntime(kernel_dir=KERNELS, timeout_s=120, sanitize="racecheck")
    image = np.random.default_rng(7).integers(0, 255, 16384).astype(np.uint8)
    args = (image, np.int32(len(image)), np.int32(0), np.int32(8192), descriptor(16, 1024, 128),
            descriptor(16, 1024, 128), np.zeros(512, np.uint32), np.int32(0), np.int32(1), np.int32(1), np.int32(0),
            np.int32(0), np.zeros((128, 32), np.float32), np.zeros((128, 32), np.float32), np.int32(1))
    kernel = emu.function("hopper.cu", "wgmma_tile<64, __nv_bfloat16, false>")
    kernel((1,), (128,), args + (np.int32(1),), shared_mem=len(image) + 1024)
    with pytest.raises(EmulationError, match=r"no fence.proxy.async after the write \(at \S*hopper\.cu:\d+; the other at "
                                             r"\S*hopper\.cu:\d+\)"):
        kernel((1,), (128,), args + (np.int32(0),), shared_mem=len(image) + 1024)


def test_racecheck_reports_a_skipped_full_barrier_wait():
    """Negative control: TMA writes and wgmma reads of a slot that no mbarrier orders are a race."""
    emu = EmulatorRuntime(kernel_dir=KERNELS, timeout_s=120, sanitize="racecheck")
    # Both lines are the kernel's: the wgmma's wait that reads the slot, the TMA load that writes it.
    with pytest.raises(EmulationError, match=r"racecheck: .* of the dynamic shared memory .*\(at \S*hopper_gemm\.cu:\d+; "
                                             r"the other at \S*hopper_gemm\.cu:\d+\)"):
        run_gemm(emu, 128, 128, 512, 128, True, skip=1)


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_a_skipped_empty_barrier_wait_over_arrives(schedule):
    """Negative control: a producer that does not wait for its slots to be released arrives on a full
    barrier whose phase already has all its arrivals (the next round's before this one completed)."""
    emu = EmulatorRuntime(kernel_dir=KERNELS, timeout_s=120, schedule=schedule)
    with pytest.raises(EmulationError, match="more threads arrive than it expects"):
        run_gemm(emu, 128, 128, 512, 128, True, skip=2)


# ---- Thread-block clusters: not modelled, and a clear error -------------------------------------

@pytest.mark.parametrize("source,message", [
    ("__global__ void __cluster_dims__(2, 1, 1) k(float* x) { x[0] = 1; }",
     r"k\.cu:1:.*thread-block clusters \(__cluster_dims__\) are not modelled"),
    ('__global__ void k(float* x) { asm volatile("barrier.cluster.arrive;"); x[0] = 1; }',
     r"k\.cu:1: inline PTX: the PTX instruction `barrier.cluster.arrive` is not in the emulator's subset"),
    ('__global__ void k(float* x) { unsigned a = 0, r; asm volatile("mapa.shared::cluster.u32 %0, %1, 1;" '
     ': "=r"(r) : "r"(a)); x[0] = r; }', r"`mapa.shared::cluster.u32` is not in the emulator's subset"),
    ('__global__ void k(unsigned long long m, float* x) { asm volatile("cp.async.bulk.tensor.2d.shared::cluster.'
     'global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%0, %0}], [%0], %2;" :: "r"(0u), '
     '"l"(m), "h"((unsigned short)3)); x[0] = 1; }', r"multicast, cta_group\) are not modelled"),
])
def test_cluster_use_is_a_clear_error(tmp_path, source, message):
    (tmp_path / "k.cu").write_text(source + "\n")
    runtime = EmulatorRuntime(kernel_dir=tmp_path, timeout_s=60)
    with pytest.raises(EmulationError, match=message):
        runtime.function("k.cu", "k")
