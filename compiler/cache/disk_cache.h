// disk_cache.h — the on-disk kernel cache (DESIGN.md, "The disk cache").
//
// Key: SHA-256 (hex) over the generated source, the name expressions, every NVRTC option, the
// NVRTC version, the target arch, the embedded-templates hash and the generator version
// (make_cache_key). Entries are written to a temp file in the cache directory and renamed into
// place (atomic, lock-free: concurrent writers of one key both produce a valid entry). Every entry
// carries a SHA-256 of its payload; a reader that finds a truncated or corrupted entry counts it,
// treats it as a miss and the caller rebuilds it. An unwritable directory gives one warning and
// the cache keeps entries in memory for the life of the object. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lightseq {

std::string sha256_hex(std::string_view data);

struct CacheEntry {
  std::string program;                     // program name, for `lsc cache ls`
  std::string arch;                        // "sm_90"
  bool is_ptx = false;
  std::vector<std::string> labels;         // kernel labels
  std::vector<std::string> lowered_names;  // parallel to labels
  std::vector<char> image;                 // cubin or PTX
  bool operator==(const CacheEntry&) const = default;
};

struct CacheStats {
  int64_t hits = 0;
  int64_t misses = 0;   // includes corrupt entries
  int64_t corrupt = 0;  // entries found unreadable and treated as misses
  int64_t writes = 0;
};

struct CacheEntryInfo {
  std::string key;
  std::string program;
  std::string arch;
  int64_t bytes = 0;     // file size
  int kernels = 0;
  bool valid = true;     // false: the entry fails its checksum (it will be rebuilt on use)
};

// Default directory: $LIGHTSEQ_CACHE_DIR, else $XDG_CACHE_HOME/lightseq, else ~/.cache/lightseq.
std::filesystem::path default_cache_dir();

class DiskCache {
 public:
  // dir: where entries live; std::nullopt means default_cache_dir(). The directory is created if
  // missing. If it cannot be created or written, one warning goes to `warn` (stderr by default)
  // and the cache works in memory; existing readable entries are still served.
  explicit DiskCache(std::optional<std::filesystem::path> dir = std::nullopt);

  std::optional<CacheEntry> get(const std::string& key);
  void put(const std::string& key, const CacheEntry& entry);

  CacheStats stats() const;
  const std::filesystem::path& dir() const { return dir_; }
  bool persistent() const { return persistent_; }
  const std::string& warning() const { return warning_; }  // "" if none

  // Entries on disk (and in memory when not persistent), sorted by key.
  std::vector<CacheEntryInfo> list() const;
  // Removes every entry file (and stray temp files) this cache owns; returns how many entries.
  // Files in the directory that are not lightseq cache files are left alone.
  int64_t clear();

 private:
  std::filesystem::path dir_;
  bool persistent_ = true;
  std::string warning_;
  mutable std::mutex mu_;
  std::map<std::string, CacheEntry> memory_;
  std::atomic<int64_t> hits_{0}, misses_{0}, corrupt_{0}, writes_{0};
};

}  // namespace lightseq
