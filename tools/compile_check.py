"""Compile every kernel instantiation without a GPU, many instantiations per compiler call: nvcc for what
ptxas reports of each kernel (sm_80 and sm_90; sm_90a alone for a family whose arch flags name it) and the
machine code, NVRTC as CuPy runs it.

    PYTHONPATH=. python tools/compile_check.py   # from the repository root: rewrites kernels/REGISTERS.md
                                                 # and linear/backends/registers.py

A developer tool beside the package, not in it: the installed package compiles through CuPy alone and never
imports this; tests/test_compile.py and tests/test_sass.py do.

Each compiler call compiles one translation unit that includes a kernel source and takes the address of up
to MAX_PER_UNIT of its instantiations; ptxas's report (-Xptxas -v) names each kernel by its mangled name,
which c++filt turns back into the name tiles.py writes, so every figure belongs to one instantiation. nvcc's
builds are kept in a cache folder keyed by everything that goes into them (compiler, flags, unit, kernel
sources), so that the resource check and the machine-code check (pytest-xdist workers included) build
each unit once.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import functools
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from linear.backends import tiles
from linear.backends.cuda import cuda_include_dirs
from linear.backends.device import A100, H100
from linear.backends.sources import kernels_dir
from linear.backends.tiles import Instantiation, instantiations

REPOSITORY = Path(__file__).resolve().parent.parent
REGISTERS_MD = REPOSITORY / "kernels" / "REGISTERS.md"
REGISTERS_MODULE = REPOSITORY / "linear" / "backends" / "registers.py"
COMMAND = "PYTHONPATH=. python tools/compile_check.py"

# The dynamic shared memory one block may opt into (cudaFuncAttributeMaxDynamicSharedMemorySize, which the
# cuda runtime sets above the default), per architecture: DeviceLimits.shared_per_block.
MAX_SHARED_PER_BLOCK = {"sm_80": A100.shared_per_block, "sm_90": H100.shared_per_block,
                        "sm_90a": H100.shared_per_block}
ARCHES = tuple(MAX_SHARED_PER_BLOCK)  # every architecture the checks build for
PORTABLE_ARCHES = ("sm_80", "sm_90")  # a kernel whose family has no -arch flag of its own is built for these
NVCC_FLAGS = ("-std=c++17", "-cubin", "-Xptxas", "-v", "-diag-suppress", "177")
# Instantiations per compiler call: few calls (each costs ~1 s of start-up), yet enough units that two
# run side by side (gemm.cu's 176 instantiations make two units).
MAX_PER_UNIT = 100


@dataclass(frozen=True)
class Resources:
    """What ptxas reports for one kernel on one architecture."""
    registers: int
    stack_frame: int  # bytes
    spill_stores: int  # bytes
    spill_loads: int  # bytes
    static_shared: int  # bytes (the kernels use dynamic shared memory, reported by the plan)


def architectures(arch_flags: tuple[str, ...]) -> tuple[str, ...]:
    """The architectures a kernel is built for: the one its family's arch flags name (-arch=sm_90a: code
    that runs on that architecture only), else PORTABLE_ARCHES. The last is the one the cost model's device
    (an H100) runs."""
    named = tuple(flag.removeprefix("-arch=") for flag in arch_flags if flag.startswith("-arch="))
    return named or PORTABLE_ARCHES


@dataclass(frozen=True)
class Unit:
    """One translation unit: a kernel source and some of its instantiations, which share arch flags."""
    source: str  # a file in kernels/
    names: tuple[str, ...]
    arch_flags: tuple[str, ...] = ()  # the instantiations' (Instantiation.arch_flags)

    @property
    def text(self) -> str:
        return instantiating_unit(self.source, self.names)

    @property
    def arches(self) -> tuple[str, ...]:
        return architectures(self.arch_flags)


def instantiating_unit(source: str, names: tuple[str, ...] | list[str]) -> str:
    """A translation unit that includes `source` and takes the address of each instantiation."""
    entries = "".join(f"    (void*)&{name},\n" for name in names)
    return f'#include "{source}"\nvoid* const linear_instantiations[] = {{\n{entries}}};\n'


def units(kernels: list[Instantiation]) -> list[Unit]:
    """The units the checks compile: the instantiations of each source and arch flags in the fewest units
    of at most MAX_PER_UNIT, of even sizes, largest units first; and at least two compiler calls per group
    (units x architectures), so that two cores share a group built for one architecture (the sm_90a
    family's heavy instantiations)."""
    grouped: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for kernel in kernels:
        grouped.setdefault((kernel.source, kernel.arch_flags), []).append(kernel.name)
    found = []
    for (source, arch_flags), names in grouped.items():
        parts = min(len(names), max(-(-len(names) // MAX_PER_UNIT), -(-2 // len(architectures(arch_flags)))))
        found += [Unit(source, tuple(names[i::parts]), arch_flags) for i in range(parts)]
    return sorted(found, key=lambda unit: -len(unit.names))


_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[str, Resources]:
    """{mangled name: Resources} from ptxas -v's report (nvcc -Xptxas -v, or NVRTC's log) for one
    architecture."""
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


# ----------------------------------------------------------------------------------------------------
# nvcc
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """One nvcc run over a unit for one architecture: its cubin and what ptxas reported of each kernel."""
    arch: str
    cubin: Path
    mangled: dict[str, str]  # instantiation name -> mangled name
    resources: dict[str, Resources]  # by instantiation name


@functools.cache
def _nvcc_version(nvcc: str) -> str:
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout


def _build_key(nvcc: str, command: list[str], text: str) -> str:
    """A digest of everything that goes into a build: the compiler, its flags, the unit and the sources it
    may include."""
    digest = hashlib.sha256("\0".join([_nvcc_version(nvcc), *command, text]).encode())
    for path in sorted(kernels_dir().glob("*")):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), across processes."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def nvcc_build(nvcc: str, arch: str, text: str, cache: Path) -> Build:
    """Compiles the unit `text` to a cubin for `arch`, or finds it built in `cache` (another process that
    builds it at the same time is waited for). Raises RuntimeError with nvcc's errors when it fails."""
    command = [nvcc, *NVCC_FLAGS, f"-arch={arch}", f"-I{kernels_dir()}"]
    cache.mkdir(parents=True, exist_ok=True)
    key = _build_key(nvcc, command, text)
    cubin, report = cache / f"{key}.cubin", cache / f"{key}.ptxas"
    with _locked(cache / f"{key}.lock"):
        if not report.exists():
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                unit, built = Path(tmp) / "unit.cu", Path(tmp) / "unit.cubin"
                unit.write_text(text)
                done = subprocess.run([*command, str(unit), "-o", str(built)], capture_output=True, text=True)
                if done.returncode != 0:
                    raise RuntimeError(f"nvcc failed on {arch}:\n{done.stderr[-4000:]}")
                built.replace(cubin)
                (Path(tmp) / "report").write_text(done.stdout + done.stderr)
                (Path(tmp) / "report").replace(report)  # last: its presence means the build is whole
    mangled = parse_ptxas(report.read_text())
    readable = demangle(list(mangled))
    return Build(arch, cubin, {readable[m]: m for m in mangled}, {readable[m]: r for m, r in mangled.items()})


def nvcc_builds(nvcc: str, work: list[Unit], arches: tuple[str, ...], cache: Path,
                jobs: int = 2) -> list[Build]:
    """Every unit built for each of its architectures that is in `arches`, `jobs` nvcc runs at a time."""
    pairs = [(arch, unit) for unit in work for arch in unit.arches if arch in arches]
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda pair: nvcc_build(nvcc, pair[0], pair[1].text, cache), pairs))


def by_arch_and_name(builds: list[Build]) -> dict[tuple[str, str], Resources]:
    """{(arch, instantiation name): Resources} of several builds."""
    return {(build.arch, name): used for build in builds for name, used in build.resources.items()}


def problems(kernels: list[Instantiation], resources: dict[tuple[str, str], Resources],
             arches: tuple[str, ...] = ARCHES) -> list[str]:
    """What is wrong with each instantiation on each of its architectures in `arches`, one line each, naming
    it: no report, spills or a stack frame (local memory), more shared memory than a block may have."""
    found = []
    for arch in arches:
        for kernel in (kernel for kernel in kernels if arch in architectures(kernel.arch_flags)):
            used = resources.get((arch, kernel.name))
            if used is None:
                found.append(f"{arch} {kernel.name}: ptxas reported nothing")
                continue
            if used.stack_frame or used.spill_stores or used.spill_loads:
                found.append(f"{arch} {kernel.name}: {used.stack_frame} bytes stack frame, {used.spill_stores} "
                             f"bytes spill stores, {used.spill_loads} bytes spill loads")
            shared = kernel.shared_mem + used.static_shared
            if shared > MAX_SHARED_PER_BLOCK[arch]:
                found.append(f"{arch} {kernel.name}: {shared} bytes of shared memory, over the "
                             f"{MAX_SHARED_PER_BLOCK[arch]} a block may have")
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


@dataclass(frozen=True)
class NvrtcBuild:
    arch: str  # the architecture ptxas compiled for
    lowered: dict[str, str]  # instantiation name -> lowered (mangled) name
    resources: dict[str, Resources]  # by instantiation name, from ptxas's report in NVRTC's log


def nvrtc_compile(library: Path, unit: Unit, arch: str = "sm_90") -> NvrtcBuild:
    """Compiles the unit's source to a cubin with NVRTC, with the options the cuda runtime gives CuPy
    (-std=c++17, the include paths, the unit's arch flags) and -arch=`arch` for the device, which CuPy 14
    appends after them (NVRTC builds sm_90a in either order: test_wgmma_machine_code), the instantiations
    as name expressions, ptxas reporting. Raises RuntimeError with NVRTC's log when compilation fails."""
    nvrtc = ctypes.CDLL(str(library))
    program = ctypes.c_void_p()
    text = (kernels_dir() / unit.source).read_bytes()
    _nvrtc_check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(program), text, unit.source.encode(), 0, None, None))
    try:
        for name in unit.names:
            _nvrtc_check(nvrtc, nvrtc.nvrtcAddNameExpression(program, name.encode()))
        options = [f"-arch={arch}", *unit.arch_flags, "-std=c++17", f"-I{kernels_dir()}",
                   *(f"-I{d}" for d in cuda_include_dirs()), "-Xptxas", "-v"]
        encoded = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = nvrtc.nvrtcCompileProgram(program, len(options), encoded)
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        log_text = log.value.decode(errors="replace")
        if status != 0:
            raise RuntimeError(f"NVRTC failed to compile {unit.source} for {arch} with {options}:\n"
                               f"{log_text[-4000:]}")
        lowered = {}
        for name in unit.names:
            pointer = ctypes.c_char_p()
            _nvrtc_check(nvrtc, nvrtc.nvrtcGetLoweredName(program, name.encode(), ctypes.byref(pointer)))
            lowered[name] = pointer.value.decode()
        reported = parse_ptxas(log_text)
        built_for = {m.group(2) for m in _ENTRY.finditer(log_text)}
        if len(built_for) != 1:
            raise RuntimeError(f"NVRTC's ptxas report names {sorted(built_for)} for {unit.source}, not one "
                               f"architecture:\n{log_text[-4000:]}")
        return NvrtcBuild(built_for.pop(), lowered,
                          {name: reported[m] for name, m in lowered.items() if m in reported})
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def _nvrtc_check(nvrtc: ctypes.CDLL, status: int) -> None:
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise RuntimeError(f"NVRTC error {status}: {nvrtc.nvrtcGetErrorString(status).decode()}")


# ----------------------------------------------------------------------------------------------------
# kernels/REGISTERS.md and linear/backends/registers.py
# ----------------------------------------------------------------------------------------------------


def registers_table(kernels: list[Instantiation], resources: dict[tuple[str, str], Resources]) -> str:
    lines = [
        "# Registers and shared memory per kernel",
        "",
        f"Written by `{COMMAND}` from `nvcc -Xptxas -v` "
        f"({', '.join(ARCHES)}); every kernel has 0 bytes of spills and stack frame (tests/test_compile.py).",
        f"A kernel is built for {' and '.join(PORTABLE_ARCHES)}, or for the one architecture its family's arch "
        "flags name (-: not built for it).",
        "Shared memory is the dynamic shared memory the plan launches the kernel with.",
        "",
        "| kernel | " + " | ".join(f"registers {arch}" for arch in ARCHES) + " | shared bytes |",
        "|---|" + "---:|" * (len(ARCHES) + 1),
    ]
    for kernel in kernels:
        registers = " | ".join(str(resources[arch, kernel.name].registers)
                               if arch in architectures(kernel.arch_flags) else "-" for arch in ARCHES)
        lines.append(f"| `{kernel.name}` | {registers} | {kernel.shared_mem} |")
    return "\n".join(lines) + "\n"


def plan_registers(resources: dict[tuple[str, str], Resources]) -> dict[tuple[str, str, bool], int]:
    """Registers per (config, dtype, 16-byte loads) as ptxas reports them on the architecture an H100 runs
    of each (the last of architectures()): the most over the products and C types."""
    table = {}
    for configs in tiles.FAMILIES:
        for config, dtype, vector, kernel in tiles.gemm_instantiations(configs):
            key, arch = (config.name, dtype, vector), architectures(kernel.arch_flags)[-1]
            table[key] = max(table.get(key, 0), resources[arch, kernel.name].registers)
    return table


def registers_module(resources: dict[tuple[str, str], Resources]) -> str:
    """The text of linear/backends/registers.py."""
    entries = "".join(f"    {key!r}: {value},\n" for key, value in plan_registers(resources).items())
    return (f"# Generated from nvcc's ptxas report by `{COMMAND}` (from the repository\n"
            "# root); do not edit: tests/test_compile.py fails when it differs from the compiler's.\n"
            '"""Registers per thread of each kernel configuration as ptxas allocates them for an H100: (config\n'
            "name, dtype, 16-byte loads) -> registers, the most over the products (NN, NT, TN, TT) and C types, on\n"
            "sm_90 (or on the architecture the family's arch flags name: sm_90a for kernels/wgmma_gemm.cu). The\n"
            'cost model\'s occupancy reads them."""\n\n'
            f"REGISTERS: dict[tuple[str, str, bool], int] = {{\n{entries}}}\n")


def _write(path: Path, text: str) -> None:
    """Replaces `path` whole (never half-written)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def main() -> None:
    import argparse
    import shutil
    parser = argparse.ArgumentParser(description="Write the registers and shared memory of every kernel "
                                     f"({REGISTERS_MD.relative_to(REPOSITORY)}, "
                                     f"{REGISTERS_MODULE.relative_to(REPOSITORY)}).")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="nvcc runs at a time")
    jobs = parser.parse_args().jobs
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("nvcc is not on PATH")
    kernels = instantiations()
    with tempfile.TemporaryDirectory() as cache:
        resources = by_arch_and_name(nvcc_builds(nvcc, units(kernels), ARCHES, Path(cache), jobs))
    wrong = problems(kernels, resources)
    if wrong:
        sys.exit("\n".join(wrong))
    _write(REGISTERS_MD, registers_table(kernels, resources))
    _write(REGISTERS_MODULE, registers_module(resources))
    print(f"wrote {REGISTERS_MD} and {REGISTERS_MODULE} ({len(kernels)} kernels)")


if __name__ == "__main__":
    main()
