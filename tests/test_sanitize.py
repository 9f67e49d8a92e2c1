"""The sanitize modes: each bug of tests/kernels/sanitize.cu is reported by its mode, naming the
kernel, block, thread(s), array, offset and source line; each fixed twin and the project's own
kernels run clean under every mode at once; blocks run in the schedule's order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from linear import activations
from linear.backends import BackendUnavailable, plan, tiles
from linear.backends.emulate import EmulationError, EmulatorRuntime
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from reference import TOLERANCE, rel_err
from reference import DTYPES, TRANS, op, output, stored, gemm_reference as reference
from test_tensor_cores import SHAPES as TC_SHAPES
from test_tensor_cores import operands as tc_operands
from test_tensor_cores import tf32_values
from test_wgmma_tf32 import tf32 as tf32_truncated

KERNELS = Path(__file__).parent / "kernels"
# The Hopper tiles' case: edges in M and N, two k-blocks.
TC_SHAPES = {**TC_SHAPES, **{config.name: (130, 200, 96) for config in tiles.WGMMA_CONFIGS}}
SOURCE = (KERNELS / "sanitize.cu").read_text().splitlines()
ALL = "memcheck,racecheck,initcheck,synccheck"
f32 = np.float32


def runtime(**options) -> EmulatorRuntime:
    options.setdefault("timeout_s", 60)
    try:
        return EmulatorRuntime(**options)
    except BackendUnavailable as error:
        require(False, f"the emulate backend ({error})")


def bug_line(kernel: str) -> int:
    """The line marked "BUG:" in the kernel's body."""
    start = next(i for i, line in enumerate(SOURCE) if re.search(rf"\b{kernel}\(", line))
    return next(i + 1 for i in range(start, len(SOURCE)) if "// BUG:" in SOURCE[i])


# kernel: (mode, launch, what the report names besides the kernel, the mode and the line)
CATALOGUE = {
    "read_past_end": ("memcheck", lambda k: k((1,), (32,), (np.ones(31, f32), np.zeros(31, f32), np.int32(31))),
                      ["out-of-bounds read of 4 bytes at byte 124 of argument 0", "thread (30, 0, 0)"]),
    "write_past_end": ("memcheck", lambda k: k((1,), (32,), (np.zeros(31, f32), np.int32(31))),
                       ["out-of-bounds write of 4 bytes at byte 124 of argument 0", "thread (31, 0, 0)"]),
    "static_shared_overrun": ("memcheck", lambda k: k((1,), (32,), (np.zeros(30, f32),)),
                              ["out-of-bounds write of 4 bytes at byte 120 of static __shared__",
                               "::a (120 bytes)"]),
    "dynamic_shared_overrun": ("memcheck", lambda k: k((1,), (32,), (np.zeros(30, f32), np.int32(30)),
                                                      shared_mem=120),
                               ["out-of-bounds read of 4 bytes at byte 120 of the dynamic shared memory"]),
    "memcpy_overrun": ("memcheck", lambda k: k((1,), (32,), (np.ones(31, f32), np.zeros(30, f32))),
                       ["out-of-bounds write of 124 bytes at byte 0 of static __shared__", "::tile (120 bytes)"]),
    "tree_sum": ("racecheck", lambda k: k((2,), (64,), (np.ones(64, f32), np.zeros(2, f32))),
                 ["::partial", "no barrier"]),
    "tile_reuse": ("racecheck", lambda k: k((1,), (32,), (np.ones(64, f32), np.zeros(32, f32))),
                   ["write by thread", "read by thread", "::tile"]),
    "blocks_share_output": ("racecheck", lambda k: k((4,), (32,), (np.zeros(4, f32),)),
                            ["of block (", "byte 0 of argument 0"]),
    "warp_exchange": ("racecheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)), ["::slot"]),
    "tile_exchange": ("racecheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)), ["::slot"]),
    "warps_exchange": ("racecheck", lambda k: k((1,), (64,), (np.zeros(32, f32),)),
                       ["::slot", "read by thread (32, 0, 0) and write by thread (0, 0, 0)"]),
    "count": ("racecheck", lambda k: k((2,), (64,), (np.zeros(1, np.int32),)), ["argument 0"]),
    "uninitialized_shared": ("initcheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)),
                             ["::values", "byte 124", "thread (0, 0, 0)"]),
    "partial_word": ("initcheck", lambda k: k((1,), (32,), (np.zeros(32, np.uint32),)),
                     ["::words", "read of 4 bytes at byte 0", "byte 1 is uninitialized", "thread (0, 0, 0)"]),
    "unzeroed_histogram": ("initcheck", lambda k: k((1,), (32,), (np.arange(32, dtype=np.int32), np.zeros(8, np.int32))),
                           ["atomic read-modify-write of 4 bytes", "::counts"]),
    "divergent_barrier": ("synccheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)),
                          ["thread (16, 0, 0)", "thread (0, 0, 0)"]),
    "divergent_group_sync": ("synccheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)),
                             ["thread (16, 0, 0)", "thread (0, 0, 0)"]),
}


@pytest.fixture(scope="module")
def sanitizers() -> dict[str, EmulatorRuntime]:
    modes = {mode for mode, _, _ in CATALOGUE.values()} | {ALL}
    return {mode: runtime(kernel_dir=KERNELS, sanitize=mode) for mode in modes}


@pytest.mark.parametrize("kernel", CATALOGUE)
def test_each_bug_is_reported_by_its_mode(sanitizers, kernel):
    mode, launch, names = CATALOGUE[kernel]
    with pytest.raises(EmulationError) as caught:
        launch(sanitizers[mode].function("sanitize.cu", f"{kernel}<true>"))
    message = str(caught.value)
    for expected in [f"{kernel}<true>", f"{mode}: ", "block (", "thread (", f"sanitize.cu:{bug_line(kernel)}",
                     *names]:
        assert expected in message, f"{expected!r} not in {message!r}"


@pytest.mark.parametrize("kernel", CATALOGUE)
def test_each_fixed_twin_is_clean_under_every_mode(sanitizers, kernel):
    _, launch, _ = CATALOGUE[kernel]
    launch(sanitizers[ALL].function("sanitize.cu", f"{kernel}<false>"))


def test_atomics_count_right_and_do_not_race(sanitizers):
    counter = np.zeros(1, np.int32)
    sanitizers[ALL].function("sanitize.cu", "count<false>")((3,), (64,), (counter,))
    assert counter[0] == 3 * 64


def test_blocks_run_in_the_schedules_order():
    """Which block writes out[0] last shows the order: nothing orders the blocks of a launch."""
    last = {}
    for schedule in ("forward", "reverse"):
        out = np.zeros(4, f32)
        runtime(kernel_dir=KERNELS, schedule=schedule).function("sanitize.cu", "blocks_share_output<true>")(
            (4,), (32,), (out,))
        last[schedule] = out[0]
    assert last == {"forward": 3.0, "reverse": 0.0}
    shuffled = set()
    for seed in range(6):
        out = np.zeros(4, f32)
        runtime(kernel_dir=KERNELS, schedule="shuffle", seed=seed).function(
            "sanitize.cu", "blocks_share_output<true>")((4,), (32,), (out,))
        shuffled.add(float(out[0]))
    assert len(shuffled) > 1


def test_modes_from_the_environment(monkeypatch):
    monkeypatch.setenv("LINEAR_EMU_SANITIZE", "racecheck, initcheck")
    assert runtime().settings.sanitize == {"racecheck", "initcheck"}
    monkeypatch.setenv("LINEAR_EMU_SANITIZE", "racecheck,leakcheck")
    with pytest.raises(ValueError, match=r"\$LINEAR_EMU_SANITIZE: unknown sanitize mode\(s\) \['leakcheck'\]"):
        runtime()


# ----------------------------------------------------------------------------------------------------
# Zero false positives: the project's kernels, every family and dtype the plan launches
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One GEMM through the plan (for the SIMT family, then a column sum of its expected output)."""
    dtype: str
    config: str
    trans_a: bool
    trans_b: bool
    vector: bool  # the SIMT kernel's 16-byte load path (tensor-core kernels always need it)
    splits: int
    activation: str | None = None  # the GEMM's epilogue stores Z beside act(Z); the column sum is dZ and db

    @property
    def tensor_cores(self) -> bool:  # tc_gemm.cu or wgmma_gemm.cu
        return not isinstance(tiles.CONFIGS_BY_NAME[self.config], tiles.TileConfig)

    def __str__(self) -> str:
        trans = "NT"[self.trans_a] + "NT"[self.trans_b]
        return (f"{self.dtype}-{self.config}-{trans}-{'vector' if self.vector else 'scalar'}-splits{self.splits}"
                f"{'-' + self.activation if self.activation else ''}")


def planned(case: Case) -> list[tuple[list[plan.Launch], np.ndarray, np.ndarray]]:
    """(launches, the array they write, its expected value) for the case's GEMM and column sum."""
    rng = np.random.default_rng(7)
    dtype = DTYPES[case.dtype]
    if case.tensor_cores:
        m, n, k = TC_SHAPES[case.config]
        a, b = tc_operands(rng, case.dtype, m, n, k, case.trans_a, case.trans_b)
        # TF32 operands: tc_gemm rounds them (cvt.rna), wgmma reads the top 19 bits of each float
        cut = tf32_truncated if isinstance(tiles.CONFIGS_BY_NAME[case.config], tiles.WgmmaConfig) else tf32_values
        inputs = (cut(a), cut(b)) if case.dtype == "float32" else (a, b)
    else:
        m, n, k = 37, 21, 19
        # Vector: 16-byte aligned leading dimensions; scalar: odd ones.
        ld = (lambda cols: -(-cols // 8) * 8) if case.vector else (lambda cols: cols + 1)
        shapes = ((k, m) if case.trans_a else (m, k)), ((n, k) if case.trans_b else (k, n))
        a, b = (stored(rng, shape, dtype, ld(shape[1])) for shape in shapes)
        inputs = (a, b)
    beta = 0.5 if case.splits == 1 else 0.0  # beta = 0: C is never read, so it starts as NaN
    c = output(rng, (m, n), dtype, beta)
    bias = rng.standard_normal(n).astype(dtype)
    z = reference(*inputs, case.trans_a, case.trans_b, 1.0, beta, c, bias)
    expected = activations.forward(case.activation, z)
    preact = None if case.activation is None else np.full((m, n), np.nan, dtype)
    gemm = plan.plan_gemm(np, op(a, case.trans_a), op(b, case.trans_b), c, alpha=1.0, beta=beta, bias=bias,
                          tuning=Tuning(config=case.config, splits=case.splits,
                                        vector=None if case.tensor_cores else case.vector),
                          arch=90 if case.tensor_cores else None, tf32=case.tensor_cores,
                          activation=case.activation, preact=preact)
    written = [(gemm, c, expected)] + ([] if preact is None else [([], preact, z)])
    if case.tensor_cores:
        return written
    summed, out = expected.astype(dtype), np.zeros(n, dtype)
    if case.activation is None:
        return written + [(plan.plan_colsum(np, summed, out, beta=0.0), out, summed.astype(np.float64).sum(0))]
    dz = np.full((m, n), np.nan, dtype)
    dz_expected = activations.gradient(case.activation, summed.astype(np.float64), z.astype(dtype).astype(np.float64))
    launches = plan.plan_activation_grad(np, summed, z.astype(dtype), dz, out, activation=case.activation, beta=0.0)
    return written + [(launches, dz, dz_expected), ([], out, dz_expected.sum(0))]


def check(runtime: EmulatorRuntime, case: Case) -> None:
    for launches, out, expected in planned(case):
        KernelBackend(runtime).launch(launches)
        assert rel_err(out, expected) <= TOLERANCE[case.dtype], case


def every_case() -> list[Case]:
    """The whole set: every instantiation tiles.instantiations() lists is launched by one of these."""
    simt = [Case(d, c.name, ta, tb, v, s) for d in DTYPES for c in tiles.TILE_CONFIGS if d in c.dtypes
            for ta, tb in TRANS for v in (False, True) for s in (1, 2)]
    tensor = [Case(d, c.name, ta, tb, True, s) for c in tiles.TC_CONFIGS + tiles.WGMMA_CONFIGS for d in c.dtypes
              for ta, tb in c.layouts(d) for s in (1, 2)]
    return simt + tensor


def ci_cases() -> list[Case]:
    """Every family x dtype at least once, with few instantiations (each is a separate instrumented build):
    the SIMT kernel once per dtype and tile config, its transposes, load path and split-K varying from case
    to case so that each dtype runs both output types (C and the split-K workspace) and both load paths;
    the tensor-core kernel once per dtype, both tile configs between them; the Hopper kernel once per dtype
    (bfloat16 and float32 as TF32 in its staged epilogue, float16 split-K);
    reduce.cu in every SIMT case. The activations rotate over the cases, so that every family runs its
    staged epilogue (with Z stored), the split-K reduction its activation, and the column sum its dZ + db
    pass."""
    simt = [Case(d, c.name, *TRANS[i % 4], i % 2 == 0, 1 if i % 3 == 1 else 2,
                 activations.ACTIVATIONS[(i + j) % len(activations.ACTIVATIONS)])
            for j, d in enumerate(DTYPES) for i, c in enumerate(c for c in tiles.TILE_CONFIGS if d in c.dtypes)]
    tensor = [Case("bfloat16", "tc_small", False, False, True, 3, "gelu"),
              Case("float32", "tc_small", True, False, True, 1, "gelu_tanh"),
              Case("float16", "tc_large", False, True, True, 1, "silu"),
              Case("bfloat16", "wgmma_wide", False, True, True, 1, "relu"),
              Case("float16", "wgmma", True, False, True, 2, "gelu"),
              Case("float32", "wgmma", False, True, True, 1, "silu")]
    return simt + tensor


def launched_names(cases: list[Case]) -> set[str]:
    return {launch.name for case in cases for launches, _, _ in planned(case) for launch in launches}


def test_the_whole_set_launches_every_instantiation_and_ci_every_family_and_dtype():
    instantiations = tiles.instantiations()
    assert launched_names(every_case()) == {kernel.name for kernel in instantiations}
    ci = launched_names(ci_cases())
    for kernel in instantiations:  # each kernel template x element type (its first template argument)
        family = kernel.name.split(",")[0].removesuffix(">")
        assert any(name.startswith(family) for name in ci), family


@pytest.mark.parametrize("case", ci_cases(), ids=str)
def test_project_kernels_are_clean_under_every_mode(case):
    """Blocks and threads shuffled, all four modes in one runtime."""
    check(runtime(sanitize=ALL, schedule="shuffle", seed=5), case)


def test_outputs_the_kernels_did_not_write_fail_the_check():
    """Negative control for check(): each planned output, left as planned, is far from its expected value."""
    for case in (Case("float32", "small", False, False, False, 2), Case("float16", "tc_small", False, False, True, 2)):
        for _, out, expected in planned(case):
            assert rel_err(out, expected) > TOLERANCE[case.dtype]


def pytest_generate_tests(metafunc):
    """The whole set only with --sanitize-all (conftest.py); otherwise one skipped placeholder."""
    if "whole_set_case" in metafunc.fixturenames:
        cases = every_case() if metafunc.config.getoption("sanitize_all") else [None]
        metafunc.parametrize("whole_set_case", cases, ids=str)


def test_whole_set_under_every_mode(whole_set_case):
    """On demand: pytest tests/test_sanitize.py --sanitize-all -k whole_set -n 2 (every instantiation)."""
    if whole_set_case is None:
        pytest.skip("the whole set runs with --sanitize-all")
    check(runtime(sanitize=ALL, schedule="shuffle", seed=5), whole_set_case)
