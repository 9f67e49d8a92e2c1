"""The emulate runtime: its settings, and the kernels it has compiled and loaded."""
from __future__ import annotations

import ctypes
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from .. import BackendUnavailable
from ..cost import H100, DeviceLimits
from ..sources import kernels_dir
from . import sanitizers
from .compiler import Compiler, default_cache_dir
from .kernel import SCHEDULES, EmulatedKernel

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


COMPUTE_CAPABILITY = 90  # the emulator models an H100/H200 (sm_90): the plan picks tensor-core kernels


class EmulatorRuntime:
    """Compiles kernels/*.cu with g++ against kernels/emu and runs them on the CPU (see the module)."""

    name = "emulate"
    xp = np

    def __init__(self, *, kernel_dir: str | os.PathLike | None = None, schedule: str | None = None,
                 seed: int | None = None, strict: bool | None = None, check_bounds: bool | None = None,
                 timeout_s: float | None = None, sanitize: str | None = None,
                 cache_dir: str | os.PathLike | None = None):
        cxx = shutil.which(os.environ.get("CXX") or "g++")
        if cxx is None:
            raise BackendUnavailable("the emulate backend needs a C++ compiler: g++ (or $CXX) is not on PATH")
        self.kernel_dir = Path(kernel_dir) if kernel_dir is not None else kernels_dir()
        self.schedule = _setting(schedule, "schedule", "LINEAR_EMU_SCHEDULE", "forward", _schedule)
        self.seed = _setting(seed, "seed", "LINEAR_EMU_SEED", 0, _seed)
        self.strict = _setting(strict, "strict", "LINEAR_EMU_STRICT", True, _switch)
        self.check_bounds = _setting(check_bounds, "check_bounds", "LINEAR_EMU_CHECK_BOUNDS", True, _switch)
        self.timeout_s = _setting(timeout_s, "timeout_s", "LINEAR_EMU_TIMEOUT", 300.0, _seconds)
        self.sanitize = _setting(sanitize, "sanitize", "LINEAR_EMU_SANITIZE", frozenset(), sanitizers.parse)
        self._compiler = Compiler(cxx, Path(cache_dir) if cache_dir is not None else default_cache_dir())
        self._kernels: dict[tuple[str, str], EmulatedKernel] = {}  # (source, name) -> kernel
        self._lock = threading.Lock()
        self._host: ctypes.CDLL | None = None

    def compute_capability(self) -> int:
        return COMPUTE_CAPABILITY

    def device_limits(self) -> DeviceLimits:
        return H100  # the card the plan's cost model assumes for the emulator

    def host_library(self) -> ctypes.CDLL:
        """The emulator's runtime library, built if need be: its host functions (cuTensorMapEncodeTiled) are
        what linear/backends/tensor_map.py calls."""
        with self._lock:
            if self._host is None:
                self._host = ctypes.CDLL(str(self._compiler.runtime_library()))
            return self._host

    def function(self, source: str, name: str) -> EmulatedKernel:
        """The kernel `name` (one template instantiation) of kernels/`source`, compiled (or found in the
        disk cache) on its first use by this runtime."""
        with self._lock:
            kernel = self._kernels.get((source, name))
            if kernel is None:
                path = self.kernel_dir / source
                if not path.is_file():
                    raise FileNotFoundError(f"no kernel source {source!r} in {self.kernel_dir}")
                instrumented = any(m in self.sanitize for m in sanitizers.INSTRUMENTED)
                library = self._compiler.kernel_library(self.kernel_dir, source, name, sanitize=instrumented)
                kernel = self._kernels[(source, name)] = EmulatedKernel(self, library, name)
            return kernel
