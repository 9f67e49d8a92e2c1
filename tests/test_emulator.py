"""The emulator itself: CUDA's built-ins behave as documented, and bugs in kernels are caught.

Kernels: tests/kernels/builtins.cu (one kernel per group of built-ins), faults.cu (the negative
controls: each has a deliberate bug) and sgemm.cu (a tiled GEMM with two barriers per step).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from linear.backends import BackendUnavailable
from reference import rel_err

try:
    from linear.backends.emulate import EmulationError, EmulatorRuntime
except ImportError as error:  # pragma: no cover - the module is part of the package
    raise RuntimeError("linear.backends.emulate must import") from error

KERNELS = Path(__file__).parent / "kernels"
ALL_LANES = 0xFFFFFFFF


def runtime(**options) -> EmulatorRuntime:
    """A runtime on tests/kernels; the watchdog is a backstop, so no test can hang."""
    options.setdefault("timeout_s", 60)
    try:
        return EmulatorRuntime(kernel_dir=KERNELS, **options)
    except BackendUnavailable as error:
        require(False, f"the emulate backend ({error})")


@pytest.fixture(scope="module")
def emu() -> EmulatorRuntime:
    return runtime()


def i32(*values):
    return tuple(np.int32(v) for v in values)


# ---- Built-ins ---------------------------------------------------------------------------------

def test_thread_and_block_indices(emu):
    grid, block = (2, 3, 2), (4, 2, 3)
    threads = np.prod(grid) * np.prod(block)
    out = np.full((threads, 12), 0xDEADBEEF, np.uint32)
    emu.function("builtins.cu", "indices")(grid, block, (out,))
    # Ranks as the kernel computes them: x fastest, blocks outermost.
    bz, by, bx, tz, ty, tx = np.meshgrid(*(np.arange(n) for n in grid[::-1] + block[::-1]), indexing="ij")
    expected = np.stack([tx, ty, tz, bx, by, bz] + [np.full_like(tx, n) for n in block + grid], axis=-1)
    np.testing.assert_array_equal(out, expected.reshape(threads, 12))


def test_syncthreads_count_and_or(emu):
    rng = np.random.default_rng(1)
    predicate = np.concatenate([rng.integers(0, 2, 96) * rng.integers(1, 9, 96),  # some zero
                                rng.integers(1, 9, 96),                           # all true
                                np.zeros(96, int)]).astype(np.int32)              # all false
    out = np.full((3 * 96, 3), -7, np.int32)
    emu.function("builtins.cu", "block_votes")((3,), (96,), (predicate, out))
    for block, p in enumerate(predicate.reshape(3, 96) != 0):
        np.testing.assert_array_equal(out[96 * block:96 * (block + 1)], [[p.sum(), p.all(), p.any()]] * 96)


@pytest.mark.parametrize("width,delta", [(32, 1), (32, 5), (8, 3), (8, 9)])
def test_warp_collectives(emu, width, delta):
    rng = np.random.default_rng(width * 100 + delta)
    values = rng.integers(-1000, 1000, 64).astype(np.int32)
    out = np.full((64, 10), -7, np.int32)
    emu.function("builtins.cu", "warp_collectives")((1,), (64,), (values, out) + i32(width, delta))

    # The source lane of each shuffle, from the CUDA programming guide: lanes form segments of
    # `width`; up/down leave a lane's value unchanged when the source is outside its segment, xor
    # may reach earlier segments but not later ones.
    lane = np.arange(64) % 32
    warp = np.arange(64) - lane
    segment = lane & ~(width - 1)
    source = {
        "idx": segment + ((lane * 7 + 3) & (width - 1)),
        "up": np.where(lane - segment >= delta, lane - delta, lane),
        "down": np.where(lane - segment + delta < width, lane + delta, lane),
        "xor": np.where((lane ^ delta) < segment + width, lane ^ delta, lane),
    }
    for column, op in enumerate(["idx", "up", "down", "xor"]):
        np.testing.assert_array_equal(out[:, column], values[warp + source[op]], err_msg=op)

    odd = (values & 1).reshape(2, 32).astype(bool)
    ballot = (odd * (1 << np.arange(32, dtype=np.int64))).sum(axis=1).astype(np.uint32).view(np.int32)
    np.testing.assert_array_equal(out[:, 4], np.repeat(ballot, 32))
    np.testing.assert_array_equal(out[:, 5], np.repeat(odd.all(axis=1) + 2 * odd.any(axis=1), 32))
    np.testing.assert_array_equal(out[:, 6], np.repeat(values.reshape(2, 32).sum(axis=1), 32))
    key = (values & 3).reshape(2, 32)
    match = [sum(1 << j for j in range(32) if key[w, j] == key[w, i]) for w in range(2) for i in range(32)]
    np.testing.assert_array_equal(out[:, 7], np.array(match, np.uint32).view(np.int32))
    np.testing.assert_array_equal(out[:, 8], values[np.arange(64) ^ 1])
    np.testing.assert_array_equal(out[:, 9], values[warp + (lane ^ 4)])


@pytest.mark.parametrize("schedule", ["forward", "reverse"])
def test_syncwarp_orders_shared_memory(schedule):
    values = np.arange(100, 164, dtype=np.int32)
    out = np.full(64, -7, np.int32)
    runtime(schedule=schedule).function("builtins.cu", "syncwarp_exchange")((1,), (64,), (values, out))
    np.testing.assert_array_equal(out, np.roll(values.reshape(2, 32), -1, axis=1).ravel())


def test_atomics(emu):
    n = 2 * 96
    ints = np.array([0, 0, -1, 1000, 0], np.int32)
    uints = np.array([ALL_LANES, 0, 0, 0, 0], np.uint32)
    floats, doubles = np.zeros(1, np.float32), np.zeros(1, np.float64)
    olds = np.full(n, -7, np.int32)
    emu.function("builtins.cu", "atomics")((2,), (96,), (ints, uints, floats, doubles, olds))
    t = np.arange(n)
    np.testing.assert_array_equal(np.sort(olds), t)  # atomicAdd returned every old value once
    np.testing.assert_array_equal(ints, [n, -t.sum(), (t * 37 % 101).max(), (t * 37 % 101 - 50).min(), 2 * n])
    xor_bits = sum(1 << k for k in range(7) if (t % 7 == k).sum() % 2)
    np.testing.assert_array_equal(uints, [0, ALL_LANES, xor_bits, n % 10, (-n) % 10])
    assert floats[0] == 0.5 * n and doubles[0] == 0.25 * n


def test_vector_types_have_cuda_sizes_and_alignments(emu):
    # (sizeof, alignof) from CUDA's vector_types.h, in the kernel's order.
    cuda = [(2, 2), (4, 4), (4, 4), (8, 8), (8, 8), (12, 4), (16, 16), (8, 8), (12, 4), (16, 16), (16, 16),
            (24, 8), (16, 16), (8, 8), (12, 4), (2, 2), (4, 4), (2, 2), (4, 4)]
    out = np.full(2 * len(cuda), -1, np.int32)
    emu.function("builtins.cu", "vector_layout")((1,), (1,), (out,))
    assert [tuple(p) for p in out.reshape(-1, 2)] == cuda


def test_float4_loads_and_stores(emu):
    values = np.random.default_rng(2).standard_normal(4 * 37).astype(np.float32)
    out = np.full_like(values, np.nan)
    emu.function("builtins.cu", "scale_float4")((2,), (32,), (values, out, np.int32(37)))
    np.testing.assert_array_equal(out, 2 * values)


def _float32_cases(rng) -> np.ndarray:
    """Floats that exercise rounding to 16 bits: a wide random range, exact ties between
    neighbouring halves and bfloat16s, half subnormals, overflow, infinities, zeros, NaN."""
    import ml_dtypes
    wide = rng.choice([-1, 1], 2000) * np.exp2(rng.uniform(-30, 18, 2000))
    halves = rng.integers(0, 0x7BFF, 500, dtype=np.uint16).view(np.float16).astype(np.float32)
    half_ties = halves + np.spacing(halves.astype(np.float16)).astype(np.float32) / 2
    bf16 = rng.integers(0, 0x7F00, 500, dtype=np.uint16).view(ml_dtypes.bfloat16).astype(np.float32)
    bf16_ties = (bf16.view(np.uint32) + 0x8000).view(np.float32)
    subnormal_ties = (np.arange(1, 200) + 0.5) * np.float32(2.0 ** -24)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 6.1e-5, 2.0 ** -25, 2.0 ** -26]
    return np.concatenate([wide, halves, half_ties, -half_ties, bf16, bf16_ties, subnormal_ties,
                           special]).astype(np.float32)


def _same_bits(out16: np.ndarray, expected: np.ndarray) -> None:
    """Equal bit patterns, except that any NaN matches any NaN."""
    out_bits, expected_bits = out16.view(np.uint16), expected.view(np.uint16)
    nan = np.isnan(expected.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(out16.astype(np.float32)), nan)
    np.testing.assert_array_equal(out_bits[~nan], expected_bits[~nan])


def test_16bit_conversions_round_to_nearest_even(emu):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(3)
    values = _float32_cases(rng)
    # From double: a tie between halves nudged up by far less than a float's precision must round
    # up (one rounding), where going through float would round to even.
    halves = rng.integers(0, 0x7BFF, values.size, dtype=np.uint16).view(np.float16).astype(np.float64)
    doubles = halves + np.spacing(halves.astype(np.float16)).astype(np.float64) * (0.5 + 1e-12)
    n = values.size
    half, bf16, half_from_double = (np.zeros(n, np.float16), np.zeros(n, ml_dtypes.bfloat16), np.zeros(n, np.float16))
    emu.function("builtins.cu", "to_16bit")((n // 128 + 1,), (128,), (values, doubles, half, bf16, half_from_double,
                                                                      np.int32(n)))
    with np.errstate(over="ignore"):  # overflow to infinity is one of the cases
        _same_bits(half, values.astype(np.float16))
    _same_bits(bf16, values.astype(ml_dtypes.bfloat16))
    _same_bits(half_from_double, doubles.astype(np.float16))

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    as_half, as_bf16 = np.full(every.size, 1.5, np.float32), np.full(every.size, 1.5, np.float32)
    emu.function("builtins.cu", "from_16bit")((512,), (128,), (every.view(np.float16), every.view(ml_dtypes.bfloat16),
                                                                as_half, as_bf16, np.int32(every.size)))
    np.testing.assert_array_equal(as_half, every.view(np.float16).astype(np.float32))  # NaN == NaN here
    np.testing.assert_array_equal(as_bf16, every.view(ml_dtypes.bfloat16).astype(np.float32))


def test_half_arithmetic_matches_numpy(emu):
    rng = np.random.default_rng(4)
    a, b = (rng.standard_normal(1000).astype(np.float16) * 100 for _ in range(2))
    outputs = [np.zeros(1000, np.float16) for _ in range(3)]
    emu.function("builtins.cu", "half_arithmetic")((8,), (128,), (a, b, *outputs, np.int32(1000)))
    for out, expected in zip(outputs, [a + b, a * b, a / b]):
        _same_bits(out, expected)


def test_shared_memory_is_poisoned_at_every_block_start(emu):
    out = np.zeros((3, 4, 32), np.uint32)
    emu.function("builtins.cu", "shared_on_entry<32>")((3,), (32,), (out,), shared_mem=32 * 4)
    np.testing.assert_array_equal(out[:, :3], ALL_LANES)  # static, dynamic, device-function static
    np.testing.assert_array_equal(out[:, 3], 1)           # a poisoned float is NaN


def test_file_scope_dynamic_shared_memory(emu):
    values = np.random.default_rng(3).standard_normal(3 * 16).astype(np.float32)
    out = np.full_like(values, np.nan)
    emu.function("builtins.cu", "reverse_through_file_scope_shared")((3,), (16,), (values, out),
                                                                       shared_mem=16 * 4)
    np.testing.assert_array_equal(out, values.reshape(3, 16)[:, ::-1].ravel())


# ---- Schedules -----------------------------------------------------------------------------------

SCHEDULES = [dict(schedule="forward"), dict(schedule="reverse"), dict(schedule="shuffle", seed=1),
             dict(schedule="shuffle", seed=2)]


def test_schedules_agree_bitwise_on_correct_kernels():
    rng = np.random.default_rng(5)
    values = rng.standard_normal(4 * 256).astype(np.float32)
    a, b = rng.standard_normal((37, 29), dtype=np.float32), rng.standard_normal((29, 45), dtype=np.float32)
    sums, products = [], []
    for options in SCHEDULES:
        emu = runtime(**options)
        out = np.full(4, np.nan, np.float32)
        emu.function("faults.cu", "block_sum<true>")((4,), (256,), (values, out))
        sums.append(out)
        c = np.full((37, 45), np.nan, np.float32)
        emu.function("sgemm.cu", "sgemm<32, 32, 8, 4, 4>")((2, 2), (64,), (a, b, c) + i32(37, 45, 29))
        products.append(c)
    assert rel_err(sums[0], values.astype(np.float64).reshape(4, 256).sum(axis=1)) < 1e-6
    assert rel_err(products[0], a.astype(np.float64) @ b) < 1e-6
    for out in sums[1:]:
        np.testing.assert_array_equal(out, sums[0])
    for out in products[1:]:
        np.testing.assert_array_equal(out, products[0])


def test_a_race_shows_as_different_results_under_two_schedules():
    results = []
    for schedule in ("forward", "reverse"):
        out = np.full(2, -1, np.int32)
        runtime(schedule=schedule).function("faults.cu", "last_writer")((2,), (64,), (out,))
        results.append(out)
    np.testing.assert_array_equal(results[0], [63, 63])
    np.testing.assert_array_equal(results[1], [0, 0])


def test_the_portable_context_switch_gives_the_same_results(monkeypatch, tmp_path):
    """LINEAR_EMU_UCONTEXT=1 builds the ucontext fallback that machines other than x86-64 use."""
    values = np.random.default_rng(7).standard_normal(2 * 256).astype(np.float32)
    sums = []
    for ucontext in ("0", "1"):
        monkeypatch.setenv("LINEAR_EMU_UCONTEXT", ucontext)
        out = np.full(2, np.nan, np.float32)
        runtime(cache_dir=tmp_path / ucontext).function("faults.cu", "block_sum<true>")((2,), (256,), (values, out))
        sums.append(out)
    np.testing.assert_array_equal(sums[0], sums[1])
    assert rel_err(sums[1], values.astype(np.float64).reshape(2, 256).sum(axis=1)) < 1e-6


def test_schedule_from_the_environment(monkeypatch):
    monkeypatch.setenv("LINEAR_EMU_SCHEDULE", "reverse")
    assert runtime().settings.schedule == "reverse"
    monkeypatch.setenv("LINEAR_EMU_SCHEDULE", "sideways")
    with pytest.raises(ValueError, match="sideways"):
        runtime()


# ---- Negative controls ---------------------------------------------------------------------------

def test_a_missing_barrier_gives_a_wrong_sum(emu):
    values = np.random.default_rng(6).standard_normal(2 * 256).astype(np.float32) + 1
    out = np.full(2, np.nan, np.float32)
    emu.function("faults.cu", "block_sum<false>")((2,), (256,), (values, out))
    assert rel_err(out, values.astype(np.float64).reshape(2, 256).sum(axis=1)) > 1e-2


def test_deadlock_raises_with_kernel_and_block(emu):
    out = np.zeros(64, np.int32)
    with pytest.raises(EmulationError, match=r"barrier_against_shuffle: block \(0, 0, 0\).*deadlock"):
        emu.function("faults.cu", "barrier_against_shuffle")((1,), (64,), (out,))


def test_strict_mode_rejects_a_barrier_completed_by_exited_threads():
    out = np.zeros(64, np.int32)
    with pytest.raises(EmulationError, match=r"early_exit: block \(0, 0, 0\).*32 of 64 threads exited"):
        runtime().function("faults.cu", "early_exit")((2,), (64,), (out,))
    runtime(strict=False).function("faults.cu", "early_exit")((2,), (64,), (out,))
    np.testing.assert_array_equal(out, [1] * 32 + [0] * 32)


@pytest.mark.parametrize("n", [1024, 1022])  # the end of the copy at the guard page; 8 bytes before it
def test_out_of_bounds_write_is_reported(emu, n):
    out = np.full(n, np.nan, np.float32)
    with pytest.raises(EmulationError, match=rf"out-of-bounds write at byte {4 * n} of argument 0 "
                                             rf"\(float32 array of shape \({n},\)"):
        emu.function("faults.cu", "write_past_end")((n // 64 + 1,), (64,), (out, np.int32(n)))
    assert np.isnan(out).all(), "a failed launch must not write its results back"


def test_out_of_bounds_read_is_reported(emu):
    values, out = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    with pytest.raises(EmulationError, match=r"out-of-bounds read at byte 4096 of argument 0"):
        emu.function("faults.cu", "read_shifted")((16,), (64,), (values, out) + i32(1024, 1))


def test_a_read_before_the_start_returns_nan(emu):
    """The limit of guarded copies: the slack in front of a copy is readable, and reads NaN."""
    values, out = np.ones(1024, np.float32), np.zeros(1024, np.float32)
    emu.function("faults.cu", "read_shifted")((16,), (64,), (values, out) + i32(1024, -1))
    assert np.isnan(out[0]) and (out[1:] == 1).all()


def test_shared_memory_overrun_is_reported(emu):
    out = np.zeros(64, np.float32)
    with pytest.raises(EmulationError, match=r"shared memory read at byte 256 of the dynamic shared memory \(256 b"):
        emu.function("faults.cu", "shared_overrun")((1,), (64,), (out, np.int32(64)), shared_mem=64 * 4)


def test_stack_overflow_is_reported(emu):
    with pytest.raises(EmulationError, match="stack overflow"):
        emu.function("faults.cu", "huge_locals")((1,), (2,), (np.zeros(2, np.float32), np.int32(60000)))


def test_a_spin_wait_times_out():
    with pytest.raises(EmulationError, match=r"still running after 0.3 s"):
        runtime(timeout_s=0.3).function("faults.cu", "spin_on_flag")((2,), (1,), (np.zeros(1, np.int32),))


def test_device_assert_and_division_by_zero(emu):
    with pytest.raises(EmulationError, match=r"thread \(5, 0, 0\).*assertion failed: in\[threadIdx.x\] >= 0"):
        emu.function("faults.cu", "device_assert")((1,), (8,), (np.array([0, 1, 2, 3, 4, -5, 6, 7], np.int32),))
    numerator, denominator = np.ones(4, np.int32), np.array([1, 2, 0, 4], np.int32)
    with pytest.raises(EmulationError, match="SIGFPE"):
        emu.function("faults.cu", "divide")((1,), (4,), (numerator, denominator, np.zeros(4, np.int32)))


def test_undefined_warp_collective_is_reported(emu):
    with pytest.raises(EmulationError, match="width 3"):
        emu.function("faults.cu", "bad_shuffle_width")((1,), (32,), (np.zeros(32, np.int32), np.int32(3)))


# ---- Cooperative groups and the host-only header stubs (tests/kernels/groups.cu) ----------------

def as_int32(bits: int) -> int:
    return bits - (1 << 32) if bits >= 1 << 31 else bits


@pytest.mark.parametrize("n", [4, 32])
def test_cooperative_groups_tiles(emu, n):
    """2-D blocks of 16 x 4 threads: ranks count x fastest; a tile is n consecutive ranks."""
    threads = 64
    values = np.random.default_rng(n).integers(-50, 50, 2 * threads).astype(np.int32)
    out = np.full((2 * threads, 12), -1, np.int32)
    emu.function("groups.cu", f"tile_collectives<{n}>")((2,), (16, 4), (values, out))
    expected = []
    for rank, v in enumerate(values):
        t, r = rank % threads, rank % n
        tile = values[rank - r:rank - r + n]
        ballot = sum(1 << i for i in range(n) if tile[i] > 0)
        expected.append([t, threads, r, n, t // n, threads // n, tile[1], tile[r - 1] if r >= 1 else v,
                         tile[r + 2] if r + 2 < n else v, tile[r ^ 1], as_int32(ballot),
                         int(ballot != 0) | int(ballot == (1 << n) - 1) << 1])
    np.testing.assert_array_equal(out, expected)


def test_cooperative_groups_block_sum_is_clean_under_every_sanitizer():
    values = np.random.default_rng(8).standard_normal(3 * 128).astype(np.float32)
    out = np.full(3, np.nan, np.float32)
    runtime(sanitize="memcheck,racecheck,initcheck,synccheck").function("groups.cu", "block_sum<8>")(
        (3,), (128,), (values, out))
    np.testing.assert_allclose(out, values.reshape(3, 128).sum(axis=1), rtol=1e-5)


# ---- Arguments, compilation, cache ---------------------------------------------------------------

def test_arguments_are_checked_against_the_kernel_signature(emu):
    kernel = emu.function("builtins.cu", "scale_float4")
    values = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match=r"argument 2 must be a numpy scalar of type int32, got int"):
        kernel((1,), (1,), (values, values, 2))
    with pytest.raises(TypeError, match=r"argument 2 must be a numpy scalar of type int32, got np.int64"):
        kernel((1,), (1,), (values, values, np.int64(2)))
    with pytest.raises(TypeError, match=r"argument 1 has dtype float64 and shape \(8,\)"):
        kernel((1,), (1,), (values, values.astype(np.float64), np.int32(2)))
    with pytest.raises(TypeError, match="takes 3 arguments"):
        kernel((1,), (1,), (values, values))
    with pytest.raises(ValueError, match="block"):
        kernel((1,), (2048,), (values, values, np.int32(2)))
    with pytest.raises(ValueError, match="grid"):
        kernel((0,), (1,), (values, values, np.int32(2)))
    with pytest.raises(ValueError, match="shared_mem"):
        kernel((1,), (1,), (values, values, np.int32(2)), shared_mem=1 << 20)


def test_aliased_and_read_only_arguments(emu):
    kernel = emu.function("builtins.cu", "scale_float4")
    values = np.arange(16, dtype=np.float32)
    kernel((1,), (4,), (values, values, np.int32(4)))  # in place: both pointers see one copy
    np.testing.assert_array_equal(values, 2 * np.arange(16))
    frozen = np.arange(16, dtype=np.float32)
    frozen.flags.writeable = False
    with pytest.raises(EmulationError, match="read-only"):
        kernel((1,), (4,), (np.ones(16, np.float32), frozen, np.int32(4)))


def test_a_compile_error_carries_the_compiler_message(emu):
    with pytest.raises(EmulationError, match=r"(?s)failed to compile no_such_kernel.*no_such_kernel"):
        emu.function("builtins.cu", "no_such_kernel")


def test_without_a_compiler_the_backend_is_unavailable(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(BackendUnavailable, match="C\\+\\+ compiler"):
        EmulatorRuntime()


# Builds (or loads) faults.cu's last_writer in a fresh process and prints its result, 7.
LAST_WRITER = (f"import sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent.parent)!r});"
               "from linear.backends.emulate import EmulatorRuntime;"
               f"k = EmulatorRuntime(kernel_dir={str(KERNELS)!r}).function('faults.cu', 'last_writer');"
               "out = np.zeros(1, np.int32); k((1,), (8,), (out,)); print(out[0])")


def test_two_processes_build_one_library_at_once(emu, tmp_path):
    env = dict(os.environ, LINEAR_EMU_CACHE=str(tmp_path))
    builds = [subprocess.Popen([sys.executable, "-c", LAST_WRITER], env=env, stdout=subprocess.PIPE, text=True)
              for _ in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in builds] == ["7", "7"]
    assert all(p.returncode == 0 for p in builds)
    libraries = sorted(p.name for p in tmp_path.glob("*.so"))
    assert len(libraries) == 2 and libraries[0].startswith("emu-runtime-"), libraries
    assert not list(tmp_path.glob(".partial-*")), list(tmp_path.iterdir())
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    runtime(cache_dir=tmp_path).function("faults.cu", "last_writer")
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before  # loaded, not rebuilt


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory) -> Path:
    """A cache holding last_writer and the runtime, built once; tests damage copies of it."""
    cache = tmp_path_factory.mktemp("built") / "cache"
    runtime(cache_dir=cache).function("faults.cu", "last_writer")
    return cache


def cache_copy(built_cache: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_cache, tmp_path / "cache"))  # keeps the private mode


def last_writer_in_a_fresh_process(cache: Path) -> subprocess.CompletedProcess:
    """In a fresh process, since this one keeps the libraries it has loaded."""
    env = dict(os.environ, LINEAR_EMU_CACHE=str(cache))
    return subprocess.run([sys.executable, "-c", LAST_WRITER], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage", ["truncated runtime", "truncated kernel", "one byte of the kernel changed"])
def test_a_damaged_cache_entry_is_rebuilt(built_cache, tmp_path, damage):
    """Before records, a truncated runtime or kernel library killed the process with SIGBUS."""
    cache = cache_copy(built_cache, tmp_path)
    library = next(p for p in cache.glob("*.so") if p.name.startswith("emu-runtime-") == ("runtime" in damage))
    data = bytearray(library.read_bytes())
    if "truncated" in damage:
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    library.write_bytes(data)
    result = last_writer_in_a_fresh_process(cache)
    assert (result.returncode, result.stdout.strip()) == (0, "7"), result.stderr
    assert library.read_bytes() != data


def test_a_library_the_loader_refuses_is_an_emulation_error(built_cache, tmp_path):
    """A library whose record matches but that dlopen rejects (e.g. a cache on a noexec mount)."""
    cache = cache_copy(built_cache, tmp_path)
    library = next(p for p in cache.glob("*.so") if not p.name.startswith("emu-runtime-"))
    library.write_bytes(b"not an ELF file")
    library.with_name(library.name + ".sha256").write_text(f"15 {hashlib.sha256(b'not an ELF file').hexdigest()}\n")
    result = last_writer_in_a_fresh_process(cache)
    assert "EmulationError: last_writer: cannot load the compiled library" in result.stderr, result.stderr


def test_a_cache_other_users_can_write_is_refused(built_cache, tmp_path):
    cache = cache_copy(built_cache, tmp_path)
    assert built_cache.stat().st_mode & 0o777 == 0o700  # created private
    runtime(cache_dir=cache).function("faults.cu", "last_writer")  # the control: a private cache is used
    for mode in (0o707, 0o770):
        cache.chmod(mode)
        with pytest.raises(EmulationError, match=rf"cache {cache} is writable by other users \(mode {mode:o}\)"):
            runtime(cache_dir=cache).function("faults.cu", "last_writer")


def test_a_cache_another_user_owns_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: tmp_path.stat().st_uid + 1)
    with pytest.raises(EmulationError, match=rf"compile cache {tmp_path} is owned by uid \d+, not by this user"):
        runtime(cache_dir=tmp_path).function("faults.cu", "last_writer")


# ---- What the GPU would give where CUDA C++ leaves it to the machine --------------------------------

UNINITIALIZED = """__global__ void sum_rows(const float* x, float* out, int n) {
    float acc;  // never zeroed: the bug
    float spare[4];
    for (int i = 0; i < n; ++i) acc += x[threadIdx.x * n + i];
    out[threadIdx.x] = acc;
    out[32 + threadIdx.x] = spare[threadIdx.x % 4];
}
"""


def test_registers_and_local_arrays_start_poisoned(tmp_path):
    """An accumulator that is never zeroed gives a wrong result (locals start as 0xFE bytes), not the
    right one by luck of a zeroed stack."""
    (tmp_path / "uninit.cu").write_text(UNINITIALIZED)
    x = np.ones((32, 8), np.float32)
    out = np.zeros(64, np.float32)
    EmulatorRuntime(kernel_dir=tmp_path).function("uninit.cu", "sum_rows")(1, 32, (x, out, np.int32(8)))
    poison = np.frombuffer(b"\xfe" * 4, np.float32)[0]
    np.testing.assert_array_equal(out[:32], poison + 8)  # -1.7e38: 8 is lost in it
    np.testing.assert_array_equal(out[32:], poison)


SUBNORMALS = """__global__ void scale(const float* x, float* y, float s) {
    const int i = threadIdx.x;
    y[i] = x[i] * s;
    asm("mul.f32 %0, %1, %2;" : "=f"(y[32 + i]) : "f"(x[i]), "f"(s));
    asm("mul.ftz.f32 %0, %1, %2;" : "=f"(y[64 + i]) : "f"(x[i]), "f"(s));
}
__global__ void scale_f64(const double* x, double* y, double s) { y[threadIdx.x] = x[threadIdx.x] * s; }
"""


def test_float32_subnormals_flush_to_zero_as_cupy_compiles(tmp_path):
    """CuPy compiles every kernel with -ftz=true (NVRTC takes the last -ftz, and CuPy appends it): float32
    arithmetic reads and writes subnormals as zeros, float64 keeps them. The emulator does the same, and
    runs PTX written in asm as written: mul.f32 keeps subnormals, mul.ftz.f32 flushes them."""
    (tmp_path / "sub.cu").write_text(SUBNORMALS)
    rt = EmulatorRuntime(kernel_dir=tmp_path)
    x = (np.arange(1, 33) * 2.0**-140).astype(np.float32)   # subnormal float32 values
    assert np.all(x != 0) and np.all(np.abs(x) < np.finfo(np.float32).tiny)
    y = np.full(96, np.nan, np.float32)
    rt.function("sub.cu", "scale")(1, 32, (x, y, np.float32(2.0**100)))
    np.testing.assert_array_equal(y[:32], 0)                       # C++: flushed, as on the GPU
    np.testing.assert_array_equal(y[32:64], x.astype(np.float64) * 2.0**100)  # mul.f32: IEEE
    np.testing.assert_array_equal(y[64:], 0)                       # mul.ftz.f32
    xd = x.astype(np.float64) * 2.0**-900                           # subnormal float64 values
    yd = np.full(32, np.nan)
    rt.function("sub.cu", "scale_f64")(1, 32, (xd, yd, np.float64(2.0**900)))
    np.testing.assert_array_equal(yd, x.astype(np.float64))        # float64 keeps its subnormals
    # The negative control: numpy (IEEE) gives what the flush takes away.
    assert np.all(x * np.float32(2.0**100) != 0)


def test_a_gemm_flushes_float32_subnormal_inputs(monkeypatch):
    """Through the API: rows of X that are all subnormal give zero rows on the emulator (as with -ftz on
    a GPU), where numpy's IEEE product does not; the other rows match numpy."""
    import linear
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 24)).astype(np.float32)
    x[::5] = (rng.random((8, 24)) * 2.0**-130).astype(np.float32)  # subnormal rows
    w = (rng.standard_normal((24, 16)) * 2.0**100).astype(np.float32)
    y = linear.matmul(x, w, backend="emulate")
    assert np.all(y[::5] == 0) and np.any(linear.matmul(x, w, backend="numpy")[::5] != 0)
    normal = np.ones(40, bool)
    normal[::5] = False
    assert rel_err(y[normal], x[normal].astype(np.float64) @ w.astype(np.float64)) < 1e-5


def test_shared_arrays_of_half_build_and_run_under_the_sanitizer(tmp_path):
    """A __shared__ __half array has a constructor, so g++ guards its first initialization; the guard
    must not need libtsan's atomics in a sanitize build."""
    (tmp_path / "halves.cu").write_text(
        "#include <cuda_fp16.h>\n__global__ void halves(const __half* x, __half* y) {\n"
        "    __shared__ __half tile[32];\n    tile[threadIdx.x] = x[threadIdx.x];\n    __syncthreads();\n"
        "    y[threadIdx.x] = tile[31 - threadIdx.x];\n}\n")
    x = np.arange(32, dtype=np.float16)
    y = np.zeros(32, np.float16)
    EmulatorRuntime(kernel_dir=tmp_path, sanitize="memcheck,racecheck,initcheck").function("halves.cu", "halves")(
        1, 32, (x, y))
    np.testing.assert_array_equal(y, x[::-1])
