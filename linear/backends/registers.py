"""Registers per thread of every GEMM tile configuration, ptxas on sm_90 (kernels/REGISTERS.md: the most
over the products and C types; tests/test_compile.py holds this table to it): (config name, dtype,
16-byte loads) -> registers. The cost model (cost.py) reads PLAN_REGISTERS for the blocks an SM holds:
REGISTERS and SM90A_REGISTERS, the families the compile checks do not build yet (tiles.COMPILE_CHECKED_FAMILIES).
"""
from __future__ import annotations

REGISTERS: dict[tuple[str, str, bool], int] = {
    ('large', 'float32', False): 163,
    ('large', 'float32', True): 128,
    ('medium', 'float32', False): 80,
    ('medium', 'float32', True): 91,
    ('small', 'float32', False): 93,
    ('small', 'float32', True): 89,
    ('warp', 'float32', False): 163,
    ('warp', 'float32', True): 128,
    ('warp_deep', 'float32', False): 168,
    ('warp_deep', 'float32', True): 163,
    ('warp_wide', 'float32', False): 255,
    ('warp_wide', 'float32', True): 255,
    ('warp_medium', 'float32', False): 79,
    ('warp_medium', 'float32', True): 91,
    ('tc_large', 'float32', True): 154,
    ('tc_small', 'float32', True): 96,
    ('tc_wide', 'float32', True): 241,
    ('large', 'float64', False): 240,
    ('large', 'float64', True): 240,
    ('medium', 'float64', False): 128,
    ('medium', 'float64', True): 116,
    ('small', 'float64', False): 136,
    ('small', 'float64', True): 140,
    ('large', 'float16', False): 165,
    ('large', 'float16', True): 163,
    ('medium', 'float16', False): 81,
    ('medium', 'float16', True): 92,
    ('small', 'float16', False): 93,
    ('small', 'float16', True): 115,
    ('tc_large', 'float16', True): 128,
    ('tc_small', 'float16', True): 96,
    ('tc_wide', 'float16', True): 242,
    ('large', 'bfloat16', False): 165,
    ('large', 'bfloat16', True): 159,
    ('medium', 'bfloat16', False): 81,
    ('medium', 'bfloat16', True): 92,
    ('small', 'bfloat16', False): 93,
    ('small', 'bfloat16', True): 115,
    ('tc_large', 'bfloat16', True): 128,
    ('tc_small', 'bfloat16', True): 96,
    ('tc_wide', 'bfloat16', True): 242,
}

# kernels/wgmma_gemm.cu (sm_90a), not generated: the compile checks build sm_80 and sm_90 only. ptxas
# (nvcc 13.0 -arch=sm_90a -Xptxas -v, bench/NOTES.md; tests/test_wgmma_machine_code.py) reports 168 for every
# instantiation: the 384-thread launch bound (setmaxnreg then gives the consumers 232, the producer 40).
SM90A_REGISTERS: dict[tuple[str, str, bool], int] = {
    (name, dtype, True): 168 for name in ("wgmma_wide", "wgmma") for dtype in ("float16", "bfloat16")}

PLAN_REGISTERS: dict[tuple[str, str, bool], int] = {**REGISTERS, **SM90A_REGISTERS}
