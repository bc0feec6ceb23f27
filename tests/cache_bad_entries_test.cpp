// cache_bad_entries_test.cpp — what a damaged cache directory may hold at an entry path (a
// directory, a FIFO, a socket, symbolic links to /dev/zero or to a good entry) is a bad entry:
// never read through or blocked on, listed with what it is, replaced by put(), removed by clear().
// Also: temp files left by killed writers, and CacheAccess::kInspect never creating the directory.
// Each test arms alarm(): a regression that blocks (a FIFO opened for reading) fails fast.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "compiler/cache/disk_cache.h"
#include "compiler/util/atomic_file.h"
#include "tests/cache_test_util.h"

namespace lightseq {
namespace {

using namespace cache_test;  // NOLINT: test helpers

// Fails the test (SIGALRM kills the process) if the scope takes longer than `seconds`.
class Deadline {
 public:
  explicit Deadline(unsigned seconds) { ::alarm(seconds); }
  ~Deadline() { ::alarm(0); }
};

void make_fifo(const fs::path& path) { ASSERT_EQ(::mkfifo(path.c_str(), 0644), 0) << path; }

void make_socket(const fs::path& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  ASSERT_LT(path.string().size(), sizeof(addr.sun_path)) << path;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0) << path;
  ::close(fd);
}

struct BadKind {
  const char* what;
  std::function<void(const fs::path&)> make;
  std::string problem;  // the text after "'<path>' is "
};

std::vector<BadKind> bad_kinds(const fs::path& good_entry) {
  return {
      {"directory",
       [](const fs::path& p) {
         fs::create_directories(p / "sub");
         write_bytes(p / "sub" / "file", "inside");
       },
       "a directory, not a regular file"},
      {"FIFO", [](const fs::path& p) { make_fifo(p); }, "a FIFO, not a regular file"},
      {"socket", [](const fs::path& p) { make_socket(p); }, "a socket, not a regular file"},
      {"symlink to /dev/zero", [](const fs::path& p) { fs::create_symlink("/dev/zero", p); },
       "a symbolic link, not a regular file"},
      {"symlink to a good entry",
       [good_entry](const fs::path& p) { fs::create_symlink(good_entry, p); },
       "a symbolic link, not a regular file"},
  };
}

TEST(DiskCacheBadEntries, NonRegularFilesAreCorruptMissesListedAndReplacedByPut) {
  Deadline deadline(60);
  TempDir dir;
  Warnings warnings;
  DiskCache cache(dir.path(), warnings.sink());
  const CacheEntry good = make_entry(2);
  cache.put("good", good);
  const fs::path victim = dir.path() / "v1" / "victim.lsq";
  for (const BadKind& kind : bad_kinds(dir.path() / "v1" / "good.lsq")) {
    SCOPED_TRACE(kind.what);
    kind.make(victim);
    const CacheStats before = cache.stats();
    EXPECT_EQ(cache.get("victim"), std::nullopt);
    EXPECT_EQ(cache.stats().corrupt - before.corrupt, 1);
    EXPECT_EQ(cache.stats().misses - before.misses, 1);
    const std::vector<CacheEntryInfo> infos = cache.list();
    ASSERT_EQ(infos.size(), 2u);
    EXPECT_EQ(infos[1].key, "victim");
    EXPECT_FALSE(infos[1].valid);
    EXPECT_EQ(infos[1].problem, "'" + victim.string() + "' is " + kind.problem);
    EXPECT_EQ(infos[1].bytes, 0);

    cache.put("victim", make_entry(3));
    EXPECT_TRUE(cache.persistent()) << cache.warning();
    EXPECT_EQ(fs::symlink_status(victim).type(), fs::file_type::regular);
    EXPECT_EQ(cache.get("victim"), make_entry(3));
    EXPECT_EQ(cache.get("good"), good) << "a symlink's target is left alone";
    fs::remove(victim);
  }
  EXPECT_TRUE(warnings.messages.empty());
}

TEST(DiskCacheBadEntries, ClearRemovesEveryKindOfBadEntry) {
  Deadline deadline(60);
  TempDir dir;
  DiskCache cache(dir.path());
  cache.put("good", make_entry(1));
  const fs::path v1 = dir.path() / "v1";
  std::vector<std::string> names;
  int i = 0;
  for (const BadKind& kind : bad_kinds(v1 / "good.lsq")) {
    names.push_back("bad" + std::to_string(i++));
    kind.make(v1 / (names.back() + ".lsq"));
  }
  fs::create_directories(v1 / "foreign-dir");
  EXPECT_EQ(cache.list().size(), 1 + names.size());
  EXPECT_EQ(cache.clear(), static_cast<int64_t>(1 + names.size()));
  EXPECT_EQ(file_names(v1), std::set<std::string>{"foreign-dir"});
}

TEST(CacheAtomicFile, ReadNeverFollowsLinksNorReadsNonFiles) {
  Deadline deadline(30);
  TempDir dir;
  make_fifo(dir.path() / "fifo");
  const ReadResult fifo = read_whole_file(dir.path() / "fifo", 100);
  EXPECT_EQ(fifo.status, ReadStatus::kNotRegular);
  EXPECT_EQ(fifo.error, "'" + (dir.path() / "fifo").string() + "' is a FIFO, not a regular file");
  const ReadResult zero = read_whole_file("/dev/zero", size_t{1} << 30);
  EXPECT_EQ(zero.status, ReadStatus::kNotRegular);
  EXPECT_EQ(zero.error, "'/dev/zero' is a character device, not a regular file");
  EXPECT_TRUE(zero.data.empty());
  write_bytes(dir.path() / "file", "data");
  fs::create_symlink(dir.path() / "file", dir.path() / "link");
  const ReadResult link = read_whole_file(dir.path() / "link", 100);
  EXPECT_EQ(link.status, ReadStatus::kNotRegular);
  EXPECT_EQ(link.error,
            "'" + (dir.path() / "link").string() + "' is a symbolic link, not a regular file");
}

TEST(DiskCacheTempFiles, ListedWithAgeAndStaleOnesRemoved) {
  TempDir dir;
  DiskCache cache(dir.path());
  const fs::path v1 = dir.path() / "v1";
  const fs::path stale = v1 / ".key0.4242.0123456789abcdef.tmp";
  const fs::path fresh = v1 / ".key1.4243.0123456789abcdef.tmp";
  write_bytes(stale, "partial");
  write_bytes(fresh, "par");
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::minutes(11));
  write_bytes(v1 / "notes.tmp", "not a temp name");
  const std::vector<CacheTempFile> temps = cache.temp_files();
  ASSERT_EQ(temps.size(), 2u);
  EXPECT_EQ(temps[0].path, stale);
  EXPECT_EQ(temps[0].bytes, 7);
  EXPECT_TRUE(temps[0].stale);
  EXPECT_EQ(temps[1].path, fresh);
  EXPECT_EQ(temps[1].bytes, 3);
  EXPECT_FALSE(temps[1].stale);
  std::string error = "unset";
  EXPECT_EQ(cache.remove_stale_temp_files(&error), 1);
  EXPECT_EQ(error, "");
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh)) << "a young temp file may belong to a live writer";
  EXPECT_EQ(cache.remove_stale_temp_files(), 0);
}

TEST(DiskCacheInspect, NeverCreatesTheDirectory) {
  TempDir dir;
  const fs::path missing = dir.path() / "no" / "cache";
  Warnings warnings;
  DiskCache cache(missing, warnings.sink(), CacheAccess::kInspect);
  EXPECT_TRUE(cache.list().empty());
  EXPECT_TRUE(cache.temp_files().empty());
  EXPECT_EQ(cache.clear(), 0);
  EXPECT_FALSE(fs::exists(dir.path() / "no"));
  EXPECT_TRUE(warnings.messages.empty());
  {
    DiskCache writer(dir.path() / "c");
    writer.put("k", make_entry(1));
  }
  DiskCache inspect(dir.path() / "c", warnings.sink(), CacheAccess::kInspect);
  ASSERT_EQ(inspect.list().size(), 1u);
  EXPECT_EQ(inspect.get("k"), make_entry(1));
  EXPECT_EQ(inspect.clear(), 1);
  EXPECT_TRUE(warnings.messages.empty());
}

}  // namespace
}  // namespace lightseq
