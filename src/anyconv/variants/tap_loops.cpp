// Loops over kernel taps for convolutions with few input channels per group (depthwise and the
// like), forward and backward, reading the zero-padded input directly: no receptive fields are
// copied. One output row (the last spatial dimension) at a time stays in cache while every tap of
// the row's filter meets it; N-d geometry arrives flattened as offsets into the padded input. The
// forward of a grouped layer pads the input itself, one (sample, group) at a time into a buffer
// of the thread's own (see each_output_plane). The forward of a dense layer takes its filters a
// few at a time, each value loaded meeting every filter of the block: with at least two vectors'
// worth of filters, the lanes hold filters and each input value is broadcast (see
// forward_filter_vectors); with fewer, the lanes hold outputs of a row (forward_filter_blocks).
// The standard convolution of a dense layer, and its distances, without receptive fields.
//
// Layout: x and grad_x (B, C, plane) padded input; w (O, T) with T = channels per group x taps;
// y and grad (B, O, rows, width). Tap t reads x at row_offsets[r] + tap_offsets[t] + i * step and
// weight column weight_index[t]; taps come in the engine's field order (kernel, then channel),
// which decides the winner of a tropical tie.
//
// tap_quotient is the cosine family's forward without a graph: one pass that takes p . w and the
// field's |p|^2 from the same loads and stores only (p . w) / (|p| scale[o] + offset[o]), plus the
// bias where one is given (as tap_forward adds it).
//
// S is the stored type of x, w, y and their gradients; the loops compute in its compute type T
// (float for bfloat16 and float16, see storage_types.h) and round once on store.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#include "storage_types.h"

namespace {

using anyconv::all_finite;
using anyconv::Compute;
using anyconv::narrow;
using anyconv::widen;

// Each operation: the start of the reduction, one tap's step, and the tap's partial derivatives
// times the incoming gradient (d output / d x, d output / d w).
template <typename T>
struct Dot {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  template <typename A, typename W>
  static A step(A acc, A x, W w) { return acc + x * w; }
  template <typename A>
  static void partials(A x, T w, A g, A& dx, A& dw) {
    dx = g * w;
    dw = g * x;
  }
};

// each field's sum of squares: the weight is not read (the quotient's |p|^2, see quotient_of_sums)
template <typename T>
struct Squares {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  template <typename A, typename W>
  static A step(A acc, A x, W) { return acc + x * x; }
};

// the cosine's radial input gradient (see cosine_backward): minus the gradient times x at every
// tap, the weight not read and given no gradient
template <typename T>
struct Radial {
  static constexpr bool kWinner = false;
  template <typename A>
  static void partials(A x, T, A g, A& dx, A& dw) {
    dx = -(g * x);
    dw = A{};
  }
};

// |values|: the sign bit cleared, one instruction per vector where a compare and a blend took
// three (GCC does not see `d < 0 ? -d : d` on vector extensions as an absolute value)
template <typename A>
inline A absolute(A values) {
  if constexpr (std::is_floating_point<A>::value) {
    return std::fabs(values);
  } else {
    using Lane = std::remove_cv_t<std::remove_reference_t<decltype(values[0])>>;
    using Bits = std::conditional_t<sizeof(Lane) == 4, int32_t, int64_t>;
    typedef Bits BitVector __attribute__((vector_size(sizeof(A))));
    constexpr Bits kMagnitude = std::numeric_limits<Bits>::max();
    return reinterpret_cast<A>(reinterpret_cast<BitVector>(values) & kMagnitude);
  }
}

// x + w, or x - w with SUBTRACT, for the tropical steps, where w is a vector like x: as
// multiply-adds by one (the product is exact, so they round as the plain sum and difference do)
// where the compiler targets AVX-512. The tropical step is an add and a maximum; as a multiply-add and a maximum it ran
// faster on the AMD EPYC (Zen 4) it was timed on, whose adds and multiply-adds use different
// vector pipes (docs/benchmarks.md). Not taken: l1's step (a difference, a mask and a sum), which
// timed no faster so, and AVX2 builds, where the constant and the multiply-add's overwritten
// operand cost registers the blocks do not have.
template <bool SUBTRACT, typename A, typename W>
__attribute__((always_inline)) inline A add_weight(A x, W w) {
  if constexpr (std::is_same<A, W>::value && !std::is_floating_point<A>::value) {
#if defined(__AVX512F__)
    if constexpr (sizeof(A) == 64 && sizeof(x[0]) == 4) {
      const __m512 values = reinterpret_cast<__m512>(x), weights = reinterpret_cast<__m512>(w);
      const __m512 one = _mm512_set1_ps(1.0f);
      return reinterpret_cast<A>(SUBTRACT ? _mm512_fnmadd_ps(weights, one, values)
                                          : _mm512_fmadd_ps(weights, one, values));
    }
#endif
  }
  if constexpr (SUBTRACT) {
    return x - w;
  } else {
    return x + w;
  }
}

template <typename T>
struct L1 {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    return acc - absolute(A(x - w));
  }
  // sign(x - w) times the gradient, 0 where x == w (and where x - w is NaN), as the fused loops
  template <typename A>
  static void partials(A x, T w, A g, A& dx, A& dw) {
    A d = x - w;
    A signed_grad = d > 0 ? g : (d < 0 ? -g : A{});
    dx = -signed_grad;
    dw = signed_grad;
  }
};

// AdderNet's training rule: the field gradient clipped, the filter gradient x - w
template <typename T>
struct L1Adder : L1<T> {
  template <typename A>
  static void partials(A x, T w, A g, A& dx, A& dw) {
    A d = w - x;
    dx = g * (d > 1 ? A{} + T(1) : (d < -1 ? A{} - T(1) : d));
    dw = -g * d;
  }
};

template <typename T>
struct L2 {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    A d = x - w;
    return acc - d * d;
  }
  template <typename A>
  static void partials(A x, T w, A g, A& dx, A& dw) {
    A twice = T(2) * g * (x - w);
    dx = -twice;
    dw = twice;
  }
};

// lp's sums for a whole p of 3 or 4: -sum |x - w|^P, negated as L2's (whose sums are lp's for p = 2);
// the engine takes the root (see engine/tap_loops.py). |d|^P as P - 1 products of |d|, as the
// fused loops take it; NaN stays NaN and inf gives -inf
template <typename T, int P>
struct PowerSum {
  static_assert(P == 3 || P == 4, "the whole powers the loops take besides l1's and l2's");
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  template <typename A>
  static A power(A d) {
    const A magnitude = absolute(d);
    A result = magnitude * magnitude * magnitude;
    if constexpr (P == 4) result = result * magnitude;
    return result;
  }
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    return acc - power(A(x - w));
  }
  // d|d|^P / dd = P |d|^(P - 1) sign(d): P |d| d for 3, P d^2 d for 4 (0 at d = 0)
  template <typename A>
  static void partials(A x, T w, A g, A& dx, A& dw) {
    const A d = x - w;
    const A slope = P == 3 ? absolute(d) * d : d * d * d;
    const A term = T(P) * slope * g;
    dx = -term;
    dw = term;
  }
};

// libmvec's vector exp and log (glibc 2.22 and later, x86-64) for the vectors of this build, weak:
// null where the library lacks them, and the lanes then take std::exp and std::log one by one
#if defined(__x86_64__) && defined(__GLIBC__)
#define ANYCONV_VECTOR_MATH 1
extern "C" {
#if defined(__AVX512F__)
__m512 _ZGVeN16v_expf(__m512) __attribute__((weak));
__m512 _ZGVeN16v_logf(__m512) __attribute__((weak));
__m512d _ZGVeN8v_exp(__m512d) __attribute__((weak));
__m512d _ZGVeN8v_log(__m512d) __attribute__((weak));
#elif defined(__AVX2__)
__m256 _ZGVdN8v_expf(__m256) __attribute__((weak));
__m256 _ZGVdN8v_logf(__m256) __attribute__((weak));
__m256d _ZGVdN4v_exp(__m256d) __attribute__((weak));
__m256d _ZGVdN4v_log(__m256d) __attribute__((weak));
#endif
}
#endif

// exp or log of every lane of a vector (LOG: log), or of a number
template <bool LOG, typename A>
inline A exp_or_log(A values) {
  if constexpr (std::is_floating_point<A>::value) {
    return LOG ? std::log(values) : std::exp(values);
  } else {
    constexpr int kCount = sizeof(A) / sizeof(values[0]);
    using Lane = std::remove_reference_t<decltype(values[0])>;
#if defined(ANYCONV_VECTOR_MATH) && (defined(__AVX512F__) || defined(__AVX2__))
#if defined(__AVX512F__)
    using Float = __m512;
    using Double = __m512d;
    constexpr auto* kFloat = LOG ? &_ZGVeN16v_logf : &_ZGVeN16v_expf;
    constexpr auto* kDouble = LOG ? &_ZGVeN8v_log : &_ZGVeN8v_exp;
#else
    using Float = __m256;
    using Double = __m256d;
    constexpr auto* kFloat = LOG ? &_ZGVdN8v_logf : &_ZGVdN8v_expf;
    constexpr auto* kDouble = LOG ? &_ZGVdN4v_log : &_ZGVdN4v_exp;
#endif
    if constexpr (std::is_same<Lane, float>::value && sizeof(A) == sizeof(Float)) {
      if (kFloat != nullptr) {
        Float in, out;
        std::memcpy(&in, &values, sizeof(in));
        out = kFloat(in);
        std::memcpy(&values, &out, sizeof(out));
        return values;
      }
    } else if constexpr (std::is_same<Lane, double>::value && sizeof(A) == sizeof(Double)) {
      if (kDouble != nullptr) {
        Double in, out;
        std::memcpy(&in, &values, sizeof(in));
        out = kDouble(in);
        std::memcpy(&values, &out, sizeof(out));
        return values;
      }
    }
#endif
    for (int lane = 0; lane < kCount; ++lane) values[lane] = LOG ? std::log(values[lane]) : std::exp(values[lane]);
    return values;
  }
}

// lp's run-time exponent: set by the entry points (under real_power_lock) before the loops run
template <typename T>
struct RealExponent {
  static inline T value = T(1);
};

// VALUES, 0 where D is 0 (a number or a vector of lanes)
template <typename A>
inline A zero_where_zero(A d, A values) {
  if constexpr (std::is_floating_point<A>::value) {
    return d == 0 ? A(0) : values;
  } else {
    return d == A{} ? A{} : values;
  }
}

// |d|^POWER for a number or a vector, as exp(POWER log |d|), 0 at d = 0 for every power (as the
// fused loops define it); NaN stays NaN, inf stays inf
template <typename A, typename T>
inline A magnitude_power(A d, T power) {
  return zero_where_zero(d, exp_or_log<false>(A(power * exp_or_log<true>(absolute(d)))));
}

// lp's sums for a p other than a whole 1 to 4 (p > 0, known at run time): -sum |x - w|^p,
// negated as PowerSum's
template <typename T>
struct RealPowerSum {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    return acc - magnitude_power(A(x - w), RealExponent<T>::value);
  }
  // d|d|^p / dd = p |d|^(p - 1) sign(d), and the term 0 at d = 0 whatever the gradient: there the
  // fused loops' term is 0 even for an infinite gradient (the root's slope at a sum of 0), as
  // torch's norms take a gradient of 0 at 0
  template <typename A>
  static void partials(A x, T w, A g, A& dx, A& dw) {
    const T p = RealExponent<T>::value;
    const A d = x - w;
    const A slope = magnitude_power(d, T(p - 1));
    const A term = zero_where_zero(d, A(p * (d < 0 ? -slope : slope) * g));
    dx = -term;
    dw = term;
  }
};

// the tropical pair: a NaN term wins (and stays), as in torch's max and min
template <typename T>
struct MaxPlus {
  static constexpr bool kWinner = true;
  static T start() { return -std::numeric_limits<T>::infinity(); }
  template <typename A>
  static A term(A x, T w) {
    return x + w;
  }
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    A value = add_weight<false>(x, w);
    return ((value > acc) | (value != value)) ? value : acc;
  }
  // where VALUE takes over from BEST as the winner so far: larger, or the first NaN
  template <typename A>
  static auto better(A value, A best) {
    return (value > best) | ((value != value) & (best == best));
  }
  static constexpr T kWeightSign = T(1);
};

template <typename T>
struct MinPlus {
  static constexpr bool kWinner = true;
  static T start() { return std::numeric_limits<T>::infinity(); }
  template <typename A>
  static A term(A x, T w) {
    return x - w;
  }
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    A value = add_weight<true>(x, w);
    return ((value < acc) | (value != value)) ? value : acc;
  }
  template <typename A>
  static auto better(A value, A best) {
    return (value < best) | ((value != value) & (best == best));
  }
  static constexpr T kWeightSign = T(-1);
};

// The tropical pair where no term can be NaN (every input value and weight finite): the plain
// maximum and minimum, one instruction each, where the NaN test took a compare more and a blend
template <typename T>
struct FiniteMaxPlus : MaxPlus<T> {
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    A value = add_weight<false>(x, w);
    return value > acc ? value : acc;
  }
};

template <typename T>
struct FiniteMinPlus : MinPlus<T> {
  template <typename A, typename W>
  static A step(A acc, A x, W w) {
    A value = add_weight<true>(x, w);
    return value < acc ? value : acc;
  }
};

struct Geometry {
  int64_t batch, channels, out_channels, groups, plane, taps;
  const int64_t* tap_offsets;
  const int64_t* weight_index;
  int64_t rows;
  const int64_t* row_offsets;
  int64_t width, step;
};

// The bytes of one vector: a register's where the compiler targets AVX-512, else 256 bits. A
// 512-bit vector on a narrower target is split by the compiler into register-sized halves, and
// GCC then took about five times as long (over 25 minutes) to compile this file for AVX2
#ifdef __AVX512F__
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif

// One vector of T: the loops below are written on these vectors (GCC and Clang vector extensions)
// rather than left to the auto-vectoriser, which vectorised the wrong loop (over taps, by gathers)
template <typename T>
struct Lanes {
  static constexpr int kCount = kVectorBytes / sizeof(T);
  typedef T Vector __attribute__((vector_size(kVectorBytes)));
};

// COUNT lanes of a vector read from SOURCE (STEP apart), widened to the compute type; the other
// lanes are zero
template <typename S>
__attribute__((always_inline)) inline typename Lanes<Compute<S>>::Vector load(const S* source, int64_t step,
                                               int count = Lanes<Compute<S>>::kCount) {
  typename Lanes<Compute<S>>::Vector values{};
  if (std::is_same<S, Compute<S>>::value && step == 1 && count == Lanes<Compute<S>>::kCount) {
    std::memcpy(&values, source, sizeof(values));
  } else {
    for (int lane = 0; lane < count; ++lane) values[lane] = widen(source[lane * step]);
  }
  return values;
}

template <typename S>
__attribute__((always_inline)) inline void store(S* target, const typename Lanes<Compute<S>>::Vector& values,
                  int count = Lanes<Compute<S>>::kCount) {
  if (std::is_same<S, Compute<S>>::value) {
    std::memcpy(target, &values, count * sizeof(S));
  } else {
    for (int lane = 0; lane < count; ++lane) target[lane] = narrow<S>(values[lane]);
  }
}

// The first COUNT lanes of a vector, as load and store, in one masked instruction where the
// compiler targets AVX-512 (the lanes past COUNT neither read nor fault): a row narrower than a
// vector, as a 7 x 7 image's, would otherwise be read and written lane by lane. Kept apart from
// load and store, whose whole-vector loops compiled slower with these branches in them
template <typename S>
__attribute__((always_inline)) inline typename Lanes<Compute<S>>::Vector load_partial(const S* source, int64_t step, int count) {
#ifdef __AVX512F__
  using Vector = typename Lanes<Compute<S>>::Vector;
  if (step == 1) {
    const auto mask = static_cast<__mmask16>((1u << count) - 1);
    if constexpr (std::is_same<S, float>::value) {
      return reinterpret_cast<Vector>(_mm512_maskz_loadu_ps(mask, source));
    } else if constexpr (std::is_same<S, double>::value) {
      return reinterpret_cast<Vector>(_mm512_maskz_loadu_pd(static_cast<__mmask8>(mask), source));
    }
  }
#endif
  return load(source, step, count);
}

template <typename S>
__attribute__((always_inline)) inline void store_partial(S* target, const typename Lanes<Compute<S>>::Vector& values, int count) {
#ifdef __AVX512F__
  const auto mask = static_cast<__mmask16>((1u << count) - 1);
  if constexpr (std::is_same<S, float>::value) {
    return _mm512_mask_storeu_ps(target, mask, reinterpret_cast<__m512>(values));
  } else if constexpr (std::is_same<S, double>::value) {
    return _mm512_mask_storeu_pd(target, static_cast<__mmask8>(mask), reinterpret_cast<__m512d>(values));
  }
#endif
  store(target, values, count);
}

// A block's sums into ROWS rows of outputs (OUTS[r] from output FIRST, the last vector LAST_VECTOR
// after it, COUNT lanes of it when PARTIAL), plus the channel's BIAS where not null: added in the
// same store, no pass over the output of its own
template <typename S, typename Out, int VECTORS, int ROWS, bool PARTIAL>
__attribute__((always_inline)) inline void store_rows(typename Lanes<Compute<S>>::Vector (&values)[ROWS][VECTORS],
                                                      Out* const* outs, const S* bias, int64_t first,
                                                      int64_t last_vector, int count) {
  constexpr int kLanes = Lanes<Compute<S>>::kCount;
  if (bias != nullptr) {
    const Compute<S> added = widen(*bias);
    for (int r = 0; r < ROWS; ++r) {
      for (int v = 0; v < VECTORS; ++v) values[r][v] = values[r][v] + added;
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    Out* out = outs[r] + first;
    for (int v = 0; v < VECTORS - 1; ++v) store(out + v * kLanes, values[r][v]);
    if (PARTIAL) {
      store_partial(out + last_vector, values[r][VECTORS - 1], count);
    } else {
      store(out + last_vector, values[r][VECTORS - 1]);
    }
  }
}

// VECTORS vectors of outputs in each of ROWS rows (OUTS[r] from output FIRST, read from ORIGINS[r]
// + FIRST * step; the last COUNT lanes of each row's last vector when PARTIAL), their values in
// registers while every tap meets them: ROWS x VECTORS independent reductions, where one alone
// would wait at every tap for the step before. The last vector starts LAST_VECTOR outputs after
// FIRST: (VECTORS - 1) kLanes, or fewer to end a row narrower than VECTORS whole vectors (the
// vectors then overlap and write the same values twice). OUT is S, or T for the backward's copy
template <typename S, typename Out, typename Op, int VECTORS, int ROWS, bool PARTIAL>
__attribute__((always_inline)) inline void forward_block(const S* x, const S* w, Out* const* outs, const int64_t* origins, const Geometry& g,
                          const S* bias, int64_t first, int count,
                          int64_t last_vector = (VECTORS - 1) * Lanes<Compute<S>>::kCount) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  // whole vectors take load's and store's default count, a constant the compiler folds
  const int last_count = PARTIAL ? count : kLanes;
  Vector values[ROWS][VECTORS];
  for (int r = 0; r < ROWS; ++r) {
    for (int v = 0; v < VECTORS; ++v) values[r][v] = Vector{} + Op::start();
  }
  const int64_t last = last_vector * g.step;
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t offset = g.tap_offsets[t] + first * g.step;
    const T weight = widen(w[g.weight_index[t]]);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const S* source = x + origins[r] + offset;
#pragma GCC unroll 8
      for (int v = 0; v < VECTORS - 1; ++v) {
        values[r][v] = Op::step(values[r][v], load(source + v * kLanes * g.step, g.step), weight);
      }
      if (PARTIAL) {
        values[r][VECTORS - 1] = Op::step(values[r][VECTORS - 1], load_partial(source + last, g.step, last_count), weight);
      } else {
        values[r][VECTORS - 1] = Op::step(values[r][VECTORS - 1], load(source + last, g.step), weight);
      }
    }
  }
  store_rows<S, Out, VECTORS, ROWS, PARTIAL>(values, outs, bias, first, last_vector, last_count);
}

// ROWS output rows of one channel, OUTS[r][i] for i < width read from ORIGINS[r]: the blocks as
// blocks of one or two vectors (the last overlapping the one before), written out so that whole vectors take forward_block's constant count
template <typename S, typename Out, typename Op, int ROWS>
void forward_rows(const S* x, const S* w, Out* const* outs, const int64_t* origins, const Geometry& g,
                  const S* bias = nullptr) {
  constexpr int64_t kLanes = Lanes<Compute<S>>::kCount;
  const int64_t block = g.width >= 2 * kLanes ? 2 * kLanes : kLanes;
  if (g.width < kLanes) {
    forward_block<S, Out, Op, 1, ROWS, true>(x, w, outs, origins, g, bias, 0, static_cast<int>(g.width));
    return;
  }
  if (g.width > kLanes && g.width < 2 * kLanes) {
    // one block of two overlapping vectors: twice the independent sums of one vector at a time
    forward_block<S, Out, Op, 2, ROWS, false>(x, w, outs, origins, g, bias, 0, kLanes, g.width - kLanes);
    return;
  }
  for (int64_t start = 0; start < g.width; start += block) {
    const int64_t first = start + block <= g.width ? start : g.width - block;
    if (block == kLanes) {
      forward_block<S, Out, Op, 1, ROWS, false>(x, w, outs, origins, g, bias, first, kLanes);
    } else {
      forward_block<S, Out, Op, 2, ROWS, false>(x, w, outs, origins, g, bias, first, kLanes);
    }
  }
}

// Columns [first, last) of one phase row: target[j] = x[origin + j * phases], or the other way
// with ADJOINT; PHASES a constant where known (1 and 2), so that the loop vectorises
template <int64_t kPhases, typename E>
inline void phase_columns(E* __restrict x, E* __restrict target, int64_t origin, int64_t first, int64_t last,
                          int64_t phases, bool adjoint) {
  if (kPhases == 1) {
    // a plain copy
    if (adjoint) {
      std::memcpy(x + origin + first, target + first, (last - first) * sizeof(E));
    } else {
      std::memcpy(target + first, x + origin + first, (last - first) * sizeof(E));
    }
    return;
  }
  const int64_t step = kPhases > 0 ? kPhases : phases;
  E* __restrict from = x + origin;
  if (adjoint) {
    for (int64_t j = first; j < last; ++j) from[j * step] = target[j];
  } else {
    for (int64_t j = first; j < last; ++j) target[j] = from[j * step];
  }
}

// The columns [first, last) of one phase (of PHASES) of a padded row LENGTH columns long that read
// the input row: padded column j * phases + phase is input column j * phases + phase - LEFT,
// inside [0, WIDTH)
inline std::pair<int64_t, int64_t> phase_span(int64_t width, int64_t left, int64_t length, int64_t phase,
                                              int64_t phases) {
  const int64_t first = std::min(length, std::max<int64_t>(0, (left - phase + phases - 1) / phases));
  const int64_t last = std::max(first, std::min(length, (width + left - phase + phases - 1) / phases));
  return {first, last};
}

// The index of a row in each leading dimension of an array of BOUNDS (ndim - 1 of them), stepped
// row by row (no division per row); on the stack for up to kStackDims dimensions (an allocation
// per plane cost more than a small plane's copy)
class RowIndex {
 public:
  RowIndex(int64_t ndim, const int64_t* bounds)
      : ndim_(ndim), bounds_(bounds), heap_(ndim > kStackDims ? ndim : 0, 0),
        index_(ndim > kStackDims ? heap_.data() : stack_) {}
  RowIndex(const RowIndex&) = delete;  // index_ points into the object itself
  RowIndex& operator=(const RowIndex&) = delete;
  const int64_t* operator*() const { return index_; }
  void next() {
    for (int64_t d = ndim_ - 2; d >= 0; --d) {
      if (++index_[d] < bounds_[d]) return;
      index_[d] = 0;
    }
  }

 private:
  static constexpr int64_t kStackDims = 8;
  int64_t ndim_;
  const int64_t* bounds_;
  int64_t stack_[kStackDims] = {};
  std::vector<int64_t> heap_;
  int64_t* index_;
};

// One padded row of plane P in each phase (see phase_layout): ROW, its index in each leading
// dimension INDEX; TARGET the row's place in phase 0, the next phase STRIDE elements on
template <typename E>
inline void row_of_phases(E* x, E* target, int64_t stride, int64_t p, const int64_t* index, int64_t ndim,
                          const int64_t* size, const int64_t* before, const int64_t* padded, int64_t phases,
                          int64_t plane, bool adjoint) {
  const int64_t width = size[ndim - 1], length = padded[ndim - 1] / phases, left = before[ndim - 1];
  // the input row this padded row reads, or none (a row of padding)
  int64_t source = 0, step = width;
  bool inside = true;
  for (int64_t d = ndim - 2; d >= 0; --d) {
    const int64_t at = index[d] - before[d];
    inside = inside && at >= 0 && at < size[d];
    source += at * step;
    step *= size[d];
  }
  if (adjoint && !inside) return;
  for (int64_t phase = 0; phase < phases; ++phase, target += stride) {
    if (!inside) {
      std::fill(target, target + length, E(0));
      continue;
    }
    // x's index of column j: origin + j * phases
    const auto [first, last] = phase_span(width, left, length, phase, phases);
    const int64_t origin = p * plane + source + phase - left;
    if (!adjoint) {
      std::fill(target, target + first, E(0));
      std::fill(target + last, target + length, E(0));
    }
    if (phases == 1) {
      phase_columns<1>(x, target, origin, first, last, phases, adjoint);
    } else if (phases == 2) {
      phase_columns<2>(x, target, origin, first, last, phases, adjoint);
    } else {
      phase_columns<0>(x, target, origin, first, last, phases, adjoint);
    }
  }
}

// The layout the loops read (see tap_loops.py's _padded): each plane of x (planes, *size) zero-padded
// by BEFORE (and after, up to PADDED) and its last dimension split into PHASES, padded column
// j * phases + p at column j of phase p: (planes, phases, *padded[:-1], padded[-1] / phases). One
// pass where torch's pad and strided copy take two, the second several times slower than a copy.
// With ADJOINT the other way: the gradient of that layout, cropped back into x's shape. E is an
// unsigned integer of the element's size: the elements are only copied.
struct Layout {
  int64_t ndim;
  const int64_t* size;
  const int64_t* before;
  const int64_t* padded;
  int64_t phases;
  // the input (and the output) channels-last: channel c of position p of sample b at
  // (b * positions + p) * channels + c; only the channel-vector forward reads it (a depthwise
  // layer at stride 1 along the last dimension, which the caller checks)
  bool channels_last = false;
};

// the elements of one unpadded input plane
inline int64_t unpadded_plane(const Layout& layout) {
  int64_t plane = 1;
  for (int64_t d = 0; d < layout.ndim; ++d) plane *= layout.size[d];
  return plane;
}

// plane P of x into OUT, its place in the layout (or back, with ADJOINT)
template <typename E>
void lay_out_plane(E* x, E* out, int64_t p, const Layout& layout, bool adjoint) {
  const int64_t ndim = layout.ndim, phases = layout.phases;
  const int64_t length = layout.padded[ndim - 1] / phases;
  const int64_t plane = unpadded_plane(layout);
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < ndim; ++d) rows *= layout.padded[d];
  RowIndex index(ndim, layout.padded);
  for (int64_t row = 0; row < rows; ++row, index.next()) {
    row_of_phases(x, out + row * length, rows * length, p, *index, ndim, layout.size, layout.before,
                  layout.padded, phases, plane, adjoint);
  }
}

// Calls row(source, target_row) for every row of plane P of x (its last dimension), with the
// padded row (all but the last dimension) it lands on in the layout
template <typename E, typename Row>
void each_input_row(const E* x, int64_t p, const Layout& layout, Row&& row) {
  const int64_t ndim = layout.ndim, width = layout.size[ndim - 1];
  const int64_t plane = unpadded_plane(layout);
  int64_t input_rows = 1;
  for (int64_t d = 0; d + 1 < ndim; ++d) input_rows *= layout.size[d];
  RowIndex index(ndim, layout.size);
  const E* source = x + p * plane;
  for (int64_t input_row = 0; input_row < input_rows; ++input_row, source += width, index.next()) {
    int64_t target_row = 0;
    for (int64_t d = 0; d + 1 < ndim; ++d) target_row = target_row * layout.padded[d] + (*index)[d] + layout.before[d];
    row(source, target_row);
  }
}

// What lay_out_interior and crop_interior walk: the phases, an input row's width, a padded row's
// length in each phase, the padding before a row, and the padded rows of one phase
struct InteriorShape {
  int64_t phases, width, length, left, rows;
};

inline InteriorShape interior_shape(const Layout& layout) {
  const int64_t ndim = layout.ndim;
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < ndim; ++d) rows *= layout.padded[d];
  return {layout.phases, layout.size[ndim - 1], layout.padded[ndim - 1] / layout.phases, layout.before[ndim - 1],
          rows};
}

// The columns of a two-phase row that read the input (phase_span): the even phase's, the odd
// phase's, and [first, last) where both do. They depend on the row's shape alone, so they are
// found once per plane: two divisions per phase and row cost as much as a short row's copy.
struct TwoPhaseSpans {
  int64_t first_even, last_even, first_odd, last_odd, first, last;
};

inline TwoPhaseSpans two_phase_spans(const InteriorShape& shape) {
  const auto [first_even, last_even] = phase_span(shape.width, shape.left, shape.length, 0, 2);
  const auto [first_odd, last_odd] = phase_span(shape.width, shape.left, shape.length, 1, 2);
  const int64_t first = std::max(first_even, first_odd);
  return {first_even, last_even, first_odd, last_odd, first, std::max(first, std::min(last_even, last_odd))};
}

#ifdef __AVX512F__
// For COUNT (1 to 16) columns of each phase: the lanes they fill of the input row's two vectors
// (2 COUNT columns) and of each phase's vector
struct PairMasks {
  __mmask16 low, high, kept;
};

inline PairMasks pair_masks(int64_t count) {
  const auto lanes = [](int64_t n) { return static_cast<__mmask16>((1u << n) - 1); };
  return {lanes(std::min<int64_t>(16, 2 * count)), lanes(std::max<int64_t>(0, 2 * count - 16)), lanes(count)};
}
#endif

// Columns [FIRST, LAST) (both phases', see TwoPhaseSpans) of the two phases EVEN and ODD of a
// padded row from the input row ROW (shifted by LEFT): even[j] = row[2 j - left] and odd[j] =
// row[2 j + 1 - left], sixteen 32-bit columns of each a time by two masked loads and two
// permutes, where GCC's vectorised strided loads went a phase at a time with a scalar rest.
// Returns where it stopped: LAST, or FIRST where it does nothing (other element sizes, or no
// AVX-512). Masked lanes are neither read nor written.
template <typename E>
inline int64_t split_two_phases(const E* row, E* even, E* odd, int64_t left, int64_t first, int64_t last) {
#ifdef __AVX512F__
  if constexpr (sizeof(E) == 4) {
    const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odds = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int64_t j = first; j < last; j += 16) {
      const PairMasks masks = pair_masks(std::min<int64_t>(16, last - j));
      const E* pair = row + 2 * j - left;
      const __m512i a = _mm512_maskz_loadu_epi32(masks.low, pair);
      const __m512i b = _mm512_maskz_loadu_epi32(masks.high, pair + 16);
      _mm512_mask_storeu_epi32(even + j, masks.kept, _mm512_permutex2var_epi32(a, evens, b));
      _mm512_mask_storeu_epi32(odd + j, masks.kept, _mm512_permutex2var_epi32(a, odds, b));
    }
    return std::max(first, last);
  }
#endif
  return first;
}

// The adjoint of split_two_phases: row[2 j - left] = even[j] and row[2 j + 1 - left] = odd[j]
// for j in [FIRST, LAST), by two permutes where the strided stores went element by element
template <typename E>
inline int64_t join_two_phases(E* row, const E* even, const E* odd, int64_t left, int64_t first, int64_t last) {
#ifdef __AVX512F__
  if constexpr (sizeof(E) == 4) {
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int64_t j = first; j < last; j += 16) {
      const PairMasks masks = pair_masks(std::min<int64_t>(16, last - j));
      E* pair = row + 2 * j - left;
      const __m512i a = _mm512_maskz_loadu_epi32(masks.kept, even + j);
      const __m512i b = _mm512_maskz_loadu_epi32(masks.kept, odd + j);
      _mm512_mask_storeu_epi32(pair, masks.low, _mm512_permutex2var_epi32(a, low, b));
      _mm512_mask_storeu_epi32(pair + 16, masks.high, _mm512_permutex2var_epi32(a, high, b));
    }
    return std::max(first, last);
  }
#endif
  return first;
}

// Plane P of x into the interior of OUT's layout, leaving the padding as it is: into a buffer whose
// padding is zero already (a thread's buffer reused plane after plane), a copy of the input rows
// alone, where lay_out_plane walks and fills every padded row
template <typename E>
void lay_out_interior(const E* x, E* out, int64_t p, const Layout& layout) {
  const InteriorShape shape = interior_shape(layout);
  const int64_t phases = shape.phases, width = shape.width, length = shape.length, left = shape.left;
  if (phases == 2) {
    const TwoPhaseSpans spans = two_phase_spans(shape);
    each_input_row(x, p, layout, [&](const E* source, int64_t target_row) {
      E* even = out + target_row * length;
      E* odd = even + shape.rows * length;
      const int64_t reached = split_two_phases(source, even, odd, left, spans.first, spans.last);
      // each phase's columns outside what split_two_phases took (every column where it took none)
      E* from = const_cast<E*>(source) - left;
      phase_columns<2>(from, even, 0, spans.first_even, std::min(spans.first, spans.last_even), 2, false);
      phase_columns<2>(from, even, 0, std::max(reached, spans.first_even), spans.last_even, 2, false);
      phase_columns<2>(from + 1, odd, 0, spans.first_odd, std::min(spans.first, spans.last_odd), 2, false);
      phase_columns<2>(from + 1, odd, 0, std::max(reached, spans.first_odd), spans.last_odd, 2, false);
    });
    return;
  }
  each_input_row(x, p, layout, [&](const E* source, int64_t target_row) {
    E* target = out + target_row * length;
    if (phases == 1) {
      std::memcpy(target + left, source, width * sizeof(E));
      return;
    }
    // the columns j of each phase that read the input, x's index j * phases + phase - left
    for (int64_t phase = 0; phase < phases; ++phase, target += shape.rows * length) {
      const auto [first, last] = phase_span(width, left, length, phase, phases);
      E* from = const_cast<E*>(source) + phase - left;
      phase_columns<0>(from, target, 0, first, last, phases, false);
    }
  });
}

// The adjoint of lay_out_interior: plane P of x from the interior of OUT's layout (a gradient in
// the compute type T, rounded to S), the padding dropped
template <typename S, typename T>
void crop_interior(const T* out, S* x, int64_t p, const Layout& layout) {
  const InteriorShape shape = interior_shape(layout);
  const int64_t phases = shape.phases, width = shape.width, length = shape.length, left = shape.left;
  if (phases == 2) {
    const TwoPhaseSpans spans = two_phase_spans(shape);
    each_input_row(x, p, layout, [&](const S* row, int64_t target_row) {
      S* to = const_cast<S*>(row) - left;
      const T* even = out + target_row * length;
      const T* odd = even + shape.rows * length;
      int64_t reached = spans.first;
      if constexpr (std::is_same<S, T>::value) reached = join_two_phases(to + left, even, odd, left, spans.first, spans.last);
      // each phase's columns outside what join_two_phases took (every column where it took none)
      const auto rest = [&](const T* from, S* target, int64_t first, int64_t last) {
        for (int64_t j = first; j < std::min(spans.first, last); ++j) target[2 * j] = narrow<S>(from[j]);
        for (int64_t j = std::max(reached, first); j < last; ++j) target[2 * j] = narrow<S>(from[j]);
      };
      rest(even, to, spans.first_even, spans.last_even);
      rest(odd, to + 1, spans.first_odd, spans.last_odd);
    });
    return;
  }
  each_input_row(x, p, layout, [&](const S* row, int64_t target_row) {
    S* target = const_cast<S*>(row);
    const T* from = out + target_row * length;
    if (phases == 1) {
      for (int64_t j = 0; j < width; ++j) target[j] = narrow<S>(from[left + j]);
      return;
    }
    for (int64_t phase = 0; phase < phases; ++phase, from += shape.rows * length) {
      const auto [first, last] = phase_span(width, left, length, phase, phases);
      S* to = target + phase - left;
      for (int64_t j = first; j < last; ++j) to[j * phases] = narrow<S>(from[j]);
    }
  });
}

// One (sample, group) of CHANNELS unpadded planes at X into a buffer of laid-out planes of
// PLANE elements each, and its gradient back (crop_group)
template <typename E>
__attribute__((always_inline)) inline void lay_out_group(const E* x, E* out, int64_t channels, int64_t plane, const Layout& layout) {
  for (int64_t c = 0; c < channels; ++c) lay_out_interior(x, out + c * plane, c, layout);
}

template <typename S, typename T>
__attribute__((always_inline)) inline void crop_group(const T* out, S* x, int64_t channels, int64_t plane, const Layout& layout) {
  for (int64_t c = 0; c < channels; ++c) crop_interior(out + c * plane, x, c, layout);
}

// the elements of S as unsigned integers of their size, for the layout's copies
template <typename S>
using Bits = typename std::conditional<
    sizeof(S) == 1, uint8_t,
    typename std::conditional<sizeof(S) == 2, uint16_t,
                              typename std::conditional<sizeof(S) == 4, uint32_t, uint64_t>::type>::type>::type;

template <typename E>
void phase_layout(E* x, E* out, int64_t planes, const Layout& layout, bool adjoint, int threads) {
  int64_t laid_out = layout.phases * (layout.padded[layout.ndim - 1] / layout.phases);
  for (int64_t d = 0; d + 1 < layout.ndim; ++d) laid_out *= layout.padded[d];
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < planes; ++p) lay_out_plane(x, out + p * laid_out, p, layout, adjoint);
}

// Calls plane(source, filter, out, o) on every output plane (sample, filter o), the planes split
// over the threads: the loops' shared walk over the output. Given a LAYOUT (not null), x is the
// unpadded input: each thread lays out one (sample, group) at a time into a buffer of its own, in
// cache while the group's filters read it, where a laid-out copy of the whole input went to
// memory and came back
template <typename S, typename Plane>
void each_output_plane(const S* x, const S* w, S* y, const Geometry& g, const Layout* layout, int threads,
                       Plane&& plane) {
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t output_plane = g.rows * g.width;
  if (layout == nullptr) {
    const int64_t planes = g.batch * g.out_channels;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t index = 0; index < planes; ++index) {
      const int64_t b = index / g.out_channels, o = index % g.out_channels;
      const S* source = x + (b * g.channels + (o / per_group_out) * per_group_in) * g.plane;
      plane(source, w + o * g.taps, y + index * output_plane, o);
    }
    return;
  }
  const int64_t input_plane = unpadded_plane(*layout);
  const int64_t pairs = g.batch * g.groups;
  using E = Bits<S>;
#pragma omp parallel num_threads(threads)
  {
    // zero filled once: the planes laid out into it write the same interior places only
    std::vector<E> laid_out(per_group_in * g.plane);
    const S* source = reinterpret_cast<const S*>(laid_out.data());
#pragma omp for schedule(static)
    for (int64_t index = 0; index < pairs; ++index) {
      const int64_t b = index / g.groups, group = index % g.groups;
      const E* input = reinterpret_cast<const E*>(x + (b * g.channels + group * per_group_in) * input_plane);
      lay_out_group(input, laid_out.data(), per_group_in, g.plane, *layout);
      for (int64_t j = 0; j < per_group_out; ++j) {
        const int64_t o = group * per_group_out + j;
        plane(source, w + o * g.taps, y + (b * g.out_channels + o) * output_plane, o);
      }
    }
  }
}

// output rows the forward takes together (see forward_block)
constexpr int kRowsTogether = 4;
constexpr int kNarrowRowsTogether = 8;
// the quotient's rows (two sums per output: half as many rows)
constexpr int kQuotientRowsTogether = 2;

// the square root of every lane: one AVX-512 instruction for float where the compiler targets it
// (GCC vectorised the lane loop with 128-bit instructions only), else lane by lane
template <typename Vector>
inline Vector square_root(const Vector& values) {
#ifdef __AVX512F__
  if constexpr (sizeof(values[0]) == 4) {
    return reinterpret_cast<Vector>(_mm512_sqrt_ps(reinterpret_cast<__m512>(values)));
  } else {
    return reinterpret_cast<Vector>(_mm512_sqrt_pd(reinterpret_cast<__m512d>(values)));
  }
#else
  Vector roots;
  for (int lane = 0; lane < static_cast<int>(sizeof(Vector) / sizeof(values[0])); ++lane) {
    roots[lane] = std::sqrt(values[lane]);
  }
  return roots;
#endif
}

// outputs of one row the channel-vector forward takes together: independent reductions, and each
// value vector loaded once for all of them a kernel row's taps reach (see each_tap_vector)
constexpr int kOutputsTogether = 8;

// BODY(std::integral_constant<int, COUNT>{}) for a COUNT of one to three, the rest of a block of
// four (nothing for zero): the rest taken together at a count known to the compiler, where one at
// a time each output's taps were one chain of dependent steps
template <typename Body>
__attribute__((always_inline)) inline void with_rest_of_four(int64_t count, Body body) {
  switch (count) {
    case 3:
      body(std::integral_constant<int, 3>{});
      break;
    case 2:
      body(std::integral_constant<int, 2>{});
      break;
    case 1:
      body(std::integral_constant<int, 1>{});
      break;
    default:
      break;
  }
}

// Hands body(j, values, weight) each tap's weight vector and the values vector of each of COUNT
// outputs in a run: XS the laid-out channels (position-major, kLanes lanes each), the run's first
// output at ORIGIN, WS the taps' weights (tap-major, kLanes lanes each)
template <typename T, int COUNT, typename Body>
__attribute__((always_inline)) inline void each_tap_vector(const T* xs, const T* ws, int64_t origin,
                                                           const Geometry& g, Body body) {
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  for (int64_t t = 0; t < g.taps;) {
    // a run of taps one position apart (a kernel row at dilation 1): the COUNT outputs' values
    // slide along it, so each value vector is loaded once for every output it reaches; the taps
    // still meet each output in kernel order
    int64_t end = t + 1;
    while (end < g.taps && g.tap_offsets[end] == g.tap_offsets[end - 1] + 1) ++end;
    const T* at = xs + (origin + g.tap_offsets[t]) * kLanes;
    Vector window[COUNT];
    for (int j = 0; j < COUNT; ++j) std::memcpy(&window[j], at + j * kLanes, sizeof(Vector));
    for (int64_t u = t; u < end; ++u) {
      Vector weight;
      std::memcpy(&weight, ws + u * kLanes, sizeof(weight));
      for (int j = 0; j < COUNT; ++j) body(j, window[j], weight);
      if (u + 1 < end) {
        for (int j = 0; j + 1 < COUNT; ++j) window[j] = window[j + 1];
        std::memcpy(&window[COUNT - 1], at + (COUNT + u - t) * kLanes, sizeof(Vector));
      }
    }
    t = end;
  }
}

// COUNT outputs of a row, kLanes channels each, of the reduction OP: ORIGIN the padded position
// of the first output's first tap; XS the laid-out channels (position-major, kLanes lanes each),
// WS the taps' weights (tap-major, kLanes lanes each); OUT COUNT vectors
template <typename T, typename Op>
struct ReducedOutputs {
  // whether outputs() takes sums of squares over the kernel's rows (see QuotientOutputs)
  static constexpr bool kColumnSquares = false;
  template <int COUNT>
  __attribute__((always_inline)) static void outputs(const T* xs, const T* ws, const T*, const T*, T*,
                                                     int64_t, T* out, int64_t origin, const Geometry& g) {
    using Vector = typename Lanes<T>::Vector;
    Vector acc[COUNT];
    for (int j = 0; j < COUNT; ++j) acc[j] = Vector{} + Op::start();
    each_tap_vector<T, COUNT>(xs, ws, origin, g, [&](int j, Vector values, Vector weight) {
      acc[j] = Op::step(acc[j], values, weight);
    });
    std::memcpy(out, acc, sizeof(acc));
  }
};

// the same outputs of the cosine family's quotient (see quotient_block), SCALES and OFFSETS a
// vector of each channel's
template <typename T>
struct QuotientOutputs {
  static constexpr bool kColumnSquares = true;
  // COLUMN_SQUARES (or null): a buffer of the sums of x^2 over the kernel's rows (every one a run
  // of RUN taps one position apart) from the position of the first output's first tap on, its
  // first RUN - 1 filled; these outputs fill the next COUNT (the values the last tap of each kernel
  // row meets) and take |p|^2 as a sum of RUN of them instead of one term per tap
  template <int COUNT>
  __attribute__((always_inline)) static void outputs(const T* xs, const T* ws, const T* scales, const T* offsets,
                                                     T* column_squares, int64_t run, T* out, int64_t origin,
                                                     const Geometry& g) {
    using Vector = typename Lanes<T>::Vector;
    constexpr int kLanes = Lanes<T>::kCount;
    Vector products[COUNT], squares[COUNT];
    for (int j = 0; j < COUNT; ++j) products[j] = squares[j] = Vector{};
    if (column_squares != nullptr) {
      Vector columns[COUNT];
      for (int j = 0; j < COUNT; ++j) columns[j] = Vector{};
      for (int64_t t = 0; t < g.taps; t += run) {
        // each_tap_vector's slide along one kernel row, taps in kernel order, written out with the
        // run length fixed (tap_run): through each_tap_vector with a hook at each run's end it
        // took 1.02x-1.07x this time on depthwise 7x7 channels-last (compare_versions.py)
        const T* at = xs + (origin + g.tap_offsets[t]) * kLanes;
        Vector window[COUNT];
        for (int j = 0; j < COUNT; ++j) std::memcpy(&window[j], at + j * kLanes, sizeof(Vector));
        for (int64_t u = 0; u < run; ++u) {
          Vector weight;
          std::memcpy(&weight, ws + (t + u) * kLanes, sizeof(weight));
          for (int j = 0; j < COUNT; ++j) products[j] += window[j] * weight;
          if (u + 1 < run) {
            for (int j = 0; j + 1 < COUNT; ++j) window[j] = window[j + 1];
            std::memcpy(&window[COUNT - 1], at + (COUNT + u) * kLanes, sizeof(Vector));
          }
        }
        // the window now holds the positions RUN - 1 to COUNT + RUN - 2: the ones not yet summed
        for (int j = 0; j < COUNT; ++j) columns[j] += window[j] * window[j];
      }
      std::memcpy(column_squares + (run - 1) * kLanes, columns, sizeof(columns));
      for (int64_t u = 0; u < run; ++u) {
        for (int j = 0; j < COUNT; ++j) {
          Vector sums;
          std::memcpy(&sums, column_squares + (j + u) * kLanes, sizeof(sums));
          squares[j] += sums;
        }
      }
    } else {
      each_tap_vector<T, COUNT>(xs, ws, origin, g, [&](int j, Vector values, Vector weight) {
        products[j] += values * weight;
        squares[j] += values * values;
      });
    }
    Vector scale, offset;
    std::memcpy(&scale, scales, sizeof(scale));
    std::memcpy(&offset, offsets, sizeof(offset));
    for (int j = 0; j < COUNT; ++j) products[j] /= square_root(squares[j]) * scale + offset;
    std::memcpy(out, products, sizeof(products));
  }
};

// the length of every run of taps one position apart (each kernel row's, at a dilation of 1 along
// the last dimension), or 0 when the runs differ or are single taps
inline int64_t tap_run(const Geometry& g) {
  int64_t run = 1;
  while (run < g.taps && g.tap_offsets[run] == g.tap_offsets[run - 1] + 1) ++run;
  if (run < 2 || g.taps % run != 0) return 0;
  for (int64_t t = 0; t < g.taps; ++t) {
    if (t % run != 0 && g.tap_offsets[t] != g.tap_offsets[t - 1] + 1) return 0;
  }
  return run;
}

// SUMS[c] = the sum of x^2 over the kernel's rows (its taps that start a run of RUN) at position
// ORIGIN + c of XS (vectors of kLanes lanes), for c < POSITIONS
template <typename T>
void column_sums_of_squares(const T* xs, T* sums, int64_t origin, int64_t positions, int64_t run,
                            const Geometry& g) {
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  // four positions together: four independent chains of multiply-adds, where one position's
  // chain alone waited on each multiply-add's latency (each sum in the same order as below)
  constexpr int kTogether = 4;
  int64_t c = 0;
  for (; c + kTogether <= positions; c += kTogether) {
    Vector totals[kTogether] = {};
    for (int64_t t = 0; t < g.taps; t += run) {
      const T* at = xs + (origin + g.tap_offsets[t] + c) * kLanes;
      for (int j = 0; j < kTogether; ++j) {
        Vector values;
        std::memcpy(&values, at + j * kLanes, sizeof(values));
        totals[j] += values * values;
      }
    }
    std::memcpy(sums + c * kLanes, totals, sizeof(totals));
  }
  for (; c < positions; ++c) {
    Vector total{};
    for (int64_t t = 0; t < g.taps; t += run) {
      Vector values;
      std::memcpy(&values, xs + (origin + g.tap_offsets[t] + c) * kLanes, sizeof(values));
      total += values * values;
    }
    std::memcpy(sums + c * kLanes, &total, sizeof(total));
  }
}

// The forward (OUTPUTS: ReducedOutputs or QuotientOutputs) of a depthwise layer (one input and one
// output channel per group) on rows narrower than a vector, given the unpadded input and its
// layout at stride 1: the vectors hold kLanes channels of one position (a row's lanes would be
// mostly empty), laid out position by position into a zero-filled buffer of the thread's own with
// their weights (and the quotient's SCALE and OFFSET) beside them, kLanes channels of one sample
// at a time
template <typename S, typename Outputs>
void forward_channel_vectors(const S* x, const S* w, const Compute<S>* scale, const Compute<S>* offset, S* y,
                             const S* bias, const Geometry& g, const Layout& layout, int threads) {
  using T = Compute<S>;
  constexpr int kLanes = Lanes<T>::kCount;
  const int64_t blocks = (g.channels + kLanes - 1) / kLanes, output_plane = g.rows * g.width;
  const int64_t input_plane = unpadded_plane(layout);
  const int64_t length = layout.padded[layout.ndim - 1], left = layout.before[layout.ndim - 1];
  const int64_t width = layout.size[layout.ndim - 1];
  // the quotient's |p|^2 from sums over the kernel's rows where every kernel row is a run of RUN
  // taps one position apart (a dilation of 1 along the last dimension), on rows wide enough for
  // whole blocks of outputs (7 x 7 images sum the squares tap by tap)
  const int64_t run = Outputs::kColumnSquares && g.width >= kOutputsTogether ? tap_run(g) : 0;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> xs(g.plane * kLanes), ws(g.taps * kLanes), outs(output_plane * kLanes);
    std::vector<T> scales(kLanes, T(1)), offsets(kLanes, T(1));
    std::vector<T> column_squares(run > 1 ? (g.width + run - 1) * kLanes : 0);
#pragma omp for schedule(static)
    for (int64_t index = 0; index < g.batch * blocks; ++index) {
      const int64_t b = index / blocks, first = (index % blocks) * kLanes;
      const int count = static_cast<int>(std::min<int64_t>(kLanes, g.channels - first));
      // the lanes past COUNT keep what the block before left (or the start's zeros and ones):
      // computed, never stored
      if (layout.channels_last) {
        // each position's COUNT channels are contiguous: one short run per position
        each_input_row(x, 0, layout, [&](const S* row, int64_t target_row) {
          const S* source = x + (b * input_plane + (row - x)) * g.channels + first;
          T* target = xs.data() + (target_row * length + left) * kLanes;
          if (count == kLanes) {
            // a whole vector of channels: a fixed count the compiler moves as one vector
            for (int64_t c = 0; c < width; ++c, source += g.channels, target += kLanes)
              for (int lane = 0; lane < kLanes; ++lane) target[lane] = widen(source[lane]);
          } else {
            for (int64_t c = 0; c < width; ++c, source += g.channels, target += kLanes)
              for (int lane = 0; lane < count; ++lane) target[lane] = widen(source[lane]);
          }
        });
      }
      for (int lane = 0; lane < count; ++lane) {
        if (!layout.channels_last) {
          const S* plane = x + (b * g.channels + first + lane) * input_plane;
          each_input_row(plane, 0, layout, [&](const S* source, int64_t target_row) {
            T* target = xs.data() + (target_row * length + left) * kLanes + lane;
            for (int64_t c = 0; c < width; ++c) target[c * kLanes] = widen(source[c]);
          });
        }
        for (int64_t t = 0; t < g.taps; ++t) ws[t * kLanes + lane] = widen(w[(first + lane) * g.taps + g.weight_index[t]]);
        if (scale != nullptr) {
          scales[lane] = scale[first + lane];
          offsets[lane] = offset[first + lane];
        }
      }
      for (int64_t r = 0; r < g.rows; ++r) {
        T* out = outs.data() + r * g.width * kLanes;
        T* squares = nullptr;
        if (run > 1) {
          // the row's first RUN - 1 column sums; each block of outputs adds those it reaches next
          column_sums_of_squares(xs.data(), column_squares.data(), g.row_offsets[r], run - 1, run, g);
          squares = column_squares.data();
        }
        const auto at = [&](int64_t i) { return squares == nullptr ? nullptr : squares + i * kLanes; };
        int64_t i = 0;
        for (; i + kOutputsTogether <= g.width; i += kOutputsTogether)
          Outputs::template outputs<kOutputsTogether>(xs.data(), ws.data(), scales.data(), offsets.data(), at(i),
                                                      run, out + i * kLanes, g.row_offsets[r] + i, g);
        // a narrow row's (7 x 7 images) or a row's rest: half as many together, not one at a time
        for (; i + kOutputsTogether / 2 <= g.width; i += kOutputsTogether / 2)
          Outputs::template outputs<kOutputsTogether / 2>(xs.data(), ws.data(), scales.data(), offsets.data(),
                                                          at(i), run, out + i * kLanes, g.row_offsets[r] + i, g);
        const auto rest = [&](auto count) {
          Outputs::template outputs<decltype(count)::value>(xs.data(), ws.data(), scales.data(), offsets.data(),
                                                            at(i), run, out + i * kLanes, g.row_offsets[r] + i, g);
        };
        static_assert(kOutputsTogether / 2 == 4, "the rest is one to three outputs");
        with_rest_of_four(g.width - i, rest);
      }
      if (bias != nullptr) {
        // the bias added here, on the thread's own buffer, rather than in a pass over the output
        for (int64_t k = 0; k < output_plane; ++k)
          for (int lane = 0; lane < count; ++lane) outs[k * kLanes + lane] += widen(bias[first + lane]);
      }
      if (layout.channels_last && count == kLanes) {
        for (int64_t k = 0; k < output_plane; ++k) {
          S* target = y + (b * output_plane + k) * g.channels + first;
          for (int lane = 0; lane < kLanes; ++lane) target[lane] = narrow<S>(outs[k * kLanes + lane]);
        }
      } else if (layout.channels_last) {
        for (int64_t k = 0; k < output_plane; ++k) {
          S* target = y + (b * output_plane + k) * g.channels + first;
          for (int lane = 0; lane < count; ++lane) target[lane] = narrow<S>(outs[k * kLanes + lane]);
        }
      } else {
        for (int lane = 0; lane < count; ++lane) {
          S* target = y + (b * g.channels + first + lane) * output_plane;
          for (int64_t k = 0; k < output_plane; ++k) target[k] = narrow<S>(outs[k * kLanes + lane]);
        }
      }
    }
  }
}

// whether forward_channel_vectors computes a forward: depthwise, rows narrower than a vector, the
// input unpadded at stride 1 (one phase), and channels to fill the vectors
template <typename S>
bool takes_channel_vectors(const Geometry& g, const Layout* layout) {
  constexpr int64_t kLanes = Lanes<Compute<S>>::kCount;
  const bool depthwise = layout != nullptr && layout->phases == 1 && g.groups == g.channels &&
                         g.out_channels == g.channels;
  // a channels-last input is read in place whatever the width: its channels lie side by side
  return depthwise && (layout->channels_last || (g.width < kLanes && g.channels >= kLanes));
}

// filters the forward of a layer with many filters per group takes together (see filters_block)
constexpr int kFiltersTogether = 4;

// FILTERS filters' outputs on VECTORS vectors of each of ROWS rows, as forward_block takes one
// filter's: every value vector loaded once meets the FILTERS weights of its tap, so that a load
// feeds FILTERS steps where forward_block's feeds one. WS the filters' weights tap by tap (taps x
// FILTERS, compute type), OUTS[f * ROWS + r] filter f's row r, BIASES FILTERS values or null
template <typename S, typename Op, int FILTERS, int VECTORS, int ROWS, bool PARTIAL, bool MASKED_LOAD = PARTIAL>
__attribute__((always_inline)) inline void filters_block(const S* x, const Compute<S>* ws, S* const* outs,
                                                         const int64_t* origins, const Geometry& g,
                                                         const Compute<S>* biases, int64_t first, int count,
                                                         int64_t last_vector) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  const int last_count = PARTIAL ? count : kLanes;
  Vector values[FILTERS][ROWS][VECTORS];
  for (int f = 0; f < FILTERS; ++f)
    for (int r = 0; r < ROWS; ++r)
      for (int v = 0; v < VECTORS; ++v) values[f][r][v] = Vector{} + Op::start();
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t offset = g.tap_offsets[t] + first;
    const T* weights = ws + t * FILTERS;
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const S* source = x + origins[r] + offset;
      Vector loaded[VECTORS];
#pragma GCC unroll 8
      for (int v = 0; v < VECTORS - 1; ++v) loaded[v] = load(source + v * kLanes, 1);
      if constexpr (MASKED_LOAD) {
        loaded[VECTORS - 1] = load_partial(source + last_vector, 1, last_count);
      } else {
        loaded[VECTORS - 1] = load(source + last_vector, 1);
      }
#pragma GCC unroll 8
      for (int f = 0; f < FILTERS; ++f) {
#pragma GCC unroll 8
        for (int v = 0; v < VECTORS; ++v) values[f][r][v] = Op::step(values[f][r][v], loaded[v], weights[f]);
      }
    }
  }
  for (int f = 0; f < FILTERS; ++f) {
    const T added = biases == nullptr ? T(0) : biases[f];
    for (int r = 0; r < ROWS; ++r) {
      S* out = outs[f * ROWS + r] + first;
      for (int v = 0; v < VECTORS; ++v) {
        const Vector result = biases == nullptr ? values[f][r][v] : values[f][r][v] + added;
        const int64_t at = v == VECTORS - 1 ? last_vector : v * kLanes;
        if (PARTIAL && v == VECTORS - 1) {
          store_partial(out + at, result, last_count);
        } else {
          store(out + at, result);
        }
      }
    }
  }
}

// ROWS rows of FILTERS filters, cut into blocks of VECTORS vectors (the last overlapping the one
// before); a row narrower than that into blocks of two vectors or one
template <typename S, typename Op, int FILTERS, int ROWS, int VECTORS>
void filters_rows(const S* x, const Compute<S>* ws, S* const* outs, const int64_t* origins, const Geometry& g,
                  const Compute<S>* biases, const S* end) {
  constexpr int64_t kLanes = Lanes<Compute<S>>::kCount;
  if (g.width < kLanes) {
    // a whole vector read past the row's end where it stays inside the input (END): GCC kept the
    // sums of a loop of masked loads in memory, not in registers
    const int width = static_cast<int>(g.width);
    if (x + origins[ROWS - 1] + g.tap_offsets[g.taps - 1] + kLanes <= end) {
      filters_block<S, Op, FILTERS, 1, ROWS, true, false>(x, ws, outs, origins, g, biases, 0, width, 0);
    } else {
      filters_block<S, Op, FILTERS, 1, ROWS, true, true>(x, ws, outs, origins, g, biases, 0, width, 0);
    }
    return;
  }
  if (g.width == kLanes) {
    filters_block<S, Op, FILTERS, 1, ROWS, false>(x, ws, outs, origins, g, biases, 0, kLanes, 0);
    return;
  }
  if (g.width < 2 * kLanes) {
    // two vectors, the second overlapping the first
    filters_block<S, Op, FILTERS, 2, ROWS, false>(x, ws, outs, origins, g, biases, 0, kLanes, g.width - kLanes);
    return;
  }
  if (g.width < VECTORS * kLanes) {
    // blocks of two vectors, the last overlapping the one before
    for (int64_t start = 0; start < g.width; start += 2 * kLanes) {
      const int64_t first = std::min(start, g.width - 2 * kLanes);
      filters_block<S, Op, FILTERS, 2, ROWS, false>(x, ws, outs, origins, g, biases, first, kLanes, kLanes);
    }
    return;
  }
  constexpr int64_t block = VECTORS * kLanes;
  for (int64_t start = 0; start < g.width; start += block) {
    const int64_t first = start + block <= g.width ? start : g.width - block;
    filters_block<S, Op, FILTERS, VECTORS, ROWS, false>(x, ws, outs, origins, g, biases, first, kLanes,
                                                        (VECTORS - 1) * kLanes);
  }
}

// Rows [BEGIN, END) of FILTERS filters' output planes (PLANES[f], rows of PLANE_WIDTH outputs)
// in the columns [COLUMN, COLUMN + g.width) from one padded sample-and-group SOURCE (shifted to
// that column already), ROWS rows of VECTORS vectors at a time, single rows of four vectors
template <typename S, typename Op, int FILTERS, int ROWS, int VECTORS>
void filters_tile_rows(const S* source, const Compute<S>* ws, S* const* planes, const Geometry& g, int64_t begin,
                       int64_t stop, int64_t column, int64_t plane_width, const Compute<S>* biases, const S* end) {
  S* outs[FILTERS * ROWS];
  int64_t r = begin;
  for (; r + ROWS <= stop; r += ROWS) {
    for (int f = 0; f < FILTERS; ++f)
      for (int i = 0; i < ROWS; ++i) outs[f * ROWS + i] = planes[f] + (r + i) * plane_width + column;
    filters_rows<S, Op, FILTERS, ROWS, VECTORS>(source, ws, outs, g.row_offsets + r, g, biases, end);
  }
  for (; r < stop; ++r) {
    for (int f = 0; f < FILTERS; ++f) outs[f] = planes[f] + r * plane_width + column;
    filters_rows<S, Op, FILTERS, 1, 4>(source, ws, outs, g.row_offsets + r, g, biases, end);
  }
}

// filters_tile_rows with enough independent sums whatever the width: rows narrower than a vector
// four at a time, wider ones two at a time
template <typename S, typename Op, int FILTERS>
void filters_tile(const S* source, const Compute<S>* ws, S* const* planes, const Geometry& g, int64_t begin,
                  int64_t stop, int64_t column, int64_t plane_width, const Compute<S>* biases, const S* end) {
  if (g.width < Lanes<Compute<S>>::kCount) {
    filters_tile_rows<S, Op, FILTERS, 4, 1>(source, ws, planes, g, begin, stop, column, plane_width, biases, end);
  } else {
    filters_tile_rows<S, Op, FILTERS, 2, 2>(source, ws, planes, g, begin, stop, column, plane_width, biases, end);
  }
}

// The taps of G in the order of their offsets (OFFSETS) with their weight columns (COLUMNS):
// channel by channel, so that the taps of one channel read the same few cache lines one after the
// other, where the field order (kernel, then channel) went through every channel at each kernel
// position, more lines than the first-level cache holds
inline void taps_by_offset(const Geometry& g, std::vector<int64_t>& offsets, std::vector<int64_t>& columns) {
  std::vector<int64_t> order(g.taps);
  for (int64_t t = 0; t < g.taps; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return g.tap_offsets[a] < g.tap_offsets[b]; });
  offsets.resize(g.taps);
  columns.resize(g.taps);
  for (int64_t t = 0; t < g.taps; ++t) {
    offsets[t] = g.tap_offsets[order[t]];
    columns[t] = g.weight_index[order[t]];
  }
}

// output rows of one tile of the filter-block forward (see forward_filter_blocks), and its
// columns on single-row (1-D) outputs
constexpr int64_t kTileRows = 4;
constexpr int64_t kTileColumns = 256;

// The forward of a layer with at least kFiltersTogether filters per group on an input laid out
// already. The threads split tiles of the output (a sample's group, kTileRows rows, or
// kTileColumns columns of a single row), and each tile goes through every block of its group's
// filters: the tile's part of the input stays in cache while they read it, where a filter block
// walking the whole input read it from memory once per block. The filters are packed once, block
// by block and tap by tap (the filters of a group that do not fill a block one by one).
template <typename S, typename Op>
void forward_filter_blocks(const S* x, const S* w, const S* bias, S* y, const Geometry& given, int threads) {
  using T = Compute<S>;
  constexpr int F = kFiltersTogether;
  std::vector<int64_t> offsets, columns;
  taps_by_offset(given, offsets, columns);
  Geometry g = given;
  g.tap_offsets = offsets.data();
  g.weight_index = columns.data();
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t output_plane = g.rows * g.width;
  // filter o's weights at packed[o * taps ...]: blocks of F filters interleaved tap by tap
  // (F per tap), the rest one filter after another
  std::vector<T> packed(g.out_channels * g.taps), biases(g.out_channels, T(0));
  const int64_t whole = per_group_out / F * F;
  for (int64_t o = 0; o < g.out_channels; ++o) {
    const int64_t j = o % per_group_out;
    T* target = packed.data() + (o - j % F) * g.taps;
    for (int64_t t = 0; t < g.taps; ++t) {
      const T value = widen(w[o * g.taps + g.weight_index[t]]);
      if (j < whole) {
        target[t * F + j % F] = value;
      } else {
        packed[o * g.taps + t] = value;
      }
    }
    if (bias != nullptr) biases[o] = widen(bias[o]);
  }
  const bool single_row = g.rows == 1;
  const int64_t row_tiles = single_row ? 1 : (g.rows + kTileRows - 1) / kTileRows;
  const int64_t column_tiles = single_row ? (g.width + kTileColumns - 1) / kTileColumns : 1;
  const int64_t tiles = row_tiles * column_tiles, items = g.batch * g.groups * tiles;
  // the end of the laid-out input, past which no load may read
  const S* end = x + g.batch * g.channels * g.plane;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t index = 0; index < items; ++index) {
    const int64_t b = index / (g.groups * tiles), group = (index / tiles) % g.groups, tile = index % tiles;
    const int64_t begin = single_row ? 0 : tile * kTileRows, stop = single_row ? 1 : std::min(g.rows, begin + kTileRows);
    const int64_t column = single_row ? tile * kTileColumns : 0;
    Geometry part = g;
    part.width = single_row ? std::min(kTileColumns, g.width - column) : g.width;
    const S* source = x + (b * g.channels + group * per_group_in) * g.plane + column;
    for (int64_t j = 0; j < per_group_out; j += F) {
      const int64_t first = group * per_group_out + j;
      S* planes[F];
      for (int f = 0; f < F && j + f < per_group_out; ++f) planes[f] = y + (b * g.out_channels + first + f) * output_plane;
      const T* block_bias = bias == nullptr ? nullptr : biases.data() + first;
      if (j < whole) {
        filters_tile<S, Op, F>(source, packed.data() + first * g.taps, planes, part, begin, stop, column, g.width,
                               block_bias, end);
        continue;
      }
      for (int64_t f = 0; j + f < per_group_out; ++f)
        filters_tile<S, Op, 1>(source, packed.data() + (first + f) * g.taps, planes + f, part, begin, stop, column,
                               g.width, block_bias == nullptr ? nullptr : block_bias + f, end);
    }
  }
}

// output positions of a row, and vectors of filters, the filter-vector forward takes together
// (see filter_vectors_block): P x 2 sums in registers beside two weight vectors and a broadcast
// value, 14 x 2 of AVX-512's 32 registers (14 divides the widths networks use) and 6 x 2 of
// AVX2's 16 (14 x 2 there kept the sums on the stack, loaded and stored at every tap)
#ifdef __AVX512F__
constexpr int kPositionsTogether = 14;
constexpr int kShortPositions = 8;
#else
constexpr int kPositionsTogether = 6;
constexpr int kShortPositions = 4;
#endif
constexpr int kFilterVectors = 2;
// taps from which the filter vectors take a layer: their outputs are written lane by lane, which
// a few taps' steps do not pay for (a 1x1 layer of 24 channels ran faster in filter blocks)
constexpr int64_t kMinVectorTaps = 64;

// The outputs of V vectors of filters (V x kLanes filters, a lane each) at P positions of one
// output row, every tap's input value broadcast to a vector: the lanes hold filters, so that no
// lane is wasted on a row narrower than a whole number of vectors (as a 56-wide row in vectors
// of 16 positions), and each value loaded feeds V vectors of filters. X the input at the first
// position's origin, positions STEP apart; WS the block's weights tap by tap (taps x V x kLanes);
// OUTS[f] filter f's output row from the first position, for the block's COUNT filters; BIASES
// theirs or null; COLUMNS the positions written (the first COLUMNS of P)
// VALUE in every lane, read from memory straight into the vector where the compiler targets
// AVX-512 or AVX (GCC compiled `Vector{} + value` to an add, then a broadcast on the shuffle port
// that the multiply-adds need)
template <typename S>
__attribute__((always_inline)) inline typename Lanes<Compute<S>>::Vector broadcast(const S* value) {
  using Vector = typename Lanes<Compute<S>>::Vector;
#if defined(__AVX512F__)
  if constexpr (std::is_same<S, float>::value) {
    return reinterpret_cast<Vector>(_mm512_set1_ps(*value));
  } else if constexpr (std::is_same<S, double>::value) {
    return reinterpret_cast<Vector>(_mm512_set1_pd(*value));
  }
#elif defined(__AVX__)
  if constexpr (std::is_same<S, float>::value) {
    return reinterpret_cast<Vector>(_mm256_set1_ps(*value));
  } else if constexpr (std::is_same<S, double>::value) {
    return reinterpret_cast<Vector>(_mm256_set1_pd(*value));
  }
#endif
  return Vector{} + widen(*value);
}

template <typename S, typename Op, int P, int V, int STEP>
__attribute__((always_inline)) inline void filter_vectors_block(const S* x, const Compute<S>* ws,
                                                                const int64_t* offsets, int64_t taps, int64_t given_step,
                                                                S* const* outs, int count, const Compute<S>* biases,
                                                                int columns) {
  // a step known at compile time (1 or 2) makes each position's address a constant displacement
  const int64_t step = STEP > 0 ? STEP : given_step;
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  Vector sums[P][V];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) sums[p][v] = Vector{} + Op::start();
  for (int64_t t = 0; t < taps; ++t) {
    Vector weights[V];
    for (int v = 0; v < V; ++v) weights[v] = load(ws + (t * V + v) * kLanes, 1);
    const S* source = x + offsets[t];
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const Vector value = broadcast(source + p * step);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) sums[p][v] = Op::step(sums[p][v], value, weights[v]);
    }
  }
  // lane by lane into the filters' rows: the transposition costs a few instructions per output,
  // against taps x V steps for each
  alignas(64) T values[P][V * kLanes];
  for (int p = 0; p < P; ++p)
    for (int v = 0; v < V; ++v) std::memcpy(values[p] + v * kLanes, &sums[p][v], sizeof(Vector));
  for (int f = 0; f < count; ++f) {
    const T added = biases == nullptr ? T(0) : biases[f];
    for (int p = 0; p < columns; ++p) outs[f][p] = narrow<S>(values[p][f] + added);
  }
}

// One output row of a block of filters (see forward_filter_vectors) in blocks of P positions; a
// block that would read past the input's END (the last position's taps reach REACH past it)
// takes its positions one by one
template <typename S, typename Op, int P, int V>
void filter_vectors_row(const S* row, const Compute<S>* ws, const int64_t* offsets, const Geometry& g,
                        S** outs, int count, const Compute<S>* biases, int64_t reach, const S* end) {
  int64_t c = 0;
  for (; c + P <= g.width || (c < g.width && row + (c + P - 1) * g.step + reach < end); c += P) {
    const int columns = static_cast<int>(std::min<int64_t>(P, g.width - c));
    const S* start = row + c * g.step;
    if (g.step == 1) {
      filter_vectors_block<S, Op, P, V, 1>(start, ws, offsets, g.taps, 1, outs, count, biases, columns);
    } else if (g.step == 2) {
      filter_vectors_block<S, Op, P, V, 2>(start, ws, offsets, g.taps, 2, outs, count, biases, columns);
    } else {
      filter_vectors_block<S, Op, P, V, 0>(start, ws, offsets, g.taps, g.step, outs, count, biases, columns);
    }
    for (int f = 0; f < count; ++f) outs[f] += P;
  }
  for (; c < g.width; ++c) {
    filter_vectors_block<S, Op, 1, V, 0>(row + c * g.step, ws, offsets, g.taps, g.step, outs, count, biases, 1);
    for (int f = 0; f < count; ++f) outs[f] += 1;
  }
}

// The forward of a dense layer with at least kFilterVectors x kLanes filters per group on an
// input laid out already, the lanes across filters (see filter_vectors_block). The threads split
// (sample, group, block of filters, output row); the filters are packed once, block by block and
// tap by tap (zero past the group's last filter). The taps go channel by channel
// (taps_by_offset).
template <typename S, typename Op>
void forward_filter_vectors(const S* x, const S* w, const S* bias, S* y, const Geometry& given, int threads) {
  using T = Compute<S>;
  constexpr int kLanes = Lanes<T>::kCount;
  constexpr int V = kFilterVectors, P = kPositionsTogether, kBlock = V * kLanes;
  std::vector<int64_t> offsets, columns;
  taps_by_offset(given, offsets, columns);
  const Geometry& g = given;
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t blocks = (per_group_out + kBlock - 1) / kBlock;
  // block b of group q at packed[(q * blocks + b) * taps * kBlock]: tap by tap, kBlock filters each
  std::vector<T> packed(g.groups * blocks * g.taps * kBlock, T(0)), biases(g.out_channels, T(0));
  for (int64_t o = 0; o < g.out_channels; ++o) {
    const int64_t q = o / per_group_out, j = o % per_group_out;
    T* target = packed.data() + (q * blocks + j / kBlock) * g.taps * kBlock + j % kBlock;
    for (int64_t t = 0; t < g.taps; ++t) target[t * kBlock] = widen(w[o * g.taps + columns[t]]);
    if (bias != nullptr) biases[o] = widen(bias[o]);
  }
  const int64_t output_plane = g.rows * g.width;
  const int64_t items = g.batch * g.groups * blocks * g.rows;
  // the end of the laid-out input: a block of P positions that would read past it takes its
  // positions one by one
  const S* end = x + g.batch * g.channels * g.plane;
  const int64_t reach = offsets[g.taps - 1];
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t index = 0; index < items; ++index) {
    const int64_t r = index % g.rows, block = (index / g.rows) % blocks;
    const int64_t q = (index / (g.rows * blocks)) % g.groups, b = index / (g.rows * blocks * g.groups);
    const int64_t first = q * per_group_out + block * kBlock;
    const int count = static_cast<int>(std::min<int64_t>(kBlock, (q + 1) * per_group_out - first));
    const T* ws = packed.data() + (q * blocks + block) * g.taps * kBlock;
    const T* block_bias = bias == nullptr ? nullptr : biases.data() + first;
    const S* row = x + (b * g.channels + q * per_group_in) * g.plane + g.row_offsets[r];
    S* outs[kBlock];
    for (int f = 0; f < count; ++f) outs[f] = y + (b * g.out_channels + first + f) * output_plane + r * g.width;
    // a row of at most half a block of positions takes blocks of that half (a 7-wide row in
    // blocks of 14 would compute twice its outputs), and a row that blocks of 14 would overrun by
    // more than a tenth of its width, but blocks of 8 fit, blocks of 8 (a 16-wide row in blocks
    // of 14 would compute 28 positions)
    const int64_t overrun = (g.width + P - 1) / P * P - g.width;
    if (g.width <= P / 2) {
      filter_vectors_row<S, Op, P / 2, V>(row, ws, offsets.data(), g, outs, count, block_bias, reach, end);
    } else if (10 * overrun > g.width && g.width % kShortPositions == 0) {
      filter_vectors_row<S, Op, kShortPositions, V>(row, ws, offsets.data(), g, outs, count, block_bias, reach,
                                                     end);
    } else {
      filter_vectors_row<S, Op, P, V>(row, ws, offsets.data(), g, outs, count, block_bias, reach, end);
    }
  }
}

// The taps of kRowsTogether output rows of a depthwise filter, spacing apart in the padded input,
// grouped by the input place they read: each vector loaded once meets every row whose tap reads
// it (a 7 x 7 kernel over four rows: 70 places, where tap by tap each row loads its own 49). The
// places go in increasing order, so each row meets its taps in the tap order, the sums' order of
// forward_block; runs of places read by the same rows (MASK) share one specialised loop.
struct StationaryPlace {
  int64_t offset;
  int64_t weight[kRowsTogether];  // the tap's weight column per row, or -1
};
struct Stationary {
  int64_t spacing = 0;  // 0: not taken
  std::vector<StationaryPlace> places;
  std::vector<std::pair<int, int64_t>> runs;  // (mask of rows, end of the run in places)
  // K where the taps are a whole K x K kernel at dilation 1 in kernel order, K one of
  // kSquareKernels (see square_quotient_block), else 0
  int square = 0;
};

// the square kernels whose quotient has its places written out at compile time
constexpr int kSquareKernels[] = {3, 5, 7};

// K when G's taps are every tap of a K x K kernel one position apart along rows SPACING apart, in
// kernel order and with the weight's columns in that order, K one of kSquareKernels; else 0
inline int square_kernel(const Geometry& g, int64_t spacing) {
  for (const int k : kSquareKernels) {
    if (g.taps != k * k) continue;
    for (int64_t t = 0; t < g.taps; ++t) {
      if (g.tap_offsets[t] != (t / k) * spacing + t % k || g.weight_index[t] != t) return 0;
    }
    return k;
  }
  return 0;
}

// The schedule where it holds the tap order: one input channel per group, unit step, tap offsets
// increasing and each row's span shorter than the spacing; else spacing 0
inline Stationary stationary_schedule(const Geometry& g) {
  Stationary schedule;
  if (g.channels != g.groups || g.step != 1 || g.rows < kRowsTogether || g.taps < 2) return schedule;
  const int64_t spacing = g.row_offsets[1] - g.row_offsets[0];
  for (int64_t t = 1; t < g.taps; ++t) {
    if (g.tap_offsets[t] <= g.tap_offsets[t - 1]) return schedule;
  }
  if (spacing <= 0) return schedule;
  std::vector<std::pair<int64_t, std::pair<int, int64_t>>> reads;  // (place, (row, weight column))
  for (int r = 0; r < kRowsTogether; ++r) {
    for (int64_t t = 0; t < g.taps; ++t) reads.push_back({r * spacing + g.tap_offsets[t], {r, g.weight_index[t]}});
  }
  std::sort(reads.begin(), reads.end());
  for (const auto& [offset, read] : reads) {
    if (schedule.places.empty() || schedule.places.back().offset != offset) {
      StationaryPlace place{offset, {}};
      std::fill(std::begin(place.weight), std::end(place.weight), -1);
      schedule.places.push_back(place);
    }
    schedule.places.back().weight[read.first] = read.second;
  }
  for (int64_t i = 0; i < static_cast<int64_t>(schedule.places.size()); ++i) {
    int mask = 0;
    for (int r = 0; r < kRowsTogether; ++r) mask |= (schedule.places[i].weight[r] >= 0) << r;
    if (schedule.runs.empty() || schedule.runs.back().first != mask) schedule.runs.push_back({mask, 0});
    schedule.runs.back().second = i + 1;
  }
  schedule.spacing = spacing;
  schedule.square = square_kernel(g, spacing);
  return schedule;
}

// every mask of rows a run of places may have (kRowsTogether = 4), for the switches below
#define ANYCONV_STATIONARY_MASKS                                                                         \
  ANYCONV_STATIONARY_RUN(1) ANYCONV_STATIONARY_RUN(2) ANYCONV_STATIONARY_RUN(3) ANYCONV_STATIONARY_RUN(4)     \
  ANYCONV_STATIONARY_RUN(5) ANYCONV_STATIONARY_RUN(6) ANYCONV_STATIONARY_RUN(7) ANYCONV_STATIONARY_RUN(8)     \
  ANYCONV_STATIONARY_RUN(9) ANYCONV_STATIONARY_RUN(10) ANYCONV_STATIONARY_RUN(11) ANYCONV_STATIONARY_RUN(12)  \
  ANYCONV_STATIONARY_RUN(13) ANYCONV_STATIONARY_RUN(14) ANYCONV_STATIONARY_RUN(15)

template <typename S, typename Op, int VECTORS, int MASK, int R>
__attribute__((always_inline)) inline void stationary_row(typename Lanes<Compute<S>>::Vector (&values)[kRowsTogether][VECTORS],
                                                          const typename Lanes<Compute<S>>::Vector (&read)[VECTORS],
                                                          const S* w, const StationaryPlace& place) {
  if constexpr (((MASK >> R) & 1) != 0) {
    const Compute<S> weight = widen(w[place.weight[R]]);
    for (int v = 0; v < VECTORS; ++v) values[R][v] = Op::step(values[R][v], read[v], weight);
  }
}

template <typename S, typename Op, int VECTORS, int MASK>
__attribute__((always_inline)) inline void stationary_run(typename Lanes<Compute<S>>::Vector (&values)[kRowsTogether][VECTORS],
                                                          const S* base, const S* w, const StationaryPlace* place,
                                                          const StationaryPlace* end, int64_t last) {
  using Vector = typename Lanes<Compute<S>>::Vector;
  constexpr int kLanes = Lanes<Compute<S>>::kCount;
  static_assert(kRowsTogether == 4, "the rows below are written out");
  for (; place != end; ++place) {
    const S* source = base + place->offset;
    Vector read[VECTORS];
    for (int v = 0; v < VECTORS - 1; ++v) read[v] = load(source + v * kLanes, 1);
    read[VECTORS - 1] = load(source + last, 1);
    stationary_row<S, Op, VECTORS, MASK, 0>(values, read, w, *place);
    stationary_row<S, Op, VECTORS, MASK, 1>(values, read, w, *place);
    stationary_row<S, Op, VECTORS, MASK, 2>(values, read, w, *place);
    stationary_row<S, Op, VECTORS, MASK, 3>(values, read, w, *place);
  }
}

// forward_block's whole-vector blocks over kRowsTogether rows from ORIGIN, spacing apart, by the
// schedule's places
template <typename S, typename Out, typename Op, int VECTORS>
__attribute__((always_inline)) inline void stationary_block(const S* x, const S* w, Out* const* outs, int64_t origin,
                                                            const Stationary& schedule, const S* bias, int64_t first,
                                                            int64_t last_vector) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  Vector values[kRowsTogether][VECTORS];
  for (int r = 0; r < kRowsTogether; ++r) {
    for (int v = 0; v < VECTORS; ++v) values[r][v] = Vector{} + Op::start();
  }
  const S* base = x + origin + first;
  const StationaryPlace* places = schedule.places.data();
  int64_t begin = 0;
  for (const auto& [mask, end] : schedule.runs) {
    switch (mask) {
#define ANYCONV_STATIONARY_RUN(MASK)                                                                     \
  case MASK:                                                                                             \
    stationary_run<S, Op, VECTORS, MASK>(values, base, w, places + begin, places + end, last_vector);    \
    break;
      ANYCONV_STATIONARY_MASKS
#undef ANYCONV_STATIONARY_RUN
      default:
        break;
    }
    begin = end;
  }
  store_rows<S, Out, VECTORS, kRowsTogether, false>(values, outs, bias, first, last_vector, kLanes);
}

// The quotient's products (see quotient_block) at one place of a run, for each row that reads it
template <typename S, int VECTORS, int MASK, int R>
__attribute__((always_inline)) inline void stationary_quotient_row(
    typename Lanes<Compute<S>>::Vector (&products)[kRowsTogether][VECTORS],
    const typename Lanes<Compute<S>>::Vector (&read)[VECTORS], const S* w, const StationaryPlace& place) {
  if constexpr (((MASK >> R) & 1) != 0) {
    const Compute<S> weight = widen(w[place.weight[R]]);
    for (int v = 0; v < VECTORS; ++v) products[R][v] += read[v] * weight;
  }
}

// The run's sum of squares into each row of MASK: every row of a run reads all its places
template <int VECTORS, int MASK, int R, typename Vector>
__attribute__((always_inline)) inline void stationary_squares_row(Vector (&squares)[kRowsTogether][VECTORS],
                                                                  const Vector (&run)[VECTORS]) {
  if constexpr (((MASK >> R) & 1) != 0) {
    for (int v = 0; v < VECTORS; ++v) squares[R][v] += run[v];
  }
}

template <typename S, int VECTORS, int MASK>
__attribute__((always_inline)) inline void stationary_quotient_run(
    typename Lanes<Compute<S>>::Vector (&products)[kRowsTogether][VECTORS],
    typename Lanes<Compute<S>>::Vector (&squares)[kRowsTogether][VECTORS], const S* base, const S* w,
    const StationaryPlace* place, const StationaryPlace* end, int64_t last) {
  using Vector = typename Lanes<Compute<S>>::Vector;
  constexpr int kLanes = Lanes<Compute<S>>::kCount;
  // the squares of the run's places summed once, then added to each of its rows: one multiply-add
  // per place, where adding each place's square to every row that reads it took one per row
  Vector run[VECTORS] = {};
  for (; place != end; ++place) {
    const S* source = base + place->offset;
    Vector read[VECTORS];
    for (int v = 0; v < VECTORS - 1; ++v) read[v] = load(source + v * kLanes, 1);
    read[VECTORS - 1] = load(source + last, 1);
    for (int v = 0; v < VECTORS; ++v) run[v] += read[v] * read[v];
    stationary_quotient_row<S, VECTORS, MASK, 0>(products, read, w, *place);
    stationary_quotient_row<S, VECTORS, MASK, 1>(products, read, w, *place);
    stationary_quotient_row<S, VECTORS, MASK, 2>(products, read, w, *place);
    stationary_quotient_row<S, VECTORS, MASK, 3>(products, read, w, *place);
  }
  stationary_squares_row<VECTORS, MASK, 0>(squares, run);
  stationary_squares_row<VECTORS, MASK, 1>(squares, run);
  stationary_squares_row<VECTORS, MASK, 2>(squares, run);
  stationary_squares_row<VECTORS, MASK, 3>(squares, run);
}

// The quotients p . w / (|p| SCALE + OFFSET) (+ BIAS) of ROWS rows of VECTORS vectors from their
// PRODUCTS and SQUARES into OUTS, and |p| into NORM_OUTS where not null, each row's vectors from
// FIRST, the last at LAST_VECTOR; PARTIAL: the last vector's first COUNT lanes only
template <typename S, int VECTORS, int ROWS = kRowsTogether, bool PARTIAL = false>
__attribute__((always_inline)) inline void store_quotients(
    const typename Lanes<Compute<S>>::Vector (&products)[ROWS][VECTORS],
    const typename Lanes<Compute<S>>::Vector (&squares)[ROWS][VECTORS], S* const* outs, int64_t first,
    int64_t last_vector, Compute<S> scale, Compute<S> offset, const S* bias, S* const* norm_outs,
    int count = 0) {
  using Vector = typename Lanes<Compute<S>>::Vector;
  constexpr int kLanes = Lanes<Compute<S>>::kCount;
  for (int r = 0; r < ROWS; ++r) {
    for (int v = 0; v < VECTORS; ++v) {
      const Vector norms = square_root(squares[r][v]);
      Vector result = products[r][v] / (norms * scale + offset);
      if (bias != nullptr) result = result + widen(*bias);
      const int64_t at = first + (v == VECTORS - 1 ? last_vector : int64_t(v) * kLanes);
      // |p| too where asked, for the cosine's backward (quotient_and_norms_plane)
      if (PARTIAL && v == VECTORS - 1) {
        store_partial(outs[r] + at, result, count);
        if (norm_outs != nullptr) store_partial(norm_outs[r] + at, norms, count);
      } else {
        store(outs[r] + at, result);
        if (norm_outs != nullptr) store(norm_outs[r] + at, norms);
      }
    }
  }
}

// quotient_block's whole-vector blocks over kRowsTogether rows from ORIGIN, by the schedule's places
template <typename S, int VECTORS>
__attribute__((always_inline)) inline void stationary_quotient_block(const S* x, const S* w, S* const* outs,
                                                                     int64_t origin, const Stationary& schedule,
                                                                     int64_t first, int64_t last_vector,
                                                                     Compute<S> scale, Compute<S> offset,
                                                                     const S* bias, S* const* norm_outs = nullptr) {
  using Vector = typename Lanes<Compute<S>>::Vector;
  constexpr int kLanes = Lanes<Compute<S>>::kCount;
  Vector products[kRowsTogether][VECTORS], squares[kRowsTogether][VECTORS];
  for (int r = 0; r < kRowsTogether; ++r) {
    for (int v = 0; v < VECTORS; ++v) products[r][v] = squares[r][v] = Vector{};
  }
  const S* base = x + origin + first;
  const StationaryPlace* places = schedule.places.data();
  int64_t begin = 0;
  for (const auto& [mask, end] : schedule.runs) {
    switch (mask) {
#define ANYCONV_STATIONARY_RUN(MASK)                                                                            \
  case MASK:                                                                                                    \
    stationary_quotient_run<S, VECTORS, MASK>(products, squares, base, w, places + begin, places + end, last_vector); \
    break;
      ANYCONV_STATIONARY_MASKS
#undef ANYCONV_STATIONARY_RUN
      default:
        break;
    }
    begin = end;
  }
  store_quotients<S, VECTORS>(products, squares, outs, first, last_vector, scale, offset, bias, norm_outs);
}

// stationary_quotient_block for the taps of a K x K kernel (Stationary::square): the same places
// in the same order, each row's products and each run's squares summed as there, but with the
// runs and their rows known at compile time, so that the sums stay in registers where the
// schedule's switch between runs kept them in memory. Not inlined: each of its bodies, unrolled
// for every place, is compiled once instead of at every call
template <typename S, int K, int VECTORS>
__attribute__((noinline)) void square_quotient_block(const S* x, const S* w, S* const* outs,
                                                                 int64_t origin, int64_t spacing, int64_t first,
                                                                 int64_t last_vector, Compute<S> scale,
                                                                 Compute<S> offset, const S* bias,
                                                                 S* const* norm_outs) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  static_assert(kRowsTogether == 4, "input rows below: K + 3");
  Vector products[kRowsTogether][VECTORS], squares[kRowsTogether][VECTORS];
  for (int r = 0; r < kRowsTogether; ++r) {
    for (int v = 0; v < VECTORS; ++v) products[r][v] = squares[r][v] = Vector{};
  }
  const S* base = x + origin + first;
  // input row i is kernel row i - r of output row r
#pragma GCC unroll 16
  for (int i = 0; i < K + kRowsTogether - 1; ++i) {
    Vector run[VECTORS] = {};
#pragma GCC unroll 16
    for (int j = 0; j < K; ++j) {
      const S* source = base + i * spacing + j;
      Vector read[VECTORS];
      for (int v = 0; v < VECTORS - 1; ++v) read[v] = load(source + v * kLanes, 1);
      read[VECTORS - 1] = load(source + last_vector, 1);
      for (int v = 0; v < VECTORS; ++v) run[v] += read[v] * read[v];
#pragma GCC unroll 4
      for (int r = 0; r < kRowsTogether; ++r) {
        if (i - r < 0 || i - r >= K) continue;
        const T weight = widen(w[(i - r) * K + j]);
        for (int v = 0; v < VECTORS; ++v) products[r][v] += read[v] * weight;
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < kRowsTogether; ++r) {
      if (i - r < 0 || i - r >= K) continue;
      for (int v = 0; v < VECTORS; ++v) squares[r][v] += run[v];
    }
  }
  store_quotients<S, VECTORS>(products, squares, outs, first, last_vector, scale, offset, bias, norm_outs);
}

// stationary_quotient_block, or square_quotient_block where the schedule's taps are a square kernel
// (float and double)
template <typename S, int VECTORS>
__attribute__((always_inline)) inline void quotient_block_by_places(const S* x, const S* w, S* const* outs,
                                                                    int64_t origin, const Stationary& schedule,
                                                                    int64_t first, int64_t last_vector,
                                                                    Compute<S> scale, Compute<S> offset,
                                                                    const S* bias, S* const* norm_outs = nullptr) {
  const int64_t spacing = schedule.spacing;
  // float and double only: GCC took minutes more to compile the unrolled widening of float16
  if constexpr (!std::is_same<S, Compute<S>>::value) {
    return stationary_quotient_block<S, VECTORS>(x, w, outs, origin, schedule, first, last_vector, scale, offset,
                                                 bias, norm_outs);
  }
  switch (schedule.square) {
    case 3:
      return square_quotient_block<S, 3, VECTORS>(x, w, outs, origin, spacing, first, last_vector, scale, offset,
                                                  bias, norm_outs);
    case 5:
      return square_quotient_block<S, 5, VECTORS>(x, w, outs, origin, spacing, first, last_vector, scale, offset,
                                                  bias, norm_outs);
    case 7:
      return square_quotient_block<S, 7, VECTORS>(x, w, outs, origin, spacing, first, last_vector, scale, offset,
                                                  bias, norm_outs);
    default:
      return stationary_quotient_block<S, VECTORS>(x, w, outs, origin, schedule, first, last_vector, scale, offset,
                                                   bias, norm_outs);
  }
}

// The blocks of a row at least a vector wide, as forward_rows cuts them: BLOCK(first, last_vector,
// vectors), vectors 1 or 2 as a std::integral_constant
template <typename S, typename Block>
__attribute__((always_inline)) inline void whole_vector_blocks(int64_t width, Block&& block) {
  constexpr int64_t kLanes = Lanes<Compute<S>>::kCount;
  if (width > kLanes && width < 2 * kLanes) {
    block(0, width - kLanes, std::integral_constant<int, 2>{});
    return;
  }
  const int64_t size = width >= 2 * kLanes ? 2 * kLanes : kLanes;
  for (int64_t start = 0; start < width; start += size) {
    const int64_t first = start + size <= width ? start : width - size;
    if (size == kLanes) {
      block(first, 0, std::integral_constant<int, 1>{});
    } else {
      block(first, kLanes, std::integral_constant<int, 2>{});
    }
  }
}

// forward_rows for kRowsTogether rows of at least a vector each, by the schedule
template <typename S, typename Out, typename Op>
void stationary_rows(const S* x, const S* w, Out* const* outs, int64_t origin, const Stationary& schedule,
                     const Geometry& g, const S* bias) {
  constexpr int64_t kLanes = Lanes<Compute<S>>::kCount;
  if (g.width > kLanes && g.width < 2 * kLanes) {
    stationary_block<S, Out, Op, 2>(x, w, outs, origin, schedule, bias, 0, g.width - kLanes);
    return;
  }
  const int64_t block = g.width >= 2 * kLanes ? 2 * kLanes : kLanes;
  for (int64_t start = 0; start < g.width; start += block) {
    const int64_t first = start + block <= g.width ? start : g.width - block;
    if (block == kLanes) {
      stationary_block<S, Out, Op, 1>(x, w, outs, origin, schedule, bias, first, 0);
    } else {
      stationary_block<S, Out, Op, 2>(x, w, outs, origin, schedule, bias, first, kLanes);
    }
  }
}

// One output plane of filter FILTER over one (sample, group) SOURCE of the padded layout, plus
// CHANNEL_BIAS where not null
template <typename S, typename Op, typename Out = S>
void forward_plane(const S* source, const S* filter, Out* plane, const Geometry& g, const S* channel_bias,
                   const Stationary* schedule = nullptr) {
  const bool narrow_rows = g.width < Lanes<Compute<S>>::kCount;
  Out* outs[kNarrowRowsTogether];
  int64_t r = 0;
  // rows of one partial vector each: twice as many together, as many reductions as two wide rows
  for (; narrow_rows && r + kNarrowRowsTogether <= g.rows; r += kNarrowRowsTogether) {
    for (int i = 0; i < kNarrowRowsTogether; ++i) outs[i] = plane + (r + i) * g.width;
    forward_rows<S, Out, Op, kNarrowRowsTogether>(source, filter, outs, g.row_offsets + r, g, channel_bias);
  }
  const bool stationary = schedule != nullptr && schedule->spacing > 0 && !narrow_rows;
  for (; r + kRowsTogether <= g.rows; r += kRowsTogether) {
    for (int i = 0; i < kRowsTogether; ++i) outs[i] = plane + (r + i) * g.width;
    const int64_t* origins = g.row_offsets + r;
    bool evenly = stationary;
    for (int i = 1; evenly && i < kRowsTogether; ++i) evenly = origins[i] - origins[0] == i * schedule->spacing;
    if (evenly) {
      stationary_rows<S, Out, Op>(source, filter, outs, origins[0], *schedule, g, channel_bias);
    } else {
      forward_rows<S, Out, Op, kRowsTogether>(source, filter, outs, origins, g, channel_bias);
    }
  }
  const auto rest = [&](auto rows) {
    for (int i = 0; i < decltype(rows)::value; ++i) outs[i] = plane + (r + i) * g.width;
    forward_rows<S, Out, Op, decltype(rows)::value>(source, filter, outs, g.row_offsets + r, g, channel_bias);
  };
  static_assert(kRowsTogether == 4, "the rest is one to three rows");
  with_rest_of_four(g.rows - r, rest);
}

template <typename S, typename Op>
void forward(const S* x, const S* w, const S* bias, S* y, const Geometry& g, const Layout* layout, int threads) {
  if (layout == nullptr && g.out_channels / g.groups >= kFilterVectors * Lanes<Compute<S>>::kCount &&
      g.taps >= kMinVectorTaps)
    return forward_filter_vectors<S, Op>(x, w, bias, y, g, threads);
  if (layout == nullptr && g.out_channels / g.groups >= kFiltersTogether)
    return forward_filter_blocks<S, Op>(x, w, bias, y, g, threads);
  if (takes_channel_vectors<S>(g, layout))
    return forward_channel_vectors<S, ReducedOutputs<Compute<S>, Op>>(x, w, nullptr, nullptr, y, bias, g, *layout,
                                                                      threads);
  const Stationary schedule = stationary_schedule(g);
  each_output_plane(x, w, y, g, layout, threads, [&](const S* source, const S* filter, S* plane, int64_t o) {
    forward_plane<S, Op>(source, filter, plane, g, bias == nullptr ? nullptr : bias + o, &schedule);
  });
}

// VALUES with the lanes from COUNT on set to zero
template <typename Vector>
__attribute__((always_inline)) inline Vector first_lanes(const Vector& values, int count) {
  using T = typename std::decay<decltype(values[0])>::type;
  constexpr int kLanes = sizeof(Vector) / sizeof(T);
  Vector lanes;
  for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = T(lane);
  return lanes < T(count) ? values : Vector{};
}

// VALUES with the lanes before SKIP set to zero: the last whole vector of a row that is no whole
// number of vectors, whose first SKIP lanes the vector before it took
template <typename Vector>
__attribute__((always_inline)) inline Vector lanes_from(const Vector& values, int skip) {
  using T = typename std::decay<decltype(values[0])>::type;
  constexpr int kLanes = sizeof(Vector) / sizeof(T);
  Vector lanes;
  for (int lane = 0; lane < kLanes; ++lane) lanes[lane] = T(lane);
  return lanes >= T(skip) ? values : Vector{};
}

// Each tap's weight gradient, kept as a vector over the lanes (see backward_plane), summed across
// its lanes, times SIGN, into GRAD_W
template <typename T>
__attribute__((always_inline)) inline void add_tap_sums(const typename Lanes<T>::Vector* tap_grads, T* grad_w, const Geometry& g, T sign) {
  constexpr int kLanes = Lanes<T>::kCount;
  for (int64_t t = 0; t < g.taps; ++t) {
    T weight_grad = 0;
    for (int lane = 0; lane < kLanes; ++lane) weight_grad += tap_grads[t][lane];
    grad_w[g.weight_index[t]] += weight_grad * sign;
  }
}

// one output channel's gradient into its group's padded input gradient and its weight gradient,
// both accumulated in the compute type T (the tropical pair: tropical_backward_plane)
template <typename S, typename Op>
void backward_plane(const S* __restrict x, const S* __restrict w, const S* __restrict grad,
                    Compute<S>* __restrict grad_x, Compute<S>* __restrict grad_w, const Geometry& g,
                    typename Lanes<Compute<S>>::Vector* __restrict tap_grads) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  const int64_t s = g.step;
  // each tap's weight gradient stays a vector over the rows, its lanes summed once at the end: a
  // sum across the lanes per row and tap, one dependent addition after another, took most of
  // the time on rows a few vectors wide
  std::fill(tap_grads, tap_grads + g.taps, Vector{});
  for (int64_t r = 0; r < g.rows; ++r) {
    const S* __restrict grad_row = grad + r * g.width;
    for (int64_t t = 0; t < g.taps; ++t) {
      const int64_t offset = g.row_offsets[r] + g.tap_offsets[t];
      const S* __restrict source = x + offset;
      T* __restrict target = grad_x + offset;
      const T weight = widen(w[g.weight_index[t]]);
      // the row's sum in a register, added to the tap's vector once
      Vector weight_grads{};
      {
        int64_t i = 0;
        // the contiguous case apart: with the strided scatter in the same loop, GCC kept an
        // address per lane live and stepped all of them on every vector
        if (s == 1) {
          for (; i + kLanes <= g.width; i += kLanes) {
            Vector dx, dw;
            Op::partials(load(source + i, 1), weight, load(grad_row + i, 1), dx, dw);
            Vector sums = load(target + i, 1) + dx;
            std::memcpy(target + i, &sums, sizeof(sums));
            weight_grads += dw;
          }
        } else {
          for (; i + kLanes <= g.width; i += kLanes) {
            Vector dx, dw;
            Op::partials(load(source + i * s, s), weight, load(grad_row + i, 1), dx, dw);
            for (int lane = 0; lane < kLanes; ++lane) target[(i + lane) * s] += dx[lane];
            weight_grads += dw;
          }
        }
        if (i < g.width && g.width >= kLanes) {
          // the row's last whole vector, its lanes before SKIP those the vector before took: a
          // partial vector's lanes went one by one where the compiler does not target AVX-512
          const int64_t start = g.width - kLanes;
          const int skip = static_cast<int>(i - start);
          Vector dx, dw;
          Op::partials(load(source + start * s, s), weight, load(grad_row + start, 1), dx, dw);
          dx = lanes_from(dx, skip);
          if (s == 1) {
            store(target + start, load(target + start, 1) + dx);
          } else {
            for (int lane = skip; lane < kLanes; ++lane) target[(start + lane) * s] += dx[lane];
          }
          // lanes_from selects: a zero times an infinite weight would be NaN
          weight_grads += lanes_from(dw, skip);
        } else if (i < g.width) {
          // the row's last outputs in one partial vector: a scalar tail cost as much as the
          // whole vectors on rows a few vectors wide (56, 28 or 14 outputs)
          const int count = static_cast<int>(g.width - i);
          Vector dx, dw;
          Op::partials(load_partial(source + i * s, s, count), weight, load_partial(grad_row + i, 1, count), dx, dw);
          if (s == 1) {
            store_partial(target + i, load_partial(target + i, 1, count) + dx, count);
          } else {
            for (int lane = 0; lane < count; ++lane) target[(i + lane) * s] += dx[lane];
          }
          // the lanes past COUNT met a zero gradient, but 0 times an infinite weight is NaN
          weight_grads += first_lanes(dw, count);
        }
      }
      tap_grads[t] += weight_grads;
    }
  }
  add_tap_sums(tap_grads, grad_w, g, T(1));
}

// The tropical pair's backward of one output channel (as backward_plane's): each output's winner,
// the first tap whose term is the largest (max_plus; the smallest for min_plus) or the first NaN,
// found with the terms in registers, VECTORS vectors of a row at a time, then the output's
// gradient added to the input place and the weight column that tap reads. The taps are met once
// per output, and the gradient once per output, where finding the winner tap by tap against the
// forward's output read and wrote the input gradient and a mark per output at every tap; the
// forward's output is not read (nor recomputed). Computed in T, as the forward computes.
template <typename S, typename Op, int VECTORS>
__attribute__((always_inline)) inline void winners_block(const S* x, const Compute<S>* weights, const S* grad_row,
                                                         Compute<S>* grad_x, Compute<S>* grad_w, const Geometry& g,
                                                         int64_t origin, const int64_t* firsts, int skip, int count) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  const int64_t s = g.step;
  Vector best[VECTORS], winner[VECTORS];
  for (int v = 0; v < VECTORS; ++v) {
    best[v] = Vector{} + Op::start();
    winner[v] = Vector{};
  }
  for (int64_t t = 0; t < g.taps; ++t) {
    const S* source = x + origin + g.tap_offsets[t];
    const Vector tap = Vector{} + T(t);
    for (int v = 0; v < VECTORS; ++v) {
      const Vector values = count < kLanes ? load_partial(source + firsts[v] * s, s, count)
                                           : load(source + firsts[v] * s, s);
      const Vector value = Op::term(values, weights[t]);
      const auto better = Op::better(value, best[v]);
      best[v] = better ? value : best[v];
      winner[v] = better ? tap : winner[v];
    }
  }
  for (int v = 0; v < VECTORS; ++v) {
    const int first = v == VECTORS - 1 ? skip : 0;
    for (int lane = first; lane < count; ++lane) {
      const int64_t i = firsts[v] + lane;
      const int64_t t = static_cast<int64_t>(winner[v][lane]);
      const T gradient = widen(grad_row[i]);
      grad_x[origin + g.tap_offsets[t] + i * s] += gradient;
      grad_w[g.weight_index[t]] += Op::kWeightSign * gradient;
    }
  }
}

template <typename S, typename Op>
void tropical_backward_plane(const S* __restrict x, const S* __restrict w, const S* __restrict grad,
                             Compute<S>* __restrict grad_x, Compute<S>* __restrict grad_w, const Geometry& g,
                             std::vector<Compute<S>>& weights) {
  using T = Compute<S>;
  constexpr int kLanes = Lanes<T>::kCount;
  for (int64_t t = 0; t < g.taps; ++t) weights[t] = widen(w[g.weight_index[t]]);
  for (int64_t r = 0; r < g.rows; ++r) {
    const S* grad_row = grad + r * g.width;
    const int64_t origin = g.row_offsets[r];
    if (g.width < kLanes) {
      const int64_t firsts[1] = {0};
      winners_block<S, Op, 1>(x, weights.data(), grad_row, grad_x, grad_w, g, origin, firsts, 0,
                              static_cast<int>(g.width));
      continue;
    }
    // two vectors at a time (two independent chains of compares), the row's last vector ending
    // at its end, its lanes the vector before took skipped
    int64_t i = 0;
    for (; i + 2 * kLanes <= g.width; i += 2 * kLanes) {
      const int64_t firsts[2] = {i, i + kLanes};
      winners_block<S, Op, 2>(x, weights.data(), grad_row, grad_x, grad_w, g, origin, firsts, 0, kLanes);
    }
    if (i + kLanes < g.width) {
      const int64_t firsts[2] = {i, g.width - kLanes};
      winners_block<S, Op, 2>(x, weights.data(), grad_row, grad_x, grad_w, g, origin, firsts,
                              static_cast<int>(i + kLanes - (g.width - kLanes)), kLanes);
    } else if (i < g.width) {
      const int64_t firsts[1] = {g.width - kLanes};
      winners_block<S, Op, 1>(x, weights.data(), grad_row, grad_x, grad_w, g, origin, firsts,
                              static_cast<int>(i - (g.width - kLanes)), kLanes);
    }
  }
}

// The places a gathered backward lays out before a plane (see gathered_backward_plane): its
// largest tap offset (a block of vectors goes after it)
inline int64_t gather_margin(const Geometry& g) { return *std::max_element(g.tap_offsets, g.tap_offsets + g.taps); }
constexpr int kGatherVectors = 4;
// taps whose weight-gradient sums the gathered backward takes together
constexpr int kTapBlock = 8;

// Whether a layer's backward gathers (gathered_backward_plane): one input channel and one filter
// per group, laid out by the loops at unit stride, its outputs' fields starting at a third of the
// plane's places or more, where a stride leaves a quarter or fewer (and a phase per stride step)
// for the gather to sum over every place
inline bool gathers_backward(const Geometry& g, const Layout* layout) {
  return layout != nullptr && g.channels == g.groups && g.out_channels == g.groups && g.step == 1 &&
         layout->phases == 1 && 3 * g.rows * g.width >= g.plane;
}

// The backward of a depthwise group at unit stride whose filter is finite, gathered: the
// standard product's (backward_plane's for Dot) or, with RADIAL, the cosine's
// (cosine_backward_plane's). A (the output gradient, or for the cosine the gradient over D) and R
// (the cosine's radial term) laid into EA and ER at the places of the padded plane where their
// outputs' fields start (MARGIN places in, zero elsewhere), each place's input gradient is the sum
// over taps of A w (- x R) at the places that read it, summed in registers over the taps and
// stored once into GRAD_X, where the scatter form added into it tap by tap through memory, each
// tap's loads waiting on the stores of the tap before. The weight's gradient is, per tap, A times
// x shifted by the tap, as there. A zero A times an infinite weight would give NaN where the
// scatter adds nothing: hence a finite filter.
//
// With RADIAL and a K x K kernel at dilation 1 (SQUARE = K, rows SPACING apart; else 0), the box
// sum of R is taken by rows: EH holds at each place the sum of the K places of ER that end there,
// and each place's box is the sum of K of those, K rows apart: 2 K loads a place, where the
// taps' box took K^2
template <typename S, bool RADIAL>
void gathered_backward_plane(const S* __restrict x, const S* __restrict w, const S* __restrict along,
                             const S* __restrict radial, S* __restrict grad_x, S* __restrict grad_w,
                             const Geometry& g, S* __restrict ea, S* __restrict er, int64_t margin,
                             typename Lanes<S>::Vector* __restrict tap_grads, int square = 0,
                             int64_t spacing = 0, S* __restrict eh = nullptr) {
  using Vector = typename Lanes<S>::Vector;
  constexpr int kLanes = Lanes<S>::kCount;
  constexpr int kTogether = kGatherVectors;
  // the same places for every plane: the others stay zero
  for (int64_t r = 0; r < g.rows; ++r) {
    std::memcpy(ea + margin + g.row_offsets[r], along + r * g.width, g.width * sizeof(S));
    if constexpr (RADIAL) std::memcpy(er + margin + g.row_offsets[r], radial + r * g.width, g.width * sizeof(S));
  }
  const bool by_rows = RADIAL && square > 0;
  if (by_rows) {
    // the places the boxes below read: from the first kernel row's reach to the plane's end
    // (whole vectors past it read ER's zero tail)
    for (int64_t p = margin - (square - 1) * spacing; p < margin + g.plane; p += kLanes) {
      Vector sum{};
      for (int k = 0; k < square; ++k) sum += load(er + p - k, 1);
      std::memcpy(eh + p, &sum, sizeof(sum));
    }
  }
  int64_t q = 0;
  for (; q + kTogether * kLanes <= g.plane; q += kTogether * kLanes) {
    Vector dots[kTogether] = {}, boxes[kTogether] = {};
    for (int64_t t = 0; t < g.taps; ++t) {
      const S weight = w[g.weight_index[t]];
      const int64_t at = margin + q - g.tap_offsets[t];
      for (int j = 0; j < kTogether; ++j) {
        dots[j] += load(ea + at + j * kLanes, 1) * weight;
        if (RADIAL && !by_rows) boxes[j] += load(er + at + j * kLanes, 1);
      }
    }
    if (by_rows) {
      for (int k = 0; k < square; ++k) {
        const int64_t at = margin + q - k * spacing;
        for (int j = 0; j < kTogether; ++j) boxes[j] += load(eh + at + j * kLanes, 1);
      }
    }
    for (int j = 0; j < kTogether; ++j) {
      Vector result = dots[j];
      if constexpr (RADIAL) result -= load(x + q + j * kLanes, 1) * boxes[j];
      std::memcpy(grad_x + q + j * kLanes, &result, sizeof(result));
    }
  }
  for (; q < g.plane; q += kLanes) {
    const int count = static_cast<int>(std::min<int64_t>(kLanes, g.plane - q));
    Vector dot{}, box{};
    for (int64_t t = 0; t < g.taps; ++t) {
      dot += load_partial(ea + margin + q - g.tap_offsets[t], 1, count) * w[g.weight_index[t]];
      if (RADIAL && !by_rows) box += load_partial(er + margin + q - g.tap_offsets[t], 1, count);
    }
    if (by_rows) {
      for (int k = 0; k < square; ++k) box += load_partial(eh + margin + q - k * spacing, 1, count);
    }
    if constexpr (RADIAL) dot -= load_partial(x + q, 1, count) * box;
    store_partial(grad_x + q, dot, count);
  }
  // the weight's gradient, per tap the sum over places of A times x shifted by the tap: the taps
  // kTapBlock at a time, a sum each, every vector of A loaded once per block and meeting each of
  // its taps, so that the multiply-adds in flight are independent; one tap's sums alone (four,
  // by place modulo four) waited on their latency on rows of a vector or two
  for (int64_t t0 = 0; t0 < g.taps; t0 += kTapBlock) {
    const int64_t count = std::min<int64_t>(kTapBlock, g.taps - t0);
    const int64_t* offsets = g.tap_offsets + t0;
    Vector sums[kTapBlock] = {};
    for (int64_t r = 0; r < g.rows; ++r) {
      const S* a = along + r * g.width;
      const S* row = x + g.row_offsets[r];
      int64_t i = 0;
      for (; i + kLanes <= g.width; i += kLanes) {
        const Vector values = load(a + i, 1);
        for (int j = 0; j < kTapBlock; ++j) {
          if (j < count) sums[j] += values * load(row + offsets[j] + i, 1);
        }
      }
      if (i < g.width) {
        const int remaining = static_cast<int>(g.width - i);
        // the lanes past REMAINING are zero in both
        const Vector values = load_partial(a + i, 1, remaining);
        for (int j = 0; j < kTapBlock; ++j) {
          if (j < count) sums[j] += values * load_partial(row + offsets[j] + i, 1, remaining);
        }
      }
    }
    for (int64_t j = 0; j < count; ++j) tap_grads[t0 + j] = sums[j];
  }
  add_tap_sums(tap_grads, grad_w, g, S(1));
}

// Threads split (sample, group) pairs: each writes only its group's input gradient, and each
// sample its own weight-gradient slice (summed over samples by the caller). The narrower types
// accumulate both in T buffers of the thread's own, rounded once into grad_x and grad_w (which
// the caller zero filled, as the wider types add into them in place). Given a LAYOUT (not null),
// x and grad_x are unpadded, as in the forward's each_output_plane: each thread lays out one
// (sample, group) of x into a buffer of its own, accumulates its gradient in another and crops
// that into grad_x, all in cache, where the padded copies of x and of its gradient went to memory
// and back. Y, the forward's output, is not read: the tropical pair finds its winners itself
// (tropical_backward_plane).
template <typename S, typename Op>
void backward(const S* x, const S* w, const S* /* y */, const S* grad, S* grad_x, S* grad_w, const Geometry& g,
              const Layout* layout, int threads) {
  using T = Compute<S>;
  using E = Bits<S>;
  constexpr bool kSameType = std::is_same<S, T>::value;
  const bool in_place = kSameType && layout == nullptr;
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t pairs = g.batch * g.groups, output_plane = g.rows * g.width;
  const int64_t group_elements = per_group_in * g.plane;
  const int64_t input_plane = layout != nullptr ? unpadded_plane(*layout) : g.plane;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> weights(Op::kWinner ? g.taps : 0);
    std::vector<T> input_grads(in_place ? 0 : group_elements);
    std::vector<T> weight_grads(kSameType ? 0 : g.taps);
    std::vector<typename Lanes<T>::Vector> tap_grads(g.taps);
    // zero filled once: the planes laid out into it write the same interior places only
    std::vector<E> laid_out(layout != nullptr ? group_elements : 0);
    // the standard product's depthwise backward at unit stride gathers (gathered_backward_plane)
    constexpr bool kGathers = kSameType && std::is_same<Op, Dot<T>>::value;
    const bool gathers = kGathers && gathers_backward(g, layout);
    const int64_t margin = gathers ? gather_margin(g) : 0;
    std::vector<T> gathered(gathers ? margin + g.plane + kGatherVectors * Lanes<T>::kCount : 0);
#pragma omp for schedule(static)
    for (int64_t index = 0; index < pairs; ++index) {
      const int64_t b = index / g.groups, group = index % g.groups;
      const int64_t input_at = (b * g.channels + group * per_group_in) * input_plane;
      const S* source = x + input_at;
      if (layout != nullptr) {
        const E* input = reinterpret_cast<const E*>(source);
        lay_out_group(input, laid_out.data(), per_group_in, g.plane, *layout);
        source = reinterpret_cast<const S*>(laid_out.data());
      }
      T* group_grad = input_grads.data();
      if (in_place) {
        group_grad = reinterpret_cast<T*>(grad_x + input_at);
      } else {
        std::fill(input_grads.begin(), input_grads.end(), T(0));
      }
      for (int64_t j = 0; j < per_group_out; ++j) {
        const int64_t o = group * per_group_out + j;
        const int64_t output_at = (b * g.out_channels + o) * output_plane;
        S* filter_grad = grad_w + (b * g.out_channels + o) * g.taps;
        T* channel_grad = weight_grads.data();
        if constexpr (kSameType) {
          channel_grad = filter_grad;
        } else {
          std::fill(weight_grads.begin(), weight_grads.end(), T(0));
        }
        if constexpr (Op::kWinner) {
          tropical_backward_plane<S, Op>(source, w + o * g.taps, grad + output_at, group_grad, channel_grad, g,
                                         weights);
        } else if constexpr (kGathers) {
          if (gathers && all_finite(w + o * g.taps, g.taps)) {
            gathered_backward_plane<S, false>(source, w + o * g.taps, grad + output_at, nullptr, group_grad,
                                              channel_grad, g, gathered.data(), nullptr, margin, tap_grads.data());
          } else {
            backward_plane<S, Op>(source, w + o * g.taps, grad + output_at, group_grad, channel_grad, g,
                                  tap_grads.data());
          }
        } else {
          backward_plane<S, Op>(source, w + o * g.taps, grad + output_at, group_grad, channel_grad, g,
                                tap_grads.data());
        }
        if constexpr (!kSameType)
          for (int64_t t = 0; t < g.taps; ++t) filter_grad[t] = narrow<S>(weight_grads[t]);
      }
      if (layout != nullptr) {
        crop_group(input_grads.data(), grad_x + input_at, per_group_in, g.plane, *layout);
      } else if (!in_place) {
        for (int64_t e = 0; e < group_elements; ++e) grad_x[input_at + e] = narrow<S>(input_grads[e]);
      }
    }
  }
}

// The cosine family in one pass: each output's p . w and |p|^2 (the field's sum of squares over
// the group's channels and the kernel's taps) accumulate from the same loads, and only
// (p . w) / (|p| scale + offset) is stored. A zero field gives 0 / offset (0 for eps > 0); NaN
// and inf flow through as in that formula.
template <typename S, int VECTORS, int ROWS, bool PARTIAL>
__attribute__((always_inline)) inline void quotient_block(const S* x, const S* w, S* const* outs, const int64_t* origins, const Geometry& g,
                           int64_t first, int count, Compute<S> scale, Compute<S> offset, const S* bias,
                           int64_t last_vector = (VECTORS - 1) * Lanes<Compute<S>>::kCount,
                           S* const* norm_outs = nullptr) {
  using T = Compute<S>;
  using Vector = typename Lanes<T>::Vector;
  constexpr int kLanes = Lanes<T>::kCount;
  // where each vector starts, after FIRST: the last at LAST_VECTOR (as in forward_block)
  const auto at = [last_vector](int v) { return v == VECTORS - 1 ? last_vector : int64_t(v) * kLanes; };
  Vector products[ROWS][VECTORS], squares[ROWS][VECTORS];
  for (int r = 0; r < ROWS; ++r) {
    for (int v = 0; v < VECTORS; ++v) products[r][v] = squares[r][v] = Vector{};
  }
  for (int64_t t = 0; t < g.taps; ++t) {
    const int64_t tap = g.tap_offsets[t] + first * g.step;
    const T weight = widen(w[g.weight_index[t]]);
#pragma GCC unroll 8
    for (int r = 0; r < ROWS; ++r) {
      const S* source = x + origins[r] + tap;
#pragma GCC unroll 8
      for (int v = 0; v < VECTORS; ++v) {
        // whole vectors take load's constant default count
        const Vector values = PARTIAL && v == VECTORS - 1 ? load_partial(source + at(v) * g.step, g.step, count)
                                                          : load(source + at(v) * g.step, g.step);
        products[r][v] += values * weight;
        squares[r][v] += values * values;
      }
    }
  }
  store_quotients<S, VECTORS, ROWS, PARTIAL>(products, squares, outs, first, last_vector, scale, offset, bias,
                                             norm_outs, count);
}

// ROWS output rows of the quotient for one filter, cut into blocks as forward_rows cuts them
// (and |p| into NORM_OUTS where not null)
template <typename S, int ROWS>
void quotient_rows(const S* x, const S* w, S* const* outs, const int64_t* origins, const Geometry& g,
                   Compute<S> scale, Compute<S> offset, const S* bias, S* const* norm_outs = nullptr) {
  constexpr int64_t kLanes = Lanes<Compute<S>>::kCount;
  const int64_t block = g.width >= 2 * kLanes ? 2 * kLanes : kLanes;
  if (g.width < kLanes) {
    quotient_block<S, 1, ROWS, true>(x, w, outs, origins, g, 0, static_cast<int>(g.width), scale, offset, bias,
                                     0, norm_outs);
    return;
  }
  if (g.width > kLanes && g.width < 2 * kLanes) {
    // one block of two overlapping vectors: twice the independent sums of one vector at a time
    quotient_block<S, 2, ROWS, false>(x, w, outs, origins, g, 0, kLanes, scale, offset, bias, g.width - kLanes,
                                      norm_outs);
    return;
  }
  for (int64_t start = 0; start < g.width; start += block) {
    const int64_t first = start + block <= g.width ? start : g.width - block;
    if (block == kLanes) {
      quotient_block<S, 1, ROWS, false>(x, w, outs, origins, g, first, kLanes, scale, offset, bias, 0, norm_outs);
    } else {
      quotient_block<S, 2, ROWS, false>(x, w, outs, origins, g, first, kLanes, scale, offset, bias, kLanes,
                                        norm_outs);
    }
  }
}

// The cosine backward's recomputation on a depthwise plane (one filter per group, S float or
// double): y = p . w / (|p| SCALE + OFFSET) into Y and |p| into NORMS, in one pass over the taps
// where the four-row quotient takes the rows (AVX-512, rows at least a vector wide), else tap by
// tap (quotient_block)
template <typename S>
void quotient_and_norms_plane(const S* source, const S* filter, S* y, S* norms, const Geometry& g, S scale,
                              S offset, const Stationary& schedule) {
  int64_t r = 0;
  if (kVectorBytes == 64 && schedule.spacing > 0 && g.width >= Lanes<S>::kCount) {
    S* outs[kRowsTogether];
    S* norm_outs[kRowsTogether];
    for (; r + kRowsTogether <= g.rows; r += kRowsTogether) {
      const int64_t* origins = g.row_offsets + r;
      bool evenly = true;
      for (int i = 1; evenly && i < kRowsTogether; ++i) evenly = origins[i] - origins[0] == i * schedule.spacing;
      if (!evenly) break;
      for (int i = 0; i < kRowsTogether; ++i) {
        outs[i] = y + (r + i) * g.width;
        norm_outs[i] = norms + (r + i) * g.width;
      }
      whole_vector_blocks<S>(g.width, [&](int64_t first, int64_t last_vector, auto vectors) {
        quotient_block_by_places<S, decltype(vectors)::value>(source, filter, outs, origins[0], schedule, first,
                                                               last_vector, scale, offset, nullptr, norm_outs);
      });
    }
  }
  // the other rows: both sums tap by tap, four rows together, then the last one to three
  S* outs[kRowsTogether];
  S* norm_outs[kRowsTogether];
  const auto rows = [&](auto together) {
    constexpr int kTogether = decltype(together)::value;
    for (int i = 0; i < kTogether; ++i) {
      outs[i] = y + (r + i) * g.width;
      norm_outs[i] = norms + (r + i) * g.width;
    }
    quotient_rows<S, kTogether>(source, filter, outs, g.row_offsets + r, g, scale, offset, nullptr, norm_outs);
    r += kTogether;
  };
  while (r + kRowsTogether <= g.rows) rows(std::integral_constant<int, kRowsTogether>{});
  static_assert(kRowsTogether == 4, "the rest is one to three rows");
  with_rest_of_four(g.rows - r, rows);
}

// The cosine's backward_plane for a group of one filter (depthwise): at every tap, A w - R x into
// the input gradient and A x into the weight's (the dot's and the Radial backward's terms), in
// one pass over the taps where the two took two
template <typename S>
void cosine_backward_plane(const S* __restrict x, const S* __restrict w, const S* __restrict along,
                           const S* __restrict radial, S* __restrict grad_x, S* __restrict grad_w, const Geometry& g,
                           typename Lanes<S>::Vector* __restrict tap_grads) {
  using Vector = typename Lanes<S>::Vector;
  constexpr int kLanes = Lanes<S>::kCount;
  const int64_t s = g.step;
  std::fill(tap_grads, tap_grads + g.taps, Vector{});
  for (int64_t r = 0; r < g.rows; ++r) {
    const S* __restrict along_row = along + r * g.width;
    const S* __restrict radial_row = radial + r * g.width;
    for (int64_t t = 0; t < g.taps; ++t) {
      const int64_t offset = g.row_offsets[r] + g.tap_offsets[t];
      const S* __restrict source = x + offset;
      S* __restrict target = grad_x + offset;
      const S weight = w[g.weight_index[t]];
      Vector weight_grads{};
      int64_t i = 0;
      // the contiguous case apart, as in backward_plane
      if (s == 1) {
        for (; i + kLanes <= g.width; i += kLanes) {
          const Vector values = load(source + i, 1), a = load(along_row + i, 1);
          Vector sums = load(target + i, 1) + (a * weight - load(radial_row + i, 1) * values);
          std::memcpy(target + i, &sums, sizeof(sums));
          weight_grads += a * values;
        }
      } else {
        for (; i + kLanes <= g.width; i += kLanes) {
          const Vector values = load(source + i * s, s), a = load(along_row + i, 1);
          const Vector dx = a * weight - load(radial_row + i, 1) * values;
          for (int lane = 0; lane < kLanes; ++lane) target[(i + lane) * s] += dx[lane];
          weight_grads += a * values;
        }
      }
      if (i < g.width) {
        const int count = static_cast<int>(g.width - i);
        const Vector values = load_partial(source + i * s, s, count), a = load_partial(along_row + i, 1, count);
        const Vector dx = a * weight - load_partial(radial_row + i, 1, count) * values;
        if (s == 1) {
          store_partial(target + i, load_partial(target + i, 1, count) + dx, count);
        } else {
          for (int lane = 0; lane < count; ++lane) target[(i + lane) * s] += dx[lane];
        }
        // the lanes past COUNT are zero: a and x both loaded as 0
        weight_grads += a * values;
      }
      tap_grads[t] += weight_grads;
    }
  }
  add_tap_sums(tap_grads, grad_w, g, S(1));
}

// The cosine's input and weight gradients on a grouped layer, given the unpadded input and its
// LAYOUT (see tap_cosine.py for the formulas): per (sample, group), in the thread's buffers, |p|
// of every field, then per filter o its products p . w, D = |p| scale[o] + offset[o], a = grad / D
// and y = p . w / D; the loops' dot backward of a goes into the input and weight gradients, and
// sum over the group's filters of a y scale[o] / |p| (0 where |p| is 0) into the radial gradient
// minus that times x (the Radial backward, over every tap of the group's channels). The weight's
// gradient per sample (GRAD_W, (B, O, taps), which the caller sums over samples) gets its radial
// term there too: minus the sum over positions of a y |p| times w / scale[o] (0 where scale[o] is
// 0), where a pass of small tensor operations per call took it from a (B, O) sum.
// Where the composition made and kept several output-sized tensors, nothing leaves the cache
// but the gradients. KEPT, where not null, is y as the forward kept it (B, O, rows, width): a
// dense layer's products are not recomputed. S is float or double (the narrower types keep the
// composition).
template <typename S>
void cosine_backward(const S* x, const S* w, const S* scale, const S* offset, const S* kept, const S* grad,
                     S* grad_x, S* grad_w, const Geometry& g, const Layout& layout, int threads) {
  static_assert(std::is_same<S, Compute<S>>::value, "float and double only");
  using T = S;
  using E = Bits<S>;
  using Vector = typename Lanes<T>::Vector;
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t pairs = g.batch * g.groups, output_plane = g.rows * g.width;
  const int64_t group_elements = per_group_in * g.plane;
  const int64_t input_plane = unpadded_plane(layout);
  const Stationary schedule = stationary_schedule(g);
#pragma omp parallel num_threads(threads)
  {
    // zero filled once: the planes laid out into it write the same interior places only
    std::vector<E> laid_out(group_elements);
    std::vector<T> input_grads(group_elements), norms(output_plane), scaled(output_plane), radial_grads(output_plane);
    std::vector<T> no_weight_grads(g.taps);
    std::vector<Vector> tap_grads(g.taps);
    const bool gathers = gathers_backward(g, &layout);
    const int64_t margin = gathers ? gather_margin(g) : 0;
    const int64_t gathered = gathers ? margin + g.plane + kGatherVectors * Lanes<T>::kCount : 0;
    std::vector<T> gathered_a(gathered), gathered_r(gathered), gathered_rows(gathered);
#pragma omp for schedule(static)
    for (int64_t index = 0; index < pairs; ++index) {
      const int64_t b = index / g.groups, group = index % g.groups;
      const int64_t input_at = (b * g.channels + group * per_group_in) * input_plane;
      const E* input = reinterpret_cast<const E*>(x + input_at);
      lay_out_group(input, laid_out.data(), per_group_in, g.plane, layout);
      const S* source = reinterpret_cast<const S*>(laid_out.data());
      std::fill(input_grads.begin(), input_grads.end(), T(0));
      std::fill(radial_grads.begin(), radial_grads.end(), T(0));
      const S* group_filters = w + group * per_group_out * g.taps;
      // a depthwise group's y and |p| in one pass; else |p| once for the group's filters
      const bool together = per_group_out == 1 && kept == nullptr;
      if (together) {
        quotient_and_norms_plane<S>(source, group_filters, scaled.data(), norms.data(), g, scale[group], offset[group],
                                    schedule);
      } else {
        forward_plane<S, Squares<T>>(source, group_filters, norms.data(), g, nullptr, &schedule);
        for (int64_t v = 0; v < output_plane; ++v) norms[v] = std::sqrt(norms[v]);
      }
      for (int64_t j = 0; j < per_group_out; ++j) {
        const int64_t o = group * per_group_out + j;
        const S* incoming = grad + (b * g.out_channels + o) * output_plane;
        // y = p . w / D, or the kept y, into SCALED (a depthwise group's is there already); then
        // a = grad / D in its place
        T* __restrict products = scaled.data();
        T* __restrict to_radial = radial_grads.data();
        const T* __restrict field_norms = norms.data();
        const T filter_scale = scale[o], filter_offset = offset[o];
        if (kept != nullptr) {
          std::memcpy(products, kept + (b * g.out_channels + o) * output_plane, output_plane * sizeof(T));
        } else if (!together) {
          forward_plane<S, Dot<T>>(source, w + o * g.taps, products, g, nullptr, &schedule);
#pragma omp simd
          for (int64_t v = 0; v < output_plane; ++v) products[v] /= field_norms[v] * filter_scale + filter_offset;
        }
        T radial_sum = 0;
#pragma omp simd reduction(+ : radial_sum)
        for (int64_t v = 0; v < output_plane; ++v) {
          const T a = incoming[v] / (field_norms[v] * filter_scale + filter_offset);
          const T ay = a * products[v];
          products[v] = a;
          to_radial[v] += field_norms[v] == 0 ? T(0) : ay * filter_scale / field_norms[v];
          radial_sum += ay * field_norms[v];
        }
        S* filter_grad = grad_w + (b * g.out_channels + o) * g.taps;
        if (filter_scale != T(0)) {
          // w / |w| as torch would divide it (the composed form's direction), then times the sum
          for (int64_t t = 0; t < g.taps; ++t) filter_grad[t] -= radial_sum * (w[o * g.taps + t] / filter_scale);
        }
        if (gathers && all_finite(w + o * g.taps, g.taps)) {
          gathered_backward_plane<S, true>(source, w + o * g.taps, products, to_radial, input_grads.data(),
                                           filter_grad, g, gathered_a.data(), gathered_r.data(), margin,
                                           tap_grads.data(), schedule.square, schedule.spacing,
                                           gathered_rows.data());
        } else if (per_group_out == 1) {
          cosine_backward_plane(source, w + o * g.taps, products, to_radial, input_grads.data(), filter_grad, g,
                                tap_grads.data());
        } else {
          backward_plane<S, Dot<T>>(source, w + o * g.taps, products, input_grads.data(), filter_grad, g,
                                    tap_grads.data());
        }
      }
      if (per_group_out > 1)
        backward_plane<S, Radial<T>>(source, group_filters, radial_grads.data(), input_grads.data(),
                                     no_weight_grads.data(), g, tap_grads.data());
      crop_group(input_grads.data(), grad_x + input_at, per_group_in, g.plane, layout);
    }
  }
}

// The quotient's last step on one filter's dot plane of COUNT fields: each divided in place by its
// field's |p| (NORMS) times FACTOR plus ADDED, then SHIFT (the bias) added
template <typename S>
inline void divide_by_norms(S* plane, const S* norms, int64_t count, S factor, S added, S shift) {
#pragma omp simd
  for (int64_t i = 0; i < count; ++i) plane[i] = plane[i] / (norms[i] * factor + added) + shift;
}

// Each field's |p|^2 into SQUARES (batch, groups, output plane) for a layer of G on an input X laid
// out already: x^2 summed over each group's channels place by place (one plane per (sample,
// group), in the input's layout), then the kernel's box over it (the taps of the group's first
// channel, a weight of ones)
template <typename S>
void channel_box_squares(const S* x, S* squares, const Geometry& g, int threads) {
  const int64_t per_group_in = g.channels / g.groups, kernel = g.taps / per_group_in;
  std::vector<S> channel_squares(g.batch * g.groups * g.plane);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t index = 0; index < g.batch * g.groups; ++index) {
    S* __restrict target = channel_squares.data() + index * g.plane;
    const S* __restrict source = x + index * per_group_in * g.plane;
#pragma omp simd
    for (int64_t i = 0; i < g.plane; ++i) target[i] = source[i] * source[i];
    for (int64_t c = 1; c < per_group_in; ++c) {
      const S* __restrict channel = source + c * g.plane;
#pragma omp simd
      for (int64_t i = 0; i < g.plane; ++i) target[i] += channel[i] * channel[i];
    }
  }
  // the box: the taps of the group's first channel (offsets within one plane), a weight of ones
  std::vector<int64_t> box_offsets, box_columns;
  for (int64_t t = 0; t < g.taps; ++t) {
    if (g.weight_index[t] < kernel) {
      box_offsets.push_back(g.tap_offsets[t]);
      box_columns.push_back(g.weight_index[t]);
    }
  }
  Geometry box = g;
  box.channels = box.out_channels = g.groups;
  box.taps = kernel;
  box.tap_offsets = box_offsets.data();
  box.weight_index = box_columns.data();
  const std::vector<S> ones(g.groups * kernel, S(1));
  forward<S, Dot<S>>(channel_squares.data(), ones.data(), nullptr, squares, box, nullptr, threads);
}

// The quotient of a layer whose dot the filter blocks or the filter vectors take (an input laid out
// already, several filters per group): every filter's dot by them, then each field's |p|^2 once per
// group, then the division in place. From kMinChannelSquares channels per group |p|^2 is the
// kernel's box sum of x^2 summed over the group's channels, place by place, first: a few taps per
// field where the sum of squares over every tap of the field took as many as the dot (and on rows
// narrower than a vector, lane by lane without AVX-512); with fewer (a first layer's three), the
// extra pass over the input cost more than it saved. The one pass (quotient_block) sums |p|^2
// again for every filter and takes the filters one at a time. Float and double only: a narrower
// type would round the dot before the division.
constexpr int64_t kMinChannelSquares = 8;
template <typename S>
void quotient_of_sums(const S* x, const S* w, const S* scale, const S* offset, S* y, const S* bias,
                      const Geometry& g, int threads) {
  forward<S, Dot<S>>(x, w, nullptr, y, g, nullptr, threads);
  const int64_t per_group_in = g.channels / g.groups;
  const int64_t plane = g.rows * g.width, per_group_out = g.out_channels / g.groups;
  std::vector<S> squares(g.batch * g.groups * plane);
  if (per_group_in < kMinChannelSquares) {
    Geometry per_group = g;
    per_group.out_channels = g.groups;
    const std::vector<S> ones(g.groups * g.taps, S(1));
    forward<S, Squares<S>>(x, ones.data(), nullptr, squares.data(), per_group, nullptr, threads);
  } else {
    channel_box_squares(x, squares.data(), g, threads);
  }
  // |p| once per field, where the division below meets each field once per filter
  S* norms = squares.data();
#pragma omp parallel for simd num_threads(threads) schedule(static)
  for (int64_t i = 0; i < g.batch * g.groups * plane; ++i) norms[i] = std::sqrt(norms[i]);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t index = 0; index < g.batch * g.out_channels; ++index) {
    const int64_t b = index / g.out_channels, o = index % g.out_channels;
    S* out = y + index * plane;
    const S* field_norms = norms + (b * g.groups + o / per_group_out) * plane;
    divide_by_norms(out, field_norms, plane, scale[o], offset[o], bias == nullptr ? S(0) : bias[o]);
  }
}

// The quotient of a grouped layer whose loops lay each (sample, group) of the input out (LAYOUT),
// several filters per group: the group laid out once, each field's |p| once (its sum of squares,
// one filter of ones, and the square root) into a plane of the thread's own, then each filter's
// dot plane and its division while the plane is still in cache. The one pass (quotient_block)
// sums |p|^2 again for every filter, and the three passes of quotient_of_sums lay the group out
// twice and take the output through memory three times. Float and double only, as there.
template <typename S>
void quotient_of_groups(const S* x, const S* w, const S* scale, const S* offset, S* y, const S* bias,
                        const Geometry& g, const Layout& layout, int threads) {
  using E = Bits<S>;
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t output_plane = g.rows * g.width, input_plane = unpadded_plane(layout);
  const int64_t pairs = g.batch * g.groups;
  const Stationary schedule = stationary_schedule(g);
  const std::vector<S> ones(g.taps, S(1));
#pragma omp parallel num_threads(threads)
  {
    // zero filled once: the groups laid out into it write the same interior places only
    std::vector<E> laid_out(per_group_in * g.plane);
    std::vector<S> norms(output_plane);
    const S* source = reinterpret_cast<const S*>(laid_out.data());
#pragma omp for schedule(static)
    for (int64_t index = 0; index < pairs; ++index) {
      const int64_t b = index / g.groups, group = index % g.groups;
      const E* input = reinterpret_cast<const E*>(x + (b * g.channels + group * per_group_in) * input_plane);
      lay_out_group(input, laid_out.data(), per_group_in, g.plane, layout);
      forward_plane<S, Squares<S>>(source, ones.data(), norms.data(), g, nullptr, &schedule);
      S* norm = norms.data();
#pragma omp simd
      for (int64_t i = 0; i < output_plane; ++i) norm[i] = std::sqrt(norm[i]);
      for (int64_t j = 0; j < per_group_out; ++j) {
        const int64_t o = group * per_group_out + j;
        S* plane = y + (b * g.out_channels + o) * output_plane;
        forward_plane<S, Dot<S>>(source, w + o * g.taps, plane, g, nullptr, &schedule);
        divide_by_norms(plane, norm, output_plane, scale[o], offset[o], bias == nullptr ? S(0) : bias[o]);
      }
    }
  }
}

// every output plane (sample, filter o) of the quotient, scale[o] and offset[o] in the compute type
template <typename S>
void quotient(const S* x, const S* w, const Compute<S>* scale, const Compute<S>* offset, S* y, const S* bias,
              const Geometry& g, const Layout* layout, int threads) {
  if (takes_channel_vectors<S>(g, layout))
    return forward_channel_vectors<S, QuotientOutputs<Compute<S>>>(x, w, scale, offset, y, bias, g, *layout,
                                                                   threads);
  if constexpr (std::is_same_v<S, Compute<S>>) {
    if (layout == nullptr && g.out_channels / g.groups >= kFiltersTogether)
      return quotient_of_sums<S>(x, w, scale, offset, y, bias, g, threads);
    if (layout != nullptr && g.out_channels / g.groups >= kFiltersTogether)
      return quotient_of_groups<S>(x, w, scale, offset, y, bias, g, *layout, threads);
  }
  // four rows by the places they read, where the eight products and eight sums of squares fit
  // the 32 vector registers of AVX-512 (AVX2's 16 would spill them)
  const Stationary schedule = kVectorBytes == 64 && g.width >= Lanes<Compute<S>>::kCount ? stationary_schedule(g)
                                                                                         : Stationary{};
  each_output_plane(x, w, y, g, layout, threads, [&](const S* source, const S* filter, S* plane, int64_t o) {
    const S* channel_bias = bias == nullptr ? nullptr : bias + o;
    S* outs[kRowsTogether];
    int64_t r = 0;
    for (; schedule.spacing > 0 && r + kRowsTogether <= g.rows; r += kRowsTogether) {
      const int64_t* origins = g.row_offsets + r;
      bool evenly = true;
      for (int i = 1; evenly && i < kRowsTogether; ++i) evenly = origins[i] - origins[0] == i * schedule.spacing;
      if (!evenly) break;
      for (int i = 0; i < kRowsTogether; ++i) outs[i] = plane + (r + i) * g.width;
      whole_vector_blocks<S>(g.width, [&](int64_t first, int64_t last_vector, auto vectors) {
        quotient_block_by_places<S, decltype(vectors)::value>(source, filter, outs, origins[0], schedule, first,
                                                               last_vector, scale[o], offset[o], channel_bias);
      });
    }
    for (; r + kQuotientRowsTogether <= g.rows; r += kQuotientRowsTogether) {
      for (int i = 0; i < kQuotientRowsTogether; ++i) outs[i] = plane + (r + i) * g.width;
      quotient_rows<S, kQuotientRowsTogether>(source, filter, outs, g.row_offsets + r, g, scale[o], offset[o],
                                              channel_bias);
    }
    for (; r < g.rows; ++r) {
      outs[0] = plane + r * g.width;
      quotient_rows<S, 1>(source, filter, outs, g.row_offsets + r, g, scale[o], offset[o], channel_bias);
    }
  });
}

enum Operation {
  kDot = 0,
  kL1 = 1,
  kL1Adder = 2,
  kL2 = 3,
  kMaxPlus = 4,
  kMinPlus = 5,
  kPower3 = 6,
  kPower4 = 7,
  kRealPower = 8
};

// one call of the real power at a time: its exponent is a static of the loops' operation
std::mutex real_power_lock;

// all_finite of COUNT values split over up to THREADS threads: a tropical forward reads its whole
// input once more before the loops, a pass that a small layer's loops take about as long as
template <typename S>
bool all_finite_on(const S* values, int64_t count, int threads) {
  constexpr int64_t kPerThread = int64_t(1) << 16;
  const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, count / kPerThread)));
  if (parts == 1) return all_finite(values, count);
  bool finite = true;
#pragma omp parallel for num_threads(parts) reduction(&& : finite) schedule(static)
  for (int part = 0; part < parts; ++part) {
    const int64_t begin = count * part / parts, end = count * (part + 1) / parts;
    finite = all_finite(values + begin, end - begin) && finite;
  }
  return finite;
}

// whether no tropical term of the forward can be NaN: the input and the weights all finite
template <typename S>
bool finite_terms(const S* x, const S* w, const Geometry& g, const Layout* layout, int threads) {
  const int64_t plane = layout != nullptr ? unpadded_plane(*layout) : g.plane;
  return all_finite(w, g.out_channels * g.taps) && all_finite_on(x, g.batch * g.channels * plane, threads);
}

template <typename S>
void forward_any(int operation, const S* x, const S* w, S* y, const S* bias, const Geometry& g,
                 const Layout* layout, int threads, double exponent) {
  using T = Compute<S>;
  const bool tropical = operation == kMaxPlus || operation == kMinPlus;
  if (tropical && finite_terms(x, w, g, layout, threads)) {
    if (operation == kMaxPlus) return forward<S, FiniteMaxPlus<T>>(x, w, bias, y, g, layout, threads);
    return forward<S, FiniteMinPlus<T>>(x, w, bias, y, g, layout, threads);
  }
  switch (operation) {
    case kDot: return forward<S, Dot<T>>(x, w, bias, y, g, layout, threads);
    case kL1:
    case kL1Adder: return forward<S, L1<T>>(x, w, bias, y, g, layout, threads);
    case kL2: return forward<S, L2<T>>(x, w, bias, y, g, layout, threads);
    case kMaxPlus: return forward<S, MaxPlus<T>>(x, w, bias, y, g, layout, threads);
    case kMinPlus: return forward<S, MinPlus<T>>(x, w, bias, y, g, layout, threads);
    case kPower3: return forward<S, PowerSum<T, 3>>(x, w, bias, y, g, layout, threads);
    case kPower4: return forward<S, PowerSum<T, 4>>(x, w, bias, y, g, layout, threads);
    case kRealPower: {
      std::lock_guard<std::mutex> lock(real_power_lock);
      RealExponent<T>::value = static_cast<T>(exponent);
      return forward<S, RealPowerSum<T>>(x, w, bias, y, g, layout, threads);
    }
  }
}

template <typename S>
void backward_any(int operation, const S* x, const S* w, const S* y, const S* grad, S* grad_x, S* grad_w,
                  const Geometry& g, const Layout* layout, int threads, double exponent) {
  using T = Compute<S>;
  switch (operation) {
    case kDot: return backward<S, Dot<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kL1: return backward<S, L1<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kL1Adder: return backward<S, L1Adder<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kL2: return backward<S, L2<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kMaxPlus: return backward<S, MaxPlus<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kMinPlus: return backward<S, MinPlus<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kPower3: return backward<S, PowerSum<T, 3>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kPower4: return backward<S, PowerSum<T, 4>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    case kRealPower: {
      std::lock_guard<std::mutex> lock(real_power_lock);
      RealExponent<T>::value = static_cast<T>(exponent);
      return backward<S, RealPowerSum<T>>(x, w, y, grad, grad_x, grad_w, g, layout, threads);
    }
  }
}

}  // namespace

#define TAP_LOOPS(T, SUFFIX)                                                                                \
  extern "C" void tap_forward_##SUFFIX(int operation, const T* x, const T* w, T* y, const T* bias,        \
                                       int64_t batch, int64_t channels, int64_t out_channels, int64_t groups, \
                                       int64_t plane, int64_t taps, const int64_t* tap_offsets,              \
                                       const int64_t* weight_index, int64_t rows, const int64_t* row_offsets, \
                                       int64_t width, int64_t step, int threads, int64_t ndim,               \
                                       const int64_t* size, const int64_t* before, const int64_t* padded,    \
                                       int64_t phases, int channels_last, double exponent) {                 \
    /* ndim 0: x is laid out already; else x is the unpadded input, laid out by the loops; bias (O) or */   \
    /* null, added in the loops' store; exponent: lp's p for kRealPower */                                   \
    const Geometry g{batch, channels, out_channels, groups, plane, taps, tap_offsets, weight_index, rows,      \
                     row_offsets, width, step};                                                             \
    const Layout layout{ndim, size, before, padded, phases, channels_last != 0};                            \
    forward_any<T>(operation, x, w, y, bias, g, ndim > 0 ? &layout : nullptr, threads, exponent);           \
  }                                                                                                         \
  extern "C" void tap_backward_##SUFFIX(int operation, const T* x, const T* w, const T* y, const T* grad,    \
                                        T* grad_x, T* grad_w, int64_t batch, int64_t channels,               \
                                        int64_t out_channels, int64_t groups, int64_t plane, int64_t taps,   \
                                        const int64_t* tap_offsets, const int64_t* weight_index,             \
                                        int64_t rows, const int64_t* row_offsets, int64_t width,             \
                                        int64_t step, int threads, int64_t ndim, const int64_t* size,        \
                                        const int64_t* before, const int64_t* padded, int64_t phases,        \
                                        int channels_last, double exponent) {                                \
    /* ndim 0: x and grad_x are laid out already; else both are unpadded (channels_last unused) */          \
    const Geometry g{batch, channels, out_channels, groups, plane, taps, tap_offsets, weight_index, rows,      \
                     row_offsets, width, step};                                                             \
    const Layout layout{ndim, size, before, padded, phases, channels_last != 0};                            \
    backward_any<T>(operation, x, w, y, grad, grad_x, grad_w, g, ndim > 0 ? &layout : nullptr, threads,      \
                    exponent);                                                                              \
  }                                                                                                         \
  extern "C" void tap_quotient_##SUFFIX(const T* x, const T* w, const anyconv::Compute<T>* scale,           \
                                        const anyconv::Compute<T>* offset, T* y, const T* bias,              \
                                        int64_t batch,                                                       \
                                        int64_t channels, int64_t out_channels, int64_t groups, int64_t plane, \
                                        int64_t taps, const int64_t* tap_offsets, const int64_t* weight_index, \
                                        int64_t rows, const int64_t* row_offsets, int64_t width, int64_t step, \
                                        int threads, int64_t ndim, const int64_t* size, const int64_t* before, \
                                        const int64_t* padded, int64_t phases, int channels_last) {           \
    const Geometry g{batch, channels, out_channels, groups, plane, taps, tap_offsets, weight_index, rows,      \
                     row_offsets, width, step};                                                             \
    const Layout layout{ndim, size, before, padded, phases, channels_last != 0};                            \
    quotient<T>(x, w, scale, offset, y, bias, g, ndim > 0 ? &layout : nullptr, threads);                    \
  }

#define TAP_COSINE_BACKWARD(T, SUFFIX)                                                                      \
  extern "C" void tap_cosine_backward_##SUFFIX(const T* x, const T* w, const T* scale, const T* offset,     \
                                               const T* kept, const T* grad, T* grad_x, T* grad_w,         \
                                               int64_t batch, int64_t channels, int64_t out_channels,      \
                                               int64_t groups, int64_t plane, int64_t taps,                \
                                               const int64_t* tap_offsets, const int64_t* weight_index,    \
                                               int64_t rows, const int64_t* row_offsets, int64_t width,    \
                                               int64_t step, int threads, int64_t ndim, const int64_t* size, \
                                               const int64_t* before, const int64_t* padded, int64_t phases, \
                                               int) {                                                       \
    /* x and grad_x unpadded, laid out by the loops (ndim > 0) */                                          \
    const Geometry g{batch, channels, out_channels, groups, plane, taps, tap_offsets, weight_index, rows,      \
                     row_offsets, width, step};                                                             \
    const Layout layout{ndim, size, before, padded, phases};                                                \
    cosine_backward<T>(x, w, scale, offset, kept, grad, grad_x, grad_w, g, layout, threads);                 \
  }

// One library per dtype (ANYCONV_PART_<dtype>, see native.py's PARTS), or every dtype in one
// when no part is named
#if !defined(ANYCONV_PART_F32) && !defined(ANYCONV_PART_F64) && !defined(ANYCONV_PART_BF16) && \
    !defined(ANYCONV_PART_F16)
#define ANYCONV_PART_F32
#define ANYCONV_PART_F64
#define ANYCONV_PART_BF16
#define ANYCONV_PART_F16
#endif

#ifdef ANYCONV_PART_F32
TAP_COSINE_BACKWARD(float, f32)
TAP_LOOPS(float, f32)
#endif
#ifdef ANYCONV_PART_F64
TAP_COSINE_BACKWARD(double, f64)
TAP_LOOPS(double, f64)
#endif
#ifdef ANYCONV_PART_BF16
TAP_LOOPS(anyconv::BFloat16, bf16)
#endif
#if defined(ANYCONV_PART_F16) && defined(ANYCONV_HAVE_FLOAT16)
TAP_LOOPS(_Float16, f16)
#endif

// phase_layout for elements of 1, 2, 4 or 8 bytes
extern "C" void tap_phase_layout(void* x, void* out, int64_t element_size, int64_t planes, int64_t ndim,
                                 const int64_t* size, const int64_t* before, const int64_t* padded,
                                 int64_t phases, int adjoint, int threads) {
  const Layout layout{ndim, size, before, padded, phases};
  switch (element_size) {
    case 1: return phase_layout(static_cast<uint8_t*>(x), static_cast<uint8_t*>(out), planes, layout, adjoint, threads);
    case 2: return phase_layout(static_cast<uint16_t*>(x), static_cast<uint16_t*>(out), planes, layout, adjoint, threads);
    case 4: return phase_layout(static_cast<uint32_t*>(x), static_cast<uint32_t*>(out), planes, layout, adjoint, threads);
    case 8: return phase_layout(static_cast<uint64_t*>(x), static_cast<uint64_t*>(out), planes, layout, adjoint, threads);
  }
}
