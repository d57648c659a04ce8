// The fold of the fields path's backward: the gradients of a chunk's receptive fields summed back
// into the gradient of its padded slab, the adjoint of copying the fields out of it (col2im).
//
// Gather form: each slab position finds the (output position, tap) pairs that read it and sums
// their gradients, taps in kernel order, each position written once. Slab positions are split
// over the threads without two of them ever writing one element, and the order of the sums is
// the eager fold's (one add per tap, in kernel order, starting from zero): float32 and float64
// give its numbers bit for bit; bfloat16 and float16 sum in float and round once.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "storage_types.h"

namespace {

using anyconv::Compute;

struct FoldGeometry {
  int64_t samples;    // b, the chunk's samples
  int64_t groups;     // G
  int64_t per_group;  // Cg, channels per group
  int64_t ndim;
  const int64_t* slab;      // the padded slab's size (ndim)
  const int64_t* out;       // the chunk's output size (ndim)
  const int64_t* kernel;    // (ndim)
  const int64_t* stride;    // (ndim)
  const int64_t* dilation;  // (ndim)
};

// Per dimension and slab coordinate, the taps that reach it and the output places they read it
// for, as flat offsets in increasing tap order: found once per call, so that the loop over the slab
// does no integer division (a few-channel fold spent most of its time on them)
struct Reaches {
  int64_t widest;
  std::vector<int64_t> count;   // (ndim, slab[d]) flattened, dimension by dimension
  std::vector<int64_t> tap;     // (ndim, slab[d], widest)
  std::vector<int64_t> place;   // (ndim, slab[d], widest)
  std::vector<int64_t> start;   // where dimension d's coordinates begin in count
};

Reaches find_reaches(const FoldGeometry& g, const std::vector<int64_t>& tap_stride,
                     const std::vector<int64_t>& place_stride) {
  Reaches r;
  r.widest = 1;
  int64_t coordinates = 0;
  for (int64_t d = 0; d < g.ndim; ++d) {
    r.widest = std::max(r.widest, g.kernel[d]);
    r.start.push_back(coordinates);
    coordinates += g.slab[d];
  }
  r.count.assign(coordinates, 0);
  r.tap.assign(coordinates * r.widest, 0);
  r.place.assign(coordinates * r.widest, 0);
  for (int64_t d = 0; d < g.ndim; ++d) {
    for (int64_t position = 0; position < g.slab[d]; ++position) {
      const int64_t at = r.start[d] + position;
      int64_t found = 0;
      for (int64_t t = 0; t < g.kernel[d]; ++t) {
        const int64_t reach = position - t * g.dilation[d];
        if (reach < 0) break;
        if (reach % g.stride[d] != 0 || reach / g.stride[d] >= g.out[d]) continue;
        r.tap[at * r.widest + found] = t * tap_stride[d];
        r.place[at * r.widest + found] = reach / g.stride[d] * place_stride[d];
        ++found;
      }
      r.count[at] = found;
    }
  }
  return r;
}

// The strides of a fold's tables and fields: a tap's and an output place's along each dimension,
// and the output places and taps of one field
struct FoldStrides {
  std::vector<int64_t> tap, place;
  int64_t positions = 1, taps = 1;
};

inline FoldStrides fold_strides(const FoldGeometry& g) {
  FoldStrides strides;
  strides.tap.resize(g.ndim);
  strides.place.resize(g.ndim);
  for (int64_t d = g.ndim - 1; d >= 0; --d) {
    strides.tap[d] = strides.taps;
    strides.place[d] = strides.positions;
    strides.positions *= g.out[d];
    strides.taps *= g.kernel[d];
  }
  return strides;
}

// SUM (Cg values, zero on entry) = the fields of one group (BLOCK, (*out, *kernel, Cg)) that read
// one slab position, taps in kernel order: AT and COUNT its reaches' start and count in the
// tables per dimension, INDEX the odometer over them
template <typename S>
inline void sum_reaching(const S* block, Compute<S>* sum, const Reaches& reaches, const int64_t* at,
                         const int64_t* count, int64_t* index, int64_t ndim, int64_t taps, int64_t per_group) {
  std::fill(index, index + ndim, 0);
  for (;;) {
    int64_t tap = 0, place = 0;
    for (int64_t d = 0; d < ndim; ++d) {
      tap += reaches.tap[at[d] + index[d]];
      place += reaches.place[at[d] + index[d]];
    }
    const S* source = block + (place * taps + tap) * per_group;
#pragma omp simd
    for (int64_t c = 0; c < per_group; ++c) sum[c] += anyconv::widen(source[c]);
    // the next tap in kernel order (the last dimension fastest)
    int64_t d = ndim - 1;
    while (d >= 0 && ++index[d] == count[d]) index[d--] = 0;
    if (d < 0) break;
  }
}

// Where slab coordinate COORDINATE of dimension D finds its reaches in the tables (AT) and how many
// there are (COUNT): none past the slab's end
inline void reach(const Reaches& reaches, const FoldGeometry& g, int64_t d, int64_t coordinate, int64_t& at,
                  int64_t& count) {
  const bool inside = coordinate < g.slab[d];
  at = inside ? (reaches.start[d] + coordinate) * reaches.widest : 0;
  count = inside ? reaches.count[reaches.start[d] + coordinate] : 0;
}

// The reaches (AT, COUNT) of a line's coordinates but the last: line REST of a sample's lines over
// EXTENT, from ORIGIN (every dimension but the last). False where none reaches the line.
inline bool line_reaches(const Reaches& reaches, const FoldGeometry& g, int64_t rest, const int64_t* origin,
                         const int64_t* extent, int64_t* at, int64_t* count) {
  bool reached = true;
  for (int64_t d = g.ndim - 2; d >= 0; --d) {
    reach(reaches, g, d, origin[d] + rest % extent[d], at[d], count[d]);
    rest /= extent[d];
    reached = reached && count[d] > 0;
  }
  return reached;
}

// fields (G, b, *out, *kernel, Cg) contiguous -> slab (b, *slab, G * Cg) contiguous, every element
// written (zero where no field reads)
template <typename S>
void fold(const S* fields, S* slab, const FoldGeometry& g, int threads) {
  using T = Compute<S>;
  const int64_t ndim = g.ndim;
  const FoldStrides strides = fold_strides(g);
  const int64_t positions = strides.positions, taps = strides.taps;
  int64_t slab_positions = 1;
  for (int64_t d = 0; d < ndim; ++d) slab_positions *= g.slab[d];
  const Reaches reaches = find_reaches(g, strides.tap, strides.place);
  const std::vector<int64_t> origin(ndim, 0);
  const int64_t channels = g.groups * g.per_group, per_group = g.per_group;
  // the threads split lines of the slab (a sample and every coordinate but the last): the last
  // coordinate runs along the line, so that only a line's start is divided out of its index
  const int64_t line = g.slab[ndim - 1], sample_lines = slab_positions / line, lines = g.samples * sample_lines;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> sums(per_group);
    // per dimension, where this position's reaches start in the tables, and the odometer over them
    std::vector<int64_t> at(ndim), count(ndim), index(ndim);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < lines; ++item) {
      const int64_t sample = item / sample_lines;
      const bool line_reached =
          line_reaches(reaches, g, item % sample_lines, origin.data(), g.slab, at.data(), count.data());
      for (int64_t position = 0; position < line; ++position) {
        reach(reaches, g, ndim - 1, position, at[ndim - 1], count[ndim - 1]);
        S* target = slab + (item * line + position) * channels;
        if (!line_reached || count[ndim - 1] == 0) {
          std::fill(target, target + channels, anyconv::narrow<S>(T(0)));
          continue;
        }
        for (int64_t group = 0; group < g.groups; ++group) {
          std::fill(sums.begin(), sums.end(), T(0));
          const S* block = fields + (group * g.samples + sample) * positions * taps * per_group;
          sum_reaching(block, sums.data(), reaches, at.data(), count.data(), index.data(), ndim, taps, per_group);
          S* written = target + group * per_group;
          for (int64_t c = 0; c < per_group; ++c) written[c] = anyconv::narrow<S>(sums[c]);
        }
      }
    }
  }
}

// The fold straight into a channels-first output (the transposed convolution's col2im form):
// y (b, G * Cg, *size) contiguous is the slab's region from START, plus BIAS (C values, or null)
// per channel; places past the slab's end (output_padding past the image) get the bias alone.
// Each output line's sums are made channels-last in a buffer of the thread's own (the fold's
// contiguous reads of a tap's channels), then written channel by channel with the bias: one pass
// over the output, where a channels-last slab and a transposing copy of its crop made two.
template <typename S>
void fold_into(const S* fields, S* y, const S* bias, const FoldGeometry& g, const int64_t* start,
               const int64_t* size, int threads) {
  using T = Compute<S>;
  const int64_t ndim = g.ndim;
  const FoldStrides strides = fold_strides(g);
  const int64_t positions = strides.positions, taps = strides.taps;
  const Reaches reaches = find_reaches(g, strides.tap, strides.place);
  const int64_t channels = g.groups * g.per_group, per_group = g.per_group;
  int64_t output_positions = 1;
  for (int64_t d = 0; d < ndim; ++d) output_positions *= size[d];
  const int64_t line = size[ndim - 1], sample_lines = output_positions / line, lines = g.samples * sample_lines;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> sums(line * channels);
    std::vector<int64_t> at(ndim), count(ndim), index(ndim);
#pragma omp for schedule(static)
    for (int64_t item = 0; item < lines; ++item) {
      const int64_t sample = item / sample_lines;
      const bool line_reached = line_reaches(reaches, g, item % sample_lines, start, size, at.data(), count.data());
      std::fill(sums.begin(), sums.end(), T(0));
      for (int64_t position = 0; line_reached && position < line; ++position) {
        reach(reaches, g, ndim - 1, start[ndim - 1] + position, at[ndim - 1], count[ndim - 1]);
        if (count[ndim - 1] == 0) continue;
        for (int64_t group = 0; group < g.groups; ++group) {
          const S* block = fields + (group * g.samples + sample) * positions * taps * per_group;
          sum_reaching(block, sums.data() + position * channels + group * per_group, reaches, at.data(),
                       count.data(), index.data(), ndim, taps, per_group);
        }
      }
      const int64_t line_start = (item % sample_lines) * line;
      for (int64_t c = 0; c < channels; ++c) {
        S* target = y + (sample * channels + c) * output_positions + line_start;
        const T shift = bias == nullptr ? T(0) : anyconv::widen(bias[c]);
        for (int64_t position = 0; position < line; ++position)
          target[position] = anyconv::narrow<S>(sums[position * channels + c] + shift);
      }
    }
  }
}

// Each of COUNT (ROWS, COLUMNS) matrices at SOURCE transposed into TARGET, by element size: the
// transposed convolution's weight in its fold's order, (C, Og, K) -> (C, K, Og). torch's copy of
// such a permuted view went element by element through its generic strided loop, several times
// slower than a plain copy; here each matrix is transposed in blocks that stay in the first cache.
template <typename E>
void transpose_matrices(const E* source, E* target, int64_t count, int64_t rows, int64_t columns, int threads) {
  constexpr int64_t kBlock = 16;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t m = 0; m < count; ++m) {
    const E* from = source + m * rows * columns;
    E* to = target + m * rows * columns;
    for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
      const int64_t i1 = std::min(rows, i0 + kBlock);
      for (int64_t j0 = 0; j0 < columns; j0 += kBlock) {
        const int64_t j1 = std::min(columns, j0 + kBlock);
        for (int64_t i = i0; i < i1; ++i)
          for (int64_t j = j0; j < j1; ++j) to[j * rows + i] = from[i * columns + j];
      }
    }
  }
}

}  // namespace

#define TRANSPOSE_MATRICES(E, BYTES)                                                                      \
  extern "C" void transpose_matrices_##BYTES(const E* source, E* target, int64_t count, int64_t rows,    \
                                             int64_t columns, int threads) {                             \
    transpose_matrices<E>(source, target, count, rows, columns, threads);                                \
  }

TRANSPOSE_MATRICES(uint16_t, 2)
TRANSPOSE_MATRICES(uint32_t, 4)
TRANSPOSE_MATRICES(uint64_t, 8)

#define FOLD_FIELDS(T, SUFFIX)                                                                            \
  extern "C" void fold_fields_##SUFFIX(const T* fields, T* slab, int64_t samples, int64_t groups,        \
                                       int64_t per_group, int64_t ndim, const int64_t* slab_size,        \
                                       const int64_t* out_size, const int64_t* kernel,                   \
                                       const int64_t* stride, const int64_t* dilation, int threads) {    \
    const FoldGeometry g{samples, groups, per_group, ndim, slab_size, out_size, kernel, stride, dilation}; \
    fold<T>(fields, slab, g, threads);                                                                    \
  }

#define FOLD_INTO(T, SUFFIX)                                                                              \
  extern "C" void fold_into_##SUFFIX(const T* fields, T* y, const T* bias, int64_t samples, int64_t groups,  \
                                     int64_t per_group, int64_t ndim, const int64_t* slab_size,           \
                                     const int64_t* out_size, const int64_t* kernel, const int64_t* stride, \
                                     const int64_t* dilation, const int64_t* start, const int64_t* size,    \
                                     int threads) {                                                        \
    /* bias: (G * Cg) or null; y: (samples, G * Cg, *size), the slab's region from start */               \
    const FoldGeometry g{samples, groups, per_group, ndim, slab_size, out_size, kernel, stride, dilation}; \
    fold_into<T>(fields, y, bias, g, start, size, threads);                                               \
  }

FOLD_FIELDS(float, f32)
FOLD_FIELDS(double, f64)
FOLD_FIELDS(anyconv::BFloat16, bf16)
FOLD_INTO(float, f32)
FOLD_INTO(double, f64)
FOLD_INTO(anyconv::BFloat16, bf16)
#ifdef ANYCONV_HAVE_FLOAT16
FOLD_FIELDS(_Float16, f16)
FOLD_INTO(_Float16, f16)
#endif
