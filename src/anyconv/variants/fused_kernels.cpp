// Fused loop nests for the variants that are not a matrix product: l1 (AdderNet) and the
// tropical max_plus / min_plus, forward and backward, in float and double.
//
// Layout, shared with anyconv/variants/fused.py: fields f (M, K) rows, filters transposed
// wt (K, O) with O a multiple of lanes<T>() (the caller pads it with zeros), outputs and
// output gradients (M, O), field gradients (M, K), filter gradients (K, O). Each call works
// on the fields [m0, m1), so the caller can split the rows between threads; the filter
// gradient is accumulated into the buffer it is given (one per thread).
//
// The output channels are the innermost loop, over a fixed-width block the compiler keeps in
// vector registers, and a few fields are processed together so each filter load is reused.

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

// output channels per block: 256 bytes, four 512-bit (or eight 256-bit) registers
template <typename T>
constexpr int64_t lanes() { return 256 / sizeof(T); }

// sum over taps of |f - w| for MB fields against one block of output channels
template <typename T, int MB>
void l1_forward_block(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m, int64_t ob) {
  constexpr int64_t OB = lanes<T>();
  T acc[MB][OB] = {};
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
      for (int64_t o = 0; o < OB; ++o) acc[i][o] += std::abs(x - w[o]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) out[(m + i) * O + ob + o] = -acc[i][o];
}

// best (max of f + w, or min of f - w) over taps and the first tap reaching it
template <typename T, int MB, bool MINIMUM>
void tropical_block(const T* f, const T* wt, int64_t K, int64_t O, int64_t m, int64_t ob,
                    T (&best)[MB][lanes<T>()], int32_t (&tap)[MB][lanes<T>()]) {
  constexpr int64_t OB = lanes<T>();
  for (int i = 0; i < MB; ++i) {
    const T x = f[(m + i) * K];
    for (int64_t o = 0; o < OB; ++o) {
      best[i][o] = MINIMUM ? x - wt[ob + o] : x + wt[ob + o];
      tap[i][o] = 0;
    }
  }
  for (int64_t k = 1; k < K; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
      for (int64_t o = 0; o < OB; ++o) {
        const T value = MINIMUM ? x - w[o] : x + w[o];
        const bool better = MINIMUM ? value < best[i][o] : value > best[i][o];
        best[i][o] = better ? value : best[i][o];
        tap[i][o] = better ? static_cast<int32_t>(k) : tap[i][o];
      }
    }
  }
}

template <typename T, int MB, bool MINIMUM>
void tropical_forward_block(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m, int64_t ob) {
  constexpr int64_t OB = lanes<T>();
  T best[MB][OB];
  int32_t tap[MB][OB];
  tropical_block<T, MB, MINIMUM>(f, wt, K, O, m, ob, best, tap);
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) out[(m + i) * O + ob + o] = best[i][o];
}

// the winning tap of each (field, filter) takes the whole output gradient
template <typename T, int MB, bool MINIMUM>
void tropical_backward_block(const T* f, const T* wt, const T* g, T* grad_f, T* grad_wt, int64_t K,
                             int64_t O, int64_t m, int64_t ob) {
  constexpr int64_t OB = lanes<T>();
  T best[MB][OB];
  int32_t tap[MB][OB];
  tropical_block<T, MB, MINIMUM>(f, wt, K, O, m, ob, best, tap);
  for (int i = 0; i < MB; ++i) {
    for (int64_t o = 0; o < OB; ++o) {
      const T grad = g[(m + i) * O + ob + o];
      const int64_t k = tap[i][o];
      grad_f[(m + i) * K + k] += grad;
      grad_wt[k * O + ob + o] += MINIMUM ? -grad : grad;
    }
  }
}

// d(-|e|)/df = -sign(e), d/dw = sign(e), e = f - w; AdderNet's rule for the fields uses
// clip(e, -1, 1) instead of sign(e) (its filter gradient is a matrix product, done by the caller)
template <typename T, int MB, bool ADDER>
void l1_backward_block(const T* f, const T* wt, const T* g, T* grad_f, T* grad_wt, int64_t K, int64_t O,
                       int64_t m, int64_t ob) {
  constexpr int64_t OB = lanes<T>();
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    T filter_sum[OB] = {};
    for (int i = 0; i < MB; ++i) {
      const T x = f[(m + i) * K + k];
      const T* grad = g + (m + i) * O + ob;
      T field_sum = 0;
      for (int64_t o = 0; o < OB; ++o) {
        const T e = x - w[o];
        T term;
        if (ADDER) {
          term = grad[o] * std::min(std::max(e, T(-1)), T(1));
        } else {
          term = e > 0 ? grad[o] : (e < 0 ? -grad[o] : T(0));
        }
        field_sum += term;
        filter_sum[o] += term;
      }
      grad_f[(m + i) * K + k] -= field_sum;
    }
    if (!ADDER)
      for (int64_t o = 0; o < OB; ++o) grad_wt[k * O + ob + o] += filter_sum[o];
  }
}

// run a block function over the rows [m0, m1) and every block of output channels
template <typename T, template <typename, int> class Kernel, typename... Args>
void over_rows(int64_t O, int64_t m0, int64_t m1, Args... args) {
  constexpr int64_t OB = lanes<T>();
  int64_t m = m0;
  for (; m + 4 <= m1; m += 4)
    for (int64_t ob = 0; ob < O; ob += OB) Kernel<T, 4>::run(args..., m, ob);
  for (; m < m1; ++m)
    for (int64_t ob = 0; ob < O; ob += OB) Kernel<T, 1>::run(args..., m, ob);
}

template <typename T, int MB>
struct L1Forward {
  static void run(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m, int64_t ob) {
    l1_forward_block<T, MB>(f, wt, out, K, O, m, ob);
  }
};
template <typename T, int MB>
struct MaxForward {
  static void run(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m, int64_t ob) {
    tropical_forward_block<T, MB, false>(f, wt, out, K, O, m, ob);
  }
};
template <typename T, int MB>
struct MinForward {
  static void run(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m, int64_t ob) {
    tropical_forward_block<T, MB, true>(f, wt, out, K, O, m, ob);
  }
};
template <typename T, int MB>
struct MaxBackward {
  static void run(const T* f, const T* wt, const T* g, T* gf, T* gw, int64_t K, int64_t O, int64_t m,
                  int64_t ob) {
    tropical_backward_block<T, MB, false>(f, wt, g, gf, gw, K, O, m, ob);
  }
};
template <typename T, int MB>
struct MinBackward {
  static void run(const T* f, const T* wt, const T* g, T* gf, T* gw, int64_t K, int64_t O, int64_t m,
                  int64_t ob) {
    tropical_backward_block<T, MB, true>(f, wt, g, gf, gw, K, O, m, ob);
  }
};
template <typename T, int MB>
struct L1Backward {
  static void run(const T* f, const T* wt, const T* g, T* gf, T* gw, int64_t K, int64_t O, int64_t m,
                  int64_t ob) {
    l1_backward_block<T, MB, false>(f, wt, g, gf, gw, K, O, m, ob);
  }
};
template <typename T, int MB>
struct AdderBackward {
  static void run(const T* f, const T* wt, const T* g, T* gf, T* gw, int64_t K, int64_t O, int64_t m,
                  int64_t ob) {
    l1_backward_block<T, MB, true>(f, wt, g, gf, gw, K, O, m, ob);
  }
};

template <typename T>
void zero_rows(T* grad_f, int64_t K, int64_t m0, int64_t m1) {
  std::fill(grad_f + m0 * K, grad_f + m1 * K, T(0));
}

}  // namespace

#define ANYCONV_EXPORT(T, SUFFIX)                                                                          \
  extern "C" void l1_forward_##SUFFIX(const T* f, const T* wt, T* out, int64_t K, int64_t O, int64_t m0,  \
                                      int64_t m1) {                                                        \
    over_rows<T, L1Forward>(O, m0, m1, f, wt, out, K, O);                                                  \
  }                                                                                                        \
  extern "C" void tropical_forward_##SUFFIX(const T* f, const T* wt, T* out, int64_t K, int64_t O,        \
                                            int64_t m0, int64_t m1, int minimum) {                         \
    if (minimum)                                                                                           \
      over_rows<T, MinForward>(O, m0, m1, f, wt, out, K, O);                                               \
    else                                                                                                   \
      over_rows<T, MaxForward>(O, m0, m1, f, wt, out, K, O);                                               \
  }                                                                                                        \
  extern "C" void tropical_backward_##SUFFIX(const T* f, const T* wt, const T* g, T* gf, T* gw, int64_t K, \
                                             int64_t O, int64_t m0, int64_t m1, int minimum) {             \
    zero_rows(gf, K, m0, m1);                                                                              \
    if (minimum)                                                                                           \
      over_rows<T, MinBackward>(O, m0, m1, f, wt, g, gf, gw, K, O);                                        \
    else                                                                                                   \
      over_rows<T, MaxBackward>(O, m0, m1, f, wt, g, gf, gw, K, O);                                        \
  }                                                                                                        \
  extern "C" void l1_backward_##SUFFIX(const T* f, const T* wt, const T* g, T* gf, T* gw, int64_t K,       \
                                       int64_t O, int64_t m0, int64_t m1, int adder) {                     \
    zero_rows(gf, K, m0, m1);                                                                              \
    if (adder)                                                                                             \
      over_rows<T, AdderBackward>(O, m0, m1, f, wt, g, gf, gw, K, O);                                      \
    else                                                                                                   \
      over_rows<T, L1Backward>(O, m0, m1, f, wt, g, gf, gw, K, O);                                         \
  }

ANYCONV_EXPORT(float, f32)
ANYCONV_EXPORT(double, f64)
