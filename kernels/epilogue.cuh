// Activations in the epilogue: act(z) on a GEMM's result while it is in registers, and dy · act'(z) for the
// backward pass. linear/activations.py holds their numpy references and the names; the codes below are the
// positions of the names in its ACTIVATIONS.
//
//   0  none       act(z) = z                                   dz = dy
//   1  relu       act(z) = z < 0 ? 0 : z                       dz = z <= 0 ? 0 : dy   (a select)
//   2  gelu       act(z) = z · Φ(z)                            dz = dy · (Φ(z) + z·φ(z))
//                 Φ(z) = ½(1 + erf(z/√2)), φ(z) = e^(-z²/2)/√(2π)
//   3  gelu_tanh  act(z) = ½z(1 + tanh u)                      dz = dy · (½(1 + tanh u) + ½z(1 − tanh²u)·u')
//                 u = √(2/π)(z + κz³), u' = √(2/π)(1 + 3κz²), κ = 0.044715
//   4  silu       act(z) = z / (1 + e^(-z)) = z·σ(z)           dz = dy · σ(z)(1 + z(1 − σ(z)))
//
// Written as torch writes them (aten's activation kernels), so NaN and ±inf come out as there: relu keeps a
// NaN and its select passes dy for a NaN z (torch's threshold_backward tests z <= 0); gelu(−inf), silu(−inf),
// and every derivative at ±inf but relu's are NaN (∞ · 0). float, __half and __nv_bfloat16 compute in float
// (erff, tanhf, expf: the precise functions, not the __ intrinsics), double in double.
//
// The activation is a runtime kernel argument, not a template parameter. Every instantiation compiles with
// nvcc (sm_80, sm_90) and with NVRTC in CI; a template parameter would multiply the GEMM instantiations by 5
// and CI's compile time with them. The price of the argument: one uniform branch (every thread of the grid
// takes the same way) after the K loop, which the argument does not touch; without an activation the
// epilogue is what it was. With one, the values pass through shared memory to a loop that is not unrolled
// (staging, below): a barrier, a shared-memory store and load and about 20 instructions per element of C,
// against the 2·K FLOPs each element cost in the K loop.
//
// Z, the pre-activation, is stored beside C when the launch asks (store_preact): the gradients of gelu,
// gelu_tanh and silu need it; relu's needs only where Z > 0, which the output itself tells.
#pragma once

#include "common.cuh"

enum Activation : int { ACTIVATION_NONE = 0, ACTIVATION_RELU = 1, ACTIVATION_GELU = 2, ACTIVATION_GELU_TANH = 3,
                        ACTIVATION_SILU = 4 };

// torch's constants (M_SQRT1_2; M_2_SQRTPI · M_SQRT1_2 · ½; M_SQRT2 · M_2_SQRTPI · ½; κ).
constexpr double GELU_SQRT1_2 = 0.70710678118654752440;    // 1/√2
constexpr double GELU_PDF_SCALE = 0.39894228040143267794;  // 1/√(2π)
constexpr double GELU_TANH_BETA = 0.79788456080286535588;  // √(2/π)
constexpr double GELU_TANH_KAPPA = 0.044715;

__device__ __forceinline__ float math_erf(float x) { return erff(x); }
__device__ __forceinline__ double math_erf(double x) { return erf(x); }
__device__ __forceinline__ float math_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double math_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float math_exp(float x) { return expf(x); }
__device__ __forceinline__ double math_exp(double x) { return exp(x); }

// act(z), Acc = float or double.
template <typename Acc>
__device__ __forceinline__ Acc activate(int activation, Acc z) {
    const Acc one = Acc(1), half = Acc(0.5);
    switch (activation) {
    case ACTIVATION_RELU:
        return z < Acc(0) ? Acc(0) : z;
    case ACTIVATION_GELU:
        return z * half * (one + math_erf(z * Acc(GELU_SQRT1_2)));
    case ACTIVATION_GELU_TANH:
        return half * z * (one + math_tanh(Acc(GELU_TANH_BETA) * (z + Acc(GELU_TANH_KAPPA) * (z * z * z))));
    case ACTIVATION_SILU:
        return z / (one + math_exp(-z));
    default:
        return z;
    }
}

// dy · act'(z) (relu: the select), Acc = float or double.
template <typename Acc>
__device__ __forceinline__ Acc activation_grad(int activation, Acc dy, Acc z) {
    const Acc one = Acc(1), half = Acc(0.5);
    switch (activation) {
    case ACTIVATION_RELU:
        return z <= Acc(0) ? Acc(0) : dy;
    case ACTIVATION_GELU: {
        const Acc cdf = half * (one + math_erf(z * Acc(GELU_SQRT1_2)));
        const Acc pdf = math_exp(-half * z * z) * Acc(GELU_PDF_SCALE);
        return dy * (cdf + z * pdf);
    }
    case ACTIVATION_GELU_TANH: {
        const Acc beta = Acc(GELU_TANH_BETA), kappa = Acc(GELU_TANH_KAPPA);
        const Acc z_sq = z * z;
        const Acc tanh_inner = math_tanh(beta * (z + kappa * (z_sq * z)));
        const Acc left_derivative = half * (one + tanh_inner);
        const Acc right_derivative = half * z * (one - tanh_inner * tanh_inner);
        const Acc inner_derivative = beta * (one + Acc(3) * kappa * z_sq);
        return dy * (left_derivative + right_derivative * inner_derivative);
    }
    case ACTIVATION_SILU: {
        const Acc sigmoid = one / (one + math_exp(-z));
        return dy * sigmoid * (one + z * (one - sigmoid));
    }
    default:
        return dy;
    }
}

// The end of every epilogue: Z (when stored) and act(Z) as elements of C's type.
template <typename TC, typename Acc>
__device__ __forceinline__ void store_activated(TC* c, TC* preact, int store_preact, int activation, Acc z) {
    if (store_preact) *preact = to_element<TC>(z);
    *c = to_element<TC>(activate(activation, z));
}

// Staging. A thread's tile is unrolled in registers (acc[i][j] needs compile-time indices), and activate()
// inlined at each of its 32-128 elements would repeat erff, tanhf and expf that many times: nvcc took 11x as
// long on a GEMM so written (29 s instead of 2.5 s for three instantiations), which CI's compile checks
// cannot afford. So an epilogue with an activation, or with Z to store, writes its accumulators to shared
// memory (the K loop's tiles being done with) and finishes each value in a loop that is not unrolled:
// alpha, beta·C, the bias, Z and act(Z), one copy of the functions per round. Each thread reads back only
// its own slots (slot v of thread t at v·THREADS + t: a warp's accesses fall in distinct banks), so one
// barrier before the first round (the other warps' last reads of the tiles) is all it needs; C is still
// written once, from the chip. Without an activation or Z the epilogue stores straight from the registers,
// as before. (Keeping alpha, beta·C and the bias in the unrolled part made the 128-register float32 kernels
// spill.) wgmma_gemm.cu stages in areas of its own instead of the K loop's tiles, which its producer is
// already refilling for the next tile.
//
// The rounds an epilogue stages `passes` passes of `per_pass` values (every thread's) in, when shared
// memory holds `capacity` accumulators: the fewest that divide `passes` and fit.
__host__ __device__ constexpr int staging_rounds(int passes, int per_pass, int capacity) {
    int rounds = 1;
    while (rounds < passes && (passes % rounds != 0 || passes / rounds * per_pass > capacity)) ++rounds;
    return rounds;
}
