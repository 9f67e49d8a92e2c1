"""Backend registry: a name -> a Backend (see base.py for the interface).

numpy    numpy's matmul (BLAS) on transposed views; always available.
emulate  our CUDA kernels, compiled with g++ against kernels/emu and run on the CPU; needs a C++ compiler.
cuda     our CUDA kernels, compiled with NVRTC through CuPy; needs CuPy and a GPU.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

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


# $LINEAR_BACKEND as os.environ keeps it (CPython's os module: a dict of encoded names and values, which every
# change through os.environ updates), for the reads on every call: os.environ.get takes ~0.6 µs for a name that
# is not set (a KeyError raised and caught inside os.environ), a look-up in that dict ~0.1 µs.
_ENVIRONMENT_KEY = os.environ.encodekey("LINEAR_BACKEND") if hasattr(os.environ, "encodekey") else None


def _environment_value() -> str | None:
    """$LINEAR_BACKEND now, as os.environ.get("LINEAR_BACKEND") gives it."""
    environ = os.environ
    data = getattr(environ, "_data", None)
    if data is None or _ENVIRONMENT_KEY is None:  # os.environ replaced by another mapping
        return environ.get("LINEAR_BACKEND")
    value = data.get(_ENVIRONMENT_KEY)
    return None if value is None else environ.decodevalue(value)


def default_backend_name() -> str:
    """The backend for numpy inputs when none is named: $LINEAR_BACKEND, else numpy; read on every call, so
    that a change at run time takes effect."""
    name = _environment_value() or "numpy"
    if name not in _FACTORIES:
        raise ValueError(f"$LINEAR_BACKEND must be one of {sorted(_FACTORIES)}, got {name!r}")
    return name


__all__ = ["Backend", "Runtime", "BackendUnavailable", "get_backend", "available_backends",
           "default_backend_name"]
