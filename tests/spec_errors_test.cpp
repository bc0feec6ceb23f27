// spec_errors_test.cpp — the text of SpecIssue, SpecError and CompileError, and the errors of
// parse_spec_file for files that are missing, unreadable or malformed.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "compiler/errors.h"
#include "frontends/spec/parse.h"

namespace lightseq {
namespace {

const std::filesystem::path kExamples = std::filesystem::path(LIGHTSEQ_SOURCE_DIR) / "examples";

TEST(SpecErrors, IssueAndErrorFormat) {
  SpecIssue a{"layers[1].heads", "7", "hidden 512 is not divisible by 7 heads; try 8"};
  EXPECT_EQ(a.to_string(), "layers[1].heads = 7: hidden 512 is not divisible by 7 heads; try 8");
  SpecIssue b{"name", "(missing)", "required"};
  EXPECT_STREQ(SpecError({a, b}, "m.json").what(),
               "m.json: invalid model spec (2 issues):\n"
               "layers[1].heads = 7: hidden 512 is not divisible by 7 heads; try 8\n"
               "name = (missing): required");
  EXPECT_STREQ(SpecError({b}, "m.json").what(),
               "m.json: invalid model spec (1 issue):\nname = (missing): required");
  EXPECT_STREQ(SpecError({a, b}).what(),
               "layers[1].heads = 7: hidden 512 is not divisible by 7 heads; try 8\n"
               "name = (missing): required");
  EXPECT_EQ(SpecError({a}).issues().size(), 1u);
}

TEST(SpecErrors, CompileErrorCarriesEverything) {
  CompileError e({.program = "layernorm:bf16:sm_90",
                  .labels = {"ln_fwd:bf16:h=512:vec=8", "ln_bwd:bf16:h=512:vec=8"},
                  .options = {"--gpu-architecture=sm_90", "-std=c++17"},
                  .nvrtc_version = "13.0",
                  .log = "kernel.cu(3): error: expected a \";\"\n1 error detected\n",
                  .source_path = "/tmp/lightseq/layernorm.cu"});
  EXPECT_STREQ(e.what(),
               "NVRTC failed to compile program layernorm:bf16:sm_90\n"
               "kernels: ln_fwd:bf16:h=512:vec=8, ln_bwd:bf16:h=512:vec=8\n"
               "options: --gpu-architecture=sm_90 -std=c++17\n"
               "NVRTC version: 13.0\n"
               "source: /tmp/lightseq/layernorm.cu\n"
               "log:\n"
               "kernel.cu(3): error: expected a \";\"\n1 error detected\n");
  EXPECT_EQ(e.details().labels.size(), 2u);
  CompileError::Details details;
  details.program = "p";
  details.nvrtc_version = "13.0";
  details.log = "log";
  CompileError unwritten(details);
  EXPECT_STREQ(unwritten.what(),
               "NVRTC failed to compile program p\nkernels: (none)\noptions: \n"
               "NVRTC version: 13.0\nsource: (could not be written)\nlog:\nlog");
}

TEST(SpecFile, MissingFileNamesPathAndReason) {
  const std::string path = "/nonexistent-lightseq-dir/spec.json";
  try {
    parse_spec_file(path);
    FAIL() << "no SpecError";
  } catch (const SpecError& e) {
    EXPECT_STREQ(e.what(),
                 "/nonexistent-lightseq-dir/spec.json: invalid model spec (1 issue):\n"
                 "file = \"/nonexistent-lightseq-dir/spec.json\": cannot open: No such file or "
                 "directory");
  }
}

TEST(SpecFile, DirectoryIsUnreadable) {
  try {
    parse_spec_file(kExamples);
    FAIL() << "no SpecError";
  } catch (const SpecError& e) {
    ASSERT_EQ(e.issues().size(), 1u);
    EXPECT_EQ(e.issues()[0].message, "cannot read: Is a directory");
  }
}

TEST(SpecFile, ErrorsNameTheFile) {
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / "lightseq_spec_test_bad.json";
  std::ofstream(path) << "{\n  \"name\": \"x\",\n  \"precision\": \"fp16\",\n}\n";
  try {
    parse_spec_file(path);
    FAIL() << "no SpecError";
  } catch (const SpecError& e) {
    EXPECT_EQ(std::string(e.what()),
              path.string() +
                  ": invalid model spec (1 issue):\nline 4, column 1 = }: syntax error while "
                  "parsing object key - unexpected '}'; expected string literal");
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace lightseq
