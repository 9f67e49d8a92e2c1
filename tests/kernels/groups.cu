// Cooperative groups and the host-only header stubs on the emulator (tests/test_emulator.py).
#include <cooperative_groups.h>
#include <cublas_v2.h>  // host-only headers that kernel files include: the emulator's are stubs
#include <cuda.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <device_launch_parameters.h>

namespace cg = cooperative_groups;

// Each thread writes 12 values at its global rank: its rank and size in the block and in its tile
// of N, the tile's meta-group rank and size, then the tile's collectives on its value of in.
template <unsigned N>
__global__ void tile_collectives(const int* in, int* out) {
    const cg::thread_block block = cg::this_thread_block();
    const cg::thread_block_tile<N> tile = cg::tiled_partition<N>(block);
    const unsigned rank = blockIdx.x * block.size() + block.thread_rank();
    const int v = in[rank];
    const int values[12] = {int(block.thread_rank()), int(block.size()), int(tile.thread_rank()), int(tile.size()),
                            int(tile.meta_group_rank()), int(tile.meta_group_size()), tile.shfl(v, 1),
                            tile.shfl_up(v, 1), tile.shfl_down(v, 2), tile.shfl_xor(v, 1), int(tile.ballot(v > 0)),
                            tile.any(v > 0) | tile.all(v > 0) << 1};
    for (int i = 0; i < 12; ++i) out[12 * rank + i] = values[i];
}

// out[block] = the sum of the block's values of in: each tile of N adds its values with shfl_down,
// its first thread stores the tile's sum in shared memory, and after the block's sync thread 0 adds those.
template <unsigned N>
__global__ void block_sum(const float* in, float* out) {
    __shared__ float partial[1024 / N];
    const cg::thread_block block = cg::this_thread_block();
    const auto tile = cg::tiled_partition<N>(block);
    float v = in[blockIdx.x * block.size() + block.thread_rank()];
    for (unsigned delta = N / 2; delta > 0; delta /= 2) v += tile.shfl_down(v, delta);
    if (tile.thread_rank() == 0) partial[tile.meta_group_rank()] = v;
    cg::sync(block);
    if (block.thread_rank() == 0) {
        float sum = 0.0f;
        for (unsigned i = 0; i < tile.meta_group_size(); ++i) sum += partial[i];
        out[blockIdx.x] = sum;
    }
}
