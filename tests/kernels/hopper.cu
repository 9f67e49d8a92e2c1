// hopper.cu: conformance kernels for the emulator's sm_90 set (tests/test_hopper_emulation.py). Each
// runs one instruction, or a short sequence, on data placed by the test from the PTX ISA's tables
// and CuTe's layouts (written independently there), and dumps what the instruction produced.
#include "hopper_common.cuh"

// One wgmma over a warpgroup (128 threads). `image` (image_bytes) is copied to 1024-byte aligned
// dynamic shared memory (launch with image_bytes + 1024 bytes); A's matrix starts at a_offset, B's at
// b_offset in it, with the descriptors' other fields given (desc_*: start address 0). Thread t's
// accumulators start as d_in[t·N/2 ..] and end in d_out[t·N/2 ..]. With a_registers (A_FROM_REGS),
// thread t's a[4] are a_registers[4t ..]. Negative controls: wait = 0 leaves out wgmma.wait_group,
// fence = 0 the fence.proxy.async between the threads' writes of the operands and wgmma's reads.
template <int N, class T, bool A_FROM_REGS>
__global__ void wgmma_tile(const unsigned char* image, int image_bytes, int a_offset, int b_offset,
                           uint64_t desc_a, uint64_t desc_b, const unsigned* a_registers, int scale_d,
                           int scale_a, int scale_b, int trans_a, int trans_b, const float* d_in, float* d_out,
                           int wait, int fence) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    for (int i = threadIdx.x; i < image_bytes; i += blockDim.x) base[i] = image[i];
    if (fence) fence_proxy_async();
    __syncthreads();
    const int t = threadIdx.x;
    float d[N / 2];
    for (int i = 0; i < N / 2; ++i) d[i] = d_in[t * (N / 2) + i];
    desc_a |= make_descriptor(base + a_offset, 0, 0, 0);
    desc_b |= make_descriptor(base + b_offset, 0, 0, 0);
    wgmma_fence();
    if constexpr (A_FROM_REGS) {
        const uint32_t a[4] = {a_registers[4 * t], a_registers[4 * t + 1], a_registers[4 * t + 2], a_registers[4 * t + 3]};
        wgmma_rs<N, T>(d, a, desc_b, scale_d, scale_a, scale_b, trans_b);
    } else {
        wgmma_ss<N, T>(d, desc_a, desc_b, scale_d, scale_a, scale_b, trans_a, trans_b);
    }
    wgmma_commit_group();
    if (wait) wgmma_wait_group<0>();
    for (int i = 0; i < N / 2; ++i) d_out[t * (N / 2) + i] = d[i];
}

// The same with f16 accumulators (f16 operands; d_in, d_out: N / 4 registers of two halves per thread),
// A (M-major) at image byte 0 and B (K-major) at 32768.
template <int N>
__global__ void wgmma_tile_f16_accumulator(const unsigned char* image, int image_bytes, uint64_t desc_a, uint64_t desc_b,
                                           const unsigned* d_in, unsigned* d_out) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    for (int i = threadIdx.x; i < image_bytes; i += blockDim.x) base[i] = image[i];
    fence_proxy_async();
    __syncthreads();
    uint32_t d[N / 4];
    for (int i = 0; i < N / 4; ++i) d[i] = d_in[threadIdx.x * (N / 4) + i];
    desc_a |= make_descriptor(base, 0, 0, 0);
    desc_b |= make_descriptor(base + 32768, 0, 0, 0);
    wgmma_fence();
    wgmma_ss_f16<N>(d, desc_a, desc_b, 1, 1, 1, 1, 0);
    wgmma_commit_group();
    wgmma_wait_group<0>();
    for (int i = 0; i < N / 4; ++i) d_out[threadIdx.x * (N / 4) + i] = d[i];
}

// Two wgmma on the same accumulators, the second issued before the first retires (they chain), then
// the shared operands overwritten before the wait when OVERWRITE (the result must change: inputs are
// read at the wait).
template <int N, bool OVERWRITE>
__global__ void wgmma_chain(const unsigned char* image, int image_bytes, uint64_t desc_a, uint64_t desc_b, float* d_out) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    for (int i = threadIdx.x; i < image_bytes; i += blockDim.x) base[i] = image[i];
    fence_proxy_async();
    __syncthreads();
    float d[N / 2];
    for (int i = 0; i < N / 2; ++i) d[i] = 0.0f;
    desc_a |= make_descriptor(base, 0, 0, 0);
    desc_b |= make_descriptor(base + 8192, 0, 0, 0);
    wgmma_fence();
    wgmma_ss<N, __nv_bfloat16>(d, desc_a, desc_b, 1);
    wgmma_commit_group();
    wgmma_ss<N, __nv_bfloat16>(d, desc_a, desc_b, 1);
    wgmma_commit_group();
    __syncthreads();
    if (OVERWRITE)
        for (int i = threadIdx.x; i < image_bytes; i += blockDim.x) base[i] = 0;
    __syncthreads();
    wgmma_wait_group<0>();
    for (int i = 0; i < N / 2; ++i) d_out[threadIdx.x * (N / 2) + i] = d[i];
}

// One TMA tile load of the box at coords into 1024-byte aligned shared memory (+ dst_offset), completing
// on an mbarrier; the `bytes` of shared memory from there copied to out. wait = 0: the threads read
// without waiting on the barrier (negative control). Launch 64 threads with bytes + dst_offset + 1024 + 64.
template <int DIMS>
__global__ void tma_box(const __grid_constant__ CUtensorMap map, const int* coords, int bytes, int dst_offset,
                        unsigned char* out, int wait) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    uint64_t* full = reinterpret_cast<uint64_t*>(base + ((bytes + dst_offset + 63) & ~63));
    if (threadIdx.x == 0) {
        mbarrier_init(full, 1);
        fence_mbarrier_init();
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t c[DIMS];
        for (int i = 0; i < DIMS; ++i) c[i] = coords[i];
        mbarrier_arrive_expect_tx(full, uint32_t(bytes));
        tensor_load<DIMS>(base + dst_offset, &map, c, full);
    }
    if (wait)
        while (!mbarrier_try_wait_parity(full, 0)) {
        }
    for (int i = threadIdx.x; i < bytes; i += blockDim.x) out[i] = base[dst_offset + i];
}

// One TMA tile store: `image` (bytes, as shared memory should hold the box) copied to 1024-byte aligned
// shared memory, then stored to the box at coords of the map's array. Launch 32 threads.
template <int DIMS>
__global__ void tma_store_box(const __grid_constant__ CUtensorMap map, const int* coords, const unsigned char* image,
                              int bytes) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    for (int i = threadIdx.x; i < bytes; i += blockDim.x) base[i] = image[i];
    fence_proxy_async();
    __syncthreads();
    if (threadIdx.x == 0) {
        int32_t c[DIMS];
        for (int i = 0; i < DIMS; ++i) c[i] = coords[i];
        tensor_store<DIMS>(&map, c, base);
        bulk_commit_group();
        bulk_wait_group<0>();
    }
}

// A plain bulk copy global -> shared on an mbarrier, then shared -> global in a bulk group.
__global__ void bulk_round_trip(const unsigned char* in, unsigned char* out, int bytes) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    uint64_t* full = reinterpret_cast<uint64_t*>(base + ((bytes + 63) & ~63));
    if (threadIdx.x == 0) {
        mbarrier_init(full, 1);
        mbarrier_arrive_expect_tx(full, uint32_t(bytes));
        bulk_load(base, in, uint32_t(bytes), full);
        while (!mbarrier_try_wait_parity(full, 0)) {
        }
        bulk_store(out, base, uint32_t(bytes));
        bulk_commit_group();
        bulk_wait_group<0>();
    }
}

// The phase rules of one mbarrier, run by one thread: out[i] records each observation in order.
__global__ void mbarrier_phases(int* out) {
    __shared__ __align__(8) uint64_t bar;
    int n = 0;
    mbarrier_init(&bar, 2);
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 0: phase 0 is pending
    out[n++] = mbarrier_phase_complete(&bar, 1);            // 1: "phase -1" (parity 1) counts as complete
    const uint64_t token = mbarrier_arrive(&bar);
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 0: one of two arrivals
    mbarrier_expect_tx(&bar, 256);
    mbarrier_arrive(&bar);                                  // arrivals done, 256 bytes pending
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 0
    mbarrier_complete_tx(&bar, 200);
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 0: 56 bytes pending
    mbarrier_complete_tx(&bar, 56);
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 1: phase 0 complete
    out[n++] = mbarrier_phase_complete(&bar, 1);            // 0: phase 1 pending
    out[n++] = mbarrier_test_wait(&bar, token);             // 1: the token's phase (0) completed
    mbarrier_complete_tx(&bar, 64);                         // tx-count may go negative before the expect
    mbarrier_arrive_expect_tx(&bar, 64);
    out[n++] = mbarrier_phase_complete(&bar, 1);            // 0: one arrival pending
    out[n++] = mbarrier_try_wait_parity(&bar, 0);           // 1: phase 0 is done
    mbarrier_arrive(&bar);
    out[n++] = mbarrier_phase_complete(&bar, 1);            // 1
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 0: phase 2 (parity 0) pending
    mbarrier_arrive(&bar, 2);                               // an arrival with a count
    out[n++] = mbarrier_phase_complete(&bar, 0);            // 1
    mbarrier_inval(&bar);
    out[n++] = -1;
}

// A producer warp and a consumer warp pass `rounds` values through a 2-slot ring guarded by full and
// empty barriers (count 32: every lane arrives). out[r·32 + lane] = what the consumer read in round r.
// wrong_parity: the consumer waits on the full barrier with the wrong parity (negative control).
__global__ void mbarrier_ring(int rounds, int wrong_parity, int* out) {
    __shared__ __align__(8) uint64_t full[2], empty[2];
    __shared__ int slots[2][32];
    const int lane = threadIdx.x % 32;
    if (threadIdx.x == 0)
        for (int s = 0; s < 2; ++s) mbarrier_init(&full[s], 32), mbarrier_init(&empty[s], 32);
    __syncthreads();
    for (int r = 0; r < rounds; ++r) {
        const int s = r % 2;
        const uint32_t parity = uint32_t(r / 2 % 2);
        if (threadIdx.x < 32) {  // producer
            while (!mbarrier_try_wait_parity(&empty[s], parity ^ 1)) {
            }
            slots[s][lane] = 1000 * r + lane;
            mbarrier_arrive(&full[s]);
        } else {  // consumer
            while (!mbarrier_test_wait_parity(&full[s], parity ^ uint32_t(wrong_parity))) {
            }
            out[r * 32 + lane] = slots[s][lane];
            mbarrier_arrive(&empty[s]);
        }
    }
}

// Misuses that are errors: 0 a wait on an uninitialized barrier, 1 more arrivals than expected,
// 2 init with count 0, 3 setmaxnreg that is not warpgroup-uniform.
__global__ void hopper_misuse(int what) {
    __shared__ __align__(8) uint64_t bar;
    if (what == 0) mbarrier_try_wait_parity(&bar, 0);
    if (what == 1) {
        mbarrier_init(&bar, 1);
        mbarrier_arrive(&bar, 2);
    }
    if (what == 2) mbarrier_init(&bar, 0);
    if (what == 3) {
        if (threadIdx.x < 64) setmaxnreg<false, 40>();
        else setmaxnreg<false, 48>();
    }
}

// Misuses of TMA and wgmma that are errors: 0 a TMA destination not 128-byte aligned, 1 a 3-d copy with
// a 2-d map, 2 a map that cuTensorMapEncodeTiled did not make, 3 descriptors that differ across the
// warpgroup, 4 a warp of the warpgroup that never issues the wgmma the others wait for (a deadlock),
// 5 N = 12. Launch 128 threads with 4096 + 1024 bytes of dynamic shared memory.
__global__ void async_misuse(const __grid_constant__ CUtensorMap map, int what) {
    extern __shared__ unsigned char shared_bytes[];
    unsigned char* base = aligned_1024(shared_bytes);
    __shared__ __align__(8) uint64_t bar;
    if (threadIdx.x == 0) mbarrier_init(&bar, 1);
    __syncthreads();
    if (what <= 2 && threadIdx.x == 0) {
        if (what == 0) tensor_load<2>(base + 64, &map, {0, 0}, &bar);
        if (what == 1) tensor_load<3>(base, &map, {0, 0, 0}, &bar);
        if (what == 2) tensor_load<2>(base, &map, {0, 0}, &bar);
    }
    if (what >= 3) {
        float d[8];
        for (int i = 0; i < 8; ++i) d[i] = 0.0f;
        const uint64_t desc = make_descriptor(base, 16, 1024, 1) + (what == 3 && threadIdx.x == 77 ? 2 : 0);
        if (what == 5) {
            float d12[6];
            wgmma_ss<12, __nv_bfloat16>(d12, desc, desc, 1);
        } else if (what == 3 || threadIdx.x < 96) {
            wgmma_ss<16, __nv_bfloat16>(d, desc, desc, 1);
        }
        wgmma_commit_group();
        wgmma_wait_group<0>();
    }
}
