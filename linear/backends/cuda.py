"""The cuda runtime: compiles kernels/ with NVRTC through CuPy and launches on CuPy's current stream."""
from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import BackendUnavailable
from .device import H100, DeviceLimits
from .sources import kernels_dir
from .tensor_map import TENSOR_MAP_ALIGNMENT, TENSOR_MAP_BYTES, TensorMap, encode_with_driver


def cuda_include_dirs() -> list[str]:
    """Directories with cuda_fp16.h / cuda_bf16.h for NVRTC: the nvidia-cuda-runtime wheel, else a toolkit."""
    site = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    toolkits = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    candidates = [site / "cu13" / "include", site / "cuda_runtime" / "include"]
    candidates += [Path(root) / "include" for root in toolkits if root]
    return [str(path) for path in candidates if (path / "cuda_bf16.h").exists()][:1]


def nvrtc_include_dirs(cupy: Any) -> list[str]:
    """The directories of CUDA headers that CupyRuntime puts on NVRTC's include path: none with CuPy >= 14.1,
    which finds the headers that match its NVRTC itself (cuda.pathfinder) and puts them after the options it
    is given, where an -I of ours would come first and shadow them; cuda_include_dirs() with an older CuPy
    (as before; the cuda12/cuda13 extras ask for 14.1). BackendUnavailable when CuPy >= 14.1 finds none,
    whose every compile would fail."""
    if tuple(int(n) for n in re.findall(r"\d+", cupy.__version__)[:2]) < (14, 1):
        return cuda_include_dirs()
    from cuda.pathfinder import find_nvidia_header_directory  # a dependency of CuPy 14
    if find_nvidia_header_directory("cudart") is None:
        raise BackendUnavailable(
            f"CuPy {cupy.__version__} finds no CUDA headers, which NVRTC needs to compile our kernels: "
            "pip install 'linear[cuda13]' (or 'linear[cuda12]'), which brings them as wheels (cupy-cuda13x[ctk]), "
            "or point CUDA_PATH at a CUDA toolkit")
    return []


def _cupy_with_a_gpu() -> Any:
    """The cupy module, once it has found a GPU; BackendUnavailable with the reason otherwise."""
    try:
        import cupy
    except ImportError as e:
        raise BackendUnavailable(
            "the cuda backend needs an NVIDIA GPU with its driver, and CuPy: pip install 'linear[cuda13]' "
            "for CUDA 13.x or 'linear[cuda12]' for CUDA 12.x; from a clone of the repository: "
            "pip install \".[cuda13]\" (or \".[cuda12]\")") from e
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError as e:
        raise BackendUnavailable(f"the cuda backend found no GPU: {e}") from e
    if devices == 0:
        raise BackendUnavailable("the cuda backend found no GPU")
    return cupy


class CupyRuntime:
    name = "cuda"

    def __init__(self, *, kernel_dir: str | os.PathLike | None = None, xp: Any = None) -> None:
        """kernel_dir: where the sources are (default kernels/); kernels/ stays on the include path.
        xp: the module used as CuPy; None (the default) imports CuPy, which must find a GPU. Given one (a
        stand-in, as bench.overhead's), nothing is imported or checked here."""
        self.xp = _cupy_with_a_gpu() if xp is None else xp
        self.kernel_dir = Path(kernel_dir) if kernel_dir is not None else kernels_dir()
        self._kernels: dict[tuple[int, str, str], Any] = {}
        self._opted_in: dict[int, int] = {}  # id(kernel) -> the dynamic shared memory it is opted into
        self._limits: dict[int, DeviceLimits] = {}
        self._tensor_map_dtype: np.dtype | None = None
        # NVRTC's options of every compile (the family's arch flags come after); BackendUnavailable now when
        # CuPy finds no CUDA headers, whose every compile would fail
        self._options = ("-std=c++17", f"-I{kernels_dir()}", *(f"-I{d}" for d in nvrtc_include_dirs(self.xp)))

    def compute_capability(self) -> int:
        return int(self.xp.cuda.Device().compute_capability)

    def device_id(self) -> int:
        return self.xp.cuda.Device().id

    def device_limits(self) -> DeviceLimits:
        device = self.xp.cuda.Device()
        limits = self._limits.get(device.id)
        if limits is None:  # CUDA's device attributes, as CuPy names them (clocks in kHz)
            a = device.attributes
            limits = self._limits[device.id] = DeviceLimits(
                sms=a["MultiProcessorCount"], registers_per_sm=a["MaxRegistersPerMultiprocessor"],
                shared_per_sm=a["MaxSharedMemoryPerMultiprocessor"],
                threads_per_sm=a["MaxThreadsPerMultiProcessor"],
                shared_per_block=a["MaxSharedMemoryPerBlockOptin"],
                shared_per_block_default=a["MaxSharedMemoryPerBlock"], threads_per_block=a["MaxThreadsPerBlock"],
                max_block=tuple(a[f"MaxBlockDim{axis}"] for axis in "XYZ"),
                max_grid=tuple(a[f"MaxGridDim{axis}"] for axis in "XYZ"),
                blocks_per_sm=a.get("MaxBlocksPerMultiprocessor", H100.blocks_per_sm),
                clock_hz=a["ClockRate"] * 1e3,
                bandwidth=2 * a["MemoryClockRate"] * 1e3 * a["GlobalMemoryBusWidth"] / 8)
        return limits

    def function(self, source: str, name: str, options: tuple[str, ...] = ()) -> Callable[..., None]:
        """options: extra NVRTC options, e.g. -arch=sm_90a for the Hopper kernel. CuPy 14 appends its own
        -arch=sm_<cc> (and -ftz=true) after them; NVRTC still builds for sm_90a (test_wgmma_machine_code)."""
        # One module per instantiation: a call compiles only what it launches (CuPy caches it on disk).
        key = (self.xp.cuda.Device().id, source, name, options)
        kernel = self._kernels.get(key)
        if kernel is None:
            module = self.xp.RawModule(code=(self.kernel_dir / source).read_text(), options=self._options + options,
                                       name_expressions=(name,))
            kernel = self._kernels[key] = module.get_function(name)
        return self.launcher(kernel)

    def launcher(self, kernel: Any) -> Callable[..., None]:
        """A CuPy kernel function as the Runtime's kernel functions are called: (grid, block, args, shared_mem),
        a TensorMap argument passed by value (_by_value; the rest as they are), dynamic shared memory above
        the default opted into, once per kernel and size (setting the attribute is a driver call, and every
        launch of a Hopper kernel asks for more than the default). The kernel must live as long as the
        runtime, as the ones function() makes do (self._kernels), so that its id stays its own."""
        opt_in_above, opted_in = self.device_limits().shared_per_block_default, self._opted_in
        kernel_id = id(kernel)

        def launch(grid: tuple, block: tuple, args: tuple, shared_mem: int = 0) -> None:
            if shared_mem > opt_in_above and opted_in.get(kernel_id, 0) < shared_mem:
                kernel.max_dynamic_shared_size_bytes = opted_in[kernel_id] = shared_mem
            # one type test per argument (a call per argument cost ~1.2 µs a launch of ~20 arguments)
            kernel(grid, block, tuple([self._by_value(a) if type(a) is TensorMap else a for a in args]),
                   shared_mem=shared_mem)

        return launch

    def encode_tensor_map(self, array: Any, *layout: int | list[int]) -> bytes:
        """The 128 bytes of a tensor map of `array` (tensor_map.tensor_map's call), by the driver."""
        return encode_with_driver(array, *layout)

    def _by_value(self, arg: TensorMap) -> Any:
        """A TensorMap as the 128 bytes of a `const __grid_constant__ CUtensorMap` parameter: a numpy
        structured scalar of the parameter's 64-byte alignment, which CuPy passes by value (custom
        structures in RawKernel; not yet executed on a GPU here)."""
        if self._tensor_map_dtype is None:
            words = np.dtype([("opaque", np.uint64, (TENSOR_MAP_BYTES // 8,))])
            self._tensor_map_dtype = self.xp.make_aligned_dtype(words, alignment=TENSOR_MAP_ALIGNMENT)
        return np.frombuffer(arg.bytes.tobytes(), self._tensor_map_dtype)[0]
