"""The tensor-core path: the PTX primitives against the ISA's fragment tables, tc_gemm.cu, TF32.

The primitive tests run tests/kernels/tc_probe.cu, whose fragment placement is written from the PTX
ISA's tables, on the emulator and (under -m gpu) on a GPU, against expectations computed here from the
same tables: so the first GPU run proves the emulator's layouts. The emulator runs kernels/ptx.cuh's
inline PTX as written (linear/backends/emulate/ptx.py), so these tests run the asm strings the GPU
compiles; a wrong operand order in one of them must fail (a negative control below). The GEMM tests run every transpose x
element type of linear_tc_gemm on the emulator, with edge tiles in M, N and K (partial 16-byte chunks
included), split-K, alpha, beta and bias, and negative controls: a wrong fragment index and a missing
cp.async wait must fail.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import linear
from linear.backends import available_backends, get_backend, plan, tiles
from linear.backends.emulate import EmulationError
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from linear.backends.sources import kernels_dir
from linear.dtypes import ELEMENT_TYPES, dtype_of
from linear.testing import TF32_TOLERANCE
from reference import assert_close, poisoned, rel_err, to_numpy
from reference import TRANS, emulator, op, stored, gemm_reference as reference

PROBE = Path(__file__).resolve().parent / "kernels" / "tc_probe.cu"
TC_DTYPES = {"float16": np.dtype(np.float16), "bfloat16": dtype_of("bfloat16"),
             "float32": np.dtype(np.float32)}  # float32: TF32
# No tile multiples in M, N or K; K = 75 also ends inside a 16-byte chunk. Block (0, 0) has interior
# tiles (the loader's unchecked path) before its edge ones.
SHAPES = {"tc_small": (70, 72, 75), "tc_large": (136, 130, 45), "tc_wide": (136, 260, 45)}


@pytest.fixture(scope="module", params=["emulate", pytest.param("cuda", marks=pytest.mark.gpu)])
def probe_runtime(request, tmp_path_factory):
    """A runtime that compiles tc_probe.cu (with kernels/ for ptx.cuh)."""
    if request.param == "cuda":
        if "cuda" not in available_backends():
            pytest.skip("the cuda backend needs CuPy and a GPU")
        from linear.backends.cuda import CupyRuntime
        return CupyRuntime(kernel_dir=PROBE.parent)
    sources = tmp_path_factory.mktemp("probe")
    for path in [*kernels_dir().glob("*.cuh"), PROBE]:
        shutil.copy(path, sources / path.name)
    return emulator(kernel_dir=sources)


def run_probe(runtime, name: str, *args) -> list[np.ndarray]:
    """Launches one warp of probe `name`; returns the arrays among args as they are afterwards."""
    on_device = [runtime.xp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    runtime.function(PROBE.name, name)((1, 1, 1), (32, 1, 1), tuple(on_device))
    return [to_numpy(a) for a in on_device if not isinstance(a, np.generic)]


# ----------------------------------------------------------------------------------------------------
# The primitives, lane by lane
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("count", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_fragments_follow_the_isa(probe_runtime, count, trans):
    # PTX ISA, ldmatrix: lane l receives, in register j, elements (l/4, 2·(l%4)) and (l/4, 2·(l%4)+1) of
    # matrix j (the low half first); .trans delivers the same positions of the transposed matrix.
    rng = np.random.default_rng(count)
    tiles = rng.permutation(60000)[:count * 64].astype(np.uint16).reshape(count, 8, 8)
    expected = np.empty((32, count), np.uint32)
    for lane in range(32):
        for j in range(count):
            matrix = tiles[j].T if trans else tiles[j]
            row, col = lane // 4, 2 * (lane % 4)
            expected[lane, j] = int(matrix[row, col]) | int(matrix[row, col + 1]) << 16
    out = np.full((32, count), 0xFFFFFFFF, np.uint32)
    _, got = run_probe(probe_runtime, f"probe_ldmatrix<{count}, {'true' if trans else 'false'}>", tiles, out)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_mma_fragments_follow_the_isa(probe_runtime, dtype):
    # Small integers: every product and sum is exact, so D must equal A·B + C bit for bit.
    rng = np.random.default_rng(3)
    k = 8 if dtype == "float32" else 16
    a = rng.integers(-4, 5, (16, k)).astype(TC_DTYPES[dtype])
    b = rng.integers(-4, 5, (k, 8)).astype(TC_DTYPES[dtype])
    c = rng.integers(-16, 17, (16, 8)).astype(np.float32)
    d = poisoned(np, (16, 8), np.float32)
    name = "probe_mma_m16n8k8_tf32" if dtype == "float32" else f"probe_mma_m16n8k16<{ELEMENT_TYPES[dtype].cpp}>"
    *_, got = run_probe(probe_runtime, name, a, b, c, d)
    np.testing.assert_array_equal(got, a.astype(np.float64) @ b.astype(np.float64) + c)


def test_cp_async_lands_at_its_wait_and_zero_fills(probe_runtime):
    src = np.arange(1, 9, dtype=np.float32)
    _, out = run_probe(probe_runtime, "probe_cp_async", src, poisoned(np, 16, np.float32))
    np.testing.assert_array_equal(out[:4], src[:4])  # group 0, retired by wait_group 1
    np.testing.assert_array_equal(out[8:], [1, 2, 3, 4, 5, 6, 0, 0])  # both; 8 bytes then zeros
    if probe_runtime.name == "emulate":  # a GPU may have landed group 1 early; the emulator never does
        assert np.isnan(out[4:8]).all()


def test_a_wrong_operand_order_in_a_ptx_cuh_asm_string_is_caught(tmp_path):
    """Negative control: the emulator runs ptx.cuh's asm strings, so swapping two A registers in the
    bf16 mma string (a[0] <-> a[1]) must break the mma probe."""
    for path in [*kernels_dir().glob("*.cuh"), PROBE]:
        shutil.copy(path, tmp_path / path.name)
    header = (tmp_path / "ptx.cuh").read_text()
    bf16 = header.index("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32")
    swapped = header[:bf16] + header[bf16:].replace("{%4,%5,%6,%7}", "{%5,%4,%6,%7}", 1)
    assert swapped != header
    (tmp_path / "ptx.cuh").write_text(swapped)
    rng = np.random.default_rng(3)
    a = rng.integers(-4, 5, (16, 16)).astype(TC_DTYPES["bfloat16"])
    b = rng.integers(-4, 5, (16, 8)).astype(TC_DTYPES["bfloat16"])
    c = np.zeros((16, 8), np.float32)
    *_, got = run_probe(emulator(kernel_dir=tmp_path), "probe_mma_m16n8k16<__nv_bfloat16>", a, b, c,
                        poisoned(np, (16, 8), np.float32))
    assert not np.array_equal(got, a.astype(np.float64) @ b.astype(np.float64))


def tf32_bits(x: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 by its definition: keep 10 mantissa bits, round to nearest, ties away from 0."""
    bits = x.view(np.uint32).astype(np.int64)
    finite = (bits & 0x7F800000) != 0x7F800000
    return np.where(finite, (bits + 0x1000) & 0xFFFFE000, bits).astype(np.uint32)


def test_tf32_rounding_is_to_nearest_ties_away(probe_runtime):
    cases = {0x3F801000: 0x3F802000, 0xBF801000: 0xBF802000,  # ties: away from zero
             0x3F800FFF: 0x3F800000, 0x3F801001: 0x3F802000,  # below, above the tie
             0x3F803000: 0x3F804000, 0x7F800000: 0x7F800000}  # a tie with an odd last bit; inf
    special = np.array(list(cases), np.uint32)
    x = np.concatenate([special.view(np.float32), np.random.default_rng(4).standard_normal(250, np.float32)])
    _, out = run_probe(probe_runtime, "probe_to_tf32", x, np.zeros(x.size, np.uint32), np.int32(x.size))
    np.testing.assert_array_equal(out[:len(cases)], list(cases.values()))
    np.testing.assert_array_equal(out, tf32_bits(x))


# ----------------------------------------------------------------------------------------------------
# linear_tc_gemm on the emulator
# ----------------------------------------------------------------------------------------------------

def tf32_values(x: np.ndarray) -> np.ndarray:
    return tf32_bits(np.ascontiguousarray(x, np.float32)).view(np.float32).reshape(x.shape)


def operands(rng, dtype: str, m: int, n: int, k: int, trans_a: bool, trans_b: bool):
    """A and B as stored for op(A) (m x k) and op(B) (k x n), leading dimensions rounded up to 8
    elements (16-byte aligned rows, as cp.async needs) so that the rest of each row is NaN padding."""
    def matrix(rows, cols):
        return stored(rng, (rows, cols), TC_DTYPES[dtype], ld=-(-cols // 8) * 8)
    return matrix(*((k, m) if trans_a else (m, k))), matrix(*((n, k) if trans_b else (k, n)))


def check_tc_gemm(runtime, dtype, trans_a, trans_b, config, splits, kernel=None, seed=0):
    rng = np.random.default_rng(seed)
    m, n, k = SHAPES[config]
    a, b = operands(rng, dtype, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(TC_DTYPES[dtype])
    beta = 0.25 if splits == 1 else 0.0  # beta = 0: C is never read, so it starts as NaN
    c = stored(rng, (m, n), TC_DTYPES[dtype]).copy() if beta else poisoned(np, (m, n), TC_DTYPES[dtype])
    expected_inputs = (tf32_values(a), tf32_values(b)) if dtype == "float32" else (a, b)
    expected = reference(*expected_inputs, trans_a, trans_b, 0.5, beta, c, bias)
    launches = plan.plan_gemm(np, op(a, trans_a), op(b, trans_b), c, alpha=0.5, beta=beta, bias=bias,
                              tuning=Tuning(config=config, splits=splits), arch=90, tf32=True)
    assert launches[0].source == "tc_gemm.cu" and len(launches) == (1 if splits == 1 else 2)
    KernelBackend(runtime).launch(launches)
    return rel_err(c, expected)


@pytest.mark.parametrize("dtype", TC_DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", TRANS)
@pytest.mark.parametrize("config,splits", [("tc_small", 1), ("tc_small", 3), ("tc_large", 1), ("tc_wide", 1)])
def test_tc_gemm(dtype, trans_a, trans_b, config, splits):
    error = check_tc_gemm(emulator(), dtype, trans_a, trans_b, config, splits)
    # float32: against a reference on the TF32-rounded inputs, which the kernel must match to float32's
    # rounding of the sums; the half types round their output.
    assert error <= (1e-5 if dtype == "float32" else 1e-2), error


def test_tc_gemm_is_bitwise_equal_across_thread_schedules():
    results = set()
    for schedule in ("forward", "reverse", "shuffle"):
        runtime = emulator(schedule=schedule, seed=2)
        rng = np.random.default_rng(6)
        a, b = operands(rng, "bfloat16", 70, 50, 75, True, False)
        c = poisoned(np, (70, 50), TC_DTYPES["bfloat16"])
        KernelBackend(runtime).launch(plan.plan_gemm(np, a.T, b, c, alpha=1.0, beta=0.0,
                                                     tuning=Tuning(config="tc_small", splits=3), arch=90))
        results.add(c.tobytes())
    assert len(results) == 1


def broken_tc_copy(tmp_path, old: str, new: str) -> Path:
    """kernels/ copied into tmp_path with `old` (which must occur exactly once) in tc_gemm.cu replaced."""
    for path in kernels_dir().iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, tmp_path / path.name)
    source = (tmp_path / "tc_gemm.cu").read_text()
    assert source.count(old) == 1, old
    (tmp_path / "tc_gemm.cu").write_text(source.replace(old, new))
    return tmp_path


def test_a_wrong_fragment_index_is_caught(tmp_path):
    """Negative control: swapping the A fragment's second and third matrices (a1 <-> a2) breaks it."""
    assert check_tc_gemm(emulator(), "bfloat16", False, False, "tc_small", 1) <= 1e-2
    broken = broken_tc_copy(tmp_path, "m + lane % 8 + 8 * (lane / 8 % 2), kk + V * (lane / 16)",
                            "m + lane % 8 + 8 * (lane / 16), kk + V * (lane / 8 % 2)")
    assert check_tc_gemm(emulator(kernel_dir=broken), "bfloat16", False, False, "tc_small", 1) > 1e-2


def test_a_missing_cp_async_wait_is_caught(tmp_path):
    """Negative control: without the wait, the tiles are read before they land (poisoned shared memory)."""
    broken = broken_tc_copy(tmp_path, "cp_async_wait<STAGES - 2>();", "")
    try:
        error = check_tc_gemm(emulator(kernel_dir=broken), "float16", True, False, "tc_small", 1)
    except EmulationError:  # too many copies in flight
        return
    assert error > 1e-2


def wavefronts(addresses: list[int], width: int) -> int:
    """Shared-memory wavefronts of one warp's load of `width` (4 or 8) bytes a lane, by the usual bank
    model: 32 banks of 4 bytes, one word per bank per wavefront, 8-byte loads a half-warp at a time."""
    group = 32 if width == 4 else 16
    total = 0
    for first in range(0, 32, group):
        words = {a // 4 + w for a in set(addresses[first:first + group]) for w in range(width // 4)}
        total += max(sum(word % 32 == bank for word in words) for bank in range(32))
    return total


TF32_READS_PROBE = """#include "tc_gemm.cu"
// Byte offsets of TF32's k-major fragment reads in a tc_large stage (16 rows of k, 128 floats), by the
// kernel's own SwizzledTile: per k-step kk, warp column base c and register: Aᵀ's 8-byte loads at
// (kk + t + 4h, c + 2g), B's 4-byte loads at (kk + t + 4(q % 2), c + 8(q / 2) + g).
template <int SPREAD> __device__ void reads(int* out, int lane) {
    using Tile = SwizzledTile<float, 16, 128, SPREAD>;
    const int g = lane / 4, t = lane % 4;
    for (int kk = 0; kk < 16; kk += 8)
        for (int c = 0; c < 128; c += 16) {
            int* const at = out + ((kk / 8) * 8 + c / 16) * 6 * 32;
            for (int h = 0; h < 2; ++h) at[h * 32 + lane] = 4 * Tile::offset(kk + t + 4 * h, c + 2 * g);
            for (int q = 0; q < 4; ++q) at[(2 + q) * 32 + lane] = 4 * Tile::offset(kk + t + 4 * (q % 2), c + 8 * (q / 2) + g);
        }
}
__global__ void tf32_reads(int* out) {
    reads<1>(out, threadIdx.x);
    reads<2>(out + 2 * 8 * 6 * 32, threadIdx.x);
}
"""


def test_tf32_k_major_reads_touch_every_bank_once(tmp_path):
    """With the TF32 k-major tiles' SPREAD = 2 swizzle, every fragment read of a warp takes the fewest
    wavefronts (1 for 4-byte loads, 2 for 8-byte ones); the plain swizzle, which ldmatrix wants, takes
    2 and 4 there (the control that the model sees the difference)."""
    for path in kernels_dir().iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, tmp_path / path.name)
    (tmp_path / "probe.cu").write_text(TF32_READS_PROBE)
    out = np.full((2, 16, 6, 32), -1, np.int32)
    emulator(kernel_dir=tmp_path).function("probe.cu", "tf32_reads")((1, 1, 1), (32, 1, 1), (out,))
    for spread, (a_best, b_best) in ((1, (4, 2)), (2, (2, 1))):
        reads = out[spread - 1]
        assert max(wavefronts(list(r), 8) for r in reads[:, :2].reshape(-1, 32)) == a_best, spread
        assert max(wavefronts(list(r), 4) for r in reads[:, 2:].reshape(-1, 32)) == b_best, spread


# tc_gemm runs clean under every sanitize mode in tests/test_sanitize.py (each dtype); here, the reports.

def test_memcheck_reports_a_chunk_read_past_the_matrix(tmp_path):
    """Negative control: edge chunks that copy all 16 bytes read past the end of A (K = 75 of 80)."""
    broken = broken_tc_copy(tmp_path, "min(col_end - col[i], V) * int(sizeof(T))", "V * int(sizeof(T))")
    with pytest.raises(EmulationError, match="memcheck: out-of-bounds read"):
        check_tc_gemm(emulator(kernel_dir=broken, sanitize="memcheck"), "float16", False, False, "tc_small", 1)


def test_initcheck_reports_a_missing_cp_async_wait(tmp_path):
    broken = broken_tc_copy(tmp_path, "cp_async_wait<STAGES - 2>();", "")
    with pytest.raises(EmulationError, match="initcheck: read of"):
        check_tc_gemm(emulator(kernel_dir=broken, sanitize="initcheck"), "bfloat16", False, False, "tc_small", 1)


# ----------------------------------------------------------------------------------------------------
# Through the API: the plan picks tensor cores for aligned half-type and TF32 products
# ----------------------------------------------------------------------------------------------------

# The tensor-core families' kernels: on 9.0 (the emulator's) the plan weighs the Hopper tiles against tc_gemm's.
TENSOR_CORE_KERNELS = ("linear_tc_gemm<", "linear_wgmma_gemm<")


@pytest.fixture
def launched(monkeypatch):
    """The kernel names the emulate backend launches during the test."""
    names: list[str] = []
    runtime = get_backend("emulate").runtime
    function = runtime.function
    monkeypatch.setattr(runtime, "function", lambda source, name, options=(): names.append(name) or
                        function(source, name, options=options))
    return names


@pytest.fixture
def tf32_default():
    yield
    linear.set_tf32(None)


aligned = st.integers(1, 18).map(lambda v: 8 * v)  # a multiple of 8: every leading dimension is aligned


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(batch=st.one_of(st.integers(1, 150), st.integers(1000, 1600)), f=aligned, d=aligned,
       dtype=st.sampled_from(["float16", "bfloat16"]), seed=st.integers(0, 2**32 - 1))
def test_layer_on_tensor_cores(launched, batch, f, d, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w, dy = (rng.standard_normal(s).astype(TC_DTYPES[dtype]) for s in [(batch, f), (f, d), (batch, d)])
    b = rng.standard_normal(d).astype(TC_DTYPES[dtype])
    launched.clear()
    y = linear.forward(x, w, b, backend="emulate")
    grads = linear.backward(dy, x, w, backend="emulate")
    assert sum(name.startswith(TENSOR_CORE_KERNELS) for name in launched) == 3  # Y, dX, dW
    x64, w64, dy64 = (v.astype(np.float64) for v in (x, w, dy))
    assert_close(y, x64 @ w64 + b.astype(np.float64), dtype)
    assert_close(grads.dx, dy64 @ w64.T, dtype)
    assert_close(grads.dw, x64.T @ dy64, dtype)


def test_a_stack_is_one_batched_tensor_core_launch(launched):
    rng = np.random.default_rng(10)
    a = rng.standard_normal((2, 3, 40, 24)).astype(dtype_of("bfloat16"))
    b = rng.standard_normal((24, 32)).astype(dtype_of("bfloat16"))  # broadcast over the stack: stride 0
    out = linear.matmul(a, b, backend="emulate")
    bf16_kernels = tuple(f"{kernel}__nv_bfloat16," for kernel in TENSOR_CORE_KERNELS)
    assert len(launched) == 1 and launched[0].startswith(bf16_kernels)
    assert_close(out, a.astype(np.float64) @ b.astype(np.float64), "bfloat16")


def test_tf32_is_off_by_default_and_rounds_when_on(launched, tf32_default, monkeypatch):
    monkeypatch.delenv("LINEAR_TF32", raising=False)
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((72, 200), np.float32), rng.standard_normal((200, 40), np.float32)
    exact = a.astype(np.float64) @ b
    assert not linear.get_tf32()
    assert rel_err(linear.matmul(a, b, backend="emulate"), exact) <= 1e-5
    assert not any("linear_tc_gemm" in name for name in launched)

    linear.set_tf32(True)
    out = linear.matmul(a, b, backend="emulate")
    assert any(name.startswith("linear_tc_gemm<float,") for name in launched)
    assert rel_err(out, tf32_values(a).astype(np.float64) @ tf32_values(b)) <= 1e-6  # rounded as the GPU does
    assert 1e-5 < rel_err(out, exact) <= TF32_TOLERANCE
    assert rel_err(linear.matmul(a, b, backend="numpy"), exact) <= 1e-5  # BLAS has no TF32

    linear.set_tf32(None)
    monkeypatch.setenv("LINEAR_TF32", "1")
    assert linear.get_tf32()
    monkeypatch.setenv("LINEAR_TF32", "yes")
    with pytest.raises(ValueError, match=r"\$LINEAR_TF32 must be 0 or 1"):
        linear.get_tf32()
    with pytest.raises(TypeError, match="enabled must be a bool or None"):
        linear.set_tf32(1)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_unaligned_half_operands_are_copied_to_aligned_rows_for_the_tensor_cores(launched, dtype):
    """42-byte rows cannot go by 16-byte cp.async: they are copied into aligned rows and the products
    (NN, NT, TN, a stack) run on tensor cores, leaving the caller's arrays as they were."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((30, 21)).astype(TC_DTYPES[dtype])
    w = rng.standard_normal((21, 16)).astype(TC_DTYPES[dtype])
    y_grad = rng.standard_normal((30, 16)).astype(TC_DTYPES[dtype])
    x_before, w_before = x.copy(), w.copy()
    exact = x.astype(np.float64), w.astype(np.float64), y_grad.astype(np.float64)
    for result, expected in ((linear.forward(x, w, backend="emulate"), exact[0] @ exact[1]),
                             (linear.matmul(y_grad, w.T, backend="emulate"), exact[2] @ exact[1].T),
                             (linear.matmul(x.T, y_grad, backend="emulate"), exact[0].T @ exact[2])):
        assert_close(result, expected, dtype)
    stack = rng.standard_normal((2, 30, 21)).astype(TC_DTYPES[dtype])
    assert_close(linear.matmul(stack, w, backend="emulate"), stack.astype(np.float64) @ exact[1], dtype)
    weights = rng.standard_normal((3, 21, 16)).astype(TC_DTYPES[dtype])  # x broadcast over them
    assert_close(linear.matmul(x, weights, backend="emulate"), exact[0] @ weights.astype(np.float64), dtype)
    assert len(launched) == 5 and all(name.startswith(TENSOR_CORE_KERNELS) for name in launched)
    assert np.array_equal(x, x_before) and np.array_equal(w, w_before)


def test_the_gpu_sessions_tile_comparison_checks_and_times_every_configuration(tmp_path):
    """bench/gpu_check.py tc_tiles (a phase of the GPU session) on the emulator at 1 % of its shapes:
    every tensor-core configuration, the tc_wide candidate included, right on all three products."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "tc_tiles.json"
    run = subprocess.run([sys.executable, "bench/gpu_check.py", "tc_tiles", str(out), "--backend", "emulate",
                          "--scale", "0.01"], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 3 * 3 * len(tiles.TC_CONFIGS)
    assert {row["config"] for row in rows} == {config.name for config in tiles.TC_CONFIGS} >= {"tc_wide"}
    assert all(row["rel_err"] <= 1e-2 and row["median_ms"] > 0 for row in rows), rows

