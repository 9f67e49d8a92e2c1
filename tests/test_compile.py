"""Every kernel instantiation the plan can launch compiles with nvcc (sm_80, sm_90) without register
spills or a stack frame, within the shared memory a block may opt into on that architecture,
kernels/REGISTERS.md is current, and NVRTC (CuPy's compiler, from the nvidia-cuda-nvrtc wheel)
compiles the same sources. No GPU needed."""
from __future__ import annotations

import concurrent.futures
from pathlib import Path

from conftest import require, require_tool
from linear.backends import compile_check, cost, tiles
from linear.backends.registers import REGISTERS
from linear.backends.tiles import instantiations

KERNELS = instantiations()
# In the source tree, also when the tests run against an installed package (which leaves it out).
REGISTERS_MD = Path(__file__).resolve().parent.parent / "kernels" / "REGISTERS.md"


def test_nvcc_builds_every_instantiation_without_spills_and_registers_md_is_current():
    # One test for both checks, so that pytest-xdist workers never run the nvcc builds twice.
    resources = compile_check.nvcc_all(require_tool("nvcc"), KERNELS)
    for arch in compile_check.ARCHES:
        for kernel in KERNELS:
            used = resources.get((arch, kernel.name))
            assert used is not None, f"ptxas reported nothing for {kernel.name} on {arch}"
            assert (used.spill_stores, used.spill_loads, used.stack_frame) == (0, 0, 0), (arch, kernel.name, used)
            shared = kernel.shared_mem + used.static_shared
            assert shared <= compile_check.MAX_SHARED_PER_BLOCK[arch], (arch, kernel.name, shared)
    registers = compile_check.plan_registers(resources)
    assert registers == REGISTERS, "registers.REGISTERS is stale; it should be:\n" + "\n".join(
        f"    {key!r}: {value}," for key, value in registers.items())
    # The float32 16-byte-load kernels of 128 x 128 tiles hold 2 blocks (16 warps) per SM.
    for name in ("large", "warp"):
        assert cost.blocks_per_sm(tiles.CONFIGS_BY_NAME[name], "float32", True) == 2, name
    recorded = REGISTERS_MD.read_text()
    assert recorded == compile_check.registers_table(KERNELS, resources), (
        "kernels/REGISTERS.md is stale: run python -m linear.backends.compile_check")


def test_nvrtc_compiles_every_instantiation():
    library = compile_check.find_nvrtc()
    require(library is not None, "the nvidia-cuda-nvrtc wheel")
    require(bool(compile_check.cuda_include_dirs()), "CUDA headers (nvidia-cuda-runtime wheel or a toolkit)")
    # Two programs per source at a time (NVRTC releases the GIL), as CuPy would compile them.
    work = [(source, names[i::2]) for source, names in compile_check.by_source(KERNELS).items() for i in range(2)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        lowered = {}
        for result in pool.map(lambda w: compile_check.nvrtc_compile(library, *w), work):
            lowered.update(result)
    assert sorted(lowered) == sorted(kernel.name for kernel in KERNELS)
    assert all(name.startswith("_Z") for name in lowered.values())


def test_ptxas_log_parsing():
    log = """ptxas info    : Compiling entry function '_Z3fooILi1EEvv' for 'sm_90'
ptxas info    : Function properties for _Z3fooILi1EEvv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 360 bytes cmem[0]
"""
    assert compile_check.parse_ptxas(log) == {"_Z3fooILi1EEvv": compile_check.Resources(40, 8, 4, 4, 256)}
    assert compile_check.demangle(["_Z3fooILi1EEvv"]) == {"_Z3fooILi1EEvv": "foo<1>"}
