// cache_test.cpp — the disk cache and its key: exact hit/miss/corrupt/write counts, round trips,
// key sensitivity, truncated and corrupted entries rebuilt, clear/list, the atomic-file helpers.
// (Unwritable directories, concurrency and the default directory: cache_dirs_test.cpp.)
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "compiler/cache/cache_key.h"
#include "compiler/cache/disk_cache.h"
#include "compiler/codegen/embedded_templates.h"
#include "compiler/errors.h"
#include "compiler/util/atomic_file.h"
#include "tests/cache_test_util.h"

namespace lightseq {
namespace {

using namespace cache_test;  // NOLINT: test helpers

TEST(DiskCache, MissThenHitWithExactCounts) {
  TempDir dir;
  Warnings warnings;
  DiskCache cache(dir.path(), warnings.sink());
  EXPECT_TRUE(cache.persistent());
  EXPECT_EQ(cache.warning(), "");
  EXPECT_EQ(cache.entries_dir(), dir.path() / "v1");
  const CacheEntry entry = make_entry(1);
  expect_stats(cache, 0, 0, 0, 0);
  EXPECT_EQ(cache.get("k1"), std::nullopt);
  expect_stats(cache, 0, 1, 0, 0);
  cache.put("k1", entry);
  expect_stats(cache, 0, 1, 0, 1);
  EXPECT_EQ(cache.get("k1"), entry);
  EXPECT_EQ(cache.get("k1"), entry);
  expect_stats(cache, 2, 1, 0, 1);
  EXPECT_EQ(cache.get("k2"), std::nullopt);
  expect_stats(cache, 2, 2, 0, 1);
  EXPECT_EQ(file_names(dir.path() / "v1"), std::set<std::string>{"k1.lsq"});

  DiskCache again(dir.path(), warnings.sink());  // another object (process) sees the entry
  EXPECT_EQ(again.get("k1"), entry);
  expect_stats(again, 1, 0, 0, 0);
  EXPECT_TRUE(warnings.messages.empty());
}

TEST(DiskCache, RoundTripPreservesEveryField) {
  TempDir dir;
  DiskCache cache(dir.path());
  std::vector<CacheEntry> entries = {make_entry(0), make_entry(5, 3 << 20), CacheEntry{}};
  CacheEntry odd = make_entry(7, 0);
  odd.program = std::string("with\0nul and \xc3\xa9", 15);
  odd.labels = {"", "a"};
  odd.lowered_names = {};
  entries.push_back(odd);
  CacheEntry all_bytes = make_entry(2);
  all_bytes.image.clear();
  for (int b = 0; b < 256; ++b) all_bytes.image.push_back(static_cast<char>(b));
  entries.push_back(all_bytes);
  for (size_t i = 0; i < entries.size(); ++i) {
    const std::string key = "entry" + std::to_string(i);
    cache.put(key, entries[i]);
    EXPECT_EQ(cache.get(key), entries[i]) << key;
  }
  expect_stats(cache, 5, 0, 0, 5);
}

TEST(CacheKey, ChangesWhenAnyInputChanges) {
  ProgramSource program;
  program.name = "ln:bf16";
  program.source = "__global__ void k() {}";
  program.labels = {"ln_fwd"};
  program.name_expressions = {"&k<1>", "&k<2>"};
  const std::vector<std::string> options = {"--gpu-architecture=sm_90", "-std=c++17"};
  const GeneratorIdentity generator{.generator_version = 1, .templates_hash = "abc"};
  auto key = [&](const ProgramSource& p, const std::string& arch, const std::vector<std::string>& o,
                 const std::string& v,
                 const GeneratorIdentity& g) { return make_cache_key(p, arch, o, v, g); };
  const std::string base = key(program, "sm_90", options, "13.0", generator);
  EXPECT_EQ(base.size(), 64u);
  EXPECT_EQ(base.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(key(program, "sm_90", options, "13.0", generator), base);
  EXPECT_EQ(key(program, "90", options, "13.0", generator), base);  // canonical arch

  std::vector<std::string> variants;
  ProgramSource p = program;
  p.source += " ";
  variants.push_back(key(p, "sm_90", options, "13.0", generator));
  p = program;
  p.name_expressions[1] = "&k<3>";
  variants.push_back(key(p, "sm_90", options, "13.0", generator));
  p = program;
  p.name_expressions.push_back("&k<4>");
  variants.push_back(key(p, "sm_90", options, "13.0", generator));
  p = program;
  p.name_expressions = {"&k<1>&k<2>"};  // same characters, different split
  variants.push_back(key(p, "sm_90", options, "13.0", generator));
  p = program;
  p.source += "&k<1>";  // a name expression's characters moved into the source
  p.name_expressions = {"&k<2>"};
  variants.push_back(key(p, "sm_90", options, "13.0", generator));
  variants.push_back(
      key(program, "sm_90", {"--gpu-architecture=sm_90", "-std=c++20"}, "13.0", generator));
  variants.push_back(
      key(program, "sm_90", {"--gpu-architecture=sm_90-std=c++17"}, "13.0", generator));
  variants.push_back(
      key(program, "sm_90", {"-std=c++17", "--gpu-architecture=sm_90"}, "13.0", generator));
  variants.push_back(key(program, "sm_90", options, "13.1", generator));
  variants.push_back(key(program, "sm_80", options, "13.0", generator));
  variants.push_back(key(program, "sm_90a", options, "13.0", generator));
  variants.push_back(key(program, "sm_90", options, "13.0", {2, "abc"}));
  variants.push_back(key(program, "sm_90", options, "13.0", {1, "abd"}));
  std::set<std::string> distinct(variants.begin(), variants.end());
  distinct.insert(base);
  EXPECT_EQ(distinct.size(), variants.size() + 1);

  // Descriptive fields are not part of the key.
  p = program;
  p.name = "other";
  p.labels = {"other_label"};
  EXPECT_EQ(key(p, "sm_90", options, "13.0", generator), base);
  // The 4-argument form uses the current generator identity.
  EXPECT_EQ(make_cache_key(program, "sm_90", options, "13.0"),
            key(program, "sm_90", options, "13.0", current_generator_identity()));
  EXPECT_EQ(current_generator_identity().generator_version, kGeneratorVersion);
  EXPECT_EQ(current_generator_identity().templates_hash, templates_hash());
}

// LIGHTSEQ_TEMPLATES_DIR's mechanism: a directory's copies replace the embedded files of the same
// relative path and nothing else; a directory that is not there is an error naming it.
TEST(Templates, ADirectorysCopiesReplaceTheEmbeddedFilesOfTheirPath) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("lightseq-templates-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir / "common");
  std::ofstream(dir / "softmax.cuh") << "// replaced softmax\n";
  std::ofstream(dir / "common" / "types.cuh") << "// replaced types\n";
  std::ofstream(dir / "not_a_template.cuh") << "// ignored\n";
  std::deque<std::string> texts;
  const std::vector<EmbeddedFile> got = templates_in(dir.string(), texts);
  const std::span<const EmbeddedFile> builtin = embedded_templates();
  ASSERT_EQ(got.size(), builtin.size());
  int replaced = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].path, builtin[i].path);
    if (got[i].path == "softmax.cuh") {
      EXPECT_EQ(got[i].text, "// replaced softmax\n");
      ++replaced;
    } else if (got[i].path == "common/types.cuh") {
      EXPECT_EQ(got[i].text, "// replaced types\n");
      ++replaced;
    } else {
      EXPECT_EQ(got[i].text, builtin[i].text) << got[i].path;
    }
  }
  EXPECT_EQ(replaced, 2);
  std::deque<std::string> none;
  const std::vector<EmbeddedFile> same = templates_in("", none);
  ASSERT_EQ(same.size(), builtin.size());
  for (size_t i = 0; i < same.size(); ++i) EXPECT_EQ(same[i].text, builtin[i].text);
  try {
    templates_in((dir / "missing").string(), none);
    ADD_FAILURE() << "a missing directory was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("LIGHTSEQ_TEMPLATES_DIR"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(CacheKey, Sha256MatchesKnownVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

class DiskCacheDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    cache_.emplace(dir_.path(), warnings_.sink());
    cache_->put("victim", entry_);
    good_ = read_bytes(path());
    ASSERT_GT(good_.size(), 100u);
  }
  fs::path path() const { return dir_.path() / "v1" / "victim.lsq"; }
  // The damaged file is a counted corrupt miss, listed invalid, and a put repairs it.
  void expect_detected_and_repaired(const std::string& what) {
    SCOPED_TRACE(what);
    const CacheStats before = cache_->stats();
    EXPECT_EQ(cache_->get("victim"), std::nullopt);
    const CacheStats after = cache_->stats();
    EXPECT_EQ(after.misses - before.misses, 1);
    EXPECT_EQ(after.corrupt - before.corrupt, 1);
    EXPECT_EQ(after.hits, before.hits);
    const std::vector<CacheEntryInfo> infos = cache_->list();
    ASSERT_EQ(infos.size(), 1u);
    EXPECT_FALSE(infos[0].valid);
    cache_->put("victim", entry_);
    EXPECT_EQ(read_bytes(path()), good_);
    EXPECT_EQ(cache_->get("victim"), entry_);
    EXPECT_TRUE(cache_->list()[0].valid);
  }

  TempDir dir_;
  Warnings warnings_;
  std::optional<DiskCache> cache_;
  CacheEntry entry_ = make_entry(3, 2000);
  std::string good_;
};

TEST_F(DiskCacheDamage, TruncatedEntriesAreCorruptMissesRepairedByPut) {
  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{12}, size_t{20}, size_t{40},
                     good_.size() / 2, good_.size() - 33, good_.size() - 32, good_.size() - 1}) {
    write_bytes(path(), good_.substr(0, cut));
    expect_detected_and_repaired("cut at " + std::to_string(cut));
  }
  EXPECT_TRUE(warnings_.messages.empty());
}

TEST_F(DiskCacheDamage, CorruptedEntriesAreCorruptMissesRepairedByPut) {
  struct Flip {
    const char* what;
    size_t offset;
  };
  const std::vector<Flip> flips = {{"magic", 0},
                                   {"version", 8},
                                   {"header length", 12},
                                   {"header: key", 26},
                                   {"header: program", 36},
                                   {"image", good_.size() - 32 - 1000},
                                   {"image, last byte", good_.size() - 33},
                                   {"checksum, first byte", good_.size() - 32},
                                   {"checksum, last byte", good_.size() - 1}};
  for (const Flip& flip : flips) {
    std::string bad = good_;
    bad[flip.offset] = static_cast<char>(bad[flip.offset] ^ 0x5a);
    write_bytes(path(), bad);
    expect_detected_and_repaired(flip.what);
  }
  write_bytes(path(), good_ + "trailing garbage");
  expect_detected_and_repaired("appended bytes");
  // A valid entry of another key copied under this key's name is not served.
  cache_->put("other", make_entry(4));
  fs::copy_file(dir_.path() / "v1" / "other.lsq", path(), fs::copy_options::overwrite_existing);
  SCOPED_TRACE("another key's entry");
  EXPECT_EQ(cache_->get("victim"), std::nullopt);
  EXPECT_EQ(cache_->stats().corrupt, static_cast<int64_t>(flips.size()) + 2);
}

TEST(DiskCache, ClearRemovesEntriesAndTempFilesButNotForeignFiles) {
  TempDir dir;
  DiskCache cache(dir.path());
  for (int i = 0; i < 3; ++i) cache.put("key" + std::to_string(i), make_entry(i));
  const fs::path v1 = dir.path() / "v1";
  const fs::path stale = v1 / ".key0.4242.0123456789abcdef.tmp";
  const fs::path fresh = v1 / ".key1.4243.0123456789abcdef.tmp";
  write_bytes(stale, "partial");
  write_bytes(fresh, "partial");
  fs::last_write_time(stale, fs::file_time_type::clock::now() - std::chrono::hours(1));
  fs::create_directories(dir.path() / "v0");
  write_bytes(dir.path() / "v0" / "oldformat.lsq", "an entry of an older format");
  const std::vector<fs::path> foreign = {dir.path() / "notes.txt", dir.path() / "key9.lsq",
                                         v1 / "notes.txt",         v1 / "key0.lsq.bak",
                                         v1 / "bad name.lsq",      dir.path() / "vx" / "key3.lsq"};
  fs::create_directories(dir.path() / "vx");
  for (const fs::path& f : foreign) write_bytes(f, "not ours");

  EXPECT_EQ(cache.clear(), 4);
  EXPECT_EQ(cache.list().size(), 0u);
  EXPECT_EQ(cache.get("key0"), std::nullopt);
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(fresh)) << "a young temp file may belong to a live writer";
  EXPECT_FALSE(fs::exists(dir.path() / "v0" / "oldformat.lsq"));
  for (const fs::path& f : foreign) EXPECT_TRUE(fs::exists(f)) << f;
  EXPECT_EQ(cache.clear(), 0);
}

TEST(DiskCache, ListReportsEntriesSizesArchKernelsAndInvalidOnes) {
  TempDir dir;
  DiskCache cache(dir.path());
  cache.put("b", make_entry(1));  // sm_80, 2 kernels
  cache.put("a", make_entry(2));  // sm_90, 3 kernels
  write_bytes(dir.path() / "v1" / "c.lsq", "LSQCACHE but nothing else");
  write_bytes(dir.path() / "v1" / "notes.txt", "foreign");
  const std::vector<CacheEntryInfo> infos = cache.list();
  ASSERT_EQ(infos.size(), 3u);
  EXPECT_EQ(infos[0].key, "a");
  EXPECT_EQ(infos[0].program, "program:2");
  EXPECT_EQ(infos[0].arch, "sm_90");
  EXPECT_EQ(infos[0].kernels, 3);
  EXPECT_TRUE(infos[0].valid);
  EXPECT_FALSE(infos[0].in_memory);
  EXPECT_EQ(infos[0].bytes, static_cast<int64_t>(fs::file_size(dir.path() / "v1" / "a.lsq")));
  EXPECT_EQ(infos[1].key, "b");
  EXPECT_EQ(infos[1].arch, "sm_80");
  EXPECT_EQ(infos[1].kernels, 2);
  EXPECT_TRUE(infos[1].valid);
  EXPECT_EQ(infos[2].key, "c");
  EXPECT_FALSE(infos[2].valid);
  EXPECT_EQ(infos[2].bytes, 25);
  EXPECT_EQ(infos[2].kernels, 0);
}

TEST(DiskCache, InvalidKeysAreRejected) {
  TempDir dir;
  DiskCache cache(dir.path());
  for (const std::string& key : {std::string(""), std::string("../etc/passwd"), std::string("a.b"),
                                 std::string("a/b"), std::string(129, 'a')}) {
    EXPECT_THROW(cache.get(key), InternalError) << key;
    EXPECT_THROW(cache.put(key, make_entry(0)), InternalError) << key;
  }
  EXPECT_TRUE(is_valid_cache_key(std::string(128, 'a')));
  EXPECT_TRUE(is_valid_cache_key("Az09_-"));
}

TEST(CacheAtomicFile, TempFileNamesAreUniqueAndRecognized) {
  std::set<std::string> names;
  for (int i = 0; i < 1000; ++i) {
    const std::string name = temp_file_name("abc");
    EXPECT_TRUE(is_temp_file_name(name)) << name;
    EXPECT_TRUE(name.starts_with(".abc." + std::to_string(::getpid()) + ".")) << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), 1000u);
  for (const char* name : {"abc.tmp", ".abc.tmp", ".abc.12.xyz.tmp", ".abc.12.0123456789abcdef",
                           ".abc.x1.0123456789abcdef.tmp", "..12.0123456789abcdef.tmp"}) {
    EXPECT_FALSE(is_temp_file_name(name)) << name;
  }
}

TEST(CacheAtomicFile, ReadReportsMissingAndUnreadableFiles) {
  TempDir dir;
  EXPECT_EQ(read_whole_file(dir.path() / "none", 100).status, ReadStatus::kMissing);
  write_bytes(dir.path() / "f", "0123456789");
  EXPECT_EQ(read_whole_file(dir.path() / "f" / "x", 100).status, ReadStatus::kMissing);
  const ReadResult ok = read_whole_file(dir.path() / "f", 100);
  EXPECT_EQ(ok.status, ReadStatus::kOk);
  EXPECT_EQ(ok.data, "0123456789");
  const ReadResult big = read_whole_file(dir.path() / "f", 5);
  EXPECT_EQ(big.status, ReadStatus::kTooLarge);
  EXPECT_EQ(big.reason, "is 10 bytes, more than the limit of 5");
  EXPECT_NE(big.error.find((dir.path() / "f").string()), std::string::npos) << big.error;
  const ReadResult is_dir = read_whole_file(dir.path(), 1 << 20);
  EXPECT_EQ(is_dir.status, ReadStatus::kNotRegular);
  EXPECT_EQ(is_dir.error, "'" + dir.path().string() + "' is a directory, not a regular file");
}

}  // namespace
}  // namespace lightseq
