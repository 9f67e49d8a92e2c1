"""The cuda runtime's own code, run without a GPU.

CupyRuntime is given a stand-in for CuPy: numpy for the arrays, and a RawModule whose "NVRTC" hands the
instantiation to the emulator. Everything CupyRuntime does (the source text it compiles, its options and
name expressions, its module cache, the dynamic shared memory opt-in, the launch) runs for real; only
NVRTC and the GPU are replaced. NVRTC itself compiles every kernel in test_compile.py.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from linear.backends.cuda import CupyRuntime, cuda_include_dirs, nvrtc_include_dirs
from linear.backends.kernel import KernelBackend
from linear.backends.plan import Tuning
from linear.backends.sources import kernels_dir
from reference import assert_close


class FakeKernel:
    def __init__(self, emulated):
        self.emulated = emulated
        self.opt_ins = []  # each value given to max_dynamic_shared_size_bytes (a driver call in CuPy)

    max_dynamic_shared_size_bytes = property(lambda self: self.opt_ins[-1] if self.opt_ins else 48 * 1024,
                                             lambda self, size: self.opt_ins.append(size))

    def __call__(self, grid, block, args, shared_mem=0):
        assert shared_mem <= self.max_dynamic_shared_size_bytes, "dynamic shared memory was not opted into"
        self.emulated(grid, block, args, shared_mem=shared_mem)


# An H100 SXM's device attributes as CuPy names them (cudaDeviceProp: clocks in kHz, the bus in bits).
H100_ATTRIBUTES = {"MultiProcessorCount": 132, "MaxRegistersPerMultiprocessor": 65536,
                   "MaxSharedMemoryPerMultiprocessor": 233472, "MaxThreadsPerMultiProcessor": 2048,
                   "MaxBlocksPerMultiprocessor": 32, "ClockRate": 1980000, "MemoryClockRate": 2619000,
                   "GlobalMemoryBusWidth": 5120, "MaxSharedMemoryPerBlockOptin": 232448,
                   "MaxSharedMemoryPerBlock": 49152, "MaxThreadsPerBlock": 1024, "MaxBlockDimX": 1024,
                   "MaxBlockDimY": 1024, "MaxBlockDimZ": 64, "MaxGridDimX": 2147483647, "MaxGridDimY": 65535,
                   "MaxGridDimZ": 65535}


class FakeCupy(types.ModuleType):
    """numpy in CuPy's clothes; RawModule compiles through the emulator and records what it was given."""

    def __init__(self, emulator):
        super().__init__("cupy")
        self.modules: list[dict] = []
        device = types.SimpleNamespace(id=0, compute_capability="90", attributes=H100_ATTRIBUTES)  # CuPy's spelling
        self.cuda = types.SimpleNamespace(
            runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=RuntimeError),
            Device=lambda: device)

        fake = self

        class RawModule:
            def __init__(self, *, code, options, name_expressions):
                fake.modules.append(dict(code=code, options=options, names=name_expressions))
                matches = [p.name for p in kernels_dir().glob("*.cu") if p.read_text() == code]
                assert len(matches) == 1, "RawModule must receive the text of one kernels/ source"
                self.source = matches[0]

            def get_function(self, name):
                assert name in fake.modules[-1]["names"], "get_function needs a declared name expression"
                return FakeKernel(emulator.function(self.source, name))

        self.RawModule = RawModule
        self.get_array_module = lambda *arrays: np

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.fixture
def fake_cupy(monkeypatch):
    from linear.backends.emulate import EmulatorRuntime
    fake = FakeCupy(EmulatorRuntime())
    monkeypatch.setitem(sys.modules, "cupy", fake)
    return fake


def test_cupy_runtime_compiles_and_launches_every_product(fake_cupy):
    backend = KernelBackend(CupyRuntime())
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((33, 20)), rng.standard_normal((20, 17)), rng.standard_normal(17)
    x, w, b = (a.astype(np.float32) for a in (x, w, b))
    y = np.full((33, 17), np.nan, np.float32)
    backend.gemm(x, w, y, alpha=1.0, beta=0.0, bias=b)
    assert_close(y, x.astype(np.float64) @ w + b, np.float32)

    dw = np.full((20, 17), np.nan, np.float32)
    backend.gemm(x.T, y, dw, alpha=1.0, beta=0.0)
    assert_close(dw, x.T.astype(np.float64) @ y, np.float32)

    db = np.full(17, np.nan, np.float32)
    backend.colsum(y, db, beta=0.0)
    assert_close(db, y.astype(np.float64).sum(axis=0), np.float32)

    for module in fake_cupy.modules:
        assert len(module["names"]) == 1  # one module per instantiation
        assert "-std=c++17" in module["options"]
        assert f"-I{kernels_dir()}" in module["options"]  # gemm.cu includes common.cuh


def test_cupy_runtime_runs_the_tensor_core_kernel_with_its_shared_memory(fake_cupy):
    import ml_dtypes
    backend = KernelBackend(CupyRuntime(), Tuning(config="tc_large"))  # 64 KiB: above the default 48
    rng = np.random.default_rng(1)
    x, w = (rng.standard_normal(shape).astype(ml_dtypes.bfloat16) for shape in [(40, 24), (24, 32)])
    y = np.full((40, 32), np.nan, ml_dtypes.bfloat16)
    backend.gemm(x, w, y, alpha=1.0, beta=0.0)
    assert_close(y, x.astype(np.float64) @ w.astype(np.float64), "bfloat16")
    assert [module["names"] for module in fake_cupy.modules] == [
        ("linear_tc_gemm<__nv_bfloat16, __nv_bfloat16, false, false, 128, 128, 32, 64, 32, 4>",)]


def test_cupy_runtime_caches_modules(fake_cupy):
    runtime = CupyRuntime()
    first = runtime.function("reduce.cu", "linear_colsum_partial<float>")
    runtime.function("reduce.cu", "linear_colsum_partial<float>")
    assert len(fake_cupy.modules) == 1
    assert callable(first)


def test_the_launcher_passes_tensor_maps_by_value_and_the_rest_as_given(fake_cupy):
    """A TensorMap argument reaches the CuPy kernel as its 128 bytes in one structured scalar (what a
    `const __grid_constant__ CUtensorMap` parameter takes), every other argument as it was given, and
    dynamic shared memory above the default is opted into first."""
    from linear.backends.tensor_map import TensorMap
    fake_cupy.make_aligned_dtype = lambda dtype, alignment: np.dtype(dtype, align=True)  # the alignment aside
    kernel, launched = FakeKernel(lambda grid, block, args, shared_mem=0: launched.append(args)), []
    data = bytes(range(128))
    tensor_map = TensorMap(data, np.zeros((8, 8), np.float32), (8, 8), 0)
    given = (np.int32(3), tensor_map, np.zeros(4, np.float32), np.float32(0.5), tensor_map, np.int64(7))
    runtime = CupyRuntime()
    runtime.launcher(kernel)((1, 1, 1), (128, 1, 1), given, shared_mem=100_000)
    (args,) = launched
    assert len(args) == len(given) and all(got is arg for got, arg in zip(args, given) if arg is not tensor_map)
    for i in (1, 4):
        assert isinstance(args[i], np.void) and args[i].dtype.itemsize == 128 and args[i].tobytes() == data
    assert kernel.opt_ins == [100_000]


def test_dynamic_shared_memory_is_opted_into_once_per_kernel_and_size(fake_cupy):
    """Setting a kernel's max_dynamic_shared_size_bytes is a driver call: made on the first launch that needs
    more than the default and again only when a launch (through any launcher of that kernel) needs more
    than it was given; a launch within the default makes none."""
    kernel = FakeKernel(lambda grid, block, args, shared_mem=0: None)
    runtime = CupyRuntime()
    first, second = runtime.launcher(kernel), runtime.launcher(kernel)
    for launch, shared_mem in [(first, 100_000), (first, 100_000), (second, 100_000), (second, 40_000),
                               (first, 150_000), (second, 120_000), (second, 150_000)]:
        launch((1, 1, 1), (128, 1, 1), (), shared_mem=shared_mem)
    assert kernel.opt_ins == [100_000, 150_000]
    other = FakeKernel(lambda grid, block, args, shared_mem=0: None)
    runtime.launcher(other)((1, 1, 1), (128, 1, 1), (), shared_mem=120_000)
    assert other.opt_ins == [120_000]


def test_cupy_runtime_reads_the_device_limits_from_its_attributes(fake_cupy):
    from dataclasses import replace

    from linear.backends.device import H100
    limits = CupyRuntime().device_limits()
    assert limits.sms == 132 and limits.shared_per_sm == 228 * 1024 and limits.clock_hz == 1.98e9
    assert abs(limits.bandwidth - H100.bandwidth) < 0.01 * H100.bandwidth
    assert replace(limits, bandwidth=H100.bandwidth) == H100  # the opt-in shared memory and the grid too


def test_cuda_include_dir_has_the_half_headers():
    """NVRTC needs cuda_fp16.h / cuda_bf16.h; the test extra installs them (nvidia-cuda-runtime)."""
    dirs = cuda_include_dirs()
    assert dirs, "no directory with cuda_bf16.h: install nvidia-cuda-runtime or a CUDA toolkit"
    assert (Path(dirs[0]) / "cuda_fp16.h").exists()


def test_without_cupy_the_backend_is_unavailable(monkeypatch):
    from linear.backends import BackendUnavailable
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    with pytest.raises(BackendUnavailable, match=r"GPU with its driver, and CuPy.*linear\[cuda13\].*linear\[cuda12\].*\.\[cuda13\]"):
        CupyRuntime()


@pytest.mark.parametrize("version, found, expected", [
    ("14.1.0", "/wheels/nvidia/cu13/include", []),  # CuPy puts its own after ours: we add none
    ("14.2.0rc1", "/opt/cuda/include", []),
    ("13.6.0", None, "ours"),  # an older CuPy: as before
])
def test_our_cuda_headers_never_shadow_the_ones_cupy_finds(monkeypatch, version, found, expected):
    pathfinder = types.ModuleType("cuda.pathfinder")
    pathfinder.find_nvidia_header_directory = lambda name: found if name == "cudart" else None
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pathfinder)
    cupy = types.SimpleNamespace(__version__=version)
    assert nvrtc_include_dirs(cupy) == (cuda_include_dirs() if expected == "ours" else expected)


def test_cupy_14_1_without_cuda_headers_is_unavailable_with_the_install_hint(monkeypatch):
    from linear.backends import BackendUnavailable
    pathfinder = types.ModuleType("cuda.pathfinder")
    pathfinder.find_nvidia_header_directory = lambda name: None
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pathfinder)
    with pytest.raises(BackendUnavailable, match=r"CuPy 14.1.1 finds no CUDA headers.*linear\[cuda13\].*\[ctk\]"):
        nvrtc_include_dirs(types.SimpleNamespace(__version__="14.1.1"))


def test_the_runtime_compiles_without_our_cuda_headers_on_cupy_14_1(fake_cupy, monkeypatch):
    pathfinder = types.ModuleType("cuda.pathfinder")
    pathfinder.find_nvidia_header_directory = lambda name: "/wheels/nvidia/cu13/include"
    monkeypatch.setitem(sys.modules, "cuda", types.ModuleType("cuda"))
    monkeypatch.setitem(sys.modules, "cuda.pathfinder", pathfinder)
    fake_cupy.__version__ = "14.1.0"
    CupyRuntime().function("reduce.cu", "linear_colsum_partial<float>")
    (module,) = fake_cupy.modules
    assert [o for o in module["options"] if o.startswith("-I")] == [f"-I{kernels_dir()}"]


def test_the_cuda_extras_bring_cupy_14_1_with_its_toolkit_wheels():
    """cupy-cudaXXx[ctk]: the plain CuPy 14 wheel has no CUDA headers or NVRTC; 14.0's compile cache
    ignored kernels compiled with name_expressions (all of ours)."""
    import tomllib
    from packaging.requirements import Requirement
    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for extra, package in (("cuda12", "cupy-cuda12x"), ("cuda13", "cupy-cuda13x")):
        (cupy,) = [r for r in map(Requirement, extras[extra]) if r.name == package]
        assert cupy.extras == {"ctk"}, extra
        assert cupy.specifier.contains("14.1.0") and not cupy.specifier.contains("14.0.1"), extra


def test_gpu_sanitize_no_pool_turns_cupys_memory_pool_off_before_any_launch(monkeypatch, fake_cupy):
    """compute-sanitizer sees allocations: from CuPy's pool it would see only the pool's large blocks."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    try:
        from bench import gpu_sanitize
    finally:
        sys.path.pop(0)
    events = []
    fake_cupy.cuda.set_allocator = lambda allocator: events.append(("set_allocator", allocator))
    runtime = types.SimpleNamespace(compute_capability=lambda: 90)
    backend = types.SimpleNamespace(name="cuda", xp=fake_cupy, runtime=runtime)
    monkeypatch.setattr(gpu_sanitize, "get_backend", lambda name: backend)
    monkeypatch.setattr(gpu_sanitize, "check_gemm", lambda *a: events.append("launch") or ("k", 0.0, 1.0))
    monkeypatch.setattr(gpu_sanitize, "check_colsum", lambda *a: events.append("launch") or ("k", 0.0, 1.0))
    for argv, expected in ((["--splits", "1", "--no-pool"], [("set_allocator", None)]), (["--splits", "1"], [])):
        events.clear()
        monkeypatch.setattr(sys, "argv", ["gpu_sanitize.py", *argv])
        assert gpu_sanitize.main() == 0
        assert events[:len(expected)] == expected and events[len(expected)] == "launch"
        assert ("set_allocator", None) not in events[len(expected):]


@pytest.mark.parametrize("arch", [80, 90])
def test_gpu_sanitize_launches_every_instantiation_the_device_runs(monkeypatch, capsys, arch):
    """The launch-all pass plans every configuration of every family that runs on the device (the Hopper
    tiles only on 9.0) in every dtype, layout, load path and split, so that no instantiation is reported
    NOT LAUNCHED; planned here without launching (a backend whose launch does nothing, every result taken
    as right). Negative control: with the Hopper tiles skipped the pass reports their kernels on 9.0."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    try:
        from bench import gpu_sanitize
    finally:
        sys.path.pop(0)

    class Planned:  # KernelBackend's part that gpu_sanitize uses, launching nothing
        def __init__(self, runtime, tuning=None):
            self.tuning = tuning

        def launch(self, launches):
            pass

    runtime = types.SimpleNamespace(compute_capability=lambda: arch)
    backend = types.SimpleNamespace(name="cuda", xp=np, runtime=runtime, launch=lambda launches: None)
    monkeypatch.setattr(gpu_sanitize, "get_backend", lambda name: backend)
    monkeypatch.setattr(gpu_sanitize, "KernelBackend", Planned)
    monkeypatch.setattr(gpu_sanitize, "relative_error", lambda got, expected: 0.0)
    monkeypatch.setattr(sys, "argv", ["gpu_sanitize.py"])
    assert gpu_sanitize.main() == 0
    out = capsys.readouterr().out
    assert "NOT LAUNCHED" not in out and ("linear_wgmma_gemm" in out) == (arch == 90)
    if arch == 90:
        check_gemm = gpu_sanitize.check_gemm
        monkeypatch.setattr(gpu_sanitize, "check_gemm", lambda backend, dtype, ta, tb, config, *rest: (
            ("skipped", 0.0, 1.0) if config.startswith("wgmma") else check_gemm(backend, dtype, ta, tb, config, *rest)))
        assert gpu_sanitize.main() == 1
        assert "NOT LAUNCHED: ['linear_wgmma_gemm" in capsys.readouterr().out
