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
