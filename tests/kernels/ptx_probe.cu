// ptx_probe.cu: one small kernel per family of inline PTX the emulator translates (linear/backends/
// emulate/ptx.py), each written as a hand-written kernel would write it, for tests/test_ptx.py to check
// against values computed in numpy (and, under -m gpu, on a GPU).
#include <cuda_fp16.h>

// Special registers: out[thread][0..11] of the block-linear thread.
__global__ void probe_special_registers(unsigned* out) {
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    unsigned* o = out + (b * blockDim.x * blockDim.y * blockDim.z + t) * 12;
    asm("mov.u32 %0, %%tid.x;\n\tmov.u32 %1, %%tid.y;\n\tmov.u32 %2, %%tid.z;" : "=r"(o[0]), "=r"(o[1]), "=r"(o[2]));
    asm("mov.u32 %0, %%ntid.x; mov.u32 %1, %%ctaid.y; mov.u32 %2, %%nctaid.z;" : "=r"(o[3]), "=r"(o[4]), "=r"(o[5]));
    asm("mov.u32 %0, %%laneid;" : "=r"(o[6]));
    asm("mov.u32 %0, %%lanemask_lt;" : "=r"(o[7]));
    asm("mov.u32 %0, %%lanemask_ge;" : "=r"(o[8]));
    asm("mov.u32 %0, %%clusterid.x;" : "=r"(o[9]));
    asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(o[10]));
    unsigned long long c0, c1;
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(c0));
    asm volatile("mov.u64 %0, %%clock64;" : "=l"(c1));
    o[11] = c1 >= c0;
}

// setp, selp and predicates: per element i, bits of out[i] say what each comparison gave.
__global__ void probe_predicates(const int* a, const int* b, const float* x, const float* y, unsigned* out, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        unsigned bits;
        asm("{\n\t"
            ".reg .pred p, q, %%r<3>;\n\t"
            ".reg .b32 acc;\n\t"
            "mov.b32 acc, 0;\n\t"
            "setp.lt.s32 p|q, %1, %2;\n\t"            // p: a < b (signed), q: !p
            "@p or.b32 acc, acc, 1;\n\t"
            "@!q or.b32 acc, acc, 2;\n\t"             // the same bit again, through q
            "setp.lt.u32 %%r0, %1, %2;\n\t"           // unsigned
            "selp.b32 %0, 4, 0, %%r0;\n\t"
            "or.b32 acc, acc, %0;\n\t"
            "setp.ne.f32 %%r1, %3, %4;\n\t"           // ordered: false with a NaN
            "@%%r1 or.b32 acc, acc, 8;\n\t"
            "setp.neu.f32 %%r2, %3, %4;\n\t"          // unordered: true with a NaN
            "@%%r2 or.b32 acc, acc, 16;\n\t"
            "setp.ge.and.s32 p, %1, %2, %%r2;\n\t"    // a >= b and neu
            "@p or.b32 acc, acc, 32;\n\t"
            "setp.eq.s32 p, %1, %2;\n\t"
            "@!p bra SKIP;\n\t"
            "or.b32 acc, acc, 64;\n"
            "SKIP:\n\t"
            "mov.b32 %0, acc;\n\t"
            "}"
            : "=r"(bits) : "r"(a[i]), "r"(b[i]), "f"(x[i]), "f"(y[i]));
        out[i] = bits;
    }
}

// Integer glue: out[i][0..9] for one x (u32) and y (u32) per thread.
__global__ void probe_integers(const unsigned* x, const unsigned* y, unsigned* out, int n) {
    const int i = threadIdx.x;
    if (i >= n) return;
    unsigned* o = out + 10 * i;
    unsigned long long wide;
    asm("{\n\t.reg .b32 t<2>;\n\t"
        "add.u32 t0, %5, %6;\n\t"
        "mul.lo.u32 t1, t0, %6;\n\t"
        "mad.lo.u32 %0, %5, %6, t1;\n\t"           // x*y + (x+y)*y
        "shl.b32 %1, %5, 7;\n\t"
        "shr.s32 %2, %5, 3;\n\t"                    // arithmetic
        "xor.b32 t0, %5, %6;\n\t"
        "and.b32 %3, t0, 0x0F0F0F0F;\n\t"
        "mul.wide.u32 %4, %5, %6;\n\t"
        "}"
        : "=r"(o[0]), "=r"(o[1]), "=r"(o[2]), "=r"(o[3]), "=l"(wide) : "r"(x[i]), "r"(y[i]));
    o[4] = unsigned(wide);
    o[5] = unsigned(wide >> 32);
    asm("prmt.b32 %0, %1, %2, 0x5140;" : "=r"(o[6]) : "r"(x[i]), "r"(y[i]));
    asm("lop3.b32 %0, %1, %2, %3, 0x96;" : "=r"(o[7]) : "r"(x[i]), "r"(y[i]), "r"(x[i] >> 5));  // a ^ b ^ c
    long long widened;
    asm("cvt.s64.s32 %0, %1;" : "=l"(widened) : "r"(x[i]));
    o[8] = unsigned(widened >> 32);                  // the sign, extended
    unsigned short low;
    asm("cvt.u16.u32 %0, %1;" : "=h"(low) : "r"(x[i]));
    unsigned sum = 0;
    asm("{\n\t.reg .pred more;\n\t.reg .b32 k;\n\t"
        "mov.u32 k, 0;\n\tmov.u32 %0, 0;\n"
        "LOOP:\n\t"
        "add.u32 %0, %0, k;\n\tadd.u32 k, k, 1;\n\t"
        "setp.le.u32 more, k, %1;\n\t"
        "@more bra.uni LOOP;\n\t}"
        : "+r"(sum) : "r"(unsigned(low) % 100));      // 0 + 1 + ... + (low % 100)
    o[9] = sum;
}

// ld / st in each state space, vector widths, sign extension. out: 16 words.
__global__ void probe_memory(const float* in, const signed char* bytes, unsigned* out) {
    __shared__ __align__(16) float tile[8];
    const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(tile));
    if (threadIdx.x != 0) return;
    float a, b, c, d;
    asm volatile("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(a), "=f"(b), "=f"(c), "=f"(d) : "l"(in));
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" :: "r"(s), "f"(d), "f"(c), "f"(b), "f"(a) : "memory");
    asm volatile("st.shared.v2.f32 [%0+16], {%1, %2};" :: "r"(s), "f"(a + b), "f"(c + d) : "memory");
    unsigned w0, w1;
    asm volatile("ld.shared.v2.b32 {%0, %1}, [%2+8];" : "=r"(w0), "=r"(w1) : "r"(s));  // tile[2], tile[3]
    out[0] = w0;
    out[1] = w1;
    for (int i = 0; i < 6; ++i) out[2 + i] = __float_as_uint(tile[i]);
    int sx;
    unsigned zx;
    asm volatile("ld.global.s8 %0, [%1];" : "=r"(sx) : "l"(bytes));
    asm volatile("ld.global.u8 %0, [%1];" : "=r"(zx) : "l"(bytes));
    out[8] = unsigned(sx);
    out[9] = zx;
    int local[4] = {1, 2, 3, 4};
    unsigned long long l;
    asm volatile("cvta.to.local.u64 %0, %1;" : "=l"(l) : "l"(local));
    int v;
    asm volatile("ld.local.u32 %0, [%1+8];" : "=r"(v) : "l"(l));
    asm volatile("st.local.u32 [%0+4], %1;" :: "l"(l), "r"(v * 10) : "memory");
    out[10] = unsigned(v);
    out[11] = unsigned(local[1]);
    asm volatile("st.global.u32 [%0+48], %1;" :: "l"(out), "r"(0xC0FFEEu) : "memory");  // out[12]
    unsigned count = 5, old;
    __shared__ unsigned counter;
    counter = 7;
    asm volatile("atom.shared.add.u32 %0, [%1], %2;" : "=r"(old) : "r"(unsigned(__cvta_generic_to_shared(&counter))), "r"(count) : "memory");
    out[13] = old;
    out[14] = counter;
    asm volatile("red.global.add.u32 [%0], %1;" :: "l"(out + 15), "r"(3u) : "memory");
}

// cvta and the shared window: 1024-aligned statics stay aligned; round trips give the pointer back.
// out: [0] shared address of `aligned` % 1024, [1] round trip ok (generic -> shared -> generic, in C++
// and in PTX), [2] %dynamic_smem_size, [3] shared address of dynamic % 128, [4] they do not overlap.
__global__ void probe_cvta(unsigned* out) {
    __shared__ __align__(1024) unsigned char aligned[2048];
    extern __shared__ __align__(128) unsigned char dynamic[];
    if (threadIdx.x != 0) return;
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(aligned + 100));
    unsigned a_ptx;
    asm("{\n\t.reg .u64 t;\n\tcvta.to.shared.u64 t, %1;\n\tcvt.u32.u64 %0, t;\n\t}" : "=r"(a_ptx) : "l"(aligned + 100));
    unsigned long long back;
    asm("cvta.shared.u64 %0, %1;" : "=l"(back) : "l"((unsigned long long)a));
    out[0] = static_cast<unsigned>(__cvta_generic_to_shared(aligned)) % 1024;
    out[1] = a == a_ptx && reinterpret_cast<unsigned char*>(back) == aligned + 100 &&
             __cvta_shared_to_generic(a) == aligned + 100 && __isShared(aligned) && !__isShared(out);
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(out[2]));
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dynamic));
    out[3] = d % 128;
    out[4] = d >= static_cast<unsigned>(__cvta_generic_to_shared(aligned)) + 2048;
}

// Named barriers: warps 0-1 produce into shared memory and arrive at barrier 1; warps 2-3 wait at it
// (bar.sync 1, COUNT) and copy out. Launch with 128 threads.
template <int COUNT>
__global__ void probe_named_barrier(const float* in, float* out) {
    __shared__ float staged[64];
    if (threadIdx.x < 64) {
        staged[threadIdx.x] = in[threadIdx.x] * 2.0f;
        asm volatile("bar.arrive 1, %0;" :: "n"(COUNT) : "memory");
    } else {
        asm volatile("bar.sync 1, %0;" :: "n"(COUNT) : "memory");
        out[threadIdx.x - 64] = staged[threadIdx.x - 64];
    }
    asm volatile("barrier.sync 0;" ::: "memory");   // the whole block: __syncthreads
}

// elect.sync among lanes 4..31: out[lane] = leader << 8 | elected (lanes 0..3 write 0xFFFF).
__global__ void probe_elect(unsigned* out) {
    const unsigned lane = threadIdx.x % 32;
    if (lane < 4) {
        out[threadIdx.x] = 0xFFFF;
        return;
    }
    unsigned leader, elected;
    asm volatile("{\n\t.reg .pred p;\n\telect.sync %0|p, %2;\n\tselp.u32 %1, 1, 0, p;\n\t}"
                 : "=r"(leader), "=r"(elected) : "r"(0xFFFFFFF0u));
    out[threadIdx.x] = leader << 8 | elected;
}

// stmatrix then ldmatrix: regs (32 lanes x N) -> shared (N 8x8 matrices, row-major, written to
// `tiles`) -> back (`round`). One warp.
template <int N, bool TRANS>
__global__ void probe_stmatrix(const unsigned* regs, unsigned short* tiles, unsigned* round) {
    __shared__ __align__(16) unsigned short shared_tiles[4 * 64];
    const int lane = threadIdx.x;
    const unsigned row = static_cast<unsigned>(__cvta_generic_to_shared(shared_tiles + (lane / 8 % N) * 64 + (lane % 8) * 8));
    const unsigned* r = regs + lane * N;
    if constexpr (N == 1 && !TRANS) asm volatile("stmatrix.sync.aligned.m8n8.x1.shared.b16 [%0], {%1};" :: "r"(row), "r"(r[0]));
    if constexpr (N == 1 && TRANS) asm volatile("stmatrix.sync.aligned.m8n8.x1.trans.shared.b16 [%0], {%1};" :: "r"(row), "r"(r[0]));
    if constexpr (N == 2 && !TRANS) asm volatile("stmatrix.sync.aligned.m8n8.x2.shared.b16 [%0], {%1, %2};" :: "r"(row), "r"(r[0]), "r"(r[1]));
    if constexpr (N == 2 && TRANS) asm volatile("stmatrix.sync.aligned.m8n8.x2.trans.shared.b16 [%0], {%1, %2};" :: "r"(row), "r"(r[0]), "r"(r[1]));
    if constexpr (N == 4 && !TRANS)
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};" :: "r"(row), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
    if constexpr (N == 4 && TRANS)
        asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1, %2, %3, %4};" :: "r"(row), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
    __syncwarp();
    for (int i = lane; i < N * 64; i += 32) tiles[i] = shared_tiles[i];
    unsigned back[4];
    if constexpr (N == 1 && !TRANS) asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(back[0]) : "r"(row));
    if constexpr (N == 1 && TRANS) asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(back[0]) : "r"(row));
    if constexpr (N == 2 && !TRANS) asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];" : "=r"(back[0]), "=r"(back[1]) : "r"(row));
    if constexpr (N == 2 && TRANS) asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];" : "=r"(back[0]), "=r"(back[1]) : "r"(row));
    if constexpr (N == 4 && !TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(back[0]), "=r"(back[1]), "=r"(back[2]), "=r"(back[3]) : "r"(row));
    if constexpr (N == 4 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];" : "=r"(back[0]), "=r"(back[1]), "=r"(back[2]), "=r"(back[3]) : "r"(row));
    for (int j = 0; j < N; ++j) round[lane * N + j] = back[j];
}

// Warp-wide: out[lane][0..3] = shfl.bfly by 5, shfl.up by 3 with its in-range predicate, ballot of odd
// lanes, and cvt.rn.f16x2.f32 of (lane, -lane) read back as floats.
__global__ void probe_warp(unsigned* out) {
    const unsigned lane = threadIdx.x;
    unsigned* o = out + 4 * lane;
    asm volatile("shfl.sync.bfly.b32 %0, %1, 5, 0x1f, 0xffffffff;" : "=r"(o[0]) : "r"(lane * 10));
    unsigned up, ok;
    asm volatile("{\n\t.reg .pred p;\n\tshfl.sync.up.b32 %0|p, %2, 3, 0, 0xffffffff;\n\tselp.u32 %1, 1, 0, p;\n\t}"
                 : "=r"(up), "=r"(ok) : "r"(lane * 10));
    o[1] = up << 1 | ok;
    asm volatile("{\n\t.reg .pred p;\n\tsetp.ne.u32 p, %1, 0;\n\tvote.sync.ballot.b32 %0, p, 0xffffffff;\n\t}"
                 : "=r"(o[2]) : "r"(lane & 1));
    unsigned pair;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(pair) : "f"(float(lane) + 0.25f), "f"(-float(lane)));
    o[3] = pair;
}

// mma with f16 accumulators: d = a·b + c, a 16x16, b 16x8, c and d 16x8 f16, row-major. A and B
// fragments as in tc_probe.cu; c[i] and d[i] hold row g + 8·i, columns 2t and 2t + 1 (low half first).
__global__ void probe_mma_f16_accumulators(const __half* a, const __half* b, const __half* c, __half* d) {
    const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
    auto pack = [](__half low, __half high) { return unsigned(__half_as_ushort(low)) | unsigned(__half_as_ushort(high)) << 16; };
    unsigned fa[4], fb[2], fc[2], fd[2];
    for (int i = 0; i < 4; ++i) {
        const int row = g + 8 * (i % 2), col = 2 * t + 8 * (i / 2);
        fa[i] = pack(a[row * 16 + col], a[row * 16 + col + 1]);
    }
    for (int i = 0; i < 2; ++i) fb[i] = pack(b[(2 * t + 8 * i) * 8 + g], b[(2 * t + 8 * i + 1) * 8 + g]);
    for (int i = 0; i < 2; ++i) fc[i] = pack(c[(g + 8 * i) * 8 + 2 * t], c[(g + 8 * i) * 8 + 2 * t + 1]);
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f16.f16.f16.f16 {%0, %1}, {%2, %3, %4, %5}, {%6, %7}, {%8, %9};\n"
                 : "=r"(fd[0]), "=r"(fd[1])
                 : "r"(fa[0]), "r"(fa[1]), "r"(fa[2]), "r"(fa[3]), "r"(fb[0]), "r"(fb[1]), "r"(fc[0]), "r"(fc[1]));
    for (int i = 0; i < 2; ++i) {
        d[(g + 8 * i) * 8 + 2 * t] = __ushort_as_half(fd[i] & 0xFFFF);
        d[(g + 8 * i) * 8 + 2 * t + 1] = __ushort_as_half(fd[i] >> 16);
    }
}
