"""One loaded kernel library, launched like CuPy's RawKernel: kernel(grid, block, args, shared_mem=0)."""
from __future__ import annotations

import ctypes
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from . import sanitizers
from .arguments import Arguments
from .elf import elf_symbols
from .errors import EmulationError
from .settings import SCHEDULES, EmulatorSettings

if TYPE_CHECKING:
    from ..device import DeviceLimits



class _Uint3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]

    def tuple(self) -> tuple[int, int, int]:
        return (self.x, self.y, self.z)


class _Launch(ctypes.Structure):
    """Mirror of emu_launch in kernels/emu/emu_runtime.h."""
    _fields_ = [
        ("grid", _Uint3), ("block", _Uint3), ("dynamic_shared_bytes", ctypes.c_uint64),
        ("dynamic_shared_alignment", ctypes.c_uint64),
        ("schedule", ctypes.c_int32), ("strict", ctypes.c_int32), ("flush_subnormals", ctypes.c_int32),
        ("seed", ctypes.c_uint64),
        ("timeout_s", ctypes.c_double), ("args", ctypes.POINTER(ctypes.c_void_p)),
        ("n_args", ctypes.c_int32), ("n_static_shared", ctypes.c_int32),
        ("static_shared", ctypes.POINTER(ctypes.c_void_p)),
        ("static_shared_bytes", ctypes.POINTER(ctypes.c_uint64)),
        ("sanitize", ctypes.c_int32), ("n_regions", ctypes.c_int32),
        ("regions", ctypes.POINTER(sanitizers.Region)),
        ("error_block", _Uint3), ("error_thread", _Uint3), ("fault_signal", ctypes.c_int32),
        ("fault_is_write", ctypes.c_int32), ("fault_address", ctypes.c_uint64),
        ("error_pc", ctypes.c_uint64 * 2), ("message", ctypes.c_char * 1024),
    ]


_EMU_OK, _EMU_ERROR, _EMU_FAULT, _EMU_TIMEOUT = 0, 1, 2, 3
_NO_THREAD = (0xFFFFFFFF,) * 3
_launch_lock = threading.Lock()  # the runtime's state is global: one launch at a time


class EmulatedKernel:
    """One template instantiation, compiled and loaded: kernel(grid, block, args, shared_mem=0)."""

    def __init__(self, settings: EmulatorSettings, limits: "DeviceLimits", library: Path, name: str):
        self.name = name
        self._settings = settings
        self._limits = limits
        self._library = library
        try:
            self._lib = ctypes.CDLL(str(library))
        except OSError as error:  # the cache verified it, so this is the system's loader refusing it
            raise EmulationError(f"cannot load the compiled library {library}: {error}", kernel=name) from None
        self._entry = self._lib.emu_entry
        self._entry.argtypes = [ctypes.POINTER(_Launch)]
        self._entry.restype = ctypes.c_int
        text = ctypes.create_string_buffer(4096)
        self._lib.emu_signature(text, ctypes.c_size_t(len(text)))
        self.signature = text.value.decode().split(",") if text.value else []
        self._dynamic_shared_alignment = ctypes.c_uint64.in_dll(self._lib, "emu_dynamic_shared_alignment").value
        # CuPy compiles every kernel with -ftz=true: float32 subnormals flush to zero on the GPU, float64
        # ones do not. The CPU's flush mode covers both, so a kernel with float64 arrays runs without it.
        self._flush_subnormals = not any(t.lstrip("*") == "float64" for t in self.signature)
        statics, addresses = elf_symbols(library)
        if "emu_entry" not in addresses:  # no ELF symbol table: static __shared__ stays unpoisoned
            statics, addresses = [], {"emu_entry": 0}
        statics, redzones, guards = sanitizers.split_statics(statics)
        self._load_base = load_base = ctypes.cast(self._entry, ctypes.c_void_p).value - addresses["emu_entry"]
        # Only a sanitize build has redzones, and only it is watched.
        self._static_regions = sanitizers.static_regions(statics, load_base, guards) if redzones else []
        self.static_shared_bytes = sum(size for _, _, size in statics)
        limits = self._limits
        if self.static_shared_bytes > limits.shared_per_block_default:  # what ptxas accepts for static __shared__
            raise EmulationError(f"{self.static_shared_bytes} bytes of static __shared__ memory exceed "
                                 f"CUDA's {limits.shared_per_block_default}", kernel=name)
        self._statics = (ctypes.c_void_p * max(1, len(statics)))(*[load_base + a for _, a, _ in statics])
        self._static_sizes = (ctypes.c_uint64 * max(1, len(statics)))(*[s for _, _, s in statics])
        self._n_statics = len(statics)

    def __call__(self, grid, block, args: Sequence[Any], shared_mem: int = 0) -> None:
        limits = self._limits
        grid3, block3 = _dim3("grid", grid, limits.max_grid), _dim3("block", block, limits.max_block)
        if np.prod(block3) > limits.threads_per_block:
            raise ValueError(f"{self.name}: block {block3} has more than {limits.threads_per_block} threads")
        shared_mem = int(shared_mem)
        if not 0 <= shared_mem <= limits.shared_per_block - self.static_shared_bytes:  # static + dynamic
            raise ValueError(f"{self.name}: shared_mem={shared_mem} bytes; with "
                             f"{self.static_shared_bytes} bytes of static shared memory a block has at "
                             f"most {limits.shared_per_block - self.static_shared_bytes}")
        settings = self._settings
        # The sanitizer watches the guarded copies, so a sanitized launch always makes them.
        guard = settings.check_bounds or bool(settings.sanitize)
        arguments = Arguments(self.name, self.signature, args, guard=guard)
        regions = sanitizers.argument_regions(arguments) + self._static_regions if settings.sanitize else []
        launch = _Launch(grid=_Uint3(*grid3), block=_Uint3(*block3), dynamic_shared_bytes=shared_mem,
                         dynamic_shared_alignment=self._dynamic_shared_alignment,
                         schedule=SCHEDULES[settings.schedule], strict=int(settings.strict),
                         flush_subnormals=int(self._flush_subnormals), seed=settings.seed,
                         timeout_s=settings.timeout_s, args=arguments.c_args, n_args=len(self.signature),
                         n_static_shared=self._n_statics, static_shared=self._statics,
                         static_shared_bytes=self._static_sizes, sanitize=sanitizers.bits(settings.sanitize),
                         n_regions=len(regions), regions=(sanitizers.Region * max(1, len(regions)))(*regions))
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

    def _error(self, launch: _Launch, status: int, arguments: Arguments) -> EmulationError:
        message = launch.message.decode(errors="replace")
        if status == _EMU_TIMEOUT:
            message = (f"still running after {self._settings.timeout_s:g} s (a spin-wait on another "
                       f"block or thread never ends in the emulator); LINEAR_EMU_TIMEOUT sets the limit")
        elif status == _EMU_FAULT and not message:
            access = {1: "write", 0: "read"}.get(launch.fault_is_write, "access")
            where = arguments.describe_fault(launch.fault_address)
            message = (f"out-of-bounds {access} {where}" if where else
                       f"signal {launch.fault_signal} ({_signal_name(launch.fault_signal)}) at address "
                       f"0x{launch.fault_address:x}")
        pcs = [pc for pc in launch.error_pc if pc]
        if pcs:  # the return addresses of calls: the call itself is one byte before
            lines = sanitizers.source_lines(self._library, [pc - self._load_base - 1 for pc in pcs])
            message += f" (at {lines[0]}" + (f"; the other at {lines[1]})" if len(lines) > 1 else ")")
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
