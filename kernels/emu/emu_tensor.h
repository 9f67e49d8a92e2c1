// emu_tensor.h: the semantics of the tensor-core PTX instructions (mma.sync, ldmatrix, stmatrix, cp.async,
// cvt.rna.tf32) on the CPU, called by the C++ that emulate/ptx.py translates inline PTX into, with the
// per-lane fragment layouts of the PTX ISA (groupID g = lane / 4, threadID_in_group t = lane % 4):
//
//   mma.m16n8k16 (f16, bf16)   A 16x16: a[i] holds rows g + 8·(i%2), columns 2t + 8·(i/2) + {0, 1}
//                              B 16x8:  b[i] holds rows 2t + 8·i + {0, 1}, column g
//                              C 16x8:  d[i] holds row g + 8·(i/2), column 2t + i%2
//   mma.m16n8k8 (tf32)         A 16x8:  a[i] holds row g + 8·(i%2), column t + 4·(i/2)
//                              B 8x8:   b[i] holds row t + 4·i, column g
//   ldmatrix, stmatrix .xN     lane i gives the address of row i%8 of matrix i/8; r[j] of a lane holds
//                              row lane/4, columns 2·(lane%4) + {0, 1} of matrix j (.trans: rows
//                              2·(lane%4) + {0, 1} of column lane/4)
//
// The warp-wide operations are collective: every lane writes its operands into a per-warp slot,
// __syncwarp, reads what it needs from all lanes, __syncwarp again (so a slot is never overwritten
// while another lane still reads it). Products of f16, bf16 and TF32 values are exact in float; the
// emulator adds them to C in k order with fmaf, where the hardware's internal order and rounding are
// its own, so GPU results may differ from the emulator's in the last bits.
//
// cp.async copies are read at issue and written to shared memory only at the wait_group that retires
// their group: data read before the wait is the old (poisoned) contents, as a missing or early wait
// deserves.
#pragma once

namespace emu::ptx {

// Ends the launch with the message, after `site`: "file:line: opcode" of the asm statement (ptx.py).
[[noreturn]] inline void fail(const char* site, const char* message) {
    char text[512];
    snprintf(text, sizeof text, "%s: %s", site, message);
    emu_fail(text);
}

constexpr int MAX_WARPS = 32;
constexpr int MAX_PENDING_COPIES = 64;  // per thread; tc_gemm.cu keeps at most 16 in flight

inline unsigned linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
inline unsigned warp_index() { return linear_thread() / 32; }

// A lane's operands as the tensor core sees them: its A and B registers decoded to floats once (the
// 16-bit halves of a register in order, or one TF32 value per register), so that every lane's sums
// read floats.
struct MmaOperands {
    float a[8], b[4];
};
EMU_STATE MmaOperands mma_slots[MAX_WARPS][32];
EMU_STATE const unsigned char* ldmatrix_slots[MAX_WARPS][32];

inline float half_bits_to_float(unsigned bits, __half) { return __half2float(from_bits<__half>(bits & 0xFFFFu)); }
inline float half_bits_to_float(unsigned bits, __nv_bfloat16) {
    return __bfloat162float(from_bits<__nv_bfloat16>(bits & 0xFFFFu));
}
// The value the tensor core sees of a TF32 register: the top 19 bits of the float.
inline float tf32_value(unsigned bits) { return from_bits<float>(bits & 0xFFFFE000u); }

// d += A·B over one warp: decode(a, b, slot) fills this lane's slot; element(slots, row, k, true) is
// A(row, k), element(slots, k, col, false) is B(k, col).
template <int K, class Decode, class Element>
inline void mma(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2], Decode decode, Element element) {
    const unsigned lane = emu_lane_id();
    MmaOperands(&slots)[32] = mma_slots[warp_index()];
    decode(a, b, slots[lane]);
    __syncwarp();
    const int g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
        float sum = d[i];
        for (int k = 0; k < K; ++k) sum = fmaf(element(slots, row, k, true), element(slots, k, col, false), sum);
        d[i] = sum;
    }
    __syncwarp();
}

template <typename T>
inline void mma_m16n8k16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "f16 or bf16");
    // A(r, k): lane (r%8)·4 + (k%8)/2, register r/8 + 2·(k/8); B(k, n): lane n·4 + (k%8)/2, register
    // k/8; the low half of a register holds the even k.
    auto decode = [](const unsigned (&ra)[4], const unsigned (&rb)[2], MmaOperands& slot) {
        for (int i = 0; i < 8; ++i) slot.a[i] = half_bits_to_float(ra[i / 2] >> (16 * (i % 2)), T());
        for (int i = 0; i < 4; ++i) slot.b[i] = half_bits_to_float(rb[i / 2] >> (16 * (i % 2)), T());
    };
    mma<16>(d, a, b, decode, [](const MmaOperands (&s)[32], int r, int c, bool is_a) {
        const int k = is_a ? c : r;
        return is_a ? s[(r % 8) * 4 + (k % 8) / 2].a[2 * (r / 8 + 2 * (k / 8)) + k % 2]
                    : s[c * 4 + (k % 8) / 2].b[2 * (k / 8) + k % 2];
    });
}

inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    // A(r, k): lane (r%8)·4 + k%4, register r/8 + 2·(k/4); B(k, n): lane n·4 + k%4, register k/4.
    auto decode = [](const unsigned (&ra)[4], const unsigned (&rb)[2], MmaOperands& slot) {
        for (int i = 0; i < 4; ++i) slot.a[i] = tf32_value(ra[i]);
        for (int i = 0; i < 2; ++i) slot.b[i] = tf32_value(rb[i]);
    };
    mma<8>(d, a, b, decode, [](const MmaOperands (&s)[32], int r, int c, bool is_a) {
        return is_a ? s[(r % 8) * 4 + c % 4].a[r / 8 + 2 * (c / 4)] : s[c * 4 + r % 4].b[r / 4];
    });
}

template <int N, bool TRANS>
inline void ldmatrix(unsigned (&r)[N], const void* row, const char* site) {
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
    if (reinterpret_cast<uintptr_t>(row) % 16) fail(site, "a row address is not 16-byte aligned");
    const unsigned lane = emu_lane_id();
    const unsigned char*(&rows)[32] = ldmatrix_slots[warp_index()];
    rows[lane] = static_cast<const unsigned char*>(row);
    __syncwarp();
    for (int j = 0; j < N; ++j) {
        if (!TRANS) {
            __builtin_memcpy(&r[j], rows[8 * j + lane / 4] + 4 * (lane % 4), 4);
        } else {
            uint16_t low, high;
            __builtin_memcpy(&low, rows[8 * j + 2 * (lane % 4)] + 2 * (lane / 4), 2);
            __builtin_memcpy(&high, rows[8 * j + 2 * (lane % 4) + 1] + 2 * (lane / 4), 2);
            r[j] = low | unsigned(high) << 16;
        }
    }
    __syncwarp();
}

// stmatrix: the inverse of ldmatrix. Lane l < 8N writes row l % 8 of matrix j = l / 8 at its address,
// gathering the row's eight 16-bit elements from the registers j of the lanes that hold them.
struct StmatrixOperands {
    unsigned char* row;
    unsigned r[4];
};
EMU_STATE StmatrixOperands stmatrix_slots[MAX_WARPS][32];

template <int N, bool TRANS>
inline void stmatrix(void* row, const unsigned (&r)[N], const char* site) {
    static_assert(N == 1 || N == 2 || N == 4, "stmatrix stores 1, 2 or 4 matrices");
    if (reinterpret_cast<uintptr_t>(row) % 16) fail(site, "a row address is not 16-byte aligned");
    const unsigned lane = emu_lane_id();
    StmatrixOperands(&slots)[32] = stmatrix_slots[warp_index()];
    slots[lane].row = static_cast<unsigned char*>(row);
    __builtin_memcpy(slots[lane].r, r, sizeof r);
    __syncwarp();
    if (lane < 8 * N) {
        const unsigned j = lane / 8, i = lane % 8;
        uint16_t out[8];
        for (unsigned c = 0; c < 8; ++c) {  // element (i, c) of the stored row; M(i, c) or, .trans, M(c, i)
            const unsigned reg = TRANS ? slots[4 * c + i / 2].r[j] : slots[4 * i + c / 2].r[j];
            out[c] = uint16_t((TRANS ? i : c) % 2 ? reg >> 16 : reg);
        }
        __builtin_memcpy(slots[lane].row, out, sizeof out);
    }
    __syncwarp();
}

struct PendingCopy {
    unsigned char* dst;
    unsigned char data[16];
    unsigned group, bytes;
};
// One queue per thread of the running block; `owner` tells a queue left over from another block or
// launch (its copies were never waited for and are dropped, as they would be at the kernel's end).
struct CopyQueue {
    unsigned long long owner;
    unsigned committed, count;
    PendingCopy pending[MAX_PENDING_COPIES];
};
EMU_STATE CopyQueue copy_queues[1024];

inline CopyQueue& copy_queue() {
    const unsigned long long owner =
        launch_serial << 32 ^ (emu_block_idx.x + emu_grid_dim.x * (emu_block_idx.y + emu_grid_dim.y * emu_block_idx.z));
    CopyQueue& q = copy_queues[linear_thread()];
    if (q.owner != owner) q.owner = owner, q.committed = 0, q.count = 0;
    return q;
}

// cp.async.{ca,cg}.shared.global [dst], [src], cp_size, src_size: reads src_size bytes now, lands
// cp_size bytes (the rest zeros) at the wait that retires the group.
inline void cp_async(void* dst, const void* src, unsigned cp_size, unsigned src_size, bool cache_global,
                     const char* site) {
    if (cp_size != 4 && cp_size != 8 && cp_size != 16) fail(site, "the copy size must be 4, 8 or 16 bytes");
    if (cache_global && cp_size != 16) fail(site, "the copy size of .cg must be 16 bytes");
    if (src_size > cp_size) fail(site, "the source size exceeds the copy size");
    if (reinterpret_cast<uintptr_t>(dst) % cp_size || reinterpret_cast<uintptr_t>(src) % cp_size)
        fail(site, "the addresses must be aligned to the copy size");
    CopyQueue& q = copy_queue();
    if (q.count == MAX_PENDING_COPIES) fail(site, "too many copies in flight (a missing wait_group?)");
    PendingCopy& copy = q.pending[q.count++];
    copy.dst = static_cast<unsigned char*>(dst);
    copy.group = q.committed;
    copy.bytes = cp_size;
    __builtin_memset(copy.data, 0, sizeof copy.data);
    memcpy(copy.data, src, src_size);  // exactly the bytes the copy reads (memcheck sees them: emu_sanitize.cpp)
}

inline void cp_async_commit() { ++copy_queue().committed; }

// cp.async.wait_group n: lands every copy of all but the n most recent committed groups.
inline void cp_async_wait(unsigned n) {
    CopyQueue& q = copy_queue();
    unsigned kept = 0;
    for (unsigned i = 0; i < q.count; ++i) {
        PendingCopy& copy = q.pending[i];
        if (copy.group + n < q.committed) __builtin_memcpy(copy.dst, copy.data, copy.bytes);
        else q.pending[kept++] = copy;
    }
    q.count = kept;
}

// cp.async.wait_all: commit_group then wait_group 0 (copies not yet committed land too).
inline void cp_async_wait_all() {
    cp_async_commit();
    cp_async_wait(0);
}

// cvt.rna.tf32.f32: round to TF32 (nearest, ties away from zero); inf and NaN pass through.
inline unsigned to_tf32(float x) {
    const unsigned bits = from_bits<unsigned>(to_bits(x));
    if ((bits & 0x7F800000u) == 0x7F800000u) return bits;
    return (bits + 0x1000u) & 0xFFFFE000u;  // round the magnitude half up: ties away from zero
}

}  // namespace emu::ptx
