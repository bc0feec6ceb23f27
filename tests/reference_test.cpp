// reference_test.cpp — proves the float64 references before they judge GPU code (CPU only):
// Philox against the Random123 known-answer vectors and the keep-bit helpers against each other;
// the host fp16/bf16 rounding; every kernel reference's backward against central finite
// differences of its forward; the encoder and decoder layer references' gradients (input, memory,
// every parameter) against central finite differences over post/pre-LN, ReLU/GELU, causal and
// padding variants, plus their PyTorch semantics on cases small enough to compute by hand.
// Seeds are fixed (a finite-difference check is reproducible); LIGHTSEQ_TEST_SEED overrides them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <vector>

#include "tests/reference/compare.h"
#include "tests/reference/dtype.h"
#include "tests/reference/finite_diff.h"
#include "tests/reference/kernels.h"
#include "tests/reference/layers.h"
#include "tests/reference/parallel.h"

namespace lightseq::ref {
namespace {

// ---- Philox -----------------------------------------------------------------------------------

TEST(ReferenceParallel, EveryIndexOnceAndErrorsRethrown) {
  for (int64_t n : {0, 1, 3, 1000}) {
    std::vector<int> hits(static_cast<size_t>(n) + 2, 0);
    parallel_for(1, n + 1, [&](int64_t i) { ++hits[static_cast<size_t>(i)]; });
    for (int64_t i = 0; i < n + 2; ++i) {
      EXPECT_EQ(hits[static_cast<size_t>(i)], i >= 1 && i <= n ? 1 : 0)
          << "n = " << n << ", i = " << i;
    }
  }
  EXPECT_THROW(parallel_for(0, 100,
                            [](int64_t i) {
                              if (i == 77) throw std::runtime_error("77");
                            }),
               std::runtime_error);
}

TEST(ReferencePhilox, Random123KnownAnswerVectors) {
  // Random123 tests/kat_vectors, the three "philox4x32 10" lines: counter[4] key[2] -> out[4].
  struct Kat {
    uint32_t ctr[4], key[2], out[4];
  };
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const kern::Philox4 r =
        kern::philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(r.v[i], k.out[i]) << "word " << i << " of ctr " << k.ctr[0];
  }
}

TEST(ReferencePhilox, DropoutCounterLayoutIsTheDocumentedOne) {
  // counter = {lo(i/4), hi(i/4), lo(offset), hi(offset)}, key = {lo(seed), hi(seed)}.
  const DropoutArgs d = kern::make_dropout_args(0x0123456789abcdefull, 0xfedcba9876543210ull, 0.5);
  const uint64_t group = 0x0000000500000007ull;
  const kern::Philox4 direct =
      kern::philox4x32_10(7, 5, 0x76543210u, 0xfedcba98u, 0x89abcdefu, 0x01234567u);
  const kern::Philox4 r = kern::dropout_draws(d, group);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(r.v[k], direct.v[k]);
    EXPECT_EQ(keep(d, 4 * group + k), static_cast<uint64_t>(direct.v[k]) < d.keep_below);
  }
}

TEST(ReferencePhilox, MakeDropoutArgsEdges) {
  EXPECT_EQ(kern::make_dropout_args(1, 2, 0.0).keep_below, 1ull << 32);
  EXPECT_EQ(kern::make_dropout_args(1, 2, 0.0).scale, 1.0f);
  EXPECT_EQ(kern::make_dropout_args(1, 2, 1.0).keep_below, 0u);
  EXPECT_EQ(kern::make_dropout_args(1, 2, 1.0).scale, 0.0f);
  EXPECT_EQ(kern::make_dropout_args(1, 2, 0.1).keep_below,
            static_cast<uint64_t>(std::llround(0.9 * 4294967296.0)));
  EXPECT_FLOAT_EQ(kern::make_dropout_args(1, 2, 0.1).scale, static_cast<float>(1 / 0.9));
  const DropoutArgs all = kern::make_dropout_args(3, 4, 0.0),
                    none = kern::make_dropout_args(3, 4, 1.0);
  for (uint64_t i = 0; i < 4096; ++i) {
    ASSERT_TRUE(keep(all, i));
    ASSERT_FALSE(keep(none, i));
  }
}

template <int N>
void check_keep_bits(const DropoutArgs& d) {
  for (uint64_t i0 = 0; i0 < 512; i0 += N) {
    const uint32_t bits = kern::dropout_keep_bits<N>(d, i0);
    for (int e = 0; e < N; ++e) {
      ASSERT_EQ((bits >> e) & 1u, keep(d, i0 + e) ? 1u : 0u) << "N=" << N << " i0=" << i0;
    }
    if (N < 32) {
      ASSERT_EQ(bits >> N, 0u);
    }
  }
}

TEST(ReferencePhilox, KeepBitsMatchPerElementKeep) {
  const DropoutArgs d = kern::make_dropout_args(42, 7, 0.3);
  check_keep_bits<1>(d);
  check_keep_bits<2>(d);
  check_keep_bits<4>(d);
  check_keep_bits<8>(d);
  check_keep_bits<16>(d);
  check_keep_bits<32>(d);
  const std::vector<uint8_t> m = keep_mask(d, 1001);
  for (uint64_t i = 0; i < m.size(); ++i) ASSERT_EQ(m[i] != 0, keep(d, i)) << i;
}

TEST(ReferencePhilox, KeptFractionAndIndependenceOfOffsets) {
  const uint64_t n = 1 << 20;
  for (double p : {0.1, 0.5, 0.9}) {
    const std::vector<uint8_t> a = keep_mask(kern::make_dropout_args(11, 100, p), n);
    const std::vector<uint8_t> b = keep_mask(kern::make_dropout_args(11, 101, p), n);
    const std::vector<uint8_t> c = keep_mask(kern::make_dropout_args(12, 100, p), n);
    double kept = 0, diff_offset = 0, diff_seed = 0;
    for (uint64_t i = 0; i < n; ++i) {
      kept += a[i];
      diff_offset += a[i] != b[i];
      diff_seed += a[i] != c[i];
    }
    const double sigma = std::sqrt(n * p * (1 - p));
    EXPECT_NEAR(kept, n * (1 - p), 5 * sigma) << "p=" << p;
    const double q = 2 * p * (1 - p), sq = std::sqrt(n * q * (1 - q));
    EXPECT_NEAR(diff_offset, n * q, 5 * sq) << "p=" << p;
    EXPECT_NEAR(diff_seed, n * q, 5 * sq) << "p=" << p;
  }
}

// ---- dtype rounding ---------------------------------------------------------------------------

TEST(ReferenceDtype, HalfRoundsToNearestEven) {
  const Precision h = Precision::kFp16;
  EXPECT_EQ(round_to(h, 1.0 + std::ldexp(1, -11)), 1.0);  // tie -> even
  EXPECT_EQ(round_to(h, 1.0 + 3 * std::ldexp(1, -11)), 1.0 + std::ldexp(1, -9));
  EXPECT_EQ(round_to(h, 65504.0), 65504.0);
  EXPECT_EQ(round_to(h, 65519.0), 65504.0);
  EXPECT_TRUE(std::isinf(round_to(h, 65520.0)));
  EXPECT_EQ(round_to(h, std::ldexp(1, -25)), 0.0);  // half the smallest subnormal: tie -> 0
  EXPECT_EQ(round_to(h, 3 * std::ldexp(1, -25)), std::ldexp(1, -23));
  EXPECT_EQ(half_bits(1.0), 0x3C00);
  EXPECT_EQ(half_bits(-2.0), 0xC000);
  EXPECT_EQ(half_bits(std::ldexp(1, -24)), 0x0001);
  EXPECT_EQ(half_bits(65504.0), 0x7BFF);
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const double v = half_value(static_cast<uint16_t>(b));
    if (std::isnan(v)) continue;
    ASSERT_EQ(round_to(h, v), v) << b;
    ASSERT_EQ(half_bits(v), b) << b;
  }
}

TEST(ReferenceDtype, Bf16RoundsToNearestEven) {
  const Precision b = Precision::kBf16;
  EXPECT_EQ(round_to(b, 1.0 + std::ldexp(1, -8)), 1.0);
  EXPECT_EQ(round_to(b, 1.0 + 3 * std::ldexp(1, -8)), 1.0 + std::ldexp(1, -6));
  EXPECT_EQ(bf16_bits(1.0), 0x3F80);
  for (uint32_t u = 0; u < 0x10000; ++u) {
    const double v = bf16_value(static_cast<uint16_t>(u));
    if (std::isnan(v)) continue;
    ASSERT_EQ(round_to(b, v), v) << u;
    ASSERT_EQ(bf16_bits(v), u) << u;
  }
  const Vec vals{1.5, -3.25, 1e-3, 12345.678};
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
    const Vec back = decode(p, encode(p, vals));
    for (size_t i = 0; i < vals.size(); ++i) EXPECT_EQ(back[i], round_to(p, vals[i]));
  }
}

TEST(ReferenceCompare, NanNeverPassesAndNormsAreChecked) {
  const Vec ref{1, 2, 3};
  EXPECT_TRUE(all_close("same", ref, ref, tolerance_for(Precision::kFp32)));
  EXPECT_FALSE(all_close("nan", Vec{1, NAN, 3}, ref, {1e9, 1e9, 1e9}));
  EXPECT_FALSE(all_close("inf", Vec{1, INFINITY, 3}, ref, {1e9, 1e9, 1e9}));
  EXPECT_FALSE(all_close("off", Vec{1, 2.1, 3}, ref, tolerance_for(Precision::kBf16)));
  EXPECT_FALSE(all_close("size", Vec{1, 2}, ref, tolerance_for(Precision::kBf16)));
}

// ---- kernel references: backward = derivative of forward --------------------------------------

TEST(ReferenceKernels, LayerNormBackwardIsTheGradientOfTheForward) {
  Rng rng(fixed_seed(1));
  const int64_t rows = 3, H = 8;
  Vec z = rng.uniform_vec(rows * H, -2, 2), gamma = rng.uniform_vec(H, 0.5, 1.5),
      beta = rng.uniform_vec(H, -1, 1);
  const Vec G = rng.uniform_vec(rows * H, -1, 1), gres = rng.uniform_vec(rows * H, -1, 1);
  auto loss = [&] { return dot(layernorm_fwd(z, gamma, beta, rows, H, 1e-5).y, G); };
  const LnForward f = layernorm_fwd(z, gamma, beta, rows, H, 1e-5);
  const DropoutArgs d = kern::make_dropout_args(5, 6, 0.25);
  const LnBackward b = ln_bwd(G, z, f.mean, f.rstd, gamma, gres, rows, H, kern::Norm::kOn,
                              kern::ResidualIn::kOn, kern::Drop::kOn, d);
  Vec expect_z = numeric_grad(z, loss);
  for (size_t i = 0; i < expect_z.size(); ++i) expect_z[i] += gres[i];
  EXPECT_TRUE(all_close("grad_z", b.grad_z, expect_z, kFd));
  EXPECT_TRUE(all_close("dgamma", b.dgamma, numeric_grad(gamma, loss), kFd));
  EXPECT_TRUE(all_close("dbeta", b.dbeta, numeric_grad(beta, loss), kFd));
  Vec dbias(H);
  for (int64_t i = 0; i < rows * H; ++i) {
    EXPECT_EQ(b.grad_branch[i], keep(d, i) ? b.grad_z[i] * d.scale : 0.0);
    dbias[i % H] += b.grad_branch[i];
  }
  EXPECT_TRUE(all_close("dbias", b.dbias, dbias, kFd));
  // The branch gradient is the derivative of the forward's dropout(branch + bias) path.
  Vec branch = rng.uniform_vec(rows * H, -1, 1), bias = rng.uniform_vec(H, -1, 1);
  const Vec residual = rng.uniform_vec(rows * H, -1, 1);
  auto loss_z = [&] { return dot(bias_dropout_residual(branch, bias, residual, rows, H, &d), G); };
  const LnBackward nb = ln_bwd(G, z, f.mean, f.rstd, gamma, gres, rows, H, kern::Norm::kOff,
                               kern::ResidualIn::kOff, kern::Drop::kOn, d);
  EXPECT_TRUE(all_close("grad_branch", nb.grad_branch, numeric_grad(branch, loss_z), kFd));
  EXPECT_TRUE(all_close("dbias (no norm)", nb.dbias, numeric_grad(bias, loss_z), kFd));
}

TEST(ReferenceKernels, BiasActivationDropoutBackwardIsTheGradientOfTheForward) {
  Rng rng(fixed_seed(2));
  const int64_t rows = 4, cols = 6;
  const DropoutArgs d = kern::make_dropout_args(9, 1, 0.3);
  for (kern::Act act : {kern::Act::kRelu, kern::Act::kGelu, kern::Act::kGeluTanh}) {
    for (kern::Drop drop : {kern::Drop::kOff, kern::Drop::kOn}) {
      Vec x = rng.uniform_vec(rows * cols, -2, 2), bias = rng.uniform_vec(cols, -1, 1);
      const Vec G = rng.uniform_vec(rows * cols, -1, 1);
      auto loss = [&] { return dot(bias_act_dropout_fwd(x, bias, rows, cols, act, drop, d), G); };
      const BiasActBackward b = bias_act_dropout_bwd(G, x, bias, rows, cols, act, drop, d);
      EXPECT_TRUE(all_close("grad_x", b.grad_x, numeric_grad(x, loss), kFd));
      EXPECT_TRUE(all_close("dbias", b.dbias, numeric_grad(bias, loss), kFd));
    }
  }
  EXPECT_EQ(activate(kern::Act::kGelu, 1.0), 0.5 * (1 + std::erf(M_SQRT1_2)));
  EXPECT_NEAR(activate(kern::Act::kGeluTanh, 1.0), 0.8411919906,
              1e-10);  // torch, approximate='tanh'
  EXPECT_NEAR(activate(kern::Act::kGeluTanh, -2.0), -0.0454023059, 1e-10);
  EXPECT_EQ(activate_grad(kern::Act::kRelu, 0.0), 0.0);
}

TEST(ReferenceKernels, SoftmaxBackwardIsTheGradientOfTheForwardAndMasksAreExact) {
  Rng rng(fixed_seed(3));
  const int64_t batch = 2, heads = 2, q = 3, k = 5;
  const std::vector<uint8_t> pad{0, 0, 0, 1, 1, 1, 1, 1, 1, 1};  // batch 1 fully padded
  const DropoutArgs d = kern::make_dropout_args(4, 2, 0.2);
  Vec s = rng.uniform_vec(batch * heads * q * k, -3, 3);
  const Vec G = rng.uniform_vec(s.size(), -1, 1);
  for (kern::Mask mask :
       {kern::Mask::kNone, kern::Mask::kPadding, kern::Mask::kCausal, kern::Mask::kPaddingCausal}) {
    auto loss = [&] {
      return dot(attn_softmax_fwd(s, pad, batch, heads, q, k, mask, kern::Drop::kOn, d).dropped, G);
    };
    const SoftmaxForward f = attn_softmax_fwd(s, pad, batch, heads, q, k, mask, kern::Drop::kOn, d);
    const Vec g = attn_softmax_bwd(G, f.probs, batch * heads * q, k, kern::Drop::kOn, d);
    EXPECT_TRUE(all_close("grad_scores", g, numeric_grad(s, loss), kFd));
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < q; ++i) {
        double total = 0;
        bool any = false;
        for (int64_t j = 0; j < k; ++j) {
          const double p = f.probs[((b * heads + 1) * q + i) * k + j];
          const bool m = attn_masked(mask, pad, b, i, j, q, k);
          if (m) {
            EXPECT_EQ(p, 0.0);
          }
          any |= !m;
          total += p;
        }
        EXPECT_NEAR(total, any ? 1.0 : 0.0, 1e-12);
      }
    }
  }
  // Causal with q_len != k_len aligns the last query with the last key.
  EXPECT_FALSE(attn_masked(kern::Mask::kCausal, pad, 0, 2, 4, 3, 5));
  EXPECT_TRUE(attn_masked(kern::Mask::kCausal, pad, 0, 0, 3, 3, 5));
  EXPECT_FALSE(attn_masked(kern::Mask::kCausal, pad, 0, 0, 2, 3, 5));
}

TEST(ReferenceKernels, SplitAndMergeHeadsAreInverse) {
  Rng rng(fixed_seed(4));
  const int64_t batch = 2, seq = 3, H = 8, heads = 2, parts = 3;
  const Vec in = rng.uniform_vec(batch * seq * parts * H, -1, 1);
  const MergeHeads m =
      merge_heads(split_heads(in, {}, batch, seq, H, heads, parts), batch, seq, H, heads, parts);
  EXPECT_EQ(m.out, in);
  // Spot check of the layout: element (p=2, b=1, h=1, s=2, e=3).
  const Vec out = split_heads(in, Vec(parts * H, 0.5), batch, seq, H, heads, parts);
  const int64_t d = H / heads;
  EXPECT_EQ(out[(((2 * batch + 1) * heads + 1) * seq + 2) * d + 3],
            in[(1 * seq + 2) * parts * H + 2 * H + 1 * d + 3] + 0.5);
}

TEST(ReferenceKernels, EmbeddingBackwardIsTheGradientOfTheForward) {
  Rng rng(fixed_seed(5));
  for (kern::Norm norm : {kern::Norm::kOff, kern::Norm::kOn}) {
    EmbeddingArgs a;
    a.batch = 2, a.seq = 3, a.vocab = 5, a.hidden = 8, a.padding_idx = 1, a.max_positions = 4;
    a.scale = 2.5, a.pos = kern::Pos::kLearned, a.norm = norm, a.drop = kern::Drop::kOn;
    a.d = kern::make_dropout_args(8, 3, 0.25);
    const std::vector<int64_t> tokens{0, 1, 4, 3, 3, 1};
    Vec table = rng.uniform_vec(a.vocab * a.hidden, -1, 1);
    Vec pos = rng.uniform_vec(a.max_positions * a.hidden, -1, 1);
    Vec gamma = rng.uniform_vec(a.hidden, 0.5, 1.5), beta = rng.uniform_vec(a.hidden, -1, 1);
    const Vec G = rng.uniform_vec(a.batch * a.seq * a.hidden, -1, 1);
    auto loss = [&] {
      return dot(embedding_fwd(a, tokens, table, pos, gamma, beta, nullptr).out, G);
    };
    const EmbeddingForward f = embedding_fwd(a, tokens, table, pos, gamma, beta, nullptr);
    EXPECT_FALSE(f.bad_token);
    const EmbeddingBackward b = embedding_bwd(a, G, tokens, f.sum, f.mean, f.rstd, gamma);
    EXPECT_TRUE(all_close("grad_table", b.grad_table, numeric_grad(table, loss), kFd));
    EXPECT_TRUE(all_close("grad_pos", b.grad_pos, numeric_grad(pos, loss), kFd));
    if (norm == kern::Norm::kOn) {
      EXPECT_TRUE(all_close("dgamma", b.dgamma, numeric_grad(gamma, loss), kFd));
      EXPECT_TRUE(all_close("dbeta", b.dbeta, numeric_grad(beta, loss), kFd));
    }
    for (int64_t c = 0; c < a.hidden; ++c) EXPECT_EQ(f.out[1 * a.hidden + c], 0.0);  // padding
  }
  EmbeddingArgs a;
  a.batch = 1, a.seq = 3, a.vocab = 5, a.hidden = 8, a.max_positions = 2;
  const Vec t(40, 1.0);
  EXPECT_TRUE(embedding_fwd(a, {0, 1, 2}, t, {}, {}, {}, nullptr).bad_token);  // t = 2 >= 2
  a.max_positions = 3;
  EXPECT_TRUE(embedding_fwd(a, {0, 5, 2}, t, {}, {}, {}, nullptr).bad_token);
  EXPECT_TRUE(embedding_fwd(a, {-1, 0, 2}, t, {}, {}, {}, nullptr).bad_token);
  EXPECT_FALSE(embedding_fwd(a, {0, 4, 2}, t, {}, {}, {}, nullptr).bad_token);
  // Fairseq's table: P[t][k] = sin(t·f_k), P[t][H/2 + k] = cos(t·f_k), f_0 = 1, f_{H/2-1} = 1e-4.
  EXPECT_DOUBLE_EQ(sinusoidal(3, 0, 8), std::sin(3.0));
  EXPECT_DOUBLE_EQ(sinusoidal(3, 4, 8), std::cos(3.0));
  EXPECT_NEAR(sinusoidal(3, 3, 8), std::sin(3e-4), 1e-15);
}

TEST(ReferenceKernels, CrossEntropyGradientIsTheDerivativeOfTheLoss) {
  Rng rng(fixed_seed(6));
  const int64_t rows = 4, V = 7;
  Vec logits = rng.uniform_vec(rows * V, -3, 3);
  const std::vector<int64_t> targets{2, -100, 6, 0};
  const double eps = 0.1, scale = 0.5;
  auto loss = [&] {
    const CrossEntropy ce = cross_entropy(logits, targets, rows, V, -100, eps, scale);
    double s = 0;
    for (double l : ce.loss) s += l;
    return s * scale;
  };
  const CrossEntropy ce = cross_entropy(logits, targets, rows, V, -100, eps, scale);
  EXPECT_TRUE(all_close("grad", ce.grad, numeric_grad(logits, loss), kFd));
  EXPECT_EQ(ce.loss[1], 0.0);
  EXPECT_FALSE(ce.bad_target);
  // Unsmoothed: loss = nll = -log softmax[y].
  const CrossEntropy plain = cross_entropy(logits, targets, rows, V, -100, 0.0, 1.0);
  double z = 0;
  for (int64_t j = 0; j < V; ++j) z += std::exp(logits[j]);
  EXPECT_NEAR(plain.loss[0], std::log(z) - logits[2], 1e-12);
  EXPECT_EQ(plain.loss[0], plain.nll[0]);
  EXPECT_TRUE(cross_entropy(logits, {2, 7, 6, 0}, rows, V, -100, eps, 1).bad_target);
  EXPECT_TRUE(cross_entropy(logits, {2, -1, 6, 0}, rows, V, -100, eps, 1).bad_target);
}

TEST(ReferenceKernels, AdamMatchesAHandComputedStep) {
  // Step 1, g = 0.5 (grad_scale 0.5 of a stored 1.0): m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25.
  AdamHyper h;
  h.lr = 0.1, h.beta1 = 0.9, h.beta2 = 0.999, h.eps = 1e-8, h.weight_decay = 0.01,
  h.grad_scale = 0.5;
  h.bias_correction1 = 1 - 0.9, h.bias_correction2 = 1 - 0.999;
  double p = 2, m = 0, v = 0;
  adam_step(kern::AdamMode::kAdamW, h, 1.0, p, m, v);
  EXPECT_NEAR(m, 0.05, 1e-15);
  EXPECT_NEAR(v, 0.00025, 1e-15);
  EXPECT_NEAR(p, 2 - 0.1 * 0.01 * 2 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-12);
  p = 2, m = 0, v = 0;
  adam_step(kern::AdamMode::kAdam, h, 1.0, p, m, v);  // g = 0.5 + 0.01·2 = 0.52
  EXPECT_NEAR(m, 0.052, 1e-15);
  EXPECT_NEAR(p, 2 - 0.1 * 0.52 / (0.52 + 1e-8), 1e-12);
}

TEST(ReferenceKernels, ColumnSumOverwritesOrAdds) {
  const Vec partials{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // 3 blocks, stride 4
  EXPECT_EQ(column_sum(partials, 3, 4, 1, 2, {}, kern::Accumulate::kOverwrite),
            (Vec{2 + 6 + 10, 3 + 7 + 11}));
  EXPECT_EQ(column_sum(partials, 3, 4, 1, 2, {100, 200}, kern::Accumulate::kAdd), (Vec{118, 221}));
}

// The criterion's composed reference (GEMM, cross-entropy, GEMMs) is the gradient of Σ_rows loss.
TEST(ReferenceKernels, OutputCriterionIsTheGradientOfTheSummedLoss) {
  Rng rng(fixed_seed(7));
  const int64_t rows = 4, H = 8, V = 7, ignore = 3;
  Vec h = rng.uniform_vec(rows * H, -1, 1), w = rng.uniform_vec(V * H, -1, 1);
  const std::vector<int64_t> targets{0, 3, 6, 2};  // row 1 ignored
  for (double ls : {0.0, 0.1}) {
    const OutputCriterion r = output_criterion(h, w, targets, rows, H, V, ignore, ls);
    EXPECT_EQ(r.ce.loss[1], 0.0);
    auto total = [&] {
      const OutputCriterion x = output_criterion(h, w, targets, rows, H, V, ignore, ls);
      double s = 0;
      for (double l : x.ce.loss) s += l;
      return s;
    };
    EXPECT_TRUE(all_close("grad_h", r.grad_h, numeric_grad(h, total), kFd));
    EXPECT_TRUE(all_close("grad_w", r.grad_w, numeric_grad(w, total), kFd));
  }
}

}  // namespace
}  // namespace lightseq::ref
