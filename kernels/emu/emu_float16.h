// __half and __nv_bfloat16 for the emulator: one template for both 16-bit formats.
//
// A value is its 16 bits; arithmetic converts to float, computes, and rounds back to nearest even
// (exact for + - * / since float has more than twice the bits of either format). The names CUDA
// uses (cuda_fp16.h, cuda_bf16.h) are aliases of these; the operators are hidden friends, so mixed
// expressions such as `h * 2.0f` are ambiguous here exactly when they are ambiguous in CUDA.
#pragma once

#include <stdint.h>
#include <string.h>

#include <cmath>
#include <type_traits>

namespace emu {

template <int E, int M> struct binary16_format {
    static constexpr int bias = (1 << (E - 1)) - 1;
    static constexpr uint16_t exponent_mask = uint16_t(((1 << E) - 1) << M);
};

// The E/M-bit float nearest to d (ties to even); overflow gives infinity, NaN a quiet NaN.
template <int E, int M> inline uint16_t round_to_binary16(double d) {
    using F = binary16_format<E, M>;
    uint64_t bits;
    __builtin_memcpy(&bits, &d, 8);
    const uint16_t sign = uint16_t((bits >> 63) << (E + M));
    const uint64_t magnitude = bits & ~(uint64_t(1) << 63);
    if (magnitude >= uint64_t(0x7FF) << 52)  // infinity or NaN
        return sign | F::exponent_mask | (magnitude > (uint64_t(0x7FF) << 52) ? 1 << (M - 1) : 0);
    const int exponent = int(magnitude >> 52) - 1023;
    const int below_normal = (1 - F::bias) - exponent;        // > 0: the result is subnormal
    const int dropped = 52 - M + (below_normal > 0 ? below_normal : 0);
    if (dropped > 53) return sign;                            // below half the smallest subnormal
    const uint64_t significand = (magnitude & ((uint64_t(1) << 52) - 1)) | (uint64_t(1) << 52);
    uint64_t kept = significand >> dropped;
    const uint64_t rest = significand & ((uint64_t(1) << dropped) - 1), half = uint64_t(1) << (dropped - 1);
    kept += rest > half || (rest == half && (kept & 1));
    // kept holds the implicit bit, so adding it to exponent-1 carries into the exponent when the
    // rounding overflows the fraction; a subnormal that rounds up becomes the smallest normal.
    const uint64_t result = below_normal > 0 ? kept : (uint64_t(exponent + F::bias - 1) << M) + kept;
    return result >= F::exponent_mask ? sign | F::exponent_mask : uint16_t(sign | result);
}

template <int E, int M> inline float binary16_to_float(uint16_t h) {
    if constexpr (E == 8) {  // bfloat16 is the upper half of a float
        uint32_t bits = uint32_t(h) << 16;
        float f;
        __builtin_memcpy(&f, &bits, 4);
        return f;
    } else {
        using F = binary16_format<E, M>;
        const float sign = h >> (E + M) ? -1.0f : 1.0f;
        const int exponent = (h & F::exponent_mask) >> M;
        const int fraction = h & ((1 << M) - 1);
        if (exponent == (1 << E) - 1) return fraction ? NAN : sign * INFINITY;
        if (exponent == 0) return sign * std::ldexp(float(fraction), 1 - F::bias - M);
        return sign * std::ldexp(float(fraction | (1 << M)), exponent - F::bias - M);
    }
}

template <int E, int M> struct binary16_raw { unsigned short x; };

template <int E, int M> struct alignas(2) binary16 {
    unsigned short __x;

    binary16() = default;
    constexpr binary16(binary16_raw<E, M> raw) : __x(raw.x) {}
    binary16(float f) : __x(round_to_binary16<E, M>(f)) {}
    binary16(double d) : __x(round_to_binary16<E, M>(d)) {}
    template <class I, class = std::enable_if_t<std::is_integral<I>::value>>
    binary16(I i) : __x(round_to_binary16<E, M>(double(i))) {}
    operator float() const { return binary16_to_float<E, M>(__x); }
    constexpr operator binary16_raw<E, M>() const { return {__x}; }

    friend binary16 operator+(binary16 a, binary16 b) { return float(a) + float(b); }
    friend binary16 operator-(binary16 a, binary16 b) { return float(a) - float(b); }
    friend binary16 operator*(binary16 a, binary16 b) { return float(a) * float(b); }
    friend binary16 operator/(binary16 a, binary16 b) { return float(a) / float(b); }
    friend binary16& operator+=(binary16& a, binary16 b) { return a = a + b; }
    friend binary16& operator-=(binary16& a, binary16 b) { return a = a - b; }
    friend binary16& operator*=(binary16& a, binary16 b) { return a = a * b; }
    friend binary16& operator/=(binary16& a, binary16 b) { return a = a / b; }
    friend binary16 operator-(binary16 a) { return binary16(binary16_raw<E, M>{uint16_t(a.__x ^ (1u << (E + M)))}); }
    friend binary16 operator+(binary16 a) { return a; }
    friend bool operator==(binary16 a, binary16 b) { return float(a) == float(b); }
    friend bool operator!=(binary16 a, binary16 b) { return float(a) != float(b); }
    friend bool operator<(binary16 a, binary16 b) { return float(a) < float(b); }
    friend bool operator<=(binary16 a, binary16 b) { return float(a) <= float(b); }
    friend bool operator>(binary16 a, binary16 b) { return float(a) > float(b); }
    friend bool operator>=(binary16 a, binary16 b) { return float(a) >= float(b); }
};

template <int E, int M> struct alignas(4) binary16x2 {
    binary16<E, M> x, y;

    friend binary16x2 operator+(binary16x2 a, binary16x2 b) { return {a.x + b.x, a.y + b.y}; }
    friend binary16x2 operator-(binary16x2 a, binary16x2 b) { return {a.x - b.x, a.y - b.y}; }
    friend binary16x2 operator*(binary16x2 a, binary16x2 b) { return {a.x * b.x, a.y * b.y}; }
    friend binary16x2 operator/(binary16x2 a, binary16x2 b) { return {a.x / b.x, a.y / b.y}; }
    friend binary16x2& operator+=(binary16x2& a, binary16x2 b) { return a = a + b; }
    friend binary16x2& operator*=(binary16x2& a, binary16x2 b) { return a = a * b; }
};

template <int E, int M> struct binary16x2_raw { unsigned short x, y; };

}  // namespace emu

// ---- Functions CUDA declares for both types (in cuda_fp16.h and cuda_bf16.h) --------------------
#define EMU_H16 template <int E, int M> inline
#define EMU_T emu::binary16<E, M>
#define EMU_T2 emu::binary16x2<E, M>
EMU_H16 EMU_T __hadd(EMU_T a, EMU_T b) { return a + b; }
EMU_H16 EMU_T __hsub(EMU_T a, EMU_T b) { return a - b; }
EMU_H16 EMU_T __hmul(EMU_T a, EMU_T b) { return a * b; }
EMU_H16 EMU_T __hdiv(EMU_T a, EMU_T b) { return a / b; }
EMU_H16 EMU_T __hfma(EMU_T a, EMU_T b, EMU_T c) { return EMU_T(std::fma(double(float(a)), double(float(b)), double(float(c)))); }
EMU_H16 EMU_T __hneg(EMU_T a) { return -a; }
EMU_H16 EMU_T __habs(EMU_T a) { return EMU_T(emu::binary16_raw<E, M>{uint16_t(a.__x & ~(1u << (E + M)))}); }
EMU_H16 EMU_T __hmax(EMU_T a, EMU_T b) { return EMU_T(std::fmax(float(a), float(b))); }
EMU_H16 EMU_T __hmin(EMU_T a, EMU_T b) { return EMU_T(std::fmin(float(a), float(b))); }
EMU_H16 bool __heq(EMU_T a, EMU_T b) { return a == b; }
EMU_H16 bool __hne(EMU_T a, EMU_T b) { return a != b; }
EMU_H16 bool __hlt(EMU_T a, EMU_T b) { return a < b; }
EMU_H16 bool __hle(EMU_T a, EMU_T b) { return a <= b; }
EMU_H16 bool __hgt(EMU_T a, EMU_T b) { return a > b; }
EMU_H16 bool __hge(EMU_T a, EMU_T b) { return a >= b; }
EMU_H16 bool __hisnan(EMU_T a) { return std::isnan(float(a)); }
EMU_H16 int __hisinf(EMU_T a) { return std::isinf(float(a)) ? (float(a) < 0 ? -1 : 1) : 0; }
EMU_H16 EMU_T hsqrt(EMU_T a) { return EMU_T(std::sqrt(float(a))); }
EMU_H16 EMU_T hrsqrt(EMU_T a) { return EMU_T(1.0f / std::sqrt(float(a))); }
EMU_H16 EMU_T hexp(EMU_T a) { return EMU_T(std::exp(float(a))); }
EMU_H16 EMU_T hlog(EMU_T a) { return EMU_T(std::log(float(a))); }
EMU_H16 EMU_T2 __hadd2(EMU_T2 a, EMU_T2 b) { return a + b; }
EMU_H16 EMU_T2 __hsub2(EMU_T2 a, EMU_T2 b) { return a - b; }
EMU_H16 EMU_T2 __hmul2(EMU_T2 a, EMU_T2 b) { return a * b; }
EMU_H16 EMU_T2 __h2div(EMU_T2 a, EMU_T2 b) { return a / b; }
EMU_H16 EMU_T2 __hfma2(EMU_T2 a, EMU_T2 b, EMU_T2 c) { return {__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)}; }
EMU_H16 EMU_T2 __hneg2(EMU_T2 a) { return {-a.x, -a.y}; }
EMU_H16 EMU_T2 __habs2(EMU_T2 a) { return {__habs(a.x), __habs(a.y)}; }
EMU_H16 EMU_T2 __hmax2(EMU_T2 a, EMU_T2 b) { return {__hmax(a.x, b.x), __hmax(a.y, b.y)}; }
EMU_H16 EMU_T2 __hmin2(EMU_T2 a, EMU_T2 b) { return {__hmin(a.x, b.x), __hmin(a.y, b.y)}; }
EMU_H16 float __low2float(EMU_T2 a) { return float(a.x); }
EMU_H16 float __high2float(EMU_T2 a) { return float(a.y); }
EMU_H16 EMU_T2 __lowhigh2highlow(EMU_T2 a) { return {a.y, a.x}; }
EMU_H16 EMU_T2 __lows2half2(EMU_T2 a, EMU_T2 b) { return {a.x, b.x}; }
EMU_H16 EMU_T2 __highs2half2(EMU_T2 a, EMU_T2 b) { return {a.y, b.y}; }
#undef EMU_T2
#undef EMU_T
#undef EMU_H16
