// The emulator's <cooperative_groups.h>: the thread block and its tiles of up to a warp, built on
// the shim's barriers and warp collectives, so the runtime checks them as it checks those.
//
//   thread_block          this_thread_block(); sync(), thread_rank(), size()/num_threads(),
//                         group_index(), thread_index(), group_dim()/dim_threads()
//   thread_block_tile<N>  tiled_partition<N>(block or tile), N a power of 2 up to 32: sync(),
//                         thread_rank(), size()/num_threads(), meta_group_rank(), meta_group_size(),
//                         shfl, shfl_up, shfl_down, shfl_xor, any, all, ballot
//   sync(group)           the group's own sync()
// Not provided: grid and cluster groups, coalesced_threads, tiles of more than a warp, the
// dynamically sized tiled_partition(parent, n), cooperative_groups/reduce.h and memcpy_async.
#pragma once

#include "cuda_emu.h"

namespace cooperative_groups {

// The caller's file:line travel as default arguments into the barrier: synccheck compares them.
#define EMU_CG_SITE const char* file = __builtin_FILE(), int line = __builtin_LINE()

class thread_block {
public:
    void sync(EMU_CG_SITE) const { emu_syncthreads(EMU_SYNC, 0, file, line); }
    unsigned thread_rank() const { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }
    unsigned size() const { return blockDim.x * blockDim.y * blockDim.z; }
    unsigned num_threads() const { return size(); }
    dim3 group_index() const { return dim3(blockIdx); }
    dim3 thread_index() const { return dim3(threadIdx); }
    dim3 group_dim() const { return blockDim; }
    dim3 dim_threads() const { return blockDim; }
};

inline thread_block this_thread_block() { return {}; }

// N consecutive threads of the block (by thread_rank), inside one warp: its collectives are the
// warp's, on the tile's lanes only (mask) and with width N.
template <unsigned N>
class thread_block_tile {
    static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "tiles are a power of 2 up to 32 threads");

    static unsigned first_lane() { return thread_block().thread_rank() % 32 / N * N; }
    static unsigned mask() { return (N == 32 ? 0xffffffffu : (1u << N) - 1) << first_lane(); }

public:
    void sync() const { __syncwarp(mask()); }
    unsigned thread_rank() const { return thread_block().thread_rank() % N; }
    unsigned size() const { return N; }
    unsigned num_threads() const { return N; }
    unsigned meta_group_rank() const { return thread_block().thread_rank() / N; }
    unsigned meta_group_size() const { return (thread_block().size() + N - 1) / N; }

    template <class T> T shfl(T var, int src_rank) const { return __shfl_sync(mask(), var, src_rank, N); }
    template <class T> T shfl_up(T var, unsigned delta) const { return __shfl_up_sync(mask(), var, delta, N); }
    template <class T> T shfl_down(T var, unsigned delta) const { return __shfl_down_sync(mask(), var, delta, N); }
    template <class T> T shfl_xor(T var, int lane_mask) const { return __shfl_xor_sync(mask(), var, lane_mask, N); }
    // Bit i for the tile's thread of rank i.
    unsigned ballot(int predicate) const { return __ballot_sync(mask(), predicate) >> first_lane(); }
    int any(int predicate) const { return ballot(predicate) != 0; }
    int all(int predicate) const { return ballot(predicate) == mask() >> first_lane(); }
};

template <unsigned N, class Parent>
thread_block_tile<N> tiled_partition(const Parent&) { return {}; }

inline void sync(const thread_block& block, EMU_CG_SITE) { block.sync(file, line); }
template <unsigned N> void sync(const thread_block_tile<N>& tile) { tile.sync(); }

#undef EMU_CG_SITE

}  // namespace cooperative_groups
