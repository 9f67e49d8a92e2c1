// hopper_ptx_probe.cu: sm_90 instructions as inline PTX, for the translator's forms that hopper_gemm_ptx.cu
// does not use (tests/test_hopper_emulation.py). Same parameters as hopper.cu's wgmma_tile.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ inline unsigned char* aligned_1024(unsigned char* p) {
    return p + (-int(__cvta_generic_to_shared(p)) & 1023);
}
__device__ inline uint64_t start_field(const void* p) { return uint64_t(__cvta_generic_to_shared(p)) >> 4 & 0x3FFF; }

// m64n8k8 tf32 with A from registers: d[4], a[4]; imm-scale-a = 1, imm-scale-b = -1.
__global__ void wgmma_ptx_tf32_rs(const unsigned char* image, int image_bytes, int a_offset, int b_offset,
                                  uint64_t desc_a, uint64_t desc_b, const unsigned* a_registers, int scale_d,
                                  int scale_a, int scale_b, int trans_a, int trans_b, const float* d_in, float* d_out) {
    extern __shared__ unsigned char shared_bytes[];  // aligned below: an __align__ here would align every kernel of the directory (compiler.py)
    unsigned char* base = aligned_1024(shared_bytes);
    for (int i = threadIdx.x; i < image_bytes; i += blockDim.x) base[i] = image[i];
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    const int t = threadIdx.x;
    float d[4];
    for (int i = 0; i < 4; ++i) d[i] = d_in[t * 4 + i];
    desc_b |= start_field(base + b_offset);
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n8k8.f32.tf32.tf32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, -1;\n}\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a_registers[4 * t]), "r"(a_registers[4 * t + 1]), "r"(a_registers[4 * t + 2]),
                   "r"(a_registers[4 * t + 3]), "l"(desc_b), "r"(scale_d));
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    for (int i = 0; i < 4; ++i) d_out[t * 4 + i] = d[i];
}

// m64n16k16 f16 from descriptors, A M-major (imm-trans-a 1), imm-scale-a = -1: d[8].
__global__ void wgmma_ptx_f16_ss(const unsigned char* image, int image_bytes, int a_offset, int b_offset,
                                 uint64_t desc_a, uint64_t desc_b, const unsigned* a_registers, int scale_d,
                                 int scale_a, int scale_b, int trans_a, int trans_b, const float* d_in, float* d_out) {
    extern __shared__ unsigned char shared_bytes[];  // aligned below: an __align__ here would align every kernel of the directory (compiler.py)
    unsigned char* base = aligned_1024(shared_bytes);
    for (int i = threadIdx.x; i < image_bytes; i += blockDim.x) base[i] = image[i];
    asm volatile("fence.proxy.async;" ::: "memory");
    __syncthreads();
    const int t = threadIdx.x;
    float d[8];
    for (int i = 0; i < 8; ++i) d[i] = d_in[t * 8 + i];
    desc_a |= start_field(base + a_offset);
    desc_b |= start_field(base + b_offset);
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
    asm volatile("wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7}, %8, %9, 1, -1, 1, 1, 0;"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
                 : "l"(desc_a), "l"(desc_b));
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
    for (int i = 0; i < 8; ++i) d_out[t * 8 + i] = d[i];
}

// The mbarrier phase rules through PTX, one thread: out[i] = each observation.
__global__ void mbarrier_ptx_phases(int* out) {
    __shared__ __align__(8) uint64_t bar;
    const uint32_t b = uint32_t(__cvta_generic_to_shared(&bar));
    uint64_t token;
    uint32_t done;
    asm volatile("mbarrier.init.shared.b64 [%0], 2;" ::"r"(b) : "memory");
    asm volatile("mbarrier.arrive.shared.b64 %0, [%1];" : "=l"(token) : "r"(b) : "memory");
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], 64;" ::"r"(b) : "memory");
    asm volatile("mbarrier.arrive.release.cta.shared::cta.b64 _, [%0], 1;" ::"r"(b) : "memory");
    asm volatile("mbarrier.complete_tx.shared::cta.b64 [%0], 64;" ::"r"(b) : "memory");
    asm volatile("{\n.reg .pred p;\nmbarrier.test_wait.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}"
                 : "=r"(done) : "r"(b), "l"(token) : "memory");
    out[0] = int(done);  // 1: the token's phase completed
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], 32;" ::"r"(b) : "memory");
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(b) : "memory");
    asm volatile("mbarrier.complete_tx.shared::cta.b64 [%0], 32;" ::"r"(b) : "memory");
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.acquire.cta.shared::cta.b64 p, [%1], %2, 1000;\n"
                 "selp.u32 %0, 1, 0, p;\n}" : "=r"(done) : "r"(b), "r"(1) : "memory");
    out[1] = int(done);  // 1: phase 1 completed
    asm volatile("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(b) : "memory");
    out[2] = 7;
}

// A 1-d bulk load on an mbarrier and a 2-d TMA store in a bulk group, through PTX.
__global__ void bulk_ptx(const __grid_constant__ CUtensorMap map, const unsigned char* in, int bytes) {
    extern __shared__ unsigned char shared_bytes[];  // aligned below: an __align__ here would align every kernel of the directory (compiler.py)
    unsigned char* base = aligned_1024(shared_bytes);
    __shared__ __align__(8) uint64_t bar;
    const uint32_t b = uint32_t(__cvta_generic_to_shared(&bar)), s = uint32_t(__cvta_generic_to_shared(base));
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(b) : "memory");
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(b), "r"(bytes) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
                 ::"r"(s), "l"(in), "r"(bytes), "r"(b) : "memory");
    asm volatile("{\n.reg .pred p;\nW:\nmbarrier.try_wait.parity.shared::cta.b64 p, [%0], 0;\n@!p bra W;\n}" ::"r"(b)
                 : "memory");
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.tile.bulk_group [%0, {%1, %2}], [%3];"
                 ::"l"(&map), "r"(0), "r"(0), "r"(s) : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
}
