"""Backend registry: a name -> a Backend (see base.py for the interface).

numpy    numpy's matmul (BLAS) on transposed views; always available.
emulate  our CUDA kernels, compiled with g++ against kernels/emu and run on the CPU; needs a C++ compiler.
cuda     our CUDA kernels, compiled with NVRTC through CuPy; needs CuPy and a GPU.
"""
from __future__ import annotations

import functools
from typing import Callable

from ..environment import setting
from .base import Backend, BackendUnavailable, Runtime


def _numpy() -> Backend:
    from .numpy import NumpyBackend
    return NumpyBackend()


def _emulate() -> Backend:
    from .emulate import EmulatorRuntime
    from .kernel import KernelBackend
    return KernelBackend(EmulatorRuntime())


def _cuda() -> Backend:
    from .cuda import CupyRuntime
    from .kernel import KernelBackend
    return KernelBackend(CupyRuntime())


_FACTORIES: dict[str, Callable[[], Backend]] = {"numpy": _numpy, "emulate": _emulate, "cuda": _cuda}


@functools.cache
def _load(name: str) -> Backend | BackendUnavailable:
    try:
        return _FACTORIES[name]()
    except BackendUnavailable as e:
        return e
    except (ImportError, OSError, RuntimeError, ValueError) as e:  # ValueError: a bad LINEAR_EMU_* setting
        return BackendUnavailable(f"backend {name!r} is unavailable: {type(e).__name__}: {e}")


def get_backend(name: str) -> Backend:
    """The backend called `name`; BackendUnavailable (with the reason) when it cannot run here."""
    if name not in _FACTORIES:
        raise ValueError(f"backend must be one of {sorted(_FACTORIES)}, got {name!r}")
    loaded = _load(name)
    if isinstance(loaded, BackendUnavailable):
        raise loaded
    return loaded


def available_backends() -> list[str]:
    """The backends that work on this machine, in the order numpy, emulate, cuda."""
    return [name for name in _FACTORIES if not isinstance(_load(name), BackendUnavailable)]


def default_backend_name() -> str:
    """The backend for numpy inputs when none is named: $LINEAR_BACKEND, else numpy; read on every call, so
    that a change at run time takes effect."""
    name = setting("LINEAR_BACKEND") or "numpy"
    if name not in _FACTORIES:
        raise ValueError(f"$LINEAR_BACKEND must be one of {sorted(_FACTORIES)}, got {name!r}")
    return name


__all__ = ["Backend", "Runtime", "BackendUnavailable", "get_backend", "available_backends",
           "default_backend_name"]
