// Fused loop nests of the lp variant, sum over taps of |f - w|^p and its backward, in float,
// double, bfloat16 and float16 (computed in float); the loop nests and layouts are those of
// fused_blocks.h. Compiled with fast math and OpenMP SIMD, so the power vectorises through
// glibc's libmvec.

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fused_blocks.h"

namespace {

using anyconv::Compute;

// 2^(power * log2(base)): libmvec's vector exp2 and log2 are several times faster than its pow
inline float raise(float base, float power) { return exp2f(power * log2f(base)); }
inline double raise(double base, double power) { return exp2(power * log2(base)); }

// e == 0 read from the bits: fast math lets the compiler assume no NaN, so a float comparison
// (magnitude > 0) may map NaN to the zero branch; the integer test cannot
inline bool is_zero(float e) {
  uint32_t bits;
  std::memcpy(&bits, &e, sizeof bits);
  return (bits << 1) == 0;
}
inline bool is_zero(double e) {
  uint64_t bits;
  std::memcpy(&bits, &e, sizeof bits);
  return (bits << 1) == 0;
}

// e is NaN, read from the bits for the same reason
inline bool is_nan(float e) {
  uint32_t bits;
  std::memcpy(&bits, &e, sizeof bits);
  return (bits << 1) > 0xff000000u;
}
inline bool is_nan(double e) {
  uint64_t bits;
  std::memcpy(&bits, &e, sizeof bits);
  return (bits << 1) > 0xffe0000000000000ull;
}

// the exponent is known only at run time
constexpr int kAnyPower = -1;

// |e|^N: for a whole N, N - 1 products (no rounding of exp and log, and several times faster);
// for kAnyPower, exp and log of the run-time power. Zero at e = 0 for every power (fast math
// gives no guarantee there, so it is written out), NaN stays NaN, inf stays inf for a positive
// power. |e|^0 (the slope of lp at p = 1) is 1 but 0 at e = 0 and at NaN, where the slope of |e|
// is sign(e): 0 at both in torch, as in the l1 loops
template <int N, typename T>
inline T magnitude_power(T e, T power) {
  const T magnitude = std::fabs(e);
  if constexpr (N == kAnyPower) {
    return is_zero(e) ? T(0) : raise(magnitude, power);
  } else if constexpr (N == 0) {
    return is_zero(e) || is_nan(e) ? T(0) : T(1);
  } else {
    T result = magnitude;
    for (int i = 1; i < N; ++i) result *= magnitude;
    return result;
  }
}

// N: p when it is a whole number the loops are specialised for, else kAnyPower
template <typename T, int N>
struct PowerSum {
  static T init() { return T(0); }
  static T step(T acc, T x, T w, T p) { return acc + magnitude_power<N>(x - w, p); }
  static T finish(T acc) { return acc; }
};

// grad is the output gradient already scaled by S^(1/p - 1): the term is |e|^(p-1) sign(e) grad;
// N: p - 1 when p is a whole number the loops are specialised for, else kAnyPower
template <typename T, int N>
struct PowerSlope {
  static T term(T e, T grad, T p) {
    const T slope = magnitude_power<N>(e, p - 1) * grad;
    return e < 0 ? -slope : slope;  // at e = 0 the slope is already 0
  }
};

// p when it is a whole number from 1 to 4, the exponents of the specialised loops, else kAnyPower
inline int whole_power(double p) { return p == std::floor(p) && p >= 1 && p <= 4 ? int(p) : kAnyPower; }

template <typename S>
void lp_forward(const S* f, const Compute<S>* wt, S* out, int64_t K, int64_t O, int64_t m0, int64_t m1, int threads,
                double p) {
  using T = Compute<S>;
  const T power = static_cast<T>(p);
  anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {
    switch (whole_power(p)) {
      case 1: return anyconv::forward_rows<S, PowerSum<T, 1>>(f, wt, out, K, O, a, b, power);
      case 2: return anyconv::forward_rows<S, PowerSum<T, 2>>(f, wt, out, K, O, a, b, power);
      case 3: return anyconv::forward_rows<S, PowerSum<T, 3>>(f, wt, out, K, O, a, b, power);
      case 4: return anyconv::forward_rows<S, PowerSum<T, 4>>(f, wt, out, K, O, a, b, power);
      default: return anyconv::forward_rows<S, PowerSum<T, kAnyPower>>(f, wt, out, K, O, a, b, power);
    }
  });
}

template <typename S>
void lp_backward(const S* f, const Compute<S>* w, const S* h, S* gf, Compute<S>* gw, int64_t K, int64_t O,
                 int64_t m0, int64_t m1, int threads, int64_t part_stride, int64_t k0, int64_t k1, double p) {
  using T = Compute<S>;
  const T power = static_cast<T>(p);
  anyconv::split_backward(m0, m1, k0, k1, threads, gw, part_stride,
                          [&](int64_t a, int64_t b, int64_t c, int64_t d, T* own) {
    switch (whole_power(p)) {
      case 1: return anyconv::backward_rows<S, PowerSlope<T, 0>>(f, w, h, gf, own, K, O, a, b, c, d, power);
      case 2: return anyconv::backward_rows<S, PowerSlope<T, 1>>(f, w, h, gf, own, K, O, a, b, c, d, power);
      case 3: return anyconv::backward_rows<S, PowerSlope<T, 2>>(f, w, h, gf, own, K, O, a, b, c, d, power);
      case 4: return anyconv::backward_rows<S, PowerSlope<T, 3>>(f, w, h, gf, own, K, O, a, b, c, d, power);
      default:
        return anyconv::backward_rows<S, PowerSlope<T, kAnyPower>>(f, w, h, gf, own, K, O, a, b, c, d, power);
    }
  });
}

// The cube root of every value, for lp's sums where the tap loops summed them
// (variants/power_roots.py): vectorised through libmvec, whose cbrt keeps 0, inf and NaN (fast
// math's rewrites of sqrt and division into estimates do not, so the square roots and the
// divisions of that module stay torch's)
template <typename S>
void cube_roots(const S* values, S* out, int64_t count, int threads) {
  anyconv::split_rows(0, count, threads, [&](int64_t a, int64_t b, int64_t) {
#pragma omp simd
    for (int64_t i = a; i < b; ++i) out[i] = anyconv::narrow<S>(std::cbrt(anyconv::widen(values[i])));
  });
}

}  // namespace

#define ANYCONV_EXPORT(S, T, SUFFIX)                                                                     \
  extern "C" void lp_forward_##SUFFIX(const S* f, const T* wt, S* out, int64_t K, int64_t O, int64_t m0,  \
                                      int64_t m1, int threads, double p) {                                \
    lp_forward<S>(f, wt, out, K, O, m0, m1, threads, p);                                                   \
  }                                                                                                       \
  extern "C" void lp_backward_##SUFFIX(const S* f, const T* w, const S* h, S* gf, T* gw, int64_t K,       \
                                       int64_t O, int64_t m0, int64_t m1, int threads,                    \
                                       int64_t part_stride, int64_t k0, int64_t k1, double p) {           \
    lp_backward<S>(f, w, h, gf, gw, K, O, m0, m1, threads, part_stride, k0, k1, p);                       \
  }                                                                                                       \
  extern "C" void lp_cbrt_##SUFFIX(const S* values, S* out, int64_t count, int threads) {                 \
    cube_roots<S>(values, out, count, threads);                                                            \
  }

ANYCONV_EXPORT(float, float, f32)
ANYCONV_EXPORT(double, double, f64)
ANYCONV_EXPORT(anyconv::BFloat16, float, bf16)
#ifdef ANYCONV_HAVE_FLOAT16
ANYCONV_EXPORT(_Float16, float, f16)
#endif
