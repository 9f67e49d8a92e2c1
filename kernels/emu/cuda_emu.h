// cuda_emu.h: lets g++ compile the CUDA C++ of kernels/ unchanged, to run on the CPU.
//
// What it maps, and why that is enough for kernels written to the CUDA programming model:
//   keywords      __global__ __device__ __host__ __forceinline__ __noinline__ __launch_bounds__
//                 __align__ __constant__ ...: attributes g++ understands, or nothing.
//   __shared__    `static`: the emulator runs one block at a time, so a function-local static is
//                 exactly "one copy per block, seen by all its threads". The runtime poisons these
//                 (0xFF bytes: NaN for floats) at every block start; emulate/elf.py finds them in
//                 the library's symbol table. `extern __shared__ T name[];` is rewritten by
//                 emulate/compiler.py into a pointer to the launch's dynamic buffer, which ends at
//                 a guard page.
//   built-ins     threadIdx reads the running fiber's index; blockIdx/blockDim/gridDim the
//                 launch's (emu_runtime.h).
//   barriers      __syncthreads*, __syncwarp and the warp collectives (shuffles, ballot, match,
//                 reduce) switch to the scheduler in emu_runtime.cpp, which completes them with
//                 CUDA's semantics and reports deadlocks and undefined uses.
//   atomics       plain read-modify-write: fibers never preempt each other.
//   types         vector types with CUDA's sizes and alignments, __half and __nv_bfloat16
//                 (emu_float16.h) with round-to-nearest-even conversions.
//   math          CUDA's intrinsics on top of <cmath>; the library is built with -mfma (where the
//                 CPU has it) so fmaf is one instruction, and -ffp-contract=fast like nvcc.
//   inline PTX    asm statements are translated into C++ when the library is built
//                 (linear/backends/emulate/ptx.py, onto emu_ptx.h and emu_tensor.h): the asm strings
//                 the GPU compiles run here as written, within the PTX subset ptx.py lists.
//   shared window __cvta_generic_to_shared gives 32-bit .shared addresses as the GPU has them
//                 (emu_runtime.h), __cvta_shared_to_generic turns them back.
// Kernels see LINEAR_EMULATE defined and __CUDA_ARCH__ undefined. Beside this file:
// <cooperative_groups.h> (the block and its tiles up to a warp) and stubs for host-only headers kernel
// files include (<cuda.h>, <cuda_runtime.h>, <cuda_runtime_api.h>, <device_launch_parameters.h>,
// <cublas_v2.h>, <cuda_profiler_api.h>). Not provided: grid groups, <cuda/std/...>, WMMA, textures,
// dynamic parallelism.
#pragma once

// System headers first: some of them use the attribute __noinline__, which is a macro below.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cassert>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "emu_runtime.h"

#define LINEAR_EMULATE 1

// ---- Keywords ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
#define __shared__ static
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)
#define __maxnreg__(n)

// ---- Vector types: CUDA's sizes and alignments (2 and 4 elements aligned to their size, at most 16)
#define EMU_VECTOR_TYPES(T, name)                                                                  \
    struct alignas(sizeof(T)) name##1 { T x; };                                                    \
    struct alignas(2 * sizeof(T)) name##2 { T x, y; };                                             \
    struct alignas(sizeof(T)) name##3 { T x, y, z; };                                              \
    struct alignas(4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16) name##4 { T x, y, z, w; };             \
    __host__ __device__ inline name##1 make_##name##1(T x) { return {x}; }                         \
    __host__ __device__ inline name##2 make_##name##2(T x, T y) { return {x, y}; }                 \
    __host__ __device__ inline name##3 make_##name##3(T x, T y, T z) { return {x, y, z}; }         \
    __host__ __device__ inline name##4 make_##name##4(T x, T y, T z, T w) { return {x, y, z, w}; }

EMU_VECTOR_TYPES(signed char, char)
EMU_VECTOR_TYPES(unsigned char, uchar)
EMU_VECTOR_TYPES(short, short)
EMU_VECTOR_TYPES(unsigned short, ushort)
EMU_VECTOR_TYPES(int, int)
EMU_VECTOR_TYPES(unsigned int, uint)
EMU_VECTOR_TYPES(long, long)
EMU_VECTOR_TYPES(unsigned long, ulong)
EMU_VECTOR_TYPES(long long, longlong)
EMU_VECTOR_TYPES(unsigned long long, ulonglong)
EMU_VECTOR_TYPES(float, float)
EMU_VECTOR_TYPES(double, double)
#undef EMU_VECTOR_TYPES

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return {x, y, z}; }
};

// ---- Built-in variables ------------------------------------------------------------------------
static_assert(sizeof(uint3) == sizeof(emu_uint3) && alignof(uint3) == alignof(emu_uint3), "uint3 layout");
#define threadIdx (*reinterpret_cast<const uint3*>(emu_thread_idx))
#define blockIdx (*reinterpret_cast<const uint3*>(&emu_block_idx))
#define blockDim (dim3(*reinterpret_cast<const uint3*>(&emu_block_dim)))
#define gridDim (dim3(*reinterpret_cast<const uint3*>(&emu_grid_dim)))
constexpr int warpSize = 32;

#include "emu_float16.h"
#include "cuda_fp16.h"
#include "cuda_bf16.h"

namespace emu {
// The type of a shared or atomic value, taken from the pointer only (so atomicAdd(int*, 1u) works).
template <class T> struct same { using type = T; };
template <class T> using same_t = typename same<T>::type;

// The shim's own fixed-size copies are __builtin_memcpy: g++ turns them into plain (instrumented) loads
// and stores even in sanitize builds, where a kernel's memcpy is a call to a checked wrapper
// (emulate/compiler.py), too slow for every shuffle and fragment.
template <class T> uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp collectives move up to 8 bytes");
    uint64_t bits = 0;
    __builtin_memcpy(&bits, &v, sizeof(T));
    return bits;
}
template <class T> T from_bits(uint64_t bits) {
    T v;
    __builtin_memcpy(&v, &bits, sizeof(T));
    return v;
}
// The shim's own state lives in a section of its own (one translation unit per library, so `static`
// is enough and the attribute holds), never beside a static __shared__ variable in .bss, where a
// sanitize build would take the shim's accesses for the kernel's overruns.
#define EMU_STATE static __attribute__((section("emu_state")))
// Counts this library's launches (emu_entry.h), so that per-thread state kept across calls, such as
// emu_tensor.h's cp.async queues, can tell a new launch from the last one.
EMU_STATE unsigned long long launch_serial = 0;
}  // namespace emu

// ---- Barriers and warp collectives -------------------------------------------------------------
// The call site (file and line, as default arguments) is what synccheck compares.
#define EMU_SITE const char* file = __builtin_FILE(), int line = __builtin_LINE()
__device__ inline void __syncthreads(EMU_SITE) { emu_syncthreads(EMU_SYNC, 0, file, line); }
__device__ inline int __syncthreads_count(int p, EMU_SITE) { return emu_syncthreads(EMU_SYNC_COUNT, p, file, line); }
__device__ inline int __syncthreads_and(int p, EMU_SITE) { return emu_syncthreads(EMU_SYNC_AND, p, file, line); }
__device__ inline int __syncthreads_or(int p, EMU_SITE) { return emu_syncthreads(EMU_SYNC_OR, p, file, line); }
#undef EMU_SITE
__device__ inline void __syncwarp(unsigned mask = 0xffffffffu) { emu_warp_collective(EMU_WARP_SYNC, mask, 0, 0, 32); }
__device__ inline unsigned __activemask() { return emu_active_mask(); }

template <class T> __device__ inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
    return emu::from_bits<T>(emu_warp_collective(EMU_SHFL_IDX, mask, emu::to_bits(var), src_lane, width));
}
template <class T> __device__ inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu::from_bits<T>(emu_warp_collective(EMU_SHFL_UP, mask, emu::to_bits(var), int(delta), width));
}
template <class T> __device__ inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
    return emu::from_bits<T>(emu_warp_collective(EMU_SHFL_DOWN, mask, emu::to_bits(var), int(delta), width));
}
template <class T> __device__ inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
    return emu::from_bits<T>(emu_warp_collective(EMU_SHFL_XOR, mask, emu::to_bits(var), lane_mask, width));
}
__device__ inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return unsigned(emu_warp_collective(EMU_BALLOT, mask, predicate != 0, 0, 32));
}
__device__ inline int __all_sync(unsigned mask, int predicate) {
    unsigned active = mask & __activemask();
    return (__ballot_sync(mask, predicate) & active) == active;
}
__device__ inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
template <class T> __device__ inline unsigned __match_any_sync(unsigned mask, T value) {
    return unsigned(emu_warp_collective(EMU_MATCH_ANY, mask, emu::to_bits(value), 0, 32));
}
__device__ inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return unsigned(emu_warp_collective(EMU_REDUCE_ADD, mask, v, 0, 32)); }
__device__ inline int __reduce_add_sync(unsigned mask, int v) { return int(emu_warp_collective(EMU_REDUCE_ADD, mask, unsigned(v), 0, 32)); }
__device__ inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return unsigned(emu_warp_collective(EMU_REDUCE_MIN_U, mask, v, 0, 32)); }
__device__ inline int __reduce_min_sync(unsigned mask, int v) { return int(emu_warp_collective(EMU_REDUCE_MIN_S, mask, unsigned(v), 0, 32)); }
__device__ inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return unsigned(emu_warp_collective(EMU_REDUCE_MAX_U, mask, v, 0, 32)); }
__device__ inline int __reduce_max_sync(unsigned mask, int v) { return int(emu_warp_collective(EMU_REDUCE_MAX_S, mask, unsigned(v), 0, 32)); }
__device__ inline unsigned __reduce_and_sync(unsigned mask, unsigned v) { return unsigned(emu_warp_collective(EMU_REDUCE_AND, mask, v, 0, 32)); }
__device__ inline unsigned __reduce_or_sync(unsigned mask, unsigned v) { return unsigned(emu_warp_collective(EMU_REDUCE_OR, mask, v, 0, 32)); }
__device__ inline unsigned __reduce_xor_sync(unsigned mask, unsigned v) { return unsigned(emu_warp_collective(EMU_REDUCE_XOR, mask, v, 0, 32)); }

// Fences order memory between threads that run concurrently; fibers do not, so the compiler
// barrier is all that is left to do.
__device__ inline void __threadfence() { asm volatile("" ::: "memory"); }
__device__ inline void __threadfence_block() { asm volatile("" ::: "memory"); }
__device__ inline void __threadfence_system() { asm volatile("" ::: "memory"); }
__device__ inline void __nanosleep(unsigned) {}
__device__ inline long long clock64() {
    timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000000000ll + now.tv_nsec;
}

// ---- Atomics: one fiber runs at a time, so a read-modify-write is atomic as written -------------
// A sanitize build (emu_sanitize.cpp) sees an atomic as one atomic access, not a read and a write;
// initcheck sees those that combine the old value (all but atomicExch) read it.
#ifdef EMU_SANITIZE
#define EMU_ATOMIC_ACCESS(address, reads) \
    emu_sanitize_atomic(address, sizeof *(address), reads, __builtin_return_address(0))
#define EMU_ATOMIC_INLINE __attribute__((no_sanitize_thread, noinline))
#else
#define EMU_ATOMIC_ACCESS(address, reads) ((void)0)
#define EMU_ATOMIC_INLINE inline
#endif
#define EMU_ATOMIC(name, reads, expression)                                                        \
    template <class T> __device__ EMU_ATOMIC_INLINE T name(T* address, emu::same_t<T> val) {       \
        EMU_ATOMIC_ACCESS(address, reads);                                                         \
        T old = *address;                                                                          \
        *address = (expression);                                                                   \
        return old;                                                                                \
    }                                                                                              \
    template <class T> __device__ inline T name##_block(T* address, emu::same_t<T> val) { return name(address, val); } \
    template <class T> __device__ inline T name##_system(T* address, emu::same_t<T> val) { return name(address, val); }
EMU_ATOMIC(atomicAdd, 1, T(old + val))
EMU_ATOMIC(atomicSub, 1, T(old - val))
EMU_ATOMIC(atomicExch, 0, val)  // needs no old value: it may initialize
EMU_ATOMIC(atomicMin, 1, val < old ? val : old)
EMU_ATOMIC(atomicMax, 1, val > old ? val : old)
EMU_ATOMIC(atomicAnd, 1, T(old & val))
EMU_ATOMIC(atomicOr, 1, T(old | val))
EMU_ATOMIC(atomicXor, 1, T(old ^ val))
EMU_ATOMIC(atomicInc, 1, old >= val ? T(0) : T(old + 1))
EMU_ATOMIC(atomicDec, 1, (old == 0 || old > val) ? val : T(old - 1))
#undef EMU_ATOMIC
template <class T> __device__ EMU_ATOMIC_INLINE T atomicCAS(T* address, emu::same_t<T> compare, emu::same_t<T> val) {
    EMU_ATOMIC_ACCESS(address, 1);
    T old = *address;
    if (emu::to_bits(old) == emu::to_bits(compare)) *address = val;
    return old;
}

// ---- Address spaces: shared memory has 32-bit addresses of its own (emu_runtime.h's window) ------
__device__ inline size_t __cvta_generic_to_shared(const void* p) { return emu_generic_to_shared(p); }
__device__ inline void* __cvta_shared_to_generic(size_t address) { return emu_shared_to_generic(address); }
__device__ inline size_t __cvta_generic_to_global(const void* p) { return reinterpret_cast<uintptr_t>(p); }
__device__ inline void* __cvta_global_to_generic(size_t address) { return reinterpret_cast<void*>(address); }
__device__ inline unsigned __isShared(const void* p) { return emu_is_shared(p) != 0; }

// ---- Loads and stores with cache hints: plain accesses here ------------------------------------
template <class T> __device__ inline T __ldg(const T* p) { return *p; }
template <class T> __device__ inline T __ldcg(const T* p) { return *p; }
template <class T> __device__ inline T __ldca(const T* p) { return *p; }
template <class T> __device__ inline T __ldcs(const T* p) { return *p; }
template <class T> __device__ inline T __ldlu(const T* p) { return *p; }
template <class T> __device__ inline T __ldcv(const T* p) { return *p; }
template <class T> __device__ inline void __stwb(T* p, T v) { *p = v; }
template <class T> __device__ inline void __stcg(T* p, T v) { *p = v; }
template <class T> __device__ inline void __stcs(T* p, T v) { *p = v; }
template <class T> __device__ inline void __stwt(T* p, T v) { *p = v; }

// ---- Arithmetic --------------------------------------------------------------------------------
// min/max: CUDA's overloads for every arithmetic pair; floating point ones ignore a NaN like fminf.
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
__device__ inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<C>::value) return std::fmin(C(a), C(b));
    else return C(a) < C(b) ? C(a) : C(b);
}
template <class A, class B, class = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
__device__ inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point<C>::value) return std::fmax(C(a), C(b));
    else return C(a) > C(b) ? C(a) : C(b);
}

__device__ inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
__device__ inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
// The _rn operations are never contracted into an FMA, as in CUDA.
__device__ inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
__device__ inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
__device__ inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
__device__ inline float __fdiv_rn(float a, float b) { return a / b; }
__device__ inline float __frcp_rn(float a) { return 1.0f / a; }
__device__ inline float __fsqrt_rn(float a) { return sqrtf(a); }
__device__ inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
__device__ inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
__device__ inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
__device__ inline double __ddiv_rn(double a, double b) { return a / b; }
__device__ inline float __fdividef(float a, float b) { return a / b; }
__device__ inline float __expf(float a) { return expf(a); }
__device__ inline float __exp10f(float a) { return powf(10.0f, a); }
__device__ inline float __logf(float a) { return logf(a); }
__device__ inline float __log2f(float a) { return log2f(a); }
__device__ inline float __log10f(float a) { return log10f(a); }
__device__ inline float __sinf(float a) { return sinf(a); }
__device__ inline float __cosf(float a) { return cosf(a); }
__device__ inline float __tanf(float a) { return tanf(a); }
__device__ inline float __powf(float a, float b) { return powf(a, b); }
__device__ inline float __saturatef(float a) { return a >= 1.0f ? 1.0f : (a > 0.0f ? a : 0.0f); }
__device__ inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
__device__ inline double rsqrt(double a) { return 1.0 / sqrt(a); }

// Float to integer conversions saturate and turn NaN into 0, as CUDA's do.
namespace emu {
template <class I, class F> inline I saturate(F v) {
    if (v != v) return 0;
    if (v <= F(std::numeric_limits<I>::min())) return std::numeric_limits<I>::min();
    if (v >= F(std::numeric_limits<I>::max())) return std::numeric_limits<I>::max();
    return I(v);
}
}  // namespace emu
#define EMU_FLOAT_TO_INT(F, I, i)                                                                  \
    __device__ inline I __##F##2##i##_rn(F v) { return emu::saturate<I>(std::nearbyint(v)); }      \
    __device__ inline I __##F##2##i##_rz(F v) { return emu::saturate<I>(std::trunc(v)); }          \
    __device__ inline I __##F##2##i##_rd(F v) { return emu::saturate<I>(std::floor(v)); }          \
    __device__ inline I __##F##2##i##_ru(F v) { return emu::saturate<I>(std::ceil(v)); }
EMU_FLOAT_TO_INT(float, int, int)
EMU_FLOAT_TO_INT(float, unsigned, uint)
EMU_FLOAT_TO_INT(float, long long, ll)
EMU_FLOAT_TO_INT(float, unsigned long long, ull)
EMU_FLOAT_TO_INT(double, int, int)
EMU_FLOAT_TO_INT(double, unsigned, uint)
EMU_FLOAT_TO_INT(double, long long, ll)
EMU_FLOAT_TO_INT(double, unsigned long long, ull)
#undef EMU_FLOAT_TO_INT
__device__ inline float __int2float_rn(int v) { return float(v); }
__device__ inline float __uint2float_rn(unsigned v) { return float(v); }
__device__ inline float __ll2float_rn(long long v) { return float(v); }
__device__ inline float __ull2float_rn(unsigned long long v) { return float(v); }
__device__ inline double __int2double_rn(int v) { return double(v); }
__device__ inline double __ll2double_rn(long long v) { return double(v); }
__device__ inline float __double2float_rn(double v) { return float(v); }

__device__ inline int __float_as_int(float v) { return emu::from_bits<int>(emu::to_bits(v)); }
__device__ inline unsigned __float_as_uint(float v) { return emu::from_bits<unsigned>(emu::to_bits(v)); }
__device__ inline float __int_as_float(int v) { return emu::from_bits<float>(emu::to_bits(v)); }
__device__ inline float __uint_as_float(unsigned v) { return emu::from_bits<float>(emu::to_bits(v)); }
__device__ inline long long __double_as_longlong(double v) { return emu::from_bits<long long>(emu::to_bits(v)); }
__device__ inline double __longlong_as_double(long long v) { return emu::from_bits<double>(emu::to_bits(v)); }

__device__ inline int __popc(unsigned v) { return __builtin_popcount(v); }
__device__ inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
__device__ inline int __clz(int v) { return v ? __builtin_clz(unsigned(v)) : 32; }
__device__ inline int __clzll(long long v) { return v ? __builtin_clzll((unsigned long long)v) : 64; }
__device__ inline int __ffs(int v) { return __builtin_ffs(v); }
__device__ inline int __ffsll(long long v) { return __builtin_ffsll(v); }
__device__ inline unsigned __brev(unsigned v) {
    v = ((v >> 1) & 0x55555555u) | ((v & 0x55555555u) << 1);
    v = ((v >> 2) & 0x33333333u) | ((v & 0x33333333u) << 2);
    v = ((v >> 4) & 0x0F0F0F0Fu) | ((v & 0x0F0F0F0Fu) << 4);
    return __builtin_bswap32(v);
}
__device__ inline int __mulhi(int a, int b) { return int((long long)a * b >> 32); }
__device__ inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned((unsigned long long)a * b >> 32); }
__device__ inline int __mul24(int a, int b) { return int(unsigned(a << 8 >> 8) * unsigned(b << 8 >> 8)); }
__device__ inline unsigned __umul24(unsigned a, unsigned b) { return (a & 0xFFFFFFu) * (b & 0xFFFFFFu); }

// ---- Faults ------------------------------------------------------------------------------------
// A failed device assert or __trap ends the launch with an EmulationError (not the process).
namespace emu {
[[noreturn]] inline void assertion_failed(const char* expression, const char* file, int line) {
    char message[512];
    snprintf(message, sizeof message, "device assertion failed: %s (%s:%d)", expression, file, line);
    emu_fail(message);
}
}  // namespace emu
#undef assert
#ifdef NDEBUG
#define assert(e) ((void)0)
#else
#define assert(e) ((e) ? (void)0 : emu::assertion_failed(#e, __FILE__, __LINE__))
#endif
__device__ inline void __trap() { emu_fail("__trap() called"); }
__device__ inline void __brkpt() { emu_fail("__brkpt() called"); }

#include "emu_ptx.h"
#include "emu_hopper.h"  // sm_90: mbarriers, TMA, wgmma (emulate/ptx_hopper.py translates their PTX onto it)
