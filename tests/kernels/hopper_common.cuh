// hopper_common.cuh: what the sm_90 test kernels share. In the emulator the Hopper instructions are
// the plain functions of kernels/emu/emu_hopper.h (mbarrier_*, tensor_load, wgmma_*, ...); the test
// kernels call those, so they run in the emulator only until the inline-PTX translator lets them be
// written in PTX.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "emu_hopper.h"

// The 32-bit shared address of a shared-memory pointer (what descriptors and PTX operands hold).
__device__ inline uint32_t smem_u32(const void* p) { return emu::shared_address(p); }

// The first 1024-byte aligned address of the dynamic shared memory (the repeat of the 128B swizzle).
__device__ inline unsigned char* aligned_1024(unsigned char* p) {
    return p + (-int(smem_u32(p)) & 1023);
}

// A wgmma matrix descriptor (PTX ISA "Matrix Descriptor Format"): swizzle 0 none, 1 128B, 2 64B, 3 32B.
__device__ inline uint64_t make_descriptor(const void* start, uint32_t lbo, uint32_t sbo, uint32_t swizzle) {
    return uint64_t(smem_u32(start) >> 4 & 0x3FFF) | uint64_t(lbo >> 4 & 0x3FFF) << 16 |
           uint64_t(sbo >> 4 & 0x3FFF) << 32 | uint64_t(swizzle & 3) << 62;
}
