"""The emulate runtime: the CUDA kernels of kernels/, compiled with g++ and run on the CPU.

runtime.function("gemm.cu", "gemm_kernel<float, false, true, 128>") compiles a small wrapper

    #include "cuda_emu.h"          the shim (kernels/emu): CUDA's keywords and built-ins for g++
    #include "gemm.cu"             the kernel source, unchanged but for `extern __shared__`
    #include "emu_entry.h"         emu_entry(launch): unpacks the arguments by the kernel's own
                                   parameter types and runs every thread as a fiber

into a shared library cached on disk, and returns a kernel launched like CuPy's RawKernel:
kernel(grid, block, args, shared_mem=0). The runtime (kernels/emu/emu_runtime.cpp) runs the
blocks one after another and a block's threads as fibers, in the order of the schedule; deadlocks,
undefined uses of barriers and warp collectives, faults and timeouts become EmulationError.

Out-of-bounds global memory accesses: every array argument is copied for the launch into its own
mapping, its end as close to a guard page as alignment allows and its start after a guard page,
with the slack around it filled with 0xFF. A read or write across a guard page faults and is
reported; a write into the slack is found by checking it after the launch; a read of the slack
returns NaN (0xFF bytes). The copies are written back after a clean launch.

Knobs (constructor arguments override the environment):
    LINEAR_EMU_SCHEDULE   forward | reverse | shuffle   order of a block's threads between waits
    LINEAR_EMU_SEED       seed of the shuffle schedule (int)
    LINEAR_EMU_STRICT     0 allows a barrier that completes only because some threads exited
    LINEAR_EMU_TIMEOUT    seconds before a launch is stopped as hung (0: never); default 300
    LINEAR_EMU_CHECK_BOUNDS  0 passes the arrays themselves (faster; out-of-bounds accesses unseen)
    LINEAR_EMU_CACHE      where the compiled libraries are cached
    LINEAR_EMU_UCONTEXT   1 uses the portable ucontext context switch (the default off x86-64)
    CXX                   the C++ compiler (default g++)
"""
from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import BackendUnavailable
from .sources import kernels_dir


class EmulationError(RuntimeError):
    """A kernel did something CUDA leaves undefined, faulted or hung, or failed to compile."""

    def __init__(self, message: str, *, kernel: str | None = None,
                 block: tuple[int, int, int] | None = None, thread: tuple[int, int, int] | None = None):
        where = "".join([f"{kernel}: " if kernel else "", f"block {block}" if block else "",
                         f", thread {thread}" if thread else "", ": " if block else ""])
        super().__init__(where + message)
        self.kernel, self.block, self.thread = kernel, block, thread


SCHEDULES = {"forward": 0, "reverse": 1, "shuffle": 2}
COMPUTE_CAPABILITY = 90  # the emulator models an H100/H200 (sm_90): tensor-core kernels run
MAX_SHARED_BYTES = 227 * 1024         # static + dynamic shared memory of a block (sm_90)
MAX_STATIC_SHARED_BYTES = 48 * 1024   # what ptxas accepts for static __shared__
MAX_THREADS_PER_BLOCK = 1024
BLOCK_LIMITS = (1024, 1024, 64)
GRID_LIMITS = (2**31 - 1, 65535, 65535)
_SOURCE_SUFFIXES = (".cu", ".cuh", ".h")
# -ffp-contract=fast fuses a*b+c as nvcc does; -fstack-clash-protection makes a thread whose locals
# outgrow its stack touch the guard page instead of the next thread's stack.
_BASE_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-fno-math-errno",
               "-ffp-contract=fast", "-fstack-clash-protection")


class _Uint3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]

    def tuple(self) -> tuple[int, int, int]:
        return (self.x, self.y, self.z)


class _Launch(ctypes.Structure):
    """Mirror of emu_launch in kernels/emu/emu_runtime.h."""
    _fields_ = [
        ("grid", _Uint3), ("block", _Uint3), ("dynamic_shared_bytes", ctypes.c_uint64),
        ("schedule", ctypes.c_int32), ("strict", ctypes.c_int32), ("seed", ctypes.c_uint64),
        ("timeout_s", ctypes.c_double), ("args", ctypes.POINTER(ctypes.c_void_p)),
        ("n_args", ctypes.c_int32), ("n_static_shared", ctypes.c_int32),
        ("static_shared", ctypes.POINTER(ctypes.c_void_p)),
        ("static_shared_bytes", ctypes.POINTER(ctypes.c_uint64)),
        ("error_block", _Uint3), ("error_thread", _Uint3), ("fault_signal", ctypes.c_int32),
        ("fault_is_write", ctypes.c_int32), ("fault_address", ctypes.c_uint64),
        ("message", ctypes.c_char * 1024),
    ]


_EMU_OK, _EMU_ERROR, _EMU_FAULT, _EMU_TIMEOUT = 0, 1, 2, 3
_NO_THREAD = (0xFFFFFFFF,) * 3
_launch_lock = threading.Lock()  # the runtime's state is global: one launch at a time


# ---- Building ------------------------------------------------------------------------------------

def emu_dir() -> Path:
    return kernels_dir() / "emu"


def _default_cache_dir() -> Path:
    if os.environ.get("LINEAR_EMU_CACHE"):
        return Path(os.environ["LINEAR_EMU_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "linear" / "emulate"


def _cpu_flags() -> tuple[str, ...]:
    """-mfma -mavx2 where this CPU has them: without -mfma, fmaf is a slow library call."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    have = set(re.findall(r"\b(fma|avx2)\b", cpuinfo))
    return tuple(f"-m{flag}" for flag in ("fma", "avx2") if flag in have)


# `extern __shared__ T name[];` names the launch's dynamic buffer; g++ has no such storage, so the
# declaration becomes a reference to the runtime's pointer to it, read at each use, which is right at
# file scope too (on the same line, so compiler messages keep their lines).
_EXTERN_SHARED = re.compile(
    r"\bextern\s+__shared__\s+(?P<type>[^;\[\]]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*;")
_ALIGN = re.compile(r"__align__\s*\(\s*\w+\s*\)")


def rewrite_source(text: str, path: Path) -> str:
    """The kernel source as g++ compiles it: `extern __shared__` arrays point at the dynamic buffer."""
    def pointer(m: re.Match) -> str:
        element = _ALIGN.sub("", m["type"]).strip()
        return f"{element}*& {m['name']} = reinterpret_cast<{element}*&>(emu_dynamic_shared);"
    text = re.sub(r"\bstatic\s+__shared__\b", "__shared__", text)
    return f'#line 1 "{path}"\n' + _EXTERN_SHARED.sub(pointer, text)


class _Compiler:
    """g++ with the flags, the cache directory and the runtime library shared by every kernel."""

    def __init__(self, cxx: str, cache_dir: Path):
        self.cxx = cxx
        self.cache_dir = cache_dir
        self.flags = _BASE_FLAGS + _cpu_flags() + (
            ("-DEMU_UCONTEXT",) if os.environ.get("LINEAR_EMU_UCONTEXT") == "1" else ())
        self._version: str | None = None
        self._runtime: Path | None = None

    @property
    def version(self) -> str:
        if self._version is None:
            result = subprocess.run([self.cxx, "--version"], capture_output=True, text=True)
            self._version = result.stdout
        return self._version

    def shim_digest(self) -> str:
        """A hash of every shim file, the flags and the compiler: part of every cache key."""
        h = hashlib.sha256()
        for path in sorted(emu_dir().iterdir()):
            if path.suffix in (".h", ".cpp"):
                h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        h.update("\0".join(self.flags).encode() + b"\0" + self.version.encode())
        return h.hexdigest()

    def runtime_library(self) -> Path:
        if self._runtime is None:
            key = self.shim_digest()[:24]
            name = f"emu-runtime-{key}.so"
            self._runtime = self._build(name, [str(emu_dir() / "emu_runtime.cpp"), f"-Wl,-soname,{name}",
                                               "-lpthread"], what="the emulator runtime")
        return self._runtime

    def kernel_library(self, kernel_dir: Path, source: str, name: str) -> Path:
        runtime = self.runtime_library()
        # The key hashes the sources as g++ sees them, so a change to rewrite_source rebuilds too.
        rewritten = {path.name: rewrite_source(path.read_text(), path) for path in sorted(kernel_dir.iterdir())
                     if path.suffix in _SOURCE_SUFFIXES and path.is_file()}
        h = hashlib.sha256(runtime.name.encode() + b"\0" + source.encode() + b"\0" + name.encode())
        for file_name, text in rewritten.items():
            h.update(file_name.encode() + b"\0" + text.encode() + b"\0")
        stem = re.sub(r"\W+", "_", f"{Path(source).stem}_{name}")[:60].strip("_")
        out = f"{stem}-{h.hexdigest()[:24]}.so"
        if (self.cache_dir / out).exists():
            return self.cache_dir / out
        with tempfile.TemporaryDirectory(prefix="src-") as tmp:
            sources = Path(tmp)
            for file_name, text in rewritten.items():
                (sources / file_name).write_text(text)
            wrapper = sources / "emu_wrapper.cpp"
            wrapper.write_text(f'#include "cuda_emu.h"\n#include "{source}"\n'
                               f"static constexpr auto emu_kernel = &{name};\n"
                               f'#define EMU_KERNEL emu_kernel\n#include "emu_entry.h"\n')
            return self._build(out, ["-I", str(emu_dir()), "-I", str(sources), "-fvisibility=hidden",
                                     str(wrapper), str(runtime), "-Wl,-rpath,$ORIGIN"],
                               what=f"{name} from {source}")

    def _build(self, out_name: str, arguments: list[str], what: str) -> Path:
        """Compiles into the cache atomically: another process may be building the same library."""
        out = self.cache_dir / out_name
        if out.exists():
            return out
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".partial-", suffix=".so", dir=self.cache_dir)
        os.close(fd)
        try:
            result = subprocess.run([self.cxx, *self.flags, *arguments, "-o", partial],
                                    capture_output=True, text=True)
            if result.returncode != 0:
                raise EmulationError(f"{self.cxx} failed to compile {what}:\n{result.stderr.strip()}")
            os.replace(partial, out)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
        return out


# ---- Loaded kernels ------------------------------------------------------------------------------

def _elf_symbols(path: Path) -> tuple[list[tuple[str, int, int]], dict[str, int]]:
    """From a 64-bit little-endian ELF library: its zero-initialized function-local statics
    (name, address, size) -- which in a kernel library are exactly the static __shared__
    variables -- and the addresses of every other symbol by name."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return [], {}
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # Section header: name, type, flags, addr, offset, size, link, info, addralign, entsize.
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    sht_symtab, sht_nobits, stt_object = 2, 8, 1
    statics, addresses = [], {}
    for section in sections:
        if section[1] != sht_symtab:
            continue
        strtab = sections[section[6]]
        for offset in range(section[4], section[4] + section[5], 24):
            st_name, st_info, _, st_shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", data, offset)
            end = data.index(b"\0", strtab[4] + st_name)
            name = data[strtab[4] + st_name:end].decode()
            if (name.startswith("_ZZ") and st_info & 0xF == stt_object and st_shndx < shnum
                    and sections[st_shndx][1] == sht_nobits):
                statics.append((name, st_value, st_size))
            elif name:
                addresses[name] = st_value
    return statics, addresses


def _byte_span(a: np.ndarray) -> tuple[int, int]:
    """The lowest address and one past the highest byte the array's elements occupy."""
    low = high = a.ctypes.data
    if a.size == 0:
        return low, high
    for n, stride in zip(a.shape, a.strides):
        if stride < 0:
            low += (n - 1) * stride
        else:
            high += (n - 1) * stride
    return low, high + a.itemsize


class _GuardedRegion:
    """A copy of [low, high) of host memory, between guard pages, with 0xFF slack around it."""

    GUARD = 16 << 20    # inaccessible bytes on each side: address space only
    ALIGN = 16          # the copy keeps the original address modulo this (float4, double2 loads)
    _libc = None

    def __init__(self, low: int, high: int, writable: bool, arguments: list[int]):
        libc = self._c()
        page = mmap.PAGESIZE
        self.low, self.size, self.writable, self.arguments = low, high - low, writable, arguments
        self.body = (self.size + self.ALIGN + page - 1) // page * page
        self.mapping_bytes = self.GUARD + self.body + self.GUARD
        base = libc.mmap(None, self.mapping_bytes, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise MemoryError(f"cannot map {self.mapping_bytes} bytes for a guarded copy")
        self.base = base
        self.body_start = base + self.GUARD
        if libc.mprotect(ctypes.c_void_p(self.body_start), self.body, mmap.PROT_READ | mmap.PROT_WRITE):
            libc.munmap(ctypes.c_void_p(base), self.mapping_bytes)
            raise MemoryError(f"cannot map {self.body} bytes for a guarded copy")
        end = self.body_start + self.body - self.size
        self.start = end - (end - low) % self.ALIGN   # as late as alignment allows
        self.view = np.ctypeslib.as_array((ctypes.c_ubyte * self.body).from_address(self.body_start))
        self.view.fill(0xFF)
        self.front = self.start - self.body_start
        self.view[self.front:self.front + self.size] = self._original()

    @classmethod
    def _c(cls):
        if cls._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.mmap.restype = ctypes.c_void_p
            libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int, ctypes.c_long]
            libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            cls._libc = libc
        return cls._libc

    def _original(self) -> np.ndarray:
        return np.ctypeslib.as_array((ctypes.c_ubyte * self.size).from_address(self.low)) \
            if self.size else np.empty(0, np.uint8)

    def address_of(self, original: int) -> int:
        return self.start + (original - self.low)

    def offset(self, address: int) -> int | None:
        """The byte offset of an address in the copy's mapping from the copy's start, or None."""
        return address - self.start if self.base <= address < self.base + self.mapping_bytes else None

    def check(self) -> str | None:
        """What the kernel wrote into the slack around the copy, or None."""
        front, back = self.view[:self.front], self.view[self.front + self.size:]
        if np.any(front != 0xFF):
            return f"out-of-bounds write at byte {int(np.flatnonzero(front != 0xFF)[0]) - self.front} of"
        if np.any(back != 0xFF):
            return f"out-of-bounds write at byte {self.size + int(np.flatnonzero(back != 0xFF)[0])} of"
        return None

    def commit(self) -> str | None:
        """Writes the copy back; for read-only memory, says so if the kernel changed it."""
        copy, original = self.view[self.front:self.front + self.size], self._original()
        if self.writable:
            original[...] = copy
        elif not np.array_equal(original, copy):
            return "a write into the read-only"
        return None

    def release(self) -> None:
        del self.view
        self._c().munmap(ctypes.c_void_p(self.base), self.mapping_bytes)


class _Arguments:
    """The launch's argument values in C form; array arguments as guarded copies when guard is set."""

    def __init__(self, kernel: str, signature: list[str], args: Sequence[Any], guard: bool):
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{kernel}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(signature):
            raise TypeError(f"{kernel} takes {len(signature)} arguments ({', '.join(signature)}), "
                            f"got {len(args)}")
        self.values: list[Any] = []   # keeps the C values alive
        self.regions: list[_GuardedRegion] = []
        self.arrays: dict[int, np.ndarray] = {}
        for i, (arg, parameter) in enumerate(zip(args, signature)):
            if parameter.startswith("*"):
                if not isinstance(arg, np.ndarray):
                    raise TypeError(f"{kernel}: argument {i} must be a numpy array for the pointer "
                                    f"parameter ({parameter[1:]} *), got {type(arg).__name__}")
                if parameter != "*?" and arg.dtype.name != parameter[1:]:
                    raise TypeError(f"{kernel}: argument {i} has dtype {arg.dtype.name} and shape "
                                    f"{arg.shape}; the parameter is a {parameter[1:]} pointer")
                self.arrays[i] = arg
                self.values.append(ctypes.c_void_p(arg.ctypes.data))
            else:
                if not isinstance(arg, np.generic) or arg.dtype.name != parameter:
                    got = f"np.{arg.dtype.name}" if isinstance(arg, np.generic) else type(arg).__name__
                    raise TypeError(f"{kernel}: argument {i} must be a numpy scalar of type "
                                    f"{parameter}, got {got}")
                self.values.append(np.array(arg))
        if guard:
            self._guard()
        pointers = [v.ctypes.data if isinstance(v, np.ndarray) else ctypes.addressof(v) for v in self.values]
        self.c_args = (ctypes.c_void_p * max(1, len(pointers)))(*pointers)

    def _guard(self) -> None:
        """One guarded copy per group of overlapping arrays, so aliasing arguments stay aliased."""
        spans = sorted((*_byte_span(a), i) for i, a in self.arrays.items())
        groups: list[list] = []
        for low, high, i in spans:
            if groups and low < groups[-1][1]:
                groups[-1][1] = max(groups[-1][1], high)
                groups[-1][2].append(i)
            else:
                groups.append([low, high, [i]])
        for low, high, members in groups:
            writable = all(self.arrays[i].flags.writeable for i in members)
            region = _GuardedRegion(low, high, writable, members)
            self.regions.append(region)
            for i in members:
                self.values[i] = ctypes.c_void_p(region.address_of(self.arrays[i].ctypes.data))

    def describe(self, region: _GuardedRegion) -> str:
        if len(region.arguments) > 1:
            return (f"the {region.size} bytes shared by arguments "
                    f"{', '.join(map(str, region.arguments))}")
        i = region.arguments[0]
        a = self.arrays[i]
        return f"argument {i} ({a.dtype.name} array of shape {a.shape}, {region.size} bytes)"

    def describe_fault(self, address: int) -> str | None:
        for region in self.regions:
            offset = region.offset(address)
            if offset is not None:
                return f"at byte {offset} of {self.describe(region)}"
        return None

    def finish(self) -> str | None:
        """After a clean launch: checks every copy's slack, then writes the copies back."""
        for step in (_GuardedRegion.check, _GuardedRegion.commit):
            for region in self.regions:
                problem = step(region)
                if problem:
                    return f"{problem} {self.describe(region)}"
        return None

    def release(self) -> None:
        for region in self.regions:
            region.release()
        self.regions = []


class EmulatedKernel:
    """One template instantiation, compiled and loaded: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, runtime: "EmulatorRuntime", library: Path, name: str):
        self.name = name
        self._runtime = runtime
        self._lib = ctypes.CDLL(str(library))
        self._entry = self._lib.emu_entry
        self._entry.argtypes = [ctypes.POINTER(_Launch)]
        self._entry.restype = ctypes.c_int
        text = ctypes.create_string_buffer(4096)
        self._lib.emu_signature(text, ctypes.c_size_t(len(text)))
        self.signature = text.value.decode().split(",") if text.value else []
        statics, addresses = _elf_symbols(library)
        if "emu_entry" not in addresses:  # no ELF symbol table: static __shared__ stays unpoisoned
            statics, addresses = [], {"emu_entry": 0}
        load_base = ctypes.cast(self._entry, ctypes.c_void_p).value - addresses["emu_entry"]
        self.static_shared_bytes = sum(size for _, _, size in statics)
        if self.static_shared_bytes > MAX_STATIC_SHARED_BYTES:
            raise EmulationError(f"{self.static_shared_bytes} bytes of static __shared__ memory exceed "
                                 f"CUDA's {MAX_STATIC_SHARED_BYTES}", kernel=name)
        self._statics = (ctypes.c_void_p * max(1, len(statics)))(*[load_base + a for _, a, _ in statics])
        self._static_sizes = (ctypes.c_uint64 * max(1, len(statics)))(*[s for _, _, s in statics])
        self._n_statics = len(statics)

    def __call__(self, grid, block, args: Sequence[Any], shared_mem: int = 0) -> None:
        grid3, block3 = _dim3("grid", grid, GRID_LIMITS), _dim3("block", block, BLOCK_LIMITS)
        if np.prod(block3) > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"{self.name}: block {block3} has more than {MAX_THREADS_PER_BLOCK} threads")
        shared_mem = int(shared_mem)
        if not 0 <= shared_mem <= MAX_SHARED_BYTES - self.static_shared_bytes:
            raise ValueError(f"{self.name}: shared_mem={shared_mem} bytes; with "
                             f"{self.static_shared_bytes} bytes of static shared memory a block has at "
                             f"most {MAX_SHARED_BYTES - self.static_shared_bytes}")
        rt = self._runtime
        arguments = _Arguments(self.name, self.signature, args, guard=rt.check_bounds)
        launch = _Launch(grid=_Uint3(*grid3), block=_Uint3(*block3), dynamic_shared_bytes=shared_mem,
                         schedule=SCHEDULES[rt.schedule], strict=int(rt.strict), seed=rt.seed,
                         timeout_s=rt.timeout_s, args=arguments.c_args, n_args=len(self.signature),
                         n_static_shared=self._n_statics, static_shared=self._statics,
                         static_shared_bytes=self._static_sizes)
        try:
            with _launch_lock:
                status = self._entry(ctypes.byref(launch))
            if status != _EMU_OK:
                raise self._error(launch, status, arguments)
            problem = arguments.finish()
            if problem:
                raise EmulationError(problem, kernel=self.name)
        finally:
            arguments.release()

    def _error(self, launch: _Launch, status: int, arguments: _Arguments) -> EmulationError:
        message = launch.message.decode(errors="replace")
        if status == _EMU_TIMEOUT:
            message = (f"still running after {self._runtime.timeout_s:g} s (a spin-wait on another "
                       f"block or thread never ends in the emulator); LINEAR_EMU_TIMEOUT sets the limit")
        elif status == _EMU_FAULT and not message:
            access = {1: "write", 0: "read"}.get(launch.fault_is_write, "access")
            where = arguments.describe_fault(launch.fault_address)
            message = (f"out-of-bounds {access} {where}" if where else
                       f"signal {launch.fault_signal} ({_signal_name(launch.fault_signal)}) at address "
                       f"0x{launch.fault_address:x}")
        thread = launch.error_thread.tuple()
        return EmulationError(message, kernel=self.name, block=launch.error_block.tuple(),
                              thread=None if thread == _NO_THREAD else thread)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _dim3(what: str, value, limits: tuple[int, int, int]) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or not all(isinstance(d, (int, np.integer)) and d >= 1 for d in dims):
        raise ValueError(f"{what} must be a positive int or a tuple of 1 to 3 positive ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(d > limit for d, limit in zip(dims, limits)):
        raise ValueError(f"{what} {dims} exceeds CUDA's limits {limits}")
    return dims


# ---- The runtime ---------------------------------------------------------------------------------

def _setting(argument: Any, name: str, variable: str, default: Any, parse) -> Any:
    """The constructor argument `name`, else $variable, else the default; a bad value says which it was."""
    if argument is not None:
        source, value = name, argument
    elif os.environ.get(variable):
        source, value = f"${variable}", os.environ[variable]
    else:
        return default
    try:
        return parse(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source}: {error}") from None


def _schedule(value: Any) -> str:
    if value not in SCHEDULES:
        raise ValueError(f"must be one of {sorted(SCHEDULES)}, got {value!r}")
    return value


def _seed(value: Any) -> int:
    if int(value) != float(value) or not 0 <= int(value) < 2**64:
        raise ValueError(f"must be an integer in [0, 2**64), got {value!r}")
    return int(value)


def _switch(value: Any) -> bool:
    return value != "0" if isinstance(value, str) else bool(value)


def _seconds(value: Any) -> float:
    if not float(value) >= 0:
        raise ValueError(f"must be a number of seconds >= 0 (0: never), got {value!r}")
    return float(value)


class EmulatorRuntime:
    """Compiles kernels/*.cu with g++ against kernels/emu and runs them on the CPU (see the module)."""

    name = "emulate"
    xp = np

    def __init__(self, *, kernel_dir: str | os.PathLike | None = None, schedule: str | None = None,
                 seed: int | None = None, strict: bool | None = None, check_bounds: bool | None = None,
                 timeout_s: float | None = None, cache_dir: str | os.PathLike | None = None):
        cxx = shutil.which(os.environ.get("CXX") or "g++")
        if cxx is None:
            raise BackendUnavailable("the emulate backend needs a C++ compiler: g++ (or $CXX) is not on PATH")
        self.kernel_dir = Path(kernel_dir) if kernel_dir is not None else kernels_dir()
        self.schedule = _setting(schedule, "schedule", "LINEAR_EMU_SCHEDULE", "forward", _schedule)
        self.seed = _setting(seed, "seed", "LINEAR_EMU_SEED", 0, _seed)
        self.strict = _setting(strict, "strict", "LINEAR_EMU_STRICT", True, _switch)
        self.check_bounds = _setting(check_bounds, "check_bounds", "LINEAR_EMU_CHECK_BOUNDS", True, _switch)
        self.timeout_s = _setting(timeout_s, "timeout_s", "LINEAR_EMU_TIMEOUT", 300.0, _seconds)
        self._compiler = _Compiler(cxx, Path(cache_dir) if cache_dir is not None else _default_cache_dir())
        self._kernels: dict[tuple[str, str], EmulatedKernel] = {}  # (source, name) -> kernel
        self._lock = threading.Lock()

    def compute_capability(self) -> int:
        return COMPUTE_CAPABILITY

    def function(self, source: str, name: str) -> EmulatedKernel:
        """The kernel `name` (one template instantiation) of kernels/`source`, compiled (or found in the
        disk cache) on its first use by this runtime."""
        with self._lock:
            kernel = self._kernels.get((source, name))
            if kernel is None:
                path = self.kernel_dir / source
                if not path.is_file():
                    raise FileNotFoundError(f"no kernel source {source!r} in {self.kernel_dir}")
                library = self._compiler.kernel_library(self.kernel_dir, source, name)
                kernel = self._kernels[(source, name)] = EmulatedKernel(self, library, name)
            return kernel
