"""The launch plan (no compiler needed): operands and their strides, the choice of kernel family, tile
and split-K, and the launches (batching, arguments)."""
from __future__ import annotations

import numpy as np
import pytest

import plan_table
from linear.activations import activation_code
from linear.backends import cost, plan, tiles
from linear.backends.device import H100, DeviceLimits
from linear.backends.plan import Tuning
from reference import DTYPE_CONFIGS, DTYPES, TRANS, batched, op



def test_the_plan_chooses_as_the_recorded_table():
    """Every product the tests sweep (training layers, kernel-test shapes, stacks; every dtype, TF32 off
    and on, aligned and unaligned operands) is planned as tests/data/plan_choices.json records."""
    recorded, planned = plan_table.load(), plan_table.record()
    assert planned.keys() == recorded.keys()
    moved = {key: (recorded[key], planned[key]) for key in recorded if planned[key] != recorded[key]}
    assert not moved, f"{len(moved)} plans differ from the table, e.g. {next(iter(moved.items()))}"


def test_row_major_views_go_as_they_are_with_their_leading_dimension():
    x = np.zeros((6, 10), np.float32)
    assert plan.as_operand(np, x) == plan.Operand(x, 10, False)
    sliced = x[:, :7]
    operand = plan.as_operand(np, sliced)
    assert operand.array is sliced and (operand.ld, operand.trans) == (10, False)


def test_transposed_and_column_major_views_set_the_flag_without_a_copy():
    x = np.zeros((6, 10), np.float32)
    for view in (x.T, np.asfortranarray(x[:, :4]), x[:, :4].T):
        operand = plan.as_operand(np, view)
        assert operand.trans and np.shares_memory(operand.array, x if view.base is x else view)
        assert operand.array.flags.c_contiguous or operand.array.strides[1] == 4
        assert operand.ld == operand.array.strides[0] // 4


def test_views_without_a_leading_dimension_are_copied_into_aligned_rows():
    x = np.arange(60, dtype=np.float32).reshape(6, 10)
    for view in (x[::-1], x[:, ::-1], x[:, ::2], x[::2, ::2].T):
        operand = plan.as_operand(np, view)
        assert not np.shares_memory(operand.array, x) and operand.array.strides == (operand.ld * 4, 4)
        assert not operand.trans and np.array_equal(operand.array, view) and plan.vector_aligned(operand)
    every_other_row = plan.as_operand(np, x[::2])  # a larger row stride is a leading dimension
    assert np.shares_memory(every_other_row.array, x) and every_other_row.ld == 20


def test_single_rows_columns_and_empty_matrices_map_without_copies():
    x = np.zeros((5, 9), np.float64)
    row, column, empty = x[2:3, ::1], x[:, 3:4], x[:, :0]
    assert plan.as_operand(np, row) == plan.Operand(row, 9, False)
    assert plan.as_operand(np, column).array is column
    assert plan.as_operand(np, empty).array is empty


def test_vector_path_needs_aligned_pointer_and_leading_dimension():
    base = np.zeros((8, 16), np.float32)
    assert plan.address(base) % 16 == 0
    assert plan.vector_aligned(plan.as_operand(np, base))
    assert plan.vector_aligned(plan.as_operand(np, base[:, :5]))  # ld 16 floats = 64 bytes
    assert not plan.vector_aligned(plan.as_operand(np, base[:, 1:]))  # pointer off by 4 bytes
    assert not plan.vector_aligned(plan.as_operand(np, np.zeros((8, 15), np.float32)))  # ld 60 bytes
    assert plan.vector_aligned(plan.as_operand(np, np.zeros((1, 15), np.float32)))  # one row: no ld


def gemm_launches(m, n, k, dtype="float32", trans_a=False, trans_b=False, tuning=Tuning(), bias=False, **device):
    a = np.zeros((k, m) if trans_a else (m, k), DTYPES[dtype])
    b = np.zeros((n, k) if trans_b else (k, n), DTYPES[dtype])
    c = np.zeros((m, n), DTYPES[dtype])
    return plan.plan_gemm(np, op(a, trans_a), op(b, trans_b), c, alpha=1.0, beta=0.0,
                          bias=np.zeros(n, DTYPES[dtype]) if bias else None, tuning=tuning, **device)


def test_the_plan_follows_the_device():
    """Fewer SMs, fewer splits: the same product on a card with a quarter of the SMs."""
    big, quarter = H100, DeviceLimits(sms=33)
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


def test_tensor_cores_run_half_types_and_tf32_on_sm80_and_later_for_aligned_operands():
    def source(dtype, m=64, n=64, k=64, **device):
        return gemm_launches(m, n, k, dtype, **device)[0].source
    for dtype in ("float16", "bfloat16"):
        assert source(dtype, arch=80) == "tc_gemm.cu" and source(dtype, arch=90) == "wgmma_gemm.cu"  # Hopper's tiles
        assert source(dtype, arch=75) == source(dtype) == "gemm.cu"  # older cards; no device named
        assert source(dtype, 64, 64, 63, arch=90, tuning=Tuning(vector=False)) == "gemm.cu"  # as they are
    assert source("float32", arch=90) == "gemm.cu" and source("float32", arch=90, tf32=True) == "tc_gemm.cu"
    assert source("float64", arch=90, tf32=True) == "gemm.cu"
    assert gemm_launches(4096, 4096, 64, "bfloat16", arch=80)[0].name.endswith("128, 128, 32, 64, 32, 4>")
    assert gemm_launches(512, 512, 64, "bfloat16", arch=80)[0].name.endswith("64, 64, 32, 32, 32, 3>")
    assert source("float16", tuning=Tuning(config="medium"), arch=90) == "gemm.cu"  # named: the SIMT kernel
    with pytest.raises(ValueError, match="'tc_small' runs on tensor cores, which this call cannot use"):
        gemm_launches(64, 64, 64, "float32", tuning=Tuning(config="tc_small"), arch=90)


def test_an_activation_does_not_change_the_choice_and_travels_as_the_last_arguments():
    """Every family's epilogue applies the activations: on 9.0 a bf16 product with an activation (or one
    that only stores Z) runs the same wgmma tile as without, with the activation's code, Z (C's stand-in
    when not stored) and the stored flag as its last arguments; with split-K the GEMM writes plain sums and
    the reduction applies it."""
    rng = np.random.default_rng(5)
    a, b = (rng.standard_normal(shape).astype(DTYPES["bfloat16"]) for shape in ((256, 128), (128, 256)))
    c, z = np.empty((256, 256), DTYPES["bfloat16"]), np.empty((256, 256), DTYPES["bfloat16"])
    [plain] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=90)
    assert plain.source == "wgmma_gemm.cu" and plain.args[-3] == 0 and plain.args[-2] is c and plain.args[-1] == 0
    [fused] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=90, activation="gelu", preact=z)
    assert fused.name == plain.name
    assert fused.args[-3] == activation_code("gelu") and fused.args[-2] is z and fused.args[-1] == 1
    [stored] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=90, preact=z)  # Z = Y, no activation
    assert stored.name == plain.name and stored.args[-3] == 0 and stored.args[-2] is z and stored.args[-1] == 1
    [relu] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=90, activation="relu")
    assert relu.name == plain.name and relu.args[-3] == activation_code("relu") and relu.args[-1] == 0
    *products, reduction = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=90, activation="silu",
                                          preact=z, tuning=Tuning(splits=2))
    assert [launch.source for launch in products] == ["wgmma_gemm.cu"]
    assert products[0].args[-3] == 0 and products[0].args[-1] == 0  # the workspace: plain sums
    assert reduction.source == "reduce.cu" and reduction.args[-3] == activation_code("silu")
    assert reduction.args[-2] is z and reduction.args[-1] == 1


def test_unaligned_operands_are_copied_to_aligned_rows_for_the_tensor_cores():
    """On sm_80 (sm_90 would take the Hopper tiles, the same copies): 126-byte rows of A (K = 63) cannot go by 16-byte cp.async: A is copied into rows of 64 elements
    (128 bytes), B is passed as it is, and the caller's A is only read."""
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((64, 63)).astype(np.float16), rng.standard_normal((63, 64)).astype(np.float16)
    a_before = a.copy()
    c = np.zeros((64, 64), np.float16)
    [launch] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=80)
    assert launch.source == "tc_gemm.cu"
    copied, lda = launch.args[5], launch.args[6]
    assert lda == 64 and copied.shape == (64, 63) and copied.strides == (128, 2) and np.array_equal(copied, a)
    assert launch.args[8] is b and np.array_equal(a, a_before)
    # A stack: its broadcast operand is copied once and stays broadcast (batch stride 0).
    [stacked] = plan.plan_gemm(np, np.broadcast_to(a, (3, 64, 63)), b, np.zeros((3, 64, 64), np.float16),
                               alpha=1.0, beta=0.0, arch=80)
    assert stacked.source == "tc_gemm.cu" and stacked.grid[2] == 3
    assert stacked.args[6] == 64 and stacked.args[7] == 0 and np.array_equal(stacked.args[5][0], a)
    # Where the cost model says the copy costs more than the tensor cores save (a device with a slow
    # memory), the SIMT kernel on the arrays as they are.
    slow = DeviceLimits(sms=132, bandwidth=1e6)
    assert not cost.aligned_copies_pay(64, 64, 63, 1, "float16", [a.nbytes], aligned=tiles.TC_HEURISTIC_CONFIGS,
                                       as_they_are=tiles.HEURISTIC_CONFIGS, device=slow)
    [simt] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=80, device=slow)
    assert simt.source == "gemm.cu" and simt.args[5] is a
    # The SIMT kernel asked for, or a dtype without tensor cores: the arrays as they are.
    named = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, arch=80,
                           tuning=Tuning(config="medium"))
    assert named[0].source == "gemm.cu" and named[0].args[5] is a
    a64 = a.astype(np.float64)
    [launch] = plan.plan_gemm(np, a64, b.astype(np.float64), c.astype(np.float64), alpha=1.0, beta=0.0, arch=80)
    assert launch.args[5] is a64


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
        plan.plan_gemm(np, a, a.T.copy(), np.zeros((8, 8), np.float32), alpha=1.0, beta=0.0,
                       tuning=Tuning(vector=True))


def test_sizes_near_int32_are_refused_before_any_copy():
    """2**31 - 1 fits an int, but a tile starting near it would wrap: the plan refuses it."""
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2**31 - 1, 2), (0, 0))
    with pytest.raises(ValueError, match="K = 2147483647"):
        plan.plan_gemm(np, huge.T, huge, np.zeros((2, 2), np.float32), alpha=1.0, beta=0.0)


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
    for dtype, config in [(dtype, config) for config in tiles.WGMMA_CONFIGS for dtype in config.dtypes]:
        for trans_a, trans_b in config.layouts(dtype):  # float32 (TF32): NT only
            for splits in (1, 2):
                tuning = Tuning(config=config.name, splits=splits)  # K: two k-blocks of 64 halves at least
                for launch in gemm_launches(16, 16, 160, dtype, trans_a, trans_b, tuning, arch=90, tf32=True):
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


def test_a_stack_is_one_launch_reading_a_broadcast_operand_in_place():
    rng = np.random.default_rng(20)
    a, b = batched(rng, (4,), (20, 30), np.float32), batched(rng, (4,), (30, 17), np.float32, broadcast=True)
    c = np.empty((4, 20, 17), np.float32)
    [launch] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0)
    assert launch.grid[2] == 4 and launch.args[4] == 1  # batch 4, no split-K
    (arg_a, stride_a), (arg_b, stride_b), (arg_c, stride_c) = (launch.args[i:i + 3:2] for i in (5, 8, 11))
    assert (stride_a, stride_b, stride_c) == (20 * 30, 0, 20 * 17)
    assert arg_b.ctypes.data == b.ctypes.data and np.shares_memory(arg_b, b)  # not a copy
    assert arg_a.ctypes.data == a.ctypes.data and arg_c.ctypes.data == c.ctypes.data
    # Split-K is for single matrices: a stack's grid z is its batch, whatever the tuning asks.
    [launch] = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0,
                              tuning=Tuning(splits=3))
    assert launch.grid[2] == 4 and launch.args[4] == 1


def test_batch_dimensions_that_do_not_merge_get_a_launch_each():
    rng = np.random.default_rng(21)
    a = np.broadcast_to(batched(rng, (2, 1), (5, 6), np.float32), (2, 3, 5, 6))  # broadcast along dim 1
    b = np.broadcast_to(batched(rng, (1, 3), (6, 7), np.float32), (2, 3, 6, 7))  # and along dim 0
    c = np.empty((2, 3, 5, 7), np.float32)
    launches = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0)
    assert [launch.grid[2] for launch in launches] == [3, 3]
    assert [launch.args[7] for launch in launches] == [0, 0] and [launch.args[10] for launch in launches] == [42, 42]
    assert launches[1].args[5].ctypes.data == a.ctypes.data + a.strides[0]


def test_a_batch_beyond_grid_z_is_cut_into_launches():
    batch = H100.max_grid[2] + 7
    a = np.broadcast_to(np.ones((1, 1), np.float32), (batch, 1, 1))
    b, c = np.ones((batch, 1, 1), np.float32), np.empty((batch, 1, 1), np.float32)
    first, second = plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0)
    assert (first.grid[2], second.grid[2]) == (H100.max_grid[2], 7)
    assert second.args[11].ctypes.data == c.ctypes.data + H100.max_grid[2] * 4
    assert second.args[8].ctypes.data == b.ctypes.data + H100.max_grid[2] * 4


def test_a_new_family_is_its_configurations_alone(monkeypatch):
    """A new family (here a stand-in for the Hopper kernel, in its place: sm_90 only, aligned operands
    only) needs no change to plan.py or cost.py: listed last in FAMILIES, with its registers, it runs what
    it can run (its ties with the tensor-core tiles, whose alignment it shares, go to it), and every other
    call goes to the families before it."""
    class HopperLike(tiles.TensorCoreConfig):
        source = "hopper.cu"
        min_arch = 90
        arch_flags = ("-arch=sm_90a",)

    config = HopperLike("hopper", bm=128, bn=128, wm=64, wn=32, stages=4)
    monkeypatch.setattr(plan, "FAMILIES", (tiles.TILE_CONFIGS, tiles.TC_CONFIGS, (config,)))
    for dtype in config.dtypes:
        monkeypatch.setitem(cost.REGISTERS, (config.name, dtype, True), 128)
    assert gemm_launches(4096, 4096, 64, "bfloat16", arch=90)[0].source == "hopper.cu"
    assert gemm_launches(4096, 4096, 64, "bfloat16", arch=80)[0].source == "tc_gemm.cu"  # before sm_90
    assert gemm_launches(4096, 4096, 64, "float32", arch=90)[0].source == "gemm.cu"  # TF32 off
    assert gemm_launches(4096, 4096, 64, "float64", arch=90)[0].source == "gemm.cu"
    assert gemm_launches(64, 64, 64, "float16", arch=90, tuning=Tuning(vector=False))[0].source == "gemm.cu"
