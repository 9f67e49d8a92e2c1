"""linear: GPU linear-layer kernels for Python.

    Y = X·W + b            linear.forward(x, w, b)
    Y = act(X·W + b)       linear.forward(x, w, b, activation="gelu", preact_out=z)   (linear.activations)
    dX, dW, db             linear.backward(dy, x, w)      (dX = dY·Wᵀ, dW = Xᵀ·dY, db = Σ rows of dY)
    C = α·op(A)·op(B) + βC linear.matmul(a, b, trans_a=, trans_b=, alpha=, beta=, out=)

numpy arrays in, numpy arrays out; CuPy arrays in, CuPy arrays out (backend "cuda").
"""
__version__ = "0.1.0"  # pyproject.toml reads it from here

from .backends import BackendUnavailable, available_backends
from . import activations, optim, testing
from .functional import Gradients, backward, forward, matmul
from .layer import Linear, Parameter
from .tf32 import get_tf32, set_tf32

__all__ = ["__version__", "forward", "backward", "matmul", "Gradients", "Linear", "Parameter", "activations", "optim",
           "testing", "available_backends", "BackendUnavailable", "get_tf32", "set_tf32"]
