"""The cost model (no compiler needed): blocks per SM, efficiency bounds, the choice of tile and split-K."""
from __future__ import annotations

import pytest

from linear.backends import cost, tiles
from linear.backends.device import H100, DeviceLimits


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
            work = m * n / 16 / tiles.WARP_SIZE * len(cost.split_counts(k, 1)) / H100.sms
            assert best.warps_per_sm >= 8 or work < 8, (b, f, d, product, best, work)
            if k >= 4096 and best.config.tiles(m, n) < H100.sms // 2:
                assert best.splits > 1, (b, f, d, product, best)


def test_long_k_is_split_and_the_busiest_sm_carries_at_most_four_thirds_of_the_average():
    # (256, 4096, 1024) forward: no longer 32 x 32 tiles over a 4096-long K loop without split-K.
    best = cost.choose(256, 1024, 4096)
    assert (best.config.name, best.splits) != ("small", 1) and best.warps_per_sm >= 8
    # Long-batch dW (B = 8192, F = 784, D = 256): K = 8192 is split.
    assert cost.choose(784, 256, 8192).splits > 1
    # 132-263 tiles of 128 x 128: the busiest SM carries no more than 4/3 of the average load.
    for size in (1536, 1664, 2048):  # 144, 169, 256 large tiles
        best = cost.choose(size, size, 4096)
        blocks = best.config.tiles(size, size) * best.splits
        assert blocks / (-(-blocks // H100.sms) * H100.sms) >= 0.75, (size, best)


def test_tensor_core_tiles_are_bounded_by_shared_memory_bandwidth():
    """The counts of bench/NOTES.md: 64 x 32 warp tiles move 2 wavefronts per HMMA.16816 (half the peak),
    64 x 64 tiles 1.4; TF32's rounding pass adds a third to its traffic."""
    bound = {(name, dtype): tiles.CONFIGS_BY_NAME[name].shared_bound(dtype)
             for name in ("tc_large", "tc_small", "tc_wide") for dtype in ("bfloat16", "float32")}
    assert bound["tc_large", "bfloat16"] == 0.5 and bound["tc_large", "float32"] == pytest.approx(1 / 3)
    assert bound["tc_small", "bfloat16"] == pytest.approx(1 / 3)
    assert bound["tc_wide", "bfloat16"] == pytest.approx(64 / 88)  # 88 wavefronts per 64 HMMA
    assert tiles.CONFIGS_BY_NAME["tc_large"].efficiency("float16") == 0.5
    # Tensor-core plans keep the card busy as the SIMT ones do, and big products take the big tile.
    for b, f, d in LAYERS:
        for product, mnk in PRODUCTS.items():
            m, n, k = mnk(b, f, d)
            for dtype in ("bfloat16", "float32"):
                best = cost.choose(m, n, k, 1, dtype, True, tiles.TC_HEURISTIC_CONFIGS)
                work = m * n / (64 * 32) / tiles.WARP_SIZE * len(cost.split_counts(k, 1)) / H100.sms
                assert best.warps_per_sm >= 8 or work < 8, (b, f, d, product, dtype, best)
                if min(m, n) >= 2048 and k >= 1024:
                    assert best.config.name == "tc_large", (b, f, d, product, dtype, best)


def test_blocks_per_sm_follow_registers_shared_memory_and_threads():
    large, small = tiles.CONFIGS_BY_NAME["large"], tiles.CONFIGS_BY_NAME["small"]
    assert cost.blocks_per_sm(large, "float32", True) == 2  # <= 128 registers: 2 x 256 threads
    assert cost.blocks_per_sm(large, "float64", True) == 1  # > 128 registers
    few_registers = DeviceLimits(sms=132, registers_per_sm=32768)
    assert cost.blocks_per_sm(large, "float32", True, few_registers) == 1
    little_shared = DeviceLimits(sms=132, shared_per_sm=3 * (small.shared_bytes("float32") + 1024))
    assert cost.blocks_per_sm(small, "float32", True, little_shared) == 3
    few_threads = DeviceLimits(sms=132, registers_per_sm=2**20, threads_per_sm=1024)
    assert cost.blocks_per_sm(small, "float32", True, few_threads) == 1024 // small.threads


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
