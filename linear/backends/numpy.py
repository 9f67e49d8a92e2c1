"""The numpy backend: GEMM through numpy's matmul (BLAS) on transposed views, never copies of them."""
from __future__ import annotations

import numpy as np

from .. import activations
from .base import accumulator_dtype


class NumpyBackend:
    name = "numpy"
    xp = np

    def gemm(self, a, b, c, *, trans_a, trans_b, alpha, beta, bias=None, activation=None, preact=None):
        work = accumulator_dtype(c.dtype)  # as the kernels do; numpy's float16 matmul is slower and less precise
        op_a = a.swapaxes(-1, -2) if trans_a else a  # the method: np.swapaxes adds ~1 µs of dispatch
        op_b = b.swapaxes(-1, -2) if trans_b else b
        if work != c.dtype:
            op_a, op_b = op_a.astype(work), op_b.astype(work)
        # BLAS writes straight into c unless c is an addend or needs a cast. Fresh temporaries are kept
        # to one: each large one costs page faults that can exceed the product itself on small layers.
        # The activation is applied to the sum in the accumulator dtype, as the kernels' epilogue does.
        direct = beta == 0 and work == c.dtype and activation is None
        product = np.matmul(op_a, op_b, out=c if direct else None)
        if alpha != 1:
            product *= work.type(alpha)
        if bias is not None:
            product += bias
        if not direct and beta != 0:
            product += c if beta == 1 else work.type(beta) * c
        if preact is not None:
            preact[...] = product
        if not direct:
            c[...] = activations.apply(activation, product)

    def activation_grad(self, dy, z, dz, db, *, activation, beta):
        work = accumulator_dtype(dz.dtype)
        grad = activations.gradient(activation, dy.astype(work, copy=False), z.astype(work, copy=False))
        dz[...] = grad
        if db is not None:  # the sum of the unrounded products, as the kernel adds them
            self.colsum(grad, db, beta=beta)

    def colsum(self, a, out, *, beta):
        work = accumulator_dtype(out.dtype)
        if beta == 0 and work == out.dtype:  # straight into out, as gemm writes c
            a.sum(axis=0, dtype=work, out=out)
            return
        total = a.sum(axis=0, dtype=work)
        if beta != 0:
            total += out if beta == 1 else work.type(beta) * out
        out[...] = total
