// linear_gemm: C = act(alpha · op(A) · op(B) + beta · C  (+ bias[None, :])), Z = the argument of act
//
//   op(X) is X or Xᵀ, chosen at compile time by TRANS_A / TRANS_B; op(A) is M x K, op(B) is K x N,
//   C is M x N. Every matrix is stored row-major with a leading dimension (lda, ldb, ldc), so a
//   transposed or Fortran-ordered view is the other flag, never a copy. The layer uses
//     NN  Y  = X · W  (+ bias)        NT  dX = dY · Wᵀ        TN  dW = Xᵀ · dY
//   and TT exists because matmul exposes both flags. Half types accumulate in float.
//
// Tiling: one thread block per BM x BN tile of C; grid = (⌈M/BM⌉, ⌈N/BN⌉, batch · splits).
//
// Batch (strided-batched GEMM, as numpy.matmul's stacks): blockIdx.z = batch_index · splits + split;
// matrix batch_index of A, B and C starts batch_stride_a/_b/_c elements after the previous one. A
// broadcast operand has stride 0, so every matrix of the stack reads the same one, never a copy.
//
//                                         n0     n0+BN
//                                  ┌──────┬──────┬──────┐
//                                  │      │  Bs  │      │  op(B), K x N: the block walks down its
//                                  │      │BKxBN │      │  column panel, BK rows per step
//                                  │      │  ↓   │      │
//                                  └──────┴──────┴──────┘
//              k0     k0+BK
//       ┌──────┬──────┬──────┐     ┌──────┬──────┬──────┐
//       │      │      │      │     │      │      │      │
//    m0 ├──────┼──────┼──────┤     ├──────┼──────┼──────┤
//       │      │  As  │      │     │      │  C   │      │  the C tile, BM x BN: each of the
//       │      │BMxBK │      │     │      │ tile │      │  (BM/TM)·(BN/TN) threads keeps
//       ├──────┼──────┼──────┤     ├──────┼──────┼──────┤  TM x TN of it in registers
//       └──────┴──────┴──────┘     └──────┴──────┴──────┘
//       op(A), M x K: the block walks along     C, M x N
//       its row panel, BK columns per step
//
// Groups: the threads form groups of (WM/TM)·(WN/TN); each group owns a WM x WN sub-tile of the C
// tile, the groups laid row by row. With WM x WN = BM x BN the whole block is one group; when a group
// is 32 threads it is a warp, and each warp reads only the rows of As and columns of Bs of its own
// sub-tile ("warp tiling": fewer distinct shared-memory bytes per warp and per FFMA).
//
// Inside a group, thread (lane_m, lane_n) owns TM/4 runs of 4 adjacent rows, WM/(TM/4) apart, and
// likewise TN/4 runs of 4 adjacent columns, WN/(TN/4) apart, so the 4-wide fragments that
// neighbouring threads read from shared memory are neighbours too. Lane map: bit 0 of the lane picks
// lane_m's low bit, the next bits lane_n, the rest lane_m's high bits. So lanes l and l^1 read the
// same B fragment and lanes l and l^2 the same A fragment: an LDS.128 whose lanes pair up that way
// returns in 2 cycles instead of 4 (shared memory returns 128 bytes a cycle; pairs of lanes with one
// address share a return). Per k, 4 LDS.128 take 8 cycles for TM·TN FFMA (tests/test_kernels.py
// checks every read of every configuration against this model). For TM = TN = 8, one group's
// WM x WN sub-tile:
//
//            WN/2          WN/2
//     ┌─────────────┬─────────────┐
//     │ t0 t2 t4 …  │ t0 t2 t4 …  │  rows 4·lane_m .. +3, columns 4·lane_n .. +3 of each quarter
//     │ t1 t3 t5 …  │ t1 t3 t5 …  │  (lanes 0 and 1 share columns, lanes 0 and 2 rows)
//     ├─────────────┼─────────────┤
//     │ t0 t2 t4 …  │ t0 t2 t4 …  │  WM/2 rows further down
//     │ t1 t3 t5 …  │ t1 t3 t5 …  │
//     └─────────────┴─────────────┘
//
// e.g. BM x BN = 128 x 128 as 8 warps of WM x WN = 32 x 64, each warp 4 x 8 threads of 8 x 8:
//
//     ┌────────┬────────┐
//     │ warp 0 │ warp 1 │   per k, a warp reads 2 runs of 4·4 = 16 A values (64 bytes each)
//     ├────────┼────────┤   and 2 runs of 8·4 = 32 B values (128 bytes each) for its 2048 FFMA;
//     │ warp 2 │ warp 3 │   as one group of 16 x 16 threads (WM x WN = BM x BN), a warp reads
//     ├────────┼────────┤   2 runs of 2·4 A values and 2 runs of 16·4 = 64 B values (256 bytes)
//     │   …    │   …    │
//     └────────┴────────┘
//
// K loop: double-buffered shared memory, one __syncthreads per step, fragments double-buffered in
// registers (float accumulators, interior blocks):
//     registers       ← global tile t+1        (issued first: its latency hides behind the math)
//     for k < BK:  fragments k+1 ← As/Bs[t%2] row k+1;  acc += fragments k  (a rank-1 update)
//       at k = BK-1 instead: As/Bs[(t+1)%2] ← registers, the barrier, fragments 0 ← row 0 of it
// Each thread keeps its shared-memory pointers (fragment reads, stores) and moves them to the other
// stage with one signed offset per step.
// Interior blocks (their C tile inside C, their split's K range whole BK steps) run this loop without
// a single bounds check; edge blocks run the same loop with the loader's checks. The choice is made
// once per block. Loader addresses are pointers advanced one step per load (no multiply by ld).
// Shared tiles are k-major (As[k][m], Bs[k][n], rows padded by SMEM_PAD) so the inner loop reads
// contiguous fragments; an operand stored with k contiguous is transposed on its way in.
//
// Epilogue: z = alpha · acc + beta · C + bias, then C = act(z) and, when store_preact, Z = z beside it
// (preact has C's leading dimension and batch stride): the activation (kernels/epilogue.cuh) is a runtime
// argument, a uniform branch per stored element, so that it does not multiply the instantiations.
//
// Split-K: split s handles k in [s·k_per_split, (s+1)·k_per_split) and writes C + s·c_split_stride.
// With several splits the plan points C at a workspace [splits, M, N] of the accumulator type
// (TC = acc_t<T>, alpha = 1, beta = 0, no bias, no activation); linear_sum_splits (reduce.cu) then adds
// the splits in a fixed order and applies alpha, beta·C, the bias and the activation: deterministic, no
// atomics.
//
// Template parameters:
//   T        element type of A, B and bias: float, double, __half, __nv_bfloat16
//   TC       element type of C: T, or acc_t<T> when C is a split-K workspace
//   TRANS_A  A is stored K x M (op(A) = Aᵀ); TRANS_B likewise, B stored N x K
//   BM, BN   the C tile of one block;  BK  the depth of one shared-memory step
//   WM, WN   the sub-tile of one group of threads (BM, BN: one group; 32 threads: a warp)
//   TM, TN   the outputs one thread owns (multiples of 4); the block has (BM/TM)·(BN/TN) threads
//   VEC      A and B allow 16-byte global loads (16-byte aligned pointers and leading dimensions);
//            partial chunks at the matrix edges still load element by element
//
// Which configuration, split-K and vector path run is the launch plan's choice (linear/backends/: tiles.py's
// TILE_CONFIGS, cost.py's model that picks among them, plan.py's launches); nothing here depends on it.
#include "common.cuh"
#include "epilogue.cuh"

// Shared-memory rows are padded by this many accumulators: the transposing stores of a tile then
// spread over all 32 banks, and rows stay 16-byte aligned. tiles.py mirrors it (SHARED_PAD).
constexpr int SMEM_PAD = 4;

// Four accumulators read from shared memory as one 16-byte access (two for double).
template <typename Acc> struct alignas(16) Quad { Acc v[4]; };

// One global-memory access: V elements, 16 bytes on the vector path, a single element otherwise.
template <typename T, int V> struct alignas(V * sizeof(T)) Chunk { T v[V]; };

// Copies one BK x TILE tile of op(X) (X = A with TILE = BM, or B with TILE = BN) from global memory
// into registers (load) and from there into shared memory (store), where it is kept k-major:
// tile[k * PITCH + i].
//   K_ROWS = true : X is stored with k as its row index, X[k * ld + i]: copied straight.
//   K_ROWS = false: X is stored with k as its column index, X[i * ld + k]: transposed on the way.
// Elements outside the matrix (i >= extent or k >= k_end) read as zero, so they add nothing.
// Addresses are strength-reduced: the thread keeps a pointer to its first chunk and moves it one step
// along K per load; its other chunks are ROW_STEP stored rows further each (no per-step 64-bit
// multiply by ld).
template <typename T, int BK, int TILE, int THREADS, bool K_ROWS, bool VEC>
struct TileLoader {
    using Acc = acc_t<T>;
    static constexpr int PITCH = TILE + SMEM_PAD;
    static constexpr int SIZE = BK * PITCH;  // accumulators in one stage
    static constexpr int V = VEC ? 16 / int(sizeof(T)) : 1;
    static constexpr int ROWS = K_ROWS ? BK : TILE;  // the tile as it is stored in X
    static constexpr int COLS = K_ROWS ? TILE : BK;
    static_assert(COLS % V == 0, "a vector access must not straddle a tile row");
    static constexpr int PER_ROW = COLS / V;  // chunks per stored row
    static constexpr int CHUNKS = ROWS * PER_ROW;
    static constexpr int PER_THREAD = ceil_div(CHUNKS, THREADS);
    static_assert(THREADS % PER_ROW == 0, "a thread's chunks share their column");
    static constexpr int ROW_STEP = THREADS / PER_ROW;  // stored rows between a thread's chunks

    const T* src;         // the thread's first chunk of the next load
    long long row_step;   // ROW_STEP stored rows, in elements
    long long advance;    // one step along K, in elements
    int i_first, k_first; // the first chunk's op(X) index along M or N, and its k within a step
    Chunk<T, V> staged[PER_THREAD];

    // The tiles whose first element is op(X)[i0, k0], op(X)[i0, k0 + BK], ...
    __device__ __forceinline__ TileLoader(const T* __restrict__ x, long long ld, int i0, int k0) {
        const int row = threadIdx.x / PER_ROW, col = threadIdx.x % PER_ROW * V;  // in the stored tile
        i_first = i0 + (K_ROWS ? col : row);
        k_first = K_ROWS ? row : col;
        src = x + (K_ROWS ? (k0 + row) * ld + i_first : i_first * ld + k0 + col);
        row_step = ROW_STEP * ld;
        advance = K_ROWS ? BK * ld : BK;
    }

    // The next tile, whose first k is k0; CHECKED = false: the tile lies inside the matrix.
    template <bool CHECKED>
    __device__ __forceinline__ void load(int k0, int extent, int k_end) {
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            const int c = threadIdx.x + p * THREADS;
            if (CHUNKS % THREADS != 0 && c >= CHUNKS) break;
            const T* const chunk = src + p * row_step;
            if (!CHECKED) {
                staged[p] = *reinterpret_cast<const Chunk<T, V>*>(chunk);
                continue;
            }
            const int row = K_ROWS ? k0 + k_first + p * ROW_STEP : i_first + p * ROW_STEP;
            const int col = K_ROWS ? i_first : k0 + k_first;
            const int row_end = K_ROWS ? k_end : extent;
            const int col_end = K_ROWS ? extent : k_end;
            if (row < row_end && col + V <= col_end) {
                staged[p] = *reinterpret_cast<const Chunk<T, V>*>(chunk);
            } else {
#pragma unroll
                for (int j = 0; j < V; ++j)
                    staged[p].v[j] = row < row_end && col + j < col_end ? chunk[j] : to_element<T>(Acc(0));
            }
        }
        src += advance;
    }

    // Where in a shared tile the thread's first staged element goes; the others are compile-time
    // offsets from it, so a caller can keep the sum in one pointer.
    static __device__ __forceinline__ int store_origin() {
        const int row = threadIdx.x / PER_ROW, col = threadIdx.x % PER_ROW * V;  // in the stored tile
        return K_ROWS ? row * PITCH + col : col * PITCH + row;
    }

    // The staged chunks into a shared tile, at = tile + store_origin().
    __device__ __forceinline__ void store(Acc* __restrict__ at) const {
#pragma unroll
        for (int p = 0; p < PER_THREAD; ++p) {
            if (CHUNKS % THREADS != 0 && threadIdx.x + p * THREADS >= CHUNKS) break;
            if constexpr (K_ROWS && V % 4 == 0) {  // 16-byte stores (shared rows are 16-byte aligned)
#pragma unroll
                for (int j = 0; j < V; j += 4)
                    *reinterpret_cast<Quad<Acc>*>(at + p * ROW_STEP * PITCH + j) =
                        {to_acc(staged[p].v[j]), to_acc(staged[p].v[j + 1]), to_acc(staged[p].v[j + 2]),
                         to_acc(staged[p].v[j + 3])};
            } else {
#pragma unroll
                for (int j = 0; j < V; ++j)
                    at[K_ROWS ? p * ROW_STEP * PITCH + j : j * PITCH + p * ROW_STEP] = to_acc(staged[p].v[j]);
            }
        }
    }
};

// Offset within the C tile of a thread's output number i (0 <= i < T_OWN): runs of 4 adjacent rows
// (or columns) SUB_TILE / (T_OWN / 4) apart, from the thread's first row (or column) `first`.
template <int SUB_TILE, int T_OWN>
__device__ __forceinline__ int owned_offset(int i, int first) {
    return first + i / 4 * (SUB_TILE / (T_OWN / 4)) + i % 4;
}

// The thread's T_OWN values of row k of a k-major shared tile, read 4 at a time (16-byte accesses);
// `first` points at the thread's first value in that row.
template <typename Acc, int SUB_TILE, int T_OWN>
__device__ __forceinline__ void read_fragment(const Acc* __restrict__ first, Acc (&values)[T_OWN]) {
#pragma unroll
    for (int g = 0; g < T_OWN / 4; ++g) {
        const Quad<Acc> q = *reinterpret_cast<const Quad<Acc>*>(first + owned_offset<SUB_TILE, T_OWN>(4 * g, 0));
#pragma unroll
        for (int r = 0; r < 4; ++r) values[4 * g + r] = q.v[r];
    }
}

// The first row and column, in the C tile, of the outputs thread t owns: its group's sub-tile, then
// its lane in it by the lane map above.
template <int BN, int WM, int WN, int TM, int TN>
__device__ __forceinline__ void thread_origin(int t, int& m_first, int& n_first) {
    constexpr int LANES_M = WM / TM, LANES_N = WN / TN, GROUP = LANES_M * LANES_N;
    static_assert(LANES_M % 2 == 0 && LANES_N % 2 == 0, "the lane map pairs lanes along both sides");
    const int group = t / GROUP, lane = t % GROUP;
    const int lane_m = (lane & 1) | lane / (2 * LANES_N) * 2, lane_n = lane / 2 % LANES_N;
    m_first = group / (BN / WN) * WM + lane_m * 4;
    n_first = group % (BN / WN) * WN + lane_n * 4;
}

// acc += a · b: one rank-1 update of the thread's TM x TN block.
template <typename Acc, int TM, int TN>
__device__ __forceinline__ void rank1(const Acc (&a)[TM], const Acc (&b)[TN], Acc (&acc)[TM][TN]) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
}

// The K loop of one block, acc += op(A) · op(B) over its steps. CHECKED = false for interior blocks
// (the whole tile and every step inside the matrices): their loads skip the bounds checks. The choice
// is made once per block, so each loop is straight-line code.
// Shared memory holds stage 0 (As, then Bs) and stage 1 STAGE accumulators further: the thread keeps
// four pointers (its fragment reads and its stores, its own offsets folded in) and moves all of them
// to the other stage with one signed offset per step, instead of recomputing them from the stage index.
template <bool CHECKED, int WM, int WN, int BK, int TM, int TN, typename LoadA, typename LoadB, typename Acc>
__device__ __forceinline__ void k_loop(LoadA& a_tile, LoadB& b_tile, Acc* __restrict__ shared, int steps, int k0,
                                       int M, int N, int k_end, int m_first, int n_first, Acc (&acc)[TM][TN]) {
    static_assert(BK % 2 == 0, "fragment k + 1 of the last k is fragment 0 of the next stage");
    constexpr int STAGE = LoadA::SIZE + LoadB::SIZE;
    if (steps <= 0) return;
    const Acc* a_read = shared + m_first;
    const Acc* b_read = shared + LoadA::SIZE + n_first;
    Acc* a_write = shared + LoadA::store_origin();
    Acc* b_write = shared + LoadA::SIZE + LoadB::store_origin();
    int to_other = STAGE;  // from the stage being read to the one being written, and back
    a_tile.template load<CHECKED>(k0, M, k_end);
    b_tile.template load<CHECKED>(k0, N, k_end);
    a_tile.store(a_write);
    b_tile.store(b_write);
    a_write += to_other;
    b_write += to_other;
    __syncthreads();
    // Fragments in registers, double-buffered where registers allow (interior blocks, float
    // accumulators; double's 8 x 8 block alone takes 128 registers, and the edge loop's bounds need
    // their own): k + 1's reads from shared memory are in flight while k multiplies.
    constexpr int BUFFERS = sizeof(Acc) == 4 && !CHECKED ? 2 : 1;
    Acc a[BUFFERS][TM], b[BUFFERS][TN];
    read_fragment<Acc, WM, TM>(a_read, a[0]);
    read_fragment<Acc, WN, TN>(b_read, b[0]);
    for (int t = 0; t < steps; ++t) {
        const bool prefetch = t + 1 < steps;
        if (prefetch) {
            k0 += BK;
            a_tile.template load<CHECKED>(k0, M, k_end);
            b_tile.template load<CHECKED>(k0, N, k_end);
        }
        // Fragments k + 1: the next row of this stage or, after the last k, the next tile's first row
        // (the tile goes to the other stage; one barrier per step).
        const auto read_next = [&](int k) {
            const int next = (k + 1) % BUFFERS;
            if (k + 1 < BK) {
                read_fragment<Acc, WM, TM>(a_read + (k + 1) * LoadA::PITCH, a[next]);
                read_fragment<Acc, WN, TN>(b_read + (k + 1) * LoadB::PITCH, b[next]);
            } else if (prefetch) {
                a_tile.store(a_write);
                b_tile.store(b_write);
                __syncthreads();
                a_read += to_other;
                b_read += to_other;
                a_write -= to_other;
                b_write -= to_other;
                to_other = -to_other;
                read_fragment<Acc, WM, TM>(a_read, a[next]);
                read_fragment<Acc, WN, TN>(b_read, b[next]);
            }
        };
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            if (BUFFERS == 2) read_next(k);  // into the other buffer, before k's math
            rank1(a[k % BUFFERS], b[k % BUFFERS], acc);
            if (BUFFERS == 1) read_next(k);  // into the one buffer, after it
        }
    }
}

// Blocks per SM that __launch_bounds__ asks ptxas to make room for: 2 (at most 128 registers for 256
// threads; the other block's warps issue while one waits at its barrier) for the float 16-byte-load
// kernels whose accumulators, two fragment sets and staged chunks take at most 104 registers (large,
// warp: 64 + 32 + 8); the others (scalar loads, half conversions, BK = 16, 16 x 8 blocks, double)
// would spill under that cap.
template <typename T, int BM, int BN, int BK, int TM, int TN, bool VEC>
__host__ __device__ constexpr int min_blocks_per_sm() {
    constexpr int threads = (BM / TM) * (BN / TN);
    constexpr int held = TM * TN + 2 * (TM + TN) + BK * (BM + BN) / threads;
    return VEC && sizeof(T) == 4 && held <= 104 ? 2 : 1;
}

template <typename T, typename TC, bool TRANS_A, bool TRANS_B, int BM, int BN, int BK, int WM, int WN, int TM,
          int TN, bool VEC>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (min_blocks_per_sm<T, BM, BN, BK, TM, TN, VEC>()))
linear_gemm(int M, int N, int K, int k_per_split, int splits,
            const T* __restrict__ A, long long lda, long long batch_stride_a,
            const T* __restrict__ B, long long ldb, long long batch_stride_b,
            TC* __restrict__ C, long long ldc, long long batch_stride_c, long long c_split_stride,
            acc_t<T> alpha, acc_t<T> beta, const T* __restrict__ bias, int add_bias,
            int activation, TC* __restrict__ preact, int store_preact) {
    using Acc = acc_t<T>;
    static_assert(TM % 4 == 0 && TN % 4 == 0 && WM % TM == 0 && WN % TN == 0, "bad register block");
    static_assert(BM % WM == 0 && BN % WN == 0, "the groups' sub-tiles must tile the block's tile");
    constexpr int THREADS = (BM / TM) * (BN / TN);
    using LoadA = TileLoader<T, BK, BM, THREADS, TRANS_A, VEC>;   // Aᵀ is stored k-major
    using LoadB = TileLoader<T, BK, BN, THREADS, !TRANS_B, VEC>;  // B is stored k-major

    // Two stages, each As [BK][BM + SMEM_PAD] then Bs [BK][BN + SMEM_PAD].
    extern __shared__ __align__(16) unsigned char gemm_shared[];
    Acc* const shared = reinterpret_cast<Acc*>(gemm_shared);

    const BlockWork<BK> work(K, k_per_split, splits);
    const int split = work.split, k_begin = work.k_begin, k_end = work.k_end, steps = work.steps;
    A += work.batch * batch_stride_a;
    B += work.batch * batch_stride_b;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    int m_first, n_first;
    thread_origin<BN, WM, WN, TM, TN>(threadIdx.x, m_first, n_first);

    LoadA a_tile(A, lda, m0, k_begin);
    LoadB b_tile(B, ldb, n0, k_begin);
    Acc acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);

    // Interior blocks: the C tile inside C and the split's K range whole steps (every K step of a
    // split but the last one's is; K % BK != 0 leaves the last split to the checked loop).
    const bool interior = m0 + BM <= M && n0 + BN <= N && (k_end - k_begin) % BK == 0;
    if (interior)
        k_loop<false, WM, WN, BK, TM, TN>(a_tile, b_tile, shared, steps, k_begin, M, N, k_end, m_first, n_first, acc);
    else
        k_loop<true, WM, WN, BK, TM, TN>(a_tile, b_tile, shared, steps, k_begin, M, N, k_end, m_first, n_first, acc);

    // Epilogue: z = alpha · acc (+ beta · C, which is never read when beta == 0) (+ bias); C = act(z), and
    // Z = z beside it when store_preact. Without either, straight from the registers; otherwise the
    // accumulators go to shared memory, in rounds of ROWS of the thread's TM rows, and a loop that is not
    // unrolled finishes each value (epilogue.cuh says why).
    const long long c_offset = work.batch * batch_stride_c + split * c_split_stride;  // Z's too
    TC* const c_split = C + c_offset;
    if (activation == ACTIVATION_NONE && !store_preact) {
#pragma unroll
        for (int i = 0; i < TM; ++i) {
            const int row = m0 + owned_offset<WM, TM>(i, m_first);
            if (row >= M) continue;
            TC* const c_row = c_split + row * ldc;
#pragma unroll
            for (int j = 0; j < TN; ++j) {
                const int col = n0 + owned_offset<WN, TN>(j, n_first);
                if (col >= N) continue;
                Acc value = alpha * acc[i][j];
                if (beta != Acc(0)) value += beta * to_acc(c_row[col]);
                if (add_bias) value += to_acc(bias[col]);
                c_row[col] = to_element<TC>(value);
            }
        }
        return;
    }
    constexpr int STAGED = 2 * (LoadA::SIZE + LoadB::SIZE);  // accumulators: the K loop's two stages
    constexpr int ROUNDS = staging_rounds(TM, TN * THREADS, STAGED), ROWS = TM / ROUNDS;
    static_assert(ROWS * TN * THREADS <= STAGED, "a row of every thread must fit");
    Acc* const slots = shared + threadIdx.x;
    __syncthreads();  // every warp is done with the K loop's tiles
#pragma unroll
    for (int round = 0; round < ROUNDS; ++round) {
#pragma unroll
        for (int v = 0; v < ROWS * TN; ++v) slots[v * THREADS] = acc[round * ROWS + v / TN][v % TN];
#pragma unroll 1
        for (int v = 0; v < ROWS * TN; ++v) {
            const int row = m0 + owned_offset<WM, TM>(round * ROWS + v / TN, m_first);
            const int col = n0 + owned_offset<WN, TN>(v % TN, n_first);
            if (row >= M || col >= N) continue;
            const long long at = row * ldc + col;
            Acc value = alpha * slots[v * THREADS];
            if (beta != Acc(0)) value += beta * to_acc(c_split[at]);
            if (add_bias) value += to_acc(bias[col]);
            store_activated(c_split + at, preact + c_offset + at, store_preact, activation, value);
        }
    }
}
