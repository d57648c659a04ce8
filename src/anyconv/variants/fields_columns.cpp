// The columns of the fields path's standard product (im2col): for each (channel, kernel tap) of a
// chunk, one row of the values that tap reads at the chunk's output positions, sample after sample,
// zero where it reads the padding. The layout (C, *kernel, b, *positions) takes the taps in the
// order of a weight (O, C, *kernel) as it lies, so the product needs no reordered copy of the
// weight, and takes all the chunk's samples in one matrix product per group.
//
// Only copies: the element type matters by its size alone (2, 4 or 8 bytes), and zero is the
// all-zero bit pattern in every floating type the loops take.

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

// at most this many spatial dimensions (the Python side takes the native copy only up to it)
constexpr int64_t kMaxDimensions = 8;

struct ColumnsGeometry {
  int64_t samples;          // b, the chunk's samples, from the input pointer on
  int64_t channels;         // C
  int64_t ndim;
  const int64_t* size;      // the unpadded input's spatial size (ndim)
  const int64_t* kernel;    // (ndim)
  const int64_t* stride;    // (ndim)
  const int64_t* padding;   // zero padding before each dimension (ndim)
  const int64_t* dilation;  // (ndim)
  const int64_t* start;     // the chunk's first output position per dimension (ndim)
  const int64_t* count;     // the chunk's output positions per dimension (ndim)
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename S>
void columns(const S* input, S* cols, const ColumnsGeometry& g, int threads) {
  const int64_t ndim = g.ndim, last = ndim - 1;
  int64_t taps = 1, plane = 1, positions = 1, lines = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    taps *= g.kernel[d];
    plane *= g.size[d];
    positions *= g.count[d];
    if (d < last) lines *= g.count[d];
  }
  const int64_t width = g.count[last], step = g.stride[last], extent = g.size[last];
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < g.samples * g.channels * taps; ++row) {
    // row: (sample, channel, tap) in the order of the input's planes, each plane read by its taps
    // in turn; written to (channel, tap, sample)
    const int64_t tap_index = row % taps, plane_index = row / taps;
    const int64_t sample = plane_index / g.channels, channel = plane_index % g.channels;
    int64_t k[kMaxDimensions], index[kMaxDimensions] = {0};
    for (int64_t d = last, tap = tap_index; d >= 0; --d) {
      k[d] = tap % g.kernel[d];
      tap /= g.kernel[d];
    }
    const S* source = input + plane_index * plane;
    S* target = cols + ((channel * taps + tap_index) * g.samples + sample) * positions;
    // along the last dimension output o reads first + o * step: inside the input for o in [lo, hi)
    const int64_t first = g.start[last] * step + k[last] * g.dilation[last] - g.padding[last];
    const int64_t lo = std::min(width, first >= 0 ? int64_t(0) : ceil_div(-first, step));
    const int64_t hi = std::max(lo, first >= extent ? int64_t(0) : std::min(width, ceil_div(extent - first, step)));
    for (int64_t line = 0; line < lines; ++line, target += width) {
      bool inside = true;
      int64_t offset = 0;
      for (int64_t d = 0; d < last; ++d) {
        const int64_t at = (g.start[d] + index[d]) * g.stride[d] + k[d] * g.dilation[d] - g.padding[d];
        inside = inside && at >= 0 && at < g.size[d];
        offset = offset * g.size[d] + at;
      }
      // the next line: the odometer over every dimension but the last
      for (int64_t d = last - 1; d >= 0 && ++index[d] == g.count[d]; --d) index[d] = 0;
      if (!inside) {
        std::memset(target, 0, width * sizeof(S));
        continue;
      }
      // the value output lo reads (no pointer formed before the plane's start)
      const S* read = source + offset * extent + (first + lo * step);
      std::memset(target, 0, lo * sizeof(S));
      if (step == 1) {
        std::memcpy(target + lo, read, (hi - lo) * sizeof(S));
      } else {
        for (int64_t o = 0; o < hi - lo; ++o) target[lo + o] = read[o * step];
      }
      std::memset(target + hi, 0, (width - hi) * sizeof(S));
    }
  }
}

}  // namespace

#define FIELDS_COLUMNS(T, BYTES)                                                                          \
  extern "C" void fields_columns_##BYTES(const T* input, T* cols, int64_t samples, int64_t channels,     \
                                         int64_t ndim,                                                  \
                                         const int64_t* size, const int64_t* kernel,                    \
                                         const int64_t* stride, const int64_t* padding,                 \
                                         const int64_t* dilation, const int64_t* start,                 \
                                         const int64_t* count, int threads) {                           \
    const ColumnsGeometry g{samples, channels, ndim, size, kernel, stride, padding, dilation, start, count}; \
    columns<T>(input, cols, g, threads);                                                                 \
  }

FIELDS_COLUMNS(uint16_t, 2)
FIELDS_COLUMNS(uint32_t, 4)
FIELDS_COLUMNS(uint64_t, 8)
