"""Compile every kernel instantiation without a GPU: nvcc (resource usage) and NVRTC (CuPy's compiler).

    python -m linear.backends.compile_check     # from the repository root: rewrites kernels/REGISTERS.md

tests/test_compile.py uses the same functions to assert no register spills and no stack frame.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import re
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .cuda import cuda_include_dirs
from .device import A100, H100
from . import tiles
from .tiles import Instantiation, instantiations
from .sources import kernels_dir

# The dynamic shared memory one block may opt into (cudaFuncAttributeMaxDynamicSharedMemorySize, which the
# cuda runtime sets above the default), per architecture: DeviceLimits.shared_per_block.
MAX_SHARED_PER_BLOCK = {"sm_80": A100.shared_per_block, "sm_90": H100.shared_per_block}
ARCHES = tuple(MAX_SHARED_PER_BLOCK)
NVCC_FLAGS = ("-std=c++17", "-O3", "-Xptxas", "-v", "-diag-suppress", "177")


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel on one architecture."""
    registers: int
    stack_frame: int  # bytes
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    static_shared: int  # bytes (the kernels use dynamic shared memory, reported by the plan)


def by_source(kernels: list[Instantiation]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for kernel in kernels:
        grouped.setdefault(kernel.source, []).append(kernel.name)
    return grouped


def instantiating_unit(source: str, names: list[str]) -> str:
    """A translation unit that includes `source` and takes the address of each instantiation."""
    entries = "".join(f"    (void*)&{name},\n" for name in names)
    return f'#include "{source}"\nvoid* const linear_instantiations[] = {{\n{entries}}};\n'


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[str, Resources]:
    """{mangled name: Resources} from the output of nvcc -Xptxas -v for one architecture."""
    found: dict[str, Resources] = {}
    entry = frame = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            entry, frame = m.group(1), None
        elif (m := _FRAME.search(line)) and entry:
            frame = tuple(map(int, m.groups()))
        elif (m := _USAGE.search(line)) and entry and frame:
            found[entry] = Resources(int(m.group(1)), *frame, int(m.group(2) or 0))
            entry = None
    return found


def demangle(mangled: list[str]) -> dict[str, str]:
    """{mangled: the instantiation name as tiles.py writes it} (c++filt prints the same spelling)."""
    out = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True, check=True)
    names = [line.removeprefix("void ").split("(")[0] for line in out.stdout.splitlines()]
    return dict(zip(mangled, names))


def nvcc_resources(nvcc: str, arch: str, source: str, names: list[str]) -> dict[str, Resources]:
    """{instantiation name: Resources} for the named instantiations of one source on one architecture."""
    with tempfile.TemporaryDirectory() as tmp:
        unit = Path(tmp) / "unit.cu"
        unit.write_text(instantiating_unit(source, names))
        command = [nvcc, *NVCC_FLAGS, f"-arch={arch}", f"-I{kernels_dir()}", "-c", str(unit),
                   "-o", str(Path(tmp) / "unit.o")]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvcc failed for {source} on {arch}:\n{done.stderr[-4000:]}")
    mangled = parse_ptxas(done.stdout + done.stderr)
    readable = demangle(list(mangled))
    return {readable[m]: resources for m, resources in mangled.items()}


def nvcc_all(nvcc: str, kernels: list[Instantiation], jobs: int = 2) -> dict[tuple[str, str], Resources]:
    """{(arch, name): Resources} for every instantiation and architecture, `jobs` nvcc runs at a time."""
    work = [(arch, source, names[i::jobs]) for arch in ARCHES for source, names in by_source(kernels).items()
            for i in range(jobs) if names[i::jobs]]
    found: dict[tuple[str, str], Resources] = {}
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for (arch, _, _), result in zip(work, pool.map(lambda w: nvcc_resources(nvcc, *w), work)):
            found.update({(arch, name): resources for name, resources in result.items()})
    return found


# ----------------------------------------------------------------------------------------------------
# NVRTC (the nvidia-cuda-nvrtc wheel, through ctypes: it needs no GPU)
# ----------------------------------------------------------------------------------------------------


def find_nvrtc() -> Path | None:
    """libnvrtc from the nvidia-cuda-nvrtc wheel (CUDA 13 or 12 layout), None when not installed."""
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    for pattern in ("cu13/lib/libnvrtc.so*", "cuda_nvrtc/lib/libnvrtc.so*"):
        for path in sorted(site.glob(pattern)):
            if "builtins" not in path.name:
                return path
    return None


def nvrtc_compile(library: Path, source: str, names: list[str], arch: str = "sm_90") -> dict[str, str]:
    """Compiles `source` to a cubin with NVRTC as CuPy does (name expressions, -std=c++17); returns
    {name: lowered (mangled) name}. Raises RuntimeError with NVRTC's log when compilation fails."""
    nvrtc = ctypes.CDLL(str(library))
    program = ctypes.c_void_p()
    text = (kernels_dir() / source).read_bytes()
    _nvrtc_check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(program), text, source.encode(), 0, None, None))
    try:
        for name in names:
            _nvrtc_check(nvrtc, nvrtc.nvrtcAddNameExpression(program, name.encode()))
        options = [f"-arch={arch}", "-std=c++17", f"-I{kernels_dir()}",
                   *(f"-I{d}" for d in cuda_include_dirs())]
        encoded = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        if nvrtc.nvrtcCompileProgram(program, len(options), encoded) != 0:
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC failed to compile {source} for {arch} with {options}:\n"
                               f"{log.value.decode(errors='replace')[-4000:]}")
        lowered = {}
        for name in names:
            pointer = ctypes.c_char_p()
            _nvrtc_check(nvrtc, nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(pointer)))
            lowered[name] = pointer.value.decode()
        return lowered
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def _nvrtc_check(nvrtc: ctypes.CDLL, status: int) -> None:
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC error {status}: {nvrtc.nvrtcGetErrorString(status).decode()}")


# ----------------------------------------------------------------------------------------------------
# kernels/REGISTERS.md
# ----------------------------------------------------------------------------------------------------


def registers_table(kernels: list[Instantiation], resources: dict[tuple[str, str], Resources]) -> str:
    lines = [
        "# Registers and shared memory per kernel",
        "",
        "Written by `python -m linear.backends.compile_check` from `nvcc -Xptxas -v` "
        f"({', '.join(ARCHES)}); every kernel has 0 bytes of spills and stack frame (tests/test_compile.py).",
        "Shared memory is the dynamic shared memory the plan launches the kernel with.",
        "",
        "| kernel | " + " | ".join(f"registers {arch}" for arch in ARCHES) + " | shared bytes |",
        "|---|" + "---:|" * (len(ARCHES) + 1),
    ]
    for kernel in kernels:
        registers = " | ".join(str(resources[arch, kernel.name].registers) for arch in ARCHES)
        lines.append(f"| `{kernel.name}` | {registers} | {kernel.shared_mem} |")
    return "\n".join(lines) + "\n"


def plan_registers(resources: dict[tuple[str, str], Resources], arch: str = "sm_90") -> dict:
    """registers.REGISTERS as ptxas reports it: per (config, dtype, 16-byte loads), the most registers
    over the products and C types."""
    table = {}
    for configs in tiles.COMPILE_CHECKED_FAMILIES:
        for config, dtype, vector, kernel in tiles.gemm_instantiations(configs):
            key = (config.name, dtype, vector)
            table[key] = max(table.get(key, 0), resources[arch, kernel.name].registers)
    return table


def main() -> None:
    import argparse
    import shutil
    parser = argparse.ArgumentParser(description="Write the registers and shared memory of every kernel.")
    parser.add_argument("out", nargs="?", type=Path, default=Path("kernels/REGISTERS.md"),
                        help="the file to write (default: kernels/REGISTERS.md, from the repository root)")
    out = parser.parse_args().out
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("nvcc is not on PATH")
    kernels = instantiations()
    out.write_text(registers_table(kernels, nvcc_all(nvcc, kernels)))
    print(f"wrote {out} ({len(kernels)} kernels)")


if __name__ == "__main__":
    main()
