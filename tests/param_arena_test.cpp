// param_arena_test.cpp — the model's parameter arena (compiler/graph/param_arena.h): every
// parameter once, under PyTorch's state_dict names (nn.Transformer's for the stacks), aligned and
// non-overlapping; the optimizer layer's arenas have exactly its size.
#include "compiler/graph/param_arena.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "compiler/planner/planner.h"
#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

ModelSpec example(const std::string& name) {
  return parse_spec_file(std::string(LIGHTSEQ_SOURCE_DIR) + "/examples/" + name + ".json");
}

void expect_well_formed(const ParamArena& a) {
  std::set<std::string> names;
  int64_t end = 0;
  for (const ArenaEntry& e : a.entries) {
    EXPECT_TRUE(names.insert(e.name).second) << e.name << " twice";
    EXPECT_EQ(e.offset % kArenaAlignElems, 0) << e.name;
    EXPECT_GE(e.offset, end) << e.name << " overlaps the entry before it";
    EXPECT_EQ(e.numel, shape_numel(e.shape).factor) << e.name;
    EXPECT_GT(e.numel, 0) << e.name;
    end = e.offset + e.numel;
  }
  EXPECT_GE(a.total, end);
  EXPECT_LT(a.total - end, kArenaAlignElems);
  EXPECT_EQ(a.total % kArenaAlignElems, 0);
}

TEST(ParamArena, TransformerBaseHasNnTransformersNamesAndOneTiedTable) {
  const ModelSpec spec = example("transformer-base");
  const ParamArena a = parameter_arena(spec);
  expect_well_formed(a);
  std::set<std::string> names;
  for (const ArenaEntry& e : a.entries) names.insert(e.name);
  const int64_t enc = spec.layers[0].count, dec = spec.layers[1].count;
  // 12 parameters per encoder layer, 18 per decoder layer (the cross-attention's packed
  // in_proj_weight/bias whole, as nn.MultiheadAttention holds them), the token table once.
  EXPECT_EQ(a.entries.size(), static_cast<size_t>(1 + 12 * enc + 18 * dec));
  for (const char* n :
       {"embed_tokens.weight", "encoder.layers.0.self_attn.in_proj_weight",
        "encoder.layers.5.norm2.bias", "decoder.layers.0.multihead_attn.in_proj_weight",
        "decoder.layers.5.multihead_attn.in_proj_bias", "decoder.layers.3.norm3.weight",
        "decoder.layers.5.linear2.weight"}) {
    EXPECT_TRUE(names.count(n)) << n;
  }
  for (const std::string& n : names) {
    EXPECT_EQ(n.find('['), std::string::npos) << n << ": a slice is its parameter's, not an entry";
    EXPECT_NE(n, "output_projection.weight") << "the output projection is tied to embed_tokens";
  }
  const ArenaEntry& first_dec =
      *std::find_if(a.entries.begin(), a.entries.end(), [](const ArenaEntry& e) {
        return e.name == "decoder.layers.0.multihead_attn.in_proj_weight";
      });
  EXPECT_EQ(first_dec.layer, "layers[1]");
  EXPECT_EQ(first_dec.param, "multihead_attn.in_proj_weight");
  EXPECT_EQ(shape_to_string(first_dec.shape), "[1536, 512]");
}

// The optimizer's arenas are `batch` elements long: the model-level step passes the arena's total,
// or one layer's span of it (early updates, runtime/step.cpp).
TEST(ParamArena, EveryExampleIsWellFormedAndTheOptimizerIsSizedByTheRun) {
  for (const char* name : {"transformer-base", "transformer-big", "bert-base", "gpt2-small"}) {
    SCOPED_TRACE(name);
    const ModelSpec spec = example(name);
    const ParamArena a = parameter_arena(spec);
    expect_well_formed(a);
    if (!spec.optimizer) continue;
    for (const LayerGraph& l : lower_model(spec)) {
      if (l.type != LayerType::kOptimizer) continue;
      for (const char* t : {"params", "grads", "exp_avg", "exp_avg_sq"}) {
        EXPECT_EQ(shape_to_string(l.graph.tensor(l.graph.tensor_id(t)).shape), "[B]") << t;
      }
    }
  }
}

TEST(ParamArena, AnUntiedOutputProjectionIsItsOwnEntry) {
  ModelSpec spec = example("transformer-base");
  ASSERT_TRUE(spec.embedding && spec.criterion);
  spec.embedding->tie_output = false;
  const ParamArena a = parameter_arena(spec);
  const auto it = std::find_if(a.entries.begin(), a.entries.end(), [](const ArenaEntry& e) {
    return e.name == "output_projection.weight";
  });
  ASSERT_NE(it, a.entries.end());
  EXPECT_EQ(it->layer, "criterion");
  EXPECT_EQ(it->numel, spec.embedding->vocab * spec.embedding->hidden);
}

// What TrainStep binds: every parameter and parameter gradient of every layer instance's manifest
// (the optimizer's arenas aside) is an arena entry of the same size, found by arena_name; every
// entry is bound by some layer.
TEST(ParamArena, EveryLayerInstanceBindsItsParametersByArenaName) {
  for (const char* name : {"transformer-base", "transformer-big", "bert-base", "gpt2-small"}) {
    SCOPED_TRACE(name);
    ModelSpec spec = example(name);
    const ParamArena a = parameter_arena(spec);
    const ModelPlan plan = plan_model(spec);
    std::set<std::string> bound;
    std::map<LayerType, int64_t> instances;
    for (const LayerPlan& lp : plan.layers) {
      const LayerType type = lp.layer.type;
      if (type == LayerType::kOptimizer) continue;
      const int64_t first = instances[type];
      instances[type] += lp.layer.count;
      for (int64_t i = first; i < first + lp.layer.count; ++i) {
        for (const auto& dir : lp.manifest) {
          for (const ManifestEntry& m : dir) {
            const bool grad = m.role == TensorRole::kParamGrad;
            if (m.role != TensorRole::kParam && !grad) continue;
            const std::string n = arena_name(type, i, grad ? m.grad_of : m.name);
            const ArenaEntry* e = find_entry(a, n);
            ASSERT_NE(e, nullptr) << lp.layer.name << " binds " << n << ", not in the arena";
            EXPECT_EQ(e->numel, shape_numel(m.shape).factor) << n;
            bound.insert(n);
          }
        }
      }
    }
    EXPECT_EQ(bound.size(), a.entries.size()) << "an arena entry no layer binds";
  }
  EXPECT_EQ(arena_name(LayerType::kDecoder, 3, "norm3.bias"), "decoder.layers.3.norm3.bias");
  EXPECT_EQ(arena_name(LayerType::kCriterion, 0, "embed_tokens.weight"), "embed_tokens.weight");
}

}  // namespace
}  // namespace lightseq
