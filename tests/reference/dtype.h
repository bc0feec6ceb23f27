// dtype.h — host-side element types of the kernels (fp32, fp16, bf16): rounding a double to the
// value a T tensor stores (IEEE round-to-nearest-even, subnormals, overflow to inf), and the byte
// encoding the device reads. References work on doubles that already hold T-representable values.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "compiler/spec/model_spec.h"

namespace lightseq::ref {

using Vec = std::vector<double>;

// Bytes of one element.
int dtype_bytes(Precision p);

// x rounded (RNE) to the nearest value of p's format, as a double. NaN stays NaN; values past the
// largest finite one round to ±inf exactly as a cast would.
double round_to(Precision p, double x);
void round_in_place(Precision p, std::vector<double>& v);

// fp16 / bf16 bit patterns of an exactly representable value (call round_to first), and back.
uint16_t half_bits(double representable);
uint16_t bf16_bits(double representable);
double half_value(uint16_t bits);
double bf16_value(uint16_t bits);

// The device bytes of `values` in format p (each value is rounded to p first).
std::vector<uint8_t> encode(Precision p, std::span<const double> values);
// Doubles from device bytes (n elements of format p).
std::vector<double> decode(Precision p, std::span<const uint8_t> bytes);

// Unit roundoff of p: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16).
double unit_roundoff(Precision p);

}  // namespace lightseq::ref
