"""The environment variables linear reads on every call ($LINEAR_BACKEND, $LINEAR_TF32), read fast.

Both may change while a program runs, and a change takes effect at the next call, so they are read each
time; a small layer feels each microsecond of that. os.environ.get takes ~0.6 µs for a name that is not
set (os.environ raises a KeyError and catches it inside); setting() looks the name up in the dict os.environ
keeps (CPython's os module: encoded names and values, updated by every change made through os.environ),
~0.1 µs, and falls back to os.environ.get where os.environ is some other mapping.
"""
from __future__ import annotations

import functools
import os


@functools.cache
def _encoded(name: str) -> bytes | str | None:
    encode = getattr(os.environ, "encodekey", None)
    return None if encode is None else encode(name)


def setting(name: str) -> str | None:
    """os.environ.get(name), in ~0.1 µs."""
    environ = os.environ
    data, key = getattr(environ, "_data", None), _encoded(name)
    if data is None or key is None:  # os.environ replaced by another mapping
        return environ.get(name)
    value = data.get(key)
    return None if value is None else environ.decodevalue(value)
