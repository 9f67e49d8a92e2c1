"""The activations a linear layer may apply, one owner: their names, their codes in the kernels, and numpy
references of each function and its derivative.

    name         act(z)                                         as torch names it
    None         z                                              (no activation)
    "relu"       max(z, 0)                                      F.relu
    "gelu"       z · ½(1 + erf(z/√2))                           F.gelu (approximate="none")
    "gelu_tanh"  ½z(1 + tanh(√(2/π)(z + 0.044715 z³)))          F.gelu(approximate="tanh")
    "silu"       z · σ(z) = z / (1 + e^(-z))                    F.silu

The formulas are written as torch writes them (aten's CPU and CUDA kernels), so that NaN and ±inf
propagate as they do there: relu(NaN) = NaN and relu'(NaN) passes the gradient (torch's
threshold_backward tests the output with <= 0), gelu(-inf) = NaN, gelu'(±inf) = NaN, silu(-inf) = NaN.
relu's gradient is a select (dz = 0 where z <= 0, else dy), the others' a product dy · act'(z).

Half types (float16, bfloat16) are computed in float32 and rounded once, as torch and our kernels do;
float32 in float32 (erf in float64, rounded: numpy has no float32 erf); float64 in float64.
The kernels' codes (kernels/epilogue.cuh, `Activation`) are the positions in ACTIVATIONS.
The functions also take CuPy arrays (numpy's ufuncs and np.where dispatch to CuPy; erf is cupyx's): the
benchmark's unfused step on the GPU (bench/activation.py) runs them there.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import array_module

# The choices, in the order of their codes in kernels/epilogue.cuh (None is code 0).
ACTIVATIONS: tuple[str | None, ...] = (None, "relu", "gelu", "gelu_tanh", "silu")

# torch's constants (aten/src/ATen/native/cpu/Activation.cpp), as the kernels spell them too.
SQRT1_2 = math.sqrt(0.5)  # gelu: erf's argument scale, 1/√2
GELU_PDF_SCALE = 2 / math.sqrt(math.pi) * math.sqrt(0.5) * 0.5  # 1/√(2π): the normal density's factor
GELU_TANH_BETA = math.sqrt(2) * 2 / math.sqrt(math.pi) * 0.5  # √(2/π)
GELU_TANH_KAPPA = 0.044715

_erf = np.frompyfunc(math.erf, 1, 1)  # numpy has no erf (scipy is not a dependency): exact, ~0.2 µs an element


def check_activation(activation: Any) -> str | None:
    """activation itself when it is one of ACTIVATIONS; otherwise a ValueError that lists the choices."""
    if activation is None or isinstance(activation, str) and activation in ACTIVATIONS:
        return activation
    choices = ", ".join(repr(a) for a in ACTIVATIONS)
    raise ValueError(f"activation must be one of {choices}; got {activation!r}")


def activation_code(activation: str | None) -> int:
    """The activation's code in the kernels (its position in ACTIVATIONS)."""
    return ACTIVATIONS.index(check_activation(activation))


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype an activation is computed in: float32 for the half types (and float32), else float64."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def _gelu_erf(z: np.ndarray) -> np.ndarray:
    if array_module(z) is not np:  # a CuPy array (bench/activation.py's unfused step on the GPU): CuPy's erf
        from cupyx.scipy.special import erf
        return erf(z * z.dtype.type(SQRT1_2))
    return _erf(z * z.dtype.type(SQRT1_2)).astype(z.dtype)


# Overflow, underflow and ±inf · 0 are part of the functions (silu(-inf) = NaN, as in torch): no warnings.
@np.errstate(all="ignore")
def apply(activation: str | None, z: np.ndarray) -> np.ndarray:
    """act(z) in z's compute dtype (compute_dtype): a new array, or z itself for None. z is not modified."""
    one, half = z.dtype.type(1), z.dtype.type(0.5)
    if activation is None:
        return z
    if activation == "relu":
        return np.where(z < 0, z.dtype.type(0), z)  # NaN and -0.0 stay, as torch's clamp_min keeps them
    if activation == "gelu":
        return z * half * (one + _gelu_erf(z))
    if activation == "gelu_tanh":
        inner = z.dtype.type(GELU_TANH_BETA) * (z + z.dtype.type(GELU_TANH_KAPPA) * (z * z * z))
        return half * z * (one + np.tanh(inner))
    if activation == "silu":
        return z / (one + np.exp(-z))
    raise ValueError(f"unknown activation {check_activation(activation)!r}")


@np.errstate(all="ignore")
def gradient(activation: str | None, dy: np.ndarray, z: np.ndarray) -> np.ndarray:
    """dy ⊙ act'(z) (relu: a select on z <= 0), dy and z of one compute dtype; a new array, or dy for None."""
    one, half = z.dtype.type(1), z.dtype.type(0.5)
    if activation is None:
        return dy
    if activation == "relu":
        return np.where(z <= 0, z.dtype.type(0), dy)
    if activation == "gelu":
        cdf = half * (one + _gelu_erf(z))
        pdf = np.exp(-half * z * z) * z.dtype.type(GELU_PDF_SCALE)
        return dy * (cdf + z * pdf)
    if activation == "gelu_tanh":
        beta, kappa = z.dtype.type(GELU_TANH_BETA), z.dtype.type(GELU_TANH_KAPPA)
        z_sq = z * z
        tanh_inner = np.tanh(beta * (z + kappa * (z_sq * z)))
        left_derivative = half * (one + tanh_inner)
        right_derivative = half * z * (one - tanh_inner * tanh_inner)
        inner_derivative = beta * (one + z.dtype.type(3) * kappa * z_sq)
        return dy * (left_derivative + right_derivative * inner_derivative)
    if activation == "silu":
        sigmoid = one / (one + np.exp(-z))
        return dy * sigmoid * (one + z * (one - sigmoid))
    raise ValueError(f"unknown activation {check_activation(activation)!r}")


def forward(activation: str | None, z: np.ndarray) -> np.ndarray:
    """act(z) in z's dtype, computed as compute_dtype says (the numpy reference)."""
    check_activation(activation)
    return apply(activation, z.astype(compute_dtype(z.dtype), copy=False)).astype(z.dtype, copy=False)


def derivative(activation: str | None, z: np.ndarray) -> np.ndarray:
    """act'(z) in z's dtype (relu: 0 where z <= 0, else 1, so NaN gives 1 as in torch)."""
    check_activation(activation)
    work = z.astype(compute_dtype(z.dtype), copy=False)
    return gradient(activation, np.ones_like(work), work).astype(z.dtype, copy=False)
