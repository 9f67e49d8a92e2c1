// linear_tc_gemm: C = act(alpha · op(A) · op(B) + beta · C  (+ bias[None, :])) on tensor cores
//
//   The contract of gemm.cu (read it first): op(A) is M x K, op(B) is K x N, every matrix row-major with
//   a leading dimension, transposes as the compile-time flags TRANS_A / TRANS_B (NN for Y = X·W, NT for
//   dX = dY·Wᵀ, TN for dW = Xᵀ·dY), split-K into a float workspace that linear_sum_splits adds in a
//   fixed order, and a batch of matrices along the grid's z.
//     T = __half, __nv_bfloat16: mma.sync m16n8k16, float accumulation;
//     T = float: TF32 (operands rounded to nearest, ties away, by cvt.rna), mma.sync m16n8k8; each
//     element is rounded once, in shared memory, by the thread that copied it there.
//
// Tiling: one block of (BM/WM)·(BN/WN) warps per BM x BN tile of C; each warp owns a WM x WN sub-tile
// as (WM/16) x (WN/8) mma tiles of 16 x 8 floats in registers (4 per lane). BM x BN x BK = 128 x 128 x
// 32 bytes' worth of k as 8 warps of 64 x 32, e.g. for bf16:
//
//          ┌──── BN = 128 ────┐      a warp's 64 x 32 sub-tile, 4 x 4 mma tiles of 16 x 8:
//          │ w0 │ w1 │ w2 │ w3 │        ┌──┬──┬──┬──┐
//     BM   ├────┼────┼────┼────┤        │  │  │  │  │  per k-step of 16: 4 ldmatrix.x4 for A,
//    =128  │ w4 │ w5 │ w6 │ w7 │        ├──┼──┼──┼──┤  2 for B, 16 mma.sync
//          └────┴────┴────┴────┘        ...
//
// Shared memory: STAGES stages of the A and B tiles, each kept as it is stored in global memory (rows
// of k for A, of m for Aᵀ; rows of n for Bᵀ, of k for B), so that every 16-byte chunk travels by one
// cp.async with no transposition. ldmatrix (.trans for Aᵀ and B) turns the stored layout into the
// mma fragments. Chunk c of stored row r sits at chunk c ^ (r / (8 / chunks per row) % 8) of the row
// (or c ^ r % 8 when a row has 8 chunks or more): the 8 rows one ldmatrix phase reads, and the 8
// chunks of a 128-byte line cp.async writes, all fall in different banks.
// TF32 has no 32-bit ldmatrix.trans: Aᵀ fragments are read with 8-byte loads of two elements, for
// which the warp's mma rows are taken in a paired order (PAIRED_M below), and B fragments with one
// 4-byte load per element (2-way bank conflicts there); A and Bᵀ use ldmatrix like the half types.
//
// K loop: a STAGES-deep cp.async pipeline, one __syncthreads per step:
//     wait until tile t has landed (TF32: round it); __syncthreads()   (every warp also finished t-1)
//     cp.async tile t + STAGES - 1 into the stage tile t-1 used; commit
//     for each k-step: fragments of the next k-step (ldmatrix), mma.sync on the current ones
// The copies keep their source pointers and advance them one stage per step. Edge tiles (edge blocks,
// a partial last step) copy only the bytes inside the matrix and zero-fill the rest of each chunk
// (cp.async's source size), so any M, N and K work; interior tiles skip those checks. The plan sends
// here only operands whose pointer and leading dimension are 16-byte aligned (gemm.cu takes the rest).
//
// Template parameters:
//   T        __half, __nv_bfloat16, or float (TF32)
//   TC       element type of C: T, or float when C is a split-K workspace
//   TRANS_A, TRANS_B   as in gemm.cu
//   BM, BN, BK         the block's C tile and the k depth of one stage
//   WM, WN             a warp's sub-tile (multiples of 16 and 16)
//   STAGES             depth of the cp.async pipeline (>= 2)
#include "common.cuh"
#include "epilogue.cuh"
#include "ptx.cuh"

// One mma.sync per element type: its k depth, and what a thread does to a 16-byte chunk of a tile that
// has landed in shared memory before the barrier shares it.
template <typename T> struct Mma {  // __half and __nv_bfloat16: two elements per register
    static constexpr int K = 16;
    static constexpr bool ROUNDS = false;
    static __device__ __forceinline__ void prepare(T*) {}
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        mma_m16n8k16<T>(d, a, b);
    }
};
template <> struct Mma<float> {  // TF32: one element per register, each rounded once, in shared memory
    static constexpr int K = 8;
    static constexpr bool ROUNDS = true;
    static __device__ __forceinline__ void prepare(float* chunk) {
        float4 v = *reinterpret_cast<float4*>(chunk);
        v = make_float4(__uint_as_float(to_tf32(v.x)), __uint_as_float(to_tf32(v.y)), __uint_as_float(to_tf32(v.z)),
                        __uint_as_float(to_tf32(v.w)));
        *reinterpret_cast<float4*>(chunk) = v;
    }
    static __device__ __forceinline__ void run(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
        mma_m16n8k8_tf32(d, a, b);
    }
};

// A ROWS x COLS tile of a row-major matrix in shared memory, its 16-byte chunks swizzled per row.
// SPREAD = 2 for the tiles that TF32 reads one or two floats at a time from 4 consecutive rows (its
// k-major operands, which ldmatrix cannot read): each of those rows then moves by a different pair of
// chunks, so that such a read of a warp (8 floats of each row) touches every bank once. ldmatrix,
// which reads 8 consecutive rows of a chunk, wants SPREAD = 1.
template <typename T, int ROWS, int COLS, int SPREAD = 1>
struct SwizzledTile {
    using Element = T;
    static constexpr int V = 16 / int(sizeof(T));  // elements per chunk
    static constexpr int CHUNKS = COLS / V;        // chunks per row
    static constexpr int ROWS_PER_LINE = CHUNKS >= 8 ? 1 : 8 / CHUNKS;
    static constexpr int PATTERN = CHUNKS >= 8 ? 8 : CHUNKS;
    static constexpr int SIZE = ROWS * COLS;
    static constexpr int ROWS_ = ROWS, COLS_ = COLS;
    static_assert(COLS % V == 0 && CHUNKS >= 2 && (CHUNKS & (CHUNKS - 1)) == 0, "rows of 2^n chunks, n >= 1");

    static __device__ __forceinline__ int offset(int row, int col) {
        return row * COLS + ((col / V) ^ (row / ROWS_PER_LINE % (PATTERN / SPREAD) * SPREAD)) * V + col % V;
    }

};

// The cp.async copies one thread makes of one operand, stage after stage: its chunks keep their places
// in the tile (PER_THREAD of them, THREADS apart) while their sources move one stage along k per step.
// Pointers and coordinates are set once and advanced, so a step costs an add per chunk, not an index
// computation. Elements at rows >= row_end or columns >= col_end arrive as zeros: a chunk across the
// edge reads only its bytes inside the matrix.
template <typename Tile, int THREADS, bool K_ROWS>
struct TileCopier {
    using T = typename Tile::Element;
    static constexpr int V = Tile::V, PER_THREAD = Tile::ROWS_ * Tile::CHUNKS / THREADS;
    static constexpr int K_DEPTH = K_ROWS ? Tile::ROWS_ : Tile::COLS_;  // k per stage
    static_assert(Tile::ROWS_ * Tile::CHUNKS % THREADS == 0, "every thread copies the same number of chunks");

    const T* src[PER_THREAD];  // a chunk's first element in the matrix at the current step
    int row[PER_THREAD], col[PER_THREAD];  // and its coordinates there
    long long step;  // elements from one stage's source to the next

    // The tile whose first element is x[row0, col0] comes first.
    __device__ __forceinline__ TileCopier(const T* x, long long ld, int row0, int col0)
        : step(K_ROWS ? K_DEPTH * ld : K_DEPTH) {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int c = threadIdx.x + i * THREADS;
            row[i] = row0 + c / Tile::CHUNKS;
            col[i] = col0 + c % Tile::CHUNKS * V;
            src[i] = x + row[i] * ld + col[i];
        }
    }

    // Copies the current tile into `tile` and moves on to the next. CHECKED: the tile may cross the
    // matrix's edge (x: any valid address of the matrix, the source of the chunks that copy nothing);
    // otherwise every chunk is whole, and the bounds are not looked at.
    template <bool CHECKED>
    __device__ __forceinline__ void copy_and_advance(T* tile, const T* x, int row_end, int col_end) {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int c = threadIdx.x + i * THREADS;
            const bool inside = !CHECKED || (row[i] < row_end && col[i] < col_end);
            const int bytes = !CHECKED ? 16 : inside ? min(col_end - col[i], V) * int(sizeof(T)) : 0;
            cp_async_16(tile + Tile::offset(c / Tile::CHUNKS, c % Tile::CHUNKS * V), inside ? src[i] : x, bytes);
            src[i] += step;
            (K_ROWS ? row[i] : col[i]) += K_DEPTH;
        }
    }

    // Mma<T>::prepare on each chunk this thread copied into `tile`, once its wait has retired them.
    __device__ __forceinline__ void prepare_landed(T* tile) const {
#pragma unroll
        for (int i = 0; i < PER_THREAD; ++i) {
            const int c = threadIdx.x + i * THREADS;
            Mma<T>::prepare(tile + Tile::offset(c / Tile::CHUNKS, c % Tile::CHUNKS * V));
        }
    }
};

// The fragments of one k-step of a warp: A for its WM/16 mma rows, B for its WN/8 mma columns.
template <int M_TILES, int N_TILES>
struct Fragments {
    unsigned a[M_TILES][4];
    unsigned b[N_TILES][2];
};

template <typename T, typename TC, bool TRANS_A, bool TRANS_B, int BM, int BN, int BK, int WM, int WN, int STAGES>
__global__ void __launch_bounds__((BM / WM) * (BN / WN) * 32)
linear_tc_gemm(int M, int N, int K, int k_per_split, int splits,
               const T* __restrict__ A, long long lda, long long batch_stride_a,
               const T* __restrict__ B, long long ldb, long long batch_stride_b,
               TC* __restrict__ C, long long ldc, long long batch_stride_c, long long c_split_stride,
               float alpha, float beta, const T* __restrict__ bias, int add_bias,
               int activation, TC* __restrict__ preact, int store_preact) {
    using Op = Mma<T>;
    constexpr int WARPS_N = BN / WN, THREADS = (BM / WM) * WARPS_N * 32;
    constexpr int M_TILES = WM / 16, N_TILES = WN / 8, K_STEPS = BK / Op::K;
    static_assert(WM % 16 == 0 && WN % 16 == 0 && BM % WM == 0 && BN % WN == 0 && BK % Op::K == 0, "bad tiling");
    static_assert(STAGES >= 2, "a pipeline needs two stages");
    // TF32's Aᵀ has no ldmatrix.trans: its fragments are read from shared memory two floats at a time,
    // which puts a warp's mma rows g and g + 8 in adjacent rows 2g and 2g + 1 of its 16. Any order of
    // the rows gives the same products; the epilogue follows it.
    constexpr bool PAIRED_M = Op::ROUNDS && TRANS_A;
    // Stored layouts: A is M x K (rows of k) unless TRANS_A; B is K x N (rows of n) unless TRANS_B.
    using TileA = SwizzledTile<T, TRANS_A ? BK : BM, TRANS_A ? BM : BK, Op::ROUNDS && TRANS_A ? 2 : 1>;
    using TileB = SwizzledTile<T, TRANS_B ? BN : BK, TRANS_B ? BK : BN, Op::ROUNDS && !TRANS_B ? 2 : 1>;
    constexpr int V = TileA::V;

    extern __shared__ __align__(16) unsigned char tc_shared[];
    T* const As = reinterpret_cast<T*>(tc_shared);  // [STAGES][TileA::SIZE]
    T* const Bs = As + STAGES * TileA::SIZE;         // [STAGES][TileB::SIZE]

    const BlockWork<BK> work(K, k_per_split, splits);
    const int k_begin = work.k_begin, k_end = work.k_end, steps = work.steps;
    A += work.batch * batch_stride_a;
    B += work.batch * batch_stride_b;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm0 = warp / WARPS_N * WM, wn0 = warp % WARPS_N * WN;

    // The stages' tiles, k_begin first: rows and columns as stored, with their ends.
    TileCopier<TileA, THREADS, TRANS_A> copy_a(A, lda, TRANS_A ? k_begin : m0, TRANS_A ? m0 : k_begin);
    TileCopier<TileB, THREADS, !TRANS_B> copy_b(B, ldb, TRANS_B ? n0 : k_begin, TRANS_B ? k_begin : n0);
    // Tiles inside the matrices in every direction (all but the edge blocks' and the last k step's)
    // skip the bounds checks.
    const bool inside_mn = m0 + BM <= M && n0 + BN <= N;
    auto load_stage = [&](int stage, int k0) {
        T* const as = As + stage * TileA::SIZE;
        T* const bs = Bs + stage * TileB::SIZE;
        if (inside_mn && k0 + BK <= k_end) {
            copy_a.template copy_and_advance<false>(as, A, 0, 0);
            copy_b.template copy_and_advance<false>(bs, B, 0, 0);
        } else {
            copy_a.template copy_and_advance<true>(as, A, TRANS_A ? k_end : M, TRANS_A ? M : k_end);
            copy_b.template copy_and_advance<true>(bs, B, TRANS_B ? N : k_end, TRANS_B ? k_end : N);
        }
    };

    // The fragments of k-step kk (a multiple of Op::K) of a stage. Lane l gives ldmatrix the address of
    // row l % 8 of matrix l / 8; the matrices of an x4 are ordered as the fragment's registers.
    auto load_fragments = [&](const T* as, const T* bs, int kk, Fragments<M_TILES, N_TILES>& f) {
        const int g = lane / 4, t = lane % 4;
#pragma unroll
        for (int i = 0; i < M_TILES; ++i) {
            const int m = wm0 + 16 * i;
            if constexpr (!TRANS_A) {  // matrices (m 0-7 | 8-15) x (k first | second half)
                ldmatrix<4, false>(f.a[i], as + TileA::offset(m + lane % 8 + 8 * (lane / 8 % 2), kk + V * (lane / 16)));
            } else if constexpr (V == 8) {  // stored k-major: the same matrices, transposed on the way
                ldmatrix<4, true>(f.a[i], as + TileA::offset(kk + lane % 8 + 8 * (lane / 16), m + 8 * (lane / 8 % 2)));
            } else {  // TF32, stored k-major, mma rows g and g + 8 at m + 2g and m + 2g + 1 (PAIRED_M):
                      // a[r] = A(m + 2g + r%2, kk + t + 4·(r/2)), two adjacent floats per 8-byte load
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const float2 v = *reinterpret_cast<const float2*>(as + TileA::offset(kk + t + 4 * h, m + 2 * g));
                    f.a[i][2 * h] = __float_as_uint(v.x);
                    f.a[i][2 * h + 1] = __float_as_uint(v.y);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < N_TILES; j += 2) {  // two mma columns (16 n) per ldmatrix.x4
            const int n = wn0 + 8 * j;
            unsigned r[4];
            if constexpr (TRANS_B) {  // stored n-major: matrices (n 0-7: k halves, n 8-15: k halves)
                ldmatrix<4, false>(r, bs + TileB::offset(n + lane % 8 + 8 * (lane / 16), kk + V * (lane / 8 % 2)));
            } else if constexpr (V == 8) {  // stored k-major, transposed on the way
                ldmatrix<4, true>(r, bs + TileB::offset(kk + lane % 8 + 8 * (lane / 8 % 2), n + 8 * (lane / 16)));
            } else {  // TF32, stored k-major: b[r] of column n' = B(kk + t + 4·r, n' + g), one float per load
                      // (pairing two columns in 8-byte loads would cost a register move per element: the mma
                      // takes b[0], b[1] of one column as a register pair)
#pragma unroll
                for (int q = 0; q < 4; ++q)
                    r[q] = __float_as_uint(
                        reinterpret_cast<const float*>(bs)[TileB::offset(kk + t + 4 * (q % 2), n + 8 * (q / 2) + g)]);
            }
            f.b[j][0] = r[0];
            f.b[j][1] = r[1];
            f.b[j + 1][0] = r[2];
            f.b[j + 1][1] = r[3];
        }
    };

    float acc[M_TILES][N_TILES][4];
#pragma unroll
    for (int i = 0; i < M_TILES; ++i)
#pragma unroll
        for (int j = 0; j < N_TILES; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {  // the pipeline's first tiles; a group per stage, even empty
        if (s < steps) load_stage(s, k_begin + s * BK);
        cp_async_commit();
    }
    for (int t = 0; t < steps; ++t) {
        cp_async_wait<STAGES - 2>();  // tile t has landed (for this thread) ...
        if constexpr (Op::ROUNDS) {   // TF32: each element rounded once, by the thread that copied it
            copy_a.prepare_landed(As + t % STAGES * TileA::SIZE);
            copy_b.prepare_landed(Bs + t % STAGES * TileB::SIZE);
        }
        __syncthreads();              // ... for every thread, and no warp still reads tile t - 1
        const int next = t + STAGES - 1;
        if (next < steps) load_stage(next % STAGES, k_begin + next * BK);
        cp_async_commit();

        const T* const as = As + t % STAGES * TileA::SIZE;
        const T* const bs = Bs + t % STAGES * TileB::SIZE;
        Fragments<M_TILES, N_TILES> f[2];
        load_fragments(as, bs, 0, f[0]);
#pragma unroll
        for (int s = 0; s < K_STEPS; ++s) {
            if (s + 1 < K_STEPS) load_fragments(as, bs, (s + 1) * Op::K, f[(s + 1) % 2]);
#pragma unroll
            for (int i = 0; i < M_TILES; ++i)
#pragma unroll
                for (int j = 0; j < N_TILES; ++j) Op::run(acc[i][j], f[s % 2].a[i], f[s % 2].b[j]);
        }
    }

    // Epilogue: d[r] of mma tile (i, j) is C(wm0 + 16·i + g + 8·(r/2), wn0 + 8·j + 2t + r%2), with the
    // rows the paired TF32 reads moved: row g + 8h at 2g + h. As in gemm.cu: z = alpha · d (+ beta · C)
    // (+ bias) straight from the registers without an activation or Z to store; otherwise the accumulators
    // go to the pipeline's shared memory, a pass (i, half) being the thread's 2 · N_TILES values of one row,
    // and a loop that is not unrolled finishes each value: C = act(z), Z = z (epilogue.cuh).
    const long long c_offset = work.batch * batch_stride_c + work.split * c_split_stride;  // Z's too
    TC* const c_tile = C + c_offset;
    const int g = lane / 4, t = lane % 4;
    const auto row_of = [&](int pass) {  // pass = 2 · i + half
        return m0 + wm0 + 16 * (pass / 2) + (PAIRED_M ? 2 * g + pass % 2 : g + 8 * (pass % 2));
    };
    const auto col_of = [&](int value) { return n0 + wn0 + 8 * (value / 2) + 2 * t + value % 2; };  // 2 · j + r
    if (activation == ACTIVATION_NONE && !store_preact) {
#pragma unroll
        for (int pass = 0; pass < 2 * M_TILES; ++pass) {
            const int row = row_of(pass);
            if (row >= M) continue;
            TC* const c_row = c_tile + row * ldc;
#pragma unroll
            for (int v = 0; v < 2 * N_TILES; ++v) {
                const int col = col_of(v);
                if (col >= N) continue;
                float value = alpha * acc[pass / 2][v / 2][2 * (pass % 2) + v % 2];
                if (beta != 0.0f) value += beta * to_acc(c_row[col]);
                if (add_bias) value += to_acc(bias[col]);
                c_row[col] = to_element<TC>(value);
            }
        }
        return;
    }
    constexpr int PASSES = 2 * M_TILES, PER_PASS = 2 * N_TILES;
    constexpr int STAGED = STAGES * (TileA::SIZE + TileB::SIZE) * int(sizeof(T)) / int(sizeof(float));
    constexpr int ROUNDS = staging_rounds(PASSES, PER_PASS * THREADS, STAGED), ROUND_PASSES = PASSES / ROUNDS;
    static_assert(ROUND_PASSES * PER_PASS * THREADS <= STAGED, "a pass of every thread must fit");
    float* const slots = reinterpret_cast<float*>(tc_shared) + threadIdx.x;
    cp_async_wait<0>();  // the pipeline's last (empty) groups
    __syncthreads();     // every warp is done with the K loop's tiles
#pragma unroll
    for (int round = 0; round < ROUNDS; ++round) {
#pragma unroll
        for (int v = 0; v < ROUND_PASSES * PER_PASS; ++v) {
            const int pass = round * ROUND_PASSES + v / PER_PASS, value = v % PER_PASS;
            slots[v * THREADS] = acc[pass / 2][value / 2][2 * (pass % 2) + value % 2];
        }
#pragma unroll 1
        for (int v = 0; v < ROUND_PASSES * PER_PASS; ++v) {
            const int row = row_of(round * ROUND_PASSES + v / PER_PASS), col = col_of(v % PER_PASS);
            if (row >= M || col >= N) continue;
            const long long at = row * ldc + col;
            float value = alpha * slots[v * THREADS];
            if (beta != 0.0f) value += beta * to_acc(c_tile[at]);
            if (add_bias) value += to_acc(bias[col]);
            store_activated(c_tile + at, preact + c_offset + at, store_preact, activation, value);
        }
    }
}
