// cache_test_util.h — helpers shared by cache_test.cpp and cache_dirs_test.cpp: scoped
// environment variables, self-removing temp directories, deterministic cache entries, exact stats
// checks, a warning collector and an unprivileged forked child.
#pragma once

#include <grp.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/cache/disk_cache.h"
#include "tests/test_util.h"

namespace lightseq::cache_test {

namespace fs = std::filesystem;

using ::lightseq::test::ScopedEnv;
using ::lightseq::test::TempDir;

inline CacheEntry make_entry(int seed, size_t image_bytes = 1000) {
  CacheEntry e;
  e.program = "program:" + std::to_string(seed);
  e.arch = seed % 2 ? "sm_80" : "sm_90";
  e.is_ptx = seed % 3 == 0;
  for (int i = 0; i <= seed % 4; ++i) {
    e.labels.push_back("kernel_" + std::to_string(i) + ":bf16:h=" + std::to_string(seed));
    e.lowered_names.push_back("_Z6kernelILi" + std::to_string(seed * 10 + i) + "EEvPf");
  }
  uint32_t x = 2463534242u + static_cast<uint32_t>(seed);
  for (size_t i = 0; i < image_bytes; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    e.image.push_back(static_cast<char>(x & 0xff));
  }
  return e;
}

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::set<std::string> file_names(const fs::path& dir) {
  std::set<std::string> names;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    names.insert(e.path().filename().string());
  }
  return names;
}

inline void expect_stats(const DiskCache& cache, int64_t hits, int64_t misses, int64_t corrupt,
                         int64_t writes) {
  const CacheStats s = cache.stats();
  EXPECT_EQ(s.hits, hits);
  EXPECT_EQ(s.misses, misses);
  EXPECT_EQ(s.corrupt, corrupt);
  EXPECT_EQ(s.writes, writes);
}

struct Warnings {
  std::vector<std::string> messages;
  CacheWarningSink sink() {
    return [this](const std::string& m) { messages.push_back(m); };
  }
};

inline std::string expected_warning_prefix(const fs::path& dir) {
  return "lightseq: warning: cache directory '" + dir.string() + "' is not writable (";
}
inline constexpr std::string_view kWarningSuffix =
    "); compiled kernels will be kept in memory only. Set LIGHTSEQ_CACHE_DIR to a writable "
    "directory to keep them.";

// Runs `body` in a forked child, as uid/gid 65534 (nobody) when this process is root (root
// ignores file permissions). Returns the child's exit status; 77 means "could not drop".
inline int run_in_unprivileged_child(const std::function<int()>& body) {
  const pid_t pid = ::fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    if (::geteuid() == 0) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(65534) != 0 || ::setuid(65534) != 0) _exit(77);
    }
    _exit(body());
  }
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// In a forked child: report a failed check on stderr and exit non-zero.
#define CHILD_CHECK(cond)                                                                  \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "child check failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      return 1;                                                                            \
    }                                                                                      \
  } while (0)

}  // namespace lightseq::cache_test
