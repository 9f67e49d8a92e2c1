// Element types and conversions shared by gemm.cu and reduce.cu.
//
// Every kernel reads elements of type T, accumulates in acc_t<T> (float for float, __half and
// __nv_bfloat16; double for double) and converts back only when it stores a result.
#pragma once

#include <cuda_fp16.h>
#include <cuda_bf16.h>

template <typename T> struct Accumulator { using type = T; };
template <> struct Accumulator<__half> { using type = float; };
template <> struct Accumulator<__nv_bfloat16> { using type = float; };

template <typename T> using acc_t = typename Accumulator<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// The element of type T nearest to an accumulator value (round to nearest even for the half types).
template <typename T> __device__ __forceinline__ T to_element(acc_t<T> x);
template <> __device__ __forceinline__ float to_element<float>(float x) { return x; }
template <> __device__ __forceinline__ double to_element<double>(double x) { return x; }
template <> __device__ __forceinline__ __half to_element<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 to_element<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Where a block of a batched, split-K GEMM launch works: blockIdx.z = batch · splits + split, and the
// split covers k in [k_begin, k_end) in `steps` steps of BK. The batch index is 64-bit, so that its
// offsets are: a stack may exceed 2**31 elements.
template <int BK>
struct BlockWork {
    int split;
    long long batch;
    int k_begin, k_end, steps;
    __device__ __forceinline__ BlockWork(int K, int k_per_split, int splits)
        : split(splits == 1 ? 0 : blockIdx.z % splits),
          batch(splits == 1 ? blockIdx.z : blockIdx.z / splits),
          k_begin(split * k_per_split),
          k_end(K - k_begin < k_per_split ? K : k_begin + k_per_split),
          steps(k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0) {}
};
