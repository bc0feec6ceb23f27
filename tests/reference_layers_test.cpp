// reference_layers_test.cpp — proves the encoder and decoder layer references (CPU only): every
// gradient (input, memory, each parameter) against central finite differences of the forward, in
// float64 at small sizes, over post/pre-LN × ReLU/GELU × causal × key padding; the mask semantics
// (causality, padding, batch independence) from the gradients' zero structure; and the forward
// against a by-hand computation of PyTorch's formulas on a tiny layer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <functional>

#include "tests/reference/compare.h"
#include "tests/reference/dtype.h"
#include "tests/reference/finite_diff.h"
#include "tests/reference/kernels.h"
#include "tests/reference/layers.h"

namespace lightseq::ref {
namespace {

struct Variant {
  NormPlacement norm;
  Activation act;
  bool causal;
  bool padding;
};

std::string name_of(const Variant& v) {
  return std::string(to_string(v.norm)) + "_" + std::string(to_string(v.act)) +
         (v.causal ? "_causal" : "") + (v.padding ? "_padding" : "");
}
void PrintTo(const Variant& v, std::ostream* os) { *os << name_of(v); }

std::vector<Variant> all_variants() {
  std::vector<Variant> out;
  for (NormPlacement n : {NormPlacement::kPost, NormPlacement::kPre}) {
    for (Activation a : kActivations) {
      for (bool causal : {false, true}) {
        for (bool padding : {false, true}) out.push_back({n, a, causal, padding});
      }
    }
  }
  return out;
}

LayerConfig config_of(const Variant& v) {
  LayerConfig c;
  c.hidden = 8, c.heads = 2, c.ffn = 12, c.norm = v.norm, c.activation = v.act, c.causal = v.causal;
  c.eps = 1e-5;
  return c;
}

// Trailing padding: batch 0 has none, batch 1 its last `pad` positions.
std::vector<uint8_t> trailing_padding(int64_t batch, int64_t seq, int64_t pad) {
  std::vector<uint8_t> m(batch * seq, 0);
  for (int64_t t = seq - pad; t < seq; ++t) m[(batch - 1) * seq + t] = 1;
  return m;
}

class ReferenceEncoderLayer : public testing::TestWithParam<Variant> {};

TEST_P(ReferenceEncoderLayer, GradientsMatchFiniteDifferences) {
  const Variant v = GetParam();
  const LayerConfig c = config_of(v);
  Rng rng(fixed_seed(100));
  EncoderLayerParams p = random_encoder_params(c, rng);
  EncoderLayerInput in;
  in.batch = 2, in.seq = 4;
  in.x = rng.uniform_vec(in.batch * in.seq * c.hidden, -1.5, 1.5);
  if (v.padding) in.key_padding = trailing_padding(in.batch, in.seq, 2);
  const Vec G = rng.uniform_vec(in.x.size(), -1, 1);
  auto loss = [&] { return dot(encoder_layer_reference(c, p, in, {}).out, G); };
  EncoderLayerResult r = encoder_layer_reference(c, p, in, G);
  ASSERT_EQ(r.out.size(), in.x.size());
  EXPECT_TRUE(all_close("grad_x", r.grad_x, numeric_grad(in.x, loss), kFd));
  auto grads = named_tensors(r.grad);
  auto params = named_tensors(p);
  ASSERT_EQ(grads.size(), 12u);
  for (size_t t = 0; t < params.size(); ++t) {
    ASSERT_EQ(grads[t].second->size(), params[t].second->size()) << params[t].first;
    EXPECT_TRUE(
        all_close(params[t].first, *grads[t].second, numeric_grad(*params[t].second, loss), kFd));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ReferenceEncoderLayer, testing::ValuesIn(all_variants()),
                         [](const auto& info) { return name_of(info.param); });

class ReferenceDecoderLayer : public testing::TestWithParam<Variant> {};

TEST_P(ReferenceDecoderLayer, GradientsMatchFiniteDifferences) {
  const Variant v = GetParam();
  const LayerConfig c = config_of(v);
  Rng rng(fixed_seed(200));
  DecoderLayerParams p = random_decoder_params(c, rng);
  DecoderLayerInput in;
  in.batch = 2, in.seq = 3, in.memory_seq = 4;
  in.x = rng.uniform_vec(in.batch * in.seq * c.hidden, -1.5, 1.5);
  in.memory = rng.uniform_vec(in.batch * in.memory_seq * c.hidden, -1.5, 1.5);
  if (v.padding) {
    in.key_padding = trailing_padding(in.batch, in.seq, 1);
    in.memory_key_padding = trailing_padding(in.batch, in.memory_seq, 2);
  }
  const Vec G = rng.uniform_vec(in.x.size(), -1, 1);
  auto loss = [&] { return dot(decoder_layer_reference(c, p, in, {}).out, G); };
  DecoderLayerResult r = decoder_layer_reference(c, p, in, G);
  EXPECT_TRUE(all_close("grad_x", r.grad_x, numeric_grad(in.x, loss), kFd));
  EXPECT_TRUE(all_close("grad_memory", r.grad_memory, numeric_grad(in.memory, loss), kFd));
  auto grads = named_tensors(r.grad);
  auto params = named_tensors(p);
  ASSERT_EQ(grads.size(), 18u);
  for (size_t t = 0; t < params.size(); ++t) {
    EXPECT_TRUE(
        all_close(params[t].first, *grads[t].second, numeric_grad(*params[t].second, loss), kFd));
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, ReferenceDecoderLayer, testing::ValuesIn(all_variants()),
                         [](const auto& info) { return name_of(info.param); });

// Rows of grad_x that must be zero when only row `row`'s output has a gradient.
void expect_zero_rows(const Vec& grad_x, int64_t H, const std::vector<int64_t>& rows,
                      const std::string& why) {
  for (int64_t r : rows) {
    for (int64_t c = 0; c < H; ++c) EXPECT_EQ(grad_x[r * H + c], 0.0) << why << ": row " << r;
  }
}
bool row_nonzero(const Vec& g, int64_t H, int64_t r) {
  for (int64_t c = 0; c < H; ++c) {
    if (g[r * H + c] != 0.0) return true;
  }
  return false;
}

double max_abs(const Vec& v) {
  double m = 0;
  for (double e : v) m = std::max(m, std::abs(e));
  return m;
}

// The GPU layer tests' kink removal, at a real size (the smallest of theirs): it terminates,
// leaves no pre-activation in the band, and changes nothing but linear1's bias.
TEST(ReferenceLayerSemantics, MoveOffReluKinkClearsTheBand) {
  Rng rng(test_seed());
  LayerConfig cfg{
      512, 8, 2048, NormPlacement::kPre, Activation::kRelu, false, 1e-5, Precision::kFp32};
  EncoderLayerParams params = random_encoder_params(cfg, rng);
  for (auto& [name, v] : named_tensors(params)) round_in_place(Precision::kFp32, *v);
  const EncoderLayerParams before = params;
  const int64_t rows = 4 * 32;
  EncoderLayerInput in{4, 32, rng.uniform_vec(rows * 512, -1, 1), {}};
  const Vec grad_out = rng.uniform_vec(rows * 512, -1, 1);
  const double band_rel = 1e-3;  // wider than the GPU tests' 1e-4: some columns must move
  // the band is relative to the pre-activations before any shift (shifts can raise the maximum)
  const double band =
      band_rel * max_abs(encoder_layer_reference(cfg, params, in, grad_out).ffn_pre);
  const KinkFreeResult k = move_off_relu_kink(cfg, params, in, grad_out, band_rel);
  EXPECT_GT(k.rounds, 0);
  for (double v : k.result.ffn_pre) ASSERT_GT(std::abs(v), band);
  EXPECT_EQ(params.linear1.weight, before.linear1.weight);
  EXPECT_EQ(params.self_attn.in_proj_weight, before.self_attn.in_proj_weight);
  EXPECT_NE(params.linear1.bias, before.linear1.bias);
  EXPECT_EQ(k.result.out, encoder_layer_reference(cfg, params, in, grad_out).out);
}

TEST(ReferenceLayerSemantics, MoveOffReluKinkClearsTheBandOfADecoder) {
  Rng rng(test_seed());
  LayerConfig cfg{
      256, 4, 1024, NormPlacement::kPost, Activation::kRelu, true, 1e-5, Precision::kBf16};
  DecoderLayerParams params = random_decoder_params(cfg, rng);
  for (auto& [name, v] : named_tensors(params)) round_in_place(Precision::kBf16, *v);
  const DecoderLayerParams before = params;
  const int64_t rows = 3 * 16;
  DecoderLayerInput in{
      3, 16, 12, rng.uniform_vec(rows * 256, -1, 1), rng.uniform_vec(3 * 12 * 256, -1, 1), {}, {}};
  const Vec grad_out = rng.uniform_vec(rows * 256, -1, 1);
  const double band_rel = 1e-2;
  const double band =
      band_rel * max_abs(decoder_layer_reference(cfg, params, in, grad_out).ffn_pre);
  const auto k = move_off_relu_kink(cfg, params, in, grad_out, band_rel);
  EXPECT_GT(k.rounds, 0);
  ASSERT_EQ(k.result.ffn_pre.size(), static_cast<size_t>(rows * 1024));
  for (double v : k.result.ffn_pre) ASSERT_GT(std::abs(v), band);
  EXPECT_EQ(params.linear1.weight, before.linear1.weight);
  EXPECT_EQ(params.cross_attn.in_proj_weight, before.cross_attn.in_proj_weight);
  EXPECT_NE(params.linear1.bias, before.linear1.bias);
  EXPECT_EQ(k.result.out, decoder_layer_reference(cfg, params, in, grad_out).out);
}

TEST(ReferenceLayerSemantics, CausalPaddingAndBatchIndependence) {
  for (NormPlacement norm : {NormPlacement::kPost, NormPlacement::kPre}) {
    LayerConfig c = config_of({norm, Activation::kGelu, true, true});
    Rng rng(fixed_seed(300));
    const EncoderLayerParams p = random_encoder_params(c, rng);
    EncoderLayerInput in;
    in.batch = 2, in.seq = 5;
    in.x = rng.uniform_vec(in.batch * in.seq * c.hidden, -1, 1);
    in.key_padding = trailing_padding(in.batch, in.seq, 2);  // batch 1: t = 3, 4 padded
    const int64_t H = c.hidden;
    // Output row (b=0, t=2) depends on x rows t <= 2 of batch 0 only (causal, batch-independent).
    Vec G(in.x.size(), 0.0);
    for (int64_t k = 0; k < H; ++k) G[2 * H + k] = 1.0 + k;
    EncoderLayerResult r = encoder_layer_reference(c, p, in, G);
    expect_zero_rows(r.grad_x, H, {3, 4, 5, 6, 7, 8, 9}, "causal/batch");
    EXPECT_TRUE(row_nonzero(r.grad_x, H, 0) && row_nonzero(r.grad_x, H, 1));
    // Output rows of batch 1 that are not padded never see the padded keys t = 3, 4.
    G.assign(in.x.size(), 0.0);
    for (int64_t t = 0; t < 3; ++t) {
      for (int64_t k = 0; k < H; ++k) G[(5 + t) * H + k] = 1.0;
    }
    c.causal = false;
    r = encoder_layer_reference(c, p, in, G);
    expect_zero_rows(r.grad_x, H, {0, 1, 2, 3, 4, 8, 9}, "padding");
    // Without the padding mask the padded rows do matter: the check above can fail.
    in.key_padding.clear();
    r = encoder_layer_reference(c, p, in, G);
    EXPECT_TRUE(row_nonzero(r.grad_x, H, 8));
  }
}

// PyTorch's formulas computed by hand for hidden 2, 2 heads (d = 1), seq 2, one batch, post-LN,
// ReLU, ffn 1: checks the in_proj row split (q, k, v), the 1/sqrt(d) scale, out_proj, the FFN and
// LayerNorm (biased variance, eps inside the root), independently of the reference's code.
TEST(ReferenceLayerSemantics, TinyEncoderLayerByHand) {
  LayerConfig c;
  c.hidden = 2, c.heads = 2, c.ffn = 1, c.norm = NormPlacement::kPost, c.eps = 1e-5;
  Rng rng(fixed_seed(400));
  const EncoderLayerParams p = random_encoder_params(c, rng);
  EncoderLayerInput in;
  in.batch = 1, in.seq = 2;
  in.x = rng.uniform_vec(4, -1, 1);
  const Vec out = encoder_layer_reference(c, p, in, {}).out;

  const Vec& W = p.self_attn.in_proj_weight;  // [6, 2]
  const Vec& B = p.self_attn.in_proj_bias;
  auto proj = [&](int row, int t) {
    return W[row * 2] * in.x[t * 2] + W[row * 2 + 1] * in.x[t * 2 + 1] + B[row];
  };
  double ctx[2][2];
  for (int h = 0; h < 2; ++h) {  // head h uses column h of q (row h), k (row 2+h), v (row 4+h)
    for (int i = 0; i < 2; ++i) {
      const double s0 = proj(h, i) * proj(2 + h, 0), s1 = proj(h, i) * proj(2 + h, 1);  // / sqrt(1)
      const double m = std::max(s0, s1), e0 = std::exp(s0 - m), e1 = std::exp(s1 - m);
      ctx[i][h] = (e0 * proj(4 + h, 0) + e1 * proj(4 + h, 1)) / (e0 + e1);
    }
  }
  auto layer_norm = [&](double a, double b, const NormParams& n, double* y) {
    const double mean = (a + b) / 2, var = ((a - mean) * (a - mean) + (b - mean) * (b - mean)) / 2;
    const double rs = 1 / std::sqrt(var + c.eps);
    y[0] = (a - mean) * rs * n.weight[0] + n.bias[0];
    y[1] = (b - mean) * rs * n.weight[1] + n.bias[1];
  };
  const Vec& Wo = p.self_attn.out_proj_weight;
  for (int t = 0; t < 2; ++t) {
    double sa[2], x1[2], y[2];
    for (int o = 0; o < 2; ++o) {
      sa[o] = Wo[o * 2] * ctx[t][0] + Wo[o * 2 + 1] * ctx[t][1] + p.self_attn.out_proj_bias[o];
    }
    layer_norm(in.x[t * 2] + sa[0], in.x[t * 2 + 1] + sa[1], p.norm1, x1);
    const double hmid = std::max(
        0.0, p.linear1.weight[0] * x1[0] + p.linear1.weight[1] * x1[1] + p.linear1.bias[0]);
    const double f0 = p.linear2.weight[0] * hmid + p.linear2.bias[0];
    const double f1 = p.linear2.weight[1] * hmid + p.linear2.bias[1];
    layer_norm(x1[0] + f0, x1[1] + f1, p.norm2, y);
    EXPECT_NEAR(out[t * 2], y[0], 1e-12) << "t=" << t;
    EXPECT_NEAR(out[t * 2 + 1], y[1], 1e-12) << "t=" << t;
  }
}

// The cross-attention takes q from the decoder stream (in_proj rows [0, H)) and k, v from the
// memory (rows [H, 3H)): with one memory position the attention output is v(memory) for every
// query, whatever q is.
TEST(ReferenceLayerSemantics, CrossAttentionReadsKeysAndValuesFromMemory) {
  LayerConfig c = config_of({NormPlacement::kPre, Activation::kRelu, true, false});
  Rng rng(fixed_seed(500));
  DecoderLayerParams p = random_decoder_params(c, rng);
  DecoderLayerInput in;
  in.batch = 1, in.seq = 3, in.memory_seq = 1;
  in.x = rng.uniform_vec(3 * c.hidden, -1, 1);
  in.memory = rng.uniform_vec(c.hidden, -1, 1);
  const Vec base = decoder_layer_reference(c, p, in, {}).out;
  for (int64_t i = 0; i < c.hidden * c.hidden; ++i) p.cross_attn.in_proj_weight[i] *= -3.0;  // Wq
  const Vec changed_q = decoder_layer_reference(c, p, in, {}).out;
  EXPECT_TRUE(all_close("out with another Wq", changed_q, base, {1e-12, 1e-12, 1e-12}));
  p.cross_attn.in_proj_weight[2 * c.hidden * c.hidden] += 0.5;  // Wv row 0
  const Vec changed_v = decoder_layer_reference(c, p, in, {}).out;
  EXPECT_FALSE(all_close("out with another Wv", changed_v, base, {1e-9, 1e-9, 1e-9}));
}

}  // namespace
}  // namespace lightseq::ref
