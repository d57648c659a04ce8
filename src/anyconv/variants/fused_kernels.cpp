// Fused loop nests of l1 (AdderNet) and the tropical max_plus / min_plus, forward and backward,
// in float, double, bfloat16 and float16 (computed in float); the loop nests and layouts are those
// of fused_blocks.h. Each call works on the fields [m0, m1); a backward's threads each have their
// own filter-gradient buffer when they split the rows, or share one when l1's split the taps.

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "fused_blocks.h"

namespace {

using anyconv::all_finite;
using anyconv::Compute;
using anyconv::narrow;
using anyconv::out_lanes;
using anyconv::widen;

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
// for inputs known to be finite (no NaN, no inf): one max instruction per step, where the
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

// fields checked together before the tropical loops take them (a multiple of kBlockFields): few
// enough that the loops then find them in cache
constexpr int64_t kCheckedFields = 16;

// The tropical forward of the fields [m0, m1). Each run of kCheckedFields fields is checked just
// before its loops: a run with no NaN and no inf, as the filters, takes the plain max / min, the
// others the NaN-propagating select. The sweep in tap blocks goes over all its fields at once,
// so they are checked together.
template <typename S, bool MINIMUM>
void tropical_forward_rows(const S* f, const Compute<S>* wt, S* out, int64_t K, int64_t O, int64_t m0,
                           int64_t m1, bool filters_finite) {
  using T = Compute<S>;
  using Propagating = typename std::conditional<MINIMUM, MinPlus<T>, MaxPlus<T>>::type;
  using Plain = typename std::conditional<MINIMUM, FiniteMinPlus<T>, FiniteMaxPlus<T>>::type;
  const int64_t run = anyconv::forward_in_tap_blocks<S>(K) ? m1 - m0 : kCheckedFields;
  for (int64_t m = m0; m < m1; m += run) {
    const int64_t stop = std::min(m + run, m1);
    if (filters_finite && all_finite(f + m * K, (stop - m) * K))
      anyconv::forward_rows<S, Plain>(f, wt, out, K, O, m, stop);
    else
      anyconv::forward_rows<S, Propagating>(f, wt, out, K, O, m, stop);
  }
}

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

// taps whose index a T holds exactly (the single sweep's winner index)
template <typename T>
constexpr int64_t kExactTaps = int64_t(1) << std::numeric_limits<T>::digits;
// taps from which a finite block takes the single sweep: on fewer, a new best comes often enough
// that the sweep's selects cost more than the second, branch-free sweep (docs/benchmarks.md)
constexpr int64_t kSingleSweepTaps = 512;

// each (field, filter)'s gradient to its winning tap TAP: into the field gradient rows and the
// filter gradient
template <typename S, int MB, bool MINIMUM>
inline void take_winners(const S* g, const Compute<S> (&tap)[MB][out_lanes<Compute<S>>()], Compute<S>* grad_rows,
                         Compute<S>* grad_wt, int64_t K, int64_t O, int64_t m, int64_t ob) {
  using T = Compute<S>;
  for (int i = 0; i < MB; ++i) {
    for (int64_t o = 0; o < out_lanes<T>(); ++o) {
      const T grad = widen(g[(m + i) * O + ob + o]);
      // every tap searched leaves tap at K: never index there, whatever the input
      const int64_t k = std::min(static_cast<int64_t>(tap[i][o]), K - 1);
      grad_rows[i * K + k] += grad;
      grad_wt[k * O + ob + o] += MINIMUM ? -grad : grad;
    }
  }
}

// the tap that wins each (field, filter), the first on a tie, takes the whole gradient; when the
// best value is NaN the winner is the first NaN tap (as torch's max picks it). Two
// sweeps: the best value, then the first tap reaching it, counted without branches (a select
// that tracks the winning tap made gcc emit a mispredicted branch per vector, 6x slower). The
// search flag is cleared by selects: multiplied by a comparison turned into 0 or 1, gcc kept it
// in vectors on AVX-512 (mask registers) but made it a scalar branch per element on AVX2.
// FINITE: no NaN and no inf in the block's fields or the filters, and the plain max / min serve.
// grad_rows: the field gradient of the block's MB fields (MB x K, in the compute type)
template <typename S, int MB, bool MINIMUM, bool FINITE>
void tropical_backward_block(const S* f, const Compute<S>* wt, const S* g, Compute<S>* grad_rows,
                             Compute<S>* grad_wt, int64_t K, int64_t O, int64_t m, int64_t ob) {
  using T = Compute<S>;
  constexpr int64_t OB = out_lanes<T>();
  using Propagating = typename std::conditional<MINIMUM, MinPlus<T>, MaxPlus<T>>::type;
  using Plain = typename std::conditional<MINIMUM, FiniteMinPlus<T>, FiniteMaxPlus<T>>::type;
  using Reduce = typename std::conditional<FINITE, Plain, Propagating>::type;
  T best[MB][OB];
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) best[i][o] = Reduce::init();
  if constexpr (FINITE) {
    if (K >= kSingleSweepTaps && K < kExactTaps<T>) {
      // no NaN: the winner is the first tap strictly better than every tap before it, tracked in
      // the same sweep as the best value (its index a T, so that the select stays in vectors)
      T tap[MB][OB] = {};
      for (int64_t k = 0; k < K; ++k) {
        const T* w = wt + k * O + ob;
        const T index = static_cast<T>(k);
        for (int i = 0; i < MB; ++i) {
          const T x = widen(f[(m + i) * K + k]);
#pragma omp simd
          for (int64_t o = 0; o < OB; ++o) {
            const T value = MINIMUM ? x - w[o] : x + w[o];
            const bool better = MINIMUM ? value < best[i][o] : value > best[i][o];
            best[i][o] = better ? value : best[i][o];
            tap[i][o] = better ? index : tap[i][o];
          }
        }
      }
      take_winners<S, MB, MINIMUM>(g, tap, grad_rows, grad_wt, K, O, m, ob);
      return;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = widen(f[(m + i) * K + k]);
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
      const T x = widen(f[(m + i) * K + k]);
#pragma omp simd
      for (int64_t o = 0; o < OB; ++o) {
        const T value = MINIMUM ? x - w[o] : x + w[o];
        // two selects, not &&: a logical and made gcc branch per element, 10x slower
        searching[i][o] = value != best[i][o] ? searching[i][o] : T(0);
        if (!FINITE) searching[i][o] = value == value ? searching[i][o] : T(0);
        tap[i][o] += searching[i][o];
      }
    }
  }
  take_winners<S, MB, MINIMUM>(g, tap, grad_rows, grad_wt, K, O, m, ob);
}

// fields a tile of the tropical backward takes: their rows and one block of filters' column of wt
// (K x out_lanes) stay in cache while every block of the tile meets that column
constexpr int64_t kTileFields = 8 * anyconv::kBlockFields;

// the filters [o0, o1) of the fields [m0, m1): their field gradients (over those filters only)
// and the filter gradients of those filters. Tile by tile of fields, each block of filters meets
// every block of fields of the tile: a loop over the filters inside one over the fields streamed
// the whole of wt in from memory again for every block of fields on a wide layer. The field
// gradients sum in the compute type: in place for float and double, in a buffer rounded once to S
// for the narrower types. Each block of fields is checked once (see tropical_forward_rows).
template <typename S, bool MINIMUM>
void tropical_backward_rows(const S* f, const Compute<S>* wt, const S* g, S* grad_f, Compute<S>* grad_wt,
                            int64_t K, int64_t O, int64_t m0, int64_t m1, int64_t o0, int64_t o1,
                            bool filters_finite) {
  using T = Compute<S>;
  constexpr int MB = anyconv::kBlockFields;
  constexpr int64_t OB = out_lanes<T>();
  constexpr bool kInPlace = std::is_same<S, T>::value;
  std::vector<T> buffer(kInPlace ? 0 : kTileFields * K);
  bool finite[kTileFields / MB];
  for (int64_t t0 = m0; t0 < m1; t0 += kTileFields) {
    const int64_t t1 = std::min(t0 + kTileFields, m1);
    T* rows = kInPlace ? reinterpret_cast<T*>(grad_f + t0 * K) : buffer.data();
    std::fill(rows, rows + (t1 - t0) * K, T(0));
    for (int64_t m = t0; m + MB <= t1; m += MB) finite[(m - t0) / MB] = filters_finite && all_finite(f + m * K, MB * K);
    for (int64_t ob = o0; ob < o1; ob += OB) {
      int64_t m = t0;
      for (; m + MB <= t1; m += MB) {
        T* block_rows = rows + (m - t0) * K;
        if (finite[(m - t0) / MB])
          tropical_backward_block<S, MB, MINIMUM, true>(f, wt, g, block_rows, grad_wt, K, O, m, ob);
        else
          tropical_backward_block<S, MB, MINIMUM, false>(f, wt, g, block_rows, grad_wt, K, O, m, ob);
      }
      for (; m < t1; ++m)
        tropical_backward_block<S, 1, MINIMUM, false>(f, wt, g, rows + (m - t0) * K, grad_wt, K, O, m, ob);
    }
    if (!kInPlace)
      for (int64_t j = 0; j < (t1 - t0) * K; ++j) grad_f[t0 * K + j] = narrow<S>(rows[j]);
  }
}

// flags: bit 0 min_plus (else max_plus), bit 1 the filters are all finite
template <typename S>
void tropical_backward_any(const S* f, const Compute<S>* wt, const S* g, S* grad_f, Compute<S>* grad_wt,
                           int64_t K, int64_t O, int64_t m0, int64_t m1, int64_t o0, int64_t o1, int flags) {
  const bool filters_finite = flags & 2;
  if (flags & 1)
    return tropical_backward_rows<S, true>(f, wt, g, grad_f, grad_wt, K, O, m0, m1, o0, o1, filters_finite);
  tropical_backward_rows<S, false>(f, wt, g, grad_f, grad_wt, K, O, m0, m1, o0, o1, filters_finite);
}

// The tropical backward with its threads splitting the filters, each a run of whole channel
// blocks: they then share one filter gradient (columns apart), and each but the first sums its
// field gradients in a buffer of the fields' size, added to the first's after. For a wide layer
// the fields of a chunk are far smaller than its filters, which the row split gives each
// thread. Only for S the compute type itself (float, double): the sums then match the row split's.
template <typename S>
void tropical_backward_filters_split(const S* f, const S* wt, const S* g, S* grad_f, S* grad_wt, int64_t K,
                                     int64_t O, int64_t m0, int64_t m1, int threads, int flags) {
#ifdef _OPENMP
  constexpr int64_t OB = out_lanes<S>();
  const int64_t rows = m1 - m0;
  std::vector<std::vector<S>> own(threads > 1 ? threads - 1 : 0);
#pragma omp parallel num_threads(threads)
  {
    const int64_t parts = omp_get_num_threads(), part = omp_get_thread_num();
    const int64_t blocks = O / OB, per = (blocks + parts - 1) / parts;
    const int64_t o0 = std::min(part * per, blocks) * OB, o1 = std::min((part + 1) * per, blocks) * OB;
    if (part == 0) {
      tropical_backward_any<S>(f, wt, g, grad_f, grad_wt, K, O, m0, m1, o0, o1, flags);
    } else {
      std::vector<S>& mine = own[part - 1];
      mine.assign(rows * K, S(0));
      // the fields [m0, m1) seen from m0: the buffer holds only their rows
      tropical_backward_any<S>(f + m0 * K, wt, g + m0 * O, mine.data(), grad_wt, K, O, 0, rows, o0, o1, flags);
    }
  }
  for (const std::vector<S>& mine : own) {
    if (mine.empty()) continue;  // a thread the team did not get
    S* target = grad_f + m0 * K;
#pragma omp parallel for simd num_threads(threads)
    for (int64_t j = 0; j < rows * K; ++j) target[j] += mine[j];
  }
#else
  (void)threads;
  tropical_backward_any<S>(f, wt, g, grad_f, grad_wt, K, O, m0, m1, 0, O, flags);
#endif
}

// flags as for tropical_backward_any; part_stride 0 (float and double only): the threads split the
// filters, else the rows, thread i writing its filter gradients at grad_wt + i * part_stride
template <typename S>
void tropical_backward(const S* f, const Compute<S>* wt, const S* g, S* grad_f, Compute<S>* grad_wt, int64_t K,
                       int64_t O, int64_t m0, int64_t m1, int threads, int64_t part_stride, int flags) {
  if constexpr (std::is_same<S, Compute<S>>::value) {
    if (part_stride == 0) return tropical_backward_filters_split<S>(f, wt, g, grad_f, grad_wt, K, O, m0, m1, threads, flags);
  }
  anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {
    tropical_backward_any<S>(f, wt, g, grad_f, grad_wt + part * part_stride, K, O, a, b, 0, O, flags);
  });
}

}  // namespace

#define ANYCONV_EXPORT(S, T, SUFFIX)                                                                         \
  extern "C" void l1_forward_##SUFFIX(const S* f, const T* wt, S* out, int64_t K, int64_t O, int64_t m0,  \
                                      int64_t m1, int threads) {                                          \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {                             \
      anyconv::forward_rows<S, L1<T>>(f, wt, out, K, O, a, b);                                            \
    });                                                                                                   \
  }                                                                                                       \
  extern "C" void tropical_forward_##SUFFIX(const S* f, const T* wt, S* out, int64_t K, int64_t O,        \
                                            int64_t m0, int64_t m1, int threads, int minimum) {           \
    const bool filters_finite = all_finite(wt, K * O);                                                    \
    anyconv::split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t) {                             \
      if (minimum)                                                                                        \
        tropical_forward_rows<S, true>(f, wt, out, K, O, a, b, filters_finite);                           \
      else                                                                                                \
        tropical_forward_rows<S, false>(f, wt, out, K, O, a, b, filters_finite);                          \
    });                                                                                                   \
  }                                                                                                       \
  extern "C" void tropical_backward_##SUFFIX(const S* f, const T* wt, const S* g, S* gf, T* gwt,          \
                                             int64_t K, int64_t O, int64_t m0, int64_t m1, int threads,   \
                                             int64_t part_stride, int minimum) {                          \
    const int flags = (minimum ? 1 : 0) | (all_finite(wt, K * O) ? 2 : 0);                                \
    tropical_backward<S>(f, wt, g, gf, gwt, K, O, m0, m1, threads, part_stride, flags);                   \
  }                                                                                                       \
  extern "C" void l1_backward_##SUFFIX(const S* f, const T* w, const S* g, S* gf, T* gw, int64_t K,       \
                                       int64_t O, int64_t m0, int64_t m1, int threads,                    \
                                       int64_t part_stride, int64_t k0, int64_t k1, int adder) {          \
    /* adder: no filter gradient (gw is null) */                                                          \
    anyconv::split_backward(m0, m1, k0, k1, threads, gw, part_stride,                                     \
                            [&](int64_t a, int64_t b, int64_t c, int64_t d, T* own) {                     \
      if (adder)                                                                                          \
        anyconv::backward_rows<S, L1Adder<T>>(f, w, g, gf, nullptr, K, O, a, b, c, d);                    \
      else                                                                                                \
        anyconv::backward_rows<S, L1Exact<T>>(f, w, g, gf, own, K, O, a, b, c, d);                        \
    });                                                                                                   \
  }

ANYCONV_EXPORT(float, float, f32)
ANYCONV_EXPORT(double, double, f64)
ANYCONV_EXPORT(anyconv::BFloat16, float, bf16)
#ifdef ANYCONV_HAVE_FLOAT16
ANYCONV_EXPORT(_Float16, float, f16)
#endif
