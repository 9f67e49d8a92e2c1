"""Shared test setup: the backend parameter, and CI strictness.

With LINEAR_CI=1 (set by .ci/run) a missing tool is a failure, never a skip: the emulate backend
(g++), nvcc and NVRTC must all be present there.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

import linear
from linear.backends import BackendUnavailable, available_backends, get_backend

CI = os.environ.get("LINEAR_CI") == "1"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(file_name: str):
    """examples/<file_name> imported as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(Path(file_name).stem + "_example", EXAMPLES / file_name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require(condition: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when a tool the test needs is missing."""
    if not condition:
        if CI:
            pytest.fail(f"{what} is missing, and LINEAR_CI=1 requires it")
        pytest.skip(f"{what} is missing")


def require_tool(tool: str) -> str:
    path = shutil.which(tool)
    require(path is not None, f"the tool {tool!r}")
    return path


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory) -> Path:
    """A folder every pytest-xdist worker of this run shares (the compile checks build each unit once
    into it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def pytest_addoption(parser):
    parser.addoption("--sanitize-all", action="store_true", dest="sanitize_all",
                     help="run every kernel instantiation under every sanitize mode (tests/test_sanitize.py)")


def pytest_configure(config):
    if not CI:
        return
    try:
        get_backend("emulate")
    except BackendUnavailable as reason:
        raise pytest.UsageError(f"LINEAR_CI=1 but the emulate backend is unavailable: {reason}") from None
    try:  # the bfloat16 tests skip (or drop the dtype) without it
        import ml_dtypes  # noqa: F401
    except ImportError:
        raise pytest.UsageError("LINEAR_CI=1 but ml_dtypes (bfloat16) is not installed") from None


# Backends whose arrays are numpy arrays; the cuda backend runs in the suite only with -m gpu.
HOST_BACKENDS = [name for name in available_backends() if name != "cuda"]
# "<backend>-tf32": the backend with TF32 allowed, so that float32 runs on the tensor-core kernels too.
TF32_SUFFIX = "-tf32"
TF32_BACKENDS = [name + TF32_SUFFIX for name in HOST_BACKENDS if name == "emulate"] + [
    pytest.param("cuda" + TF32_SUFFIX, marks=pytest.mark.gpu)]


@pytest.fixture(params=HOST_BACKENDS + [pytest.param("cuda", marks=pytest.mark.gpu)] + TF32_BACKENDS)
def backend(request):
    """The name of a backend to run the test on; cuda tests skip unless a GPU and CuPy are present."""
    name = request.param.removesuffix(TF32_SUFFIX)
    if name == "cuda" and "cuda" not in available_backends():
        pytest.skip("the cuda backend needs CuPy and a GPU")
    if name == request.param:
        yield name
        return
    linear.set_tf32(True)
    try:
        yield name
    finally:
        linear.set_tf32(None)
