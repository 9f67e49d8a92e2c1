// emu_tensor_map.h: the driver API's tensor maps (CUtensorMap, cuTensorMapEncodeTiled) for the
// emulator: host code, included by the emulator's <cuda.h> and compiled into the runtime library,
// whose cuTensorMapEncodeTiled both kernel libraries and Python (linear/backends/tensor_map.py) call.
//
// The types and enums are the driver's (CUDA 12/13 cuda.h: same names, values and signature), so a
// kernel's host helpers compile unchanged. cuTensorMapEncodeTiled makes the driver's documented
// argument checks and returns CUDA_ERROR_INVALID_VALUE for any it fails; emu_tensor_map_error() then
// says which argument and why (the driver says nothing more than the code).
//   rank 1..5 (3..5 when interleaved); the map 64-byte aligned; globalAddress 16-byte aligned (32 with
//   32-byte interleave); globalDim 1..2^32; globalStrides (rank - 1 of them, bytes) multiples of 16
//   (32 with 32-byte interleave), below 2^40 (not necessarily growing: hardware-tested kernels map a
//   matrix as {64 columns, rows, column blocks});
//   boxDim 1..256, boxDim[0]·element size a multiple of 16 bytes (no interleave) and, with a
//   swizzle, at most its span (32, 64, 128 bytes); elementStrides 1..8; the NaN out-of-bounds fill
//   for floating-point types only; 32-byte interleave only with the 32-byte swizzle.
// Not modelled: interleaved layouts (accepted by the checks, refused by the copies), the packed
// 4- and 6-bit types and the 128B_ATOM_* swizzles of sm_100, im2col maps, L2 promotion (a hint).
//
// The encoding inside the 128 opaque bytes is the emulator's own (opaque[0] a tag, so a copy from
// an uninitialized map is an error): address, dims, strides, box, element strides, and the enums.
#pragma once

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint32_t cuuint32_t;
typedef uint64_t cuuint64_t;

#ifndef EMU_CURESULT_DEFINED
#define EMU_CURESULT_DEFINED
typedef enum cudaError_enum { CUDA_SUCCESS = 0, CUDA_ERROR_INVALID_VALUE = 1 } CUresult;
#endif

#define CU_TENSOR_MAP_NUM_QWORDS 16
typedef struct CUtensorMap_st {
    alignas(64) cuuint64_t opaque[CU_TENSOR_MAP_NUM_QWORDS];
#ifdef __cplusplus
    static constexpr bool emu_is_tensor_map = true;  // for emu_entry.h: a __grid_constant__ parameter
#endif
} CUtensorMap;

typedef enum CUtensorMapDataType_enum {
    CU_TENSOR_MAP_DATA_TYPE_UINT8 = 0, CU_TENSOR_MAP_DATA_TYPE_UINT16, CU_TENSOR_MAP_DATA_TYPE_UINT32,
    CU_TENSOR_MAP_DATA_TYPE_INT32, CU_TENSOR_MAP_DATA_TYPE_UINT64, CU_TENSOR_MAP_DATA_TYPE_INT64,
    CU_TENSOR_MAP_DATA_TYPE_FLOAT16, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, CU_TENSOR_MAP_DATA_TYPE_FLOAT64,
    CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, CU_TENSOR_MAP_DATA_TYPE_FLOAT32_FTZ, CU_TENSOR_MAP_DATA_TYPE_TFLOAT32,
    CU_TENSOR_MAP_DATA_TYPE_TFLOAT32_FTZ,
} CUtensorMapDataType;
typedef enum CUtensorMapInterleave_enum {
    CU_TENSOR_MAP_INTERLEAVE_NONE = 0, CU_TENSOR_MAP_INTERLEAVE_16B, CU_TENSOR_MAP_INTERLEAVE_32B,
} CUtensorMapInterleave;
typedef enum CUtensorMapSwizzle_enum {
    CU_TENSOR_MAP_SWIZZLE_NONE = 0, CU_TENSOR_MAP_SWIZZLE_32B, CU_TENSOR_MAP_SWIZZLE_64B, CU_TENSOR_MAP_SWIZZLE_128B,
} CUtensorMapSwizzle;
typedef enum CUtensorMapL2promotion_enum {
    CU_TENSOR_MAP_L2_PROMOTION_NONE = 0, CU_TENSOR_MAP_L2_PROMOTION_L2_64B, CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
    CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
} CUtensorMapL2promotion;
typedef enum CUtensorMapFloatOOBfill_enum {
    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE = 0, CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA,
} CUtensorMapFloatOOBfill;

#ifdef __cplusplus
extern "C" {
#endif
__attribute__((visibility("default"))) CUresult cuTensorMapEncodeTiled(
    CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType, cuuint32_t tensorRank, void* globalAddress,
    const cuuint64_t* globalDim, const cuuint64_t* globalStrides, const cuuint32_t* boxDim,
    const cuuint32_t* elementStrides, CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
    CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill);
// Why the calling thread's last cuTensorMapEncodeTiled failed ("" after a success).
__attribute__((visibility("default"))) const char* emu_tensor_map_error(void);
#ifdef __cplusplus
}

namespace emu {

constexpr uint64_t kTensorMapTag = 0x50414d524f534e54ull;  // "TNSORMAP"

// A tensor map decoded: dimension 0 is the innermost (contiguous) one, as in the driver's arrays.
struct TensorMapView {
    int rank, element_bytes, swizzle_chunks;  // swizzle_chunks: 16-byte chunks per span (1: none)
    CUtensorMapDataType type;
    CUtensorMapInterleave interleave;
    CUtensorMapFloatOOBfill oob_fill;
    unsigned char* address;
    uint64_t dims[5], strides[5];  // strides in bytes; strides[0] is the element size
    uint32_t box[5], element_strides[5];
};

inline int tensor_map_element_bytes(int type) {
    static const int bytes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
    return type >= 0 && type < int(sizeof bytes / sizeof bytes[0]) ? bytes[type] : 0;
}

inline bool decode_tensor_map(const CUtensorMap* map, TensorMapView* v) {
    const uint64_t* q = map->opaque;
    if (q[0] != kTensorMapTag) return false;
    v->address = reinterpret_cast<unsigned char*>(q[1]);
    const uint64_t enums = q[2];
    v->type = CUtensorMapDataType(enums & 0xFF);
    v->rank = int(enums >> 8 & 0xFF);
    v->interleave = CUtensorMapInterleave(enums >> 16 & 0xFF);
    const int swizzle = int(enums >> 24 & 0xFF);
    v->swizzle_chunks = swizzle == CU_TENSOR_MAP_SWIZZLE_NONE ? 1 : 1 << swizzle;
    v->oob_fill = CUtensorMapFloatOOBfill(enums >> 40 & 0xFF);
    v->element_bytes = tensor_map_element_bytes(v->type);
    for (int i = 0; i < 5; ++i) {
        v->dims[i] = q[3 + i];
        v->strides[i] = i == 0 ? uint64_t(v->element_bytes) : q[7 + i];
        v->box[i] = uint32_t(q[13] >> (12 * i) & 0xFFF);
        v->element_strides[i] = uint32_t(q[14] >> (4 * i) & 0xF);
    }
    return true;
}

}  // namespace emu

#ifdef EMU_TENSOR_MAP_DEFINE
// Compiled once, into the runtime library (emu_runtime.cpp defines EMU_TENSOR_MAP_DEFINE).
namespace {
thread_local char tensor_map_error[256];

__attribute__((format(printf, 1, 2))) CUresult invalid(const char* format, ...) {
    va_list ap;
    va_start(ap, format);
    vsnprintf(tensor_map_error, sizeof tensor_map_error, format, ap);
    va_end(ap);
    return CUDA_ERROR_INVALID_VALUE;
}
}  // namespace

extern "C" const char* emu_tensor_map_error(void) { return tensor_map_error; }

extern "C" CUresult cuTensorMapEncodeTiled(
    CUtensorMap* tensorMap, CUtensorMapDataType tensorDataType, cuuint32_t tensorRank, void* globalAddress,
    const cuuint64_t* globalDim, const cuuint64_t* globalStrides, const cuuint32_t* boxDim,
    const cuuint32_t* elementStrides, CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle,
    CUtensorMapL2promotion l2Promotion, CUtensorMapFloatOOBfill oobFill) {
    tensor_map_error[0] = '\0';
    if (!tensorMap || reinterpret_cast<uintptr_t>(tensorMap) % 64)
        return invalid("tensorMap %p is not 64-byte aligned", static_cast<void*>(tensorMap));
    const int element = emu::tensor_map_element_bytes(tensorDataType);
    if (!element) return invalid("tensorDataType %d is not one the emulator models (0 .. 12)", int(tensorDataType));
    if (int(interleave) < 0 || interleave > CU_TENSOR_MAP_INTERLEAVE_32B)
        return invalid("interleave %d is not a CUtensorMapInterleave", int(interleave));
    if (int(swizzle) < 0 || swizzle > CU_TENSOR_MAP_SWIZZLE_128B)
        return invalid("swizzle %d is not one the emulator models (NONE, 32B, 64B, 128B)", int(swizzle));
    if (int(l2Promotion) < 0 || l2Promotion > CU_TENSOR_MAP_L2_PROMOTION_L2_256B)
        return invalid("l2Promotion %d is not a CUtensorMapL2promotion", int(l2Promotion));
    if (int(oobFill) < 0 || oobFill > CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA)
        return invalid("oobFill %d is not a CUtensorMapFloatOOBfill", int(oobFill));
    const bool floating = tensorDataType >= CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
    if (oobFill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA && !floating)
        return invalid("oobFill NAN_REQUEST_ZERO_FMA needs a floating-point tensorDataType, not %d", int(tensorDataType));
    if (tensorRank < 1 || tensorRank > 5) return invalid("tensorRank %u is not in 1 .. 5", tensorRank);
    if (interleave != CU_TENSOR_MAP_INTERLEAVE_NONE && tensorRank < 3)
        return invalid("tensorRank %u: an interleaved layout needs rank 3 .. 5", tensorRank);
    if (interleave == CU_TENSOR_MAP_INTERLEAVE_32B && swizzle != CU_TENSOR_MAP_SWIZZLE_32B)
        return invalid("interleave 32B needs swizzle 32B, not %d", int(swizzle));
    const uintptr_t address_alignment = interleave == CU_TENSOR_MAP_INTERLEAVE_32B ? 32 : 16;
    if (!globalAddress || reinterpret_cast<uintptr_t>(globalAddress) % address_alignment)
        return invalid("globalAddress %p is not %zu-byte aligned", globalAddress, size_t(address_alignment));
    if (!globalDim || !boxDim || !elementStrides || (tensorRank > 1 && !globalStrides))
        return invalid("globalDim, globalStrides (for rank > 1), boxDim and elementStrides must not be null");
    for (cuuint32_t i = 0; i < tensorRank; ++i) {
        if (globalDim[i] == 0 || globalDim[i] > (uint64_t(1) << 32))
            return invalid("globalDim[%u] = %llu is not in 1 .. 2^32", i, static_cast<unsigned long long>(globalDim[i]));
        if (boxDim[i] == 0 || boxDim[i] > 256) return invalid("boxDim[%u] = %u is not in 1 .. 256", i, boxDim[i]);
        if (elementStrides[i] == 0 || elementStrides[i] > 8)
            return invalid("elementStrides[%u] = %u is not in 1 .. 8", i, elementStrides[i]);
    }
    // Strides need not grow with the dimension (the driver accepts maps that revisit memory, e.g. a
    // matrix seen as {64 columns, rows, column blocks}); only their alignment and size are checked.
    const uint64_t stride_alignment = interleave == CU_TENSOR_MAP_INTERLEAVE_32B ? 32 : 16;
    for (cuuint32_t i = 0; i + 1 < tensorRank; ++i) {
        const uint64_t s = globalStrides[i];
        if (s % stride_alignment || s >= (uint64_t(1) << 40))
            return invalid("globalStrides[%u] = %llu bytes is not a multiple of %llu below 2^40", i,
                           static_cast<unsigned long long>(s), static_cast<unsigned long long>(stride_alignment));
    }
    const uint32_t inner_bytes = boxDim[0] * uint32_t(element);
    if (interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && inner_bytes % 16)
        return invalid("boxDim[0] = %u elements of %d bytes is %u bytes, not a multiple of 16", boxDim[0], element,
                       inner_bytes);
    if (interleave == CU_TENSOR_MAP_INTERLEAVE_NONE && swizzle != CU_TENSOR_MAP_SWIZZLE_NONE &&
        inner_bytes > (16u << swizzle))
        return invalid("boxDim[0] = %u elements of %d bytes is %u bytes, more than the %u-byte span of the swizzle",
                       boxDim[0], element, inner_bytes, 16u << swizzle);

    CUtensorMap map{};
    uint64_t* q = map.opaque;
    q[0] = emu::kTensorMapTag;
    q[1] = reinterpret_cast<uintptr_t>(globalAddress);
    q[2] = uint64_t(tensorDataType) | uint64_t(tensorRank) << 8 | uint64_t(interleave) << 16 |
           uint64_t(swizzle) << 24 | uint64_t(l2Promotion) << 32 | uint64_t(oobFill) << 40;
    for (cuuint32_t i = 0; i < 5; ++i) {
        const bool used = i < tensorRank;
        q[3 + i] = used ? globalDim[i] : 1;
        if (i >= 1) q[7 + i] = used ? globalStrides[i - 1] : 0;
        q[13] |= uint64_t(used ? boxDim[i] : 1) << (12 * i);
        // Dimension 0 has no element stride without interleave (the driver ignores it).
        q[14] |= uint64_t(used && (i > 0 || interleave != CU_TENSOR_MAP_INTERLEAVE_NONE) ? elementStrides[i] : 1) << (4 * i);
    }
    memcpy(tensorMap, &map, sizeof map);
    return CUDA_SUCCESS;
}
#endif  // EMU_TENSOR_MAP_DEFINE
#endif  // __cplusplus
