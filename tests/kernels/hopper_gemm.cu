// hopper_gemm.cu: a GEMM of the Hopper shape, C (MxN, f32, row-major) = A (MxK) · B (KxN), bf16, for
// the emulator's end-to-end test (not one of our kernels: a test that TMA, mbarriers and wgmma work
// together as a real kernel uses them).
//
// Block: 384 threads = 3 warpgroups. Warpgroup 0 is the producer: its warp 0, lane 0 issues the TMA
// loads; the others only lower their registers. Warpgroups 1 and 2 consume: each owns 64 rows of the
// block's 128 x BN tile of C and issues one m64nBNk16 wgmma per 16 of K.
// Tiles: BM = 128, BK = 64 (128 bytes of bf16: one 128B-swizzle row), STAGES slots in a ring:
//   A slot   128 x 64, K-major, 128B swizzle (TMA box {64, 128}); the descriptor of consumer c starts
//            at row 64c, +32 bytes per k16 step; SBO = 1024 (8 rows of 128 bytes)
//   B slot   K-major (B given as Bt, N x K): BN x 64, box {64, BN}, like A
//            MN-major (B given as K x N):     BN / 64 boxes {64, 64} of 64 rows of k, each 8 KiB: the
//            descriptor's LBO = 8192 (the next 64 columns), SBO = 1024 (the next 8 rows of k), +2048
//            bytes per k16 step (16 rows of 128 bytes)
// full[s] (count 1: the producer's arrive.expect_tx, then the TMA bytes) and empty[s] (count 2: one
// arrival per consumer warpgroup once its wgmma of the slot have retired) guard each slot; round r of
// slot s waits on parity r % 2 (full) and r % 2 ^ 1 (empty: its first wait passes at once).
// skip (negative controls): 1 the consumers skip the full-barrier wait, 2 the producer skips the
// empty-barrier wait (it overwrites slots the consumers may still read).
#include "hopper_common.cuh"

namespace {
constexpr int BM = 128, BK = 64, STAGES = 4, THREADS = 384;
}

template <int BN, bool B_MN_MAJOR>
__global__ void __launch_bounds__(THREADS) hopper_gemm(const __grid_constant__ CUtensorMap map_a,
                                                       const __grid_constant__ CUtensorMap map_b, float* c, int m,
                                                       int n, int k, int skip) {
    static_assert(BN % 64 == 0 && BN <= 256, "BN: 64, 128, 192 or 256");
    constexpr int A_BYTES = BM * BK * 2, B_BYTES = BN * BK * 2, SLOT = A_BYTES + B_BYTES;
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* tiles = aligned_1024(shared_bytes);
    uint64_t* full = reinterpret_cast<uint64_t*>(tiles + STAGES * SLOT);
    uint64_t* empty = full + STAGES;
    const int warpgroup = threadIdx.x / 128, m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int k_tiles = (k + BK - 1) / BK;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) mbarrier_init(&full[s], 1), mbarrier_init(&empty[s], 2);
        fence_mbarrier_init();
    }
    __syncthreads();

    if (warpgroup == 0) {
        setmaxnreg<false, 40>();
        if (threadIdx.x != 0) return;
        for (int kt = 0; kt < k_tiles; ++kt) {
            const int s = kt % STAGES;
            if (skip != 2)
                while (!mbarrier_try_wait_parity(&empty[s], uint32_t(kt / STAGES % 2) ^ 1)) {
                }
            unsigned char* a = tiles + s * SLOT;
            unsigned char* b = a + A_BYTES;
            mbarrier_arrive_expect_tx(&full[s], SLOT);
            tensor_load<2>(a, &map_a, {kt * BK, m0}, &full[s]);
            if (B_MN_MAJOR) {
                for (int j = 0; j < BN / 64; ++j) tensor_load<2>(b + j * 64 * BK * 2, &map_b, {n0 + 64 * j, kt * BK}, &full[s]);
            } else {
                tensor_load<2>(b, &map_b, {kt * BK, n0}, &full[s]);
            }
        }
        return;
    }

    setmaxnreg<true, 232>();
    const int consumer = warpgroup - 1;
    float acc[BN / 2];
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int s = kt % STAGES;
        if (skip != 1)
            while (!mbarrier_try_wait_parity(&full[s], uint32_t(kt / STAGES % 2))) {
            }
        const unsigned char* a = tiles + s * SLOT + consumer * 64 * BK * 2;
        const unsigned char* b = tiles + s * SLOT + A_BYTES;
        wgmma_fence();
        for (int kk = 0; kk < BK / 16; ++kk) {
            const uint64_t desc_a = make_descriptor(a + kk * 32, 16, 1024, 1);
            const uint64_t desc_b = B_MN_MAJOR ? make_descriptor(b + kk * 2048, 64 * BK * 2, 1024, 1)
                                               : make_descriptor(b + kk * 32, 16, 1024, 1);
            wgmma_ss<BN, __nv_bfloat16>(acc, desc_a, desc_b, 1, 1, 1, 0, B_MN_MAJOR);
        }
        wgmma_commit_group();
        wgmma_wait_group<0>();
        if (threadIdx.x % 128 == 0) mbarrier_arrive(&empty[s]);
    }
    // Thread t of the warpgroup holds rows 16w + g + 8·((i/2)%2), columns 8·(i/4) + 2q + i%2.
    const int t = threadIdx.x % 128, w = t / 32, g = t % 32 / 4, q = t % 4;
    for (int i = 0; i < BN / 2; ++i) {
        const int row = m0 + consumer * 64 + 16 * w + g + 8 * (i / 2 % 2), col = n0 + 8 * (i / 4) + 2 * q + i % 2;
        if (row < m && col < n) c[size_t(row) * n + col] = acc[i];
    }
}
