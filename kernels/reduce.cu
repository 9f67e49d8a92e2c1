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
// linear_sum_splits is also the second half of a split-K GEMM (gemm.cu): C = alpha · Σ_z P[z] +
// beta · C (+ bias), P the [splits, M, N] workspace of partial products.
#include "common.cuh"

// partials[chunk, col] = Σ A[r, col] for r in this chunk's rows (an empty chunk gives 0).
template <typename T>
__global__ void linear_colsum_partial(int rows, int cols, int rows_per_chunk,
                                      const T* __restrict__ A, long long lda,
                                      acc_t<T>* __restrict__ partials) {
    using Acc = acc_t<T>;
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    const int first = blockIdx.y * rows_per_chunk;
    const int last = rows - first < rows_per_chunk ? rows : first + rows_per_chunk;
    Acc sum = Acc(0);
    const T* a = A + first * lda + col;
    for (int r = first; r < last; ++r, a += lda) sum += to_acc(*a);
    partials[blockIdx.y * (long long)cols + col] = sum;
}

// C[m, n] = alpha · Σ_{z < splits} partials[z, m, n] + beta · C[m, n] (+ bias[n]), summed in z order.
// C is read only when beta != 0. A grid-stride loop covers M·N elements whatever the grid.
template <typename T>
__global__ void linear_sum_splits(int M, int N, int splits, const acc_t<T>* __restrict__ partials,
                                  T* __restrict__ C, long long ldc, acc_t<T> alpha, acc_t<T> beta,
                                  const T* __restrict__ bias, int add_bias) {
    using Acc = acc_t<T>;
    const long long count = (long long)M * N;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < count;
         e += (long long)gridDim.x * blockDim.x) {
        Acc sum = Acc(0);
        for (int z = 0; z < splits; ++z) sum += partials[z * count + e];
        const long long m = e / N, n = e % N;
        Acc value = alpha * sum;
        if (beta != Acc(0)) value += beta * to_acc(C[m * ldc + n]);
        if (add_bias) value += to_acc(bias[n]);
        C[m * ldc + n] = to_element<T>(value);
    }
}
