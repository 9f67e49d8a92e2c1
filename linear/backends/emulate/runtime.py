"""The emulate runtime: its settings, and the kernels it has compiled and loaded."""
from __future__ import annotations

import ctypes
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from ..base import BackendUnavailable
from ..device import H100, DeviceLimits
from ..sources import kernels_dir
from ..tensor_map import encode_emulated
from . import sanitizers
from .compiler import Compiler, default_cache_dir
from .kernel import EmulatedKernel
from .settings import EmulatorSettings

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
        self.settings = EmulatorSettings.resolve(schedule=schedule, seed=seed, strict=strict, check_bounds=check_bounds,
                                                 timeout_s=timeout_s, sanitize=sanitize)
        self._compiler = Compiler(cxx, Path(cache_dir) if cache_dir is not None else default_cache_dir())
        self._kernels: dict[tuple[str, str], EmulatedKernel] = {}  # (source, name) -> kernel
        self._lock = threading.Lock()
        self._host: ctypes.CDLL | None = None

    def compute_capability(self) -> int:
        return COMPUTE_CAPABILITY

    def device_id(self) -> int:
        return 0  # one emulated device

    def device_limits(self) -> DeviceLimits:
        return H100  # the card the plan's cost model assumes for the emulator

    def encode_tensor_map(self, array: np.ndarray, *layout: int | list[int]) -> bytes:
        """The 128 bytes of a tensor map of `array` (tensor_map.tensor_map's call), by the emulator's
        cuTensorMapEncodeTiled."""
        return encode_emulated(self, array, *layout)

    def host_library(self) -> ctypes.CDLL:
        """The emulator's runtime library, built if need be: its host functions (cuTensorMapEncodeTiled) are
        what encode_tensor_map calls."""
        with self._lock:
            if self._host is None:
                self._host = ctypes.CDLL(str(self._compiler.runtime_library()))
            return self._host

    def function(self, source: str, name: str, options: tuple[str, ...] = ()) -> EmulatedKernel:
        """The kernel `name` (one template instantiation) of kernels/`source`, compiled (or found in the
        disk cache) on its first use by this runtime. options: the GPU compiler's extra options (e.g.
        -arch=sm_90a), which the emulator does not need: it models sm_90a's instructions."""
        with self._lock:
            kernel = self._kernels.get((source, name))
            if kernel is None:
                path = self.kernel_dir / source
                if not path.is_file():
                    raise FileNotFoundError(f"no kernel source {source!r} in {self.kernel_dir}")
                instrumented = any(m in self.settings.sanitize for m in sanitizers.INSTRUMENTED)
                library = self._compiler.kernel_library(self.kernel_dir, source, name, sanitize=instrumented)
                kernel = self._kernels[(source, name)] = EmulatedKernel(self.settings, self.device_limits(), library, name)
            return kernel
