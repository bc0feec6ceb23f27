// The embedding and criterion layers of a spec run through their plans (CompiledModel::layer
// "embedding" / "criterion", LayerExecutor, tensors bound by graph name) on the GPU, against
// float64 CPU references (tests/reference/kernels.h):
//  - embedding: out (the graph's output: "embedded", "normed" or "out"), the parameter gradients
//    with GradMode::kOverwrite and kAccumulate (base + gradient), padding rows (zero rows, no
//    gradient), sinusoidal / learned positions, LayerNorm on / off, dropout 0 / 0.1 (the reference
//    draws the executor's site-0 Philox bits), fp32/fp16/bf16, real and awkward sizes; bad_token.
//  - criterion (the fused linear + cross-entropy: output projection GEMM, label-smoothed
//    cross-entropy and the two backward GEMMs in the forward call, over chunks of sequences):
//    loss and nll per row, grad_decoder_out and the weight gradient (= and +=), ignore_index
//    rows, smoothing 0 / 0.1, tied and untied output projection, one chunk and several (the last
//    shorter), evaluation without gradients, fp32/fp16/bf16; bad_target.
// The CPU part (ModelLayerPlans) checks what the GPU part relies on: its specs are valid, it binds
// exactly the names the executors ask for, and the embedding dropout is site 0 (the criterion's
// composed reference, ref::output_criterion, is checked against finite differences in
// reference_test.cpp).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "compiler/planner/planner.h"
#include "runtime/model.h"
#include "tests/gpu_layer_test_util.h"
#include "tests/reference/kernels.h"

namespace lightseq {
namespace {

using ref::Vec;
using test::layer_tolerance;
using test::model_for;
using Names = std::set<std::string>;

constexpr double kDropP = 0.1;
constexpr double kEps = 1e-5;

// ---- embedding cases
// -----------------------------------------------------------------------------

struct EmbCase {
  Precision precision;
  PositionKind pos;
  bool norm, dropout;
  int64_t hidden, vocab, padding_idx, max_positions, batch, seq;
  PositionsFrom from = PositionsFrom::kIndex;
  PaddingRows padding_rows = PaddingRows::kZero;
};

std::string emb_case_name(const EmbCase& c) {
  return fmt::format("{}_{}{}{}_h{}_v{}_pad{}_maxpos{}_B{}_T{}", to_string(c.precision),
                     to_string(c.pos), c.norm ? "_norm" : "", c.dropout ? "_drop" : "", c.hidden,
                     c.vocab,
                     c.padding_idx < 0 ? std::string("none") : std::to_string(c.padding_idx),
                     c.max_positions, c.batch, c.seq) +
         (c.from == PositionsFrom::kTokens ? "_from_tokens" : "") +
         (c.padding_rows == PaddingRows::kEmbedded ? "_embedded_padding" : "");
}

// The smallest valid spec with this embedding: an embedding alone (docs/spec.md: a spec needs a
// layer stack or an embedding).
ModelSpec embedding_spec(const EmbCase& c) {
  ModelSpec s;
  s.name = "gpu-embedding-layer-test";
  s.precision = c.precision;
  EmbeddingSpec e;
  e.vocab = c.vocab;
  e.hidden = c.hidden;
  e.positions = c.pos;
  e.max_positions = c.max_positions;
  e.padding_idx = c.padding_idx;
  e.positions_from = c.from;
  e.padding_rows = c.padding_rows;
  e.scale = std::sqrt(static_cast<double>(c.hidden));
  e.dropout = c.dropout ? kDropP : 0.0;
  e.layernorm = c.norm;
  e.layernorm_eps = kEps;
  s.embedding = e;
  return s;
}

bool learned(const EmbCase& c) { return c.pos == PositionKind::kLearned; }
// lower_embedding's output: after dropout "out", else after the LayerNorm "normed", else the sum.
std::string emb_output(const EmbCase& c) {
  return c.dropout ? "out" : c.norm ? "normed" : "embedded";
}
std::vector<std::string> emb_params(const EmbCase& c) {
  std::vector<std::string> p{"embed_tokens.weight"};
  if (learned(c)) p.push_back("embed_positions.weight");
  if (c.norm) p.insert(p.end(), {"layernorm.weight", "layernorm.bias"});
  return p;
}
// What the GPU test binds (and so what the executor must ask for, ModelLayerPlans checks).
Names emb_bindings(const EmbCase& c, bool backward) {
  Names n;
  if (!backward) {
    n = {"tokens", emb_output(c), "bad_token"};
    if (c.padding_idx >= 0) n.insert("padding_mask");
    for (const std::string& p : emb_params(c)) n.insert(p);
  } else {
    n = {"grad_out"};
    if (c.norm) n.insert("layernorm.weight");
    for (const std::string& p : emb_params(c)) n.insert("grad." + p);
  }
  return n;
}

std::vector<EmbCase> all_emb_cases() {
  std::vector<EmbCase> out;
  const Precision dtypes[] = {Precision::kFp32, Precision::kFp16, Precision::kBf16};
  // transformer-base's embedding (512 × 32000, padding_idx 1), every variant
  for (Precision p : dtypes) {
    for (PositionKind pos : {PositionKind::kSinusoidal, PositionKind::kLearned}) {
      for (bool norm : {false, true}) {
        for (bool drop : {false, true})
          out.push_back({p, pos, norm, drop, 512, 32000, 1, 64, 4, 32});
      }
    }
  }
  // awkward: BERT width with an odd vocabulary, one token, T = 7, a table exactly T rows long,
  // padding token 0 / the last id / none
  for (Precision p : dtypes) {
    out.push_back({p, PositionKind::kSinusoidal, false, false, 768, 1001, 0, 16, 1, 1});
    out.push_back({p, PositionKind::kLearned, true, true, 768, 1001, 1000, 1, 1, 1});
    out.push_back({p, PositionKind::kLearned, false, true, 768, 1001, -1, 7, 3, 7});
    out.push_back({p, PositionKind::kSinusoidal, true, false, 768, 1001, 0, 9, 3, 7});
    // fairseq's positions: padding_idx + the count of non-padding tokens (positions 2 .. 33)
    out.push_back(
        {p, PositionKind::kLearned, true, true, 512, 32000, 1, 40, 4, 32, PositionsFrom::kTokens});
    out.push_back({p, PositionKind::kSinusoidal, false, false, 512, 32000, 1, 40, 4, 32,
                   PositionsFrom::kTokens});
    // padding tokens embedded like any other: BERT (index positions), RoBERTa (counted ones)
    out.push_back({p, PositionKind::kLearned, true, true, 768, 30522, 0, 40, 4, 32,
                   PositionsFrom::kIndex, PaddingRows::kEmbedded});
    out.push_back({p, PositionKind::kLearned, true, false, 768, 50265, 1, 40, 4, 32,
                   PositionsFrom::kTokens, PaddingRows::kEmbedded});
  }
  return out;
}

ref::EmbeddingArgs emb_args(const EmbCase& c, const DropoutConfig& d) {
  ref::EmbeddingArgs a;
  a.batch = c.batch, a.seq = c.seq, a.vocab = c.vocab, a.hidden = c.hidden;
  a.padding_idx = c.padding_idx, a.max_positions = c.max_positions;
  a.scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden)));  // an F32 scalar
  a.eps = static_cast<float>(kEps);
  a.pos = learned(c) ? kern::Pos::kLearned : kern::Pos::kSinusoidal;
  a.pos_from = c.from == PositionsFrom::kTokens ? kern::PosFrom::kTokens : kern::PosFrom::kIndex;
  a.zero_padding = c.padding_rows == PaddingRows::kZero;
  a.norm = c.norm ? kern::Norm::kOn : kern::Norm::kOff;
  a.drop = c.dropout ? kern::Drop::kOn : kern::Drop::kOff;
  a.d = kern::make_dropout_args(d.seed, d.offset + 0,
                                d.embedding);  // the embedding's dropout is site 0
  return a;
}

// Uniform over the vocabulary, about 1 in 8 the padding token; row 0 never padding, row 1 padding
// and the last row repeating row 0's token (the scatter-add sums) when there are 3 rows or more.
std::vector<int64_t> random_tokens(ref::Rng& rng, const EmbCase& c) {
  std::vector<int64_t> t(c.batch * c.seq);
  for (int64_t& x : t)
    x = c.padding_idx >= 0 && rng.below(8) == 0 ? c.padding_idx : rng.below(c.vocab);
  if (t[0] == c.padding_idx) t[0] = (c.padding_idx + 1) % c.vocab;
  if (t.size() >= 3) {
    if (c.padding_idx >= 0) t[1] = c.padding_idx;
    t.back() = t[0];
  }
  return t;
}

double max_abs(const Vec& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

// The kernel's tolerance (tests/gpu_kernels_embedding_test.cpp), plus what this reference cannot
// know: fp32 sin/cos of t·freq carry ~1.5 ulp(t) in any fp32 code, and with LayerNorm the
// reference normalizes its own T-rounded sum, which may round a value the other way than the
// kernel's (an ulp of the sum, times γ·rstd).
ref::Tolerance emb_out_tolerance(const EmbCase& c, const ref::EmbeddingForward& want,
                                 const Vec& gamma) {
  ref::Tolerance t = ref::tolerance_for(c.precision);
  const double sin_abs = c.pos == PositionKind::kSinusoidal ? 4e-7 * c.max_positions : 0.0;
  const double drop_scale = c.dropout ? 1.0 / (1.0 - kDropP) : 1.0;
  if (!c.norm) {
    t.abs = sin_abs * drop_scale;
  } else {
    const double sum_err = 4 * ref::unit_roundoff(c.precision) * max_abs(want.sum) + sin_abs;
    t.abs = sum_err * max_abs(gamma) * max_abs(want.rstd) * drop_scale;
  }
  return t;
}

// ---- criterion cases
// -----------------------------------------------------------------------------

struct CritCase {
  Precision precision;
  double smoothing;
  bool tie;
  int64_t hidden, vocab, ignore_index, batch, seq;
  int64_t chunk_mib = CriterionSpec{}.logits_chunk_mib;  // small: several chunks
};

std::string crit_case_name(const CritCase& c) {
  return fmt::format("{}_ls{}_{}_h{}_v{}_ignore{}_B{}_T{}", to_string(c.precision),
                     c.smoothing > 0 ? "0p1" : "0", c.tie ? "tied" : "untied", c.hidden, c.vocab,
                     c.ignore_index < 0 ? "m" + std::to_string(-c.ignore_index)
                                        : std::to_string(c.ignore_index),
                     c.batch, c.seq) +
         (c.chunk_mib != CriterionSpec{}.logits_chunk_mib ? fmt::format("_chunk{}mib", c.chunk_mib)
                                                          : "");
}

// A criterion needs an embedding (its vocabulary, the tied projection); nothing else.
ModelSpec criterion_spec(const CritCase& c) {
  ModelSpec s;
  s.name = "gpu-criterion-layer-test";
  s.precision = c.precision;
  EmbeddingSpec e;
  e.vocab = c.vocab;
  e.hidden = c.hidden;
  e.tie_output = c.tie;
  s.embedding = e;
  CriterionSpec cr;
  cr.label_smoothing = c.smoothing;
  cr.ignore_index = c.ignore_index;
  cr.logits_chunk_mib = c.chunk_mib;
  s.criterion = cr;
  return s;
}

std::string crit_weight(const CritCase& c) {
  return c.tie ? "embed_tokens.weight" : "output_projection.weight";
}
// The fused linear + cross-entropy: the forward binds the gradients too; the backward nothing.
Names crit_bindings(const CritCase& c, bool backward) {
  if (!backward)
    return {"decoder_out",
            "targets",
            crit_weight(c),
            "loss",
            "nll",
            "bad_target",
            "loss_scale",
            "total_tokens",
            "n_tokens",
            "grad_decoder_out",
            "grad." + crit_weight(c)};
  return {};
}

std::vector<CritCase> all_crit_cases() {
  std::vector<CritCase> out;
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
    for (double ls : {0.0, 0.1}) {
      for (bool tie : {true, false})
        out.push_back({p, ls, tie, 512, 32000, 1, 2, 12});  // transformer-base
    }
    for (const auto& [b, t] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}}) {
      out.push_back({p, 0.1, false, 768, 1001, -100, b, t});
      out.push_back({p, 0.0, true, 768, 1001, -100, b, t});
    }
    // Several chunks of whole sequences (1 MiB of logits: 16 rows in bf16/fp16, 8 in fp32), the
    // last one shorter in 16-bit.
    out.push_back({p, 0.1, true, 64, 32000, 1, 5, 7, 1});
    out.push_back({p, 0.0, false, 64, 32000, -100, 5, 7, 1});
  }
  return out;
}

// ---- the GPU fixture
// -----------------------------------------------------------------------------

class ModelLayerTest : public test::GpuLayerTest {
 protected:
  DeviceBuffer up_i64(const std::vector<int64_t>& v) {
    return upload_bytes(v.data(), v.size() * sizeof(int64_t));
  }
  DeviceBuffer zero_flag() {
    const int32_t zero = 0;
    return upload_bytes(&zero, sizeof(zero));
  }
  int32_t flag(const DeviceBuffer& b) {
    int32_t v = -1;
    download_bytes(b, &v, sizeof(v));
    return v;
  }
  Vec random(ref::Rng& rng, size_t n, double lo, double hi, Precision p) {
    Vec v = rng.uniform_vec(n, lo, hi);
    ref::round_in_place(p, v);
    return v;
  }

  // One embedding forward and backward (= then +=) through the plan, checked against the
  // reference. `expect_bad`: the tokens hold out-of-range ids (bad_token must become 1, else stay
  // 0).
  void check_embedding(const EmbCase& c, const std::vector<int64_t>& tok, bool expect_bad) {
    const Precision p = c.precision;
    const int64_t H = c.hidden, rows = c.batch * c.seq;
    ref::Rng rng(seed_ ^ 0x9e3779b97f4a7c15ull);
    std::map<std::string, Vec> params{{"embed_tokens.weight", random(rng, c.vocab * H, -1, 1, p)}};
    if (learned(c)) params["embed_positions.weight"] = random(rng, c.max_positions * H, -1, 1, p);
    if (c.norm) {
      params["layernorm.weight"] = random(rng, H, 0.5, 1.5, p);
      params["layernorm.bias"] = random(rng, H, -0.5, 0.5, p);
    }
    const Vec none;
    auto param = [&](const char* n) -> const Vec& { return params.count(n) ? params.at(n) : none; };
    const Vec& gamma = param("layernorm.weight");
    const DropoutConfig drop{
        .embedding = c.dropout ? kDropP : 0.0, .seed = rng.next(), .offset = rng.next() >> 8};
    const ref::EmbeddingArgs a = emb_args(c, drop);

    // Reference. With LayerNorm the kernel normalizes the sum as it stores it (T): so does this.
    ref::EmbeddingForward want =
        ref::embedding_fwd(a, tok, param("embed_tokens.weight"), param("embed_positions.weight"),
                           gamma, param("layernorm.bias"), nullptr);
    Vec sum_t = want.sum;
    ref::round_in_place(p, sum_t);
    if (c.norm) {
      want =
          ref::embedding_fwd(a, tok, param("embed_tokens.weight"), param("embed_positions.weight"),
                             gamma, param("layernorm.bias"), &sum_t);
      ref::round_in_place(Precision::kFp32, want.mean);
      ref::round_in_place(Precision::kFp32, want.rstd);
    }
    ASSERT_EQ(want.bad_token, expect_bad);

    const auto model = model_for(embedding_spec(c));
    const LayerExecutor& exec = model->layer("embedding");
    std::map<std::string, DeviceBuffer> w;
    for (const auto& [n, v] : params) w.emplace(n, up(v, p));
    DeviceBuffer d_tok = up_i64(tok), out = poisoned(rows * H, p), bad = zero_flag();
    DeviceBuffer mask = poisoned(static_cast<size_t>(rows), Precision::kFp32);  // ≥ rows bytes
    Bindings fb{{"tokens", d_tok.get()}, {emb_output(c), out.get()}, {"bad_token", bad.get()}};
    if (c.padding_idx >= 0) fb["padding_mask"] = mask.get();
    for (const auto& [n, b] : w) fb[n] = b.get();
    const SavedActivations saved =
        exec.forward(fb, {c.batch, c.seq, 0}, drop, *allocator_, stream_);
    sync();
    EXPECT_EQ(flag(bad), expect_bad ? 1 : 0) << "bad_token";
    if (c.padding_idx >= 0) {
      std::vector<uint8_t> m(static_cast<size_t>(rows));
      download_bytes(mask, m.data(), m.size());
      for (int64_t r = 0; r < rows; ++r)
        ASSERT_EQ(int{m[r]}, tok[r] == c.padding_idx ? 1 : 0) << "padding_mask row " << r;
    }
    const Vec got = down(out, rows * H, p);
    EXPECT_TRUE(ref::all_close(emb_output(c), got, want.out, emb_out_tolerance(c, want, gamma)));
    for (int64_t r = 0; r < rows; ++r) {
      if (want.kind[r] == ref::RowKind::kToken) continue;
      for (int64_t col = 0; col < H; ++col) {
        ASSERT_EQ(got[r * H + col], 0.0)
            << (want.kind[r] == ref::RowKind::kPadding ? "padding" : "bad") << " row " << r
            << " column " << col;
      }
    }

    // Backward, GradMode::kOverwrite into poisoned gradients.
    const Vec grad_out = random(rng, rows * H, -1, 1, p);
    const ref::EmbeddingBackward gr =
        ref::embedding_bwd(a, grad_out, tok, sum_t, want.mean, want.rstd, gamma);
    std::map<std::string, Vec> want_grad{{"embed_tokens.weight", gr.grad_table}};
    if (learned(c)) want_grad["embed_positions.weight"] = gr.grad_pos;
    if (c.norm) want_grad["layernorm.weight"] = gr.dgamma, want_grad["layernorm.bias"] = gr.dbeta;
    DeviceBuffer dy = up(grad_out, p);
    std::map<std::string, DeviceBuffer> g;
    for (const auto& [n, v] : want_grad) g.emplace(n, poisoned(v.size(), p));
    auto bindings = [&] {
      Bindings b{{"grad_out", dy.get()}};
      if (c.norm) b["layernorm.weight"] = w.at("layernorm.weight").get();
      for (const auto& [n, buf] : g) b["grad." + n] = buf.get();
      return b;
    };
    exec.backward(bindings(), saved, GradMode::kOverwrite, *allocator_, stream_);
    sync();
    const ref::Tolerance tol = ref::tolerance_for(p);
    for (const auto& [n, v] : want_grad)
      EXPECT_TRUE(ref::all_close("grad." + n, down(g.at(n), v.size(), p), v, tol));
    if (c.padding_idx >= 0) {
      const Vec gt = down(g.at("embed_tokens.weight"), c.vocab * H, p);
      for (int64_t col = 0; col < H; ++col) {
        ASSERT_EQ(gt[c.padding_idx * H + col], 0.0)
            << "the padding token got a gradient, column " << col;
      }
    }

    // GradMode::kAccumulate: the gradients end as base + gradient.
    std::map<std::string, Vec> base;
    for (const auto& [n, v] : want_grad) {
      base[n] = random(rng, v.size(), -1, 1, p);
      g.at(n) = up(base[n], p);
    }
    exec.backward(bindings(), saved, GradMode::kAccumulate, *allocator_, stream_);
    sync();
    for (const auto& [n, v] : want_grad) {
      Vec sum = base.at(n);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += v[i];
      EXPECT_TRUE(ref::all_close("accumulated grad." + n, down(g.at(n), v.size(), p), sum, tol));
    }
    if (c.padding_idx >= 0) {
      const Vec gt = down(g.at("embed_tokens.weight"), c.vocab * H, p);
      for (int64_t col = 0; col < H; ++col) {
        const int64_t i = c.padding_idx * H + col;
        ASSERT_EQ(gt[i], base.at("embed_tokens.weight")[i])
            << "the padding token's gradient changed, column " << col;
      }
    }
  }

  // One criterion forward and backward (= then +=) through the plan against the reference.
  // `expect_bad`: some target is out of range (and not ignore_index).
  void check_criterion(const CritCase& c, const std::vector<int64_t>& targets, bool expect_bad) {
    const Precision p = c.precision;
    const int64_t H = c.hidden, V = c.vocab, rows = c.batch * c.seq;
    ref::Rng rng(seed_ ^ 0x5bd1e9955bd1e995ull);
    // Logits of standard deviation ~4/3: a spread softmax, far from overflow in every dtype.
    const Vec h = random(rng, rows * H, -1, 1, p);
    const double a = 4.0 / std::sqrt(static_cast<double>(H));
    const Vec weight = random(rng, V * H, -a, a, p);
    const double ls = static_cast<float>(c.smoothing);  // an F32 scalar of the kernel
    ref::OutputCriterion want =
        ref::output_criterion(h, weight, targets, rows, H, V, c.ignore_index, ls);
    for (double& g : want.grad_h) g *= 0.25;  // the grad_scale bound below
    for (double& g : want.grad_w) g *= 0.25;
    ASSERT_EQ(want.ce.bad_target, expect_bad);

    const auto model = model_for(criterion_spec(c));
    const LayerExecutor& exec = model->layer("criterion");
    DeviceBuffer d_h = up(h, p), d_w = up(weight, p), d_t = up_i64(targets);
    DeviceBuffer loss = poisoned(rows, Precision::kFp32), nll = poisoned(rows, Precision::kFp32),
                 bad = zero_flag();
    // The gradient's scale is the loss scale (in device memory) over the counted targets (the
    // mean reduction): a loss scale of 0.25 × the count makes it exactly 0.25, a power of two, so
    // the reference's gradients scale exactly.
    int64_t counted = 0;
    for (int64_t y : targets) counted += y != c.ignore_index && y >= 0 && y < V ? 1 : 0;
    const float loss_scale = 0.25f * static_cast<float>(counted);
    DeviceBuffer d_scale = upload_bytes(&loss_scale, sizeof(loss_scale)),
                 n_tokens = poisoned(1, Precision::kFp32);
    // The forward writes the loss and, fused, both gradients (= here).
    DeviceBuffer dh = poisoned(rows * H, p), dw = poisoned(V * H, p);
    const Bindings inputs{
        {"decoder_out", d_h.get()},    {"targets", d_t.get()},      {crit_weight(c), d_w.get()},
        {"loss", loss.get()},          {"nll", nll.get()},          {"bad_target", bad.get()},
        {"loss_scale", d_scale.get()}, {"n_tokens", n_tokens.get()}};
    Bindings fb = inputs;
    fb["grad_decoder_out"] = dh.get();
    fb["grad." + crit_weight(c)] = dw.get();
    const RunShape shape{c.batch, c.seq, 0};
    exec.forward(fb, shape, DropoutConfig{}, *allocator_, stream_);
    sync();
    EXPECT_EQ(flag(bad), expect_bad ? 1 : 0) << "bad_target";
    EXPECT_EQ(down(n_tokens, 1, Precision::kFp32)[0], static_cast<double>(counted)) << "n_tokens";
    const ref::Tolerance tol = layer_tolerance(p);
    const Vec got_loss = down(loss, rows, Precision::kFp32),
              got_nll = down(nll, rows, Precision::kFp32);
    EXPECT_TRUE(ref::all_close("loss", got_loss, want.ce.loss, tol));
    EXPECT_TRUE(ref::all_close("nll", got_nll, want.ce.nll, tol));
    const Vec got_dh = down(dh, rows * H, p);
    EXPECT_TRUE(ref::all_close("grad_decoder_out", got_dh, want.grad_h, tol));
    EXPECT_TRUE(ref::all_close("grad." + crit_weight(c), down(dw, V * H, p), want.grad_w, tol));
    // Ignored (and out-of-range) rows: no loss, no gradient, exactly.
    for (int64_t r = 0; r < rows; ++r) {
      if (targets[r] != c.ignore_index && targets[r] >= 0 && targets[r] < V) continue;
      EXPECT_EQ(got_loss[r], 0.0) << "ignored row " << r;
      EXPECT_EQ(got_nll[r], 0.0) << "ignored row " << r;
      for (int64_t col = 0; col < H; ++col)
        ASSERT_EQ(got_dh[r * H + col], 0.0) << "ignored row " << r;
    }

    // GradMode::kAccumulate: the weight gradient ends as base + gradient; grad_decoder_out (an
    // input gradient) is written again.
    const Vec base = random(rng, V * H, -1, 1, p);
    DeviceBuffer dw2 = up(base, p), dh2 = poisoned(rows * H, p);
    Bindings fb2 = inputs;
    fb2["grad_decoder_out"] = dh2.get();
    fb2["grad." + crit_weight(c)] = dw2.get();
    exec.forward(fb2, shape, DropoutConfig{}, *allocator_, stream_, nullptr, GradMode::kAccumulate);
    sync();
    Vec sum = base;
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += want.grad_w[i];
    EXPECT_TRUE(
        ref::all_close("accumulated grad." + crit_weight(c), down(dw2, V * H, p), sum, tol));
    EXPECT_TRUE(ref::all_close("grad_decoder_out (kAccumulate: written)", down(dh2, rows * H, p),
                               want.grad_h, tol));

    // A data-parallel group's count (total_tokens: every process's targets, here twice this
    // call's): the gradients are this call's share of the group's mean, half of the above; the
    // loss and n_tokens stay this call's own.
    const float total = 2.f * static_cast<float>(counted);
    DeviceBuffer d_total = upload_bytes(&total, sizeof(total)),
                 n_tokens4 = poisoned(1, Precision::kFp32);
    DeviceBuffer dh4 = poisoned(rows * H, p), dw4 = poisoned(V * H, p),
                 loss4 = poisoned(rows, Precision::kFp32);
    Bindings fb4 = inputs;
    fb4["total_tokens"] = d_total.get();
    fb4["n_tokens"] = n_tokens4.get();
    fb4["loss"] = loss4.get();
    fb4["grad_decoder_out"] = dh4.get();
    fb4["grad." + crit_weight(c)] = dw4.get();
    exec.forward(fb4, shape, DropoutConfig{}, *allocator_, stream_);
    sync();
    Vec half_h = want.grad_h, half_w = want.grad_w;
    for (double& g : half_h) g *= 0.5;
    for (double& g : half_w) g *= 0.5;
    EXPECT_EQ(down(n_tokens4, 1, Precision::kFp32)[0], static_cast<double>(counted))
        << "n_tokens with total_tokens bound";
    EXPECT_EQ(down(loss4, rows, Precision::kFp32), got_loss) << "loss with total_tokens bound";
    EXPECT_TRUE(
        ref::all_close("grad_decoder_out (total_tokens)", down(dh4, rows * H, p), half_h, tol));
    EXPECT_TRUE(ref::all_close("grad." + crit_weight(c) + " (total_tokens)", down(dw4, V * H, p),
                               half_w, tol));

    // Evaluation: no gradients bound, the same loss bit for bit and nothing else written.
    DeviceBuffer loss3 = poisoned(rows, Precision::kFp32);
    Bindings eval = inputs;
    eval["loss"] = loss3.get();
    exec.forward(eval, shape, DropoutConfig{}, *allocator_, stream_);
    sync();
    EXPECT_EQ(down(loss3, rows, Precision::kFp32), got_loss) << "evaluation loss";
  }
};

// ---- embedding on the GPU
// ------------------------------------------------------------------------

class GpuEmbeddingLayer : public ModelLayerTest, public ::testing::WithParamInterface<EmbCase> {};

TEST_P(GpuEmbeddingLayer, ForwardAndParameterGradientsMatchTheReference) {
  const EmbCase c = GetParam();
  SCOPED_TRACE(seed_note());
  ref::Rng rng(seed_);
  check_embedding(c, random_tokens(rng, c), false);
}

INSTANTIATE_TEST_SUITE_P(All, GpuEmbeddingLayer, ::testing::ValuesIn(all_emb_cases()),
                         [](const auto& info) { return emb_case_name(info.param); });

// Tokens outside [0, vocab) set bad_token and give zero rows and no gradient; the other rows are
// still right.
class GpuEmbeddingLayerBadTokens : public ModelLayerTest,
                                   public ::testing::WithParamInterface<Precision> {};

TEST_P(GpuEmbeddingLayerBadTokens, SetTheFlagAndGiveZeroRows) {
  SCOPED_TRACE(seed_note());
  for (const EmbCase& c :
       {EmbCase{GetParam(), PositionKind::kSinusoidal, false, false, 512, 1000, 1, 64, 2, 7},
        EmbCase{GetParam(), PositionKind::kLearned, true, true, 512, 1000, 1, 64, 2, 7}}) {
    SCOPED_TRACE(emb_case_name(c));
    check_embedding(c, {3, 1000, 5, -1, 7, 8, 9, /**/ 10, 11, 1, 12, 999, 1005, 14}, true);
  }
}

INSTANTIATE_TEST_SUITE_P(All, GpuEmbeddingLayerBadTokens,
                         ::testing::Values(Precision::kFp32, Precision::kFp16, Precision::kBf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// ---- criterion on the GPU
// ------------------------------------------------------------------------

class GpuCriterionLayer : public ModelLayerTest, public ::testing::WithParamInterface<CritCase> {};

TEST_P(GpuCriterionLayer, LossAndGradientsMatchTheReference) {
  const CritCase c = GetParam();
  SCOPED_TRACE(seed_note());
  ref::Rng rng(seed_);
  // About 1 in 8 rows ignored, row 0 always when there are several (never the only row).
  std::vector<int64_t> targets(c.batch * c.seq);
  for (int64_t& t : targets) t = rng.below(8) == 0 ? c.ignore_index : rng.below(c.vocab);
  if (targets.size() > 1) {
    targets[0] = c.ignore_index;
  } else if (targets[0] == c.ignore_index) {
    targets[0] = (c.ignore_index + 1 + c.vocab) % c.vocab;
  }
  check_criterion(c, targets, false);
}

INSTANTIATE_TEST_SUITE_P(All, GpuCriterionLayer, ::testing::ValuesIn(all_crit_cases()),
                         [](const auto& info) { return crit_case_name(info.param); });

// Targets outside [0, vocab) (and not ignore_index) set bad_target and count as ignored.
class GpuCriterionLayerBadTargets : public ModelLayerTest,
                                    public ::testing::WithParamInterface<Precision> {};

TEST_P(GpuCriterionLayerBadTargets, SetTheFlagAndCountAsIgnored) {
  SCOPED_TRACE(seed_note());
  for (bool tie : {true, false}) {
    const CritCase c{GetParam(), 0.1, tie, 64, 1001, -100, 2, 4};
    SCOPED_TRACE(crit_case_name(c));
    check_criterion(c, {0, 1001, 1000, -7, -100, 5, 2000, 17}, true);
  }
}

INSTANTIATE_TEST_SUITE_P(All, GpuCriterionLayerBadTargets,
                         ::testing::Values(Precision::kFp32, Precision::kFp16, Precision::kBf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// ---- CPU: what the GPU tests rely on
// -------------------------------------------------------------

const LayerPlan& layer_named(const ModelPlan& plan, std::string_view name) {
  for (const LayerPlan& l : plan.layers) {
    if (l.layer.name == name) return l;
  }
  throw Error(fmt::format("no layer {}", name));
}

// The executor's required bindings against what the GPU test binds: the forward exactly; the
// backward may also list the forward's inputs it reads, which come from SavedActivations.
void expect_bindings(const ModelSpec& spec, std::string_view layer, const Names& fwd,
                     const Names& bwd) {
  SCOPED_TRACE(spec_to_json(spec).dump());
  ASSERT_TRUE(validate_spec(spec).empty());
  const ModelPlan plan = plan_model(spec);
  KernelTable kernels;
  for (const KernelInstance& k : plan.kernels()) kernels[k.label] = nullptr;
  GemmRunner gemm;
  const LayerExecutor exec(layer_named(plan, layer), spec.precision, kernels, &gemm);
  const auto f = exec.required_bindings(false);
  EXPECT_EQ(Names(f.begin(), f.end()), fwd);
  const auto b = exec.required_bindings(true);
  const Names got(b.begin(), b.end());
  for (const std::string& n : bwd)
    EXPECT_TRUE(got.count(n)) << n << " is not asked for in the backward";
  for (const std::string& n : got) {
    EXPECT_TRUE(bwd.count(n) || (fwd.count(n) && (n == "tokens" || n == "decoder_out")))
        << "the backward asks for " << n << ", which the GPU test does not bind";
  }
}

TEST(ModelLayerPlans, EmbeddingBindingsAreTheNamesTheGpuTestBinds) {
  for (const EmbCase& c : all_emb_cases()) {
    if (c.precision != Precision::kFp16 || c.hidden != 512) continue;  // the 8 variants
    SCOPED_TRACE(emb_case_name(c));
    expect_bindings(embedding_spec(c), "embedding", emb_bindings(c, false), emb_bindings(c, true));
  }
}

TEST(ModelLayerPlans, CriterionBindingsAreTheNamesTheGpuTestBinds) {
  for (bool tie : {true, false}) {
    const CritCase c{Precision::kBf16, 0.1, tie, 512, 32000, 1, 2, 12};
    expect_bindings(criterion_spec(c), "criterion", crit_bindings(c, false),
                    crit_bindings(c, true));
  }
}

TEST(ModelLayerPlans, EveryGpuTestSpecIsValid) {
  for (const EmbCase& c : all_emb_cases())
    EXPECT_TRUE(validate_spec(embedding_spec(c)).empty()) << emb_case_name(c);
  for (const CritCase& c : all_crit_cases())
    EXPECT_TRUE(validate_spec(criterion_spec(c)).empty()) << crit_case_name(c);
}

// The reference draws the embedding's dropout bits at offset + 0: the plan's embedding kernels,
// forward and backward (the LayerNorm statistics, the sum of each table's gradient), use dropout
// site 0 of kind embedding.
TEST(ModelLayerPlans, EmbeddingDropoutIsSiteZero) {
  const EmbCase c{Precision::kBf16, PositionKind::kLearned, true, true, 512, 32000, 1, 64, 4, 32};
  const ModelPlan plan = plan_model(embedding_spec(c));
  const LayerPlan& l = layer_named(plan, "embedding");
  int sites = 0;
  for (const auto* steps : {&l.forward, &l.backward}) {
    for (const Step& st : *steps) {
      const auto* k = std::get_if<KernelStep>(&st);
      if (!k) continue;
      for (int i = 0; i < k->kernel.sig->n_params; ++i) {
        if (k->kernel.sig->params[i].role != sig::Role::kDropout) continue;
        EXPECT_EQ(k->args[i].dropout_site, 0) << k->kernel.label;
        EXPECT_EQ(k->args[i].dropout_kind, DropoutKind::kEmbedding) << k->kernel.label;
        ++sites;
      }
    }
  }
  EXPECT_EQ(sites, 4) << "the forward; the LayerNorm statistics and the token and position sums";
}

}  // namespace
}  // namespace lightseq
