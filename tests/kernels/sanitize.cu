// A catalogue of classic kernel bugs for the sanitize modes (tests/test_sanitize.py). Each kernel
// is a template on BUG: BUG=true has the bug, BUG=false is its fixed twin, which must run clean
// under every mode. The line of each bug is marked "BUG:" for the test that checks the reported line.
#include <cooperative_groups.h>

namespace cg = cooperative_groups;

// memcheck: reads one float past the end of `in` (inside the 16-byte slack when n % 4 != 0).
template <bool BUG>
__global__ void read_past_end(const float* in, float* out, int n) {
    const int i = threadIdx.x;
    if (i < n) out[i] = BUG || i + 1 < n ? in[i + 1] : 0.0f;  // BUG: in[n]
}

// memcheck: writes one float past the end of `out`.
template <bool BUG>
__global__ void write_past_end(float* out, int n) {
    const int i = threadIdx.x;
    if (i < n + BUG) out[i] = 1.0f;  // BUG: out[n]
}

// memcheck: overruns a static __shared__ array into whatever lies after it.
template <bool BUG>
__global__ void static_shared_overrun(float* out) {
    __shared__ float a[30];
    __shared__ float b[30];
    const int t = threadIdx.x;
    if (t < 30) b[t] = 2.0f;
    if (t < 30 + 2 * BUG) a[t] = 1.0f;  // BUG: a[30], a[31]
    __syncthreads();
    if (t < 30) out[t] = a[t] + b[t];
}

// memcheck: reads the dynamic shared memory of n floats at n (inside its 16-byte rounding).
template <bool BUG>
__global__ void dynamic_shared_overrun(float* out, int n) {
    extern __shared__ float buffer[];
    const int t = threadIdx.x;
    if (t < n) buffer[t] = float(t);
    __syncthreads();
    if (t < n) out[t] = buffer[BUG ? t + 1 : t];  // BUG: buffer[n]
}

// memcheck: a memcpy of one float too many into a static __shared__ array (a call, which g++ would
// otherwise leave unchecked, or expand inline where it knows the size).
template <bool BUG>
__global__ void memcpy_overrun(const float* in, float* out) {
    __shared__ float tile[30];
    if (threadIdx.x == 0) memcpy(tile, in, (30 + BUG) * sizeof(float));  // BUG: 31 floats into 30
    __syncthreads();
    if (threadIdx.x < 30) out[threadIdx.x] = tile[threadIdx.x];
}

// racecheck: a shared-memory tree sum without the barrier between its steps.
template <bool BUG>
__global__ void tree_sum(const float* in, float* out) {
    __shared__ float partial[64];
    const int t = threadIdx.x;
    partial[t] = in[t];
    __syncthreads();
    for (int stride = 32; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];  // BUG: reads a neighbour's unfinished sum
        if (!BUG) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// racecheck: a tile is refilled while other threads still read the previous one (the second
// barrier of a tiled loop is missing: write after read).
template <bool BUG>
__global__ void tile_reuse(const float* in, float* out) {
    __shared__ float tile[32];
    const int t = threadIdx.x;
    float sum = 0.0f;
    for (int step = 0; step < 2; ++step) {
        tile[t] = in[step * 32 + t];  // BUG: overwrites tile[t] while thread t-1 may still read it
        __syncthreads();
        sum += tile[(t + 1) % 32];
        if (!BUG) __syncthreads();
    }
    out[t] = sum;
}

// racecheck: every block writes out[0]; nothing orders blocks.
template <bool BUG>
__global__ void blocks_share_output(float* out) {
    if (threadIdx.x == 0) out[BUG ? 0 : blockIdx.x] = float(blockIdx.x);  // BUG: one element for all blocks
}

// racecheck: lanes exchange values through shared memory; __syncwarp orders the exchange.
template <bool BUG>
__global__ void warp_exchange(float* out) {
    __shared__ float slot[32];
    const int lane = threadIdx.x;
    slot[lane] = float(lane);
    if (!BUG) __syncwarp();
    out[lane] = slot[31 - lane];  // BUG: reads another lane's slot with no __syncwarp between
}

// racecheck: warp 0 fills shared memory for warp 1; __syncwarp orders the lanes of one warp only, so
// warp 1 may read before warp 0 has written: the block needs __syncthreads.
template <bool BUG>
__global__ void warps_exchange(float* out) {
    __shared__ float slot[32];
    const int t = threadIdx.x;
    if (t < 32) slot[t] = float(t);
    if (BUG) {
        __syncwarp();
    } else {
        __syncthreads();
    }
    if (t >= 32) out[t - 32] = slot[t - 32];  // BUG: warp 1 reads what warp 0 wrote, across a __syncwarp
}

// racecheck: lanes of a tile of 8 exchange values through shared memory with no tile.sync() between
// the write and the read (cooperative groups).
template <bool BUG>
__global__ void tile_exchange(float* out) {
    __shared__ float slot[32];
    const cg::thread_block_tile<8> tile = cg::tiled_partition<8>(cg::this_thread_block());
    const int lane = threadIdx.x;
    slot[lane] = float(lane);
    if (!BUG) tile.sync();
    out[lane] = slot[lane ^ 1];  // BUG: reads the neighbour's slot with no tile.sync() between
}

// racecheck: a counter bumped by every thread: atomicAdd is right, a plain += races.
template <bool BUG>
__global__ void count(int* counter) {
    if (BUG) {
        *counter += 1;  // BUG: a read-modify-write that is not atomic
    } else {
        atomicAdd(counter, 1);
    }
}

// initcheck: the last element of a shared array is never written, then read.
template <bool BUG>
__global__ void uninitialized_shared(float* out) {
    __shared__ float values[32];
    const int t = threadIdx.x;
    if (t < 32 - BUG) values[t] = float(t);
    __syncthreads();
    out[t] = values[31 - t];  // BUG: values[31] by thread 0
}

// initcheck: each thread writes only byte 0 of its 4-byte word, then reads the whole word.
template <bool BUG>
__global__ void partial_word(unsigned* out) {
    __shared__ unsigned words[32];
    const int t = threadIdx.x;
    unsigned char* bytes = reinterpret_cast<unsigned char*>(&words[t]);
    for (int i = 0; i < (BUG ? 1 : 4); ++i) bytes[i] = static_cast<unsigned char>(t + i);
    __syncthreads();
    out[t] = words[t];  // BUG: bytes 1 to 3 of the word were never written
}

// initcheck: a shared histogram that is never zeroed, touched only by atomicAdd (each atomic reads the
// old count, so the first one of a bin reads uninitialized memory).
template <bool BUG>
__global__ void unzeroed_histogram(const int* values, int* bins) {
    __shared__ int counts[8];
    const int t = threadIdx.x;
    if (!BUG && t < 8) counts[t] = 0;
    __syncthreads();
    atomicAdd(&counts[values[t] % 8], 1);  // BUG: counts[] never zeroed
    __syncthreads();
    if (t < 8) bins[t] = counts[t];
}

// synccheck: the two halves of the block wait at different __syncthreads.
template <bool BUG>
__global__ void divergent_barrier(float* out) {
    const int t = threadIdx.x;
    if (BUG && t < 16) {
        __syncthreads();  // BUG: the other half waits below
        out[t] = 1.0f;
    } else {
        __syncthreads();
        out[t] = 2.0f;
    }
}

// synccheck: the two halves of the block wait at different block.sync() (cooperative groups).
template <bool BUG>
__global__ void divergent_group_sync(float* out) {
    const cg::thread_block block = cg::this_thread_block();
    const unsigned t = block.thread_rank();
    if (BUG && t < 16) {
        block.sync();  // BUG: the other half waits below
        out[t] = 1.0f;
    } else {
        cg::sync(block);
        out[t] = 2.0f;
    }
}
