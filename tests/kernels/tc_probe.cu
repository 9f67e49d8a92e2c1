// tc_probe.cu: each tensor-core primitive of kernels/ptx.cuh run once by one warp, its inputs and
// outputs placed by the PTX ISA's fragment tables as written here (independently of tc_gemm.cu and of
// the emulator), so that tests/test_tensor_cores.py can hold the emulator and a GPU to the ISA.
// Launch each with one block of 32 threads.
#include "ptx.cuh"

template <typename T> __device__ unsigned short bits_of(T v);
template <> __device__ unsigned short bits_of<__half>(__half v) { return __half_as_ushort(v); }
template <> __device__ unsigned short bits_of<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }

template <typename T> __device__ unsigned pack(T low, T high) {
    return bits_of(low) | unsigned(bits_of(high)) << 16;
}

// `tiles`: N 8x8 matrices of 16-bit values, row-major, one after the other. Lane i gives the address of
// row i % 8 of matrix i / 8 (lanes past 8·N repeat the first matrices). out[lane·N + j] = register j.
template <int N, bool TRANS>
__global__ void probe_ldmatrix(const unsigned short* tiles, unsigned* out) {
    __shared__ __align__(16) unsigned short shared_tiles[4 * 64];
    for (int i = threadIdx.x; i < N * 64; i += 32) shared_tiles[i] = tiles[i];
    __syncthreads();
    const int lane = threadIdx.x;
    unsigned r[N];
    ldmatrix<N, TRANS>(r, shared_tiles + (lane / 8 % N) * 64 + (lane % 8) * 8);
    for (int j = 0; j < N; ++j) out[lane * N + j] = r[j];
}

// d = a·b + c for one m16n8k16: a 16x16, b 16x8, c and d 16x8, all row-major. g = lane / 4, t = lane % 4:
//   a[i]: row g + 8·(i%2), columns 2t + 8·(i/2) and the next;  b[i]: rows 2t + 8·i and the next, column g;
//   c[i], d[i]: row g + 8·(i/2), column 2t + i%2.
template <typename T>
__global__ void probe_mma_m16n8k16(const T* a, const T* b, const float* c, float* d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned fa[4], fb[2];
    float fd[4];
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
        fa[i] = pack(a[row * 16 + col], a[row * 16 + col + 1]);
    }
    for (int i = 0; i < 2; ++i) fb[i] = pack(b[(2 * t + 8 * i) * 8 + g], b[(2 * t + 8 * i + 1) * 8 + g]);
    for (int i = 0; i < 4; ++i) fd[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    mma_m16n8k16<T>(fd, fa, fb);
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = fd[i];
}

// d = a·b + c for one TF32 m16n8k8: a 16x8, b 8x8, c and d 16x8, row-major:
//   a[i]: row g + 8·(i%2), column t + 4·(i/2);  b[i]: row t + 4·i, column g;  c, d as above.
__global__ void probe_mma_m16n8k8_tf32(const float* a, const float* b, const float* c, float* d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    unsigned fa[4], fb[2];
    float fd[4];
    for (int i = 0; i < 4; ++i) fa[i] = to_tf32(a[(g + 8 * (i % 2)) * 8 + t + 4 * (i / 2)]);
    for (int i = 0; i < 2; ++i) fb[i] = to_tf32(b[(t + 4 * i) * 8 + g]);
    for (int i = 0; i < 4; ++i) fd[i] = c[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2];
    mma_m16n8k8_tf32(fd, fa, fb);
    for (int i = 0; i < 4; ++i) d[(g + 8 * (i / 2)) * 8 + 2 * t + i % 2] = fd[i];
}

// Thread 0 copies src[0..3] (group 0) and 8 bytes, src[4..5], zero-filled to 16 (group 1) into
// shared memory, and records the 8 shared floats after cp.async.wait_group 1 (out[0..7]: group 0 has
// landed, group 1 may not have) and after wait_group 0 (out[8..15]: both have).
__global__ void probe_cp_async(const float* src, float* out) {
    __shared__ __align__(16) float staged[8];
    if (threadIdx.x != 0) return;
    cp_async_16(staged, src, 16);
    cp_async_commit();
    cp_async_16(staged + 4, src + 4, 8);
    cp_async_commit();
    cp_async_wait<1>();
    for (int i = 0; i < 8; ++i) out[i] = staged[i];
    cp_async_wait<0>();
    for (int i = 0; i < 8; ++i) out[8 + i] = staged[i];
}

__global__ void probe_to_tf32(const float* x, unsigned* out, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = to_tf32(x[i]);
}
