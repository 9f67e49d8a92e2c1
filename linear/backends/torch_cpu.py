"""linear.torch's CPU products: the numpy backend's arithmetic on torch's own CPU kernels, on the tensors
themselves.

When linear.torch runs CPU tensors on the "numpy" backend (the default), it hands them to this backend
instead of viewing them as numpy arrays: the products are torch's (torch.addmm and torch.mm, torch.sum,
torch's activation functions and their derivatives), so they run on torch's BLAS with torch's thread count
(torch.set_num_threads is the one knob), and no tensor crosses into numpy on the way. numpy arrays keep the
numpy backend (numpy.py); this one is not in the registry and takes only what linear.torch passes.

What it computes is what the numpy backend computes: the Backend interface of base.py on torch tensors of
one dtype (float32, float64, float16, bfloat16), half types multiplied, summed and activated in float32
and rounded once into the result. It takes matrices (2-D tensors, any strides: a transposed weight is a
view, which torch's BLAS takes as a flag); linear.torch flattens leading dimensions before it calls.
Beside the interface, product computes gemm's common case (its activation included) into a new tensor,
with torch's differentiable ops only, so that torch's autograd can differentiate it.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..activations import SQRT1_2

_HALF = (torch.float16, torch.bfloat16)


def _gelu(z: torch.Tensor) -> torch.Tensor:
    """z·½(1 + erf(z/√2)), as aten's scalar kernel and ours compute it (torch 2.13's vectorised float32
    F.gelu gives NaN at +inf)."""
    return z * 0.5 * (1 + torch.erf(z * SQRT1_2))


# act(z) as torch computes it (linear.torch's activations are torch's F.relu, F.gelu and F.silu)
_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "gelu": _gelu, "gelu_tanh": functools.partial(F.gelu, approximate="tanh"), "silu": F.silu}


def _accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype products and sums are carried in: float32 for the half types, else the dtype itself."""
    return torch.float32 if dtype in _HALF else dtype


def _to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t if t.dtype is dtype else t.to(dtype)  # .to costs ~0.9 µs even when it changes nothing


def activation_gradient(activation: str, dy: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """dy ⊙ act'(z) with torch's own ops, differentiable (linear.torch's double backward uses it too). silu's
    is written out, as aten's kernel computes it: aten's silu_backward has no derivative."""
    if activation == "relu":
        return torch.ops.aten.threshold_backward(dy, z, 0)
    if activation in ("gelu", "gelu_tanh"):
        return torch.ops.aten.gelu_backward(dy, z, approximate="none" if activation == "gelu" else "tanh")
    sigmoid = torch.sigmoid(z)
    return dy * sigmoid * (1 + z * (1 - sigmoid))


class TorchCpuBackend:
    name = "torch"
    xp = torch

    def gemm(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *, alpha: float, beta: float,
             bias: Optional[torch.Tensor] = None, activation: Optional[str] = None,
             preact: Optional[torch.Tensor] = None) -> None:
        work = _accumulator(c.dtype)
        # The sum goes straight into c unless an activation, a preact or a cast comes after it.
        direct = activation is None and preact is None and work is c.dtype
        a, b = _to(a, work), _to(b, work)
        out = c if direct else None
        if beta != 0:  # c is an addend (gradient accumulation): addmm's beta·c, in place when direct
            z = torch.addmm(c if direct else c.to(work), a, b, beta=beta, alpha=alpha, out=out)
            if bias is not None:
                z += bias
        elif bias is not None:  # the bias as addmm's addend, one call as in torch's F.linear
            z = torch.addmm(_to(bias, work), a, b, alpha=alpha, out=out)
        else:  # c's contents are ignored (they may be NaN)
            z = torch.mm(a, b, out=out)
            if alpha != 1:
                z *= alpha
        if direct:
            return
        if preact is not None:
            preact.copy_(z)
        c.copy_(z if activation is None else _ACTIVATIONS[activation](z))

    def product(self, a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor] = None,
                activation: Optional[str] = None) -> torch.Tensor:
        """act(a·b + bias) (bias None: no addend; activation None: none) into a new tensor of a's dtype: gemm's
        common case (alpha 1, beta 0, no preact), with the same arithmetic. Its ops are differentiable (the
        casts too), so linear.torch's eager CPU path calls it under torch's autograd, which then computes
        the gradients with the same arithmetic: half types in float32, rounded once."""
        dtype = a.dtype
        work = _accumulator(dtype)
        if work is not dtype:
            a, b = a.to(work), b.to(work)
        z = torch.mm(a, b) if bias is None else torch.addmm(_to(bias, work), a, b)
        if activation is not None:
            z = _ACTIVATIONS[activation](z)
        return z if work is dtype else z.to(dtype)

    def activation_grad(self, dy: torch.Tensor, z: torch.Tensor, dz: torch.Tensor, db: Optional[torch.Tensor], *,
                        activation: str, beta: float) -> None:
        work = _accumulator(dz.dtype)
        grad = activation_gradient(activation, _to(dy, work), _to(z, work))
        dz.copy_(grad)
        if db is not None:  # the sum of the unrounded products, as the kernel adds them
            self.colsum(grad, db, beta=beta)

    def colsum(self, a: torch.Tensor, out: torch.Tensor, *, beta: float) -> None:
        work = _accumulator(out.dtype)
        if beta == 0 and work is out.dtype:  # straight into out
            torch.sum(a, 0, out=out)
            return
        total = torch.sum(a, 0, dtype=work)
        if beta != 0:
            total.add_(out, alpha=beta)
        out.copy_(total)
