"""The Hopper GEMM (kernels/wgmma_gemm.cu) compiled for sm_90a without a GPU: nvcc (resources and SASS) and
NVRTC (CuPy's compiler).

Every instantiation: no register spills, no stack frame, no local memory; setmaxnreg gives the producer
40 registers and the consumers 232 (USETMAXREG), and the consumers use no register beyond that. The
consumer's K loop (the backward branch with the most HGMMA) issues per k-block exactly BK/16 = 4 HGMMA of
the tile's shape (64 x BN x 16), transposed (.tnspA, .tnspB) exactly where the operand is MN-major,
waits for one full barrier (SYNCS.PHASECHK), retires all but the last group (WARPGROUP.DEPBAR.LE gsb0,
0x1) and releases one stage (SYNCS.ARRIVE); the producer's K loop waits for one empty barrier, arrives
once with its transaction bytes and issues one UTMALDG per TMA box of a stage (1 or 2 for A, 1, 2 or 4
for B). Negative controls: the counts of the other tile width or the other transposes fail the check.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import require, require_tool
import compile_check  # tools/
from linear.backends.sources import kernels_dir
from test_sass import Instruction, find_cuda_tool, how_many, parse_sass

ARCH = "sm_90a"
CONFIGS = ((256, 4), (128, 6))  # (BN, STAGES)
TYPES = {"bfloat16": "__nv_bfloat16", "float16": "__half"}
PRODUCER_REGISTERS, CONSUMER_REGISTERS = 40, 232  # kernels/wgmma_gemm.cu


def wgmma_name(t: str, c: str, trans_a: bool, trans_b: bool, bn: int, stages: int) -> str:
    flags = ", ".join("true" if f else "false" for f in (trans_a, trans_b))
    return f"linear_wgmma_gemm<{t}, {c}, {flags}, {bn}, {stages}>"


KERNELS = {wgmma_name(t, c, ta, tb, bn, stages): (ta, tb, bn)
           for t in TYPES.values() for c in (t, "float") for ta, tb in itertools.product((False, True), repeat=2)
           for bn, stages in CONFIGS}


def compile_cubin(nvcc: str, names: list[str], tmp: Path, tag: str) -> tuple[str, Path]:
    unit = tmp / f"{tag}.cu"
    unit.write_text(compile_check.instantiating_unit("wgmma_gemm.cu", names))
    cubin = tmp / f"{tag}.cubin"
    done = subprocess.run([nvcc, *compile_check.NVCC_FLAGS, f"-arch={ARCH}", f"-I{kernels_dir()}",
                           str(unit), "-o", str(cubin)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr, cubin


@pytest.fixture(scope="module")
def compiled():
    """({name: Resources}, {name: SASS instructions}) for every instantiation, two nvcc runs at a time."""
    nvcc = require_tool("nvcc")
    cuobjdump, nvdisasm = find_cuda_tool("cuobjdump"), find_cuda_tool("nvdisasm")
    require(cuobjdump is not None, "cuobjdump (the nvidia-cuda-cuobjdump wheel)")
    require(nvdisasm is not None, "nvdisasm (the nvidia-cuda-nvdisasm wheel)")
    names = list(KERNELS)
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(2) as pool:
        parts = list(pool.map(lambda i: compile_cubin(nvcc, names[i::2], Path(tmp), f"part{i}"), range(2)))
        resources, sass = {}, {}
        for log, cubin in parts:
            mangled = compile_check.parse_ptxas(log)
            readable = compile_check.demangle(list(mangled))
            resources.update({readable[m]: r for m, r in mangled.items()})
            text = subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True,
                                  env=dict(os.environ, NVDISASM_PATH=str(Path(nvdisasm).parent))).stdout
            functions = parse_sass(text)
            readable = compile_check.demangle(list(functions))
            sass.update({readable[m]: body for m, body in functions.items()})
    assert sorted(resources) == sorted(names) and sorted(sass) == sorted(names)
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


def expected(name: str, trans_a: bool, trans_b: bool, bn: int) -> tuple[dict, dict]:
    boxes_a = 2 if trans_a else 1  # A MN-major (stored K x M): 128 / 64 boxes
    boxes_b = 1 if trans_b else bn // 64  # B MN-major (stored K x N): BN / 64 boxes
    shape = f"HGMMA.64x{bn}x16.F32" + (".BF16" if name.startswith("linear_wgmma_gemm<__nv_bfloat16") else "")
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
    for name, (trans_a, trans_b, bn) in KERNELS.items():
        consumer, producer = expected(name, trans_a, trans_b, bn)
        assert consumer_loop_counts(sass[name]) == consumer, name
        assert producer_loop_counts(sass[name]) == producer, name


def test_the_checks_fail_on_other_tilings(compiled):
    # Negative controls: the same kernel held to another tile width or other transposes fails.
    _, sass = compiled
    name = wgmma_name("__nv_bfloat16", "__nv_bfloat16", False, False, 256, 4)
    for other in ((False, False, 128), (True, False, 256), (False, True, 256)):
        consumer, producer = expected(name, *other)
        assert consumer_loop_counts(sass[name]) != consumer or producer_loop_counts(sass[name]) != producer, other


def test_nvrtc_compiles_every_instantiation_for_sm_90a_only():
    library = compile_check.find_nvrtc()
    require(library is not None, "the nvidia-cuda-nvrtc wheel")
    require(bool(compile_check.cuda_include_dirs()), "CUDA headers (nvidia-cuda-runtime wheel or a toolkit)")
    names = list(KERNELS)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        lowered = {}
        for result in pool.map(lambda i: compile_check.nvrtc_compile(
                library, compile_check.Unit("wgmma_gemm.cu", tuple(names[i::2])), ARCH).lowered,
                               range(2)):
            lowered.update(result)
    assert sorted(lowered) == sorted(names) and all(v.startswith("_Z") for v in lowered.values())
    # wgmma and setmaxnreg exist only in the architecture-specific sm_90a: plain sm_90 must refuse them.
    with pytest.raises(RuntimeError, match="wgmma|setmaxnreg|sm_90a"):
        compile_check.nvrtc_compile(library, compile_check.Unit("wgmma_gemm.cu", tuple(names[:1])), "sm_90")


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
    name = wgmma_name("__nv_bfloat16", "__nv_bfloat16", False, False, 128, 6).encode()
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
