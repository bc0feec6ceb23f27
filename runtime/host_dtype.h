// host_dtype.h — host-side conversion between float and the model's element types (for uploads of
// initial values, benchmarks and tests). Round-to-nearest-even, NaN kept, like the device's
// __float2half_rn / __float2bfloat16_rn.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "compiler/spec/model_spec.h"

namespace lightseq {

inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t float_to_half_bits(float f) {
  const _Float16 h = static_cast<_Float16>(f);  // IEEE binary16, round to nearest even
  uint16_t bits;
  std::memcpy(&bits, &h, 2);
  return bits;
}

inline float half_bits_to_float(uint16_t bits) {
  _Float16 h;
  std::memcpy(&h, &bits, 2);
  return static_cast<float>(h);
}

// values → bytes in precision p.
inline std::vector<uint8_t> encode(const std::vector<float>& values, Precision p) {
  std::vector<uint8_t> out(values.size() * element_bytes(p));
  for (size_t i = 0; i < values.size(); ++i) {
    if (p == Precision::kFp32) {
      std::memcpy(out.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t b =
          p == Precision::kBf16 ? float_to_bf16_bits(values[i]) : float_to_half_bits(values[i]);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

// bytes in precision p → values.
inline std::vector<float> decode(const std::vector<uint8_t>& bytes, Precision p) {
  const size_t n = bytes.size() / element_bytes(p);
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (p == Precision::kFp32) {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
    } else {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      out[i] = p == Precision::kBf16 ? bf16_bits_to_float(b) : half_bits_to_float(b);
    }
  }
  return out;
}

}  // namespace lightseq
