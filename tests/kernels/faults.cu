// Kernels with deliberate bugs: the negative controls of tests/test_emulator.py. Each must end in
// an EmulationError or a visibly wrong result, never a hang, a crash or a silently right answer.

// Each block sums its slice of in with a shared-memory tree. SYNC=false drops the barrier between
// the tree's steps (the bug): a thread then reads partial sums its neighbours have not yet added.
template <bool SYNC>
__global__ void block_sum(const float* in, float* out) {
    __shared__ float partial[256];
    const int t = threadIdx.x;
    partial[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) partial[t] += partial[t + stride];
        if (SYNC) __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = partial[0];
}

// A race: every thread writes its index to one shared int, thread 0 reads whoever wrote last.
__global__ void last_writer(int* out) {
    __shared__ int winner;
    winner = threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = winner;
}

// Deadlock: lane 0 waits at the block barrier while the rest of its warp waits for it in a shuffle.
__global__ void barrier_against_shuffle(int* out) {
    int v = threadIdx.x;
    if (threadIdx.x == 0) __syncthreads();
    else v = __shfl_sync(0xffffffffu, v, 0);
    out[threadIdx.x] = v;
}

// The upper half of the block returns before the barrier the lower half waits at.
__global__ void early_exit(int* out) {
    if (threadIdx.x >= blockDim.x / 2) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

// Off by one: writes out[n] too.
__global__ void write_past_end(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = 1.0f;
}

// Off by one: reads in[n] (and in[-1] when shift is -1).
__global__ void read_shifted(const float* in, float* out, int n, int shift) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i + shift];
}

// Reads one element past the launch's dynamic shared memory of n floats.
__global__ void shared_overrun(float* out, int n) {
    extern __shared__ float buffer[];
    buffer[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = buffer[n];
}

// Locals far beyond the emulator's 64 KiB stack per thread.
__global__ void huge_locals(float* out, int n) {
    volatile float local[64 * 1024];
    for (int i = 0; i < n; ++i) local[i] = float(i);
    out[threadIdx.x] = local[n - 1];
}

// Block 0 spins on a flag that only block 1 sets: on a GPU both blocks may run at once, in the
// emulator block 1 never starts.
__global__ void spin_on_flag(volatile int* flag) {
    if (blockIdx.x == 0) {
        while (*flag == 0) {
        }
    } else {
        *flag = 1;
    }
}

__global__ void device_assert(const int* in) { assert(in[threadIdx.x] >= 0); }

__global__ void divide(const int* numerator, const int* denominator, int* out) {
    out[threadIdx.x] = numerator[threadIdx.x] / denominator[threadIdx.x];
}

// A shuffle width that is not a power of two.
__global__ void bad_shuffle_width(int* out, int width) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, int(threadIdx.x), 1, width);
}
