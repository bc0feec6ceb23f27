// compare.h — NaN-aware comparison of a kernel's output with its float64 reference.
//
// An element passes iff |got - ref| <= rtol * |ref| + atol * max|ref| + abs (a NaN or inf where the
// reference is finite never passes: the test is written as !(err <= bound)), and the tensor passes
// iff every element passes and ||got - ref||_2 <= rnorm * ||ref||_2. Failures list the count, the
// worst elements (index, got, ref) and the norms.
//
// Per-dtype tolerances follow the flash-attention rule (a kernel's error at most ~2x that of the
// same computation carried out in the kernel's element type): a T output computed in fp32 from T
// inputs carries its final rounding (half an ulp of T) plus the fp32 arithmetic; the bounds below
// allow about 2 ulp of T, written as plain numbers.
#pragma once

#include <gtest/gtest.h>

#include <span>
#include <string_view>

#include "compiler/spec/model_spec.h"

namespace lightseq::ref {

struct Tolerance {
  double rtol = 0;   // per element, relative to |ref|
  double atol = 0;   // per element, relative to max|ref| over the tensor
  double rnorm = 0;  // ||got - ref|| / ||ref||
  double abs = 0;    // per element, absolute (an error the computation has in any fp32 code)
};

// Outputs stored in precision p and computed in fp32 from p-valued inputs:
//   fp32  rtol 1e-5,   atol 1e-6, rnorm 1e-5
//   fp16  rtol 2e-3,   atol 2e-4, rnorm 1e-3   (2 ulp; rounding alone is 0.5 ulp = 4.9e-4)
//   bf16  rtol 1.6e-2, atol 2e-3, rnorm 8e-3   (2 ulp; rounding alone is 0.5 ulp = 3.9e-3)
Tolerance tolerance_for(Precision p);
// fp32 results (partials, statistics, fp32 gradient buffers) of a kernel working on p-valued data:
// the arithmetic is fp32 whatever p is, so these are fp32-level bounds loosened for long sums.
Tolerance fp32_tolerance();

::testing::AssertionResult all_close(std::string_view name, std::span<const double> got,
                                     std::span<const double> ref, const Tolerance& tol);

// The same with an extra absolute allowance per element (`slack`, parallel to ref): an error the
// element's conditioning explains (ref::adam_update_slack, the fused attention's rounding points).
// The allowances bound the error's norm as well as each element.
::testing::AssertionResult all_close(std::string_view name, std::span<const double> got,
                                     std::span<const double> ref, const Tolerance& tol,
                                     std::span<const double> slack);

// Bitwise identity of two byte buffers (determinism, untouched buffers).
::testing::AssertionResult bytes_equal(std::string_view name, std::span<const uint8_t> a,
                                       std::span<const uint8_t> b);

}  // namespace lightseq::ref
