"""The machine code of the hot GEMMs, read without a GPU (nvcc -cubin, then cuobjdump -sass), sm_90: from
the builds of every instantiation that tests/test_compile.py checks (tools/compile_check.py; each unit is
built once per run, whichever test asks first).

SIMT (gemm.cu), float32, the large configurations (the heuristic's and the candidates), NN / NT / TN,
16-byte aligned operands: the main loop (the interior blocks' K loop: the shortest backward branch
with the most FFMA) must be the K loop the source describes: one barrier; every global load a 128-bit
LDG (one per 16-byte chunk a thread stages) and no bounds checks; every shared-memory fragment read a
128-bit LDS; exactly BK·TM·TN FFMA per step and at least MIN_FFMA_SHARE of the loop's instructions;
beside it, the edge blocks' checked K loop with the same FFMA; and the kernel must touch no local
memory (LDL/STL: spills or stack arrays). Negative controls: the scalar-load instantiation fails the vector-load check, and a kernel
with a dynamically indexed array (in local memory) fails the local-memory check.

Tensor cores (tc_gemm.cu), every configuration, bfloat16, float16 and float32 (TF32), NN / NT / TN:
the main loop (the backward branch with the most HMMA) holds, per step, exactly (WM/16)·(WN/8)·(BK/k)
HMMA of the mma.sync shape (HMMA.16816 for k = 16, HMMA.1688 for TF32's k = 8), the ldmatrix
(LDSM, .MT88 where transposed) and 32-bit LDS fragment reads the source issues, one LDGSTS (cp.async)
per 16-byte chunk a thread stages on each of the loader's two paths (interior tiles unchecked, edge
tiles checked) and one barrier; no local memory. Negative control: the SIMT main
loop has no HMMA.

cuobjdump and the nvdisasm it runs for -sass come from the nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels (or a CUDA toolkit on PATH); nvcc from the toolkit.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require, require_tool
import compile_check  # tools/
from linear.backends import tiles
from linear.backends.sources import kernels_dir
from linear.dtypes import ELEMENT_TYPES

ARCH = "sm_90"
HOT_CONFIGS = ["large", "warp", "warp_deep", "warp_wide"]
PRODUCTS = {"NN": (False, False), "NT": (False, True), "TN": (True, False)}
FLOAT = ELEMENT_TYPES["float32"]
MIN_FFMA_SHARE = 0.88  # of the main loop's instructions (the fastest public SIMT SGEMMs: 88-91 %)


def hot_name(config: str, product: str, vector: bool = True) -> str:
    return tiles.CONFIGS_BY_NAME[config].template_name(FLOAT, FLOAT.cpp, *PRODUCTS[product], vector)


HOT = {(config, product): hot_name(config, product) for config in HOT_CONFIGS for product in PRODUCTS}
SCALAR = hot_name("large", "NN", vector=False)

TC_DTYPES = ("bfloat16", "float16", "float32")  # float32 runs as TF32
TC = {(config.name, dtype, product): config.template_name(ELEMENT_TYPES[dtype], ELEMENT_TYPES[dtype].cpp,
                                                          *PRODUCTS[product], True)
      for config in tiles.TC_CONFIGS for dtype in TC_DTYPES for product in PRODUCTS}
# The SASS of each mma.sync shape on sm_90 (read from cuobjdump: one HMMA per mma.sync).
HMMA_OPCODES = {"bfloat16": "HMMA.16816.F32.BF16", "float16": "HMMA.16816.F32", "float32": "HMMA.1688.F32.TF32"}
LDSM, LDSM_TRANS = "LDSM.16.M88.4", "LDSM.16.MT88.4"  # ldmatrix .x4, without and with .trans
TC_MIX = ("HMMA", "LDSM", "LDS", "LDGSTS", "BAR")  # the instruction classes of the printed mix


def find_cuda_tool(name: str) -> str | None:
    """A CUDA binary tool on PATH, else the one of its nvidia-cuda-<name> wheel (CUDA 13 or 12 layout)."""
    found = shutil.which(name)
    if found:
        return found
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    for path in (site / "cu13" / "bin" / name, site / f"cuda_{name}" / "bin" / name):
        if path.exists():
            return str(path)
    return None


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str  # with its modifiers, e.g. LDG.E.128.CONSTANT
    text: str  # the whole instruction, predicate and operands included

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]

    def branch_target(self) -> int | None:
        if self.base != "BRA":
            return None
        target = re.search(r"0x([0-9a-f]+)\s*$", self.text)
        return int(target.group(1), 16) if target else None


_FUNCTION = re.compile(r"Function : (\S+)")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")


def parse_sass(text: str) -> dict[str, list[Instruction]]:
    """{mangled function name: its instructions} from `cuobjdump -sass`."""
    functions: dict[str, list[Instruction]] = {}
    current = None
    for line in text.splitlines():
        if m := _FUNCTION.search(line):
            current = functions.setdefault(m.group(1), [])
        elif current is not None and (m := _INSTRUCTION.search(line)):
            body = re.sub(r"^@!?U?P[T\d]+\s+", "", m.group(2))  # drop the predicate
            current.append(Instruction(int(m.group(1), 16), body.split()[0], m.group(2)))
    return functions


def loops(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The bodies of the backward branches (target .. branch)."""
    found = []
    for branch in instructions:
        target = branch.branch_target()
        if target is not None and target <= branch.address:
            found.append([i for i in instructions if target <= i.address <= branch.address])
    assert found, "no backward branch: the K loop is missing"
    return found


def how_many(body: list[Instruction], base: str) -> int:
    return sum(i.base == base for i in body)


def main_loop(instructions: list[Instruction], base: str = "FFMA") -> list[Instruction]:
    """The loop that holds the most `base` instructions; of several such (gemm.cu's interior and edge
    K loops), the shortest."""
    return max(loops(instructions), key=lambda body: (how_many(body, base), -len(body)))


def edge_loop(instructions: list[Instruction]) -> list[Instruction] | None:
    """gemm.cu's checked K loop: as many FFMA as the main loop, and longer."""
    main = main_loop(instructions)
    return next((body for body in loops(instructions)
                 if how_many(body, "FFMA") == how_many(main, "FFMA") and len(body) > len(main)), None)


@dataclass(frozen=True)
class LoopFigures:
    instructions: int  # NOPs left out
    ffma: int
    ldg_128: int
    ldg_narrow: int  # global loads narrower than 128 bits (the edge path of partial chunks)
    lds_128: int
    lds_narrow: int
    barriers: int
    lds_after_barrier: int  # fragment reads between the barrier and the backward branch
    local: int  # LDL/STL in the whole kernel

    @property
    def ffma_share(self) -> float:
        return self.ffma / self.instructions


def figures(instructions: list[Instruction], loop: list[Instruction] | None = None) -> LoopFigures:
    """Of `loop` (default: the main loop)."""
    body = [i for i in (loop or main_loop(instructions)) if i.base != "NOP"]
    count = Counter()
    for i in body:
        wide = ".128" in i.opcode
        if i.base in ("LDG", "LDS"):
            count[i.base + ("_128" if wide else "_narrow")] += 1
        elif i.base in ("FFMA", "BAR"):
            count[i.base] += 1
    bar = max((n for n, i in enumerate(body) if i.base == "BAR"), default=len(body))
    local = sum(i.base in ("LDL", "STL") for i in instructions)
    return LoopFigures(len(body), count["FFMA"], count["LDG_128"], count["LDG_narrow"], count["LDS_128"],
                       count["LDS_narrow"], count["BAR"], how_many(body[bar:], "LDS"), local)


def expected_per_step(config: tiles.TileConfig, product: str) -> tuple[int, int, int]:
    """(FFMA, 128-bit LDS, 16-byte chunks a thread loads) per K step of one thread, from the source."""
    chunks = sum(-(-config.bk * tile // 4 // config.threads) for tile in (config.bm, config.bn))
    return config.bk * config.tm * config.tn, config.bk * (config.tm + config.tn) // 4, chunks


def tc_mix(instructions: list[Instruction]) -> Counter:
    """Of the main loop (the most HMMA): each TC_MIX class, "other", every HMMA and LDSM opcode with its
    modifiers, LDS.64, and "local": LDL/STL in the whole kernel. NOPs are left out, and so are the instructions
    predicated on @!PT, which never run (ptxas puts three `@!PT LDS RZ, [RZ]` before the LDGSTS)."""
    count = Counter()
    for i in main_loop(instructions, "HMMA"):
        if i.base != "NOP" and not i.text.startswith("@!PT "):
            count[i.base if i.base in TC_MIX else "other"] += 1
        if i.base in ("HMMA", "LDSM") or i.opcode == "LDS.64":
            count[i.opcode] += 1
    count["local"] = sum(i.base in ("LDL", "STL") for i in instructions)
    return count


def tc_expected_per_step(config: tiles.TensorCoreConfig, dtype: str, product: str) -> Counter:
    """What one K step of a warp issues, read from tc_gemm.cu: per k-step of the mma, an ldmatrix.x4
    per mma row (A) and per two mma columns (B), except TF32's k-major operands: Aᵀ read with one
    8-byte LDS per two fragment registers (2 per mma row), B with one LDS per register (2 per mma
    column)."""
    trans_a, trans_b = PRODUCTS[product]
    tf32 = dtype == "float32"
    itemsize = ELEMENT_TYPES[dtype].itemsize
    m_tiles, n_tiles, k_steps = config.wm // 16, config.wn // 8, config.k_depth(itemsize) // (8 if tf32 else 16)
    # LDGSTS: one per 16-byte chunk a thread copies, on each of the loader's two paths (tiles inside
    # the matrices, without bounds checks, and edge tiles, with them).
    chunks = (config.bm + config.bn) * config.k_depth(itemsize) * itemsize // 16 // config.threads
    count = Counter({HMMA_OPCODES[dtype]: m_tiles * n_tiles * k_steps, "BAR": 1, "LDGSTS": 2 * chunks})
    if tf32:  # each chunk a thread copied, read back once to round it to TF32 in place
        count["LDS"] += chunks
    if tf32 and trans_a:
        count["LDS"] += 2 * m_tiles * k_steps
        count["LDS.64"] = 2 * m_tiles * k_steps
    else:
        count[LDSM_TRANS if trans_a else LDSM] += m_tiles * k_steps
    if tf32 and not trans_b:
        count["LDS"] += 2 * n_tiles * k_steps
    else:
        count[LDSM if trans_b else LDSM_TRANS] += n_tiles // 2 * k_steps
    return count


# Negative control for the local-memory check: an array indexed at run time lives in local memory.
LOCAL_ARRAY_KERNEL = """
extern "C" __global__ void local_array(const int* in, int* out) {
    int histogram[256] = {};
    for (int j = 0; j < 1024; ++j) histogram[in[j] & 255] += 1;
    out[threadIdx.x] = histogram[threadIdx.x & 255];
}
"""


def disassemble(build: compile_check.Build, names: list[str]) -> dict[str, list[Instruction]]:
    """{instantiation name: instructions} of the named kernels of an nvcc build."""
    cuobjdump, nvdisasm = find_cuda_tool("cuobjdump"), find_cuda_tool("nvdisasm")
    require(cuobjdump is not None, "cuobjdump (the nvidia-cuda-cuobjdump wheel)")
    require(nvdisasm is not None, "nvdisasm, which cuobjdump -sass runs (the nvidia-cuda-nvdisasm wheel)")
    functions = ",".join(build.mangled[name] for name in names)
    sass = subprocess.run([cuobjdump, "-sass", "-fun", functions, str(build.cubin)], check=True,
                          capture_output=True, text=True,
                          env=dict(os.environ, NVDISASM_PATH=str(Path(nvdisasm).parent))).stdout
    readable = {mangled: name for name, mangled in build.mangled.items()}
    return {readable[mangled]: instructions for mangled, instructions in parse_sass(sass).items()}


def build_unit(text: str, cache: Path) -> compile_check.Build:
    return compile_check.nvcc_build(require_tool("nvcc"), ARCH, text, cache)


@pytest.fixture(scope="module")
def sass(run_dir) -> dict[str, list[Instruction]]:
    """The hot kernels, the scalar-load one and the tensor-core ones, read from the sm_90 builds of every
    instantiation (the cubins tests/test_compile.py checks, built once per run), and the local-array control."""
    wanted = {*HOT.values(), SCALAR, *TC.values()}
    work = [unit for unit in compile_check.units(tiles.instantiations()) if wanted & set(unit.names)]
    builds = compile_check.nvcc_builds(require_tool("nvcc"), work, (ARCH,), run_dir / "nvcc")
    code = {}
    for build in builds:
        code.update(disassemble(build, [name for name in build.mangled if name in wanted]))
    local = build_unit(LOCAL_ARRAY_KERNEL, run_dir / "nvcc")
    code.update(disassemble(local, list(local.mangled)))
    assert wanted <= set(code), wanted - set(code)
    return code


@pytest.mark.parametrize("config,product", list(HOT), ids=[f"{c}-{p}" for c, p in HOT])
def test_main_loop_is_vector_loads_and_dense_ffma(sass, config, product):
    name = HOT[config, product]
    loop = figures(sass[name])
    ffma, lds, chunks = expected_per_step(tiles.CONFIGS_BY_NAME[config], product)
    unrolled = loop.ffma // ffma  # steps the compiler unrolled into one loop body
    mix = Counter(i.base for i in main_loop(sass[name]) if i.base not in ("NOP", "FFMA", "LDS", "LDG", "BAR"))
    edge = edge_loop(sass[name])
    edge_figures = figures(sass[name], edge) if edge else None
    print(f"\n{config:>10} {product}: {loop.instructions} instructions, {loop.ffma} FFMA "
          f"({loop.ffma_share:.1%}), {loop.lds_128} LDS.128, {loop.ldg_128} LDG.E.128, {loop.barriers} BAR, "
          + ", ".join(f"{n} {opcode}" for opcode, n in mix.most_common())
          + (f"; edge loop {edge_figures.instructions} ({edge_figures.ffma_share:.1%} FFMA)" if edge else ""))
    assert unrolled >= 1 and loop.ffma == unrolled * ffma, (name, loop)
    assert loop.lds_128 == unrolled * lds and loop.lds_narrow == 0, (name, loop)
    assert loop.ldg_128 == unrolled * chunks and loop.ldg_narrow == 0, (name, loop)
    # The checked loop of edge blocks: the same math, with the element-wise loads of partial chunks.
    assert edge_figures and edge_figures.ffma == loop.ffma and edge_figures.ldg_narrow > 0, (name, edge_figures)
    assert loop.barriers == unrolled, (name, loop)
    # Fragments double-buffered in registers: the next stage's first ones load right after the barrier.
    assert loop.lds_after_barrier == lds // tiles.CONFIGS_BY_NAME[config].bk, (name, loop)
    assert loop.local == 0, (name, loop)
    assert loop.ffma_share >= MIN_FFMA_SHARE, (name, loop)


def test_the_checks_catch_scalar_loads_and_local_memory(sass):
    scalar = figures(sass[SCALAR])
    assert scalar.ldg_128 == 0 and scalar.ldg_narrow > 0
    assert figures(sass["local_array"]).local > 0


@pytest.mark.parametrize("config,dtype,product", list(TC), ids=["-".join(key) for key in TC])
def test_tensor_core_main_loop(sass, config, dtype, product):
    name = TC[config, dtype, product]
    mix = tc_mix(sass[name])
    expected = tc_expected_per_step(tiles.CONFIGS_BY_NAME[config], dtype, product)
    hmma = HMMA_OPCODES[dtype]
    unrolled = mix[hmma] // expected[hmma]  # steps the compiler unrolled into one loop body
    total = sum(mix[c] for c in (*TC_MIX, "other"))
    print(f"\n{config:>8} {dtype:>8} {product}: {total} instructions, " +
          ", ".join(f"{mix[c]} {c}" for c in (*TC_MIX, "other")) + f" ({mix['HMMA'] / total:.1%} HMMA)")
    assert unrolled >= 1, (name, mix)
    assert mix["HMMA"] == mix[hmma], (name, "another mma shape", mix)
    for what in (hmma, LDSM, LDSM_TRANS, "LDS", "LDS.64", "LDGSTS", "BAR"):
        assert mix[what] == unrolled * expected[what], (name, what, mix)
    assert mix["LDSM"] == mix[LDSM] + mix[LDSM_TRANS], (name, "another ldmatrix form", mix)
    assert mix["local"] == 0, (name, mix)


INTERIOR_BRANCH = "if (inside_mn && k0 + BK <= k_end) {"  # tc_gemm.cu: the loader's unchecked path


def test_tensor_core_interior_steps_issue_at_most_four_instructions_per_hmma(tmp_path):
    """The step an interior block runs (the loader's bounds checks skipped): built with the branch
    forced, for the half-precision tc_large kernels. At most 4 instructions per HMMA.16816, the issue
    rate that keeps a tensor core busy (one HMMA per 4 clocks at the dense peak; bench/NOTES.md)."""
    source = (kernels_dir() / "tc_gemm.cu").read_text()
    assert source.count(INTERIOR_BRANCH) == 1
    names = [TC["tc_large", "bfloat16", product] for product in PRODUCTS]
    unit = compile_check.instantiating_unit("tc_gemm.cu", names).replace(
        '#include "tc_gemm.cu"', source.replace(INTERIOR_BRANCH, "if (true) {"))
    code = disassemble(build_unit(unit, tmp_path), names)
    for name in names:
        mix = tc_mix(code[name])
        total = sum(mix[c] for c in (*TC_MIX, "other"))
        print(f"\n{name}: interior step {total} instructions, " + ", ".join(f"{mix[c]} {c}" for c in (*TC_MIX, "other")))
        assert mix["LDGSTS"] == 4 and total <= 4 * mix["HMMA"], (name, mix)


def test_the_tensor_core_check_catches_a_loop_without_hmma(sass):
    assert tc_mix(sass[HOT["large", "NN"]])["HMMA"] == 0


def test_sass_parsing():
    text = """
        Function : _Z3fooILi1EEvv
        /*0000*/                   LDC R1, c[0x0][0x28] ;            /* 0x00000a00ff017b82 */
        /*0010*/                   FFMA R2, R3, R4, R2 ;             /* 0x0000000403027223 */
        /*0020*/              @!P0 BRA P3, 0x10 ;                    /* 0x0000000000408947 */
        /*0030*/               @P1 LDG.E.128.CONSTANT R4, desc[UR8][R2.64] ;  /* 0x00000008021c7981 */
        /*0040*/                   EXIT ;                            /* 0x000000000000794d */
    """
    [(name, instructions)] = parse_sass(text).items()
    assert name == "_Z3fooILi1EEvv" and [i.opcode for i in instructions] == \
        ["LDC", "FFMA", "BRA", "LDG.E.128.CONSTANT", "EXIT"]
    assert instructions[2].branch_target() == 0x10 and instructions[1].branch_target() is None
    assert [i.address for i in main_loop(instructions)] == [0x10, 0x20]
