"""Building kernel libraries: g++ on a kernel source rewritten for the shim, cached on disk.

A kernel library is a small wrapper

    #include "cuda_emu.h"          the shim (kernels/emu): CUDA's keywords and built-ins for g++
    #include "gemm.cu"             the kernel source, unchanged but for `extern __shared__`
    #include "emu_entry.h"         emu_entry(launch): unpacks the arguments by the kernel's own
                                   parameter types and runs every thread as a fiber

compiled into a shared library named by a hash of everything that goes into it, and linked against
the runtime library (kernels/emu/emu_runtime.cpp) that every kernel shares. Where the kernel's files
contain inline PTX, the wrapper is first preprocessed (g++ -E) and each asm statement of the kernel's
files translated into C++ (ptx.py); g++ then compiles the translated unit.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from ..sources import kernels_dir
from . import ptx, ptx_hopper
from .errors import EmulationError

_SOURCE_SUFFIXES = (".cu", ".cuh", ".h")
INSTRUCTIONS = tuple(ptx.INSTRUCTIONS) + tuple(ptx_hopper.INSTRUCTIONS)  # the PTX the emulator models
# -ffp-contract=fast fuses a*b+c as nvcc does; -fstack-clash-protection makes a thread whose locals
# outgrow its stack touch the guard page instead of the next thread's stack.
_BASE_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-fno-math-errno",
               "-ffp-contract=fast", "-fstack-clash-protection")


def emu_dir() -> Path:
    return kernels_dir() / "emu"


def default_cache_dir() -> Path:
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
    r"\bextern\s+__shared__\s+(?P<type>[^;\[\]]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]"
    r"(?P<dims>(?:\s*\[[^\[\];]*\])*)\s*;")
_ALIGN = re.compile(r"__align__\s*\(\s*\w+\s*\)")
_SHARED = re.compile(r"\b__shared__\b[^;{}]*;")
REDZONE = "emu_redzone"          # the name of the padding after each static __shared__ variable
REDZONE_BYTES = 64
# Kernel code only: registers and local arrays start as 0xFE bytes (-1.7e38 as a float), so reading
# one before writing it (an accumulator never zeroed) gives a wrong result, not a lucky one. Fibers share
# one OS thread, so a static's first initialization (a __shared__ __half array's constructor) needs no
# lock, whose atomics a sanitize build would send to libtsan, which it does not link.
KERNEL_FLAGS = ("-ftrivial-auto-var-init=pattern", "-fno-threadsafe-statics")
# Sanitize builds: g++'s ThreadSanitizer instrumentation, whose calls emu_sanitize.cpp answers; DWARF 4,
# whose file numbers binutils 2.40's addr2line reads right (with DWARF 5 it names the wrong file)
# (the kernel library is linked without libtsan; -z defs names a hook it lacks at build time).
# memcpy, memset and memmove stay calls (g++ would expand some inline, uninstrumented, and libc's are
# not instrumented either), which the link sends to emu_sanitize.cpp's checked __wrap_ versions.
_MEMORY_FUNCTIONS = ("memcpy", "memset", "memmove")
SANITIZE_FLAGS = ("-DEMU_SANITIZE", "-gdwarf-4", "-fsanitize=thread", "--param=tsan-instrument-func-entry-exit=0",
                  *(f"-fno-builtin-{f}" for f in _MEMORY_FUNCTIONS))
SANITIZE_LINK_FLAGS = ("-Wl,-z,defs", *(f"-Wl,--wrap={f}" for f in _MEMORY_FUNCTIONS))


_ASM = re.compile(r"\b(?:asm|__asm__|__asm)\b")
_ALIGNMENT = re.compile(r"(?:__align__|alignas|aligned)\s*\(\s*(\d+|0[xX][0-9a-fA-F]+)\s*\)")


_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _included(source: str, files: dict[str, str]) -> tuple[set[str], set[str]]:
    """(`source` and the files of `files` it includes, directly or not, by #include "..."; the included
    names that are not in `files`)."""
    found, unresolved, pending = set(), set(), [source]
    while pending:
        name = pending.pop()
        if name not in files:
            unresolved.add(name)
        elif name not in found:
            found.add(name)
            pending += _INCLUDE.findall(files[name])
    return found, unresolved


def dynamic_shared_alignment(texts) -> int:
    """The largest alignment an `extern __shared__` declaration of the sources asks for (at least 16,
    what the GPU gives every launch), written as a number in __align__(n), alignas(n) or aligned(n)."""
    alignment = 16
    for text in texts:
        for m in _EXTERN_SHARED.finditer(text):
            for value in _ALIGNMENT.findall(m["type"]):
                alignment = max(alignment, int(value, 0))
    return alignment


def rewrite_source(text: str, path: Path, redzones: bool = False) -> str:
    """The kernel source as g++ compiles it: `extern __shared__` arrays point at the dynamic buffer;
    with redzones, each static __shared__ declaration is followed by an unused padding variable, so
    that an overrun of one lands in padding (g++ lays a function's statics out next to each other)."""
    def pointer(m: re.Match) -> str:  # T name[][N] (rows of N) becomes a pointer to arrays of N
        element, dims = _ALIGN.sub("", m["type"]).strip(), re.sub(r"\s+", "", m["dims"])
        if dims:
            return f"{element} (*&{m['name']}){dims} = reinterpret_cast<{element} (*&){dims}>(emu_dynamic_shared);"
        return f"{element}*& {m['name']} = reinterpret_cast<{element}*&>(emu_dynamic_shared);"
    text = re.sub(r"\bstatic\s+__shared__\b", "__shared__", text)
    text = _EXTERN_SHARED.sub(pointer, text)
    if redzones:
        count = iter(range(1 << 30))
        text = _SHARED.sub(lambda m: f"{m[0]} __attribute__((used)) static char {REDZONE}{next(count)}"
                                     f"[{REDZONE_BYTES}];", text)
    return f'#line 1 "{path}"\n' + text


class Compiler:
    """g++ with the flags, the cache directory and the runtime library shared by every kernel."""

    def __init__(self, cxx: str, cache_dir: Path):
        self.cxx = cxx
        self.cache_dir = cache_dir
        self.flags = _BASE_FLAGS + _cpu_flags() + (
            ("-DEMU_UCONTEXT",) if os.environ.get("LINEAR_EMU_UCONTEXT") == "1" else ())
        self._version: str | None = None
        self._runtime: Path | None = None
        self._cache_checked = False

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
            sources = [str(emu_dir() / "emu_runtime.cpp"), str(emu_dir() / "emu_sanitize.cpp")]
            self._runtime = self._cached(name, lambda out: self._compile(
                [*sources, f"-Wl,-soname,{name}", "-lpthread", "-o", out], "the emulator runtime"))
        return self._runtime

    def kernel_library(self, kernel_dir: Path, source: str, name: str, sanitize: bool = False) -> Path:
        """The library of one kernel; a sanitize build has every load and store instrumented."""
        runtime = self.runtime_library()
        # The key hashes the sources as g++ sees them, so a change to rewrite_source rebuilds too.
        rewritten = {path.name: rewrite_source(path.read_text(), path, redzones=sanitize)
                     for path in sorted(kernel_dir.iterdir()) if path.suffix in _SOURCE_SUFFIXES and path.is_file()}
        h = hashlib.sha256(runtime.name.encode() + b"\0" + source.encode() + b"\0" + name.encode()
                           + b"\0" + b"sanitize" * sanitize + b"\0" + _TRANSLATOR_DIGEST)
        for file_name, text in rewritten.items():
            h.update(file_name.encode() + b"\0" + text.encode() + b"\0")
        stem = re.sub(r"\W+", "_", f"{Path(source).stem}_{name}")[:60].strip("_") + "-sanitize" * sanitize
        what = f"{name} from {source}"
        # Preprocessed and translated where the kernel's own files (or, when it includes a file this
        # cannot follow, any file of the directory) contain asm: the others build as they did.
        included, unresolved = _included(source, rewritten)
        shim = {path.name for path in emu_dir().iterdir()}
        inline_ptx = any(_ASM.search(rewritten[f]) for f in (rewritten if unresolved - shim else included))
        alignment = dynamic_shared_alignment(path.read_text() for path in sorted(kernel_dir.iterdir())
                                             if path.suffix in _SOURCE_SUFFIXES and path.is_file())

        def build(out: str) -> None:
            with tempfile.TemporaryDirectory(prefix="src-") as tmp:
                sources = Path(tmp)
                for file_name, text in rewritten.items():
                    (sources / file_name).write_text(text)
                wrapper = sources / "emu_wrapper.cpp"
                wrapper.write_text(f'#include "cuda_emu.h"\n#include "{source}"\n'
                                   f"static constexpr auto emu_kernel = &{name};\n"
                                   f'#define EMU_KERNEL emu_kernel\n#include "emu_entry.h"\n'
                                   f'extern "C" __attribute__((visibility("default"))) const unsigned long long '
                                   f"emu_dynamic_shared_alignment = {alignment};\n")
                includes = ["-I", str(emu_dir()), "-I", str(sources), "-fvisibility=hidden", *KERNEL_FLAGS]
                link = [str(runtime), "-Wl,-rpath,$ORIGIN", "-o", out]
                instrument = list(SANITIZE_FLAGS) if sanitize else []
                if inline_ptx:
                    wrapper = self._translate_inline_ptx(wrapper, [*instrument, *includes], what)
                if not sanitize:
                    self._compile([*includes, str(wrapper), *link], what)
                    return
                instrumented = sources / "emu_wrapper.o"
                self._compile([*SANITIZE_FLAGS, *includes, "-c", str(wrapper), "-o", str(instrumented)], what)
                self._compile([str(instrumented), *link, *SANITIZE_LINK_FLAGS], what)

        return self._cached(f"{stem}-{h.hexdigest()[:24]}.so", build)

    def _translate_inline_ptx(self, wrapper: Path, flags: list[str], what: str) -> Path:
        """The wrapper preprocessed, with the asm statements of the kernel's files (not the shim's, not
        system headers') translated into C++ by ptx.py: a .ii file g++ compiles as it is."""
        preprocessed = wrapper.with_suffix(".i")
        self._compile([*flags, "-E", str(wrapper), "-o", str(preprocessed)], what)
        shim = str(emu_dir()) + os.sep
        translated = ptx.translate_unit(preprocessed.read_text(),
                                        lambda path, system: not system and not path.startswith(shim),
                                        INSTRUCTIONS)
        out = wrapper.with_suffix(".ii")
        out.write_text(translated)
        return out

    # ---- The cache: a private directory; each library beside a record of its size and SHA-256 ----

    def cache(self) -> Path:
        """The cache directory, created private; refused where another user owns or can write it,
        since every library in it is loaded into this process (as pip and ccache refuse theirs)."""
        if not self._cache_checked:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            status = self.cache_dir.stat()
            fix = f"set LINEAR_EMU_CACHE to a directory of your own, or fix {self.cache_dir}"
            if status.st_uid != os.geteuid():
                raise EmulationError(f"the compile cache {self.cache_dir} is owned by uid {status.st_uid}, not by "
                                     f"this user (uid {os.geteuid()}); its libraries would run in this process: {fix}")
            if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise EmulationError(f"the compile cache {self.cache_dir} is writable by other users (mode "
                                     f"{stat.S_IMODE(status.st_mode):o}); a library planted there would run in this "
                                     f"process: chmod go-w it, or {fix}")
            self._cache_checked = True
        return self.cache_dir

    def _cached(self, name: str, build: Callable[[str], None]) -> Path:
        """The library `name` from the cache, built by build(path) if it is missing or does not match its
        record (truncated, corrupted, or from before records); one process builds it, the others wait."""
        out = self.cache() / name
        if _verified(out):
            return out
        with _locked(out.with_name(name + ".lock")):
            if _verified(out):  # another process built it meanwhile
                return out
            partial, record = _temporary(out, ".so"), _temporary(out, _RECORD)
            try:
                build(partial)
                data = Path(partial).read_bytes()
                Path(record).write_text(f"{len(data)} {hashlib.sha256(data).hexdigest()}\n")
                # The record first: a reader that sees the new library sees its record too.
                os.replace(record, out.with_name(name + _RECORD))
                os.replace(partial, out)
            finally:
                for path in (partial, record):
                    if os.path.exists(path):
                        os.unlink(path)
        return out

    def _compile(self, arguments: list[str], what: str) -> None:
        result = subprocess.run([self.cxx, *self.flags, *arguments], capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationError(f"{self.cxx} failed to compile {what}:\n{result.stderr.strip()}")


# The translator's modules (ptx.py and the instruction sets beside it, ptx_*.py) are part of every key.
_TRANSLATOR_DIGEST = hashlib.sha256(b"".join(path.read_bytes() for path in
                                             sorted(Path(ptx.__file__).parent.glob("ptx*.py")))).digest()
_RECORD = ".sha256"  # beside each library: "size sha256" of the library as built


def _verified(library: Path) -> bool:
    """Whether the library exists and matches the size and hash recorded when it was built."""
    try:
        size, digest = library.with_name(library.name + _RECORD).read_text().split()
        data = library.read_bytes()
    except (OSError, ValueError):
        return False
    return len(data) == int(size) and hashlib.sha256(data).hexdigest() == digest


def _temporary(beside: Path, suffix: str) -> str:
    fd, path = tempfile.mkstemp(prefix=".partial-", suffix=suffix, dir=beside.parent)
    os.close(fd)
    return path


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (created if need be) for as long as the block runs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
