#include "tests/reference/dtype.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace lightseq::ref {

namespace {

struct Format {
  int fraction_bits;  // stored mantissa bits
  int min_exponent;   // exponent of the smallest normal number
  double max_finite;
};

Format format_of(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return {23, -126, static_cast<double>(std::numeric_limits<float>::max())};
    case Precision::kFp16:
      return {10, -14, 65504.0};
    case Precision::kBf16:
      return {7, -126, std::ldexp(2.0 - std::ldexp(1.0, -7), 127)};
  }
  throw std::logic_error("dtype: unknown precision");
}

}  // namespace

int dtype_bytes(Precision p) { return p == Precision::kFp32 ? 4 : 2; }

double unit_roundoff(Precision p) { return std::ldexp(1.0, -(format_of(p).fraction_bits + 1)); }

double round_to(Precision p, double x) {
  if (!std::isfinite(x) || x == 0.0) return x;
  const Format f = format_of(p);
  int e = std::ilogb(x);  // |x| in [2^e, 2^(e+1))
  if (e < f.min_exponent) e = f.min_exponent;
  const double quantum = std::ldexp(1.0, e - f.fraction_bits);
  const double r = std::nearbyint(x / quantum) * quantum;  // x / quantum is exact; RNE
  if (std::fabs(r) > f.max_finite) return std::copysign(std::numeric_limits<double>::infinity(), x);
  return r;
}

void round_in_place(Precision p, std::vector<double>& v) {
  for (double& x : v) x = round_to(p, x);
}

uint16_t half_bits(double r) {
  const uint16_t sign = std::signbit(r) ? 0x8000 : 0;
  if (std::isnan(r)) return 0x7E00;
  const double a = std::fabs(r);
  if (std::isinf(a)) return sign | 0x7C00;
  if (a == 0.0) return sign;
  if (a < std::ldexp(1.0, -14)) return sign | static_cast<uint16_t>(a / std::ldexp(1.0, -24));
  const int e = std::ilogb(a);
  const auto mant = static_cast<uint16_t>(a / std::ldexp(1.0, e - 10) - 1024.0);
  return sign | static_cast<uint16_t>((e + 15) << 10) | mant;
}

double half_value(uint16_t bits) {
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  const int exp = (bits >> 10) & 0x1F;
  const int mant = bits & 0x3FF;
  if (exp == 0x1F) return mant ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(mant, -24);
  return sign * std::ldexp(1024 + mant, exp - 25);
}

uint16_t bf16_bits(double r) {
  if (std::isnan(r)) return 0x7FC0;
  const float f = static_cast<float>(r);  // exact: bf16 values are floats
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>(u >> 16);
}

double bf16_value(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<uint8_t> encode(Precision p, std::span<const double> values) {
  std::vector<uint8_t> out(values.size() * dtype_bytes(p));
  for (size_t i = 0; i < values.size(); ++i) {
    const double r = round_to(p, values[i]);
    if (p == Precision::kFp32) {
      const float f = static_cast<float>(r);
      std::memcpy(out.data() + 4 * i, &f, 4);
    } else {
      const uint16_t b = p == Precision::kFp16 ? half_bits(r) : bf16_bits(r);
      std::memcpy(out.data() + 2 * i, &b, 2);
    }
  }
  return out;
}

std::vector<double> decode(Precision p, std::span<const uint8_t> bytes) {
  const size_t n = bytes.size() / dtype_bytes(p);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    if (p == Precision::kFp32) {
      float f;
      std::memcpy(&f, bytes.data() + 4 * i, 4);
      out[i] = f;
    } else {
      uint16_t b;
      std::memcpy(&b, bytes.data() + 2 * i, 2);
      out[i] = p == Precision::kFp16 ? half_value(b) : bf16_value(b);
    }
  }
  return out;
}

}  // namespace lightseq::ref
