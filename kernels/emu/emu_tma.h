// emu_tma.h: the tensor memory accelerator's bulk copies (cp.async.bulk.tensor, cp.async.bulk) on
// the CPU.
//
// Loads, global -> shared, completing on an mbarrier (.mbarrier::complete_tx::bytes):
//   tensor_load<N>(dst, map, coords, bar)  cp.async.bulk.tensor.Nd.shared::cluster.global.tile
//                                          the box of the tensor map at coords (int32, innermost
//                                          first) to dst (128-byte aligned shared memory)
//   bulk_load(dst, src, bytes, bar)        cp.async.bulk.shared::cluster.global: bytes (a multiple
//                                          of 16, 16-byte aligned addresses) copied as they are
// Stores, shared -> global, in bulk async-groups (.bulk_group) of the issuing thread:
//   tensor_store<N>(map, coords, src)      cp.async.bulk.tensor.Nd.global.shared::cta.tile
//   bulk_store(dst, src, bytes)            cp.async.bulk.global.shared::cta
//   bulk_commit_group()                    cp.async.bulk.commit_group
//   bulk_wait_group<N>()                   cp.async.bulk.wait_group(.read) N: all but the newest N
//                                          groups complete
// The box: along dimension i it holds ceil(boxDim[i] / elementStrides[i]) elements, at coordinates
// coords[i] + elementStrides[i]·n (dimension 0 has no element stride), packed in shared memory in
// order, dimension 0 fastest. Elements outside the tensor (a coordinate < 0 or >= globalDim) load
// as zero (NaN with FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA) and are not stored. A load's
// transaction bytes are the whole box's, out-of-bounds elements included.
// Swizzle (the CUDA programming guide's TMA swizzle modes; CuTe's Swizzle<B,4,3>, B = 1, 2, 3 for
// 32B, 64B, 128B): the 16-byte chunk that the unswizzled layout puts at shared address a goes to
// a ^ (((a >> 7) & (2^B - 1)) << 4), i.e. the chunk index within its span XORed with the 128-byte
// row index modulo 2^B. It is a function of the shared address, as the hardware's: a buffer aligned
// to the pattern's repeat (256, 512, 1024 bytes) sees the textbook pattern, wgmma's descriptors
// (emu_wgmma.h) the same one. The emulator's shared addresses are congruent to the generic ones
// modulo 1024, so the generic address gives the same bits.
// Asynchrony: a load reads global memory when it is issued and writes shared memory when a thread
// waits on its mbarrier (emu_mbarrier.h), then completes its bytes; a store reads shared memory and
// writes global memory at the wait_group that retires it (stores never waited for are dropped).
// Not modelled: multicast and other CTAs of a cluster (there are none), im2col and interleaved
// maps, reductions (cp.reduce.async.bulk), prefetch (a hint: accepted, does nothing), L2 cache hints.
#pragma once

#include <vector>

#include "emu_mbarrier.h"
#include "emu_tensor_map.h"

namespace emu {

struct PendingBulkStore {
    unsigned group;
    CUtensorMap map;           // tensor stores: the map and coordinates; plain stores: map unused
    int32_t coords[5];
    int dims;
    unsigned char* destination;  // plain stores
    const unsigned char* source;
    uint32_t bytes;
};
struct BulkStoreQueue {
    unsigned long long owner;
    unsigned committed;
    std::vector<PendingBulkStore> stores;
};
inline BulkStoreQueue bulk_store_queues[1024];

EMU_SHIM_ACCESS inline BulkStoreQueue& bulk_store_queue() {
    BulkStoreQueue& q = bulk_store_queues[threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)];
    if (q.owner != block_owner()) q.owner = block_owner(), q.committed = 0, q.stores.clear();
    return q;
}

EMU_SHIM_ACCESS inline TensorMapView tensor_map_for(const CUtensorMap* map, int dims, const char* what, const char* file, int line) {
    TensorMapView v;
    if (reinterpret_cast<uintptr_t>(map) % 64)
        hopper_fail("%s: the tensor map at %p is not 64-byte aligned (%s:%d)", what, static_cast<const void*>(map), file,
                    line);
    if (!decode_tensor_map(map, &v))
        hopper_fail("%s: the tensor map at %p was not made by cuTensorMapEncodeTiled (%s:%d)", what,
                    static_cast<const void*>(map), file, line);
    if (v.rank != dims)
        hopper_fail("%s: a %d-d copy with a tensor map of rank %d (%s:%d)", what, dims, v.rank, file, line);
    if (v.interleave != CU_TENSOR_MAP_INTERLEAVE_NONE)
        hopper_fail("%s: interleaved tensor maps are not modelled by the emulator (%s:%d)", what, file, line);
    return v;
}

// Calls visit(box_offset, element_address or null when out of bounds) for every element of the box.
template <class Visit>
EMU_SHIM_ACCESS inline uint32_t for_each_box_element(const TensorMapView& v, const int32_t* coords, Visit visit) {
    uint32_t count[5];
    for (int i = 0; i < 5; ++i) count[i] = i < v.rank ? (v.box[i] + v.element_strides[i] - 1) / v.element_strides[i] : 1;
    uint32_t offset = 0;
    for (uint32_t n4 = 0; n4 < count[4]; ++n4)
        for (uint32_t n3 = 0; n3 < count[3]; ++n3)
            for (uint32_t n2 = 0; n2 < count[2]; ++n2)
                for (uint32_t n1 = 0; n1 < count[1]; ++n1)
                    for (uint32_t n0 = 0; n0 < count[0]; ++n0, offset += uint32_t(v.element_bytes)) {
                        const uint32_t n[5] = {n0, n1, n2, n3, n4};
                        unsigned char* element = v.address;
                        for (int i = 0; i < v.rank && element; ++i) {
                            const int64_t x = int64_t(i < v.rank ? coords[i] : 0) + int64_t(n[i]) * v.element_strides[i];
                            if (x < 0 || uint64_t(x) >= v.dims[i]) element = nullptr;
                            else element += uint64_t(x) * v.strides[i];
                        }
                        visit(offset, element);
                    }
    return offset;
}

EMU_SHIM_ACCESS inline unsigned char* swizzled(unsigned char* p, unsigned chunks) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    return reinterpret_cast<unsigned char*>(a ^ ((a >> 7 & uintptr_t(chunks - 1)) << 4));
}

EMU_SHIM_ACCESS inline void check_shared_destination(const void* dst, uintptr_t alignment, const char* what, const char* file, int line) {
    if (reinterpret_cast<uintptr_t>(dst) % alignment)
        hopper_fail("%s: the shared memory address 0x%x is not %zu-byte aligned (%s:%d)", what, shared_address(dst),
                    size_t(alignment), file, line);
}

EMU_SHIM_ACCESS inline void tensor_load(int dims, void* dst, const CUtensorMap* map,
                                                            const int32_t* coords, uint64_t* barrier,
                                                            const char* file, int line, const void* pc) {
    const char* what = "cp.async.bulk.tensor (load)";
    const TensorMapView v = tensor_map_for(map, dims, what, file, line);
    check_shared_destination(dst, 128, what, file, line);
    mbarrier_state(barrier, what, file, line);
    PendingBulkLoad load{barrier, static_cast<unsigned char*>(dst), unsigned(v.swizzle_chunks), 0, {}};
    uint32_t bytes = 1;
    for (int i = 0; i < v.rank; ++i) bytes *= (v.box[i] + v.element_strides[i] - 1) / v.element_strides[i];
    load.data.resize(size_t(bytes) * v.element_bytes);
    const bool nan_fill = v.oob_fill == CU_TENSOR_MAP_FLOAT_OOB_FILL_NAN_REQUEST_ZERO_FMA;
    load.bytes = for_each_box_element(v, coords, [&](uint32_t offset, const unsigned char* element) EMU_SHIM_ACCESS {
        unsigned char* out = load.data.data() + offset;
        if (element) {
            for (int b = 0; b < v.element_bytes; ++b) out[b] = element[b];
        } else if (nan_fill) {  // the canonical NaN of the element's type
            const uint64_t nan = v.element_bytes == 2 ? (v.type == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 ? 0x7FC0 : 0x7E00)
                               : v.element_bytes == 4 ? 0x7FC00000u : 0x7FF8000000000000ull;
            __builtin_memcpy(out, &nan, size_t(v.element_bytes));
        } else {
            for (int b = 0; b < v.element_bytes; ++b) out[b] = 0;
        }
    });
    // For the sanitizer the shared memory is written now, by the issuing thread, and released to the barrier.
    for (uint32_t offset = 0; offset < load.bytes; offset += 16)
        sanitize_access(swizzled(load.destination + offset, load.swizzle_chunks), 16, true, pc);
    sanitize_release(barrier);
    bulk_loads().push_back(std::move(load));
}

EMU_SHIM_ACCESS inline void tensor_store_now(const PendingBulkStore& s, const void* pc) {
    TensorMapView v;
    decode_tensor_map(&s.map, &v);
    for_each_box_element(v, s.coords, [&](uint32_t offset, unsigned char* element) EMU_SHIM_ACCESS {
        if (!element) return;
        const unsigned char* from = swizzled(const_cast<unsigned char*>(s.source) + offset - offset % 16, unsigned(v.swizzle_chunks)) + offset % 16;
        sanitize_access(from, size_t(v.element_bytes), false, pc);
        for (int b = 0; b < v.element_bytes; ++b) element[b] = from[b];
    });
}

EMU_SHIM_ACCESS inline void bulk_store_now(const PendingBulkStore& s, const void* pc) {
    sanitize_access(s.source, s.bytes, false, pc);
    sanitize_access(s.destination, s.bytes, true, pc);
    for (uint32_t b = 0; b < s.bytes; ++b) s.destination[b] = s.source[b];
}

}  // namespace emu

// ---- The instructions ---------------------------------------------------------------------------
namespace emu::hopper {

// cp.async.bulk.tensor.Nd.shared::cluster.global.tile.mbarrier::complete_tx::bytes [dst], [map, {c...}], [bar]
template <int N>
EMU_SHIM_ACCESS __device__ inline void tensor_load(void* dst, const CUtensorMap* map, const int32_t (&coords)[N], uint64_t* barrier,
                                   EMU_HOPPER_SITE) {
    static_assert(N >= 1 && N <= 5, "cp.async.bulk.tensor copies 1-d to 5-d boxes");
    emu::tensor_load(N, dst, map, coords, barrier, file, line, __builtin_return_address(0));
}

// cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [src], bytes, [bar]
EMU_SHIM_ACCESS __device__ inline void bulk_load(void* dst, const void* src, uint32_t bytes,
                                                                     uint64_t* barrier, EMU_HOPPER_SITE) {
    const char* what = "cp.async.bulk (load)";
    emu::check_shared_destination(dst, 16, what, file, line);
    if (reinterpret_cast<uintptr_t>(src) % 16 || bytes % 16)
        emu::hopper_fail("%s: the global address %p and the size %u must be multiples of 16 (%s:%d)", what, src, bytes,
                         file, line);
    emu::mbarrier_state(barrier, what, file, line);
    emu::PendingBulkLoad load{barrier, static_cast<unsigned char*>(dst), 1, bytes, {}};
    load.data.resize(bytes);
    const auto* from = static_cast<const unsigned char*>(src);
    emu::sanitize_access(src, bytes, false, __builtin_return_address(0));
    for (uint32_t b = 0; b < bytes; ++b) load.data[b] = from[b];
    emu::sanitize_access(dst, bytes, true, __builtin_return_address(0));
    emu::sanitize_release(barrier);
    emu::bulk_loads().push_back(std::move(load));
}

// cp.async.bulk.tensor.Nd.global.shared::cta.tile.bulk_group [map, {c...}], [src]
template <int N>
EMU_SHIM_ACCESS __device__ inline void tensor_store(const CUtensorMap* map, const int32_t (&coords)[N], const void* src, EMU_HOPPER_SITE) {
    static_assert(N >= 1 && N <= 5, "cp.async.bulk.tensor copies 1-d to 5-d boxes");
    const char* what = "cp.async.bulk.tensor (store)";
    emu::tensor_map_for(map, N, what, file, line);
    emu::check_shared_destination(src, 128, what, file, line);
    emu::BulkStoreQueue& q = emu::bulk_store_queue();
    emu::PendingBulkStore s{q.committed, *map, {}, N, nullptr, static_cast<const unsigned char*>(src), 0};
    for (int i = 0; i < N; ++i) s.coords[i] = coords[i];
    q.stores.push_back(s);
}

// cp.async.bulk.global.shared::cta.bulk_group [dst], [src], bytes
EMU_SHIM_ACCESS __device__ inline void bulk_store(void* dst, const void* src, uint32_t bytes, EMU_HOPPER_SITE) {
    const char* what = "cp.async.bulk (store)";
    emu::check_shared_destination(src, 16, what, file, line);
    if (reinterpret_cast<uintptr_t>(dst) % 16 || bytes % 16)
        emu::hopper_fail("%s: the global address %p and the size %u must be multiples of 16 (%s:%d)", what, dst, bytes,
                         file, line);
    emu::BulkStoreQueue& q = emu::bulk_store_queue();
    q.stores.push_back({q.committed, {}, {}, 0, static_cast<unsigned char*>(dst), static_cast<const unsigned char*>(src), bytes});
}

// cp.async.bulk.commit_group
EMU_SHIM_ACCESS __device__ inline void bulk_commit_group() { ++emu::bulk_store_queue().committed; }

// cp.async.bulk.wait_group(.read) keep: the stores of all but the newest `keep` committed groups happen now.
EMU_SHIM_ACCESS inline void bulk_wait_at(int keep, const void* pc) {
    emu::BulkStoreQueue& q = emu::bulk_store_queue();
    size_t kept = 0;
    for (size_t i = 0; i < q.stores.size(); ++i) {
        const emu::PendingBulkStore& s = q.stores[i];
        if (s.group + unsigned(keep) < q.committed) {
            if (s.dims) emu::tensor_store_now(s, pc);
            else emu::bulk_store_now(s, pc);
        } else {
            q.stores[kept++] = s;
        }
    }
    q.stores.resize(kept);
}

template <int N>
EMU_SHIM_ACCESS __device__ inline void bulk_wait_group() {
    static_assert(N >= 0, "cp.async.bulk.wait_group takes N >= 0");
    bulk_wait_at(N, __builtin_return_address(0));
}

// The same with a count known at run time (what translated PTX calls).
EMU_SHIM_ACCESS inline void bulk_wait(int keep) { bulk_wait_at(keep, __builtin_return_address(0)); }

}  // namespace emu::hopper
