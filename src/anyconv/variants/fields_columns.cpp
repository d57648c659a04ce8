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

// Output positions o in [0, count) of one dimension read first + o * step: inside [0, size) for o in
// [lo, hi) (lo <= hi, both in [0, count])
void inside_range(int64_t first, int64_t step, int64_t size, int64_t count, int64_t& lo, int64_t& hi) {
  lo = std::min(count, first >= 0 ? int64_t(0) : ceil_div(-first, step));
  hi = std::max(lo, first >= size ? int64_t(0) : std::min(count, ceil_div(size - first, step)));
}

template <typename S>
void zero(S* target, int64_t count) {
  for (int64_t j = 0; j < count; ++j) target[j] = S(0);
}

template <typename S>
void columns(const S* input, S* cols, const ColumnsGeometry& g, int threads) {
  const int64_t ndim = g.ndim, last = ndim - 1;
  // the lines of a row (its positions but the last dimension's) come in blocks along dimension
  // `inner`, the one before the last: within a block the lines inside the input are one range,
  // found once per row, so that a line costs its copy alone
  const int64_t inner = last - 1;
  int64_t taps = 1, plane = 1, positions = 1, blocks = 1;
  for (int64_t d = 0; d < ndim; ++d) {
    taps *= g.kernel[d];
    plane *= g.size[d];
    positions *= g.count[d];
    if (d < inner) blocks *= g.count[d];
  }
  const int64_t width = g.count[last], step = g.stride[last], extent = g.size[last];
  const int64_t block_lines = inner >= 0 ? g.count[inner] : 1;
  const int64_t line_stride = inner >= 0 ? g.stride[inner] : 1;
  // the block's lines inside the input follow each other in it as in the columns (stride 1 along
  // both dimensions, every input column an output column, as 'same' padding gives): one copy,
  // their edges zeroed after
  const bool runs = step == 1 && width == extent && line_stride == 1;
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
    int64_t lo, hi, line_lo = 0, line_hi = 1, line_first = 0;
    const int64_t first = g.start[last] * step + k[last] * g.dilation[last] - g.padding[last];
    inside_range(first, step, extent, width, lo, hi);
    if (inner >= 0) {
      line_first = g.start[inner] * line_stride + k[inner] * g.dilation[inner] - g.padding[inner];
      inside_range(line_first, line_stride, g.size[inner], block_lines, line_lo, line_hi);
    }
    for (int64_t block = 0; block < blocks; ++block, target += block_lines * width) {
      bool inside = true;
      int64_t offset = 0;  // the block's first input line, in lines, before dimension `inner`
      for (int64_t d = 0; d < inner; ++d) {
        const int64_t at = (g.start[d] + index[d]) * g.stride[d] + k[d] * g.dilation[d] - g.padding[d];
        inside = inside && at >= 0 && at < g.size[d];
        offset = offset * g.size[d] + at;
      }
      for (int64_t d = inner - 1; d >= 0 && ++index[d] == g.count[d]; --d) index[d] = 0;
      if (!inside || line_lo == line_hi || lo == hi) {
        zero(target, block_lines * width);
        continue;
      }
      zero(target, line_lo * width);
      zero(target + line_hi * width, (block_lines - line_hi) * width);
      // the input line that the block's line line_lo reads
      const int64_t first_line = (inner >= 0 ? offset * g.size[inner] : 0) + line_first + line_lo * line_stride;
      S* lines = target + line_lo * width;
      const int64_t count = line_hi - line_lo;
      if (runs) {
        // flat index of the run's first element in the plane; only [0, plane) is read
        const int64_t begin = first_line * extent + first, total = count * width;
        const int64_t j0 = std::min(total, std::max(int64_t(0), -begin));
        const int64_t j1 = std::max(j0, std::min(total, plane - begin));
        zero(lines, j0);
        const S* read = source + (begin + j0);
        for (int64_t j = 0; j < j1 - j0; ++j) lines[j0 + j] = read[j];
        zero(lines + j1, total - j1);
        for (int64_t line = 0; line < count; ++line) {
          zero(lines + line * width, lo);
          zero(lines + line * width + hi, width - hi);
        }
        continue;
      }
      for (int64_t line = 0; line < count; ++line) {
        S* out = lines + line * width;
        // the value output lo reads (no pointer formed before the plane's start)
        const S* read = source + (first_line + line * line_stride) * extent + (first + lo * step);
        zero(out, lo);
        if (step == 1) {
          for (int64_t o = 0; o < hi - lo; ++o) out[lo + o] = read[o];
        } else {
          for (int64_t o = 0; o < hi - lo; ++o) out[lo + o] = read[o * step];
        }
        zero(out + hi, width - hi);
      }
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
