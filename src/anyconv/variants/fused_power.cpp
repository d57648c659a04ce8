// Fused loop nests for the lp variant: sum over taps of |f - w|^p, and its backward, in float
// and double. Compiled with fast math and OpenMP SIMD so the power vectorises (glibc's libmvec);
// the layout is that of fused_kernels.cpp (fields (M, K), filters transposed (K, O), O padded).

#include <math.h>

#include <algorithm>
#include <cstdint>

namespace {

template <typename T>
constexpr int64_t lanes() { return 256 / sizeof(T); }

// |e|^power, with 0^power = 0 written out (fast math gives no guarantee at zero)
inline float raise(float base, float power) { return powf(base, power); }
inline double raise(double base, double power) { return pow(base, power); }

template <typename T>
inline T magnitude_power(T e, T power) {
  const T magnitude = e < 0 ? -e : e;
  return magnitude > 0 ? raise(magnitude, power) : T(0);
}

template <typename T, int MB>
void lp_forward_block(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m, int64_t ob, T p) {
  constexpr int64_t OB = lanes<T>();
  T acc[MB][OB] = {};
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
#pragma omp simd
      for (int64_t o = 0; o < OB; ++o) acc[i][o] += magnitude_power(x - w[o], p);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) out[(m + i) * O + ob + o] = acc[i][o];
}

// h is the output gradient already scaled by S^(1/p - 1); d S / d e = p |e|^(p-1) sign(e)
template <typename T, int MB>
void lp_backward_block(const T* f, const T* wt, const T* h, T* grad_f, T* grad_wt, int64_t K, int64_t O,
                       int64_t m, int64_t ob, T p) {
  constexpr int64_t OB = lanes<T>();
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    T filter_sum[OB] = {};
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
      const T* scale = h + (m + i) * O + ob;
      T field_sum = 0;
#pragma omp simd reduction(+ : field_sum)
      for (int64_t o = 0; o < OB; ++o) {
        const T e = x - w[o];
        const T slope = magnitude_power(e, p - 1);
        const T term = e > 0 ? scale[o] * slope : (e < 0 ? -scale[o] * slope : T(0));
        field_sum += term;
        filter_sum[o] += term;
      }
      grad_f[(m + i) * K + k] -= field_sum;
    }
    for (int64_t o = 0; o < OB; ++o) grad_wt[k * O + ob + o] += filter_sum[o];
  }
}

template <typename T>
void lp_forward(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m0, int64_t m1, T p) {
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4)
    for (int64_t ob = 0; ob < O; ob += lanes<T>()) lp_forward_block<T, 4>(f, wt, out, K, O, m, ob, p);
  for (; m < m1; ++m)
    for (int64_t ob = 0; ob < O; ob += lanes<T>()) lp_forward_block<T, 1>(f, wt, out, K, O, m, ob, p);
}

template <typename T>
void lp_backward(const T* f, const T* wt, const T* h, T* gf, T* gw, int64_t K, int64_t O, int64_t m0,
                 int64_t m1, T p) {
  std::fill(gf + m0 * K, gf + m1 * K, T(0));
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4)
    for (int64_t ob = 0; ob < O; ob += lanes<T>()) lp_backward_block<T, 4>(f, wt, h, gf, gw, K, O, m, ob, p);
  for (; m < m1; ++m)
    for (int64_t ob = 0; ob < O; ob += lanes<T>()) lp_backward_block<T, 1>(f, wt, h, gf, gw, K, O, m, ob, p);
}

}  // namespace

extern "C" void lp_forward_f32(const float* f, const float* wt, float* out, int64_t K, int64_t O, int64_t m0,
                               int64_t m1, double p) {
  lp_forward<float>(f, wt, out, K, O, m0, m1, static_cast<float>(p));
}
extern "C" void lp_forward_f64(const double* f, const double* wt, double* out, int64_t K, int64_t O,
                               int64_t m0, int64_t m1, double p) {
  lp_forward<double>(f, wt, out, K, O, m0, m1, p);
}
extern "C" void lp_backward_f32(const float* f, const float* wt, const float* h, float* gf, float* gw,
                                int64_t K, int64_t O, int64_t m0, int64_t m1, double p) {
  lp_backward<float>(f, wt, h, gf, gw, K, O, m0, m1, static_cast<float>(p));
}
extern "C" void lp_backward_f64(const double* f, const double* wt, const double* h, double* gf, double* gw,
                                int64_t K, int64_t O, int64_t m0, int64_t m1, double p) {
  lp_backward<double>(f, wt, h, gf, gw, K, O, m0, m1, p);
}
