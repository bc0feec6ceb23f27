// attention_backend_test.cpp — pass 0 of the planner (compiler/planner/attention_backend.h): the
// lowering emits one attention op (and its gradient) per attention sublayer; the pass chooses a
// backend for each, says why, and rewrites them into that backend's ops before fusion.
#include "compiler/planner/attention_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>

#include "compiler/errors.h"
#include "compiler/planner/passes.h"
#include "compiler/planner/planner.h"
#include "compiler/spec/rules.h"
#include "compiler/spec/validate.h"
#include "flash_attention.sig.cuh"
#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

int count(const Graph& g, OpKind k) {
  return static_cast<int>(
      std::count_if(g.ops().begin(), g.ops().end(), [&](const Op& o) { return o.kind == k; }));
}

ModelSpec example(const std::string& name) {
  return parse_spec_file(std::string(LIGHTSEQ_SOURCE_DIR) + "/examples/" + name + ".json");
}

TEST(AttentionBackend, TheLoweringEmitsOneAttentionOpPerSublayer) {
  const ModelSpec spec = example("transformer-base");  // encoder (self) and decoder (self + cross)
  for (const LayerGraph& l : lower_model(spec)) {
    const int want = l.type == LayerType::kEncoder ? 1 : l.type == LayerType::kDecoder ? 2 : 0;
    EXPECT_EQ(count(l.graph, OpKind::kAttention), want) << l.name;
    EXPECT_EQ(count(l.graph, OpKind::kAttentionGrad), want) << l.name;
    EXPECT_EQ(count(l.graph, OpKind::kSoftmax), 0)
        << l.name << ": the decomposition is the backend's";
  }
}

TEST(AttentionBackend, UnfusedRewritesForwardAndBackwardAndSaysWhy) {
  ModelSpec spec = example("transformer-base");  // its stacks run fused: ask for the default
  for (LayerStackSpec& s : spec.layers) s.attention = AttentionBackend::kUnfused;
  for (LayerGraph l : lower_model(spec)) {
    if (l.type != LayerType::kDecoder) continue;
    const int split_before = l.graph.backward_begin();
    const int attention_before = count(l.graph, OpKind::kAttention);
    const std::vector<AttentionChoice> c = choose_attention(l, spec.precision);
    ASSERT_EQ(c.size(), 2u);
    EXPECT_EQ(c[0].op, "sa.attention");
    EXPECT_EQ(c[1].op, "ca.attention");
    for (const AttentionChoice& a : c) {
      EXPECT_EQ(a.backend, "unfused");
      EXPECT_NE(a.reason.find("[B, heads, T, S]"), std::string::npos) << a.reason;
    }
    const Graph& g = l.graph;
    EXPECT_EQ(count(g, OpKind::kAttention) + count(g, OpKind::kAttentionGrad), 0);
    EXPECT_EQ(count(g, OpKind::kSoftmax), attention_before);
    EXPECT_EQ(count(g, OpKind::kSoftmaxGrad), attention_before);
    // The forward's ops stay before the split (each attention op became 5 or 6 ops).
    EXPECT_GT(g.backward_begin(), split_before);
    for (int i = g.backward_begin(); i < static_cast<int>(g.ops().size()); ++i) {
      EXPECT_NE(g.ops()[i].kind, OpKind::kSoftmax) << g.ops()[i].name;
    }
    EXPECT_NO_THROW(g.verify());
    // The causal mask is the self-attention's only.
    for (const Op& o : g.ops()) {
      if (o.kind == OpKind::kAttentionMask) {
        EXPECT_EQ(o.attrs.causal, o.name == "sa.mask") << o.name;
      }
    }
  }
}

// The fused backend runs in the projections' token layout: no head split or merge (nor their
// gradients) is left, q/k/v and their gradients are column slices of the packed projection and its
// gradient, the context is the output projection's input, and the plan puts the QKV bias in the
// projection's epilogue and its gradient in the weight-gradient GEMM's.
TEST(AttentionBackend, FusedRunsInTheTokenLayoutWithoutHeadMoves) {
  ModelSpec spec = example("transformer-base");
  for (LayerStackSpec& s : spec.layers) s.attention = AttentionBackend::kFused;
  for (LayerGraph l : lower_model(spec)) {
    if (l.type != LayerType::kEncoder && l.type != LayerType::kDecoder) continue;
    const int attentions = count(l.graph, OpKind::kAttention);
    choose_attention(l, spec.precision);
    const Graph& g = l.graph;
    for (OpKind k : {OpKind::kSplitHeads, OpKind::kMergeHeads, OpKind::kSplitHeadsGrad,
                     OpKind::kMergeHeadsGrad}) {
      EXPECT_EQ(count(g, k), 0) << l.name << ": " << to_string(k);
    }
    EXPECT_EQ(count(g, OpKind::kFlashAttention), attentions);
    EXPECT_EQ(count(g, OpKind::kFlashAttentionGrad), attentions);
    EXPECT_NO_THROW(g.verify());
    const int64_t H = spec.layers[0].hidden;
    for (const Op& o : g.ops()) {
      if (o.kind != OpKind::kFlashAttention && o.kind != OpKind::kFlashAttentionGrad) continue;
      const bool cross = o.name.rfind("ca.", 0) == 0;
      const bool fwd = o.kind == OpKind::kFlashAttention;
      // q, k, v (both directions) and grad_q, grad_k, grad_v: [B·T, H] token rows, k and v column
      // slices [H, 2H) and [2H, 3H) of the packed rows (cross: [0, H) and [H, 2H) of [B·S, 2H]).
      std::vector<int> tensors{o.inputs[0], o.inputs[1], o.inputs[2]};
      if (!fwd) tensors.insert(tensors.end(), o.outputs.begin(), o.outputs.end());
      for (size_t i = 0; i < tensors.size(); ++i) {
        const Tensor& t = g.tensor(tensors[i]);
        const int part = static_cast<int>(i % 3);
        SCOPED_TRACE(l.name + " " + o.name + " " + t.name);
        ASSERT_EQ(t.shape.size(), 2u);
        EXPECT_EQ(t.shape[1], Dim::constant(H));
        if (cross && part == 0) {
          EXPECT_EQ(t.view_of, -1);
          EXPECT_EQ(t.row_stride, 0);
        } else {
          ASSERT_GE(t.view_of, 0);
          EXPECT_EQ(t.row_stride, (cross ? 2 : 3) * H);
          EXPECT_EQ(t.view_offset, (cross ? part - 1 : part) * H);
          EXPECT_EQ(g.tensor(t.view_of).shape[1], Dim::constant(t.row_stride));
        }
      }
      // the context (forward output, backward input 5) and its gradient (backward input 3)
      const std::vector<int> ctx =
          fwd ? std::vector<int>{o.outputs[0]} : std::vector<int>{o.inputs[3], o.inputs[5]};
      for (int c : ctx) {
        EXPECT_EQ(g.tensor(c).view_of, -1) << g.tensor(c).name;
        EXPECT_EQ(g.tensor(c).shape, (Shape{Dim::tokens(), Dim::constant(H)})) << g.tensor(c).name;
      }
    }
  }
  // A column slice outside its parent's rows, or read by a GEMM, is refused.
  for (LayerGraph l : lower_model(spec)) {
    if (l.type != LayerType::kEncoder) continue;
    choose_attention(l, spec.precision);
    Graph g = l.graph;
    int slice = -1;
    for (int id = 0; id < static_cast<int>(g.tensors().size()); ++id) {
      if (slice < 0 && g.tensor(id).row_stride > 0) slice = id;  // sa.qkv_biased[q]
    }
    ASSERT_GE(slice, 0);
    g.tensor(slice).view_offset = g.tensor(slice).row_stride;  // past the row's end
    EXPECT_THROW(g.verify(), InternalError);
    g = l.graph;
    std::vector<Op> ops = g.ops();
    for (Op& o : ops) {
      if (o.kind == OpKind::kGemm && o.name == "sa.out_proj") o.inputs[0] = slice;
    }
    g.set_ops(ops, g.backward_begin());
    try {
      g.verify();
      FAIL() << "a GEMM read a column slice";
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("a gemm op cannot take"), std::string::npos) << e.what();
    }
    break;
  }
  const std::string plan = format_plan(plan_model(spec));
  EXPECT_EQ(plan.find("split_heads"), std::string::npos);
  EXPECT_EQ(plan.find("merge_heads"), std::string::npos);
  EXPECT_NE(plan.find("epilogue bias, bias self_attn.in_proj_bias"), std::string::npos);
  EXPECT_NE(plan.find("epilogue bgrad(A), bias grad grad.self_attn.in_proj_bias"),
            std::string::npos);
  EXPECT_NE(plan.find("epilogue bgrad(A), bias grad grad.multihead_attn.in_proj_bias[kv]"),
            std::string::npos);
}

TEST(AttentionBackend, AGradientWithoutItsForwardIsAnInternalError) {
  const ModelSpec spec = example("bert-base");
  for (LayerGraph l : lower_model(spec)) {
    if (l.type != LayerType::kEncoder) continue;
    std::vector<Op> ops = l.graph.ops();
    for (Op& o : ops) {
      if (o.kind == OpKind::kAttentionGrad) o.attrs.attn.forward_op = "nowhere.attention";
    }
    l.graph.set_ops(ops, l.graph.backward_begin());
    try {
      choose_attention(l, spec.precision);
      FAIL() << "no error";
    } catch (const InternalError& e) {
      EXPECT_NE(std::string(e.what()).find("'nowhere.attention', which is not in the forward"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(AttentionBackend, LscPlanPrintsEachChoice) {
  ModelSpec spec = example("bert-base");
  EXPECT_NE(format_plan(plan_model(spec))
                .find("attention sa.attention: unfused (the spec's \"attention\": \"unfused\""),
            std::string::npos);
  spec.layers[0].attention = AttentionBackend::kFused;
  EXPECT_NE(
      format_plan(plan_model(spec)).find("attention sa.attention: fused (the spec asks for it"),
      std::string::npos);
}

// "auto": the model plan holds each stack planned twice, the unfused plan with the fused one
// hanging off it; both bind the same manifests (the runtime switches between them per call), the
// model's kernels are both plans', and `lsc plan` prints both with the rule.
TEST(AttentionBackend, AutoPlansBothBackendsBehindOneCallingConvention) {
  ModelSpec spec = example("transformer-base");
  for (LayerStackSpec& s : spec.layers) s.attention = AttentionBackend::kAuto;
  const ModelPlan plan = plan_model(spec);
  std::set<std::string> labels;
  for (const KernelInstance& k : plan.kernels()) labels.insert(k.label);
  int stacks = 0;
  for (const LayerPlan& lp : plan.layers) {
    SCOPED_TRACE(lp.layer.name);
    if (lp.layer.type != LayerType::kEncoder && lp.layer.type != LayerType::kDecoder) {
      EXPECT_EQ(lp.fused, nullptr) << "no attention, no second plan";
      continue;
    }
    ++stacks;
    ASSERT_NE(lp.fused, nullptr);
    EXPECT_EQ(lp.fused_rule.max_keys, spec_detail::kAutoFusedMaxKeys);
    EXPECT_EQ(lp.fused_rule.max_batch, kern::kFlashMaxBatchHeads / spec.layers[0].heads);
    ASSERT_EQ(lp.attention.size(), lp.fused->attention.size());
    for (size_t i = 0; i < lp.attention.size(); ++i) {
      EXPECT_EQ(lp.attention[i].backend, "unfused");
      EXPECT_EQ(lp.fused->attention[i].backend, "fused");
      for (const std::string& why : {lp.attention[i].reason, lp.fused->attention[i].reason})
        EXPECT_NE(why.find("\"attention\": \"auto\""), std::string::npos) << why;
    }
    EXPECT_EQ(lp.fused->fused, nullptr);
    EXPECT_EQ(lp.fused->layer.name, lp.layer.name);
    for (int dir = 0; dir < 2; ++dir) EXPECT_EQ(lp.fused->manifest[dir], lp.manifest[dir]);
    EXPECT_NE(lp.fused->saved, lp.saved) << "the fused plan keeps the log-sum-exp, not the scores";
    for (const LayerPlan* v : lp.plans()) {
      for (const auto* steps : {&v->forward, &v->backward}) {
        for (const Step& st : *steps) {
          if (const auto* k = std::get_if<KernelStep>(&st)) {
            EXPECT_TRUE(labels.count(k->kernel.label)) << k->kernel.label;
          }
        }
      }
    }
  }
  EXPECT_EQ(stacks, 2);
  // The kernels: the fused-only model's and the unfused-only model's, together.
  for (AttentionBackend b : {AttentionBackend::kUnfused, AttentionBackend::kFused}) {
    ModelSpec one = spec;
    for (LayerStackSpec& s : one.layers) s.attention = b;
    for (const KernelInstance& k : plan_model(one).kernels())
      EXPECT_TRUE(labels.count(k.label)) << to_string(b) << ": " << k.label;
  }
  const std::string text = format_plan(plan);
  EXPECT_NE(text.find("layers[0], its fused plan — the calls whose batch is at most 8191 and "
                      "whose attentions have at most 128 keys"),
            std::string::npos);
  EXPECT_NE(text.find("where the \"auto\" layers run their fused plans"), std::string::npos);
}

// Two plans that name one tensor id differently cannot share a calling convention: a planner bug,
// refused rather than merged.
TEST(AttentionBackend, PlansThatDisagreeOnATensorCannotShareAManifest) {
  ModelSpec spec = example("transformer-base");
  for (LayerStackSpec& s : spec.layers) s.attention = AttentionBackend::kAuto;
  const ModelPlan plan = plan_model(spec);
  const LayerPlan& lp = plan.layers.at(1);
  ASSERT_NE(lp.fused, nullptr);
  LayerPlan a = lp, b = *lp.fused;
  ASSERT_FALSE(b.manifest[0].empty());
  b.manifest[0][0].name += "_renamed";
  try {
    planner::share_manifests(a, b);
    FAIL() << "no error";
  } catch (const InternalError& e) {
    EXPECT_NE(std::string(e.what()).find("its two plans bind different tensors"), std::string::npos)
        << e.what();
  }
}

// Where the fused kernels cannot run, "auto" plans the unfused path alone and says why; the
// validator accepts it (unlike "fused").
TEST(AttentionBackend, AutoWithoutTheFusedKernelsPlansTheUnfusedPathAlone) {
  struct Case {
    Precision precision;
    int64_t heads;  // hidden 640: head dim 640 / heads
    const char* why;
  };
  for (const Case& c : {Case{Precision::kFp32, 10, "run fp16 and bf16"},
                        Case{Precision::kBf16, 16, "head_dim 40"}}) {
    ModelSpec spec = example("bert-base");
    spec.precision = c.precision;
    for (LayerStackSpec& s : spec.layers) {
      s.hidden = 640, s.heads = c.heads, s.ffn = 2560;
      s.attention = AttentionBackend::kAuto;
    }
    spec.embedding->hidden = 640;
    for (const SpecIssue& i : validate_spec(spec)) ADD_FAILURE() << i.to_string();
    for (const LayerPlan& lp : plan_model(spec).layers) {
      if (lp.layer.type != LayerType::kEncoder) continue;
      EXPECT_EQ(lp.fused, nullptr) << to_string(c.precision);
      ASSERT_EQ(lp.attention.size(), 1u);
      EXPECT_EQ(lp.attention[0].backend, "unfused");
      EXPECT_NE(lp.attention[0].reason.find("but the fused kernels cannot run"), std::string::npos)
          << lp.attention[0].reason;
      EXPECT_NE(lp.attention[0].reason.find(c.why), std::string::npos) << lp.attention[0].reason;
    }
    for (LayerStackSpec& s : spec.layers) s.attention = AttentionBackend::kFused;
    EXPECT_FALSE(validate_spec(spec).empty()) << "\"fused\" is refused where \"auto\" is not";
  }
}

// The rule: the fused plan up to max_keys keys in every attention (the self-attention's T, a
// decoder's cross-attention's S) and max_batch, the unfused plan past either.
TEST(AttentionBackend, TheAutoRuleBoundsKeysAndBatch) {
  const FusedRule r{512, 8191};
  EXPECT_TRUE(r.takes(1, 1, 0));
  EXPECT_TRUE(r.takes(8191, 512, 0));
  EXPECT_TRUE(r.takes(4, 512, 512));
  EXPECT_FALSE(r.takes(4, 513, 0));
  EXPECT_FALSE(r.takes(4, 64, 513)) << "a cross-attention over 513 encoder positions";
  EXPECT_FALSE(r.takes(8192, 64, 0));
}

}  // namespace
}  // namespace lightseq
