// emu_ptx.h: what inline PTX runs on in the emulator. linear/backends/emulate/ptx.py translates each
// asm statement of a kernel, at build time, into a C++ block: a local variable per operand and per
// `.reg`, and per instruction a call into namespace emu::ptx below (and the tensor-core semantics of
// emu_tensor.h). PTX registers are untyped bits: `get<T>(r)` reads a register as the instruction's
// type, `put(r, v)` writes one, reinterpreting bits of equal size and truncating or extending
// integers of different sizes, as the ISA's register rules do.
//
// State spaces: a .shared address is the 32-bit offset into the block's shared window (emu_runtime.h:
// __cvta_generic_to_shared gives it, shared_pointer() turns it back); .global, .local and .const
// addresses are generic addresses, which on the CPU are plain pointers.
#pragma once

#include "emu_tensor.h"

namespace emu::ptx {

// ---- Registers --------------------------------------------------------------------------------
template <class T> using unsigned_of =
    std::conditional_t<sizeof(T) == 1, uint8_t,
    std::conditional_t<sizeof(T) == 2, uint16_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;

// A value of type From as type To: bits reinterpreted when the sizes match, integers truncated or
// extended (signed types sign-extend) otherwise; a predicate is a value != 0.
template <class To, class From> inline To convert(From v) {
    if constexpr (std::is_same<To, From>::value) return v;
    else if constexpr (std::is_same<To, bool>::value) return to_bits(v) != 0;
    else if constexpr (std::is_pointer<From>::value) return convert<To>(uint64_t(reinterpret_cast<uintptr_t>(v)));
    else if constexpr (std::is_pointer<To>::value) return reinterpret_cast<To>(uintptr_t(convert<uint64_t>(v)));
    else if constexpr (std::is_same<From, bool>::value) return convert<To>(unsigned_of<To>(v));
    else if constexpr (std::is_integral<To>::value && std::is_integral<From>::value) return To(v);
    else if constexpr (sizeof(To) == sizeof(From)) return from_bits<To>(to_bits(v));
    else if constexpr (std::is_integral<From>::value) return from_bits<To>(unsigned_of<To>(v));
    else return convert<To>(from_bits<unsigned_of<From>>(to_bits(v)));
}
template <class T, class R> inline T get(const R& r) { return convert<T>(r); }
template <class R, class T> inline void put(R& r, T v) { r = convert<R>(v); }

// An asm operand: the C++ value as the constraint's register type, and back ("=r"(x): put(x, reg)).
template <class Reg, class T> inline Reg operand_in(const T& v) { return convert<Reg>(v); }
template <class T, class Reg> inline void operand_out(T& lvalue, Reg reg) { lvalue = convert<T>(reg); }

// ---- Special registers ------------------------------------------------------------------------
inline unsigned lane_mask(int kind) {  // %lanemask_eq, _lt, _le, _gt, _ge
    const unsigned lane = emu_lane_id(), bit = 1u << lane;
    switch (kind) {
    case 0: return bit;
    case 1: return bit - 1;
    case 2: return bit | (bit - 1);
    case 3: return ~(bit | (bit - 1));
    default: return ~(bit - 1);
    }
}
inline uint64_t global_timer() {
    timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return uint64_t(now.tv_sec) * 1000000000u + uint64_t(now.tv_nsec);
}

// ---- Memory -----------------------------------------------------------------------------------
// `site` in what follows: "file:line: opcode" of the asm statement, for the report of a bad address.
inline void* shared_pointer(uint64_t address, const char* site) {
    void* p = emu_shared_lookup(address);
    if (!p) {
        char message[200];
        snprintf(message, sizeof message, "shared address 0x%llx is outside the block's shared memory (a window "
                 "of %u bytes: static __shared__ variables, then %u bytes of dynamic shared memory)",
                 static_cast<unsigned long long>(address), emu_shared_window_bytes(), emu_dynamic_shared_bytes());
        fail(site, message);
    }
    return p;
}
inline void* generic_pointer(uint64_t address) { return reinterpret_cast<void*>(uintptr_t(address)); }

inline void check_alignment(const void* p, size_t bytes, const char* site) {
    if (reinterpret_cast<uintptr_t>(p) % bytes) {
        char message[160];
        snprintf(message, sizeof message, "misaligned address %p (a %zu-byte access)", p, bytes);
        fail(site, message);
    }
}
// ld / st of one element of type T (checked for the alignment the GPU requires).
template <class T> inline T load(const void* p, const char* site) {
    check_alignment(p, sizeof(T), site);
    return *static_cast<const T*>(p);
}
template <class T> inline void store(void* p, T v, const char* site) {
    check_alignment(p, sizeof(T), site);
    *static_cast<T*>(p) = v;
}
// A vector access (.v2, .v4) is aligned to its whole size.
inline void* vector_address(void* p, size_t bytes, const char* site) {
    check_alignment(p, bytes, site);
    return p;
}

// atom / red: the read-modify-writes of cuda_emu.h (sanitize builds see them as atomics).
enum class Atomic { add, min, max, and_, or_, xor_, exch, inc, dec };
template <class T> inline T atomic(Atomic op, void* p, T v, const char* site) {
    T* a = static_cast<T*>(p);
    check_alignment(p, sizeof(T), site);
    switch (op) {
    case Atomic::add: return atomicAdd(a, v);
    case Atomic::min: return atomicMin(a, v);
    case Atomic::max: return atomicMax(a, v);
    case Atomic::and_: return atomicAnd(a, v);
    case Atomic::or_: return atomicOr(a, v);
    case Atomic::xor_: return atomicXor(a, v);
    case Atomic::exch: return atomicExch(a, v);
    case Atomic::inc: return atomicInc(a, v);
    default: return atomicDec(a, v);
    }
}
template <class T> inline T atomic_cas(void* p, T compare, T v, const char* site) {
    check_alignment(p, sizeof(T), site);
    return atomicCAS(static_cast<T*>(p), compare, v);
}

// ---- Arithmetic -------------------------------------------------------------------------------
// A float instruction written in PTX flushes subnormals exactly when it says .ftz, whatever the
// launch's mode (CuPy's -ftz=true changes only the code the compiler generates).
template <class F> inline auto with_flush(bool flush, F f) {
    const uint64_t mode = emu_set_flush(flush);
    const auto result = f();
    emu_restore_flush(mode);
    return result;
}

// shl / shr: shift amounts past the width clamp (to 0, or to the sign for shr.s).
template <class T> inline T shift_left(T a, uint32_t n) { return n >= 8 * sizeof(T) ? T(0) : T(a << n); }
template <class T> inline T shift_right(T a, uint32_t n) {
    if (n >= 8 * sizeof(T)) return std::is_signed<T>::value && a < 0 ? T(-1) : T(0);
    return T(a >> n);
}
template <class T> inline T mul_hi(T a, T b) {
    if constexpr (sizeof(T) == 8) return T((std::conditional_t<std::is_signed<T>::value, __int128, unsigned __int128>(a) * b) >> 64);
    else return T((std::conditional_t<std::is_signed<T>::value, int64_t, uint64_t>(a) * b) >> (8 * sizeof(T)));
}
// prmt.b32 d, a, b, c (default mode): byte i of d is byte c[4i+3:4i] & 7 of {b, a}, its sign
// replicated when bit 3 of the selector is set.
inline uint32_t permute(uint32_t a, uint32_t b, uint32_t c) {
    const uint64_t bytes = uint64_t(b) << 32 | a;
    uint32_t d = 0;
    for (int i = 0; i < 4; ++i) {
        const unsigned selector = c >> (4 * i) & 0xF;
        unsigned byte = bytes >> (8 * (selector & 7)) & 0xFF;
        if (selector & 8) byte = byte & 0x80 ? 0xFF : 0;
        d |= byte << (8 * i);
    }
    return d;
}
// lop3.b32 d, a, b, c, lut: bit i of d is bit (a_i·4 + b_i·2 + c_i) of lut, read as 0xF0 = a, 0xCC = b, 0xAA = c.
inline uint32_t lop3(uint32_t a, uint32_t b, uint32_t c, uint32_t lut) {
    uint32_t d = 0;
    for (int bit = 0; bit < 8; ++bit) {
        if (!(lut >> bit & 1)) continue;
        d |= ((bit & 4) ? a : ~a) & ((bit & 2) ? b : ~b) & ((bit & 1) ? c : ~c);
    }
    return d;
}

// cvt from a float type to an integer one: the rounding modifier (.rni .rzi .rmi .rpi), saturating,
// NaN to 0.
enum class Round { nearest, zero, down, up };
template <class I, class F> inline I float_to_int(F v, Round r) {
    const F rounded = r == Round::nearest ? std::nearbyint(v) : r == Round::zero ? std::trunc(v)
                    : r == Round::down ? std::floor(v) : std::ceil(v);
    return saturate<I>(rounded);
}
template <class F> inline F round_float(F v, Round r) {  // cvt.rni.f32.f32 and friends
    return r == Round::nearest ? std::nearbyint(v) : r == Round::zero ? std::trunc(v)
         : r == Round::down ? std::floor(v) : std::ceil(v);
}
inline uint16_t f16_bits(float v) { return from_bits<uint16_t>(to_bits(__float2half_rn(v))); }
inline uint16_t bf16_bits(float v) { return from_bits<uint16_t>(to_bits(__float2bfloat16_rn(v))); }
inline float from_f16_bits(uint16_t v) { return __half2float(from_bits<__half>(v)); }
inline float from_bf16_bits(uint16_t v) { return __bfloat162float(from_bits<__nv_bfloat16>(v)); }

// ---- Warp-wide --------------------------------------------------------------------------------
// elect.sync d|p, membermask: the lowest lane of membermask; p is true in that lane.
inline uint32_t elect(uint32_t membermask, bool* elected) {
    const unsigned ballot = __ballot_sync(membermask, 1) & membermask;
    const uint32_t leader = ballot ? uint32_t(__builtin_ctz(ballot)) : 0;
    *elected = ballot && emu_lane_id() == leader;
    return leader;
}
// shfl.sync.mode.b32 d|p, a, b, c, membermask: c = (32 - segment width) << 8 | clamp. p tells whether
// the source lane is in range (else d is the thread's own a).
enum class Shuffle { up, down, bfly, idx };
inline uint32_t shuffle(Shuffle mode, uint32_t a, uint32_t b, uint32_t c, uint32_t membermask, bool* in_range) {
    const unsigned lane = emu_lane_id(), segmask = c >> 8 & 0x1F, clamp = c & 0x1F;
    const unsigned max_lane = (lane & segmask) | (clamp & ~segmask), min_lane = lane & segmask;
    unsigned source;
    bool ok;
    switch (mode) {
    case Shuffle::up: source = lane - b; ok = int(source) >= int(max_lane); break;
    case Shuffle::down: source = lane + b; ok = source <= max_lane; break;
    case Shuffle::bfly: source = lane ^ b; ok = source <= max_lane; break;
    default: source = min_lane | (b & ~segmask); ok = source <= max_lane; break;
    }
    if (!ok) source = lane;
    *in_range = ok;
    return uint32_t(emu_warp_collective(EMU_SHFL_IDX, membermask, a, int(source), 32));
}

}  // namespace emu::ptx
