// Fused loop nests of l1 (AdderNet) and the tropical max_plus / min_plus, forward and backward,
// in float and double; the loop nests and layouts are those of fused_blocks.h. Each call works
// on the fields [m0, m1), so the caller splits the rows between threads and gives each thread
// its own filter-gradient buffer.

#include <cmath>
#include <limits>
#include <type_traits>

#include "fused_blocks.h"

namespace {

using anyconv::out_lanes;

template <typename T>
struct L1 {
  static T init() { return T(0); }
  static T step(T acc, T x, T w) { return acc + std::abs(x - w); }
  static T finish(T acc) { return -acc; }
};
// NaN wins, as in torch's amax: std::max(acc, v) would keep acc when v is NaN, and a NaN acc
// then loses to the next tap; here a NaN value replaces acc and nothing replaces a NaN acc
template <typename T>
struct MaxPlus {
  static T init() { return -std::numeric_limits<T>::infinity(); }
  static T step(T acc, T x, T w) {
    const T value = x + w;
    return (value > acc || value != value) ? value : acc;
  }
  static T finish(T acc) { return acc; }
};
template <typename T>
struct MinPlus {
  static T init() { return std::numeric_limits<T>::infinity(); }
  static T step(T acc, T x, T w) {
    const T value = x - w;
    return (value < acc || value != value) ? value : acc;
  }
  static T finish(T acc) { return acc; }
};
// for inputs known to be finite (no NaN, no inf - inf): one max instruction per step, where the
// NaN-propagating select above takes four
template <typename T>
struct FiniteMaxPlus {
  static T init() { return -std::numeric_limits<T>::infinity(); }
  static T step(T acc, T x, T w) { return std::max(acc, x + w); }
  static T finish(T acc) { return acc; }
};
template <typename T>
struct FiniteMinPlus {
  static T init() { return std::numeric_limits<T>::infinity(); }
  static T step(T acc, T x, T w) { return std::min(acc, x - w); }
  static T finish(T acc) { return acc; }
};

// d(-|e|)/d e = -sign(e); the sign is folded into the block's "minus the sum" for the fields
template <typename T>
struct L1Exact {
  static T term(T e, T grad) { return e > 0 ? grad : (e < 0 ? -grad : T(0)); }
};
// AdderNet's field rule: clip(e, -1, 1) in place of sign(e)
template <typename T>
struct L1Adder {
  static T term(T e, T grad) { return grad * std::min(std::max(e, T(-1)), T(1)); }
};

// the tap that wins each (field, filter), the first on a tie, takes the whole gradient; when the
// best value is NaN the winner is the first NaN tap (as torch's max picks it). Two
// sweeps: the best value, then the first tap reaching it, counted without branches (a select
// that tracks the winning tap made gcc emit a mispredicted branch per vector, 6x slower).
// FINITE: the caller checked that no input is NaN or inf, and the plain max / min serve
template <typename T, int MB, bool MINIMUM, bool FINITE>
void tropical_backward_block(const T* f, const T* wt, const T* g, T* grad_f, T* grad_wt, int64_t K,
                             int64_t O, int64_t m, int64_t ob) {
  constexpr int64_t OB = out_lanes<T>();
  using Propagating = typename std::conditional<MINIMUM, MinPlus<T>, MaxPlus<T>>::type;
  using Plain = typename std::conditional<MINIMUM, FiniteMinPlus<T>, FiniteMaxPlus<T>>::type;
  using Reduce = typename std::conditional<FINITE, Plain, Propagating>::type;
  T best[MB][OB];
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) best[i][o] = Reduce::init();
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
#pragma omp simd
      for (int64_t o = 0; o < OB; ++o) best[i][o] = Reduce::step(best[i][o], x, w[o]);
    }
  }
  // searching[o] is 1 until the best value (or, when it is NaN, a NaN) is met; tap counts the
  // taps before that
  T searching[MB][OB];
  T tap[MB][OB] = {};
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) searching[i][o] = T(1);
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
#pragma omp simd
      for (int64_t o = 0; o < OB; ++o) {
        const T value = MINIMUM ? x - w[o] : x + w[o];
        // products of 0/1, not &&: a logical and made gcc branch per element, 10x slower
        searching[i][o] *= static_cast<T>(value != best[i][o]);
        if (!FINITE) searching[i][o] *= static_cast<T>(value == value);
        tap[i][o] += searching[i][o];
      }
    }
  }
  for (int i = 0; i < MB; ++i) {
    for (int64_t o = 0; o < OB; ++o) {
      const T grad = g[(m + i) * O + ob + o];
      // every tap searched leaves tap at K: never index there, whatever the input
      const int64_t k = std::min(static_cast<int64_t>(tap[i][o]), K - 1);
      grad_f[(m + i) * K + k] += grad;
      grad_wt[k * O + ob + o] += MINIMUM ? -grad : grad;
    }
  }
}

template <typename T, bool MINIMUM, bool FINITE>
void tropical_backward_rows(const T* f, const T* wt, const T* g, T* grad_f, T* grad_wt, int64_t K, int64_t O,
                            int64_t m0, int64_t m1) {
  constexpr int64_t OB = out_lanes<T>();
  std::fill(grad_f + m0 * K, grad_f + m1 * K, T(0));
  int64_t m = m0;
  for (; m + anyconv::kBlockFields <= m1; m += anyconv::kBlockFields)
    for (int64_t ob = 0; ob < O; ob += OB)
      tropical_backward_block<T, anyconv::kBlockFields, MINIMUM, FINITE>(f, wt, g, grad_f, grad_wt, K, O, m,
                                                                         ob);
  for (; m < m1; ++m)
    for (int64_t ob = 0; ob < O; ob += OB)
      tropical_backward_block<T, 1, MINIMUM, FINITE>(f, wt, g, grad_f, grad_wt, K, O, m, ob);
}

}  // namespace

#define ANYCONV_EXPORT(T, SUFFIX)                                                                         \
  extern "C" void l1_forward_##SUFFIX(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m0,  \
                                      int64_t m1, int threads) {                                          \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {                             \
      anyconv::forward_rows<T, L1<T>>(f, wt, out, K, O, a, b);                                            \
    });                                                                                                   \
  }                                                                                                       \
  extern "C" void tropical_forward_##SUFFIX(const T* f, const T* wt, T* out, int64_t K, int64_t O,        \
                                            int64_t m0, int64_t m1, int threads, int flags) {             \
    /* flags: bit 0 min_plus (else max_plus), bit 1 inputs all finite (the caller checked) */            \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {                             \
      switch (flags & 3) {                                                                                \
        case 0: anyconv::forward_rows<T, MaxPlus<T>>(f, wt, out, K, O, a, b); break;                      \
        case 1: anyconv::forward_rows<T, MinPlus<T>>(f, wt, out, K, O, a, b); break;                      \
        case 2: anyconv::forward_rows<T, FiniteMaxPlus<T>>(f, wt, out, K, O, a, b); break;                \
        default: anyconv::forward_rows<T, FiniteMinPlus<T>>(f, wt, out, K, O, a, b);                      \
      }                                                                                                   \
    });                                                                                                   \
  }                                                                                                       \
  extern "C" void tropical_backward_##SUFFIX(const T* f, const T* wt, const T* g, T* gf, T* gwt,          \
                                             int64_t K, int64_t O, int64_t m0, int64_t m1, int threads,   \
                                             int64_t part_stride, int flags) {                            \
    /* flags as for tropical_forward */                                                                   \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {                        \
      T* gw = gwt + part * part_stride;                                                                   \
      switch (flags & 3) {                                                                                \
        case 0: tropical_backward_rows<T, false, false>(f, wt, g, gf, gw, K, O, a, b); break;             \
        case 1: tropical_backward_rows<T, true, false>(f, wt, g, gf, gw, K, O, a, b); break;              \
        case 2: tropical_backward_rows<T, false, true>(f, wt, g, gf, gw, K, O, a, b); break;              \
        default: tropical_backward_rows<T, true, true>(f, wt, g, gf, gw, K, O, a, b);                     \
      }                                                                                                   \
    });                                                                                                   \
  }                                                                                                       \
  extern "C" void l1_backward_##SUFFIX(const T* f, const T* w, const T* g, T* gf, T* gw, int64_t K,       \
                                       int64_t O, int64_t m0, int64_t m1, int threads,                    \
                                       int64_t part_stride, int adder) {                                  \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {                        \
      if (adder)                                                                                          \
        anyconv::backward_rows<T, L1Adder<T>>(f, w, g, gf, nullptr, K, O, a, b);                          \
      else                                                                                                \
        anyconv::backward_rows<T, L1Exact<T>>(f, w, g, gf, gw + part * part_stride, K, O, a, b);          \
    });                                                                                                   \
  }

ANYCONV_EXPORT(float, f32)
ANYCONV_EXPORT(double, f64)
