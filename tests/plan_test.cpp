// Planner tests: golden plans of the examples, and the fusion decisions for every layer variant.
// Regenerate the goldens after an intended change with LIGHTSEQ_UPDATE_GOLDENS=1.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

const std::string kSource = LIGHTSEQ_SOURCE_DIR;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class GoldenPlan : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenPlan, MatchesGolden) {
  const std::string name = GetParam();
  const std::string text =
      format_plan(plan_model(parse_spec_file(kSource + "/examples/" + name + ".json")));
  const std::string golden_path = kSource + "/tests/golden/" + name + ".plan";
  if (std::getenv("LIGHTSEQ_UPDATE_GOLDENS")) {
    std::ofstream(golden_path, std::ios::binary) << text;
  }
  const std::string golden = read_file(golden_path);
  ASSERT_FALSE(golden.empty()) << "missing golden " << golden_path
                               << " (run with LIGHTSEQ_UPDATE_GOLDENS=1 to create it)";
  EXPECT_EQ(text, golden) << "plan of " << name << " changed; if intended, regenerate with "
                          << "LIGHTSEQ_UPDATE_GOLDENS=1 and review the diff";
}

INSTANTIATE_TEST_SUITE_P(Examples, GoldenPlan,
                         ::testing::Values("transformer-base", "transformer-big", "bert-base",
                                           "gpt2-small"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

// ---- fusion decisions per variant ---------------------------------------------------------------

struct Variant {
  LayerKind kind;
  NormPlacement norm;
  Activation act;
  double dropout;
  bool causal;
};

ModelSpec spec_for(const Variant& v) {
  ModelSpec s;
  s.name = "t";
  s.precision = Precision::kBf16;
  LayerStackSpec l;
  l.kind = v.kind;
  l.hidden = 256;
  l.heads = 4;
  l.ffn = 1024;
  l.norm = v.norm;
  l.activation = v.act;
  l.causal = v.causal || v.kind == LayerKind::kDecoder;
  l.dropout = {v.dropout, v.dropout, v.dropout};
  s.layers.push_back(l);
  return s;
}

std::vector<const GemmStep*> gemms(const std::vector<Step>& steps) {
  std::vector<const GemmStep*> out;
  for (const Step& s : steps) {
    if (auto* g = std::get_if<GemmStep>(&s)) out.push_back(g);
  }
  return out;
}

std::vector<std::string> kernel_labels(const std::vector<Step>& steps) {
  std::vector<std::string> out;
  for (const Step& s : steps) {
    if (auto* k = std::get_if<KernelStep>(&s)) out.push_back(k->kernel.label);
  }
  return out;
}

const GemmStep* find_gemm(const std::vector<Step>& steps, const std::string& name) {
  for (const GemmStep* g : gemms(steps)) {
    if (g->name == name) return g;
  }
  return nullptr;
}

class PlanVariants : public ::testing::TestWithParam<Variant> {};

TEST_P(PlanVariants, CoversEveryOpAndChoosesEpilogues) {
  const Variant v = GetParam();
  const ModelPlan plan = plan_model(spec_for(v));  // plan_layer verifies coverage and data flow
  ASSERT_EQ(plan.layers.size(), 1u);
  const LayerPlan& lp = plan.layers[0];
  const bool decoder = v.kind == LayerKind::kDecoder;
  // GEMM count: forward 6 (qkv, scores, context, out, ffn1, ffn2) + 5 for cross-attention;
  // backward two per projection and per attention GEMM.
  EXPECT_EQ(gemms(lp.forward).size(), decoder ? 11u : 6u);
  EXPECT_EQ(gemms(lp.backward).size(), decoder ? 22u : 12u);

  const GemmStep* ffn1 = find_gemm(lp.forward, "ffn.linear1");
  const GemmStep* ffn2_dgrad = find_gemm(lp.backward, "ffn.linear2_dgrad");
  ASSERT_TRUE(ffn1 && ffn2_dgrad);
  if (v.dropout == 0 && v.act != Activation::kGelu) {
    // No activation dropout: bias + ReLU (or the tanh GELU) ride in the GEMM epilogue, and the
    // backward uses the d-activation + bias-gradient epilogue with the forward's aux (ReLU's bit
    // mask, GELU's pre-activation).
    const bool relu = v.act == Activation::kRelu;
    EXPECT_EQ(ffn1->epilogue, relu ? Epilogue::kReluAuxBias : Epilogue::kGeluAuxBias);
    EXPECT_EQ(ffn2_dgrad->epilogue, relu ? Epilogue::kDReluBGrad : Epilogue::kDGeluBGrad);
    EXPECT_EQ(ffn2_dgrad->aux, ffn1->aux);
  } else {
    // Dropout after the activation, or exact GELU (cuBLASLt's GELU epilogue is the tanh form):
    // a generated kernel.
    EXPECT_EQ(ffn1->epilogue, Epilogue::kNone);
    EXPECT_EQ(ffn2_dgrad->epilogue, Epilogue::kNone);
    bool bad_kernel = false;
    for (const auto& l : kernel_labels(lp.forward))
      bad_kernel |= l.rfind("bias_act_dropout_fwd", 0) == 0;
    EXPECT_TRUE(bad_kernel);
  }
  // Residual gradients: post-LN adds them in the dgrad GEMM (beta = 1); pre-LN in the LN backward.
  const GemmStep* ffn1_dgrad = find_gemm(lp.backward, "ffn.linear1_dgrad");
  ASSERT_TRUE(ffn1_dgrad);
  EXPECT_EQ(ffn1_dgrad->c >= 0, v.norm == NormPlacement::kPost);
  // The softmax kernel carries the right mask.
  const std::string mask = v.causal || decoder ? "mask=padding+causal" : "mask=padding";
  bool found = false;
  for (const auto& l : kernel_labels(lp.forward)) found |= l.find(mask) != std::string::npos;
  EXPECT_TRUE(found) << mask;
  // Nothing a fused group keeps internal is saved for the backward, and the attention
  // probabilities are (the unfused attention backend keeps them).
  bool probs_saved = false;
  for (int id : lp.saved) probs_saved |= lp.layer.graph.tensor(id).name == "sa.probs";
  EXPECT_TRUE(probs_saved);
}

std::vector<Variant> all_variants() {
  std::vector<Variant> out;
  for (LayerKind k : {LayerKind::kEncoder, LayerKind::kDecoder}) {
    for (NormPlacement n : {NormPlacement::kPost, NormPlacement::kPre}) {
      for (Activation a : kActivations) {
        for (double p : {0.0, 0.1}) {
          out.push_back({k, n, a, p, false});
          if (k == LayerKind::kEncoder) out.push_back({k, n, a, p, true});
        }
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, PlanVariants, ::testing::ValuesIn(all_variants()),
                         [](const auto& info) {
                           const Variant& v = info.param;
                           return std::string(to_string(v.kind)) + "_" +
                                  std::string(to_string(v.norm)) + "_" +
                                  std::string(to_string(v.act)) +
                                  (v.dropout > 0 ? "_dropout" : "_nodropout") +
                                  (v.causal ? "_causal" : "");
                         });

// dropout.attention_output: the attention sublayers' output sites take its probability (a kind of
// their own), or are compiled out at 0 (DistilBERT), the FFN's keep `hidden`.
TEST(Plan, AttentionOutputDropoutHasItsOwnSites) {
  for (double p : {0.0, 0.2}) {
    for (LayerKind kind : {LayerKind::kEncoder, LayerKind::kDecoder}) {
      ModelSpec s = spec_for({kind, NormPlacement::kPost, Activation::kGelu, 0.1, false});
      s.layers[0].dropout.attention_output = p;
      const ModelPlan plan = plan_model(s);
      const LayerPlan& lp = plan.layers.back();
      std::map<std::string, DropoutKind> sites;
      for (const Op& op : lp.layer.graph.ops()) {
        if (op.kind == OpKind::kDropout) sites[op.name] = op.attrs.dropout_kind;
      }
      SCOPED_TRACE(fmt::format("{} attention_output {}", to_string(kind), p));
      for (const char* a : {"sa.out_dropout", "ca.out_dropout"}) {
        if (kind == LayerKind::kEncoder && a[0] == 'c') continue;
        if (p == 0) {
          EXPECT_EQ(sites.count(a), 0u) << a;
        } else {
          ASSERT_EQ(sites.count(a), 1u) << a;
          EXPECT_EQ(sites[a], DropoutKind::kAttentionOutput) << a;
        }
      }
      ASSERT_EQ(sites.count("ffn.out_dropout"), 1u);
      EXPECT_EQ(sites["ffn.out_dropout"], DropoutKind::kHidden);
    }
  }
}

// "attention": "fused": every attention runs flash_attention.cuh's kernels — no scores GEMM,
// softmax or [B, heads, T, S] tensor, forward or backward — and saves its log-sum-exp instead of
// the probabilities.
TEST(Plan, FusedAttentionRunsTheFlashKernelsAndSavesNoScores) {
  for (LayerKind kind : {LayerKind::kEncoder, LayerKind::kDecoder}) {
    for (double p : {0.0, 0.1}) {
      ModelSpec s = spec_for({kind, NormPlacement::kPre, Activation::kGelu, p, false});
      s.layers[0].attention = AttentionBackend::kFused;
      const ModelPlan plan = plan_model(s);  // verifies coverage and data flow
      const LayerPlan& lp = plan.layers.back();
      SCOPED_TRACE(fmt::format("{} dropout {}", to_string(kind), p));
      const size_t n_attn = kind == LayerKind::kDecoder ? 2 : 1;
      std::map<std::string, size_t> count;
      for (const auto* steps : {&lp.forward, &lp.backward}) {
        for (const std::string& l : kernel_labels(*steps)) count[l.substr(0, l.find(':'))]++;
      }
      EXPECT_EQ(count["flash_attn_fwd"], n_attn);
      EXPECT_EQ(count["flash_attn_bwd_dot"], n_attn);
      EXPECT_EQ(count["flash_attn_bwd_dkdv"], n_attn);
      EXPECT_EQ(count["flash_attn_bwd_dq"], n_attn);
      EXPECT_EQ(count["attn_softmax_fwd"] + count["attn_softmax_bwd"], 0u);
      // GEMMs: forward qkv|q+kv, out, ffn1, ffn2; backward two each
      EXPECT_EQ(gemms(lp.forward).size(), kind == LayerKind::kDecoder ? 7u : 4u);
      EXPECT_EQ(gemms(lp.backward).size(), kind == LayerKind::kDecoder ? 14u : 8u);
      std::set<std::string> saved;
      for (int id : lp.saved) saved.insert(lp.layer.graph.tensor(id).name);
      EXPECT_TRUE(saved.count("sa.lse"));
      EXPECT_FALSE(saved.count("sa.probs"));
      for (const auto& c : lp.attention) EXPECT_EQ(c.backend, "fused") << c.op;
      for (const auto& st : lp.forward) {
        if (const auto* k = std::get_if<KernelStep>(&st);
            k && k->kernel.kernel == "flash_attn_fwd_kernel") {
          EXPECT_EQ(k->kernel.value("kDrop"), p > 0 ? 1 : 0);
          EXPECT_EQ(k->kernel.value("kD"), 64);
        }
      }
    }
  }
}

TEST(Plan, SharedKernelsAreListedOnce) {
  const ModelPlan plan = plan_model(parse_spec_file(kSource + "/examples/transformer-base.json"));
  const auto kernels = plan.kernels();
  std::set<std::string> labels;
  for (const auto& k : kernels) EXPECT_TRUE(labels.insert(k.label).second) << k.label;
  // encoder and decoder share their LayerNorm and FFN kernels, and an "auto" layer's two plans
  // everything but their attention's: fewer than each plan's own kernels summed
  size_t own = 0;
  for (const LayerPlan& lp : plan.layers) {
    for (const LayerPlan* v : lp.plans()) {
      std::set<std::string> mine;
      for (const auto* steps : {&v->forward, &v->backward}) {
        for (const Step& st : *steps) {
          if (const auto* k = std::get_if<KernelStep>(&st)) mine.insert(k->kernel.label);
        }
      }
      own += mine.size();
    }
  }
  EXPECT_LT(kernels.size(), own);
}

TEST(Plan, PartialSumsAreFinishedIntoEveryBiasAndNormGradient) {
  const ModelPlan plan = plan_model(parse_spec_file(kSource + "/examples/bert-base.json"));
  for (const LayerPlan& lp : plan.layers) {
    std::set<int> written;
    // A fused linear + cross-entropy writes its gradients in the forward (LayerPlan::row_chunks).
    std::vector<Step> steps = lp.backward;
    if (lp.row_chunks.max_rows > 0) steps = lp.forward;
    for (const Step& s : steps) {
      if (auto* k = std::get_if<KernelStep>(&s)) written.insert(k->writes.begin(), k->writes.end());
      if (auto* g = std::get_if<GemmStep>(&s)) {
        written.insert(g->d);
        if (g->bias_grad >= 0) written.insert(g->bias_grad);
      }
    }
    for (size_t i = 0; i < lp.layer.graph.tensors().size(); ++i) {
      const Tensor& t = lp.layer.graph.tensor(static_cast<int>(i));
      if (t.role == TensorRole::kParamGrad) {
        EXPECT_TRUE(written.count(static_cast<int>(i)))
            << lp.layer.name << ": " << t.name << " never written";
      }
    }
  }
}

}  // namespace
}  // namespace lightseq
