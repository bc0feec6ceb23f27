// attention_backend_test.cpp — pass 0 of the planner (compiler/planner/attention_backend.h): the
// lowering emits one attention op (and its gradient) per attention sublayer; the pass chooses a
// backend for each, says why, and rewrites them into that backend's ops before fusion.
#include "compiler/planner/attention_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
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
  const ModelSpec spec = example("transformer-base");
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
  EXPECT_NE(
      format_plan(plan_model(spec)).find("attention sa.attention: unfused (the spec's default"),
      std::string::npos);
  spec.layers[0].attention = AttentionBackend::kFused;
  EXPECT_NE(
      format_plan(plan_model(spec)).find("attention sa.attention: fused (the spec asks for it"),
      std::string::npos);
}

}  // namespace
}  // namespace lightseq
