// linear_wgmma_gemm: C = act(alpha · op(A) · op(B) + beta · C  (+ bias[None, :])) on Hopper's tensor cores
//
//   The contract of gemm.cu and tc_gemm.cu (read them first): op(A) is M x K, op(B) is K x N, C row-major
//   with a leading dimension, transposes as the compile-time flags TRANS_A / TRANS_B (NN for Y = X·W, NT
//   for dX = dY·Wᵀ, TN for dW = Xᵀ·dY, and TT), split-K into a float workspace that linear_sum_splits
//   adds in a fixed order, and a batch of matrices. T = __half or __nv_bfloat16, or float read as TF32
//   (wgmma takes 32-bit operands K-major only: the NT product alone), float accumulation, sm_90a only
//   (wgmma, TMA, mbarrier, setmaxnreg).
//
//   A and B do not come in as pointers but as TMA tensor maps (`const __grid_constant__ CUtensorMap`),
//   3-D: the matrix as stored (innermost dimension first) and the batch. The plan makes them once per
//   (pointer, shape, strides, box) and caches them; batched_a / batched_b are 0 for an operand that every
//   matrix of the stack shares (coordinate 0 of its batch dimension), 1 otherwise.
//
// Warp specialisation: a block of 3 warpgroups (384 threads), one block per SM, persistent:
//
//     warpgroup 0: the producer. setmaxnreg.dec to 40 registers; one thread issues every TMA load,
//                  the other 127 threads leave at once.
//     warpgroups 1, 2: the consumers. setmaxnreg.inc to 232; consumer c owns rows 64c .. 64c + 63 of the
//                  block's 128 x BN tile of C: BN / 2 float accumulators per thread, one wgmma
//                  m64nBNk16 per k-step of 16 (m64nBNk8 per 8 for TF32: 32 bytes of K either way).
//
// Tiling: BM x BN x BK = 128 x BN x 64 (BN = 128 or 256; BK = 32 for TF32: a stage's k is one 128-byte
// row); a stage is the A tile (128 x BK) and the B tile (BK x BN), each kept as TMA's 128-byte swizzle
// stores it, 128 bytes of the contiguous dimension per row (drawn for 16-bit types):
//
//                                  op(B), K x N                      B K-major (TRANS_B, stored N x K):
//                            ┌──────── BN ────────┐                  one box of BN rows of 64 k.
//                      BK=64 │      stage s       │                  B MN-major (stored K x N): BN / 64
//                            └────────────────────┘                  boxes of 64 k-rows of 64 n.
//            ┌─ BK ─┐        ┌────────────────────┐
//        64  │  A   │        │ consumer 0: 64 x BN│  wgmma m64nBNk16 x 4 per stage
//   BM  ─────┤stage │  ───>  ├────────────────────┤
//   =128 64  │  s   │        │ consumer 1: 64 x BN│  A K-major (stored M x K): one box of 128 rows;
//            └──────┘        └────────────────────┘  A MN-major (TRANS_A, stored K x M): 2 boxes of 64 m
//
//   Both layouts are wgmma's canonical 128B-swizzled ones (PTX ISA, "shared memory matrix layout"):
//   K-major, rows of 128 bytes in 1024-byte groups of 8 rows (SBO = 1024), a k-step (16 halves, 8 TF32)
//   is 32 bytes further along the row; MN-major (imm-trans = 1), 64-element panels of 64 k-rows (LBO = 8192 from one
//   panel to the next, SBO = 1024 between groups of 8 k-rows), a k-step is 16 rows = 2048 bytes further.
//   The transposes are therefore descriptor modes, never copies. Every tile starts on a 1024-byte
//   boundary (the swizzle's repeat), so the descriptors' base offset is 0.
//
// The pipeline: STAGES stages in a ring, each guarded by two mbarriers:
//     full[s]   1 arrival (the producer's arrive.expect_tx of the stage's bytes) + the bytes TMA delivers
//     empty[s]  2 arrivals, one thread per consumer warpgroup, once its wgmma have read the stage
//   producer, per k-block:  wait empty[s] (parity of its round ^ 1: a fresh barrier counts as released)
//                           arrive.expect_tx(full[s], stage bytes); TMA loads of the A and B boxes
//   consumer, per k-block:  wait full[s]; wgmma.fence; 4 x wgmma (k-steps 0..3); commit
//                           wait_group 1 (the previous k-block's group has read its stage): arrive empty
//   so the tensor cores always have one k-block queued behind the one they run, and the producer runs up
//   to STAGES k-blocks ahead. Waits are raw parity waits (mbarrier.try_wait.parity in a loop); the ring's
//   stage index and parity run on across the block's tiles, so the producer fetches the next tile while
//   the consumers write this one.
//
// Work: units = tiles · batches · splits, unit u = ((batch · splits + split) · tiles + t); block b takes
// units b, b + gridDim.x, ... (the grid is at most one block per SM). Tiles are taken in groups of
// GROUP_M tile-rows, column after column inside a group, so that the blocks running at one time share
// A's row panels and B's column panels in L2.
//
// Edges: TMA fills elements outside the tensor with zeros (any M, N, K: a partial k-block multiplies
// zeros); the epilogue masks rows >= M and columns >= N. A split covers k_per_split (a multiple of BK,
// as cost.split_k makes it) so that no k-block straddles two splits.
//
// Epilogue, in chunks of 64 columns: z = alpha · acc + beta · C (read only when beta != 0) + bias, then
// C = act(z) and Z = z beside it when the launch asks (store_preact), as elements of TC with the edge
// masks, two adjacent columns stored at once where C allows (kernels/epilogue.cuh: the activation is a
// runtime argument). Without an activation or Z it runs straight from the registers. With one it stages,
// as tc_gemm.cu does (epilogue.cuh says why), but not through the ring: the producer is already refilling
// it for the block's next tile. Each consumer warpgroup has a staging area of its own after the ring, a
// chunk's 32 accumulators per thread (slot v of thread t at v · 128 + t: a warp's accesses fall in distinct
// banks), 16 KiB each; a thread reads back only its own slots, so no barrier is needed, and a loop that is
// not unrolled finishes each pair of columns. A split-K launch writes plain sums to the workspace (alpha
// 1, no beta, bias or activation) and linear_sum_splits applies all of it, the activation included: the
// workspace's instantiations (TC = float) compile the register epilogue only.
//
// Shared memory (the plan asks for WgmmaConfig.shared_bytes): 1024 bytes of alignment slack, the ring
// (STAGES · STAGE_BYTES = 192 KiB for both tiles) and the staging areas (32 KiB): 225 KiB of the 227 KiB a
// block may have, and the barriers (static).
//
// Template parameters:
//   T        __half or __nv_bfloat16; float (TF32) with TRANS_A = false, TRANS_B = true only
//   TC       element type of C: T, or float when C is a split-K workspace
//   TRANS_A, TRANS_B   as in gemm.cu
//   BN       the block's C tile width, 128 or 256 (the wgmma's N)
//   STAGES   depth of the shared-memory ring (>= 2)
#include "common.cuh"
#include "epilogue.cuh"
#include "ptx_sm90.cuh"

constexpr int WGMMA_BM = 128;            // two consumer warpgroups of 64 rows
constexpr int WGMMA_SWIZZLE_ROW = 128;   // bytes of a swizzled row: a stage's k depth (BK = 64 halves, 32 floats)
constexpr int WGMMA_STEP_BYTES = 32;     // the k of one wgmma.mma_async: 16 halves or 8 TF32 values
constexpr int WGMMA_PANEL = 64;          // elements of an MN-major box's row (128 bytes of 16-bit values)
constexpr int WGMMA_SWIZZLE_GROUP = 1024;  // bytes of a group of 8 swizzled rows (the pattern's repeat)
constexpr int WGMMA_CONSUMERS = 2;
constexpr int WGMMA_THREADS = (1 + WGMMA_CONSUMERS) * 128;
constexpr int WGMMA_EPILOGUE_COLUMNS = 64;  // columns of C per chunk of the epilogue
constexpr int WGMMA_STAGED = WGMMA_EPILOGUE_COLUMNS / 2;  // a consumer thread's accumulators of one chunk
constexpr int WGMMA_STAGING_BYTES = WGMMA_CONSUMERS * 128 * WGMMA_STAGED * 4;  // 32 KiB, after the ring
constexpr int WGMMA_GROUP_M = 8;         // tile rows of a group in the L2-friendly tile order
constexpr unsigned WGMMA_PRODUCER_REGISTERS = 40;   // 128 · 40 + 256 · 232 = 64,512 <= 65,536
constexpr unsigned WGMMA_CONSUMER_REGISTERS = 232;

// One operand's tile in a stage: BK of k by ROWS of m (A) or n (B), elements of type T, as TMA stores it
// with the 128-byte swizzle. K-major: ROWS rows of BK k (128 bytes); MN-major (16-bit T only: wgmma
// transposes no 32-bit operand): ROWS / 64 panels, each BK = 64 k-rows of 64 m or n.
template <typename T, bool MN_MAJOR, int ROWS>
struct OperandTile {
    static constexpr int BK = WGMMA_SWIZZLE_ROW / sizeof(T);
    static constexpr int BYTES = ROWS * BK * sizeof(T);
    static constexpr int BOXES = MN_MAJOR ? ROWS / WGMMA_PANEL : 1;  // TMA loads per stage
    static constexpr int BOX_BYTES = BYTES / BOXES;
    static constexpr unsigned LBO = MN_MAJOR ? BK * WGMMA_SWIZZLE_ROW : 16;  // unused when K-major
    static constexpr unsigned SBO = WGMMA_SWIZZLE_GROUP;
    static_assert(ROWS % WGMMA_PANEL == 0 && ROWS <= 256, "whole panels, and a TMA box is at most 256 rows");
    static_assert(!MN_MAJOR || sizeof(T) == 2, "MN-major operands (imm-trans) are 16-bit only");

    // Bytes from the tile's start to the operand of k-step `step` (WGMMA_STEP_BYTES of k) whose m or n
    // begins at `row` (a multiple of 64): MN-major, a k-step is that many k-rows further.
    static __device__ __forceinline__ unsigned offset(int row, int step) {
        return MN_MAJOR ? row / WGMMA_PANEL * BOX_BYTES + step * WGMMA_STEP_BYTES / sizeof(T) * WGMMA_SWIZZLE_ROW
                        : row * WGMMA_SWIZZLE_ROW + step * WGMMA_STEP_BYTES;
    }

    // The descriptor of that operand in the tile at shared address `tile`.
    static __device__ __forceinline__ sm90::Descriptor descriptor(unsigned tile, int row, int step) {
        return sm90::make_descriptor(tile + offset(row, step), LBO, SBO, sm90::SWIZZLE_128B);
    }

    // TMA loads of the tile whose first row (m or n) is row0 and first k is k0 into shared address
    // `tile`, completing on barrier `bar`.
    static __device__ __forceinline__ void load(unsigned tile, const CUtensorMap* map, int row0, int k0, int batch,
                                                unsigned bar) {
#pragma unroll
        for (int i = 0; i < BOXES; ++i) {
            if constexpr (MN_MAJOR)
                sm90::tma_load_3d(tile + i * BOX_BYTES, map, row0 + i * WGMMA_PANEL, k0, batch, bar);
            else
                sm90::tma_load_3d(tile, map, k0, row0, batch, bar);
        }
    }
};

// Two adjacent elements of C, stored at once.
template <typename TC>
struct alignas(2 * sizeof(TC)) Pair {
    TC v[2];
};

// Columns col and col + 1 (when < N) of one row of C and of Z from their products alpha · acc (z):
// + beta · C + bias, then C = act(z) and Z = z (store_preact), each pair stored at once when `pairs`.
// The register epilogue calls it with ACTIVATION_NONE and no Z, constants that fold activate() away.
template <typename T, typename TC>
__device__ __forceinline__ void finish_pair(TC* c_row, TC* z_row, int col, int N, const float (&z)[2], float beta,
                                            const T* bias, int add_bias, int activation, int store_preact,
                                            bool pairs) {
    Pair<TC> out, preact;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const bool inside = col + r < N;
        float value = z[r];
        if (beta != 0.0f && inside) value += beta * to_acc(c_row[col + r]);
        if (add_bias && inside) value += to_acc(bias[col + r]);
        preact.v[r] = to_element<TC>(value);
        out.v[r] = to_element<TC>(activate(activation, value));
    }
    const auto store = [&](TC* row, const Pair<TC>& values) {
        if (pairs && col + 1 < N) {
            *reinterpret_cast<Pair<TC>*>(row + col) = values;
        } else {
            row[col] = values.v[0];
            if (col + 1 < N) row[col + 1] = values.v[1];
        }
    };
    store(c_row, out);
    if (store_preact) store(z_row, preact);
}

// The work of one unit: its C tile, batch and K split (k-blocks of BK). 32-bit arithmetic (the plan keeps
// the unit count below 2^31): a 64-bit division is a subroutine call, across which the live accumulators
// would spill.
template <int BN, int BK>
struct WgmmaUnit {
    int m0, n0, split, batch, k_begin, steps;

    __device__ __forceinline__ WgmmaUnit(unsigned unit, int M, int N, int K, int k_per_split, int splits) {
        const unsigned tiles_m = ceil_div(M, WGMMA_BM), tiles_n = ceil_div(N, BN), tiles = tiles_m * tiles_n;
        const unsigned z = unit / tiles, t = unit - z * tiles;
        split = int(z % unsigned(splits));
        batch = int(z / unsigned(splits));
        // Groups of GROUP_M tile-rows (the last one shorter), walked column by column.
        const unsigned per_group = WGMMA_GROUP_M * tiles_n, in_group = t % per_group;
        const unsigned first = t / per_group * WGMMA_GROUP_M, rows = min(tiles_m - first, unsigned(WGMMA_GROUP_M));
        m0 = int(first + in_group % rows) * WGMMA_BM;
        n0 = int(in_group / rows) * BN;
        k_begin = split * k_per_split;
        const int k_end = K - k_begin < k_per_split ? K : k_begin + k_per_split;
        steps = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;
    }
};

template <typename T, typename TC, bool TRANS_A, bool TRANS_B, int BN, int STAGES>
__global__ void __launch_bounds__(WGMMA_THREADS, 1)
linear_wgmma_gemm(int M, int N, int K, int k_per_split, int splits, int batches,
                  const __grid_constant__ CUtensorMap map_a, int batched_a,
                  const __grid_constant__ CUtensorMap map_b, int batched_b,
                  TC* __restrict__ C, long long ldc, long long batch_stride_c, long long c_split_stride,
                  float alpha, float beta, const T* __restrict__ bias, int add_bias,
                  int activation, TC* __restrict__ preact, int store_preact) {
    static_assert(sizeof(T) == 2 || (sizeof(T) == 4 && !TRANS_A && TRANS_B),
                  "16-bit operands, or float (TF32) with both K-major: A stored M x K, B stored N x K (NT)");
    static_assert(BN == 128 || BN == 256, "the wgmma N of the tile");
    static_assert(STAGES >= 2, "a pipeline needs two stages");
    using TileA = OperandTile<T, TRANS_A, WGMMA_BM>;  // A is M x K: K-major unless TRANS_A
    using TileB = OperandTile<T, !TRANS_B, BN>;       // B is K x N: MN-major unless TRANS_B (stored N x K)
    constexpr int BK = TileA::BK;
    constexpr int STAGE_BYTES = TileA::BYTES + TileB::BYTES;
    constexpr int K_STEPS = WGMMA_SWIZZLE_ROW / WGMMA_STEP_BYTES;
    constexpr bool WORKSPACE = sizeof(TC) != sizeof(T);  // C is the float workspace of a half-type split-K

    __shared__ __align__(8) unsigned long long barriers[2 * STAGES];  // full[STAGES], then empty[STAGES]
    // The stages start on the first 1024-byte boundary of the dynamic shared memory, the staging areas
    // follow them (the plan asks for 1024 + STAGES · STAGE_BYTES + WGMMA_STAGING_BYTES bytes).
    extern __shared__ __align__(128) unsigned char wgmma_shared[];
    const unsigned stages = (sm90::shared_address(wgmma_shared) + WGMMA_SWIZZLE_GROUP - 1) & ~(WGMMA_SWIZZLE_GROUP - 1u);
    static_assert(WGMMA_SWIZZLE_GROUP + STAGES * STAGE_BYTES + WGMMA_STAGING_BYTES <= 227 * 1024,
                  "the ring and the staging areas fit a block's shared memory");
    const unsigned full0 = sm90::shared_address(barriers), empty0 = full0 + 8 * STAGES;

    if (threadIdx.x == 0) {
#pragma unroll
        for (int s = 0; s < STAGES; ++s) {
            sm90::mbarrier_init(full0 + 8 * s, 1);
            sm90::mbarrier_init(empty0 + 8 * s, WGMMA_CONSUMERS);
        }
        sm90::fence_mbarrier_init();  // the barriers are initialised before TMA completes on them
    }
    __syncthreads();

    const unsigned units = unsigned(ceil_div(M, WGMMA_BM) * ceil_div(N, BN)) * batches * splits;
    const int warpgroup = threadIdx.x / 128;

    if (warpgroup == 0) {  // the producer
        sm90::setmaxnreg_dec<WGMMA_PRODUCER_REGISTERS>();
        if (threadIdx.x != 0) return;
        sm90::prefetch_tensormap(&map_a);
        sm90::prefetch_tensormap(&map_b);
        int stage = 0;
        unsigned round = 0;  // how many times the ring has wrapped: its parity is the stage's phase
        for (unsigned unit = blockIdx.x; unit < units; unit += gridDim.x) {
            const WgmmaUnit<BN, BK> u(unit, M, N, K, k_per_split, splits);
            const int batch_a = batched_a ? u.batch : 0, batch_b = batched_b ? u.batch : 0;
            for (int step = 0; step < u.steps; ++step) {
                while (!sm90::mbarrier_try_wait_parity(empty0 + 8 * stage, (round & 1) ^ 1)) {
                }
                const unsigned bar = full0 + 8 * stage, tile = stages + stage * STAGE_BYTES;
                sm90::mbarrier_arrive_expect_tx(bar, STAGE_BYTES);
                const int k0 = u.k_begin + step * BK;
                TileA::load(tile, &map_a, u.m0, k0, batch_a, bar);
                TileB::load(tile + TileA::BYTES, &map_b, u.n0, k0, batch_b, bar);
                if (++stage == STAGES) stage = 0, ++round;
            }
        }
        return;
    }

    // The consumers.
    sm90::setmaxnreg_inc<WGMMA_CONSUMER_REGISTERS>();
    const int consumer = warpgroup - 1;
    float* const staging =  // the staging areas, after the ring
        reinterpret_cast<float*>(wgmma_shared + (stages - sm90::shared_address(wgmma_shared)) + STAGES * STAGE_BYTES);
    const bool signals = threadIdx.x % 128 == 0;  // the thread that releases stages for its warpgroup
    int stage = 0;
    unsigned round = 0;
    float acc[BN / 2];
    for (unsigned unit = blockIdx.x; unit < units; unit += gridDim.x) {
        const WgmmaUnit<BN, BK> u(unit, M, N, K, k_per_split, splits);
        int previous = 0;
        for (int step = 0; step < u.steps; ++step) {
            while (!sm90::mbarrier_try_wait_parity(full0 + 8 * stage, round & 1)) {
            }
            const unsigned tile = stages + stage * STAGE_BYTES;
            sm90::fence_accumulators(acc);
            sm90::wgmma_fence();  // the epilogue's reads of acc (previous tile) come before these wgmma
#pragma unroll
            for (int s = 0; s < K_STEPS; ++s)
                sm90::wgmma_m64<T, BN, TRANS_A, !TRANS_B>(acc, TileA::descriptor(tile, 64 * consumer, s),
                                                          TileB::descriptor(tile + TileA::BYTES, 0, s),
                                                          step > 0 || s > 0);
            sm90::wgmma_commit_group();
            if (step > 0) {
                sm90::wgmma_wait_group<1>();  // the previous k-block's wgmma have read their stage
                if (signals) sm90::mbarrier_arrive(empty0 + 8 * previous);
            }
            previous = stage;
            if (++stage == STAGES) stage = 0, ++round;
        }
        sm90::wgmma_wait_group<0>();
        sm90::fence_accumulators(acc);
        if (u.steps > 0 && signals) sm90::mbarrier_arrive(empty0 + 8 * previous);
        // An empty K range (K = 0) has the product 0 and acc holds nothing of this tile: the epilogue
        // selects 0 (setting acc = 0 here instead would make the compiler copy every accumulator).

        // Epilogue: acc[i] is C(row0 + 8·(i/2 % 2), n0 + 8·(i/4) + 2q + i%2) (ptx_sm90.cuh's layout): a
        // thread's two adjacent columns are stored together when C's (and Z's) rows and pointers allow it
        // (one 4-byte store of two halves), in chunks of 64 columns: the compiler barrier between chunks
        // keeps the register epilogue from loading every C and bias value of the tile at once (more
        // registers than there are). Pair p of a chunk: acc[32 · chunk + 2p] and the next, at C(row_of(p),
        // col_of(chunk, p)) and the next column.
        const long long c_offset = u.batch * batch_stride_c + u.split * c_split_stride;  // 64-bit; Z's too
        TC* const c_tile = C + c_offset;
        TC* const z_tile = preact + c_offset;
        const auto aligned = [](const TC* p) {
            return reinterpret_cast<unsigned long long>(p) % sizeof(Pair<TC>) == 0;
        };
        const bool pairs = ldc % 2 == 0 && aligned(c_tile) && (!store_preact || aligned(z_tile));
        const int lane = threadIdx.x % 32, q = lane % 4;
        const int row0 = u.m0 + 64 * consumer + 16 * (threadIdx.x % 128 / 32) + lane / 4;
        const auto row_of = [&](int p) { return row0 + 8 * (p % 2); };
        const auto col_of = [&](int chunk, int p) {
            return u.n0 + chunk * WGMMA_EPILOGUE_COLUMNS + 8 * (p / 2) + 2 * q;
        };
        // TC = float is split-K's workspace (T is 16-bit), for which the launch asks for neither (linear_sum_splits
        // applies them): that instantiation compiles the register epilogue only.
        if (WORKSPACE || (activation == ACTIVATION_NONE && !store_preact)) {
#pragma unroll
            for (int chunk = 0; chunk < BN / WGMMA_EPILOGUE_COLUMNS; ++chunk) {
#pragma unroll
                for (int p = 0; p < WGMMA_STAGED / 2; ++p) {
                    const int row = row_of(p), col = col_of(chunk, p), i = chunk * WGMMA_STAGED + 2 * p;
                    if (row >= M || col >= N) continue;
                    const float z[2] = {u.steps > 0 ? alpha * acc[i] : 0.0f, u.steps > 0 ? alpha * acc[i + 1] : 0.0f};
                    finish_pair(c_tile + row * ldc, z_tile + row * ldc, col, N, z, beta, bias, add_bias,
                                ACTIVATION_NONE, 0, pairs);
                }
                asm volatile("" ::: "memory");
            }
            continue;
        }
        // Staged: the chunk loop is not unrolled either (one copy of the finishing loop, not BN / 64); a
        // chunk's accumulators are picked by compile-time indices under a uniform test.
        float* const slots = staging + consumer * 128 * WGMMA_STAGED + threadIdx.x % 128;
#pragma unroll 1
        for (int chunk = 0; chunk < BN / WGMMA_EPILOGUE_COLUMNS; ++chunk) {
#pragma unroll
            for (int c = 0; c < BN / WGMMA_EPILOGUE_COLUMNS; ++c) {
                if (c != chunk) continue;
#pragma unroll
                for (int v = 0; v < WGMMA_STAGED; ++v) slots[v * 128] = acc[c * WGMMA_STAGED + v];
            }
#pragma unroll 1
            for (int p = 0; p < WGMMA_STAGED / 2; ++p) {
                const int row = row_of(p), col = col_of(chunk, p);
                if (row >= M || col >= N) continue;
                const float z[2] = {u.steps > 0 ? alpha * slots[2 * p * 128] : 0.0f,
                                    u.steps > 0 ? alpha * slots[(2 * p + 1) * 128] : 0.0f};
                finish_pair(c_tile + row * ldc, z_tile + row * ldc, col, N, z, beta, bias, add_bias, activation,
                            store_preact, pairs);
            }
        }
    }
}
