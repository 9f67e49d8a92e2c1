// ptx_sm90.cuh: the sm_90a (Hopper) instructions of wgmma_gemm.cu, one inline-PTX wrapper each, in the
// style of ptx.cuh, in namespace sm90 (their short names are common ones).
// Shared-memory operands are 32-bit .shared addresses (shared_address(p) of ptx.cuh's helpers below).
//
//   mbarrier_init(bar, count)            mbarrier.init: a barrier whose phases complete after `count`
//                                        arrivals (and the transaction bytes that are expected of them)
//   mbarrier_arrive(bar)                 mbarrier.arrive: one arrival on the current phase
//   mbarrier_arrive_expect_tx(bar, n)    mbarrier.arrive.expect_tx: one arrival, and n bytes that TMA
//                                        must still deliver (complete_tx) before the phase completes
//   mbarrier_try_wait_parity(bar, p)     mbarrier.try_wait.parity: true once the phase of parity p has
//                                        completed (p = the parity of the phase waited for; a fresh
//                                        barrier is in phase 0, so waiting for parity 1 returns at once);
//                                        may suspend the thread for a while first. The caller loops.
//   fence_mbarrier_init()                fence.mbarrier_init.release.cluster: the initialisations before
//                                        it are visible to other threads' (and TMA's) barrier operations
//   fence_proxy_async_shared()           fence.proxy.async.shared::cta: generic-proxy writes to shared
//                                        memory before it are ordered before async-proxy (TMA, wgmma)
//                                        accesses after it
//   tma_load_3d(dst, map, x, y, z, bar)  cp.async.bulk.tensor.3d ... .mbarrier::complete_tx::bytes: the box
//                                        of `map` at coordinates (x innermost, y, z) into shared memory at
//                                        dst, elements outside the tensor as zeros, its bytes counted on
//                                        bar when they have landed
//   prefetch_tensormap(map)              prefetch.tensormap: the descriptor into the TMA unit's cache
//   setmaxnreg_inc<N>(), _dec<N>()       setmaxnreg.inc/.dec.sync.aligned.u32 N: this warpgroup's threads
//                                        now own N registers each (every warp of the warpgroup executes it)
//   wgmma_fence()                        wgmma.fence: register and shared-memory accesses before it are
//                                        ordered before the wgmma.mma_async after it
//   wgmma_commit_group()                 wgmma.commit_group: closes the group of mma_async issued since the
//                                        last commit
//   wgmma_wait_group<N>()                wgmma.wait_group N: waits until at most N committed groups are in
//                                        flight; their accumulators and shared operands are free again
//   fence_accumulators(d)                no instruction: pins the accumulators around the asynchronous
//                                        wgmma (see below)
//   wgmma_m64<T, N, TA, TB>(d, a, b, scale_d)
//                                        wgmma.mma_async m64nNkK, f32 += T·T (T = __half, __nv_bfloat16 with
//                                        K = 16; float read as TF32 with K = 8: WgmmaOperand<T>::K, 32 bytes
//                                        of K either way): D (64 x N, d[N/2] per thread) = A·B + (scale_d ?
//                                        D : 0); A (64 x K) and B (K x N) from shared-memory descriptors
//                                        (make_descriptor); TA / TB: A or B is MN-major in shared memory
//                                        (imm-trans-a/b = 1; 16-bit types only: TF32 operands are K-major)
//   make_descriptor(addr, lbo, sbo, swizzle)
//                                        the 64-bit wgmma matrix descriptor (PTX ISA "Matrix Descriptor
//                                        Format"): bits 0-13 address >> 4, 16-29 LBO >> 4, 32-45 SBO >> 4,
//                                        62-63 the swizzle (SWIZZLE_128B = 1); base offset 0 (the tiles
//                                        start on 1024-byte boundaries)
//
// The emulator runs these asm statements as written: its inline-PTX translator turns each into calls of
// kernels/emu/emu_hopper.h, which models the instructions per the PTX ISA.
//
// wgmma accumulator layout (PTX ISA, "wgmma register fragments", m64nNk16 and m64nNk8 f32): thread t of the
// warpgroup, w = t / 32, g = t % 32 / 4, q = t % 4, holds d[i] = D(16w + g + 8·(i / 2 % 2), 8·(i / 4) +
// 2q + i % 2), i < N / 2: per 8 columns the four values of mma.sync's m16n8 tile.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifdef __CUDACC_RTC__
// NVRTC has no C library headers, which cuda.h includes: the tensor map as the driver declares it (an
// opaque 128 bytes, 64-byte aligned; the same type name, so the kernels' mangled names are the same).
typedef struct alignas(64) CUtensorMap_st {
    unsigned long long opaque[16];
} CUtensorMap;
#else
#include <cuda.h>  // CUtensorMap
#endif

namespace sm90 {

constexpr unsigned SWIZZLE_128B = 1;  // the descriptor's swizzle field for the 128-byte swizzle

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

using Descriptor = unsigned long long;  // a wgmma matrix descriptor

__device__ __forceinline__ Descriptor make_descriptor(unsigned address, unsigned lbo, unsigned sbo, unsigned swizzle) {
    return Descriptor((address >> 4) & 0x3FFF) | Descriptor((lbo >> 4) & 0x3FFF) << 16 |
           Descriptor((sbo >> 4) & 0x3FFF) << 32 | Descriptor(swizzle) << 62;
}


__device__ __forceinline__ void mbarrier_init(unsigned bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(unsigned bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}

__device__ __forceinline__ void mbarrier_arrive_expect_tx(unsigned bar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}

__device__ __forceinline__ bool mbarrier_try_wait_parity(unsigned bar, unsigned parity) {
    unsigned done;
    asm volatile(
        "{\n.reg .pred p;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
    return done != 0;
}

__device__ __forceinline__ void fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

__device__ __forceinline__ void fence_proxy_async_shared() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

__device__ __forceinline__ void tma_load_3d(unsigned dst, const CUtensorMap* map, int x, int y, int z, unsigned bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(reinterpret_cast<unsigned long long>(map)), "r"(x), "r"(y), "r"(z), "r"(bar)
        : "memory");
}

__device__ __forceinline__ void prefetch_tensormap(const CUtensorMap* map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(reinterpret_cast<unsigned long long>(map)) : "memory");
}

template <unsigned N>
__device__ __forceinline__ void setmaxnreg_inc() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes a multiple of 8 in 24 .. 256");
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

template <unsigned N>
__device__ __forceinline__ void setmaxnreg_dec() {
    static_assert(N % 8 == 0 && N >= 24 && N <= 256, "setmaxnreg takes a multiple of 8 in 24 .. 256");
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

__device__ __forceinline__ void wgmma_commit_group() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// No instruction: an empty asm that claims to read and write every accumulator, so that the compiler
// neither moves other uses of them across a wgmma_fence / wgmma_wait_group nor copies them in between.
template <int R>
__device__ __forceinline__ void fence_accumulators(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

template <int N>
__device__ __forceinline__ void wgmma_wait_group() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

// An operand type's k per wgmma (32 bytes of K: 16 halves or 8 TF32 values) and which type it is.
template <typename T> struct WgmmaOperand;
template <> struct WgmmaOperand<__nv_bfloat16> { static constexpr int K = 16; static constexpr bool BF16 = true; };
template <> struct WgmmaOperand<__half> { static constexpr int K = 16; static constexpr bool BF16 = false; };
template <> struct WgmmaOperand<float> { static constexpr int K = 8; static constexpr bool BF16 = false; };  // TF32

// The asm operands of one wgmma with R = N / 2 accumulators: %0 .. %R-1 are d[0 .. R-1] ("+f"), then
// desc_a, desc_b, scale_d and the two imm-trans values (%R .. %R+4). Written once per R; the statement
// (SM90_WGMMA) is written once for every type and N.
#define SM90_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
    "+f"(d[i + 6]), "+f"(d[i + 7])
#define SM90_D_64 SM90_D8(0), SM90_D8(8), SM90_D8(16), SM90_D8(24), SM90_D8(32), SM90_D8(40), SM90_D8(48), SM90_D8(56)
#define SM90_D_128 SM90_D_64, SM90_D8(64), SM90_D8(72), SM90_D8(80), SM90_D8(88), SM90_D8(96), SM90_D8(104), \
    SM90_D8(112), SM90_D8(120)
#define SM90_REGS_64                                                                                         \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                 \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                       \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                       \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define SM90_REGS_128                                                                                        \
    SM90_REGS_64 ", "                                                                                        \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                       \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                       \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "            \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define SM90_SCALE_D_64 "%66"
#define SM90_SCALE_D_128 "%130"
#define SM90_DESCRIPTORS_64 "%64, %65"
#define SM90_DESCRIPTORS_128 "%128, %129"
#define SM90_TRANS_64 ", %67, %68"
#define SM90_TRANS_128 ", %131, %132"

// wgmma.mma_async.sync.aligned.m64n<N>k<K>.f32.<TYPE>.<TYPE> with R = N / 2 accumulators; TRANS: the
// imm-trans operands (SM90_TRANS_R for the 16-bit types; none for tf32, which takes K-major operands only).
#define SM90_WGMMA(R, N, K, TYPE, TRANS)                                                                     \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SM90_SCALE_D_##R ", 0;\n"                              \
                 "wgmma.mma_async.sync.aligned.m64n" #N "k" #K ".f32." #TYPE "." #TYPE " {" SM90_REGS_##R      \
                 "}, " SM90_DESCRIPTORS_##R ", p, 1, 1" TRANS ";\n}\n"                                         \
                 : SM90_D_##R                                                                                \
                 : "l"(desc_a), "l"(desc_b), "r"(scale_d), "n"(TRANS_A ? 1 : 0), "n"(TRANS_B ? 1 : 0))

// The statement for the operand type T (bf16, f16 or float as tf32).
#define SM90_WGMMA_OF_TYPE(R, N)                                                                             \
    if constexpr (WgmmaOperand<T>::BF16) SM90_WGMMA(R, N, 16, bf16, SM90_TRANS_##R);                        \
    else if constexpr (WgmmaOperand<T>::K == 16) SM90_WGMMA(R, N, 16, f16, SM90_TRANS_##R);                  \
    else SM90_WGMMA(R, N, 8, tf32, "")

// The accumulators are "+f" operands: the compiler keeps them in registers across the asynchronous
// operation, and wgmma_wait_group's "memory" clobber plus the fences order the rest.
template <typename T, int N, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void wgmma_m64(float (&d)[N / 2], Descriptor desc_a, Descriptor desc_b, int scale_d) {
    static_assert(N == 128 || N == 256, "the wrappers exist for N = 128 and 256");
    static_assert(WgmmaOperand<T>::K == 16 || !(TRANS_A || TRANS_B), "tf32 operands are K-major only");
    if constexpr (N == 128) {
        SM90_WGMMA_OF_TYPE(64, 128);
    } else {
        SM90_WGMMA_OF_TYPE(128, 256);
    }
}

#undef SM90_WGMMA_OF_TYPE
#undef SM90_WGMMA
#undef SM90_TRANS_128
#undef SM90_TRANS_64
#undef SM90_DESCRIPTORS_128
#undef SM90_DESCRIPTORS_64
#undef SM90_SCALE_D_128
#undef SM90_SCALE_D_64
#undef SM90_REGS_128
#undef SM90_REGS_64
#undef SM90_D_128
#undef SM90_D_64
#undef SM90_D8

}  // namespace sm90
