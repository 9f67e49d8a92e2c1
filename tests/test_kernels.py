"""The launch plan (no compiler needed) and every GEMM and reduction kernel on the emulator.

The kernel tests run kernels/*.cu through the emulate backend (g++ against kernels/emu): every
element type x transpose combination x tile configuration x vector/scalar path, each with and
without split-K and with the bias and beta epilogues, on sizes that are not tile multiples, against
a float64 reference, with NaN-poisoned outputs.
"""
from __future__ import annotations

import re
import shutil

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from linear.backends import BackendUnavailable, cost, get_backend, plan, tiles
from linear.backends.emulate import EmulationError
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from linear.backends.sources import kernels_dir
from reference import TOLERANCE, assert_close, poisoned, rel_err

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
          "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
TRANS = [(False, False), (False, True), (True, False), (True, True)]
# Sizes that are no tile multiple in any direction, with several K steps and split-K slices: block
# (0, 0) is an interior tile (gemm.cu's unchecked loop) in the splits of whole K steps, every other
# block and the last split (K % 8 != 0) run the checked loop.
SHAPES = {"large": (129, 131, 65), "medium": (70, 66, 33), "small": (70, 50, 33), "warp": (129, 131, 65),
          "warp_deep": (129, 131, 65), "warp_wide": (129, 259, 33), "warp_medium": (70, 66, 33)}
# Every (dtype, config) pair that is instantiated.
DTYPE_CONFIGS = [(dtype, config.name) for dtype in DTYPES for config in tiles.TILE_CONFIGS if dtype in config.dtypes]


def emulator(**options):
    """An EmulatorRuntime (skipped locally, failed in CI, without a C++ compiler)."""
    try:
        from linear.backends.emulate import EmulatorRuntime
        return EmulatorRuntime(**options)
    except BackendUnavailable as e:
        require(False, f"the emulate backend ({e})")


def stored(rng, shape, dtype, ld=None) -> np.ndarray:
    """Random normal values as a row-major view with leading dimension ld; the rest of each row is NaN."""
    rows, cols = shape
    storage = np.full((rows, cols if ld is None else ld), np.nan, dtype=dtype)
    storage[:, :cols] = rng.standard_normal((rows, cols))
    return storage[:, :cols]


def reference(a, b, trans_a, trans_b, alpha, beta, c, bias) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    out = alpha * ((a64.T if trans_a else a64) @ (b64.T if trans_b else b64))
    if beta != 0:
        out += beta * c.astype(np.float64)
    if bias is not None:
        out += bias.astype(np.float64)
    return out


def output(rng, shape, dtype, beta) -> np.ndarray:
    """C before the call: NaN where it must not be read (beta = 0), random values otherwise."""
    return poisoned(np, shape, dtype) if beta == 0 else stored(rng, shape, dtype).copy()


# ----------------------------------------------------------------------------------------------------
# The plan: stride mapping, configuration and split-K choice, launches (no compiler)
# ----------------------------------------------------------------------------------------------------

def test_row_major_views_keep_their_flag_and_leading_dimension():
    x = np.zeros((6, 10), np.float32)
    assert plan.as_operand(np, x, False) == plan.Operand(x, 10, False)
    sliced = x[:, :7]
    operand = plan.as_operand(np, sliced, True)
    assert operand.array is sliced and (operand.ld, operand.trans) == (10, True)


def test_column_major_views_flip_the_flag_without_a_copy():
    x = np.zeros((6, 10), np.float32)
    for view in (x.T, np.asfortranarray(x[:, :4]), x[:, :4].T):
        operand = plan.as_operand(np, view, False)
        assert operand.trans and np.shares_memory(operand.array, x if view.base is x else view)
        assert operand.array.flags.c_contiguous or operand.array.strides[1] == 4
        assert operand.ld == operand.array.strides[0] // 4


def test_views_without_a_leading_dimension_are_copied_into_aligned_rows():
    x = np.arange(60, dtype=np.float32).reshape(6, 10)
    for view in (x[::-1], x[:, ::-1], x[:, ::2], x[::2, ::2].T):
        operand = plan.as_operand(np, view, False)
        assert not np.shares_memory(operand.array, x) and operand.array.strides == (operand.ld * 4, 4)
        assert not operand.trans and np.array_equal(operand.array, view) and plan.vector_aligned(operand)
    every_other_row = plan.as_operand(np, x[::2], False)  # a larger row stride is a leading dimension
    assert np.shares_memory(every_other_row.array, x) and every_other_row.ld == 20


def test_single_rows_columns_and_empty_matrices_map_without_copies():
    x = np.zeros((5, 9), np.float64)
    row, column, empty = x[2:3, ::1], x[:, 3:4], x[:, :0]
    assert plan.as_operand(np, row, False) == plan.Operand(row, 9, False)
    assert plan.as_operand(np, column, False).array is column
    assert plan.as_operand(np, empty, True).array is empty


def test_vector_path_needs_aligned_pointer_and_leading_dimension():
    base = np.zeros((8, 16), np.float32)
    assert plan.address(base) % 16 == 0
    assert plan.vector_aligned(plan.as_operand(np, base, False))
    assert plan.vector_aligned(plan.as_operand(np, base[:, :5], False))  # ld 16 floats = 64 bytes
    assert not plan.vector_aligned(plan.as_operand(np, base[:, 1:], False))  # pointer off by 4 bytes
    assert not plan.vector_aligned(plan.as_operand(np, np.zeros((8, 15), np.float32), False))  # ld 60 bytes
    assert plan.vector_aligned(plan.as_operand(np, np.zeros((1, 15), np.float32), False))  # one row: no ld


def old_heuristic(m, n, k, batch=1):
    """The thresholds the cost model replaced: the largest tile whose tiles fill 132 SMs, else the
    smallest; split-K into up to ⌈132 / tiles⌉ slices of >= 512 when K >= 1024, single matrices only."""
    config = next((c for c in tiles.HEURISTIC_CONFIGS if c.tiles(m, n) >= 132), tiles.HEURISTIC_CONFIGS[-1])
    count = config.tiles(m, n)
    splits = 1 if batch > 1 or count >= 132 or k < 1024 else min(-(-132 // count), k // 512, 32)
    return config, splits


# Training shapes (B, F, D) and their three products as (M, N, K).
LAYERS = [(b, f, d) for b in (32, 256, 2048, 8192) for f in (256, 784, 4096, 11008) for d in (256, 1024, 4096, 11008)]
PRODUCTS = {"NN": lambda b, f, d: (b, d, f), "NT": lambda b, f, d: (b, f, d), "TN": lambda b, f, d: (f, d, b)}


def test_the_cost_model_is_no_worse_than_the_thresholds_and_keeps_the_card_busy():
    for b, f, d in LAYERS:
        for product, mnk in PRODUCTS.items():
            m, n, k = mnk(b, f, d)
            best = cost.choose(m, n, k)
            old = cost.estimate(*old_heuristic(m, n, k), m, n, k, 1, "float32", True)
            assert best.seconds <= (1 + cost.TIE) * old.seconds, (b, f, d, product, best, old)
            # >= 8 warps per SM where the problem has that much work (its outputs at 4 x 4 a thread,
            # times the K slices it may be split into); a K loop of >= 4096 with the card less than
            # half full is split.
            work = m * n / 16 / tiles.WARP_SIZE * len(cost.split_counts(k, 1)) / cost.H100.sms
            assert best.warps_per_sm >= 8 or work < 8, (b, f, d, product, best, work)
            if k >= 4096 and best.config.tiles(m, n) < cost.H100.sms // 2:
                assert best.splits > 1, (b, f, d, product, best)


def test_the_cost_model_fixes_the_cases_of_issue_10():
    # (256, 4096, 1024) forward: no longer 32 x 32 tiles over a 4096-long K loop without split-K.
    best = cost.choose(256, 1024, 4096)
    assert (best.config.name, best.splits) != ("small", 1) and best.warps_per_sm >= 8
    # Long-batch dW (B = 8192, F = 784, D = 256): K = 8192 is split.
    assert cost.choose(784, 256, 8192).splits > 1
    # 132-263 tiles of 128 x 128: the busiest SM carries no more than 4/3 of the average load.
    for size in (1536, 1664, 2048):  # 144, 169, 256 large tiles
        best = cost.choose(size, size, 4096)
        blocks = best.config.tiles(size, size) * best.splits
        assert blocks / (-(-blocks // cost.H100.sms) * cost.H100.sms) >= 0.75, (size, best)


def test_tensor_core_tiles_are_bounded_by_shared_memory_bandwidth():
    """The counts of bench/NOTES.md: 64 x 32 warp tiles move 2 wavefronts per HMMA.16816 (half the peak),
    64 x 64 tiles 1.4; TF32's rounding pass adds a third to its traffic."""
    bound = {(name, dtype): cost.tensor_core_shared_bound(tiles.CONFIGS_BY_NAME[name], dtype)
             for name in ("tc_large", "tc_small", "tc_wide") for dtype in ("bfloat16", "float32")}
    assert bound["tc_large", "bfloat16"] == 0.5 and bound["tc_large", "float32"] == pytest.approx(1 / 3)
    assert bound["tc_small", "bfloat16"] == pytest.approx(1 / 3)
    assert bound["tc_wide", "bfloat16"] == pytest.approx(64 / 88)  # 88 wavefronts per 64 HMMA
    assert cost.efficiency(tiles.CONFIGS_BY_NAME["tc_large"], "float16") == 0.5
    # Tensor-core plans keep the card busy as the SIMT ones do, and big products take the big tile.
    for b, f, d in LAYERS:
        for product, mnk in PRODUCTS.items():
            m, n, k = mnk(b, f, d)
            for dtype in ("bfloat16", "float32"):
                best = cost.choose(m, n, k, 1, dtype, True, tiles.TC_HEURISTIC_CONFIGS)
                work = m * n / (64 * 32) / tiles.WARP_SIZE * len(cost.split_counts(k, 1)) / cost.H100.sms
                assert best.warps_per_sm >= 8 or work < 8, (b, f, d, product, dtype, best)
                if min(m, n) >= 2048 and k >= 1024:
                    assert best.config.name == "tc_large", (b, f, d, product, dtype, best)


def test_blocks_per_sm_follow_registers_shared_memory_and_threads():
    large, small = tiles.CONFIGS_BY_NAME["large"], tiles.CONFIGS_BY_NAME["small"]
    assert cost.blocks_per_sm(large, "float32", True) == 2  # <= 128 registers: 2 x 256 threads
    assert cost.blocks_per_sm(large, "float64", True) == 1  # > 128 registers
    few_registers = cost.DeviceLimits(sms=132, registers_per_sm=32768)
    assert cost.blocks_per_sm(large, "float32", True, few_registers) == 1
    little_shared = cost.DeviceLimits(sms=132, shared_per_sm=3 * (small.shared_bytes(4) + 1024))
    assert cost.blocks_per_sm(small, "float32", True, little_shared) == 3
    few_threads = cost.DeviceLimits(sms=132, registers_per_sm=2**20, threads_per_sm=1024)
    assert cost.blocks_per_sm(small, "float32", True, few_threads) == 1024 // small.threads


def test_the_plan_follows_the_device():
    """Fewer SMs, fewer splits: the same product on a card with a quarter of the SMs."""
    big, quarter = cost.H100, cost.DeviceLimits(sms=33)
    assert cost.choose(784, 256, 8192, device=quarter).splits < cost.choose(784, 256, 8192, device=big).splits
    [first, *_] = gemm_launches(784, 256, 8192, trans_a=True, device=quarter)
    assert first.grid[2] == cost.choose(784, 256, 8192, device=quarter).splits


def test_candidates_are_never_chosen_and_refuse_other_dtypes():
    candidates = [config for config in tiles.TILE_CONFIGS if config.candidate]
    assert candidates and all(config not in tiles.HEURISTIC_CONFIGS for config in candidates)
    sizes = [1, 64, 100, 256, 1000, 4096, 8192, 11008, 65536]
    assert all(not cost.choose(m, n, 1024).config.candidate for m in sizes for n in sizes)
    assert all(set(config.dtypes) == set(DTYPES) for config in tiles.HEURISTIC_CONFIGS)
    [launch] = gemm_launches(300, 300, 64, tuning=Tuning(config="warp"))  # chosen by name, it runs
    assert ", 128, 128, 8, 32, 64, 8, 8, " in launch.name and launch.block == (256, 1, 1)
    with pytest.raises(ValueError, match="'warp' is instantiated for float32 only, got dtype float64"):
        gemm_launches(300, 300, 64, "float64", tuning=Tuning(config="warp"))


def test_tile_configs_must_tile_with_whole_blocks_or_warps():
    with pytest.raises(ValueError, match="does not tile"):
        tiles.TileConfig("x", bm=128, bn=128, bk=8, wm=48, wn=64, tm=8, tn=8)
    with pytest.raises(ValueError, match="neither the block"):
        tiles.TileConfig("x", bm=128, bn=128, bk=8, wm=64, wn=64, tm=8, tn=8)  # groups of 64 threads


def test_split_k_only_for_single_matrices_and_long_enough_slices():
    assert cost.choose(4096, 4096, 65536).splits == 1  # the card is full
    assert cost.choose(64, 64, 1000).splits == 1  # K too short to split
    assert cost.choose(64, 64, 65536).splits > 1
    assert cost.choose(64, 64, 65536, batch=4).splits == 1  # a stack fills the card with its batch
    assert all(cost.split_k(4096, s, 8)[0] >= cost.MIN_K_PER_SPLIT for s in cost.split_counts(4096, 1))


def test_split_k_slices_are_whole_steps_that_cover_k():
    for k in (0, 1, 7, 8, 33, 65, 1000, 4097):
        for requested in (1, 2, 3, 5, 64):
            k_per_split, splits = cost.split_k(k, requested, 8)
            assert k_per_split % 8 == 0 and k_per_split > 0 and 1 <= splits <= max(requested, 1)
            assert (splits - 1) * k_per_split < max(k, 1) <= splits * k_per_split or k == 0 and splits == 1


def gemm_launches(m, n, k, dtype="float32", trans_a=False, trans_b=False, tuning=Tuning(), bias=False, **device):
    a = np.zeros((k, m) if trans_a else (m, k), DTYPES[dtype])
    b = np.zeros((n, k) if trans_b else (k, n), DTYPES[dtype])
    c = np.zeros((m, n), DTYPES[dtype])
    return plan.plan_gemm(np, a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.0,
                          bias=np.zeros(n, DTYPES[dtype]) if bias else None, tuning=tuning, **device)


def test_tensor_cores_run_half_types_and_tf32_on_sm80_and_later_for_aligned_operands():
    def source(dtype, m=64, n=64, k=64, **device):
        return gemm_launches(m, n, k, dtype, **device)[0].source
    for dtype in ("float16", "bfloat16"):
        assert source(dtype, arch=80) == source(dtype, arch=90) == "tc_gemm.cu"
        assert source(dtype, arch=75) == source(dtype) == "gemm.cu"  # older cards; no device named
        assert source(dtype, 64, 64, 63, arch=90, tuning=Tuning(vector=False)) == "gemm.cu"  # as they are
    assert source("float32", arch=90) == "gemm.cu" and source("float32", arch=90, tf32=True) == "tc_gemm.cu"
    assert source("float64", arch=90, tf32=True) == "gemm.cu"
    assert gemm_launches(4096, 4096, 64, "bfloat16", arch=90)[0].name.endswith("128, 128, 32, 64, 32, 4>")
    assert gemm_launches(512, 512, 64, "bfloat16", arch=90)[0].name.endswith("64, 64, 32, 32, 32, 3>")
    assert source("float16", tuning=Tuning(config="medium"), arch=90) == "gemm.cu"  # named: the SIMT kernel
    with pytest.raises(ValueError, match="'tc_small' runs on tensor cores, which this call cannot use"):
        gemm_launches(64, 64, 64, "float32", tuning=Tuning(config="tc_small"), arch=90)


def test_unaligned_operands_are_copied_to_aligned_rows_for_the_tensor_cores():
    """126-byte rows of A (K = 63) cannot go by 16-byte cp.async: A is copied into rows of 64 elements
    (128 bytes), B is passed as it is, and the caller's A is only read."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((64, 63)).astype(np.float16), rng.standard_normal((63, 64)).astype(np.float16)
    a_before = a.copy()
    c = np.zeros((64, 64), np.float16)
    [launch] = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, arch=90)
    assert launch.source == "tc_gemm.cu"
    copied, lda = launch.args[5], launch.args[6]
    assert lda == 64 and copied.shape == (64, 63) and copied.strides == (128, 2) and np.array_equal(copied, a)
    assert launch.args[8] is b and np.array_equal(a, a_before)
    # A stack: its broadcast operand is copied once and stays broadcast (batch stride 0).
    [stacked] = plan.plan_gemm(np, np.broadcast_to(a, (3, 64, 63)), b, np.zeros((3, 64, 64), np.float16),
                               trans_a=False, trans_b=False, alpha=1.0, beta=0.0, arch=90)
    assert stacked.source == "tc_gemm.cu" and stacked.grid[2] == 3
    assert stacked.args[6] == 64 and stacked.args[7] == 0 and np.array_equal(stacked.args[5][0], a)
    # Where the cost model says the copy costs more than the tensor cores save (a device with a slow
    # memory), the SIMT kernel on the arrays as they are.
    slow = cost.DeviceLimits(sms=132, bandwidth=1e6)
    assert not cost.aligned_copies_pay(64, 64, 63, 1, "float16", [a.nbytes], slow)
    [simt] = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, arch=90, device=slow)
    assert simt.source == "gemm.cu" and simt.args[5] is a
    # The SIMT kernel asked for, or a dtype without tensor cores: the arrays as they are.
    named = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, arch=90,
                           tuning=Tuning(config="medium"))
    assert named[0].source == "gemm.cu" and named[0].args[5] is a
    a64 = a.astype(np.float64)
    assert plan.plan_gemm(np, a64, b.astype(np.float64), c.astype(np.float64), trans_a=False, trans_b=False,
                          alpha=1.0, beta=0.0, arch=90)[0].args[5] is a64


def test_gemm_launch_arguments_have_exact_types():
    [launch] = gemm_launches(70, 56, 32, "float16", tuning=Tuning(config="small"), bias=True)  # rows of 64, 112 B
    types = [type(arg) for arg in launch.args]
    assert types == [np.int32] * 5 + [np.ndarray, np.int64, np.int64] * 2 + [np.ndarray] + [np.int64] * 3 + \
        [np.float32, np.float32, np.ndarray, np.int32] + [np.int32, np.ndarray, np.int32]  # the activation's
    assert launch.grid == (3, 2, 1) and launch.block == (64, 1, 1)
    assert launch.name == "linear_gemm<__half, __half, false, false, 32, 32, 8, 32, 32, 4, 4, true>"
    [launch] = gemm_launches(5, 5, 5, "float64")
    assert type(launch.args[15]) is np.float64 and launch.args[-4] == 0  # add_bias
    assert launch.args[-3] == 0 and launch.args[-1] == 0  # no activation, no Z stored


def test_split_k_plan_writes_a_workspace_then_reduces_it():
    first, second = gemm_launches(70, 50, 33, "bfloat16", tuning=Tuning(splits=3), bias=True)
    workspace = first.args[11]
    assert workspace.shape == (3, 70, 50) and workspace.dtype == np.float32
    assert first.grid[2] == 3 and first.args[3] == 16 and first.args[4] == 3  # k_per_split, splits
    assert "linear_gemm<__nv_bfloat16, float," in first.name and first.args[-4] == 0  # no bias yet
    assert second.name == "linear_sum_splits<__nv_bfloat16>" and second.args[3] is workspace
    assert second.args[-4] == 1


def test_degenerate_shapes_plan_nothing_or_a_k0_launch():
    assert gemm_launches(0, 5, 5) == [] and gemm_launches(5, 0, 5) == []
    [launch] = gemm_launches(5, 5, 0)
    assert launch.grid == (1, 1, 1)


def test_overrides_are_checked():
    with pytest.raises(ValueError, match="config"):
        Tuning(config="huge")
    with pytest.raises(ValueError, match="splits"):
        Tuning(splits=0)
    a = np.zeros((8, 15), np.float32)  # ld of 60 bytes
    with pytest.raises(ValueError, match="16-byte"):
        plan.plan_gemm(np, a, a.T.copy(), np.zeros((8, 8), np.float32), trans_a=False, trans_b=False,
                       alpha=1.0, beta=0.0, tuning=Tuning(vector=True))


def test_sizes_near_int32_are_refused_before_any_copy():
    """2**31 - 1 fits an int, but a tile starting near it would wrap: the plan refuses it."""
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**31 - 1, 2), (0, 0))
    with pytest.raises(ValueError, match="K = 2147483647"):
        plan.plan_gemm(np, huge.T, huge, np.zeros((2, 2), np.float32), trans_a=False, trans_b=False,
                       alpha=1.0, beta=0.0)


def test_plans_launch_exactly_the_listed_instantiations():
    """The compile checks build tiles.instantiations(); it must be what the plans can launch."""
    launched = {}
    for dtype, config in DTYPE_CONFIGS:
        for trans_a, trans_b in TRANS:
            for vector in (False, True):
                for splits in (1, 2):
                    tuning = Tuning(config=config, vector=vector, splits=splits)
                    for launch in gemm_launches(16, 16, 40, dtype, trans_a, trans_b, tuning):
                        launched[launch.name] = launch.shared_mem
    for dtype, config in [(dtype, config.name) for config in tiles.TC_CONFIGS for dtype in config.dtypes]:
        for trans_a, trans_b in TRANS:
            for splits in (1, 2):
                tuning = Tuning(config=config, splits=splits)
                for launch in gemm_launches(16, 16, 40, dtype, trans_a, trans_b, tuning, arch=80, tf32=True):
                    launched[launch.name] = launch.shared_mem
    for dtype in DTYPES:
        a, out = np.zeros((100, 3), DTYPES[dtype]), np.zeros(3, DTYPES[dtype])
        launched.update((launch.name, launch.shared_mem) for launch in plan.plan_colsum(np, a, out, beta=0.0))
    assert launched == {kernel.name: kernel.shared_mem for kernel in tiles.instantiations()}


def test_colsum_chunks_cover_the_rows():
    for rows in (0, 1, 63, 64, 65, 1000, 100000):
        for cols in (1, 300, 5000):
            rows_per_chunk, chunks = plan.colsum_chunks(rows, cols)
            assert chunks >= 1 and (chunks - 1) * rows_per_chunk < max(rows, 1) <= chunks * rows_per_chunk
            assert chunks == 1 or rows_per_chunk >= plan.COLSUM_MIN_ROWS_PER_CHUNK


# ----------------------------------------------------------------------------------------------------
# Every GEMM instantiation on the emulator
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime():
    return emulator()


# (splits, alpha, beta, bias): the forward epilogue, accumulation, and split-K with both.
EPILOGUES = [(1, 1.0, 0.0, True), (1, -0.5, 0.75, False), (3, 2.0, 0.5, True)]


@pytest.mark.parametrize("vector", [False, True], ids=["scalar", "vector"])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=["NN", "NT", "TN", "TT"])
@pytest.mark.parametrize("dtype,config", DTYPE_CONFIGS)
def test_gemm_instantiation(runtime, dtype, trans_a, trans_b, config, vector):
    m, n, k = SHAPES[config]
    rng = np.random.default_rng([m, n, k, trans_a, trans_b, vector])
    # Vector: leading dimensions of 8 elements (16 bytes or more); scalar: odd leading dimensions.
    ld = (lambda cols: -(-cols // 8) * 8) if vector else (lambda cols: cols + 1)
    a_shape, b_shape = ((k, m) if trans_a else (m, k)), ((n, k) if trans_b else (k, n))
    a = stored(rng, a_shape, DTYPES[dtype], ld(a_shape[1]))
    b = stored(rng, b_shape, DTYPES[dtype], ld(b_shape[1]))
    bias = rng.standard_normal(n).astype(DTYPES[dtype])
    t = tiles.ELEMENT_TYPES[dtype]
    for splits, alpha, beta, with_bias in EPILOGUES:
        c = output(rng, (m, n), DTYPES[dtype], beta)
        expected = reference(a, b, trans_a, trans_b, alpha, beta, c, bias if with_bias else None)
        launches = plan.plan_gemm(np, a, b, c, trans_a=trans_a, trans_b=trans_b, alpha=alpha, beta=beta,
                                  bias=bias if with_bias else None,
                                  tuning=Tuning(config=config, splits=splits, vector=vector))
        c_cpp = t.cpp if splits == 1 else t.acc_cpp
        assert launches[0].name == tiles.gemm_name(t, c_cpp, trans_a, trans_b, tiles.CONFIGS_BY_NAME[config], vector)
        assert len(launches) == (1 if splits == 1 else 2) and launches[0].grid[2] == splits
        KernelBackend(runtime).launch(launches)
        assert_close(c, expected, dtype)


# ----------------------------------------------------------------------------------------------------
# Shared-memory fragment reads: the lane map, read from the kernel itself, against a bank model
# ----------------------------------------------------------------------------------------------------

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
# Through the backend objects: views, degenerate sizes, 64-bit offsets, determinism
# ----------------------------------------------------------------------------------------------------

def emulate_backend():
    try:
        return get_backend("emulate")
    except BackendUnavailable as e:
        require(False, f"the emulate backend ({e})")


def layout(x: np.ndarray, name: str) -> np.ndarray:
    """The same values as x in another memory layout."""
    if name == "fortran":
        return np.asfortranarray(x)
    if name == "transposed":  # a transposed view of a C array
        return np.ascontiguousarray(x.T).T
    if name == "reversed":  # negative strides
        return np.ascontiguousarray(x[::-1, ::-1])[::-1, ::-1]
    if name == "strided":  # a non-unit inner stride
        wide = np.empty((x.shape[0], 2 * x.shape[1]), x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    if name == "sliced":  # ld > cols
        wide = np.full((x.shape[0], x.shape[1] + 5), np.nan, x.dtype)
        wide[:, :x.shape[1]] = x
        return wide[:, :x.shape[1]]
    return x


LAYOUTS = ["c", "fortran", "transposed", "reversed", "strided", "sliced"]


@pytest.mark.parametrize("operand", ["a", "b"])
@pytest.mark.parametrize("name", LAYOUTS)
def test_gemm_on_views(name, operand):
    backend = emulate_backend()
    rng = np.random.default_rng(7)
    m, n, k = 37, 45, 70
    a, b = stored(rng, (m, k), np.float32), stored(rng, (n, k), np.float32)  # NT: dX = dY·Wᵀ
    if operand == "a":
        a = layout(a, name)
    else:
        b = layout(b, name)
    c = poisoned(np, (m, n), np.float32)
    backend.gemm(a, b, c, trans_a=False, trans_b=True, alpha=1.0, beta=0.0)
    assert_close(c, reference(a, b, False, True, 1.0, 0.0, c, None), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_degenerate_sizes(dtype):
    backend = emulate_backend()
    rng = np.random.default_rng(3)
    one = stored(rng, (1, 1), DTYPES[dtype])
    c = poisoned(np, (1, 1), DTYPES[dtype])
    backend.gemm(one, one, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert_close(c, one.astype(np.float64) ** 2, dtype)
    # K = 0: C = beta·C + bias; with beta = 0 the poisoned C is never read.
    bias = stored(rng, (1, 9), DTYPES[dtype])[0]
    empty_a, empty_b = np.empty((5, 0), DTYPES[dtype]), np.empty((0, 9), DTYPES[dtype])
    c = poisoned(np, (5, 9), DTYPES[dtype])
    backend.gemm(empty_a, empty_b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, bias=bias)
    assert np.array_equal(c, np.broadcast_to(bias, (5, 9)))
    before = stored(rng, (5, 9), DTYPES[dtype]).copy()
    c = before.copy()
    backend.gemm(empty_a, empty_b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.5)
    assert_close(c, 0.5 * before.astype(np.float64), dtype)
    # M = 0 or N = 0: nothing to do, nothing launched.
    backend.gemm(np.empty((0, 4), DTYPES[dtype]), np.ones((4, 3), DTYPES[dtype]), np.empty((0, 3), DTYPES[dtype]),
                 trans_a=False, trans_b=False, alpha=1.0, beta=0.0)


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
    KernelBackend(runtime).gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert_close(c, reference(a, b, False, False, 1.0, 0.0, c, None), "float16")
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
            backend.gemm(a, b, c, trans_a=True, trans_b=False, alpha=1.0, beta=1.0)
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
    expected = reference(a, b, False, False, 1.0, 0.0, None, None)
    tuning = Tuning(config="medium", splits=1)
    intact = poisoned(np, (64, 64), np.float32)
    KernelBackend(emulator(), tuning).gemm(a, b, intact, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert_close(intact, expected, "float32")
    broken_backend = KernelBackend(emulator(kernel_dir=broken_dir), tuning)
    broken = poisoned(np, (64, 64), np.float32)
    try:
        broken_backend.gemm(a, b, broken, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
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
        broken_backend.gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)


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
        broken_backend.gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)


# ----------------------------------------------------------------------------------------------------
# Column sums (the bias gradient)
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_colsum(dtype):
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
def test_colsum_on_views(name):
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


# ----------------------------------------------------------------------------------------------------
# Stacks of matrices: one strided-batched launch, stride 0 for a broadcast operand
# ----------------------------------------------------------------------------------------------------

def batched(rng, batch, shape, dtype, broadcast=False):
    """A stack of random matrices; with broadcast, one matrix seen batch times (stride 0)."""
    if broadcast:
        return np.broadcast_to(rng.standard_normal(shape).astype(dtype), batch + shape)
    return rng.standard_normal(batch + shape).astype(dtype)


def test_a_stack_is_one_launch_reading_a_broadcast_operand_in_place():
    rng = np.random.default_rng(20)
    a, b = batched(rng, (4,), (20, 30), np.float32), batched(rng, (4,), (30, 17), np.float32, broadcast=True)
    c = np.empty((4, 20, 17), np.float32)
    [launch] = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert launch.grid[2] == 4 and launch.args[4] == 1  # batch 4, no split-K
    (arg_a, stride_a), (arg_b, stride_b), (arg_c, stride_c) = (launch.args[i:i + 3:2] for i in (5, 8, 11))
    assert (stride_a, stride_b, stride_c) == (20 * 30, 0, 20 * 17)
    assert arg_b.ctypes.data == b.ctypes.data and np.shares_memory(arg_b, b)  # not a copy
    assert arg_a.ctypes.data == a.ctypes.data and arg_c.ctypes.data == c.ctypes.data
    # Split-K is for single matrices: a stack's grid z is its batch, whatever the tuning asks.
    [launch] = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0,
                              tuning=Tuning(splits=3))
    assert launch.grid[2] == 4 and launch.args[4] == 1


def test_batch_dimensions_that_do_not_merge_get_a_launch_each():
    rng = np.random.default_rng(21)
    a = np.broadcast_to(batched(rng, (2, 1), (5, 6), np.float32), (2, 3, 5, 6))  # broadcast along dim 1
    b = np.broadcast_to(batched(rng, (1, 3), (6, 7), np.float32), (2, 3, 6, 7))  # and along dim 0
    c = np.empty((2, 3, 5, 7), np.float32)
    launches = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert [launch.grid[2] for launch in launches] == [3, 3]
    assert [launch.args[7] for launch in launches] == [0, 0] and [launch.args[10] for launch in launches] == [42, 42]
    assert launches[1].args[5].ctypes.data == a.ctypes.data + a.strides[0]


def test_a_batch_beyond_grid_z_is_cut_into_launches():
    batch = plan.MAX_GRID_YZ + 7
    a = np.broadcast_to(np.ones((1, 1), np.float32), (batch, 1, 1))
    b, c = np.ones((batch, 1, 1), np.float32), np.empty((batch, 1, 1), np.float32)
    first, second = plan.plan_gemm(np, a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert (first.grid[2], second.grid[2]) == (plan.MAX_GRID_YZ, 7)
    assert second.args[11].ctypes.data == c.ctypes.data + plan.MAX_GRID_YZ * 4
    assert second.args[8].ctypes.data == b.ctypes.data + plan.MAX_GRID_YZ * 4


# (batch of a, of b, of c): stacks, a broadcast matrix on either side, dims that do not merge.
BATCHES = [((3,), (3,), (3,)), ((3,), (), (3,)), ((), (2,), (2,)), ((2, 1), (1, 3), (2, 3))]


@pytest.mark.parametrize("dtype,config", [("float32", "small"), ("float16", "medium"), ("float64", "small")])
@pytest.mark.parametrize("trans_a,trans_b", TRANS, ids=["NN", "NT", "TN", "TT"])
def test_batched_gemm(runtime, dtype, config, trans_a, trans_b):
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
        backend.gemm(a_full, b_full, c, trans_a=trans_a, trans_b=trans_b, alpha=1.0, beta=0.0)
        op = lambda x, t: np.swapaxes(x, -1, -2) if t else x
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
    broken.gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0)
    assert rel_err(c, np.matmul(a.astype(np.float64), b)) > TOLERANCE["float32"]


def test_linear_matmul_on_a_stack_is_one_launch_without_copies(monkeypatch):
    import linear
    backend = emulate_backend()
    launched = []
    original = backend.launch
    monkeypatch.setattr(backend, "launch", lambda launches: (launched.extend(launches), original(launches)))
    rng = np.random.default_rng(23)
    a, b = batched(rng, (2, 3), (20, 30), np.float32), batched(rng, (), (17, 30), np.float32)
    out = linear.matmul(a, b.T, backend="emulate")  # b: one transposed matrix under a 2 x 3 stack
    assert_close(out, np.matmul(a.astype(np.float64), b.T), "float32")
    [launch] = launched
    assert launch.grid[2] == 6 and launch.args[8].ctypes.data == b.ctypes.data and launch.args[10] == 0
    assert launch.args[5].ctypes.data == a.ctypes.data
