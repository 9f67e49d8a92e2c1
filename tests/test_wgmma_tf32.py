"""float32 as TF32 on the Hopper GEMM (kernels/wgmma_gemm.cu), run in the emulator through the launch plan
with TF32 allowed, against float64; and what the plan does with each product layout.

wgmma reads 32-bit operands K-major only (the PTX ISA gives imm-trans to 16-bit types alone), so the
family is instantiated for float32 in the NT product (A stored M x K, B stored N x K: dX = dY·Wᵀ) and no
other (GemmConfig.layouts). The kernel's result must be the float64 product of the operands cut to TF32
(the top 19 bits of each float, as the emulator's wgmma reads them: emu_wgmma.h) to float32 accuracy, and
within TF32_TOLERANCE of the exact product (and measurably off it: the operands were cut). Edges in M, N
and K (a partial 32-deep k-block), alpha, beta and bias, split-K, a batch with a broadcast operand, both
tile widths; outputs poisoned with NaN.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import require
from linear.backends import BackendUnavailable, launch, plan, tiles
from linear.backends.emulate import EmulatorRuntime
from linear.backends.plan import Tuning
from linear.dtypes import ELEMENT_TYPES
from linear.testing import TF32_TOLERANCE, relative_error

CONFIGS = {config.bn: config for config in tiles.WGMMA_CONFIGS}


@pytest.fixture(scope="module")
def emu() -> EmulatorRuntime:
    try:
        return EmulatorRuntime()
    except BackendUnavailable as error:
        require(False, f"the emulate backend ({error})")


def tf32(x: np.ndarray) -> np.ndarray:
    """x cut to TF32 as the tensor cores read it: the top 19 bits of each float."""
    return (np.ascontiguousarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


def run_nt(emu: EmulatorRuntime, m: int, n: int, k: int, *, bn: int = 256, batch: int = 1, broadcast_b=False,
           splits: int = 1, alpha: float = 1.0, beta: float = 0.0, bias: bool = False, grid: int = 2,
           seed: int = 0):
    """C = alpha · A · Bᵀ + beta · C (+ bias) in float32 with TF32 allowed, the wgmma configuration of width
    bn named: (C, the float64 reference of the TF32 operands, the exact float64 reference, the launches)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((batch, m, k)).astype(np.float32)
    b = rng.standard_normal((1 if broadcast_b else batch, n, k)).astype(np.float32)  # stored N x K
    c0 = rng.standard_normal((batch, m, n)).astype(np.float32)
    bias_values = rng.standard_normal(n).astype(np.float32)
    c = c0.copy() if beta != 0 else np.full(c0.shape, np.nan, np.float32)  # poisoned unless read
    op_b = np.broadcast_to(b.swapaxes(-1, -2), (batch, k, n))
    launches = plan.plan_gemm(np, a, op_b, c, alpha=alpha, beta=beta, bias=bias_values if bias else None,
                              tuning=Tuning(config=CONFIGS[bn].name, splits=splits), arch=emu.compute_capability(),
                              tf32=True, device=replace(emu.device_limits(), sms=grid))
    launch.run(emu, launches)

    def reference(x, y):
        out = alpha * (x.astype(np.float64) @ y.astype(np.float64).swapaxes(-1, -2)) + beta * c0.astype(np.float64)
        return out + bias_values.astype(np.float64) if bias else out

    return c, reference(tf32(a), tf32(b)), reference(a, b), launches


def check(c, cut, exact) -> None:
    assert relative_error(c, cut) <= 1e-5  # float accumulation of the TF32 products
    error = relative_error(c, exact)
    assert 1e-5 < error <= TF32_TOLERANCE, error  # TF32, not float32, and within TF32's tolerance


@pytest.mark.parametrize("bn", sorted(CONFIGS))
def test_nt_with_edges_alpha_beta_bias(emu, bn):
    # 200 x 296 x 136: two tile rows, tile columns with an edge, five k-blocks of 32 (the last 8 deep).
    c, cut, exact, launches = run_nt(emu, 200, 296, 136, bn=bn, alpha=1.5, beta=0.5, bias=True, grid=3)
    assert launches[0].name == CONFIGS[bn].template_name(ELEMENT_TYPES["float32"], "float", False, True, True)
    check(c, cut, exact)


def test_nt_from_zero_with_poisoned_output(emu):
    # beta = 0: C is NaN before the call and never read; every element must be written.
    c, cut, exact, _ = run_nt(emu, 130, 260, 40)
    assert not np.isnan(c).any()
    check(c, cut, exact)


def test_split_k_into_the_workspace(emu):
    c, cut, exact, launches = run_nt(emu, 136, 136, 520, bn=128, splits=3, bias=True)
    assert len(launches) == 2 and launches[1].source == "reduce.cu"  # the workspace summed in a fixed order
    check(c, cut, exact)


def test_batch_with_a_broadcast_operand(emu):
    c, cut, exact, _ = run_nt(emu, 72, 136, 64, batch=3, broadcast_b=True, alpha=-0.75)
    check(c, cut, exact)


def family(m: int, n: int, k: int, trans_a: bool, trans_b: bool, tf32: bool = True, arch: int = 90) -> str:
    a = np.ones((k, m) if trans_a else (m, k), np.float32)
    b = np.ones((n, k) if trans_b else (k, n), np.float32)
    launches = plan.plan_gemm(np, a.T if trans_a else a, b.T if trans_b else b, np.zeros((m, n), np.float32),
                              alpha=1.0, beta=0.0, arch=arch, tf32=tf32)
    return launches[0].source


@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (8192, 4096, 11008)], ids=str)
def test_the_plan_runs_tf32_on_wgmma_in_the_nt_product_only(shape):
    """On 9.0 with TF32 allowed the large NT products go to wgmma; NN, TN and TT keep tc_gemm's TF32 tiles
    (wgmma cannot read a transposed 32-bit operand); without TF32, or on 8.0, nothing changes."""
    assert family(*shape, False, True) == "wgmma_gemm.cu"
    for trans_a, trans_b in ((False, False), (True, False), (True, True)):
        assert family(*shape, trans_a, trans_b) == "tc_gemm.cu", (trans_a, trans_b)
    assert family(*shape, False, True, tf32=False) == "gemm.cu"
    assert family(*shape, False, True, arch=80) == "tc_gemm.cu"


def test_a_named_wgmma_tile_refuses_float32_in_another_layout():
    a, b, c = np.ones((64, 32), np.float32), np.ones((32, 64), np.float32), np.zeros((64, 64), np.float32)
    with pytest.raises(ValueError, match="wgmma.*product NN"):
        plan.plan_gemm(np, a, b, c, alpha=1.0, beta=0.0, tuning=Tuning(config="wgmma"), arch=90, tf32=True)
    assert tiles.CONFIGS_BY_NAME["wgmma"].layouts("float32") == ((False, True),)
    assert tiles.CONFIGS_BY_NAME["wgmma"].layouts("bfloat16") == tiles.LAYOUTS
