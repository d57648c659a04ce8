// How each element type the loops take is stored and computed: float and double as they are;
// bfloat16 and float16 widened to float on load, accumulated in float and rounded once on store
// (as torch's CPU convolution does). Included by every native source.

#pragma once

#include <cstdint>
#include <cstring>

namespace anyconv {

// bfloat16 as its bits: the upper half of a float's
struct BFloat16 {
  uint16_t bits;
};

template <typename S>
struct Storage {
  using Compute = S;
  static S widen(S value) { return value; }
  static S narrow(S value) { return value; }
};

template <>
struct Storage<BFloat16> {
  using Compute = float;
  static float widen(BFloat16 value) {
    const uint32_t bits = uint32_t(value.bits) << 16;
    float result;
    std::memcpy(&result, &bits, sizeof result);
    return result;
  }
  // round to nearest, ties to even; a NaN stays a (quiet) NaN, where rounding could make it inf
  static BFloat16 narrow(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return BFloat16{uint16_t((bits >> 16) | 0x40u)};
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return BFloat16{uint16_t(bits >> 16)};
  }
};

// _Float16 where the compiler has it (GCC 12+ and Clang 15+ on x86-64, and on ARM): the
// conversions are then single instructions; without it the float16 loops are not built and the
// Python side takes the eager path for float16
#if defined(__FLT16_MAX__)
#define ANYCONV_HAVE_FLOAT16 1
template <>
struct Storage<_Float16> {
  using Compute = float;
  static float widen(_Float16 value) { return static_cast<float>(value); }
  static _Float16 narrow(float value) { return static_cast<_Float16>(value); }
};
#endif

template <typename S>
using Compute = typename Storage<S>::Compute;

template <typename S>
inline Compute<S> widen(S value) {
  return Storage<S>::widen(value);
}

template <typename S>
inline S narrow(Compute<S> value) {
  return Storage<S>::narrow(value);
}

// whether the COUNT values from VALUES hold no NaN and no inf: a value times zero is NaN for
// exactly those, and a NaN stays in the sum. Not for sources built with -ffast-math, which may
// take the sum as equal to itself.
template <typename S>
bool all_finite(const S* values, int64_t count) {
  using T = Compute<S>;
  T sum = T(0);
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < count; ++j) sum += widen(values[j]) * T(0);
  return sum == sum;
}

}  // namespace anyconv
