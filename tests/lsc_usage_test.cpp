// `lsc` usage errors: each exits 2 with a message that names the word or value at fault and says
// what is expected; duplicate archs are built once.
#include <gtest/gtest.h>

#include <regex>
#include <string>

#include "tests/lsc_test_util.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

using namespace lsc_test;  // NOLINT: test helpers
using test::TempDir;

TEST(LscUsage, UnknownOrMissingSubcommandIsNamed) {
  expect_usage_error("frobnicate",
                     "lsc: unknown subcommand 'frobnicate': expected one of build, plan, kernels, "
                     "cache, bench, train");
  expect_usage_error("--frob",
                     "lsc: unknown option '--frob': expected one of build, plan, kernels, cache, "
                     "bench, train");
  expect_usage_error("",
                     "lsc: a subcommand is required: expected one of build, plan, kernels, "
                     "cache, bench, train");
  expect_usage_error("cache frob",
                     "lsc cache: unknown subcommand 'frob': expected one of ls, clear");
  expect_usage_error("cache", "lsc cache: a subcommand is required: expected one of ls, clear");
}

TEST(LscUsage, NumbersAreCheckedWithASaneRange) {
  const std::string spec = example("transformer-base");
  expect_usage_error("build " + spec + " -j -3",
                     "--jobs: -3 is too small: must be at least 0 (0 = one per core)");
  expect_usage_error("build " + spec + " -j abc",
                     "--jobs: 'abc' is not a whole number: give one of at least 0 (0 = one per "
                     "core)");
  expect_usage_error("build " + spec + " -j 1.5",
                     "--jobs: '1.5' is not a whole number: give one of at least 0 (0 = one per "
                     "core)");
  expect_usage_error("build " + spec + " -j 99999999999",
                     "--jobs: 99999999999 is too large: must be at most 2147483647");
  expect_usage_error("bench " + spec + " --batch 0", "--batch: 0 is too small: must be at least 1");
  expect_usage_error("bench " + spec + " --warmup -1",
                     "--warmup: -1 is too small: must be at least 0");
}

TEST(LscUsage, EmptyArchAndCacheAreUsageErrors) {
  const std::string spec = example("transformer-base");
  expect_usage_error("build " + spec + " --arch ''",
                     "--arch: no arch in '': give one or more, e.g. sm_80,sm_90");
  expect_usage_error("build " + spec + " --arch ,",
                     "--arch: no arch in ',': give one or more, e.g. sm_80,sm_90");
  const std::string empty_cache =
      "--cache: an empty value is not allowed: give a directory, or leave --cache out for the "
      "default (see lsc --help)";
  expect_usage_error("build " + spec + " --cache ''", empty_cache);
  expect_usage_error("cache ls --cache ''", empty_cache);
  expect_usage_error("cache clear --cache ''", empty_cache);
}

TEST(LscUsage, DuplicateArchsAreBuiltOnce) {
  TempDir dir;
  const Result r = run("build " + example("bert-base") + " --arch sm_90,sm_90,sm_90 --cache " +
                       dir.path().string());
  ASSERT_EQ(r.status, 0) << r.output;
  // One line for sm_90, every program compiled once.
  const std::regex line(R"( in (\d+) programs for sm_90: (\d+) compiled, 0 from cache)");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, line)) << r.output;
  EXPECT_EQ(m[1].str(), m[2].str()) << r.output;
  EXPECT_EQ(r.output.find("for sm_90", m.position(0) + m.length(0)), std::string::npos) << r.output;
}

}  // namespace
}  // namespace lightseq
