"""Every GEMM and reduction kernel on the emulator (the plan and the cost model: test_plan.py, test_cost.py).

kernels/*.cu run through the emulate backend (g++ against kernels/emu): every element type x transpose
combination x tile configuration x vector/scalar path, each with and without split-K and with the bias
and beta epilogues, on sizes that are not tile multiples, against a float64 reference, with
NaN-poisoned outputs; views, stacks, degenerate sizes, determinism, and negative controls.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

import linear
from linear.backends import plan, tiles
from linear.backends.emulate import EmulationError
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from linear.backends.sources import kernels_dir
from linear.dtypes import ELEMENT_TYPES
from reference import (DTYPE_CONFIGS, DTYPES, LAYOUTS, TOLERANCE, TRANS, RecordingRuntime, assert_close, batched,
                       emulate_backend, emulator, gemm_reference, layout, op, output, poisoned, rel_err, stored)

# Sizes that are no tile multiple in any direction, with several K steps and split-K slices: block
# (0, 0) is an interior tile (gemm.cu's unchecked loop) in the splits of whole K steps, every other
# block and the last split (K % 8 != 0) run the checked loop.
SHAPES = {"large": (129, 131, 65), "medium": (70, 66, 33), "small": (70, 50, 33), "warp": (129, 131, 65),
          "warp_deep": (129, 131, 65), "warp_wide": (129, 259, 33), "warp_medium": (70, 66, 33)}


# ----------------------------------------------------------------------------------------------------
# Every SIMT GEMM instantiation on the emulator
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime():
    return emulator()


# (splits, alpha, beta, bias): the forward epilogue, accumulation, and split-K with both.
EPILOGUES = [(1, 1.0, 0.0, True), (1, -0.5, 0.75, False), (3, 2.0, 0.5, True)]


@pytest.mark.parametrize("vector", [False, True], ids=["scalar", "vector"])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("dtype,config", DTYPE_CONFIGS)
def test_every_simt_instantiation_matches_float64(runtime, dtype, trans_a, trans_b, config, vector):
    m, n, k = SHAPES[config]
    rng = np.random.default_rng([m, n, k, trans_a, trans_b, vector])
    # Vector: leading dimensions of 8 elements (16 bytes or more); scalar: odd leading dimensions.
    ld = (lambda cols: -(-cols // 8) * 8) if vector else (lambda cols: cols + 1)
    a_shape, b_shape = ((k, m) if trans_a else (m, k)), ((n, k) if trans_b else (k, n))
    a = stored(rng, a_shape, DTYPES[dtype], ld(a_shape[1]))
    b = stored(rng, b_shape, DTYPES[dtype], ld(b_shape[1]))
    bias = rng.standard_normal(n).astype(DTYPES[dtype])
    t = ELEMENT_TYPES[dtype]
    for splits, alpha, beta, with_bias in EPILOGUES:
        c = output(rng, (m, n), DTYPES[dtype], beta)
        expected = gemm_reference(a, b, trans_a, trans_b, alpha, beta, c, bias if with_bias else None)
        launches = plan.plan_gemm(np, op(a, trans_a), op(b, trans_b), c, alpha=alpha, beta=beta,
                                  bias=bias if with_bias else None,
                                  tuning=Tuning(config=config, splits=splits, vector=vector))
        c_cpp = t.cpp if splits == 1 else t.acc_cpp
        assert launches[0].name == tiles.CONFIGS_BY_NAME[config].template_name(t, c_cpp, trans_a, trans_b, vector)
        assert len(launches) == (1 if splits == 1 else 2) and launches[0].grid[2] == splits
        KernelBackend(runtime).launch(launches)
        assert_close(c, expected, dtype)


def lds128_cycles(addresses) -> int:
    """Return cycles of one warp's LDS.128 (byte addresses of its 32 lanes), the model of gemm.cu's
    header: shared memory returns 128 bytes a cycle, so 4 cycles for 4 registers a lane, 2 when every
    lane shares its address with lane ^ 1 or with lane ^ 2 (two lanes, one return); never fewer than
    the most distinct 4-byte words any one of the 32 banks holds."""
    pairs = any(all(addresses[i] == addresses[i ^ d] for i in range(32)) for d in (1, 2))
    words = {a // 4 + w for a in set(addresses) for w in range(4)}
    per_bank = max(sum(word % 32 == bank for word in words) for bank in range(32))
    return max(2 if pairs else 4, per_bank)


def lane_map_probe(configs) -> str:
    """A kernel that writes, for each config and thread, the shared-memory offsets (within a k row)
    of its A and B fragment reads, computed by gemm.cu's own thread_origin and owned_offset."""
    lines = ['#include "gemm.cu"', "__global__ void lane_maps(int* out) {", "    const int t = threadIdx.x;",
             "    int m, n;"]
    for c, config in enumerate(configs):
        base = f"(out + ({c} * 256 + t) * 8)"
        lines += [f"    if (t < {config.threads}) {{",
                  f"        thread_origin<{config.bn}, {config.wm}, {config.wn}, {config.tm}, {config.tn}>(t, m, n);",
                  *(f"        {base}[{g}] = owned_offset<{config.wm}, {config.tm}>({4 * g}, m);"
                    for g in range(config.tm // 4)),
                  *(f"        {base}[{4 + g}] = owned_offset<{config.wn}, {config.tn}>({4 * g}, n);"
                    for g in range(config.tn // 4)),
                  "    }"]
    return "\n".join(lines + ["}"]) + "\n"


def test_every_fragment_read_returns_in_two_cycles(tmp_path):
    """Every LDS.128 of every configuration, float32, takes the 2 cycles of the model, by the lane map
    the kernel computes; the old row-by-row lane map (lane / LANES_N, lane % LANES_N) would take 4 for B."""
    for path in kernels_dir().iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, tmp_path / path.name)
    configs = tiles.TILE_CONFIGS
    (tmp_path / "probe.cu").write_text(lane_map_probe(configs))
    out = np.full((len(configs), 256, 8), -1, np.int32)
    emulator(kernel_dir=tmp_path).function("probe.cu", "lane_maps")((1, 1, 1), (256, 1, 1), (out,))
    for c, config in enumerate(configs):
        for warp in range(config.threads // 32):
            lanes = out[c, 32 * warp:32 * warp + 32]
            for g in list(range(config.tm // 4)) + list(range(4, 4 + config.tn // 4)):
                assert lds128_cycles(list(4 * lanes[:, g])) == 2, (config.name, warp, g, lanes[:, g])
    # The model tells the old map apart: 16 lanes of a large warp, each its own B fragment.
    old_b = [4 * 4 * (lane % 16) for lane in range(32)]
    assert lds128_cycles(old_b) == 4 and lds128_cycles([4 * 4 * (lane // 2 % 16) for lane in range(32)]) == 2


# ----------------------------------------------------------------------------------------------------
# Through the backend objects: views, degenerate sizes, 64-bit offsets, determinism, negative controls
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("operand", ["a", "b"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_gemm_on_any_operand_layout_matches_float64(name, operand):
    backend = emulate_backend()
    rng = np.random.default_rng(7)
    m, n, k = 37, 45, 70
    a, b = stored(rng, (m, k), np.float32), stored(rng, (n, k), np.float32)  # NT: dX = dY·Wᵀ
    if operand == "a":
        a = layout(a, name)
    else:
        b = layout(b, name)
    c = poisoned(np, (m, n), np.float32)
    backend.gemm(a, b.T, c, alpha=1.0, beta=0.0)
    assert_close(c, gemm_reference(a, b, False, True, 1.0, 0.0, c, None), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
def test_degenerate_sizes_write_beta_c_plus_bias_or_nothing(dtype):
    backend = emulate_backend()
    rng = np.random.default_rng(3)
    one = stored(rng, (1, 1), DTYPES[dtype])
    c = poisoned(np, (1, 1), DTYPES[dtype])
    backend.gemm(one, one, c, alpha=1.0, beta=0.0)
    assert_close(c, one.astype(np.float64) ** 2, dtype)
    # K = 0: C = beta·C + bias; with beta = 0 the poisoned C is never read.
    bias = stored(rng, (1, 9), DTYPES[dtype])[0]
    empty_a, empty_b = np.empty((5, 0), DTYPES[dtype]), np.empty((0, 9), DTYPES[dtype])
    c = poisoned(np, (5, 9), DTYPES[dtype])
    backend.gemm(empty_a, empty_b, c, alpha=1.0, beta=0.0, bias=bias)
    assert np.array_equal(c, np.broadcast_to(bias, (5, 9)))
    before = stored(rng, (5, 9), DTYPES[dtype]).copy()
    c = before.copy()
    backend.gemm(empty_a, empty_b, c, alpha=1.0, beta=0.5)
    assert_close(c, 0.5 * before.astype(np.float64), dtype)
    # M = 0 or N = 0: nothing to do, nothing launched.
    backend.gemm(np.empty((0, 4), DTYPES[dtype]), np.ones((4, 3), DTYPES[dtype]), np.empty((0, 3), DTYPES[dtype]),
                 alpha=1.0, beta=0.0)


def test_gemm_offsets_beyond_2_to_the_31_elements():
    """A, B and C are views with a leading dimension of 2**30 + 64: their last rows start past element
    2**31, where 32-bit index arithmetic would wrap around."""
    runtime = emulator(check_bounds=False)  # bounds checking would copy the whole 6 GiB span
    rng = np.random.default_rng(11)
    m = k = 3
    n = 40
    storage = np.zeros((3, 2**30 + 64), np.float16)  # calloc: only the touched pages are backed
    a, b, c = storage[:, :k], storage[:, 8:8 + n], storage[:, 64:64 + n]
    a[...], b[...], c[...] = rng.standard_normal((m, k)), rng.standard_normal((k, n)), np.nan
    KernelBackend(runtime).gemm(a, b, c, alpha=1.0, beta=0.0)
    assert_close(c, gemm_reference(a, b, False, False, 1.0, 0.0, c, None), "float16")
    del a, b, c, storage


@pytest.mark.parametrize("dtype,config", [("float32", "large"), ("bfloat16", "medium"), ("float64", "small")])
def test_gemm_is_bitwise_equal_across_thread_schedules(dtype, config):
    rng = np.random.default_rng(5)
    m, n, k = SHAPES[config]
    a, b = stored(rng, (k, m), DTYPES[dtype]), stored(rng, (k, n), DTYPES[dtype])  # TN: dW = Xᵀ·dY
    c0 = stored(rng, (m, n), DTYPES[dtype]).copy()
    results = []
    for schedule in ("forward", "reverse", "shuffle"):
        for splits in (1, 3):
            backend = KernelBackend(emulator(schedule=schedule, seed=1), Tuning(config=config, splits=splits))
            c = c0.copy()
            backend.gemm(a.T, b, c, alpha=1.0, beta=1.0)
            results.append((splits, c.tobytes()))
    for splits in (1, 3):
        assert len({r for s, r in results if s == splits}) == 1


def broken_copy(tmp_path, pattern: str, occurrence: int = -1, replacement: str = ""):
    """kernels/ copied into tmp_path with one match of `pattern` in gemm.cu replaced (deleted by default)."""
    for path in kernels_dir().iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, tmp_path / path.name)
    source = (tmp_path / "gemm.cu").read_text()
    match = list(re.finditer(pattern, source))[occurrence]
    (tmp_path / "gemm.cu").write_text(source[:match.start()] + replacement + source[match.end():])
    return tmp_path


# The K loop's barriers are the first two; the third orders the epilogue's staging after the K loop.
@pytest.mark.parametrize("pattern,occurrence", [(r"__syncthreads\(\);", 1), (r"to_other = -to_other;", -1)],
                         ids=["barrier", "stage-flip"])
def test_a_broken_k_loop_is_caught(tmp_path, pattern, occurrence):
    """Negative controls: without the K loop's __syncthreads, or with the stage pointers moved the same
    way every step (into memory past the second stage), the result is wrong or the emulator objects."""
    assert len(re.findall(r"__syncthreads\(\);", (kernels_dir() / "gemm.cu").read_text())) == 3
    broken_dir = broken_copy(tmp_path, pattern, occurrence)

    rng = np.random.default_rng(9)
    a, b = stored(rng, (64, 64), np.float32), stored(rng, (64, 64), np.float32)
    expected = gemm_reference(a, b, False, False, 1.0, 0.0, None, None)
    tuning = Tuning(config="medium", splits=1)
    intact = poisoned(np, (64, 64), np.float32)
    KernelBackend(emulator(), tuning).gemm(a, b, intact, alpha=1.0, beta=0.0)
    assert_close(intact, expected, "float32")
    broken_backend = KernelBackend(emulator(kernel_dir=broken_dir), tuning)
    broken = poisoned(np, (64, 64), np.float32)
    try:
        broken_backend.gemm(a, b, broken, alpha=1.0, beta=0.0)
    except EmulationError:
        return
    assert rel_err(broken, expected) > TOLERANCE["float32"]


def test_a_missing_bounds_check_is_reported(tmp_path):
    """Negative control: without the epilogue's row check, the last tile writes past the end of C."""
    broken_dir = broken_copy(tmp_path, r"if \(row >= M\) continue;")
    rng = np.random.default_rng(10)
    a, b = stored(rng, (70, 33), np.float32), stored(rng, (33, 50), np.float32)  # 70 rows: a partial tile
    c = poisoned(np, (70, 50), np.float32)
    broken_backend = KernelBackend(emulator(kernel_dir=broken_dir), Tuning(config="medium", splits=1))
    with pytest.raises(EmulationError, match="out-of-bounds write"):
        broken_backend.gemm(a, b, c, alpha=1.0, beta=0.0)


@pytest.mark.parametrize("pattern,replacement", [(r"row < row_end && col \+ V <= col_end", "true"),
                                                 (r"m0 \+ BM <= M && ", "")], ids=["loader", "interior"])
def test_a_missing_load_bounds_check_is_reported(tmp_path, pattern, replacement):
    """Negative control: a tile loader that trusts its rows, or a block taken for interior though its
    tile crosses the last row, reads past the end of A."""
    broken_dir = broken_copy(tmp_path, pattern, replacement=replacement)
    rng = np.random.default_rng(11)
    a, b = stored(rng, (70, 32), np.float32), stored(rng, (32, 64), np.float32)
    c = poisoned(np, (70, 64), np.float32)
    broken_backend = KernelBackend(emulator(kernel_dir=broken_dir), Tuning(config="medium", splits=1))
    with pytest.raises(EmulationError, match="out-of-bounds read"):
        broken_backend.gemm(a, b, c, alpha=1.0, beta=0.0)


# ----------------------------------------------------------------------------------------------------
# Column sums (the bias gradient)
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_colsum_matches_float64_with_and_without_beta(dtype):
    backend = emulate_backend()
    rng = np.random.default_rng(13)
    for rows, cols in [(0, 5), (1, 1), (1000, 37), (70, 300)]:
        for beta in (0.0, 0.5):
            a = stored(rng, (rows, cols), DTYPES[dtype], cols + 3)  # ld > cols
            out = output(rng, (1, cols), DTYPES[dtype], beta)[0]
            expected = a.astype(np.float64).sum(axis=0) + (beta * out.astype(np.float64) if beta else 0)
            backend.colsum(a, out, beta=beta)
            assert_close(out, expected, dtype)


@pytest.mark.parametrize("name", ["fortran", "reversed", "strided"])
def test_colsum_on_any_layout_matches_float64(name):
    rng = np.random.default_rng(17)
    a = layout(stored(rng, (300, 21), np.float32), name)
    out = poisoned(np, 21, np.float32)
    emulate_backend().colsum(a, out, beta=0.0)
    assert_close(out, a.astype(np.float64).sum(axis=0), "float32")


def test_colsum_is_bitwise_repeatable():
    rng = np.random.default_rng(19)
    a = stored(rng, (5000, 40), np.float32)
    sums = set()
    for schedule in ("forward", "reverse", "forward"):
        out = poisoned(np, 40, np.float32)
        KernelBackend(emulator(schedule=schedule)).colsum(a, out, beta=0.0)
        sums.add(out.tobytes())
    assert len(sums) == 1
    assert plan.colsum_chunks(5000, 40)[1] > 1  # the two-pass path ran


# (batch of a, of b, of c): stacks, a broadcast matrix on either side, dims that do not merge.
BATCHES = [((3,), (3,), (3,)), ((3,), (), (3,)), ((), (2,), (2,)), ((2, 1), (1, 3), (2, 3))]


# ----------------------------------------------------------------------------------------------------
# Stacks of matrices: one strided-batched launch, stride 0 for a broadcast operand
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,config", [("float32", "small"), ("float16", "medium"), ("float64", "small")])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=["NN", "NT", "TN", "TT"])
def test_stacks_and_broadcast_operands_match_float64(runtime, dtype, config, trans_a, trans_b):
    rng = np.random.default_rng([21, trans_a, trans_b])
    m, n, k = 37, 21, 19
    backend = KernelBackend(runtime, Tuning(config=config))
    for batch_a, batch_b, batch in BATCHES:
        a = rng.standard_normal(batch_a + ((k, m) if trans_a else (m, k))).astype(DTYPES[dtype])
        b = rng.standard_normal(batch_b + ((n, k) if trans_b else (k, n))).astype(DTYPES[dtype])
        if trans_a and batch_a:  # a stack walked backwards: a negative batch stride
            a = a[::-1]
        a_full, b_full = np.broadcast_to(a, batch + a.shape[-2:]), np.broadcast_to(b, batch + b.shape[-2:])
        c = poisoned(np, batch + (m, n), DTYPES[dtype])
        backend.gemm(op(a_full, trans_a), op(b_full, trans_b), c, alpha=1.0, beta=0.0)
        assert_close(c, np.matmul(op(a_full.astype(np.float64), trans_a), op(b_full.astype(np.float64), trans_b)),
                     dtype)


# A's offset before the K loop; C's in the epilogue's c_offset
@pytest.mark.parametrize("offset", ["A += work.batch * batch_stride_a;", "work.batch * batch_stride_c + "])
def test_an_ignored_batch_stride_is_caught(tmp_path, offset):
    """Negative control: a kernel that ignores one operand's batch stride gets a stack wrong."""
    broken = KernelBackend(emulator(kernel_dir=broken_copy(tmp_path, re.escape(offset))), Tuning(config="small"))
    rng = np.random.default_rng(22)
    a, b = batched(rng, (3,), (9, 8), np.float32), batched(rng, (3,), (8, 10), np.float32)
    c = poisoned(np, (3, 9, 10), np.float32)
    broken.gemm(a, b, c, alpha=1.0, beta=0.0)
    assert rel_err(c, np.matmul(a.astype(np.float64), b)) > TOLERANCE["float32"]


def test_linear_matmul_on_a_stack_is_one_launch_without_copies():
    runtime = RecordingRuntime(emulator())
    rng = np.random.default_rng(23)
    a, b = batched(rng, (2, 3), (20, 30), np.float32), batched(rng, (), (17, 30), np.float32)
    out = linear.matmul(a, b.T, backend=KernelBackend(runtime))  # b: one transposed matrix under a 2 x 3 stack
    assert_close(out, np.matmul(a.astype(np.float64), b.T), "float32")
    [launch] = runtime.launched
    assert launch.grid[2] == 6 and launch.args[8].ctypes.data == b.ctypes.data and launch.args[10] == 0
    assert launch.args[5].ctypes.data == a.ctypes.data


def test_a_stack_whose_broadcast_operand_does_not_merge_matches_float64():
    """a (2, 3, 5, 4) is contiguous, so its batch dimensions merge into one stride; b (1, 3, 4, 6),
    broadcast along the first, does not (strides 0 and 96 bytes): the merge must check every operand's
    strides, or the launch walks b's 3 matrices as if they were 6."""
    emulate_backend()
    rng = np.random.default_rng(31)
    a, b = rng.standard_normal((2, 3, 5, 4)).astype(np.float32), rng.standard_normal((1, 3, 4, 6)).astype(np.float32)
    out = linear.matmul(a, b, backend="emulate")
    assert_close(out, np.matmul(a.astype(np.float64), b.astype(np.float64)), "float32")


def test_a_reversed_half_stack_with_unaligned_rows_is_copied_whole():
    """a[::-1] walks the stack backwards (a negative batch stride) and its rows of 21 halves (42 bytes)
    are not 16-byte aligned: the tensor-core plan copies it into aligned rows, every matrix of it (a
    negative stride is no broadcast)."""
    emulate_backend()
    rng = np.random.default_rng(37)
    a, w = rng.standard_normal((3, 30, 21)).astype(np.float16), rng.standard_normal((21, 16)).astype(np.float16)
    out = linear.matmul(a[::-1], w, backend="emulate")
    assert_close(out, np.matmul(a[::-1].astype(np.float64), w.astype(np.float64)), "float16")
    # On sm_80 the tensor-core kernel (the emulator's 9.0 above ran the Hopper tiles on the same copy).
    [launch] = plan.plan_gemm(np, a[::-1], np.broadcast_to(w, (3, 21, 16)), np.empty((3, 30, 16), np.float16),
                              alpha=1.0, beta=0.0, arch=80)
    assert launch.source == "tc_gemm.cu" and launch.args[7] == 30 * 24  # the copy: 3 matrices of 30 rows of 24
