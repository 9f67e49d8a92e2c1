"""bench/sweep.py on the emulator: every tiny case planned, checked and recorded; a wrong result caught;
the budget respected; the winners read the way the plan would have to change. No speed is asserted.

bench/ is not part of the installed package: it is imported from the repository root.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from linear.backends import BackendUnavailable, get_backend
from linear.backends.device import H100
from linear.dtypes import ELEMENT_TYPES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sweep(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setenv("CUPY_TF32", "0")  # restored afterwards: sweep.main sets it
    import bench.sweep
    return bench.sweep


@pytest.fixture
def runtime():
    try:
        return get_backend("emulate").runtime
    except BackendUnavailable as e:
        require(False, f"the emulate backend ({e})")


def test_tiny_emulated_sweep_checks_and_records_every_case(sweep, runtime, tmp_path, capsys):
    assert sweep.main(["--backend", "emulate", "--tiny", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "sweep.json").read_text())
    expected = [case for group in sweep.sweep_cases(sweep.TINY_SHAPES, [sweep.HEURISTIC] + sweep.TINY_CONFIGS,
                                                    sweep.TINY_MIN_K_PER_SLICE) for case in group]
    assert len(result["rows"]) == len(expected) > 30 and result["not_run"] == []
    assert {row["product"] for row in result["rows"]} == {"NN", "NT", "TN"}
    assert any(row["splits"] > 1 for row in result["rows"]), "split-K was never run"
    for case, row in zip(expected, result["rows"]):
        assert (row["product"], tuple(row["shape"]), row["config"]) == (case.product, case.shape, case.config)
        assert row["status"] == "ok" and row["rel_err"] <= sweep.TOLERANCE, row
        assert row["ms"] > 0 and row["baseline_ms"] > 0 and row["ratio"] == row["ms"] / row["baseline_ms"]
        if case.config != sweep.HEURISTIC:
            assert row["chosen"] == case.config and row["kernels"][0].startswith("linear_gemm<float, ")
            assert (row["splits"] > 1) == (case.splits > 1) and len(row["kernels"]) == (2 if row["splits"] > 1 else 1)
    assert len(result["baselines"]) == 6 and all(b["rel_err"] < 1e-5 for b in result["baselines"])
    assert result["backend"] == "emulate" and result["dtype"] == "float32" and result["machine"]["cupy_tf32"] == "0"
    assert result["ceilings"]["copy"]["gb_per_s"] > 0
    printed = capsys.readouterr().out
    assert "NOT A GPU MEASUREMENT" in printed and "0 not ok, 0 not run" in printed
    assert sweep.main(["--winners", str(tmp_path / "sweep.json")]) == 0
    assert "where the plan picks " in capsys.readouterr().out


def test_a_wrong_result_is_marked_and_never_timed(sweep, runtime):
    """Negative control: a backend whose output is off in one element fails the check."""
    from linear.backends.kernel import KernelBackend

    class OffByOne(KernelBackend):
        def gemm(self, a, b, c, **kwargs):
            super().gemm(a, b, c, **kwargs)
            c[3, 2] += 1.0

    case = sweep.Case("NT", (33, 70, 45), "warp", 1)
    ops = sweep.make_operands(np, sweep.PRODUCTS["NT"], case.shape, seed=1)
    timer = sweep.Timer(gpu=False, repeats=1, warmup=0)
    good = sweep.run_case(lambda tuning: KernelBackend(runtime, tuning), case, ops, timer, 10.0)
    bad = sweep.run_case(lambda tuning: OffByOne(runtime, tuning), case, ops, timer, 10.0)
    assert good["status"] == "ok" and good["rel_err"] < 1e-6
    assert bad["status"] == "wrong" and sweep.TOLERANCE < bad["rel_err"] < math.inf and "ms" not in bad
    unwritten = sweep.run_case(lambda tuning: type("Idle", (KernelBackend,), {"gemm": lambda *a, **k: None})(
        runtime, tuning), case, ops, timer, 10.0)
    assert unwritten["status"] == "wrong" and unwritten["rel_err"] == math.inf  # the NaN poison shows


def test_a_failing_config_is_recorded_and_the_sweep_goes_on(sweep, runtime):
    case = sweep.Case("NN", (33, 70, 45), "no_such_config", 1)
    ops = sweep.make_operands(np, sweep.PRODUCTS["NN"], case.shape, seed=2)
    row = sweep.run_case(lambda tuning: None, case, ops, sweep.Timer(False, 1, 0), 10.0)
    assert row["status"].startswith("error: ValueError: config must be one of")


def test_no_case_starts_after_the_budget(sweep, runtime, tmp_path):
    groups = sweep.sweep_cases(sweep.TINY_SHAPES, ["small"], sweep.TINY_MIN_K_PER_SLICE)
    from linear.backends.kernel import KernelBackend
    result = sweep.run_sweep(lambda tuning: KernelBackend(runtime, tuning), np, groups,
                             sweep.Timer(False, 1, 0), budget_s=0.0, out=tmp_path / "sweep.json", header={},
                             copy_bytes=4096, log=lambda line: None)
    assert result["rows"] == [] and len(result["not_run"]) == sum(map(len, groups))
    assert json.loads((tmp_path / "sweep.json").read_text())["not_run"] == result["not_run"]


def test_the_gpu_timer_path_with_a_stand_in_for_cupyx(sweep, runtime, tmp_path, monkeypatch):
    """The GPU timing path (bench.timers.gpu_ms -> cupyx.profiler.benchmark) up to the CUDA events:
    a stand-in benchmark runs the calls on the emulator and reports made-up GPU times."""
    import types
    calls = []

    def benchmark(func, n_repeat, n_warmup):
        calls.append((n_repeat, n_warmup))
        for _ in range(n_warmup + n_repeat):
            func()
        return types.SimpleNamespace(gpu_times=np.full((1, n_repeat), 2e-3))

    cupyx = types.ModuleType("cupyx")
    cupyx.profiler = types.SimpleNamespace(benchmark=benchmark)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setitem(sys.modules, "cupyx.profiler", cupyx.profiler)
    from linear.backends.kernel import KernelBackend
    groups = sweep.sweep_cases([(20, 36, 44)], ["small"], 1000)
    result = sweep.run_sweep(lambda tuning: KernelBackend(runtime, tuning), np, groups,
                             sweep.Timer(gpu=True, repeats=3, warmup=1), budget_s=60.0, out=tmp_path / "s.json",
                             header={}, copy_bytes=4096, log=lambda line: None)
    assert [row["status"] for row in result["rows"]] == ["ok"] * 3
    assert all(row["ms"] == 2.0 and row["timed_runs"] == 3 and row["ratio"] == 1.0 for row in result["rows"])
    # one event pair per timed call: the copy, then per group the case and cuBLAS before and after it
    assert calls == [(1, 0)] * (3 + 3 * 3 * 3)


def test_full_sweep_covers_every_product_shape_and_float32_config(sweep):
    configs = [sweep.HEURISTIC] + [c.name for c in sweep.tiles.TILE_CONFIGS if "float32" in c.dtypes]
    cases = [case for group in sweep.sweep_cases(sweep.SHAPES, configs, sweep.MIN_K_PER_SLICE) for case in group]
    assert {(c.product, c.shape, c.config) for c in cases if c.splits in (None, 1)} == {
        (p, s, c) for p in sweep.PRODUCTS for s in sweep.SHAPES for c in configs}
    split = [c for c in cases if c.splits and c.splits > 1]
    assert {c.product for c in split} == {"NN", "NT", "TN"}
    for c in split:  # only where the tiles leave the card short, with slices of at least MIN_K_PER_SLICE
        m, n, k = sweep.PRODUCTS[c.product].mnk(c.shape)
        assert sweep.tiles.CONFIGS_BY_NAME[c.config].tiles(m, n) < 2 * H100.sms
        assert k // c.splits >= sweep.MIN_K_PER_SLICE
    assert {c.shape for c in split} == {(256, 1024, 1024), (32, 784, 256)}
    assert sweep.PRODUCTS["NN"].mnk((8192, 4096, 11008)) == (8192, 11008, 4096)  # M, N, K = B, D, F
    # What the GPU run compiles first: the vector-load GEMMs of every config and product, and the split-K sum.
    kernels = sweep.kernels_launched(cases)
    assert ("reduce.cu", "linear_sum_splits<float>", ()) in kernels
    assert {name for source, name, _ in kernels if source == "gemm.cu"} == {
        sweep.tiles.CONFIGS_BY_NAME[c].template_name(ELEMENT_TYPES["float32"], "float", *flags, True)
        for c in configs[1:] for flags in [(False, False), (False, True), (True, False)]}


def test_winners_name_the_fastest_variant_and_the_change_to_plan(sweep):
    def _row(product, shape, config, splits, ratio, chosen=None):
        m, n, k = sweep.PRODUCTS[product].mnk(shape)
        return {"product": product, "shape": list(shape), "m": m, "n": n, "k": k, "config": config,
                "chosen": chosen or config, "splits": splits, "ratio": ratio, "status": "ok"}

    big, bigger, mid = (4096, 4096, 4096), (8192, 4096, 11008), (256, 1024, 1024)
    rows = [_row("NN", big, "heuristic", 1, 1.10, chosen="large"), _row("NN", bigger, "heuristic", 1, 1.12, "large"),
            _row("NN", big, "large", 1, 1.10), _row("NN", bigger, "large", 1, 1.12),
            _row("NN", big, "warp", 1, 1.01), _row("NN", bigger, "warp", 1, 1.03),
            _row("NN", big, "warp_wide", 1, 0.90),  # fastest, but not measured on every shape of the class
            _row("NT", big, "heuristic", 1, 1.02, "large"), _row("NT", bigger, "heuristic", 1, 1.04, "large"),
            _row("NT", big, "large", 1, 1.02), _row("NT", bigger, "large", 1, 1.04),
            _row("NT", big, "warp", 1, 1.20), _row("NT", bigger, "warp", 1, 1.30),
            _row("TN", mid, "heuristic", 1, 1.50, "medium"), _row("TN", mid, "medium", 1, 1.50),
            _row("TN", mid, "medium", 2, 1.20)]
    result = {"date": "d", "backend": "cuda", "baseline": "cupy.matmul (cuBLAS)", "rows": rows,
              "machine": {"gpu": {"name": "NVIDIA H100 80GB HBM3"}}}
    found = {(w["product"], w["class"]): w for w in sweep.winners(result)}
    assert set(found) == {("NN", "large"), ("NT", "large"), ("TN", "medium")}
    nn = found["NN", "large"]
    assert (nn["best"], nn["best_splits"]) == ("warp", 1)
    assert nn["best_ratio"] == pytest.approx(math.sqrt(1.01 * 1.03))
    assert nn["heuristic_ratio"] == pytest.approx(math.sqrt(1.10 * 1.12)) and nn["heuristic"] == [("large", 1)]
    assert found["NT", "large"]["best"] == "large"
    assert (found["TN", "medium"]["best"], found["TN", "medium"]["best_splits"]) == ("medium", 2)
    text = sweep.recommend(result)
    assert "NOT A GPU" not in text and "NVIDIA H100" in text
    assert "promote candidate warp" in text and "keep large for this class" in text
    assert "split K into 2" in text and "no variant is within 5% of the baseline (best 1.200)" in text
    assert "Class large: the products disagree (large, warp)" in text
