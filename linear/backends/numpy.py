"""The numpy backend: GEMM through numpy's matmul (BLAS) on the views it is given (a transposed operand
is a transposed view: BLAS takes it as a flag, never a copy). Its BLAS runs with its own thread pool.
(linear.torch runs CPU tensors on torch's own kernels instead: backends/torch_cpu.py.)
"""
from __future__ import annotations

import numpy as np

from .. import activations
from ..dtypes import accumulator_dtype


class NumpyBackend:
    name = "numpy"
    xp = np

    def gemm(self, a, b, c, *, alpha, beta, bias=None, activation=None, preact=None):
        work = accumulator_dtype(c.dtype)  # as the kernels do; numpy's float16 matmul is slower and less precise
        cast = work != c.dtype
        op_a, op_b = (a.astype(work), b.astype(work)) if cast else (a, b)
        # BLAS writes straight into c unless c is an addend or needs a cast; an addend c of the same
        # dtype with beta == 1 (gradient accumulation) takes the product in place. Fresh temporaries are
        # kept to one: each large one costs page faults that can exceed the product itself on small layers.
        # The activation is applied to the sum in the accumulator dtype, as the kernels' epilogue does.
        plain = activation is None and preact is None and not cast
        direct = beta == 0 and plain
        product = np.matmul(op_a, op_b, out=c if direct else None)
        if alpha != 1:
            product *= work.type(alpha)
        if bias is not None:
            product += bias
        if direct:
            return
        if beta == 1 and plain:
            c += product
            return
        if beta != 0:
            product += c if beta == 1 else work.type(beta) * c
        if preact is not None:
            preact[...] = product
        c[...] = product if activation is None else activations.apply(activation, product)

    def activation_grad(self, dy, z, dz, db, *, activation, beta):
        work = accumulator_dtype(dz.dtype)
        grad = activations.gradient(activation, dy.astype(work, copy=False), z.astype(work, copy=False))
        dz[...] = grad
        if db is not None:  # the sum of the unrounded products, as the kernel adds them
            self.colsum(grad, db, beta=beta)

    def colsum(self, a, out, *, beta):
        work = accumulator_dtype(out.dtype)
        if beta == 0 and work == out.dtype:  # straight into out, as gemm writes c (a has out's dtype)
            a.sum(axis=0, out=out)
            return
        total = a.sum(axis=0, dtype=work)
        if beta == 1 and work == out.dtype:  # accumulation, in place as gemm does it
            out += total
            return
        if beta != 0:
            total += out if beta == 1 else work.type(beta) * out
        out[...] = total
