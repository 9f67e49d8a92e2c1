// A small tiled SGEMM, C = A·B with row-major A (M x K), B (K x N), C (M x N), for the emulator's
// own tests: each block computes a BM x BN tile of C through BK-wide shared-memory tiles, each
// thread a TM x TN sub-tile in registers. Two barriers per tile step make it a useful schedule test.
template <int BM, int BN, int BK, int TM, int TN>
__global__ void sgemm(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                      int M, int N, int K) {
    constexpr int kThreads = (BM / TM) * (BN / TN);
    __shared__ float As[BK][BM];  // transposed, so a thread's TM values of A are contiguous
    __shared__ float Bs[BK][BN];
    const int tid = threadIdx.x, row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    const int ty = tid / (BN / TN), tx = tid % (BN / TN);
    float acc[TM][TN] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        for (int i = tid; i < BM * BK; i += kThreads) {
            const int r = i / BK, c = i % BK;
            As[c][r] = row0 + r < M && k0 + c < K ? A[(row0 + r) * K + k0 + c] : 0.0f;
        }
        for (int i = tid; i < BK * BN; i += kThreads) {
            const int r = i / BN, c = i % BN;
            Bs[r][c] = k0 + r < K && col0 + c < N ? B[(k0 + r) * N + col0 + c] : 0.0f;
        }
        __syncthreads();
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
            for (int m = 0; m < TM; ++m) a[m] = As[k][ty * TM + m];
            for (int n = 0; n < TN; ++n) b[n] = Bs[k][tx * TN + n];
            for (int m = 0; m < TM; ++m)
                for (int n = 0; n < TN; ++n) acc[m][n] = fmaf(a[m], b[n], acc[m][n]);
        }
        __syncthreads();
    }
    for (int m = 0; m < TM; ++m)
        for (int n = 0; n < TN; ++n) {
            const int r = row0 + ty * TM + m, c = col0 + tx * TN + n;
            if (r < M && c < N) C[r * N + c] = acc[m][n];
        }
}
