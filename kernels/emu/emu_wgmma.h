// emu_wgmma.h: the warpgroup-level matrix multiply of sm_90 (wgmma.mma_async) on the CPU.
//
// wgmma.mma_async.sync.aligned.m64nNk{16,8}.f32.{f16,bf16,tf32}: D (64xN, f32) = A (64xK)·B (KxN)
// + (scale-d ? D : 0), over a warpgroup (4 consecutive warps, the first a multiple of 4), K = 16 for
// f16/bf16 and 8 for tf32, N = 8 .. 256 in steps of 8. A comes from a shared-memory descriptor or
// from registers, B from a descriptor; imm-scale-a/b (+1 or -1) negate A or B; imm-trans-a/b (16-bit
// types only) say that A or B is MN-major in shared memory (0: K-major).
//
// The matrix descriptor (64 bits; the PTX ISA's "Matrix Descriptor Format", CuTe's GmmaDescriptor):
//   bits 0-13 start address >> 4, 16-29 leading byte offset (LBO) >> 4, 32-45 stride byte offset
//   (SBO) >> 4, 49-51 base offset, 62-63 swizzle: 0 none (interleave), 1 128B, 2 64B, 3 32B.
// The canonical layouts (CuTe's make_gmma_desc, in 16-byte chunks of T = 16 / sizeof(element)
// elements, W = 1, 2, 4, 8 chunks per swizzle row for none, 32B, 64B, 128B; core matrices of 8 rows):
//   K-major,  element (mn, k):  mn = r + 8j, k = e + T·c (c < 2)
//             byte offset r·16W + j·SBO + e·size + c·(W == 1 ? LBO : 16)
//   MN-major, element (mn, k):  mn = e + T·c + T·W·j (c < W), k = r + 8i
//             byte offset e·size + 16c + 16W·r + (W == 1 ? j·SBO + i·LBO : j·LBO + i·SBO)
// then the swizzle of emu_tma.h on the shared address (start + offset): the 16-byte chunk index
// XORed with address bits 7.. (Swizzle<log2 W, 4, 3>). A base offset other than 0 is an error (not
// modelled): the emulator's swizzle is a function of the address, which is what the ISA's base
// offset makes of a pattern that starts off its repeat boundary.
// The registers of thread t of the warpgroup (w = t / 32 its warp, g = lane / 4, q = lane % 4; the
// ISA's "wgmma register fragments" figures, CuTe's CLayout_64xN / ALayout_64x16 / ALayout_64x8):
//   D (f32)         d[i]: row 16w + g + 8·((i / 2) % 2), column 8·(i / 4) + 2q + i % 2; N / 2 of them
//   A f16/bf16      a[i] (2 elements, the lower in the low half): row 16w + g + 8·(i % 2), columns
//                   2q + 8·(i / 2) + {0, 1}
//   A tf32          a[i]: row 16w + g + 8·(i % 2), column q + 4·(i / 2)
// Asynchrony: an operation's inputs (shared memory, and the accumulators it chains on) are read and
// its accumulators written only at the wgmma.wait_group that retires it, once every thread of the
// warpgroup has issued it; at issue the accumulator registers are set to NaN. So reading them before
// the wait, or overwriting the shared operands before it, gives a wrong (NaN, or other) result, never
// a lucky one. Operations on the same accumulator registers chain in issue order, as on the GPU.
// Products of f16, bf16 and tf32 values are exact in float; each thread adds them to its D in k order
// with fmaf (the hardware's order and rounding are its own: the last bits may differ). A tf32 operand
// is the top 19 bits of its 32 (the tensor core ignores the rest).
// f16 accumulators (.f16.f16.f16): value i of the D layout is half i % 2 of register i / 2; each
// operation adds in float as above and rounds its result to f16 (to nearest even).
// Not modelled: the 8-bit and integer types, sparse wgmma, wgmma.fence's
// checks (it is accepted and does nothing), the .satfinite qualifier.
#pragma once

#include <vector>

#include "emu_mbarrier.h"

namespace emu {

enum class WgmmaType { f16, bf16, tf32 };

constexpr int kWgmmaRing = 32;  // wgmma operations in flight per warpgroup

struct WgmmaDescriptor {
    uint32_t start, lbo, sbo, base_offset, swizzle_chunks;
};

EMU_SHIM_ACCESS inline WgmmaDescriptor decode_descriptor(uint64_t d) {
    static const uint32_t chunks[4] = {1, 8, 4, 2};
    return {uint32_t(d & 0x3FFF) << 4, uint32_t(d >> 16 & 0x3FFF) << 4, uint32_t(d >> 32 & 0x3FFF) << 4,
            uint32_t(d >> 49 & 7), chunks[d >> 62]};
}

// The shared address of element (mn, k) of a descriptor's matrix (see the top of this file).
EMU_SHIM_ACCESS inline uint32_t descriptor_address(const WgmmaDescriptor& d, bool mn_major, int element_bytes, int mn, int k) {
    const uint32_t T = 16 / element_bytes, W = d.swizzle_chunks;
    uint32_t offset;
    if (!mn_major) {
        const uint32_t r = mn % 8, j = mn / 8, e = k % T, c = k / T;
        offset = r * 16 * W + j * d.sbo + e * element_bytes + c * (W == 1 ? d.lbo : 16);
    } else {
        const uint32_t e = mn % T, c = mn / T % W, j = mn / (T * W), r = k % 8, i = k / 8;
        offset = e * element_bytes + 16 * c + 16 * W * r + (W == 1 ? j * d.sbo + i * d.lbo : j * d.lbo + i * d.sbo);
    }
    const uint32_t a = d.start + offset;
    return a ^ ((a >> 7 & (W - 1)) << 4);
}

struct WgmmaOp {
    uint64_t sequence = ~uint64_t(0);  // the warpgroup's count of operations before this one
    uint64_t desc_a, desc_b;
    int n, k, scale_a, scale_b, trans_a, trans_b;
    WgmmaType type;
    bool a_in_registers, f16_accumulator;
    unsigned issued, retired;          // threads that have issued it, and retired it
    bool loaded;                       // A and B read (at the first retirement)
    uint32_t a_registers[128][4];
    float a[64 * 16], b[16 * 256];     // A row-major 64xK, B row-major KxN, as the tensor core sees them
    const char* file;
    int line;
};

struct Warpgroup {
    unsigned long long owner;
    WgmmaOp ops[kWgmmaRing];
};
inline std::vector<Warpgroup> warpgroups;  // 8 (a block's most), made at the first wgmma: ~5 MiB

// One issued operation, as a thread of the warpgroup sees it.
struct WgmmaEntry {
    uint64_t sequence;
    unsigned group;          // the thread's count of commit_group calls at issue
    int scale_d, n_values;   // N / 2 accumulator values, in N / 2 f32 registers or N / 4 f16x2 ones
    bool chained;            // D is the result of an earlier operation still in flight
    bool f16_accumulator;
    void* registers[128];
    float input[128];        // D at issue (when not chained), value by value
};
struct WgmmaThread {
    unsigned long long owner;
    uint64_t issued;
    unsigned committed;
    std::vector<WgmmaEntry> entries;
};
inline WgmmaThread wgmma_threads[1024];

EMU_SHIM_ACCESS inline unsigned block_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

EMU_SHIM_ACCESS inline WgmmaThread& wgmma_thread() {
    WgmmaThread& t = wgmma_threads[block_thread()];
    if (t.owner != block_owner()) t.owner = block_owner(), t.issued = 0, t.committed = 0, t.entries.clear();
    return t;
}

EMU_SHIM_ACCESS inline Warpgroup& warpgroup() {
    if (warpgroups.empty()) warpgroups.resize(8);
    Warpgroup& g = warpgroups[block_thread() / 128];
    if (g.owner != block_owner()) {
        g.owner = block_owner();
        for (WgmmaOp& op : g.ops) op.sequence = ~uint64_t(0);
    }
    return g;
}

EMU_SHIM_ACCESS inline float tensor_core_value(WgmmaType type, uint32_t bits) {
    switch (type) {
    case WgmmaType::f16: return __half2float(from_bits<__half>(bits & 0xFFFF));
    case WgmmaType::bf16: return __bfloat162float(from_bits<__nv_bfloat16>(bits & 0xFFFF));
    default: return from_bits<float>(bits & 0xFFFFE000u);
    }
}

EMU_SHIM_ACCESS inline void* shared_pointer(uint32_t address, uint32_t bytes, const char* what);

// Reads A and B as the tensor core sees them: from shared memory now (or A's registers).
EMU_SHIM_ACCESS inline void load_operands(WgmmaOp& op, const void* pc) {
    const int size = op.type == WgmmaType::tf32 ? 4 : 2;
    auto element = [&](uint64_t desc, bool mn_major, int mn, int k) EMU_SHIM_ACCESS {
        const uint32_t address = descriptor_address(decode_descriptor(desc), mn_major, size, mn, k);
        uint32_t bits = 0;
        const void* p = shared_pointer(address, size, "wgmma.mma_async: a descriptor's element");
        sanitize_access(p, size_t(size), false, pc);
        __builtin_memcpy(&bits, p, size);
        return tensor_core_value(op.type, bits);
    };
    for (int m = 0; m < 64; ++m)
        for (int k = 0; k < op.k; ++k) {
            float v;
            if (op.a_in_registers) {
                const int t = (m / 16) * 32 + (m % 8) * 4, g8 = m % 16 / 8;
                if (size == 2) {
                    const uint32_t reg = op.a_registers[t + k % 8 / 2][g8 + 2 * (k / 8)];
                    v = tensor_core_value(op.type, k % 2 ? reg >> 16 : reg);
                } else {
                    v = tensor_core_value(op.type, op.a_registers[t + k % 4][g8 + 2 * (k / 4)]);
                }
            } else {
                v = element(op.desc_a, op.trans_a, m, k);
            }
            op.a[m * op.k + k] = op.scale_a * v;
        }
    for (int k = 0; k < op.k; ++k)
        for (int n = 0; n < op.n; ++n) op.b[k * op.n + n] = op.scale_b * element(op.desc_b, op.trans_b, n, k);
    op.loaded = true;
    sanitize_release(&op);  // the reads happen before every thread's retirement of the operation
}

struct WgmmaRetire {
    const WgmmaOp* op;
    unsigned warpgroup;
};
EMU_SHIM_ACCESS inline int wgmma_issued_by_all(void* object) { return static_cast<WgmmaRetire*>(object)->op->issued == 128; }
EMU_SHIM_ACCESS inline void describe_wgmma_retire(void* object, char* out, size_t n) {
    auto* r = static_cast<WgmmaRetire*>(object);
    snprintf(out, n, "the rest of warpgroup %u to issue its wgmma.mma_async #%llu (issued by %u of its 128 threads, "
             "first at %s:%d) before wgmma.wait_group can retire it", r->warpgroup,
             static_cast<unsigned long long>(r->op->sequence), r->op->issued, r->op->file, r->op->line);
}

EMU_SHIM_ACCESS inline void check_issue(bool ok, const char* what, const WgmmaOp& op, const char* file, int line) {
    if (!ok)
        hopper_fail("wgmma.mma_async #%llu: %s differs between threads of warpgroup %u (here at %s:%d, first issued at "
                    "%s:%d); the instruction is .aligned: every thread must issue the same one",
                    static_cast<unsigned long long>(op.sequence), what, block_thread() / 128, file, line, op.file, op.line);
}

// Accumulator value i of a thread: f32 register i, or half i % 2 of f16x2 register i / 2.
EMU_SHIM_ACCESS inline float accumulator_value(void* const* registers, bool f16, int i) {
    if (!f16) return *static_cast<const float*>(registers[i]);
    const uint32_t bits = *static_cast<const uint32_t*>(registers[i / 2]);
    return __half2float(from_bits<__half>(bits >> (16 * (i % 2)) & 0xFFFF));
}
EMU_SHIM_ACCESS inline void set_accumulators(void* const* registers, bool f16, int n_values, const float* values) {
    for (int i = 0; i < n_values; i += f16 ? 2 : 1) {
        if (!f16) {
            *static_cast<float*>(registers[i]) = values[i];
        } else {  // rounded to f16, to nearest even
            const uint32_t low = to_bits(__float2half(values[i])), high = to_bits(__float2half(values[i + 1]));
            *static_cast<uint32_t*>(registers[i / 2]) = uint32_t(low & 0xFFFF) | uint32_t(high & 0xFFFF) << 16;
        }
    }
}

EMU_SHIM_ACCESS inline void wgmma_issue(WgmmaType type, int n, void* const* d, bool f16_accumulator, int scale_d, uint64_t desc_a, const uint32_t* a_registers,
                        uint64_t desc_b, int scale_a, int scale_b, int trans_a, int trans_b, const char* file, int line) {
    if (blockDim.x * blockDim.y * blockDim.z % 128)
        hopper_fail("wgmma.mma_async in a block of %u threads, not a whole number of warpgroups (%s:%d)",
                    blockDim.x * blockDim.y * blockDim.z, file, line);
    if (n < 8 || n > 256 || n % 8) hopper_fail("wgmma.mma_async: N = %d is not one of 8, 16, .. 256 (%s:%d)", n, file, line);
    if ((scale_a != 1 && scale_a != -1) || (scale_b != 1 && scale_b != -1))
        hopper_fail("wgmma.mma_async: imm-scale-a/b must be 1 or -1, not %d and %d (%s:%d)", scale_a, scale_b, file, line);
    if ((trans_a | trans_b) & ~1) hopper_fail("wgmma.mma_async: imm-trans-a/b must be 0 or 1 (%s:%d)", file, line);
    if (f16_accumulator && type != WgmmaType::f16)
        hopper_fail("wgmma.mma_async: f16 accumulators take f16 operands only (%s:%d)", file, line);
    if (type == WgmmaType::tf32 && (trans_a || trans_b))
        hopper_fail("wgmma.mma_async: tf32 operands must be K-major (imm-trans is for 16-bit types only) (%s:%d)", file, line);
    if (a_registers && trans_a) hopper_fail("wgmma.mma_async: A from registers takes no imm-trans-a (%s:%d)", file, line);
    for (const uint64_t desc : {a_registers ? 0 : desc_a, desc_b})
        if (desc >> 49 & 7)
            hopper_fail("wgmma.mma_async: descriptor 0x%016llx has base offset %u, which the emulator does not model "
                        "(%s:%d)", static_cast<unsigned long long>(desc), unsigned(desc >> 49 & 7), file, line);
    WgmmaThread& thread = wgmma_thread();
    Warpgroup& group = warpgroup();
    const uint64_t sequence = thread.issued++;
    WgmmaOp& op = group.ops[sequence % kWgmmaRing];
    if (op.sequence != sequence) {
        if (op.sequence != ~uint64_t(0) && op.retired < 128)
            hopper_fail("wgmma.mma_async: more than %d operations of warpgroup %u in flight (a missing "
                        "wgmma.wait_group?) (%s:%d)", kWgmmaRing, block_thread() / 128, file, line);
        op.sequence = sequence;
        op.desc_a = a_registers ? 0 : desc_a;
        op.desc_b = desc_b;
        op.n = n, op.k = type == WgmmaType::tf32 ? 8 : 16, op.scale_a = scale_a, op.scale_b = scale_b;
        op.trans_a = trans_a, op.trans_b = trans_b, op.type = type, op.a_in_registers = a_registers != nullptr;
        op.f16_accumulator = f16_accumulator;
        op.issued = op.retired = 0;
        op.loaded = false;
        op.file = file, op.line = line;
    } else {
        check_issue(op.type == type && op.n == n && op.a_in_registers == (a_registers != nullptr) &&
                    op.f16_accumulator == f16_accumulator, "the shape or types",
                    op, file, line);
        check_issue((a_registers || op.desc_a == desc_a) && op.desc_b == desc_b, "a descriptor", op, file, line);
        check_issue(op.scale_a == scale_a && op.scale_b == scale_b && op.trans_a == trans_a && op.trans_b == trans_b,
                    "imm-scale or imm-trans", op, file, line);
    }
    if (a_registers) __builtin_memcpy(op.a_registers[block_thread() % 128], a_registers, 4 * sizeof(uint32_t));
    ++op.issued;
    if (thread.entries.size() >= size_t(kWgmmaRing))
        hopper_fail("wgmma.mma_async: more than %d operations in flight (a missing wgmma.wait_group?) (%s:%d)",
                    kWgmmaRing, file, line);
    WgmmaEntry& e = thread.entries.emplace_back();
    e.sequence = sequence, e.group = thread.committed, e.scale_d = scale_d != 0, e.n_values = n / 2;
    e.chained = false;
    e.f16_accumulator = f16_accumulator;
    for (const WgmmaEntry& earlier : thread.entries)
        if (&earlier != &e && earlier.registers[0] == d[0]) e.chained = true;
    float poison[128];
    for (int i = 0; i < e.n_values; ++i) {
        if (i < (f16_accumulator ? n / 4 : n / 2)) e.registers[i] = d[i];
        if (!e.chained) e.input[i] = accumulator_value(d, f16_accumulator, i);
        poison[i] = std::numeric_limits<float>::quiet_NaN();  // what reading the accumulators before the wait sees
    }
    set_accumulators(d, f16_accumulator, e.n_values, poison);
}

// Retires the thread's operations of groups older than the newest `keep`.
EMU_SHIM_ACCESS inline void wgmma_retire_at(int keep, const void* pc) {
    WgmmaThread& thread = wgmma_thread();
    Warpgroup& group = warpgroup();
    const unsigned t = block_thread() % 128, w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    size_t done = 0;
    for (; done < thread.entries.size(); ++done) {
        WgmmaEntry& e = thread.entries[done];
        if (e.group + unsigned(keep) >= thread.committed) break;
        WgmmaOp& op = group.ops[e.sequence % kWgmmaRing];
        WgmmaRetire wait{&op, block_thread() / 128};
        emu_wait_until(wgmma_issued_by_all, describe_wgmma_retire, &wait);
        if (!op.loaded) load_operands(op, pc);
        sanitize_acquire(&op);
        float result[128];
        for (int i = 0; i < e.n_values; ++i) {
            const int row = 16 * w + g + 8 * (i / 2 % 2), col = 8 * (i / 4) + 2 * q + i % 2;
            float sum = e.scale_d ? e.input[i] : 0.0f;
            for (int k = 0; k < op.k; ++k) sum = fmaf(op.a[row * op.k + k], op.b[k * op.n + col], sum);
            result[i] = e.f16_accumulator ? __half2float(__float2half(sum)) : sum;
        }
        ++op.retired;
        WgmmaEntry* next = nullptr;  // the next operation on the same registers, which takes this result
        for (size_t j = done + 1; j < thread.entries.size() && !next; ++j)
            if (thread.entries[j].registers[0] == e.registers[0]) next = &thread.entries[j];
        if (next && next->chained) {
            __builtin_memcpy(next->input, result, sizeof(float) * e.n_values);
            next->chained = false;
        } else {
            set_accumulators(e.registers, e.f16_accumulator, e.n_values, result);
        }
    }
    thread.entries.erase(thread.entries.begin(), thread.entries.begin() + long(done));
}

// wgmma.wait_group with a count known at run time (what translated PTX calls).
EMU_SHIM_ACCESS inline void wgmma_retire(int keep) { wgmma_retire_at(keep, __builtin_return_address(0)); }

}  // namespace emu

// ---- The instructions ---------------------------------------------------------------------------
namespace emu::hopper {

// wgmma.fence.sync.aligned: orders register and shared accesses before the next wgmma; nothing to do
// here, since operations read their operands at their retirement.
EMU_SHIM_ACCESS __device__ inline void wgmma_fence() {}
// wgmma.commit_group.sync.aligned
EMU_SHIM_ACCESS __device__ inline void wgmma_commit_group() { ++emu::wgmma_thread().committed; }
// wgmma.wait_group.sync.aligned N
template <int N>
EMU_SHIM_ACCESS __device__ inline void wgmma_wait_group() {
    static_assert(N >= 0 && N <= 7, "wgmma.wait_group takes 0 .. 7");
    emu::wgmma_retire_at(N, __builtin_return_address(0));
}

template <class T> struct emu_wgmma_type;
template <> struct emu_wgmma_type<__half> { static constexpr emu::WgmmaType value = emu::WgmmaType::f16; };
template <> struct emu_wgmma_type<__nv_bfloat16> { static constexpr emu::WgmmaType value = emu::WgmmaType::bf16; };
template <> struct emu_wgmma_type<float> { static constexpr emu::WgmmaType value = emu::WgmmaType::tf32; };

// wgmma.mma_async.sync.aligned.m64nNk16.f32.T.T d, desc-a, desc-b, scale-d, imm-scale-a, imm-scale-b,
// imm-trans-a, imm-trans-b (T = __half, __nv_bfloat16; float means tf32 with k8)
template <int N, class T>
EMU_SHIM_ACCESS __device__ inline void wgmma_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d, int scale_a = 1,
                                int scale_b = 1, int trans_a = 0, int trans_b = 0, EMU_HOPPER_SITE) {
    void* registers[N / 2];
    for (int i = 0; i < N / 2; ++i) registers[i] = &d[i];
    emu::wgmma_issue(emu_wgmma_type<T>::value, N, registers, false, scale_d, desc_a, nullptr, desc_b, scale_a, scale_b,
                     trans_a, trans_b, file, line);
}

// The same with A from registers: a[4] (f16/bf16: 2 elements each; tf32: 1 each).
template <int N, class T>
EMU_SHIM_ACCESS __device__ inline void wgmma_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d, int scale_a = 1,
                                int scale_b = 1, int trans_b = 0, EMU_HOPPER_SITE) {
    void* registers[N / 2];
    for (int i = 0; i < N / 2; ++i) registers[i] = &d[i];
    emu::wgmma_issue(emu_wgmma_type<T>::value, N, registers, false, scale_d, 0, a, desc_b, scale_a, scale_b, 0, trans_b,
                     file, line);
}

// wgmma.mma_async.sync.aligned.m64nNk16.f16.f16.f16: f16 accumulators, two per register (the lower
// value, even i, in the low half), rounded to f16 at the end of each operation.
template <int N>
EMU_SHIM_ACCESS __device__ inline void wgmma_ss_f16(uint32_t (&d)[N / 4], uint64_t desc_a, uint64_t desc_b, int scale_d, int scale_a = 1,
                                    int scale_b = 1, int trans_a = 0, int trans_b = 0, EMU_HOPPER_SITE) {
    void* registers[N / 4];
    for (int i = 0; i < N / 4; ++i) registers[i] = &d[i];
    emu::wgmma_issue(emu::WgmmaType::f16, N, registers, true, scale_d, desc_a, nullptr, desc_b, scale_a, scale_b, trans_a,
                     trans_b, file, line);
}

}  // namespace emu::hopper
