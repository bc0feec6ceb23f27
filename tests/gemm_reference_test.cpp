// gemm_reference_test.cpp — the host half of the GEMM tests checked on the CPU, so that a GPU
// failure points at the library, not at the test: fp16/bf16 encoding, the row-major operand
// indexing of every transpose combination, the epilogue references on hand-computed values, and
// the ReLU mask bit layout. Runs everywhere.
#include "tests/gemm_reference.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace lightseq::test {
namespace {

TEST(GemmReferenceHost, HalfAndBfloat16Encoding) {
  EXPECT_EQ(float_to_half_bits(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half_bits(-2.0f), 0xC000);
  EXPECT_EQ(float_to_half_bits(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7C00);  // rounds up to inf
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie to even
  EXPECT_EQ(float_to_half_bits(std::ldexp(3.0f, -26)), 0x0001);  // above the tie
  EXPECT_EQ(float_to_half_bits(0.1f), 0x2E66);
  EXPECT_EQ(float_to_half_bits(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie to even
  EXPECT_EQ(float_to_half_bits(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie to even, up
  EXPECT_EQ(half_bits_to_float(0x3C00), 1.0f);
  EXPECT_EQ(half_bits_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(half_bits_to_float(0x7BFF), 65504.0f);
  EXPECT_TRUE(std::isnan(half_bits_to_float(0xFFFF)));
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> dist(-65000.0f, 65000.0f);
  for (int i = 0; i < 10000; ++i) {  // every finite half survives a round trip
    const uint16_t h = static_cast<uint16_t>(rng());
    if ((h & 0x7C00) == 0x7C00) continue;
    EXPECT_EQ(float_to_half_bits(half_bits_to_float(h)), h);
    const float f = dist(rng);
    EXPECT_LE(std::abs(half_bits_to_float(float_to_half_bits(f)) - f),
              std::abs(f) * std::ldexp(1.0f, -11) + std::ldexp(1.0f, -25))
        << f;
  }
  EXPECT_EQ(float_to_bf16_bits(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie to even
  EXPECT_EQ(float_to_bf16_bits(1.0f + std::ldexp(3.0f, -8)), 0x3F82);
  EXPECT_EQ(bf16_bits_to_float(0xC040), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(0xFFFF)));
}

TEST(GemmReferenceHost, HostArrayIsPoisonedUntilSet) {
  for (const Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
    HostArray a(p, 3);
    EXPECT_TRUE(a.poisoned(0) && a.poisoned(2));
    EXPECT_TRUE(std::isnan(a.get(1)));
    a.set(1, 0.5);
    EXPECT_EQ(a.get(1), 0.5);
    EXPECT_FALSE(a.poisoned(1));
  }
}

// 2x2 by hand: A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8]] as op(A), op(B).
void set_operands(HostProblem& p) {
  const double a[2][2] = {{1, 2}, {3, 4}}, b[2][2] = {{5, 6}, {7, 8}};
  for (int r = 0; r < 2; ++r) {
    for (int c = 0; c < 2; ++c) {
      // op(A)(r, c) lives at [r][c] when stored as is, at [c][r] when stored transposed.
      p.a.set(p.cs.ta == Transpose::kYes ? c * p.lda + r : r * p.lda + c, a[r][c]);
      p.b.set(p.cs.tb == Transpose::kYes ? c * p.ldb + r : r * p.ldb + c, b[r][c]);
    }
  }
}

TEST(GemmReferenceHost, EveryTransposeGivesTheSameProduct) {
  std::mt19937_64 rng(1);
  for (const Transpose ta : {Transpose::kNo, Transpose::kYes}) {
    for (const Transpose tb : {Transpose::kNo, Transpose::kYes}) {
      GemmCase cs{Precision::kFp32, Epilogue::kNone, ta, tb, 2, 2, 2};
      cs.pad = 3;
      HostProblem p = make_problem(cs, rng);
      set_operands(p);
      const Reference r = reference(p);
      EXPECT_EQ(r.d, (std::vector<double>{19, 22, 43, 50}));
    }
  }
}

TEST(GemmReferenceHost, EpiloguesOnHandComputedValues) {
  std::mt19937_64 rng(2);
  GemmCase cs{Precision::kFp32, Epilogue::kBias, Transpose::kNo, Transpose::kYes, 2, 2, 2};
  cs.alpha = 0.5f;
  HostProblem p = make_problem(cs, rng);
  set_operands(p);
  p.bias.set(0, -10.0);
  p.bias.set(1, 1.0);
  EXPECT_EQ(reference(p).d, (std::vector<double>{-0.5, 12.0, 11.5, 26.0}));  // 0.5·P + bias

  cs.epilogue = Epilogue::kReluAuxBias;
  cs.alpha = 1.0f;
  p = make_problem(cs, rng);
  set_operands(p);
  p.bias.set(0, -20.0);
  p.bias.set(1, 0.0);
  Reference r = reference(p);
  EXPECT_EQ(r.pre, (std::vector<double>{-1, 22, 23, 50}));
  EXPECT_EQ(r.d, (std::vector<double>{0, 22, 23, 50}));

  cs.epilogue = Epilogue::kGeluAuxBias;
  p = make_problem(cs, rng);
  set_operands(p);
  p.bias.set(0, -19.0);
  p.bias.set(1, -21.0);
  r = reference(p);  // pre = [[0, 1], [24, 29]]
  EXPECT_EQ(r.d[0], 0.0);
  EXPECT_NEAR(r.d[1], 0.841192, 1e-6);      // gelu_tanh(1)
  EXPECT_NEAR(r.d_erf[1], 0.841345, 1e-6);  // gelu_erf(1)

  cs.epilogue = Epilogue::kBGradA;
  cs.ta = Transpose::kYes;
  cs.tb = Transpose::kNo;
  p = make_problem(cs, rng);
  set_operands(p);
  r = reference(p);
  EXPECT_EQ(r.d, (std::vector<double>{19, 22, 43, 50}));
  EXPECT_EQ(r.bias_grad, (std::vector<double>{3, 7}));  // Σ_k op(A)[i, k]

  cs.epilogue = Epilogue::kDGeluBGrad;
  cs.ta = cs.tb = Transpose::kNo;
  p = make_problem(cs, rng);
  set_operands(p);
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 2; ++j) p.gelu_aux.set(p.aux_index(0, i, j), i == j ? 0.0 : 100.0);
  }
  r = reference(p);  // gelu'(0) = 0.5, gelu'(100) = 1
  EXPECT_EQ(r.d, (std::vector<double>{9.5, 22, 43, 25}));
  EXPECT_EQ(r.bias_grad, (std::vector<double>{52.5, 47}));  // Σ over rows of D
}

TEST(GemmReferenceHost, ReluMaskBitLayout) {
  std::mt19937_64 rng(3);
  GemmCase cs{Precision::kFp16, Epilogue::kDReluBGrad, Transpose::kNo, Transpose::kNo, 3, 130, 8};
  HostProblem p = make_problem(cs, rng);
  EXPECT_EQ(p.aux_ld, 256);
  EXPECT_EQ(p.mask.size(), 3u * 256 / 8);
  for (auto& byte : p.mask) byte = 0;
  p.set_mask_bit(0, 2, 129, true);  // bit 2·256 + 129 = 641: byte 80, bit 1
  EXPECT_EQ(p.mask[80], 0x02);
  EXPECT_TRUE(p.mask_bit(0, 2, 129));
  EXPECT_FALSE(p.mask_bit(0, 2, 128));
}

TEST(GemmReferenceHost, DerivativesMatchFiniteDifferences) {
  for (const double x : {-3.0, -0.7, 0.0, 0.3, 2.5}) {
    const double h = 1e-6;
    EXPECT_NEAR(dgelu_tanh(x), (gelu_tanh(x + h) - gelu_tanh(x - h)) / (2 * h), 1e-8) << x;
    EXPECT_NEAR(dgelu_erf(x), (gelu_erf(x + h) - gelu_erf(x - h)) / (2 * h), 1e-8) << x;
  }
}

}  // namespace
}  // namespace lightseq::test
