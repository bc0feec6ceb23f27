// The example and benchmark specs whose plans the host-only plan tests sweep (temporary
// placement, the parameter-gradient lane), each planned with the unfused attention and, for a
// 16-bit spec, the fused one.
#pragma once

#include <gtest/gtest.h>

#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "compiler/planner/planner.h"
#include "frontends/spec/parse.h"

namespace lightseq::test {

inline const std::vector<std::string>& plan_specs() {
  static const std::vector<std::string> specs{"examples/transformer-base.json",
                                              "examples/transformer-big.json",
                                              "examples/bert-base.json",
                                              "examples/gpt2-small.json",
                                              "benchmarks/specs/enc-512-post.json",
                                              "benchmarks/specs/enc-1024-pre.json"};
  return specs;
}

// A test name from a spec's path ("examples_bert_base_json").
inline std::string plan_spec_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = info.param;
  for (char& c : n)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  return n;
}

// (label, plan) of the spec at `path` (relative to the source tree) with every stack's attention
// set: "<path> unfused", and "<path> fused" unless the spec is fp32 (an "auto" stack's two plans
// are these two).
inline std::vector<std::pair<std::string, ModelPlan>> plans_by_attention(const std::string& path) {
  std::vector<std::pair<std::string, ModelPlan>> out;
  for (const char* attention : {"unfused", "fused"}) {
    ModelSpec spec = parse_spec_file(std::string(LIGHTSEQ_SOURCE_DIR) + "/" + path);
    const bool fused = std::string(attention) == "fused";
    if (fused && spec.precision == Precision::kFp32) continue;
    for (LayerStackSpec& l : spec.layers)
      l.attention = fused ? AttentionBackend::kFused : AttentionBackend::kUnfused;
    out.emplace_back(path + " " + attention, plan_model(spec));
  }
  return out;
}

}  // namespace lightseq::test
