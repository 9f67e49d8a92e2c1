"""The Hopper GEMM (kernels/wgmma_gemm.cu) compiled for sm_90a without a GPU: the machine code of the nvcc
builds that tests/test_compile.py checks for spills and registers (tools/compile_check.py's units, built
once per run into the shared cache), and NVRTC (CuPy's compiler) beside CuPy's own -arch option.

Every instantiation (float16 and bfloat16 in every product, float32 as TF32 in NT: tiles.WgmmaConfig.layouts):
no local memory; setmaxnreg gives the producer 40 registers and the consumers 232 (USETMAXREG), and the
consumers use no register beyond that. The consumer's K loop (the backward branch with the most HGMMA)
issues per k-block exactly 4 HGMMA (a k-block is 128 bytes of K, an HGMMA 32: k16 for 16-bit types, k8
for TF32) of the tile's shape (64 x BN x k), transposed (.tnspA, .tnspB) exactly where the operand is
MN-major, waits for one full barrier (SYNCS.PHASECHK), retires all but the last group
(WARPGROUP.DEPBAR.LE gsb0, 0x1) and releases one stage (SYNCS.ARRIVE); the producer's K loop waits for
one empty barrier, arrives once with its transaction bytes and issues one UTMALDG per TMA box of a stage
(1 or 2 for A, 1, 2 or 4 for B). Negative controls: the counts of the other tile width, the other
transposes, the other 16-bit type or the 16-bit instruction for the TF32 kernel fail the check; NVRTC
refuses the kernel for plain sm_90.
"""
from __future__ import annotations

import re
import subprocess

import pytest

from conftest import require, require_tool
import compile_check  # tools/
from linear.backends import tiles
from linear.backends.sources import kernels_dir
from linear.dtypes import ELEMENT_TYPES
from test_sass import Instruction, disassemble, find_cuda_tool, how_many

ARCH = "sm_90a"
PRODUCER_REGISTERS, CONSUMER_REGISTERS = 40, 232  # kernels/wgmma_gemm.cu
# Every instantiation of the wgmma family: name -> (dtype, trans_a, trans_b, BN).
KERNELS = {config.template_name(ELEMENT_TYPES[dtype], c, trans_a, trans_b, True): (dtype, trans_a, trans_b, config.bn)
           for config in tiles.WGMMA_CONFIGS for dtype in config.dtypes
           for c in dict.fromkeys((ELEMENT_TYPES[dtype].cpp, ELEMENT_TYPES[dtype].acc_cpp))
           for trans_a, trans_b in config.layouts(dtype)}
UNITS = [unit for unit in compile_check.units(tiles.instantiations()) if unit.source == tiles.WgmmaConfig.source]


def wgmma_name(dtype: str, c: str, trans_a: bool, trans_b: bool, config: str) -> str:
    return tiles.CONFIGS_BY_NAME[config].template_name(ELEMENT_TYPES[dtype], c, trans_a, trans_b, True)


def test_the_units_are_the_compile_checks_sm_90a_instantiations():
    assert sorted(name for unit in UNITS for name in unit.names) == sorted(KERNELS)
    assert all(unit.arches == (ARCH,) for unit in UNITS)


@pytest.fixture(scope="module")
def compiled(run_dir):
    """({name: Resources}, {name: SASS instructions}) for every instantiation: the sm_90a builds of
    tests/test_compile.py (tools/compile_check.py's units, built once per run into the shared cache)."""
    builds = compile_check.nvcc_builds(require_tool("nvcc"), UNITS, (ARCH,), run_dir / "nvcc")
    resources, sass = {}, {}
    for build in builds:
        resources.update(build.resources)
        sass.update(disassemble(build, list(build.mangled)))
    assert sorted(resources) == sorted(KERNELS) and sorted(sass) == sorted(KERNELS)
    return resources, sass


def k_loop(instructions: list[Instruction], base: str) -> list[Instruction]:
    """The shortest loop with the most `base` instructions. Loops here close with a conditional backward
    branch: the unconditional ones jump back from the out-of-line retries of a barrier wait, and
    BRA.U.ANY closes the loop ptxas wraps around each TMA instruction."""
    bodies = []
    for branch in instructions:
        target = branch.branch_target()
        if branch.text.startswith("@") and branch.opcode == "BRA" and target is not None and target <= branch.address:
            bodies.append([i for i in instructions if target <= i.address <= branch.address])
    assert bodies, "no loop"
    return max(bodies, key=lambda body: (how_many(body, base), -len(body)))


def consumer_loop_counts(instructions: list[Instruction]) -> dict:
    body = k_loop(instructions, "HGMMA")
    hgmma = [i.text for i in body if i.base == "HGMMA"]
    return {
        "hgmma": len(hgmma),
        "shapes": sorted({i.opcode for i in body if i.base == "HGMMA"}),
        "tnspA": sum(".tnspA" in t for t in hgmma),
        "tnspB": sum(".tnspB" in t for t in hgmma),
        "full waits": sum(i.opcode.startswith("SYNCS.PHASECHK") for i in body),
        "releases": sum(i.opcode.startswith("SYNCS.ARRIVE") for i in body),
        "retire all but one": sum("WARPGROUP.DEPBAR.LE" in i.text and "0x1" in i.text for i in body),
    }


def producer_loop_counts(instructions: list[Instruction]) -> dict:
    body = k_loop(instructions, "UTMALDG")
    return {
        "tma loads": how_many(body, "UTMALDG"),
        "empty waits": sum(i.opcode.startswith("SYNCS.PHASECHK") for i in body),
        "expect_tx arrivals": sum(i.opcode == "SYNCS.ARRIVE.TRANS64" for i in body),
    }


def expected(dtype: str, trans_a: bool, trans_b: bool, bn: int) -> tuple[dict, dict]:
    boxes_a = 2 if trans_a else 1  # A MN-major (stored K x M): 128 / 64 boxes
    boxes_b = 1 if trans_b else bn // 64  # B MN-major (stored K x N): BN / 64 boxes
    k = 8 if dtype == "float32" else 16  # per HGMMA: 32 bytes of K (TF32 or 16-bit values)
    shape = f"HGMMA.64x{bn}x{k}.F32" + {"bfloat16": ".BF16", "float16": "", "float32": ".TF32"}[dtype]
    consumer = {"hgmma": 4, "shapes": [shape], "tnspA": 4 if trans_a else 0,
                "tnspB": 0 if trans_b else 4, "full waits": 1, "releases": 1, "retire all but one": 1}
    producer = {"tma loads": boxes_a + boxes_b, "empty waits": 1, "expect_tx arrivals": 1}
    return consumer, producer


def highest_register(instructions: list[Instruction]) -> int:
    return max((int(r) for i in instructions for r in re.findall(r"\bR(\d+)\b", i.text)), default=0)


def test_every_instantiation_compiles_without_spills_or_local_memory(compiled):
    resources, sass = compiled
    for name, used in resources.items():
        assert (used.spill_stores, used.spill_loads, used.stack_frame) == (0, 0, 0), (name, used)
        body = sass[name]
        assert not [i.text for i in body if i.base in ("LDL", "STL", "LD", "ST")], name
        allocs = [i.text for i in body if i.base == "USETMAXREG"]
        assert any("DEALLOC" in t and t.endswith(hex(PRODUCER_REGISTERS)) for t in allocs), (name, allocs)
        assert any("TRY_ALLOC" in t and t.endswith(hex(CONSUMER_REGISTERS)) for t in allocs), (name, allocs)
        assert highest_register(body) < CONSUMER_REGISTERS, (name, highest_register(body))


def test_consumer_and_producer_loops_issue_what_the_tiling_says(compiled):
    _, sass = compiled
    for name, (dtype, trans_a, trans_b, bn) in KERNELS.items():
        consumer, producer = expected(dtype, trans_a, trans_b, bn)
        assert consumer_loop_counts(sass[name]) == consumer, name
        assert producer_loop_counts(sass[name]) == producer, name


def test_the_checks_fail_on_other_tilings(compiled):
    # Negative controls: the same kernel held to another tile width or other transposes fails.
    _, sass = compiled
    name = wgmma_name("bfloat16", "__nv_bfloat16", False, False, "wgmma_wide")
    for other in (("bfloat16", False, False, 128), ("bfloat16", True, False, 256), ("bfloat16", False, True, 256),
                  ("float16", False, False, 256)):
        consumer, producer = expected(*other)
        assert consumer_loop_counts(sass[name]) != consumer or producer_loop_counts(sass[name]) != producer, other
    # The TF32 kernel held to the 16-bit instruction of the same tile and product.
    tf32 = wgmma_name("float32", "float", False, True, "wgmma_wide")
    assert consumer_loop_counts(sass[tf32]) != expected("bfloat16", False, True, 256)[0]


def test_nvrtc_refuses_the_kernel_on_plain_sm_90():
    # tests/test_compile.py compiles every instantiation with NVRTC for sm_90a (-arch=sm_90 and -arch=sm_90a,
    # whose order does not matter: the test below); wgmma and setmaxnreg exist only in the
    # architecture-specific sm_90a: plain sm_90 must refuse them.
    library = compile_check.find_nvrtc()
    require(library is not None, "the nvidia-cuda-nvrtc wheel")
    require(bool(compile_check.cuda_include_dirs()), "CUDA headers (nvidia-cuda-runtime wheel or a toolkit)")
    with pytest.raises(RuntimeError, match="wgmma|setmaxnreg|sm_90a"):
        compile_check.nvrtc_compile(library, compile_check.Unit("wgmma_gemm.cu", tuple(KERNELS)[:1]), "sm_90")


@pytest.mark.parametrize("cupy_arch", ["-arch=sm_90", "-arch=compute_90", "--gpu-architecture=sm_90"])
def test_nvrtc_builds_an_sm_90a_cubin_beside_cupys_own_arch_option(cupy_arch, tmp_path):
    """CuPy passes NVRTC its own -arch for the device (sm_90 or compute_90); the cuda runtime adds
    -arch=sm_90a for this kernel (its family's arch_flags). Either order gives an sm_90a cubin."""
    import ctypes
    from linear.backends.tiles import WgmmaConfig
    library = compile_check.find_nvrtc()
    require(library is not None, "the nvidia-cuda-nvrtc wheel")
    cuobjdump = find_cuda_tool("cuobjdump")
    require(cuobjdump is not None, "cuobjdump (the nvidia-cuda-cuobjdump wheel)")
    nvrtc = ctypes.CDLL(str(library))
    name = wgmma_name("bfloat16", "__nv_bfloat16", False, False, "wgmma").encode()
    base = ["-std=c++17", f"-I{kernels_dir()}", *(f"-I{d}" for d in compile_check.cuda_include_dirs())]
    for options in ([*base, cupy_arch, *WgmmaConfig.arch_flags], [*base, *WgmmaConfig.arch_flags, cupy_arch]):
        program = ctypes.c_void_p()
        source = (kernels_dir() / "wgmma_gemm.cu").read_bytes()
        assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), source, b"wgmma_gemm.cu", 0, None, None) == 0
        try:
            assert nvrtc.nvrtcAddNameExpression(program, name) == 0
            encoded = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
            assert nvrtc.nvrtcCompileProgram(program, len(options), encoded) == 0, options
            size = ctypes.c_size_t()
            assert nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)) == 0 and size.value > 0, options
            cubin = ctypes.create_string_buffer(size.value)
            assert nvrtc.nvrtcGetCUBIN(program, cubin) == 0
        finally:
            nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
        path = tmp_path / "kernel.cubin"
        path.write_bytes(cubin.raw)
        elf = subprocess.run([cuobjdump, "-elf", str(path)], capture_output=True, text=True, check=True).stdout
        assert re.search(r"-arch sm_90a\b", elf), (options, [l for l in elf.splitlines() if "arch" in l])
