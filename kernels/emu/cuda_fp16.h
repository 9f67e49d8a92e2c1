// The emulator's <cuda_fp16.h>: CUDA's names for IEEE half precision (see emu_float16.h).
#pragma once

#include "cuda_emu.h"  // float2, __device__
#include "emu_float16.h"

using __half = emu::binary16<5, 10>;
using __half2 = emu::binary16x2<5, 10>;
using __half_raw = emu::binary16_raw<5, 10>;
using __half2_raw = emu::binary16x2_raw<5, 10>;
using half = __half;
using half2 = __half2;

__device__ inline __half __float2half(float f) { return __half(f); }
__device__ inline __half __float2half_rn(float f) { return __half(f); }
__device__ inline __half __double2half(double d) { return __half(d); }
__device__ inline __half __int2half_rn(int i) { return __half(i); }
__device__ inline float __half2float(__half h) { return float(h); }
__device__ inline int __half2int_rn(__half h) { return int(std::nearbyint(float(h))); }
__device__ inline int __half2int_rz(__half h) { return int(float(h)); }
__device__ inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
__device__ inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
__device__ inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
__device__ inline __half2 __half2half2(__half a) { return {a, a}; }
__device__ inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
__device__ inline __half __low2half(__half2 h) { return h.x; }
__device__ inline __half __high2half(__half2 h) { return h.y; }
__device__ inline unsigned short __half_as_ushort(__half h) { return h.__x; }
__device__ inline short __half_as_short(__half h) { return short(h.__x); }
__device__ inline __half __ushort_as_half(unsigned short u) { return __half_raw{u}; }
__device__ inline __half __short_as_half(short s) { return __half_raw{(unsigned short)s}; }
