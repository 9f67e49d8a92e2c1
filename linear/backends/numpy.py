"""The numpy backend: GEMM through numpy's matmul (BLAS) on the views it is given (a transposed operand
is a transposed view: BLAS takes it as a flag, never a copy)."""
from __future__ import annotations

import numpy as np

from ..dtypes import accumulator_dtype


class NumpyBackend:
    name = "numpy"
    xp = np

    def gemm(self, a, b, c, *, alpha, beta, bias=None):
        work = accumulator_dtype(c.dtype)  # as the kernels do; numpy's float16 matmul is slower and less precise
        op_a, op_b = (a.astype(work), b.astype(work)) if work != c.dtype else (a, b)
        # BLAS writes straight into c unless c is an addend or needs a cast. Fresh temporaries are kept
        # to one: each large one costs page faults that can exceed the product itself on small layers.
        direct = beta == 0 and work == c.dtype
        product = np.matmul(op_a, op_b, out=c if direct else None)
        if alpha != 1:
            product *= work.type(alpha)
        if bias is not None:
            product += bias
        if not direct:
            if beta != 0:
                product += c if beta == 1 else work.type(beta) * c
            c[...] = product

    def colsum(self, a, out, *, beta):
        work = accumulator_dtype(out.dtype)
        if beta == 0 and work == out.dtype:  # straight into out, as gemm writes c
            a.sum(axis=0, dtype=work, out=out)
            return
        total = a.sum(axis=0, dtype=work)
        if beta != 0:
            total += out if beta == 1 else work.type(beta) * out
        out[...] = total
