// The cosine of a few rows with a few filters, forward and backward, one call each, for the layers
// whose whole work costs less than the calls of torch's composition (a squeeze-excitation layer:
// 1x1 on a 1x1 image). engine/cosine_rows.py takes it for small calls only.
//
// With D = |p| |w| + eps and y = p . w / D, the backward's terms are those of the variant's own
// product_backward (variants/cosine.py): a = grad / D, r = a y, the fields' gradient a times the
// filters minus (sum over filters of r |w|) p / |p|, the filters' a times the fields minus
// (sum over fields of r |p|) w / |w|, the radial terms 0 where a norm is 0 (no direction). Every
// sum, norm and quotient is taken in double and rounded once: float32 squares of large values
// would overflow where float64 holds them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

template <typename S>
double dot(const S* a, const S* b, int64_t count) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t k = 0; k < count; ++k) sum += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return sum;
}

template <typename S>
std::vector<double> norms_of(const S* vectors, int64_t count, int64_t length) {
  std::vector<double> norms(count);
  for (int64_t i = 0; i < count; ++i) norms[i] = std::sqrt(dot(vectors + i * length, vectors + i * length, length));
  return norms;
}

// OUT (m, o) = y + BIAS (BIAS may be null) for ROWS (m, c) and FILTERS (o, c)
template <typename S>
void forward(const S* rows, const S* filters, const S* bias, double eps, S* out, int64_t m, int64_t o, int64_t c) {
  const std::vector<double> field_norms = norms_of(rows, m, c), filter_norms = norms_of(filters, o, c);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < o; ++j) {
      const double y = dot(rows + i * c, filters + j * c, c) / (field_norms[i] * filter_norms[j] + eps);
      out[i * o + j] = static_cast<S>(bias == nullptr ? y : y + static_cast<double>(bias[j]));
    }
  }
}

// GRADS (count, c), one per vector of OWN (count, c): the sum over the OTHER vectors (others, c) of
// SCALED[i * own_step + j * other_step] times the other vector, minus the vector's direction (0
// where its norm is 0; NaN and inf flow through) times TO[i]
template <typename S>
void gradients_of(const S* own, const S* other, const double* scaled, int64_t own_step, int64_t other_step,
                  const std::vector<double>& norms, const std::vector<double>& to, int64_t count, int64_t others,
                  int64_t c, S* grads) {
  std::vector<double> sums(c);
  for (int64_t i = 0; i < count; ++i) {
    std::fill(sums.begin(), sums.end(), 0.0);
    for (int64_t j = 0; j < others; ++j) {
      const double a = scaled[i * own_step + j * other_step];
      const S* vector = other + j * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) sums[k] += a * static_cast<double>(vector[k]);
    }
    const S* mine = own + i * c;
    for (int64_t k = 0; k < c; ++k) {
      const double direction = norms[i] == 0 ? 0.0 : static_cast<double>(mine[k]) / norms[i];
      grads[i * c + k] = static_cast<S>(sums[k] - direction * to[i]);
    }
  }
}

// GRAD_ROWS (m, c) and GRAD_FILTERS (o, c), each skipped where null, for the output gradient GRAD (m, o)
template <typename S>
void backward(const S* grad, const S* rows, const S* filters, double eps, S* grad_rows, S* grad_filters, int64_t m,
              int64_t o, int64_t c) {
  const std::vector<double> field_norms = norms_of(rows, m, c), filter_norms = norms_of(filters, o, c);
  std::vector<double> scaled(m * o), to_fields(m, 0.0), to_filters(o, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < o; ++j) {
      const double denominator = field_norms[i] * filter_norms[j] + eps;
      const double y = dot(rows + i * c, filters + j * c, c) / denominator;
      const double a = static_cast<double>(grad[i * o + j]) / denominator;
      scaled[i * o + j] = a;
      to_fields[i] += a * y * filter_norms[j];
      to_filters[j] += a * y * field_norms[i];
    }
  }
  if (grad_rows != nullptr)
    gradients_of(rows, filters, scaled.data(), o, 1, field_norms, to_fields, m, o, c, grad_rows);
  if (grad_filters != nullptr)
    gradients_of(filters, rows, scaled.data(), 1, o, filter_norms, to_filters, o, m, c, grad_filters);
}

}  // namespace

#define ANYCONV_EXPORT(S, SUFFIX)                                                                                \
  extern "C" void cosine_rows_##SUFFIX(const S* rows, const S* filters, const S* bias, double eps, S* out,      \
                                       int64_t m, int64_t o, int64_t c) {                                       \
    forward<S>(rows, filters, bias, eps, out, m, o, c);                                                         \
  }                                                                                                             \
  extern "C" void cosine_rows_backward_##SUFFIX(const S* grad, const S* rows, const S* filters, double eps,     \
                                                S* grad_rows, S* grad_filters, int64_t m, int64_t o, int64_t c) { \
    backward<S>(grad, rows, filters, eps, grad_rows, grad_filters, m, o, c);                                    \
  }

ANYCONV_EXPORT(float, f32)
ANYCONV_EXPORT(double, f64)
