// Kernels that expose the emulator's built-ins to tests/test_emulator.py: each writes what the
// built-ins returned, for the test to compare with CUDA's documented behaviour.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

// Every thread writes threadIdx, blockIdx, blockDim, gridDim (12 values) at its global rank.
__global__ void indices(unsigned* out) {
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    unsigned* o = out + 12 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
    const unsigned values[12] = {threadIdx.x, threadIdx.y, threadIdx.z, blockIdx.x, blockIdx.y, blockIdx.z,
                                 blockDim.x, blockDim.y, blockDim.z, gridDim.x, gridDim.y, gridDim.z};
    for (int i = 0; i < 12; ++i) o[i] = values[i];
}

// Thread t writes what __syncthreads_count, _and and _or returned for the block's predicates.
__global__ void block_votes(const int* predicate, int* out) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = predicate[t];
    out[3 * t] = __syncthreads_count(p);
    out[3 * t + 1] = __syncthreads_and(p);
    out[3 * t + 2] = __syncthreads_or(p);
}

// Thread t writes the results of the warp collectives on in[t]; see test_warp_collectives.
__global__ void warp_collectives(const int* in, int* out, int width, int delta) {
    const unsigned all = 0xffffffffu;
    const int t = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x % 32;
    const int v = in[t];
    int* o = out + 10 * t;
    o[0] = __shfl_sync(all, v, lane * 7 + 3, width);
    o[1] = __shfl_up_sync(all, v, delta, width);
    o[2] = __shfl_down_sync(all, v, delta, width);
    o[3] = __shfl_xor_sync(all, v, delta, width);
    o[4] = int(__ballot_sync(all, v & 1));
    o[5] = __all_sync(all, v & 1) + 2 * __any_sync(all, v & 1);
    o[6] = __reduce_add_sync(all, v);
    o[7] = int(__match_any_sync(all, v & 3));
    o[8] = int(2.0 * __shfl_xor_sync(all, 0.5 * v, 1));  // an 8-byte value
    // Two half-warps, each shuffling among itself with its own mask.
    o[9] = __shfl_xor_sync(lane < 16 ? 0x0000ffffu : 0xffff0000u, v, 4);
}

// Lanes exchange values through shared memory, ordered only by __syncwarp.
__global__ void syncwarp_exchange(const int* in, int* out) {
    __shared__ int buffer[64];
    const int t = threadIdx.x;
    buffer[t] = in[t];
    __syncwarp();
    out[t] = buffer[(t & ~31) + (t + 1) % 32];
}

// Every thread applies each atomic once; see test_atomics for the expected totals.
__global__ void atomics(int* ints, unsigned* uints, float* floats, double* doubles, int* olds) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    olds[t] = atomicAdd(&ints[0], 1);
    atomicSub(&ints[1], t);
    atomicMax(&ints[2], (t * 37) % 101);
    atomicMin(&ints[3], (t * 37) % 101 - 50);
    int seen = ints[4], assumed;
    do {  // the classic compare-and-swap loop: add 2
        assumed = seen;
        seen = atomicCAS(&ints[4], assumed, assumed + 2);
    } while (seen != assumed);
    atomicAnd(&uints[0], ~(1u << (t % 32)));
    atomicOr(&uints[1], 1u << (t % 32));
    atomicXor(&uints[2], 1u << (t % 7));
    atomicInc(&uints[3], 9u);
    atomicDec(&uints[4], 9u);
    atomicAdd(&floats[0], 0.5f);
    atomicAdd(&doubles[0], 0.25);
}

// sizeof and alignof of CUDA's vector and 16-bit types, in the order of test_vector_types.
__global__ void vector_layout(int* out) {
    int i = 0;
#define LAYOUT(T) out[i++] = int(sizeof(T)); out[i++] = int(alignof(T));
    LAYOUT(char2) LAYOUT(char4) LAYOUT(short2) LAYOUT(short4) LAYOUT(int2) LAYOUT(int3) LAYOUT(int4)
    LAYOUT(float2) LAYOUT(float3) LAYOUT(float4) LAYOUT(double2) LAYOUT(double3) LAYOUT(longlong2)
    LAYOUT(ushort4) LAYOUT(uint3) LAYOUT(__half) LAYOUT(__half2) LAYOUT(__nv_bfloat16) LAYOUT(__nv_bfloat162)
#undef LAYOUT
}

// out = 2 * in through float4 loads and stores (n4 vectors).
__global__ void scale_float4(const float* in, float* out, int n4) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) {
        float4 v = reinterpret_cast<const float4*>(in)[i];
        v.x *= 2.0f, v.y *= 2.0f, v.z *= 2.0f, v.w *= 2.0f;
        reinterpret_cast<float4*>(out)[i] = v;
    }
}

// Conversions between float and the 16-bit types, both ways, and half arithmetic.
__global__ void to_16bit(const float* in, const double* in_double, __half* half_out, __nv_bfloat16* bf16_out,
                         __half* half_from_double, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        half_out[i] = __float2half_rn(in[i]);
        bf16_out[i] = __float2bfloat16_rn(in[i]);
        half_from_double[i] = __double2half(in_double[i]);
    }
}

__global__ void from_16bit(const __half* half_in, const __nv_bfloat16* bf16_in, float* half_out,
                           float* bf16_out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        half_out[i] = __half2float(half_in[i]);
        bf16_out[i] = __bfloat162float(bf16_in[i]);
    }
}

__global__ void half_arithmetic(const __half* a, const __half* b, __half* sum, __half* product,
                                __half* quotient, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        sum[i] = __hadd(a[i], b[i]);
        product[i] = a[i] * b[i];
        quotient[i] = a[i] / b[i];
    }
}

// Shared memory as a block finds it, before any write: static (in a template and in a device
// function) and dynamic. Every block writes it afterwards, so later blocks show re-poisoning.
__device__ unsigned read_helper_shared(int t) {
    __shared__ unsigned helper[32];
    const unsigned seen = helper[t];
    helper[t] = 1;
    return seen;
}

template <int N>
__global__ void shared_on_entry(unsigned* out) {
    extern __shared__ unsigned dynamic[];
    __shared__ unsigned fixed[N];
    __shared__ float fixed_float[N];
    const int t = threadIdx.x;
    unsigned* o = out + 4 * N * blockIdx.x;
    o[t] = fixed[t];
    o[N + t] = dynamic[t];
    o[2 * N + t] = read_helper_shared(t);
    o[3 * N + t] = fixed_float[t] != fixed_float[t];  // NaN
    __syncthreads();
    fixed[t] = dynamic[t] = t;
    fixed_float[t] = 1.0f;
}

// Dynamic shared memory declared at file scope (as many CUDA codes do) names the running launch's buffer.
extern __shared__ float file_scope_dynamic[];

__global__ void reverse_through_file_scope_shared(const float* in, float* out) {
    const int t = threadIdx.x;
    file_scope_dynamic[t] = in[blockIdx.x * blockDim.x + t];
    __syncthreads();
    out[blockIdx.x * blockDim.x + t] = file_scope_dynamic[blockDim.x - 1 - t];
}
