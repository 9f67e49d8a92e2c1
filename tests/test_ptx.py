"""Inline PTX in the emulator (linear/backends/emulate/ptx.py): each family of instructions run by a small
kernel of tests/kernels/ptx_probe.cu against values computed here (and, under -m gpu, on a GPU), the
shared window, named barriers with their negative controls, and the build-time error for an instruction
outside the subset. tests/test_tensor_cores.py runs kernels/ptx.cuh's asm strings through tc_gemm.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from linear.backends import available_backends
from linear.backends.emulate import EmulationError
from linear.backends.emulate.ptx import INSTRUCTIONS, translate_unit
from reference import to_numpy
from test_kernels import emulator

PROBE = Path(__file__).resolve().parent / "kernels" / "ptx_probe.cu"


@pytest.fixture(scope="module", params=["emulate", pytest.param("cuda", marks=pytest.mark.gpu)])
def runtime(request, tmp_path_factory):
    if request.param == "cuda":
        if "cuda" not in available_backends():
            pytest.skip("the cuda backend needs CuPy and a GPU")
        from linear.backends.cuda import CupyRuntime
        return CupyRuntime(kernel_dir=PROBE.parent)
    sources = tmp_path_factory.mktemp("ptx")
    shutil.copy(PROBE, sources / PROBE.name)
    return emulator(kernel_dir=sources)


def run(runtime, name: str, grid, block, *args, shared_mem: int = 0) -> list[np.ndarray]:
    on_device = [runtime.xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    runtime.function(PROBE.name, name)(grid, block, tuple(on_device), shared_mem=shared_mem)
    return [to_numpy(a) for a in on_device if not isinstance(a, np.generic)]


def test_special_registers(runtime):
    grid, block = (2, 3, 2), (8, 4, 2)
    threads = int(np.prod(block))
    out, = run(runtime, "probe_special_registers", grid, block, np.full((int(np.prod(grid)) * threads, 12), 7, np.uint32))
    out = out.reshape(grid[::-1] + (threads, 12))
    t = np.arange(threads)
    lane = t % 32
    for bz, by, bx in np.ndindex(*grid[::-1]):
        o = out[bz, by, bx]
        np.testing.assert_array_equal(o[:, 0], t % 8)
        np.testing.assert_array_equal(o[:, 1], t // 8 % 4)
        np.testing.assert_array_equal(o[:, 2], t // 32)
        np.testing.assert_array_equal(o[:, 3:6], np.broadcast_to([8, by, 2], (threads, 3)))
        np.testing.assert_array_equal(o[:, 6], lane)
        np.testing.assert_array_equal(o[:, 7], (1 << lane) - 1)
        np.testing.assert_array_equal(o[:, 8], (0xFFFFFFFF << lane) & 0xFFFFFFFF)
        np.testing.assert_array_equal(o[:, 9], bx)   # a block is a cluster of one
        np.testing.assert_array_equal(o[:, 10], 0)
        np.testing.assert_array_equal(o[:, 11], 1)   # %clock64 never runs backwards


def test_setp_selp_and_predicates(runtime):
    rng = np.random.default_rng(0)
    n = 300
    a = rng.integers(-50, 50, n).astype(np.int32)
    b = rng.integers(-50, 50, n).astype(np.int32)
    b[:20] = a[:20]  # some equal
    x = rng.standard_normal(n).astype(np.float32)
    y = np.where(rng.random(n) < 0.3, x, rng.standard_normal(n)).astype(np.float32)
    x[::7], y[::11] = np.nan, np.nan
    *_, out = run(runtime, "probe_predicates", 1, 64, a, b, x, y, np.zeros(n, np.uint32), np.int32(n))
    with np.errstate(invalid="ignore"):
        nan = np.isnan(x) | np.isnan(y)
        neu = nan | (x != y)
        expected = ((a < b) * 3 | (a.view(np.uint32) < b.view(np.uint32)) * 4 | (~nan & (x != y)) * 8
                    | neu * 16 | ((a >= b) & neu) * 32 | (a == b) * 64)
    np.testing.assert_array_equal(out, expected)


def test_integer_glue(runtime):
    rng = np.random.default_rng(1)
    n = 64
    x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    y = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x[:4] = [0, 1, 0x80000000, 0xFFFFFFFF]
    *_, out = run(runtime, "probe_integers", 1, 64, x, y, np.zeros((n, 10), np.uint32), np.int32(n))
    X, Y = x.astype(np.uint64), y.astype(np.uint64)
    m = 0xFFFFFFFF
    wide = X * Y
    byte = lambda v, k: (v.astype(np.uint64) >> (8 * k)) & 0xFF  # noqa: E731
    permuted = byte(x, 0) | byte(x, 1) << 16 | byte(y, 0) << 8 | byte(y, 1) << 24  # prmt 0x5140: bytes 0,4,1,5
    low = x & 0xFFFF
    expected = np.stack([
        (X * Y + ((X + Y) & m) * Y) & m, (X << 7) & m, (x.view(np.int32) >> 3).view(np.uint32),
        (x ^ y) & 0x0F0F0F0F, wide & m, wide >> 32, permuted, x ^ y ^ (x >> 5),
        np.where(x.view(np.int32) < 0, m, 0), (low % 100) * (low % 100 + 1) // 2], axis=1).astype(np.uint32)
    np.testing.assert_array_equal(out, expected)


def test_ld_st_state_spaces_and_atomics(runtime):
    values = np.array([1.5, -2.0, 3.25, 8.0], np.float32)
    out, = run(runtime, "probe_memory", 1, 32, values, np.array([-3], np.int8), np.zeros(16, np.uint32))[2:]
    f = lambda v: np.float32(v).view(np.uint32)  # noqa: E731
    np.testing.assert_array_equal(out[:2], [f(-2.0), f(1.5)])  # tile[2], tile[3] after the reversed v4 store
    np.testing.assert_array_equal(out[2:8], [f(v) for v in (8.0, 3.25, -2.0, 1.5, -0.5, 11.25)])
    np.testing.assert_array_equal(out[8:10], [np.uint32(2**32 - 3), 253])  # ld.s8 sign-extends, ld.u8 does not
    np.testing.assert_array_equal(out[10:16], [3, 30, 0xC0FFEE, 7, 12, 3])


def test_cvta_and_the_shared_window(runtime):
    out, = run(runtime, "probe_cvta", 1, 32, np.zeros(5, np.uint32), shared_mem=300)
    np.testing.assert_array_equal(out, [0, 1, 300, 0, 1])


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle"])
def test_named_barrier_orders_producers_and_consumers(tmp_path, schedule):
    shutil.copy(PROBE, tmp_path / PROBE.name)
    x = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    out = np.full(64, np.nan, np.float32)
    emulator(kernel_dir=tmp_path, schedule=schedule, seed=5).function(PROBE.name, "probe_named_barrier<128>")(
        1, 128, (x, out))
    np.testing.assert_array_equal(out, 2 * x)


def test_a_named_barrier_with_a_wrong_count_is_caught(tmp_path):
    """Negative controls: with a count of 64 each half completes the barrier on its own, so consumers that
    run first read shared memory not yet written; with 192 the barrier never completes: a deadlock
    report naming the barrier, its source line and its counts."""
    shutil.copy(PROBE, tmp_path / PROBE.name)
    x = np.ones(64, np.float32)
    out = np.zeros(64, np.float32)
    runtime = emulator(kernel_dir=tmp_path, schedule="reverse")
    runtime.function(PROBE.name, "probe_named_barrier<64>")(1, 128, (x, out))
    assert np.isnan(out).any()  # here the consumer that completes the barrier reads before any producer ran
    with pytest.raises(EmulationError, match=r"barrier 1: a thread count of 192 \(it must be a multiple of 32, at "
                                             r"most the block's 128 threads\)"):
        runtime.function(PROBE.name, "probe_named_barrier<192>")(1, 128, (x, out))


def test_a_named_barrier_that_cannot_complete_is_a_deadlock_report(tmp_path):
    (tmp_path / "half.cu").write_text('__global__ void half_arrive(int* x) {\n'
                                      '    if (threadIdx.x < 32) asm volatile("bar.sync 1, 64;");\n}\n')
    with pytest.raises(EmulationError, match=r"deadlock: 32 threads wait at named barriers \(e\.g\. barrier 1 of "
                                             r".*half\.cu:2, which has 32 of the 64 threads it expects\), 0 at "
                                             r"__syncthreads, 0 in warp collectives, 32 have exited"):
        emulator(kernel_dir=tmp_path).function("half.cu", "half_arrive")(1, 64, (np.zeros(1, np.int32),))


def test_a_missing_named_barrier_reads_poison(tmp_path):
    """Negative control: without bar.sync the consumers, run first, read shared memory not yet written."""
    source = PROBE.read_text()
    (tmp_path / PROBE.name).write_text(source.replace('asm volatile("bar.sync 1, %0;" :: "n"(COUNT) : "memory");', ""))
    x = np.ones(64, np.float32)
    out = np.zeros(64, np.float32)
    emulator(kernel_dir=tmp_path, schedule="reverse").function(PROBE.name, "probe_named_barrier<128>")(1, 128, (x, out))
    assert np.isnan(out).all()


def test_elect_sync(runtime):
    out, = run(runtime, "probe_elect", 1, 64, np.zeros(64, np.uint32))
    expected = np.where(np.arange(64) % 32 < 4, 0xFFFF, 4 << 8)
    expected[[4, 36]] |= 1
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_stmatrix_follows_the_isa_and_round_trips_through_ldmatrix(runtime, count, trans):
    # Lane l holds, in register j, elements (l/4, 2·(l%4)) and (l/4, 2·(l%4)+1) of matrix j (low half
    # first); stmatrix stores matrix j row by row (.trans: its transpose) at the rows' addresses.
    regs = np.random.default_rng(count).integers(0, 2**32, (32, count), dtype=np.uint64).astype(np.uint32)
    matrices = np.zeros((count, 8, 8), np.uint16)
    for lane in range(32):
        for j in range(count):
            matrices[j, lane // 4, 2 * (lane % 4)] = regs[lane, j] & 0xFFFF
            matrices[j, lane // 4, 2 * (lane % 4) + 1] = regs[lane, j] >> 16
    expected = matrices.transpose(0, 2, 1) if trans else matrices
    tiles, back = run(runtime, f"probe_stmatrix<{count}, {'true' if trans else 'false'}>", 1, 32, regs,
                      np.zeros(count * 64, np.uint16), np.zeros((32, count), np.uint32))[1:]
    np.testing.assert_array_equal(tiles.reshape(count, 8, 8), expected)
    np.testing.assert_array_equal(back, regs)


def test_shuffle_vote_and_f16x2(runtime):
    out, = run(runtime, "probe_warp", 1, 32, np.zeros((32, 4), np.uint32))
    lane = np.arange(32)
    np.testing.assert_array_equal(out[:, 0], (lane ^ 5) * 10)
    in_range = lane >= 3
    np.testing.assert_array_equal(out[:, 1], np.where(in_range, (lane - 3) * 10, lane * 10) << 1 | in_range)
    np.testing.assert_array_equal(out[:, 2], 0xAAAAAAAA)
    halves = out[:, 3:4].view(np.uint16).reshape(32, 2).view(np.float16)  # low half: -lane; high: lane + 0.25
    np.testing.assert_array_equal(halves[:, 0], -lane.astype(np.float16))
    np.testing.assert_array_equal(halves[:, 1], (lane + 0.25).astype(np.float16))


# ---- Build-time errors ------------------------------------------------------------------------------

UNKNOWN = """__global__ void frob(unsigned* out) {
    unsigned x = out[0];
    asm volatile("{\\n\\t"
                 "add.u32 %0, %0, 1;\\n\\t"
                 "frobnicate.sync.b32 %0, %0;\\n\\t"
                 "}" : "+r"(x));
    out[0] = x;
}
"""


def test_an_instruction_outside_the_subset_is_a_build_error_naming_file_and_line(tmp_path):
    (tmp_path / "frob.cu").write_text(UNKNOWN)
    with pytest.raises(EmulationError, match=r"frob\.cu:3: inline PTX: the PTX instruction `frobnicate\.sync\.b32` "
                                             r"is not in the emulator's subset"):
        emulator(kernel_dir=tmp_path).function("frob.cu", "frob")


def test_an_unsupported_modifier_is_a_build_error(tmp_path):
    (tmp_path / "ftz.cu").write_text('__global__ void ftz(float* x) {\n\n  asm("add.sat.f32 %0, %0, %0;" : "+f"(x[0]));\n}\n')
    with pytest.raises(EmulationError, match=r"ftz\.cu:3: .*`add\.sat\.f32` is not in the emulator's subset"):
        emulator(kernel_dir=tmp_path).function("ftz.cu", "ftz")


def test_asm_inside_a_macro_is_translated_at_its_use(tmp_path):
    macro = '#define ADD_ONE(v) asm volatile("add.s32 %0, %0, 1;" : "+r"(v))\n'
    (tmp_path / "macro.cu").write_text(
        macro + "__global__ void inc(int* x) {\n    int v = x[threadIdx.x];\n    ADD_ONE(v);\n    ADD_ONE(v);\n"
        "    x[threadIdx.x] = v;\n}\n")
    x = np.arange(32, dtype=np.int32)
    emulator(kernel_dir=tmp_path).function("macro.cu", "inc")(1, 32, (x,))
    np.testing.assert_array_equal(x, np.arange(32) + 2)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bad.cu").write_text('#define BAD(v) asm volatile("bogus.s32 %0;" : "+r"(v))\n'
                                "__global__ void bad(int* x) {\n\n    BAD(x[0]);\n}\n")
    with pytest.raises(EmulationError, match=r"bad\.cu:4: .*`bogus\.s32`"):
        emulator(kernel_dir=bad).function("bad.cu", "bad")


def test_the_translator_keeps_line_numbers_and_leaves_system_and_shim_code_alone():
    text = ('# 1 "/k/a.cu"\nint f(int v) {\n  asm("add.s32 %0, %0, 1;\\n"\n      : "+r"(v));\n  return v;\n}\n'
            'int h(int) __asm__("h_symbol");\n# 1 "/usr/include/x.h" 1 3 4\nvoid g() { asm volatile("pause"); }\n')
    out = translate_unit(text, lambda path, system: not system)
    assert out.count("\n") == text.count("\n")
    assert out.splitlines()[4] == "  return v;"
    assert 'asm volatile("pause")' in out and "emu::ptx::put" in out and '__asm__("h_symbol")' in out
    assert all(callable(emit) for _, emit in INSTRUCTIONS)


def test_mma_with_f16_accumulators(runtime):
    # Small integers: exact in f16, so D must equal A·B + C bit for bit.
    rng = np.random.default_rng(4)
    a = rng.integers(-4, 5, (16, 16)).astype(np.float16)
    b = rng.integers(-4, 5, (16, 8)).astype(np.float16)
    c = rng.integers(-16, 17, (16, 8)).astype(np.float16)
    *_, d = run(runtime, "probe_mma_f16_accumulators", 1, 32, a, b, c, np.full((16, 8), np.nan, np.float16))
    np.testing.assert_array_equal(d, a.astype(np.float64) @ b.astype(np.float64) + c)


def test_extern_shared_rows_and_declared_alignment(tmp_path):
    """`extern __shared__ T name[][N]` (rows of N, as hand-written GEMMs declare their stages) is the
    dynamic buffer too, starting at its declared alignment in the shared window."""
    (tmp_path / "rows.cu").write_text(
        "__global__ void rows(unsigned* out) {\n"
        "    extern __shared__ __align__(256) float tile[][8];\n"
        "    tile[threadIdx.x][1] = threadIdx.x;\n    __syncthreads();\n"
        "    out[threadIdx.x] = unsigned(tile[31 - threadIdx.x][1]) | unsigned(__cvta_generic_to_shared(tile) % 256) << 8;\n}\n")
    out = np.zeros(32, np.uint32)
    emulator(kernel_dir=tmp_path).function("rows.cu", "rows")(1, 32, (out,), shared_mem=32 * 8 * 4)
    np.testing.assert_array_equal(out, 31 - np.arange(32))


def test_racecheck_sees_what_a_named_barrier_orders(tmp_path):
    """Producers that write and bar.arrive, consumers that bar.sync and read: clean under racecheck (and
    the other modes); without the consumers' bar.sync, the race is reported with both lines."""
    shutil.copy(PROBE, tmp_path / PROBE.name)
    x = np.random.default_rng(5).standard_normal(64).astype(np.float32)
    out = np.zeros(64, np.float32)
    checked = emulator(kernel_dir=tmp_path, sanitize="memcheck,racecheck,initcheck,synccheck")
    checked.function(PROBE.name, "probe_named_barrier<128>")(1, 128, (x, out))
    np.testing.assert_array_equal(out, 2 * x)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / PROBE.name).write_text(PROBE.read_text().replace('asm volatile("bar.sync 1, %0;" :: "n"(COUNT) : "memory");', ""))
    with pytest.raises(EmulationError, match=r"racecheck: read by thread \(\d+, 0, 0\) and write by thread .*staged"):
        emulator(kernel_dir=broken, sanitize="racecheck").function(PROBE.name, "probe_named_barrier<128>")(1, 128, (x, out))


BAD_ADDRESSES = """__global__ void outside(unsigned* out) {
    __shared__ __align__(16) unsigned short tile[64];
    unsigned r;
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(tile)) + 4096;
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r) : "r"(s));
    out[threadIdx.x] = r;
}
__global__ void misaligned(unsigned* out) {
    unsigned v;
    asm volatile("ld.global.v2.u32 {%0, %0}, [%1];" : "=r"(v) : "l"(out + 1));
    out[0] = v;
}
"""


def test_a_bad_address_in_ptx_is_reported_with_its_instruction_and_line(tmp_path):
    (tmp_path / "bad.cu").write_text(BAD_ADDRESSES)
    rt = emulator(kernel_dir=tmp_path)
    with pytest.raises(EmulationError, match=r"thread \(0, 0, 0\): .*bad\.cu:5: ldmatrix\.sync\.aligned\.m8n8\.x1\.shared\.b16: "
                                             r"shared address 0x[0-9a-f]+ is outside the block's shared memory"):
        rt.function("bad.cu", "outside")(1, 32, (np.zeros(32, np.uint32),))
    with pytest.raises(EmulationError, match=r"bad\.cu:10: ld\.global\.v2\.u32: misaligned address"):
        rt.function("bad.cu", "misaligned")(1, 1, (np.zeros(4, np.uint32),))


def test_file_scope_shared_memory_is_in_the_window_and_poisoned(tmp_path):
    (tmp_path / "filescope.cu").write_text(
        "__shared__ float staged[32];\n"
        "__global__ void fs(float* out, unsigned* addresses) {\n"
        "    out[threadIdx.x] = staged[threadIdx.x];  // before any write: poison\n"
        "    __syncthreads();\n"
        "    float v;\n"
        '    asm volatile("st.shared.f32 [%0], %1;" :: "r"(unsigned(__cvta_generic_to_shared(staged + threadIdx.x))), '
        '"f"(2.0f * threadIdx.x) : "memory");\n'
        "    __syncthreads();\n"
        "    v = staged[31 - threadIdx.x];\n"
        "    out[32 + threadIdx.x] = v;\n}\n")
    out = np.zeros(64, np.float32)
    emulator(kernel_dir=tmp_path).function("filescope.cu", "fs")(1, 32, (out, np.zeros(1, np.uint32)))
    assert np.isnan(out[:32]).all()
    np.testing.assert_array_equal(out[32:], 2.0 * (31 - np.arange(32)))
