// layering_test.cpp — the stages include only the stages before them (DESIGN.md, target layout):
// compiler/util (hashing, atomic files), compiler/spec -> compiler/graph, compiler/ir ->
// compiler/planner -> compiler/codegen ->
// compiler/nvrtc -> compiler/cache -> compiler (the driver) -> runtime -> frontends. Every
// #include "dir/..." of every source file under those folders is checked against that order;
// runtime/ includes nothing from frontends/.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// A file's stage: the longest folder prefix in this table. Files directly in compiler/ (errors.h,
// compiler.h) are split: errors is below every stage, the driver above the cache.
int stage_of(const std::string& path) {
  static const std::vector<std::pair<std::string, int>> stages{
      {"compiler/errors", 0},   {"compiler/util/", 0},    {"common/", 0},
      {"compiler/spec/", 1},    {"compiler/ir/", 2},      {"compiler/graph/", 2},
      {"compiler/planner/", 3}, {"compiler/codegen/", 4}, {"compiler/nvrtc/", 5},
      {"compiler/cache/", 6},   {"compiler/compiler", 7}, {"runtime/", 8},
      {"frontends/", 9}};
  int best = -1;
  size_t best_len = 0;
  for (const auto& [prefix, stage] : stages) {
    if (path.rfind(prefix, 0) == 0 && prefix.size() > best_len)
      best = stage, best_len = prefix.size();
  }
  return best;
}

TEST(Layering, EveryStageIncludesOnlyTheStagesBeforeIt) {
  const fs::path root(LIGHTSEQ_SOURCE_DIR);
  const std::regex include(R"re(^\s*#\s*include\s+"([a-z_]+/[^"]+)")re");
  std::vector<std::string> violations;
  int files = 0;
  for (const char* dir : {"compiler", "runtime", "frontends"}) {
    for (const auto& e : fs::recursive_directory_iterator(root / dir)) {
      const std::string ext = e.path().extension().string();
      if (!e.is_regular_file() || (ext != ".h" && ext != ".cpp")) continue;
      const std::string rel = fs::relative(e.path(), root).generic_string();
      const int from = stage_of(rel);
      ++files;
      std::ifstream in(e.path());
      std::string line;
      int n = 0;
      while (std::getline(in, line)) {
        ++n;
        std::smatch m;
        if (!std::regex_search(line, m, include)) continue;
        const int to = stage_of(m[1].str());
        if (to < 0) continue;  // a template header ("layernorm.sig.cuh" style paths have no folder)
        if (to > from)
          violations.push_back(rel + ":" + std::to_string(n) + " includes " + m[1].str());
      }
    }
  }
  EXPECT_GT(files, 50);
  for (const std::string& v : violations) ADD_FAILURE() << v;
}

}  // namespace
