// The emulator's <cuda_bf16.h>: CUDA's names for bfloat16 (see emu_float16.h).
#pragma once

#include "cuda_emu.h"  // float2, __device__
#include "emu_float16.h"

using __nv_bfloat16 = emu::binary16<8, 7>;
using __nv_bfloat162 = emu::binary16x2<8, 7>;
using __nv_bfloat16_raw = emu::binary16_raw<8, 7>;
using __nv_bfloat162_raw = emu::binary16x2_raw<8, 7>;
using nv_bfloat16 = __nv_bfloat16;
using nv_bfloat162 = __nv_bfloat162;

__device__ inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
__device__ inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
__device__ inline __nv_bfloat16 __double2bfloat16(double d) { return __nv_bfloat16(d); }
__device__ inline __nv_bfloat16 __int2bfloat16_rn(int i) { return __nv_bfloat16(i); }
__device__ inline float __bfloat162float(__nv_bfloat16 h) { return float(h); }
__device__ inline __nv_bfloat162 __float2bfloat162_rn(float f) { return {__nv_bfloat16(f), __nv_bfloat16(f)}; }
__device__ inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
__device__ inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
__device__ inline __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 a) { return {a, a}; }
__device__ inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
__device__ inline __nv_bfloat16 __low2bfloat16(__nv_bfloat162 h) { return h.x; }
__device__ inline __nv_bfloat16 __high2bfloat16(__nv_bfloat162 h) { return h.y; }
__device__ inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
__device__ inline short __bfloat16_as_short(__nv_bfloat16 h) { return short(h.__x); }
__device__ inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16_raw{u}; }
__device__ inline __nv_bfloat16 __short_as_bfloat16(short s) { return __nv_bfloat16_raw{(unsigned short)s}; }
