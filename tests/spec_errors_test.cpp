// spec_errors_test.cpp — the text of SpecIssue, SpecError and CompileError, and the errors of
// parse_spec_file for files that are missing, unreadable, malformed, not regular files or too
// large; the cap on listed issues.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "compiler/errors.h"
#include "compiler/spec/rules.h"
#include "frontends/spec/parse.h"
#include "tests/test_util.h"

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
    EXPECT_EQ(e.issues()[0].message,
              "is a directory, not a regular file; give the path of a JSON spec file");
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

// The single issue of a spec file that cannot be parsed at all.
SpecIssue file_issue(const std::filesystem::path& path) {
  try {
    parse_spec_file(path);
  } catch (const SpecError& e) {
    EXPECT_EQ(e.issues().size(), 1u) << e.what();
    if (!e.issues().empty()) return e.issues()[0];
  }
  ADD_FAILURE() << "no SpecError for " << path;
  return {};
}

TEST(SpecFile, FifoAndDevicesAreRefusedWithoutBlocking) {
  ::alarm(30);  // a FIFO opened for reading would block: fail fast instead
  test::TempDir dir;
  const std::filesystem::path fifo = dir.path() / "spec.json";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
  const SpecIssue issue = file_issue(fifo);
  EXPECT_EQ(issue.to_string(),
            "file = \"" + fifo.string() +
                "\": is a FIFO, not a regular file; give the path of a JSON spec "
                "file");
  EXPECT_EQ(file_issue("/dev/zero").message,
            "is a character device, not a regular file; give the path of a JSON spec file");
  ::alarm(0);
}

TEST(SpecFile, SymlinkToASpecIsFollowed) {
  test::TempDir dir;
  std::filesystem::create_symlink(kExamples / "bert-base.json", dir.path() / "link.json");
  EXPECT_EQ(parse_spec_file(dir.path() / "link.json").name, "bert-base");
}

TEST(SpecFile, LargeFilesAreRefusedQuickly) {
  test::TempDir dir;
  const std::filesystem::path path = dir.path() / "big.json";
  std::ofstream(path) << std::string(spec_detail::kMaxSpecBytes + 1, ' ');
  EXPECT_EQ(file_issue(path).message,
            "larger than 1024 KiB; a model spec is a few KiB of JSON (a stack of identical layers "
            "is written once, with \"count\")");
  try {
    parse_spec_string(std::string(spec_detail::kMaxSpecBytes + 1, ' '));
    FAIL() << "no SpecError";
  } catch (const SpecError& e) {
    EXPECT_EQ(
        e.issues().at(0).to_string(),
        "(root) = (1048577 bytes): larger than 1024 KiB; a model spec is a few KiB of JSON (a "
        "stack of identical layers is written once, with \"count\")");
  }
}

// A spec just under the size bound, every stack broken twice (an unknown key, bad heads): it is
// rejected in seconds (it was quadratic), and what() lists 50 issues then "... and N more".
TEST(SpecFile, ThousandsOfIssuesAreCappedInTheMessage) {
  const std::string stack =
      R"({"type": "encoder", "hidden": 512, "heads": 7, "ffn": 2048, "hedas": 1},)";
  const size_t stacks = (spec_detail::kMaxSpecBytes - 100) / stack.size();
  std::string text = R"({"name": "x", "precision": "bf16", "layers": [)";
  for (size_t i = 0; i < stacks; ++i) text += stack;
  text.back() = ']';
  text += "}";
  ASSERT_LE(text.size(), spec_detail::kMaxSpecBytes);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    parse_spec_string(text, "big.json");
    FAIL() << "no SpecError";
  } catch (const SpecError& e) {
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(seconds, 30.0);
    const size_t issues = 2 * stacks + 1;  // + "at most 256 stacks"
    ASSERT_EQ(e.issues().size(), issues);
    EXPECT_EQ(e.issues()[0].to_string(),
              "layers = [...]: at most 256 stacks; give a stack of identical layers once, with "
              "\"count\": N (up to 1024)");
    const std::string what = e.what();
    EXPECT_TRUE(what.starts_with("big.json: invalid model spec (" + std::to_string(issues) +
                                 " issues):\nlayers = [...]: at most 256 stacks"))
        << what.substr(0, 200);
    EXPECT_EQ(std::count(what.begin(), what.end(), '\n'), 1 + 50);
    EXPECT_TRUE(what.ends_with("\n... and " + std::to_string(issues - 50) + " more"))
        << what.substr(what.size() - 200);
  }
}

}  // namespace
}  // namespace lightseq
