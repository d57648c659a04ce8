// Loops over kernel taps for convolutions with few input channels per group (depthwise and the
// like), forward and backward, reading the zero-padded input directly: no receptive fields are
// copied. One output row (the last spatial dimension) at a time stays in cache while every tap of
// the row's filter meets it; N-d geometry arrives flattened as offsets into the padded input.
//
// Layout: x and grad_x (B, C, plane) padded input; w (O, T) with T = channels per group x taps;
// y and grad (B, O, rows, width). Tap t reads x at row_offsets[r] + tap_offsets[t] + i * step and
// weight column weight_index[t]; taps come in the engine's field order (kernel, then channel),
// which decides the winner of a tropical tie.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

// Each operation: the start of the reduction, one tap's step, and the tap's partial derivatives
// times the incoming gradient (d output / d x, d output / d w).
template <typename T>
struct Dot {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  static T step(T acc, T x, T w) { return acc + x * w; }
  static void partials(T x, T w, T g, T& dx, T& dw) { dx = g * w; dw = g * x; }
};

template <typename T>
struct L1 {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  static T step(T acc, T x, T w) { return acc - std::abs(x - w); }
  // sign(x - w) times the gradient, 0 where x == w (and where x - w is NaN), as the fused loops
  static void partials(T x, T w, T g, T& dx, T& dw) {
    T d = x - w;
    T signed_grad = d > 0 ? g : (d < 0 ? -g : T(0));
    dx = -signed_grad;
    dw = signed_grad;
  }
};

// AdderNet's training rule: the field gradient clipped, the filter gradient x - w
template <typename T>
struct L1Adder : L1<T> {
  static void partials(T x, T w, T g, T& dx, T& dw) {
    T d = w - x;
    dx = g * (d > T(1) ? T(1) : (d < T(-1) ? T(-1) : d));
    dw = -g * d;
  }
};

template <typename T>
struct L2 {
  static constexpr bool kWinner = false;
  static T start() { return T(0); }
  static T step(T acc, T x, T w) { return acc - (x - w) * (x - w); }
  static void partials(T x, T w, T g, T& dx, T& dw) {
    T twice = T(2) * g * (x - w);
    dx = -twice;
    dw = twice;
  }
};

// the tropical pair: a NaN term wins (and stays), as in torch's max and min
template <typename T>
struct MaxPlus {
  static constexpr bool kWinner = true;
  static T start() { return -std::numeric_limits<T>::infinity(); }
  static T term(T x, T w) { return x + w; }
  static T step(T acc, T x, T w) {
    T value = x + w;
    return (value > acc || value != value) ? value : acc;
  }
  static constexpr T kWeightSign = T(1);
};

template <typename T>
struct MinPlus {
  static constexpr bool kWinner = true;
  static T start() { return std::numeric_limits<T>::infinity(); }
  static T term(T x, T w) { return x - w; }
  static T step(T acc, T x, T w) {
    T value = x - w;
    return (value < acc || value != value) ? value : acc;
  }
  static constexpr T kWeightSign = T(-1);
};

struct Geometry {
  int64_t batch, channels, out_channels, groups, plane, taps;
  const int64_t* tap_offsets;
  const int64_t* weight_index;
  int64_t rows;
  const int64_t* row_offsets;
  int64_t width, step;
};

template <typename T, typename Op, int64_t STEP>
void forward_plane(const T* __restrict x, const T* __restrict w, T* __restrict y, const Geometry& g,
                   int64_t step) {
  const int64_t s = STEP > 0 ? STEP : step;
  for (int64_t r = 0; r < g.rows; ++r) {
    T* __restrict out = y + r * g.width;
    for (int64_t i = 0; i < g.width; ++i) out[i] = Op::start();
    for (int64_t t = 0; t < g.taps; ++t) {
      const T* __restrict source = x + g.row_offsets[r] + g.tap_offsets[t];
      const T weight = w[g.weight_index[t]];
#pragma omp simd
      for (int64_t i = 0; i < g.width; ++i) out[i] = Op::step(out[i], source[i * s], weight);
    }
  }
}

template <typename T, typename Op>
void forward(const T* x, const T* w, T* y, const Geometry& g, int threads) {
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t planes = g.batch * g.out_channels, output_plane = g.rows * g.width;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t index = 0; index < planes; ++index) {
    const int64_t b = index / g.out_channels, o = index % g.out_channels;
    const T* source = x + (b * g.channels + (o / per_group_out) * per_group_in) * g.plane;
    if (g.step == 1) {
      forward_plane<T, Op, 1>(source, w + o * g.taps, y + index * output_plane, g, 1);
    } else {
      forward_plane<T, Op, 0>(source, w + o * g.taps, y + index * output_plane, g, g.step);
    }
  }
}

// one output channel's gradient into its group's padded input gradient and its weight gradient
template <typename T, typename Op>
void backward_plane(const T* __restrict x, const T* __restrict w, const T* __restrict y,
                    const T* __restrict grad, T* __restrict grad_x, T* __restrict grad_w, const Geometry& g,
                    std::vector<unsigned char>& found) {
  const int64_t s = g.step;
  for (int64_t r = 0; r < g.rows; ++r) {
    const T* __restrict grad_row = grad + r * g.width;
    const T* __restrict out = y == nullptr ? nullptr : y + r * g.width;
    if constexpr (Op::kWinner) std::fill(found.begin(), found.end(), 0);
    for (int64_t t = 0; t < g.taps; ++t) {
      const int64_t offset = g.row_offsets[r] + g.tap_offsets[t];
      const T* __restrict source = x + offset;
      T* __restrict target = grad_x + offset;
      const T weight = w[g.weight_index[t]];
      T weight_grad = 0;
      if constexpr (Op::kWinner) {
        for (int64_t i = 0; i < g.width; ++i) {
          const T value = Op::term(source[i * s], weight);
          const bool wins = !found[i] && (value == out[i] || (value != value && out[i] != out[i]));
          if (wins) {
            found[i] = 1;
            target[i * s] += grad_row[i];
            weight_grad += grad_row[i];
          }
        }
        weight_grad *= Op::kWeightSign;
      } else {
#pragma omp simd reduction(+ : weight_grad)
        for (int64_t i = 0; i < g.width; ++i) {
          T dx, dw;
          Op::partials(source[i * s], weight, grad_row[i], dx, dw);
          target[i * s] += dx;
          weight_grad += dw;
        }
      }
      grad_w[g.weight_index[t]] += weight_grad;
    }
  }
}

// Threads split (sample, group) pairs: each writes only its group's input gradient, and each
// sample its own weight-gradient slice (summed over samples by the caller).
template <typename T, typename Op>
void backward(const T* x, const T* w, const T* y, const T* grad, T* grad_x, T* grad_w, const Geometry& g,
              int threads) {
  const int64_t per_group_in = g.channels / g.groups, per_group_out = g.out_channels / g.groups;
  const int64_t pairs = g.batch * g.groups, output_plane = g.rows * g.width;
#pragma omp parallel num_threads(threads)
  {
    std::vector<unsigned char> found(Op::kWinner ? g.width : 0);
#pragma omp for schedule(static)
    for (int64_t index = 0; index < pairs; ++index) {
      const int64_t b = index / g.groups, group = index % g.groups;
      const int64_t input_at = (b * g.channels + group * per_group_in) * g.plane;
      for (int64_t j = 0; j < per_group_out; ++j) {
        const int64_t o = group * per_group_out + j;
        const int64_t output_at = (b * g.out_channels + o) * output_plane;
        backward_plane<T, Op>(x + input_at, w + o * g.taps, y == nullptr ? nullptr : y + output_at,
                              grad + output_at, grad_x + input_at, grad_w + (b * g.out_channels + o) * g.taps,
                              g, found);
      }
    }
  }
}

enum Operation { kDot = 0, kL1 = 1, kL1Adder = 2, kL2 = 3, kMaxPlus = 4, kMinPlus = 5 };

template <typename T>
void forward_any(int operation, const T* x, const T* w, T* y, const Geometry& g, int threads) {
  switch (operation) {
    case kDot: return forward<T, Dot<T>>(x, w, y, g, threads);
    case kL1:
    case kL1Adder: return forward<T, L1<T>>(x, w, y, g, threads);
    case kL2: return forward<T, L2<T>>(x, w, y, g, threads);
    case kMaxPlus: return forward<T, MaxPlus<T>>(x, w, y, g, threads);
    case kMinPlus: return forward<T, MinPlus<T>>(x, w, y, g, threads);
  }
}

template <typename T>
void backward_any(int operation, const T* x, const T* w, const T* y, const T* grad, T* grad_x, T* grad_w,
                  const Geometry& g, int threads) {
  switch (operation) {
    case kDot: return backward<T, Dot<T>>(x, w, y, grad, grad_x, grad_w, g, threads);
    case kL1: return backward<T, L1<T>>(x, w, y, grad, grad_x, grad_w, g, threads);
    case kL1Adder: return backward<T, L1Adder<T>>(x, w, y, grad, grad_x, grad_w, g, threads);
    case kL2: return backward<T, L2<T>>(x, w, y, grad, grad_x, grad_w, g, threads);
    case kMaxPlus: return backward<T, MaxPlus<T>>(x, w, y, grad, grad_x, grad_w, g, threads);
    case kMinPlus: return backward<T, MinPlus<T>>(x, w, y, grad, grad_x, grad_w, g, threads);
  }
}

}  // namespace

#define TAP_LOOPS(T, SUFFIX)                                                                                \
  extern "C" void tap_forward_##SUFFIX(int operation, const T* x, const T* w, T* y, int64_t batch,         \
                                       int64_t channels, int64_t out_channels, int64_t groups, int64_t plane, \
                                       int64_t taps, const int64_t* tap_offsets, const int64_t* weight_index, \
                                       int64_t rows, const int64_t* row_offsets, int64_t width, int64_t step,  \
                                       int threads) {                                                       \
    const Geometry g{batch, channels, out_channels, groups, plane, taps, tap_offsets, weight_index, rows,      \
                     row_offsets, width, step};                                                             \
    forward_any<T>(operation, x, w, y, g, threads);                                                          \
  }                                                                                                         \
  extern "C" void tap_backward_##SUFFIX(int operation, const T* x, const T* w, const T* y, const T* grad,    \
                                        T* grad_x, T* grad_w, int64_t batch, int64_t channels,               \
                                        int64_t out_channels, int64_t groups, int64_t plane, int64_t taps,   \
                                        const int64_t* tap_offsets, const int64_t* weight_index,             \
                                        int64_t rows, const int64_t* row_offsets, int64_t width,             \
                                        int64_t step, int threads) {                                         \
    const Geometry g{batch, channels, out_channels, groups, plane, taps, tap_offsets, weight_index, rows,      \
                     row_offsets, width, step};                                                             \
    backward_any<T>(operation, x, w, y, grad, grad_x, grad_w, g, threads);                                   \
  }

TAP_LOOPS(float, f32)
TAP_LOOPS(double, f64)
