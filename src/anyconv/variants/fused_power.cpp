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

// exp(power * log(base)): libmvec's vector exp and log are several times faster than its pow
inline float raise(float base, float power) { return expf(power * logf(base)); }
inline double raise(double base, double power) { return exp(power * log(base)); }

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

// |e|^power, with 0 at e = 0 written out (fast math gives no guarantee there); NaN stays NaN and
// inf stays inf through log and exp
template <typename T>
inline T magnitude_power(T e, T power) {
  const T magnitude = std::fabs(e);
  return is_zero(e) ? T(0) : raise(magnitude, power);
}

template <typename T>
struct PowerSum {
  static T init() { return T(0); }
  static T step(T acc, T x, T w, T p) { return acc + magnitude_power(x - w, p); }
  static T finish(T acc) { return acc; }
};

// grad is the output gradient already scaled by S^(1/p - 1): the term is |e|^(p-1) sign(e) grad
template <typename T>
struct PowerSlope {
  static T term(T e, T grad, T p) {
    const T slope = magnitude_power(e, p - 1) * grad;
    return e < 0 ? -slope : slope;  // at e = 0 the slope is already 0
  }
};

}  // namespace

#define ANYCONV_EXPORT(S, T, SUFFIX)                                                                     \
  extern "C" void lp_forward_##SUFFIX(const S* f, const T* wt, S* out, int64_t K, int64_t O, int64_t m0,  \
                                      int64_t m1, int threads, double p) {                                \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {                             \
      anyconv::forward_rows<S, PowerSum<T>>(f, wt, out, K, O, a, b, static_cast<T>(p));                   \
    });                                                                                                   \
  }                                                                                                       \
  extern "C" void lp_backward_##SUFFIX(const S* f, const T* w, const S* h, S* gf, T* gw, int64_t K,       \
                                       int64_t O, int64_t m0, int64_t m1, int threads,                    \
                                       int64_t part_stride, double p) {                                   \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {                        \
      anyconv::backward_rows<S, PowerSlope<T>>(f, w, h, gf, gw + part * part_stride, K, O, a, b,          \
                                               static_cast<T>(p));                                        \
    });                                                                                                   \
  }

ANYCONV_EXPORT(float, float, f32)
ANYCONV_EXPORT(double, double, f64)
ANYCONV_EXPORT(anyconv::BFloat16, float, bf16)
#ifdef ANYCONV_HAVE_FLOAT16
ANYCONV_EXPORT(_Float16, float, f16)
#endif
