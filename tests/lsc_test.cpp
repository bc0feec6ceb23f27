// `lsc` end to end: build (cold, warm), plan, cache ls/clear, errors and exit codes, and 8
// concurrent builds into one cache directory.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "compiler/cache/disk_cache.h"
#include "tests/lsc_test_util.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

namespace fs = std::filesystem;
using namespace lsc_test;  // NOLINT: test helpers
using test::TempDir;

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

// A directory and a FIFO at entry paths, a stale temp file: `cache ls` shows them without
// hanging, `build` replaces the bad entries (no "not writable" fallback) and removes the temp file.
TEST(Lsc, BuildReplacesBadEntriesAndRemovesStaleTempFiles) {
  TempDir dir;
  const std::string cache = "--cache " + dir.path().string();
  ASSERT_EQ(run("build " + example("bert-base") + " -q " + cache).status, 0);
  std::vector<fs::path> entries;
  for (const auto& f : fs::directory_iterator(dir.path() / "v1")) entries.push_back(f.path());
  ASSERT_GE(entries.size(), 2u);
  fs::remove(entries[0]);
  fs::create_directories(entries[0] / "sub");
  fs::remove(entries[1]);
  ASSERT_EQ(::mkfifo(entries[1].c_str(), 0644), 0);
  const fs::path stale = dir.path() / "v1" / ".abc.4242.0123456789abcdef.tmp";
  std::ofstream(stale) << "partial";
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::hours(1));

  Result ls = run_shell("timeout 60 " + kLsc + " cache ls " + cache);
  ASSERT_EQ(ls.status, 0) << ls.output;
  EXPECT_NE(ls.output.find("(invalid: '" + entries[0].string() +
                           "' is a directory, not a regular file; replaced on next use)"),
            std::string::npos)
      << ls.output;
  EXPECT_NE(ls.output.find("(invalid: '" + entries[1].string() +
                           "' is a FIFO, not a regular file; replaced on next use)"),
            std::string::npos)
      << ls.output;
  EXPECT_NE(ls.output.find("1 temp files (writes in progress, or left by killed writers; `lsc "
                           "build` and `lsc cache clear` remove those older than 10 minutes):\n  " +
                           stale.string() + " 7 bytes (stale: left by a killed writer)\n"),
            std::string::npos)
      << ls.output;

  Result build = run_shell("timeout 60 " + kLsc + " build " + example("bert-base") + " " + cache);
  ASSERT_EQ(build.status, 0) << build.output;
  EXPECT_NE(build.output.find(": 2 compiled"), std::string::npos) << build.output;
  EXPECT_EQ(build.output.find("not writable"), std::string::npos) << build.output;
  EXPECT_FALSE(fs::exists(stale));
  for (const CacheEntryInfo& e : DiskCache(dir.path()).list()) EXPECT_TRUE(e.valid) << e.key;
  EXPECT_EQ(fs::symlink_status(entries[1]).type(), fs::file_type::regular);
}

TEST(Lsc, CacheLsAndClearDoNotCreateTheDirectory) {
  TempDir dir;
  const fs::path missing = dir.path() / "none";
  Result ls = run("cache ls --cache " + missing.string());
  EXPECT_EQ(ls.status, 0) << ls.output;
  EXPECT_EQ(ls.output,
            "cache " + missing.string() + ": 0 entries (the directory does not exist)\n");
  Result clear = run("cache clear --cache " + missing.string());
  EXPECT_EQ(clear.status, 0) << clear.output;
  EXPECT_EQ(clear.output, "removed 0 entries from " + missing.string() + "\n");
  EXPECT_FALSE(fs::exists(missing));
}

// Past `ulimit -f` a write fails with EFBIG (lsc ignores SIGXFSZ) and the cache falls back to
// memory.
TEST(Lsc, FileSizeLimitFallsBackToMemory) {
  TempDir dir;
  Result r = run_shell("ulimit -f 1 && exec " + kLsc + " build " + example("bert-base") +
                       " --cache " + dir.path().string());
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("File too large); compiled kernels will be kept in memory only"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("(not writable: kept in memory)"), std::string::npos) << r.output;
  EXPECT_TRUE(DiskCache(dir.path()).list().empty());
  EXPECT_TRUE(DiskCache(dir.path()).temp_files().empty())
      << "the failed write's temp file is removed";
}

// --resources: every kernel of the spec with ptxas's numbers for each arch, in order whatever
// --jobs, nothing written to the cache (LIGHTSEQ_CACHE_DIR, the default, stays absent); --cache
// with it is a usage error, not silently ignored.
TEST(Lsc, BuildResourcesPrintsEachKernelsRegistersAndWritesNoCache) {
  TempDir dir;
  const std::string cache = (dir.path() / "cache").string();
  Result r = run_shell("LIGHTSEQ_CACHE_DIR=" + cache + " " + kLsc + " build " +
                       example("bert-base") + " --arch sm_80,sm_90a --resources -j 2");
  ASSERT_EQ(r.status, 0) << r.output;
  const size_t sm80 = r.output.find("bert-base for sm_80 (ptxas -v; bytes)");
  const size_t sm90a = r.output.find("bert-base for sm_90a (ptxas -v; bytes)");
  ASSERT_NE(sm80, std::string::npos) << r.output;
  ASSERT_NE(sm90a, std::string::npos) << r.output;
  EXPECT_LT(sm80, sm90a) << r.output;
  EXPECT_NE(r.output.find("regs  frame spill-st"), std::string::npos) << r.output;
  const size_t ln = r.output.find("ln_fwd:fp16:h=768");
  EXPECT_LT(ln, sm90a) << r.output;
  EXPECT_NE(r.output.find("ln_fwd:fp16:h=768", sm90a), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(cache));
  Result with_cache = run("build " + example("bert-base") + " --resources --cache " + cache);
  EXPECT_EQ(with_cache.status, 2) << with_cache.output;
  EXPECT_NE(with_cache.output.find("leave out --cache"), std::string::npos) << with_cache.output;
  EXPECT_FALSE(fs::exists(cache));
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
  Result arch =
      run("build " + example("bert-base") + " --arch sm_9x --cache " + dir.path().string());
  EXPECT_EQ(arch.status, 1) << arch.output;
  EXPECT_NE(arch.output.find("sm_9x"), std::string::npos) << arch.output;
  Result usage = run("frobnicate");
  EXPECT_EQ(usage.status, 2) << usage.output;
  // a value the option's check refuses is a usage error too, named by the option
  Result range = run("bench " + example("transformer-base") + " --src-seq 0");
  EXPECT_EQ(range.status, 2) << range.output;
  EXPECT_NE(range.output.find("--src-seq"), std::string::npos) << range.output;
  Result backend = run("bench " + example("transformer-base") + " --attention flash");
  EXPECT_EQ(backend.status, 2) << backend.output;
  EXPECT_NE(backend.output.find("--attention"), std::string::npos) << backend.output;
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
  Result warm =
      run("build " + example("transformer-base") + " --arch sm_90 --cache " + dir.path().string());
  EXPECT_NE(warm.output.find(": 0 compiled"), std::string::npos) << warm.output;
}

}  // namespace
}  // namespace lightseq
