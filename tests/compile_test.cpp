// NVRTC compile of every kernel of every example, in every precision, for sm_80 and sm_90, and
// the cache behaviour of a whole-model build (second build compiles nothing).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "compiler/compiler.h"
#include "compiler/planner/planner.h"
#include "frontends/spec/parse.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

namespace fs = std::filesystem;
const std::string kSource = LIGHTSEQ_SOURCE_DIR;

using test::TempDir;

struct Case {
  std::string example;
  Precision precision;
};

class CompileAllKernels : public ::testing::TestWithParam<Case> {};

TEST_P(CompileAllKernels, EveryKernelCompilesForSm80AndSm90) {
  const Case c = GetParam();
  ModelSpec spec = parse_spec_file(kSource + "/examples/" + c.example + ".json");
  spec.precision = c.precision;
  if (c.precision == Precision::kFp32) {  // the fused attention runs fp16/bf16 only
    for (LayerStackSpec& l : spec.layers) l.attention = AttentionBackend::kUnfused;
  }
  const ModelPlan plan = plan_model(spec);
  TempDir dir;
  DiskCache cache(dir.path());
  BuildOptions options;
  options.archs = {"sm_80", "sm_90"};
  const BuildReport r = build_plan(plan, cache, options);
  EXPECT_EQ(r.kernels, static_cast<int>(plan.kernels().size()));
  EXPECT_EQ(r.compiled, r.programs);
  EXPECT_EQ(r.cached, 0);
  int kernels_seen = 0;
  for (const CompiledModule& m : r.modules) {
    EXPECT_FALSE(m.entry.is_ptx) << m.entry.program;
    ASSERT_GE(m.entry.image.size(), 4u);
    EXPECT_EQ(std::string(m.entry.image.data() + 1, 3), "ELF") << m.entry.program;
    ASSERT_EQ(m.entry.lowered_names.size(), m.entry.labels.size());
    for (const std::string& name : m.entry.lowered_names) EXPECT_FALSE(name.empty());
    kernels_seen += static_cast<int>(m.entry.labels.size());
  }
  EXPECT_EQ(kernels_seen, 2 * r.kernels);

  // A second build of the same model compiles nothing: every program comes from the cache.
  DiskCache again(dir.path());
  const BuildReport warm = build_plan(plan, again, options);
  EXPECT_EQ(warm.compiled, 0);
  EXPECT_EQ(warm.cached, warm.programs);
  EXPECT_EQ(again.stats().hits, warm.programs);
  EXPECT_EQ(again.stats().misses, 0);
  for (size_t i = 0; i < warm.modules.size(); ++i) {
    EXPECT_EQ(warm.modules[i].entry, r.modules[i].entry);
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> out;
  for (const char* e : {"transformer-base", "transformer-big", "bert-base", "gpt2-small"}) {
    for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16})
      out.push_back({e, p});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Examples, CompileAllKernels, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) {
                           std::string n = info.param.example + "_" +
                                           std::string(to_string(info.param.precision));
                           for (char& ch : n) ch = ch == '-' ? '_' : ch;
                           return n;
                         });

TEST(Build, RejectsBadArchBeforeCompiling) {
  const ModelPlan plan = plan_model(parse_spec_file(kSource + "/examples/bert-base.json"));
  TempDir dir;
  DiskCache cache(dir.path());
  BuildOptions options;
  options.archs = {"sm_9o"};
  EXPECT_THROW(build_plan(plan, cache, options), Error);
  EXPECT_EQ(cache.stats().writes, 0);
}

}  // namespace
}  // namespace lightseq
