// cache_dirs_test.cpp — the disk cache's directory: unwritable ones (a path under a regular
// file; a read-only directory checked as an unprivileged user, since root ignores permissions; a
// directory that breaks or vanishes under a running cache), 8 threads and 8 processes sharing
// one directory, and default_cache_dir()'s environment precedence.
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "compiler/cache/disk_cache.h"
#include "tests/cache_test_util.h"

namespace lightseq {
namespace {

using namespace cache_test;  // NOLINT: test helpers

TEST(DiskCache, ParentIsARegularFileWarnsOnceAndKeepsEntriesInMemory) {
  TempDir dir;
  write_bytes(dir.path() / "file", "a regular file");
  const fs::path cache_dir = dir.path() / "file" / "cache";
  Warnings warnings;
  DiskCache cache(cache_dir, warnings.sink());
  EXPECT_FALSE(cache.persistent());
  ASSERT_EQ(warnings.messages.size(), 1u);
  const std::string& w = warnings.messages[0];
  EXPECT_TRUE(w.starts_with(expected_warning_prefix(cache_dir))) << w;
  EXPECT_TRUE(w.ends_with(kWarningSuffix)) << w;
  EXPECT_NE(w.find("Not a directory"), std::string::npos) << w;
  EXPECT_EQ(cache.warning(), w);

  EXPECT_EQ(cache.get("k"), std::nullopt);
  cache.put("k", make_entry(1));
  cache.put("k2", make_entry(2));
  EXPECT_EQ(cache.get("k"), make_entry(1));
  expect_stats(cache, 1, 1, 0, 2);
  EXPECT_EQ(warnings.messages.size(), 1u);
  const std::vector<CacheEntryInfo> infos = cache.list();
  ASSERT_EQ(infos.size(), 2u);
  EXPECT_TRUE(infos[0].in_memory);
  EXPECT_EQ(infos[0].kernels, 2);
  EXPECT_EQ(cache.clear(), 2);
  EXPECT_EQ(cache.get("k"), std::nullopt);
}

TEST(DiskCache, DefaultWarningGoesToStderrOncePerDirectory) {
  TempDir dir;
  write_bytes(dir.path() / "file", "a regular file");
  const fs::path cache_dir = dir.path() / "file" / "cache";
  testing::internal::CaptureStderr();
  {
    DiskCache first(cache_dir);
    DiskCache second(cache_dir);
    EXPECT_FALSE(second.warning().empty());  // each object still knows why
  }
  const std::string err = testing::internal::GetCapturedStderr();
  const std::string prefix = expected_warning_prefix(cache_dir);
  ASSERT_NE(err.find(prefix), std::string::npos) << err;
  EXPECT_EQ(err.find(prefix, err.find(prefix) + 1), std::string::npos) << err;
}

TEST(DiskCache, ReadOnlyDirectoryServesExistingEntriesAndKeepsNewOnesInMemory) {
  TempDir dir;
  const fs::path cache_dir = dir.path() / "cache";
  {
    DiskCache writer(cache_dir);
    writer.put("existing", make_entry(1));
  }
  // nobody must reach the directory and read the entry, but not write.
  fs::permissions(dir.path(), fs::perms(0755));
  fs::permissions(cache_dir / "v1" / "existing.lsq", fs::perms(0644));
  fs::permissions(cache_dir / "v1", fs::perms(0555));
  fs::permissions(cache_dir, fs::perms(0555));
  const int status = run_in_unprivileged_child([&] {
    CHILD_CHECK(::access((cache_dir / "v1").c_str(), W_OK) != 0);
    Warnings warnings;
    DiskCache cache(cache_dir, warnings.sink());
    CHILD_CHECK(warnings.messages.size() == 1);
    CHILD_CHECK(warnings.messages[0].starts_with(expected_warning_prefix(cache_dir)));
    CHILD_CHECK(warnings.messages[0].find("Permission denied") != std::string::npos);
    CHILD_CHECK(!cache.persistent());
    CHILD_CHECK(cache.get("existing") == make_entry(1));  // served from disk
    CHILD_CHECK(cache.get("new") == std::nullopt);
    cache.put("new", make_entry(2));
    cache.put("existing", make_entry(3));  // memory now shadows the disk entry
    CHILD_CHECK(cache.get("new") == make_entry(2));
    CHILD_CHECK(cache.get("existing") == make_entry(3));
    const CacheStats s = cache.stats();
    CHILD_CHECK(s.hits == 3 && s.misses == 1 && s.corrupt == 0 && s.writes == 2);
    CHILD_CHECK(warnings.messages.size() == 1);
    const std::vector<CacheEntryInfo> infos = cache.list();
    CHILD_CHECK(infos.size() == 2 && infos[0].key == "existing" && !infos[0].in_memory &&
                infos[1].key == "new" && infos[1].in_memory);
    return 0;
  });
  if (status == 77) GTEST_SKIP() << "could not drop root privileges to uid 65534";
  EXPECT_EQ(status, 0) << "see the child's stderr above";
  fs::permissions(cache_dir, fs::perms(0755));
  fs::permissions(cache_dir / "v1", fs::perms(0755));
  EXPECT_EQ(file_names(cache_dir / "v1"), std::set<std::string>{"existing.lsq"});
  EXPECT_EQ(DiskCache(cache_dir).get("existing"), make_entry(1));
}

TEST(DiskCache, WriteFailureAfterConstructionWarnsOnceAndFallsBackToMemory) {
  TempDir dir;
  Warnings warnings;
  DiskCache cache(dir.path(), warnings.sink());
  cache.put("before", make_entry(1));
  // The entries directory turns into a regular file under the running cache.
  fs::rename(dir.path() / "v1", dir.path() / "v1.moved");
  write_bytes(dir.path() / "v1", "now a file");
  cache.put("after", make_entry(2));
  cache.put("after2", make_entry(3));
  EXPECT_FALSE(cache.persistent());
  ASSERT_EQ(warnings.messages.size(), 1u);
  EXPECT_TRUE(warnings.messages[0].starts_with(expected_warning_prefix(dir.path())));
  EXPECT_NE(warnings.messages[0].find("cannot create '" + (dir.path() / "v1").string() + "/."),
            std::string::npos)
      << warnings.messages[0];
  EXPECT_EQ(cache.get("after"), make_entry(2));
  EXPECT_EQ(cache.get("after2"), make_entry(3));
  expect_stats(cache, 2, 0, 0, 3);
}

TEST(DiskCache, RemovedDirectoryIsRecreatedOnPut) {
  TempDir dir;
  Warnings warnings;
  const fs::path cache_dir = dir.path() / "cache";
  DiskCache cache(cache_dir, warnings.sink());
  fs::remove_all(cache_dir);
  cache.put("k", make_entry(1));
  EXPECT_TRUE(cache.persistent());
  EXPECT_TRUE(warnings.messages.empty());
  EXPECT_TRUE(fs::exists(cache_dir / "v1" / "k.lsq"));
}

// The shared workload of the concurrency tests: `worker` puts and gets 4 shared keys (every
// worker writes identical content for a key) and 4 keys of its own. Returns "" or what failed.
std::string concurrent_workload(DiskCache& cache, int worker, int rounds) {
  for (int round = 0; round < rounds; ++round) {
    for (int k = 0; k < 8; ++k) {
      const int seed = k < 4 ? k : 100 + worker * 4 + (k - 4);
      const std::string key = "key" + std::to_string(seed);
      const CacheEntry expected = make_entry(seed, 20000 + seed);
      std::optional<CacheEntry> got = cache.get(key);
      if (got && *got != expected) return "wrong entry for " + key;
      if ((round + k + worker) % 3 == 0 || !got) cache.put(key, expected);
    }
  }
  const CacheStats s = cache.stats();
  if (s.corrupt != 0) return "corrupt entries seen: " + std::to_string(s.corrupt);
  if (!cache.persistent()) return "fell back to memory: " + cache.warning();
  return "";
}

void expect_only_valid_entries(const fs::path& dir, size_t workers) {
  DiskCache cache(dir);
  const std::vector<CacheEntryInfo> infos = cache.list();
  EXPECT_EQ(infos.size(), 4 + 4 * workers);
  for (const CacheEntryInfo& info : infos) EXPECT_TRUE(info.valid) << info.key;
  for (const std::string& name : file_names(dir / "v1")) {
    EXPECT_TRUE(name.ends_with(".lsq")) << "left behind: " << name;
  }
  for (const CacheEntryInfo& info : infos) {
    const int seed = std::stoi(info.key.substr(3));
    EXPECT_EQ(cache.get(info.key), make_entry(seed, 20000 + seed)) << info.key;
  }
}

TEST(DiskCache, EightThreadsOnOneDirectory) {
  TempDir dir;
  DiskCache cache(dir.path());
  constexpr int kWorkers = 8;
  std::vector<std::string> failures(kWorkers);
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] { failures[w] = concurrent_workload(cache, w, 30); });
  }
  for (std::thread& t : threads) t.join();
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(failures[w], "") << "worker " << w;
  const CacheStats s = cache.stats();
  EXPECT_EQ(s.hits + s.misses, kWorkers * 30 * 8);
  EXPECT_EQ(s.corrupt, 0);
  expect_only_valid_entries(dir.path(), kWorkers);
}

TEST(DiskCache, EightProcessesOnOneDirectory) {
  TempDir dir;
  constexpr int kWorkers = 8;
  std::vector<pid_t> children;
  for (int w = 0; w < kWorkers; ++w) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0) << "fork failed";
    if (pid == 0) {
      DiskCache cache(dir.path());
      const std::string failure = concurrent_workload(cache, w, 30);
      if (!failure.empty()) std::fprintf(stderr, "worker %d: %s\n", w, failure.c_str());
      _exit(failure.empty() ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  }
  expect_only_valid_entries(dir.path(), kWorkers);
}

TEST(CacheDefaultDir, EnvironmentPrecedence) {
  ScopedEnv lightseq("LIGHTSEQ_CACHE_DIR", "/a/lightseq-cache");
  ScopedEnv xdg("XDG_CACHE_HOME", "/x/cache");
  ScopedEnv home("HOME", "/h");
  EXPECT_EQ(default_cache_dir(), fs::path("/a/lightseq-cache"));
  {
    ScopedEnv unset("LIGHTSEQ_CACHE_DIR", std::nullopt);
    EXPECT_EQ(default_cache_dir(), fs::path("/x/cache/lightseq"));
  }
  {
    ScopedEnv empty("LIGHTSEQ_CACHE_DIR", "");
    EXPECT_EQ(default_cache_dir(), fs::path("/x/cache/lightseq"));
    ScopedEnv relative("XDG_CACHE_HOME", "relative/cache");  // ignored, as the XDG spec says
    EXPECT_EQ(default_cache_dir(), fs::path("/h/.cache/lightseq"));
    ScopedEnv no_xdg("XDG_CACHE_HOME", std::nullopt);
    EXPECT_EQ(default_cache_dir(), fs::path("/h/.cache/lightseq"));
    ScopedEnv no_home("HOME", std::nullopt);
    const struct passwd* pw = ::getpwuid(::getuid());
    ASSERT_NE(pw, nullptr);
    EXPECT_EQ(default_cache_dir(), fs::path(pw->pw_dir) / ".cache" / "lightseq");
  }
  TempDir dir;
  ScopedEnv set("LIGHTSEQ_CACHE_DIR", dir.path().string());
  DiskCache cache;
  EXPECT_EQ(cache.dir(), dir.path());
  EXPECT_TRUE(cache.persistent());
}

}  // namespace
}  // namespace lightseq
