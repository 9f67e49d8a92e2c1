"""The sanitize modes: what the runtime is told to watch, and source lines for what it reports.

The checks themselves run in the runtime library (kernels/emu/emu_sanitize.cpp for memcheck,
racecheck and initcheck; emu_runtime.cpp for synccheck). This module describes the memory they
watch -- every argument array (its guarded copy) and every static __shared__ variable, each with
the bytes around it that are out of its bounds -- and turns the code addresses of an error into
file:line with addr2line.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

from .arguments import Arguments
from .compiler import REDZONE, REDZONE_BYTES

MODES = {"memcheck": 1, "racecheck": 2, "initcheck": 4, "synccheck": 8}
# synccheck needs no instrumented build: the runtime compares the barriers' call sites.
INSTRUMENTED = ("memcheck", "racecheck", "initcheck")


class Region(ctypes.Structure):
    """Mirror of emu_region in kernels/emu/emu_runtime.h."""
    _fields_ = [("start", ctypes.c_uint64), ("bytes", ctypes.c_uint64), ("guard_before", ctypes.c_uint64),
                ("guard_after", ctypes.c_uint64), ("name", ctypes.c_char_p), ("shared", ctypes.c_int32)]


def parse(value) -> frozenset[str]:
    """'memcheck,racecheck' (or an iterable of names) -> the set of modes; '' -> none."""
    names = value.split(",") if isinstance(value, str) else list(value)
    modes = frozenset(n.strip() for n in names if n.strip())
    unknown = modes - MODES.keys()
    if unknown:
        raise ValueError(f"unknown sanitize mode(s) {sorted(unknown)}; choose from {sorted(MODES)}")
    return modes


def bits(modes: frozenset[str]) -> int:
    return sum(MODES[m] for m in modes)


Static = tuple[str, int, int]  # (name, address, size) in the library


def split_statics(objects: list[Static]) -> tuple[list[Static], list[Static], list[Static]]:
    """(the static __shared__ variables, the redzones between them, the library's other zero-initialized
    objects, such as the guard variables of first initializations) of elf.elf_symbols' objects."""
    redzones = [s for s in objects if REDZONE in s[0]]
    shared = [s for s in objects if s[0].startswith(("_ZZ", "_ZL")) and REDZONE not in s[0]]
    names = {s[0] for s in redzones + shared}
    return shared, redzones, [s for s in objects if s[0] not in names]


def static_regions(statics: list[Static], load_base: int, others: list[Static] = ()) -> list[Region]:
    """Each static __shared__ variable, out of bounds up to halfway to its neighbours (the redzones
    and alignment padding between them), and never over `others` (guard variables g++ puts beside)."""
    shared = {s[0] for s in statics}
    ordered = sorted([*statics, *others], key=lambda s: s[1])
    regions = []
    for i, (name, address, size) in enumerate(ordered):
        if name not in shared:
            continue
        previous = ordered[i - 1] if i else None
        following = ordered[i + 1] if i + 1 < len(ordered) else None
        # Halfway to a shared neighbour (the rest is its own), all the way to a guard variable.
        before = REDZONE_BYTES if previous is None else address - (previous[1] + previous[2])
        before //= 2 if previous is not None and previous[0] in shared else 1
        after = REDZONE_BYTES if following is None else following[1] - (address + size)
        after = (after + 1) // 2 if following is not None and following[0] in shared else after
        regions.append(Region(load_base + address, size, max(before, 0), max(after, 0), name.encode(), 1))
    return regions


def argument_regions(arguments: Arguments) -> list[Region]:
    """Each guarded argument copy, out of bounds over its whole mapping (slack and guard pages)."""
    return [Region(r.start, r.size, r.start - r.base, r.base + r.mapping_bytes - r.start - r.size,
                   arguments.describe(r).encode(), 0) for r in arguments.regions]


def source_lines(library: Path, offsets: list[int]) -> list[str]:
    """file:line of each code offset in the library (addr2line, inlined frames innermost first)."""
    addr2line = shutil.which("addr2line")
    if addr2line is None or not offsets:
        return ["?"] * len(offsets)
    result = subprocess.run([addr2line, "-e", str(library), *(hex(o) for o in offsets)],
                            capture_output=True, text=True)
    lines = result.stdout.splitlines()
    return [line.split(" (discriminator")[0] for line in lines] if len(lines) == len(offsets) else ["?"] * len(offsets)
