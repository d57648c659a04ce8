// Fused loop nests of the lp variant, sum over taps of |f - w|^p and its backward, in float and
// double; the loop nests and layouts are those of fused_blocks.h. Compiled with fast math and
// OpenMP SIMD, so the power vectorises through glibc's libmvec.

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

extern "C" void lp_forward_f32(const float* f, const float* wt, float* out, int64_t K, int64_t O, int64_t m0,
                               int64_t m1, int threads, double p) {
  anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {
    anyconv::forward_rows<float, PowerSum<float>>(f, wt, out, K, O, a, b, static_cast<float>(p));
  });
}
extern "C" void lp_forward_f64(const double* f, const double* wt, double* out, int64_t K, int64_t O,
                               int64_t m0, int64_t m1, int threads, double p) {
  anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {
    anyconv::forward_rows<double, PowerSum<double>>(f, wt, out, K, O, a, b, p);
  });
}
extern "C" void lp_backward_f32(const float* f, const float* w, const float* h, float* gf, float* gw,
                                int64_t K, int64_t O, int64_t m0, int64_t m1, int threads, int64_t part_stride,
                                double p) {
  anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {
    anyconv::backward_rows<float, PowerSlope<float>>(f, w, h, gf, gw + part * part_stride, K, O, a, b,
                                                     static_cast<float>(p));
  });
}
extern "C" void lp_backward_f64(const double* f, const double* w, const double* h, double* gf, double* gw,
                                int64_t K, int64_t O, int64_t m0, int64_t m1, int threads, int64_t part_stride,
                                double p) {
  anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {
    anyconv::backward_rows<double, PowerSlope<double>>(f, w, h, gf, gw + part * part_stride, K, O, a, b, p);
  });
}
