"""The sanitize modes: each bug of tests/kernels/sanitize.cu is reported by its mode, naming the
kernel, block, thread(s), array, offset and source line; each fixed twin and the project's own
kernels run clean under every mode at once; blocks run in the schedule's order.
"""
from __future__ import annotations

import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from conftest import require
from linear.backends import BackendUnavailable, plan
from linear.backends.emulate import EmulationError, EmulatorRuntime
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from reference import assert_close

KERNELS = Path(__file__).parent / "kernels"
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
    "tree_sum": ("racecheck", lambda k: k((2,), (64,), (np.ones(64, f32), np.zeros(2, f32))),
                 ["::partial", "no barrier"]),
    "tile_reuse": ("racecheck", lambda k: k((1,), (32,), (np.ones(64, f32), np.zeros(32, f32))),
                   ["write by thread", "read by thread", "::tile"]),
    "blocks_share_output": ("racecheck", lambda k: k((4,), (32,), (np.zeros(4, f32),)),
                            ["of block (", "byte 0 of argument 0"]),
    "warp_exchange": ("racecheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)), ["::slot"]),
    "count": ("racecheck", lambda k: k((2,), (64,), (np.zeros(1, np.int32),)), ["argument 0"]),
    "uninitialized_shared": ("initcheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)),
                             ["::values", "byte 124", "thread (0, 0, 0)"]),
    "divergent_barrier": ("synccheck", lambda k: k((1,), (32,), (np.zeros(32, f32),)),
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
    assert runtime().sanitize == {"racecheck", "initcheck"}
    monkeypatch.setenv("LINEAR_EMU_SANITIZE", "racecheck,leakcheck")
    with pytest.raises(ValueError, match=r"\$LINEAR_EMU_SANITIZE: unknown sanitize mode\(s\) \['leakcheck'\]"):
        runtime()


# ----------------------------------------------------------------------------------------------------
# Zero false positives: the project's kernels, every dtype and tile configuration the plan launches
# ----------------------------------------------------------------------------------------------------

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
          "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


@pytest.mark.parametrize("dtype,config", [(d, c.name) for d in DTYPES for c in plan.TILE_CONFIGS if d in c.dtypes])
def test_project_kernels_are_clean_under_every_mode(dtype, config):
    """GEMM with split-K (so the split sum runs too), bias and beta, then the column sum; blocks and
    threads shuffled."""
    backend = KernelBackend(runtime(sanitize=ALL, schedule="shuffle", seed=5), Tuning(config=config, splits=2))
    rng = np.random.default_rng(7)
    m, n, k = 37, 21, 19
    a, b = (rng.standard_normal(s).astype(DTYPES[dtype]) for s in ((m, k), (k, n)))
    c, bias = rng.standard_normal((m, n)).astype(DTYPES[dtype]), rng.standard_normal(n).astype(DTYPES[dtype])
    expected = a.astype(np.float64) @ b.astype(np.float64) + 0.5 * c.astype(np.float64) + bias
    backend.gemm(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.5, bias=bias)
    assert_close(c, expected, dtype)
    out = np.zeros(n, DTYPES[dtype])
    backend.colsum(c, out, beta=0.0)
    assert_close(out, c.astype(np.float64).sum(axis=0), dtype)
