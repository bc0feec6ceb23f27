// `lsc` end to end: build (cold, warm), plan, cache ls/clear, errors and exit codes, and 8
// concurrent builds into one cache directory.
#include <gtest/gtest.h>

#include "tests/test_util.h"
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "compiler/cache/disk_cache.h"

namespace lightseq {
namespace {

namespace fs = std::filesystem;
const std::string kSource = LIGHTSEQ_SOURCE_DIR;
const std::string kLsc = LIGHTSEQ_LSC_PATH;

struct Result {
  int status = -1;
  std::string output;  // stdout and stderr together
};

Result run(const std::string& args) {
  Result r;
  const std::string cmd = kLsc + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

using test::TempDir;

std::string example(const std::string& name) { return kSource + "/examples/" + name + ".json"; }

TEST(Lsc, BuildColdThenWarm) {
  TempDir dir;
  const std::string cache = "--cache " + dir.path().string();
  Result cold = run("build " + example("bert-base") + " --arch sm_90 " + cache);
  ASSERT_EQ(cold.status, 0) << cold.output;
  EXPECT_NE(cold.output.find("bert-base: "), std::string::npos) << cold.output;
  EXPECT_NE(cold.output.find(" 0 from cache"), std::string::npos) << cold.output;
  Result warm = run("build " + example("bert-base") + " --arch sm_90 " + cache);
  ASSERT_EQ(warm.status, 0) << warm.output;
  EXPECT_NE(warm.output.find(": 0 compiled"), std::string::npos) << warm.output;

  Result ls = run("cache ls " + cache);
  ASSERT_EQ(ls.status, 0) << ls.output;
  EXPECT_NE(ls.output.find("layernorm:fp16"), std::string::npos) << ls.output;
  EXPECT_NE(ls.output.find("sm_90"), std::string::npos) << ls.output;
  Result clear = run("cache clear " + cache);
  ASSERT_EQ(clear.status, 0) << clear.output;
  EXPECT_EQ(DiskCache(dir.path()).list().size(), 0u);
}

TEST(Lsc, PlanPrintsKernelsAndGemms) {
  Result r = run("plan " + example("transformer-base"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("kernel  ln_fwd:bf16:h=512"), std::string::npos);
  EXPECT_NE(r.output.find("gemm    sa.qkv_proj"), std::string::npos);
  EXPECT_NE(r.output.find("[B·T × 1536]"), std::string::npos);
}

TEST(Lsc, BadSpecIsAClearErrorWithExitCode1) {
  TempDir dir;
  const fs::path spec = dir.path() / "bad.json";
  std::ofstream(spec) << R"({"name": "x", "precision": "bf16", "layers": [{"type": "encoder",
    "count": 1, "hidden": 512, "heads": 7, "ffn": 2048}]})";
  Result r = run("build " + spec.string() + " --cache " + (dir.path() / "c").string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("layers[0].heads = 7"), std::string::npos) << r.output;
  Result missing = run("plan " + (dir.path() / "nope.json").string());
  EXPECT_EQ(missing.status, 1) << missing.output;
  EXPECT_NE(missing.output.find("nope.json"), std::string::npos) << missing.output;
}

TEST(Lsc, BadArchAndUsageErrors) {
  TempDir dir;
  Result arch = run("build " + example("bert-base") + " --arch sm_9x --cache " + dir.path().string());
  EXPECT_EQ(arch.status, 1) << arch.output;
  EXPECT_NE(arch.output.find("sm_9x"), std::string::npos) << arch.output;
  Result usage = run("frobnicate");
  EXPECT_EQ(usage.status, 2) << usage.output;
  // a value the option's check refuses is a usage error too, named by the option
  Result range = run("bench " + example("transformer-base") + " --src-seq 0");
  EXPECT_EQ(range.status, 2) << range.output;
  EXPECT_NE(range.output.find("--src-seq"), std::string::npos) << range.output;
  Result help = run("--help");
  EXPECT_EQ(help.status, 0);
  EXPECT_NE(help.output.find("build"), std::string::npos);
  Result build_help = run("build --help");
  EXPECT_EQ(build_help.status, 0);
  EXPECT_NE(build_help.output.find("--arch"), std::string::npos);
}

TEST(Lsc, EightConcurrentBuildsLeaveAValidCache) {
  TempDir dir;
  std::vector<pid_t> pids;
  for (int i = 0; i < 8; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      const std::string spec = example(i % 2 ? "transformer-base" : "gpt2-small");
      const std::string cache = dir.path().string();
      execl(kLsc.c_str(), "lsc", "build", spec.c_str(), "--arch", "sm_90", "--cache", cache.c_str(),
            "-j", "1", "-q", static_cast<char*>(nullptr));
      _exit(127);
    }
    pids.push_back(pid);
  }
  for (pid_t pid : pids) {
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st;
  }
  DiskCache cache(dir.path());
  const auto entries = cache.list();
  EXPECT_GT(entries.size(), 0u);
  for (const auto& e : entries) EXPECT_TRUE(e.valid) << e.key;
  for (const auto& f : fs::recursive_directory_iterator(dir.path())) {
    EXPECT_EQ(f.path().extension(), f.is_directory() ? "" : ".lsq") << "stray file " << f.path();
  }
  // and the cache is complete: another build finds everything
  Result warm = run("build " + example("transformer-base") + " --arch sm_90 --cache " + dir.path().string());
  EXPECT_NE(warm.output.find(": 0 compiled"), std::string::npos) << warm.output;
}

}  // namespace
}  // namespace lightseq
