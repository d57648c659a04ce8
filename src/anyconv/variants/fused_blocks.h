// The two loop nests every fused variant shares, parameterised by what happens to one
// (field, filter, tap) triple. Included by fused_kernels.cpp and fused_power.cpp.
//
// Forward, output channels innermost: fields f (M, K) rows, filters transposed wt (K, O) with
// O a multiple of out_lanes<T>() (zero padded by the caller), output (M, O). A block of MB
// fields keeps MB x out_lanes accumulators in vector registers while it sweeps the taps.
//
// Backward, taps innermost: fields f (M, K), filters w (O, K), output gradient g (M, O); the
// field gradient (M, K) of a block of MB fields x tap_lanes taps stays in registers while it
// sweeps the filters, and each filter's gradient row is updated once per block.
//
// S is the stored type of the fields, the output and its gradient (see storage_types.h); the
// filters and the filter gradients come in its compute type T, in which everything accumulates.

#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "storage_types.h"

#ifdef _OPENMP
#include <omp.h>
#endif

// 1 when the forward loops split their rows on OpenMP threads, 0 when the caller must do it
extern "C" int anyconv_openmp() {
#ifdef _OPENMP
  return 1;
#else
  return 0;
#endif
}

namespace anyconv {

template <typename T>
constexpr int64_t out_lanes() { return 256 / sizeof(T); }
template <typename T>
constexpr int64_t tap_lanes() { return 128 / sizeof(T); }
constexpr int kBlockFields = 4;

// taps of one pass of the forward over its fields when the filters' strip of out_lanes columns
// would not stay in a core's cache for the whole sweep (the strip of one pass: 256 KiB)
template <typename T>
constexpr int64_t forward_tap_block() { return (256 * 1024) / (out_lanes<T>() * sizeof(T)); }
// whether forward_rows sweeps K taps in tap blocks (only where the output holds the compute type)
template <typename S>
constexpr bool forward_in_tap_blocks(int64_t K) {
  return std::is_same<S, Compute<S>>::value && K > forward_tap_block<Compute<S>>();
}

// Reduce has: static T init(); static T step(T acc, T field, T filter); static T finish(T acc).
// The taps [k0, k1): FIRST starts the reduction (else it goes on from the partial value in out,
// where S is T), LAST finishes it (else out keeps the partial value)
template <typename S, int MB, typename Reduce, typename... Extra>
void forward_block(const S* f, const Compute<S>* wt, S* out, int64_t K, int64_t O, int64_t m, int64_t ob,
                   int64_t k0, int64_t k1, bool first, bool last, Extra... extra) {
  using T = Compute<S>;
  constexpr int64_t OB = out_lanes<T>();
  T acc[MB][OB];
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o) acc[i][o] = first ? Reduce::init() : widen(out[(m + i) * O + ob + o]);
  for (int64_t k = k0; k < k1; ++k) {
    const T* w = wt + k * O + ob;
    for (int i = 0; i < MB; ++i) {
      const T x = widen(f[(m + i) * K + k]);
#pragma omp simd
      for (int64_t o = 0; o < OB; ++o) acc[i][o] = Reduce::step(acc[i][o], x, w[o], extra...);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int64_t o = 0; o < OB; ++o)
      out[(m + i) * O + ob + o] = narrow<S>(last ? Reduce::finish(acc[i][o]) : acc[i][o]);
}

// The fields [m0, m1). Where the filters are wider than forward_tap_block taps (and the output
// holds the compute type, so that a partial value keeps every bit) the taps go in blocks, each
// block's strip of filters swept over all the fields while it is in cache: the whole filters,
// re-read from further away for every few fields, made the wide layers several times slower
template <typename S, typename Reduce, typename... Extra>
void forward_rows(const S* f, const Compute<S>* wt, S* out, int64_t K, int64_t O, int64_t m0, int64_t m1,
                  Extra... extra) {
  using T = Compute<S>;
  constexpr int64_t OB = out_lanes<T>();
  if (!forward_in_tap_blocks<S>(K)) {
    int64_t m = m0;
    for (; m + kBlockFields <= m1; m += kBlockFields)
      for (int64_t ob = 0; ob < O; ob += OB)
        forward_block<S, kBlockFields, Reduce>(f, wt, out, K, O, m, ob, 0, K, true, true, extra...);
    for (; m < m1; ++m)
      for (int64_t ob = 0; ob < O; ob += OB) forward_block<S, 1, Reduce>(f, wt, out, K, O, m, ob, 0, K, true, true, extra...);
    return;
  }
  constexpr int64_t KB = forward_tap_block<T>();
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    const int64_t k1 = std::min(K, k0 + KB);
    const bool first = k0 == 0, last = k1 == K;
    for (int64_t ob = 0; ob < O; ob += OB) {
      int64_t m = m0;
      for (; m + kBlockFields <= m1; m += kBlockFields)
        forward_block<S, kBlockFields, Reduce>(f, wt, out, K, O, m, ob, k0, k1, first, last, extra...);
      for (; m < m1; ++m) forward_block<S, 1, Reduce>(f, wt, out, K, O, m, ob, k0, k1, first, last, extra...);
    }
  }
}

// Runs body(start, stop, part) on `threads` parts of the fields [m0, m1), each a multiple of
// kBlockFields long but the last (the parts of the caller's own split when it has no OpenMP). With OpenMP the parts run on the process's OpenMP team, which
// is torch's own when torch loaded libgomp first: threads of a pool of our own would share the
// cores with torch's workers, which spin for milliseconds after each parallel torch operation.
template <typename Body>
void split_rows(int64_t m0, int64_t m1, int threads, Body body) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t parts = omp_get_num_threads(), part = omp_get_thread_num();
      int64_t step = (m1 - m0 + parts - 1) / parts;
      step += (kBlockFields - step % kBlockFields) % kBlockFields;
      const int64_t start = std::min(m0 + part * step, m1);
      body(start, std::min(start + step, m1), part);
    }
    return;
  }
#endif
  (void)threads;
  body(m0, m1, int64_t(0));
}

// Runs body(start, stop) on `threads` parts of the taps [k0, k1), each a multiple of the backward's
// tap block long but the last: the parts then write disjoint columns of one filter gradient, so
// no thread needs a filter-sized buffer of its own.
template <typename T, typename Body>
void split_taps(int64_t k0, int64_t k1, int threads, Body body) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t parts = omp_get_num_threads(), part = omp_get_thread_num();
      constexpr int64_t KB = tap_lanes<T>();
      int64_t step = (k1 - k0 + parts - 1) / parts;
      step += (KB - step % KB) % KB;
      const int64_t start = std::min(k0 + part * step, k1);
      body(start, std::min(start + step, k1));
    }
    return;
  }
#endif
  (void)threads;
  body(k0, k1);
}

// Term has: static T term(T difference, T grad) giving d output / d difference times grad, with
// difference = field - filter; the field gradient is minus the sum of terms over filters, the
// filter gradient (when grad_w is not null) plus their sum over fields. A call covers the taps
// [k0, k1) of its fields (k0 a multiple of the tap block but at the end).
template <typename S, int MB, bool FULL, typename Term, typename... Extra>
void backward_block(const S* f, const Compute<S>* w, const S* g, S* grad_f, Compute<S>* grad_w, int64_t K,
                    int64_t O, int64_t m, int64_t kb, int64_t width, Extra... extra) {
  using T = Compute<S>;
  constexpr int64_t KB = tap_lanes<T>();
  const int64_t n = FULL ? KB : width;
  T field[MB][KB] = {};
  T acc[MB][KB] = {};
  for (int i = 0; i < MB; ++i)
    for (int64_t j = 0; j < n; ++j) field[i][j] = widen(f[(m + i) * K + kb + j]);
  for (int64_t o = 0; o < O; ++o) {
    const T* filter = w + o * K + kb;
    T filter_sum[KB] = {};
    for (int i = 0; i < MB; ++i) {
      const T grad = widen(g[(m + i) * O + o]);
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T t = Term::term(field[i][j] - filter[j], grad, extra...);
        acc[i][j] += t;
        filter_sum[j] += t;
      }
    }
    if (grad_w != nullptr) {
      T* row = grad_w + o * K + kb;
      for (int64_t j = 0; j < n; ++j) row[j] += filter_sum[j];
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int64_t j = 0; j < n; ++j) grad_f[(m + i) * K + kb + j] = narrow<S>(-acc[i][j]);
}

// The fields [m0, m1) at the taps [kb, kb + width): every block of fields meets the same column of
// the filters and of their gradient (O x width, in cache), which a loop over the taps inside one
// over the fields would stream in from memory again for every block of fields on a layer whose
// filters outgrow the cache
template <typename S, bool FULL, typename Term, typename... Extra>
void backward_tap_column(const S* f, const Compute<S>* w, const S* g, S* grad_f, Compute<S>* grad_w, int64_t K,
                         int64_t O, int64_t m0, int64_t m1, int64_t kb, int64_t width, Extra... extra) {
  int64_t m = m0;
  for (; m + kBlockFields <= m1; m += kBlockFields)
    backward_block<S, kBlockFields, FULL, Term>(f, w, g, grad_f, grad_w, K, O, m, kb, width, extra...);
  for (; m < m1; ++m) backward_block<S, 1, FULL, Term>(f, w, g, grad_f, grad_w, K, O, m, kb, width, extra...);
}

template <typename S, typename Term, typename... Extra>
void backward_rows(const S* f, const Compute<S>* w, const S* g, S* grad_f, Compute<S>* grad_w, int64_t K,
                   int64_t O, int64_t m0, int64_t m1, int64_t k0, int64_t k1, Extra... extra) {
  constexpr int64_t KB = tap_lanes<Compute<S>>();
  int64_t kb = k0;
  for (; kb + KB <= k1; kb += KB)
    backward_tap_column<S, true, Term>(f, w, g, grad_f, grad_w, K, O, m0, m1, kb, KB, extra...);
  if (kb < k1) backward_tap_column<S, false, Term>(f, w, g, grad_f, grad_w, K, O, m0, m1, kb, k1 - kb, extra...);
}

// The backward's loop nest on `threads` threads over the fields [m0, m1) and taps [k0, k1):
// body(rows start, stop, taps start, stop, grad_w of the part). part_stride 0: the threads share
// grad_w and split the taps; else they split the rows, part i writing grad_w + i * part_stride.
template <typename T, typename Body>
void split_backward(int64_t m0, int64_t m1, int64_t k0, int64_t k1, int threads, T* grad_w,
                    int64_t part_stride, Body body) {
  if (part_stride == 0) {
    split_taps<T>(k0, k1, threads, [&](int64_t a, int64_t b) { body(m0, m1, a, b, grad_w); });
  } else {
    split_rows(m0, m1, threads, [&](int64_t a, int64_t b, int64_t part) {
      body(a, b, k0, k1, grad_w == nullptr ? grad_w : grad_w + part * part_stride);
    });
  }
}

}  // namespace anyconv
