// Deterministic reductions: column sums (the bias gradient db = Σ_rows dY) and the split-K sum.
// No floating-point atomics: every sum runs in a fixed order, so results are bitwise repeatable.
//
// Column sums, out = Σ_r A[r, :] + beta · out, in two passes:
//
//               cols (one thread each, blockDim.x per block)
//            ┌────────────────────────┐
//   chunk 0  │ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ │ ─→ partials[0, :]   pass 1, linear_colsum_partial:
//   chunk 1  │ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ │ ─→ partials[1, :]   grid = (⌈cols/blockDim⌉, chunks);
//     …      │                        │        …            each thread adds rows_per_chunk rows
//   chunk c  │ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ ↓ │ ─→ partials[c, :]   of its column, top to bottom
//            └────────────────────────┘
//   pass 2, linear_sum_splits with M = 1: out = Σ_chunks partials (in chunk order) + beta · out.
//
// linear_sum_splits is also the second half of a split-K GEMM (gemm.cu): C = act(alpha · Σ_z P[z] +
// beta · C (+ bias)), P the [splits, M, N] workspace of partial products, with Z (the argument of act)
// stored beside C when asked: the GEMM's epilogue (kernels/epilogue.cuh) runs here, after the fixed-order sum.
//
// The backward pass through an activation is pass 1 with the activation's gradient folded in: each thread
// reads dY and Z down its column, writes dZ = dY ⊙ act'(Z) and adds dZ into its chunk's partial sum; pass 2
// makes db = Σ_rows dZ of the partials as for any column sum. So dZ and db cost one read of dY and Z and one
// write of dZ. It is a pass of its own rather than the prologue of the dX GEMM (dZ · Wᵀ) because:
//   - dZ feeds two GEMMs (dX = dZ · Wᵀ and dW = Xᵀ · dZ) and db: in a GEMM prologue each would recompute it,
//     and each GEMM reads every element of dY once per tile along its other side (⌈F/BN⌉ times for dX,
//     ⌈F/BM⌉ for dW), so Z would be read and act' (erff, expf) evaluated that many times;
//   - the tensor-core kernel moves its tiles from global to shared memory by cp.async, never through
//     registers, so there is no point where an element could be multiplied on its way in without an extra
//     shared-memory pass inside the pipeline;
//   - db needs a sum over all rows, which a GEMM's blocks (tiles of rows) would have to combine through a
//     workspace and a second pass anyway, to stay deterministic.
// What the separate pass costs over a fused prologue is the write of dZ and its re-reads by the GEMMs in place
// of dY's: the same bytes the GEMMs read either way.
#include "common.cuh"
#include "epilogue.cuh"

// partials[chunk, col] = Σ g(r, col) for r in this chunk's rows (an empty chunk gives 0), where
// g = A[r, col] without an activation (a column sum: db = Σ_rows dY), and with one (A = dY)
// g = dY ⊙ act'(Z), also written to dZ[r, col] (dZ row-major, leading dimension cols). Z and dZ are
// unused stand-ins without an activation.
template <typename T>
__global__ void linear_colsum_partial(int rows, int cols, int rows_per_chunk,
                                      const T* __restrict__ A, long long lda,
                                      acc_t<T>* __restrict__ partials,
                                      int activation, const T* __restrict__ Z, long long ldz, T* __restrict__ dZ) {
    using Acc = acc_t<T>;
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    const int first = blockIdx.y * rows_per_chunk;
    const int last = rows - first < rows_per_chunk ? rows : first + rows_per_chunk;
    Acc sum = Acc(0);
    const T* a = A + first * lda + col;
    if (activation == ACTIVATION_NONE) {
        for (int r = first; r < last; ++r, a += lda) sum += to_acc(*a);
    } else {
        const T* z = Z + first * ldz + col;
        T* dz = dZ + (long long)first * cols + col;
        for (int r = first; r < last; ++r, a += lda, z += ldz, dz += cols) {
            const Acc g = activation_grad(activation, to_acc(*a), to_acc(*z));
            *dz = to_element<T>(g);
            sum += g;
        }
    }
    partials[blockIdx.y * (long long)cols + col] = sum;
}

// z = alpha · Σ_{s < splits} partials[s, m, n] + beta · C[m, n] (+ bias[n]), summed in s order;
// C[m, n] = act(z), and preact[m, n] = z when store_preact (preact with C's leading dimension).
// C is read only when beta != 0. A grid-stride loop covers M·N elements whatever the grid.
template <typename T>
__global__ void linear_sum_splits(int M, int N, int splits, const acc_t<T>* __restrict__ partials,
                                  T* __restrict__ C, long long ldc, acc_t<T> alpha, acc_t<T> beta,
                                  const T* __restrict__ bias, int add_bias,
                                  int activation, T* __restrict__ preact, int store_preact) {
    using Acc = acc_t<T>;
    const long long count = (long long)M * N;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count;
         e += (long long)gridDim.x * blockDim.x) {
        Acc sum = Acc(0);
        for (int s = 0; s < splits; ++s) sum += partials[s * count + e];
        const long long m = e / N, n = e % N;
        Acc value = alpha * sum;
        if (beta != Acc(0)) value += beta * to_acc(C[m * ldc + n]);
        if (add_bias) value += to_acc(bias[n]);
        store_activated(C + m * ldc + n, preact + m * ldc + n, store_preact, activation, value);
    }
}
