"""linear: GPU linear-layer kernels for Python (Y = X·W + b and its backward pass)."""
from .backends import available_backends

__all__ = ["available_backends"]
