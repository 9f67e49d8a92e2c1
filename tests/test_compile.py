"""Every kernel instantiation the plan can launch compiles with nvcc (sm_80 and sm_90, or sm_90a alone for
the family whose arch flags name it: kernels/wgmma_gemm.cu) without register spills or a stack frame, within
the shared memory a block may opt into on that architecture; kernels/REGISTERS.md and
linear/backends/registers.py are what tools/compile_check.py makes of it; NVRTC (CuPy's compiler, from the
nvidia-cuda-nvrtc wheel) compiles the same sources without spills either (sm_90, the sm_90a family with
-arch=sm_90a added as the cuda runtime adds it). Many instantiations per compiler call
(tools/compile_check.py's units); tests/test_sass.py and tests/test_wgmma_machine_code.py read the same
builds. No GPU needed."""
from __future__ import annotations

import pytest

import compile_check  # tools/
from conftest import require, require_tool
from linear.backends import cost, registers, tiles
from linear.backends.tiles import Instantiation, instantiations

KERNELS = instantiations()
UNITS = compile_check.units(KERNELS)


def test_nvcc_builds_every_instantiation_without_spills_and_the_generated_tables_are_current(run_dir):
    # One test for the builds and the tables, so that pytest-xdist workers never run the nvcc builds twice
    # (tests/test_sass.py and tests/test_wgmma_machine_code.py read the cubins from the same cache).
    builds = compile_check.nvcc_builds(require_tool("nvcc"), UNITS, compile_check.ARCHES, run_dir / "nvcc")
    resources = compile_check.by_arch_and_name(builds)
    wrong = compile_check.problems(KERNELS, resources)
    assert not wrong, "\n".join(wrong)
    assert compile_check.REGISTERS_MODULE.read_text() == compile_check.registers_module(resources), (
        f"linear/backends/registers.py is stale: run {compile_check.COMMAND}")
    assert cost.REGISTERS is registers.REGISTERS  # the cost model reads the generated table
    # Every configuration of every family has its registers there (sm_90a's wgmma family included).
    assert {key[0] for key in registers.REGISTERS} == set(tiles.CONFIGS_BY_NAME)
    # The float32 16-byte-load kernels of 128 x 128 tiles hold 2 blocks (16 warps) per SM.
    for name in ("large", "warp"):
        assert cost.blocks_per_sm(tiles.CONFIGS_BY_NAME[name], "float32", True) == 2, name
    assert compile_check.REGISTERS_MD.read_text() == compile_check.registers_table(KERNELS, resources), (
        f"kernels/REGISTERS.md is stale: run {compile_check.COMMAND}")


# A kernel template whose second instantiation keeps an array indexed at run time in local memory (a
# stack frame), compiled in one unit with reduce.cu's kernels: the negative control of the batched check.
PLANTED = """
template <int N> __global__ void planted(const int* in, int* out) {
    if constexpr (N == 2) {
        int histogram[256] = {};
        for (int j = 0; j < 1024; ++j) histogram[in[j] & 255] += 1;
        out[threadIdx.x] = histogram[threadIdx.x & 255];
    } else {
        out[threadIdx.x] = in[threadIdx.x] * N;
    }
}
"""


def test_the_batched_check_names_the_one_instantiation_with_local_memory(run_dir):
    reduce = [kernel for kernel in KERNELS if kernel.source == "reduce.cu"]
    kernels = reduce + [Instantiation("planted", f"planted<{n}>", 0) for n in (1, 2, 3)]
    unit = compile_check.instantiating_unit("reduce.cu", [kernel.name for kernel in kernels]).replace(
        "void* const", PLANTED + "void* const")
    build = compile_check.nvcc_build(require_tool("nvcc"), "sm_90", unit, run_dir / "nvcc")
    wrong = compile_check.problems(kernels, compile_check.by_arch_and_name([build]), ("sm_90",))
    assert len(wrong) == 1 and wrong[0].startswith("sm_90 planted<2>: ") and "0 bytes stack frame" not in wrong[0], wrong


def test_units_hold_every_instantiation_once():
    names = [name for unit in UNITS for name in unit.names]
    assert sorted(names) == sorted(kernel.name for kernel in KERNELS)
    assert all(len(unit.names) <= compile_check.MAX_PER_UNIT for unit in UNITS)
    assert len(UNITS) <= len(KERNELS) // 40  # a few compiler calls, not one per instantiation


@pytest.mark.parametrize("unit", UNITS, ids=lambda unit: f"{unit.source}-{UNITS.index(unit)}")
def test_nvrtc_compiles_every_instantiation_without_spills(unit):
    # One test per unit (test_units_hold_every_instantiation_once: together they hold every instantiation),
    # so that pytest-xdist spreads them over the workers beside the nvcc builds.
    library = compile_check.find_nvrtc()
    require(library is not None, "the nvidia-cuda-nvrtc wheel")
    require(bool(compile_check.cuda_include_dirs()), "CUDA headers (nvidia-cuda-runtime wheel or a toolkit)")
    build = compile_check.nvrtc_compile(library, unit)
    assert sorted(build.lowered) == sorted(unit.names)
    assert all(name.startswith("_Z") for name in build.lowered.values())
    assert build.arch == unit.arches[-1]  # sm_90, or sm_90a where the family's arch flags name it
    kernels = [kernel for kernel in KERNELS if kernel.name in unit.names]
    resources = {(build.arch, name): used for name, used in build.resources.items()}
    wrong = compile_check.problems(kernels, resources, (build.arch,))
    assert not wrong, "\n".join(wrong)


def test_ptxas_log_parsing():
    log = """ptxas info    : Compiling entry function '_Z3fooILi1EEvv' for 'sm_90'
ptxas info    : Function properties for _Z3fooILi1EEvv
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem, 360 bytes cmem[0]
"""
    assert compile_check.parse_ptxas(log) == {"_Z3fooILi1EEvv": compile_check.Resources(40, 8, 4, 4, 256)}
    assert compile_check.demangle(["_Z3fooILi1EEvv"]) == {"_Z3fooILi1EEvv": "foo<1>"}
