// disk_cache.h — the on-disk kernel cache (DESIGN.md, "The disk cache").
//
// Key: SHA-256 (hex) over the generated source, the name expressions, every NVRTC option, the
// NVRTC version, the target arch, the embedded-templates hash and the generator version
// (make_cache_key, compiler/cache/cache_key.h). Entries are written to a temp file in the cache
// directory and renamed into place (atomic, lock-free: concurrent writers of one key both produce
// a valid entry). Every entry carries a SHA-256 of its payload; a reader that finds a truncated or
// corrupted entry counts it, treats it as a miss and the caller rebuilds it. An unwritable
// directory gives one warning and the cache keeps entries in memory for the life of the object.
// Thread-safe, and safe for several processes sharing one directory.
//
// Layout (decided): entries live in a subdirectory per entry-format version,
//   <dir>/v1/<key>.lsq              one entry
//   <dir>/v1/.<key>.<pid>.<random>.tmp   a write in progress (or left by a killed writer)
// so a lightseq with a newer format uses v2/ beside v1/ instead of reading v1 entries as corrupt,
// and two versions sharing one directory never overwrite each other's entries.
//
// Entry file format v1 (integers little-endian; str = u32 byte length + bytes):
//   "LSQCACHE"                       8-byte magic
//   u32 format version               1
//   u64 H                            header length in bytes
//   header (H bytes):  str key, str program, str arch, u8 is_ptx (0 or 1),
//                      u32 n + n x str label, u32 m + m x str lowered name
//   u64 N                            image length
//   image (N bytes)                  cubin, or NUL-terminated PTX
//   32 bytes                         SHA-256 of every byte before it
// A reader checks the magic, the version, the checksum, every length against the file size, that
// the header is consumed exactly, and that the stored key is the file's key (a file copied under
// another name is not served).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/util/sha256.h"  // sha256_hex, for the cache's users

namespace lightseq {

struct CacheEntry {
  std::string program;  // program name, for `lsc cache ls`
  std::string arch;     // "sm_90"
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
  int64_t writes = 0;   // put() calls that stored their entry (on disk, or in memory)
};

struct CacheEntryInfo {
  std::string key;
  std::string program;
  std::string arch;
  int64_t bytes = 0;  // file size (encoded size for an in-memory entry; 0 for a non-file)
  int kernels = 0;
  bool valid = true;  // false: the entry is bad (it will be rebuilt on use); `problem` says why
  bool in_memory = false;  // true: held by this object only (the directory is not writable)
  std::string problem;     // "" when valid; "fails its checksum", "'<path>' is a FIFO, not ..."
};

// A temp file in a format directory: a write in progress, or what a killed writer left behind.
struct CacheTempFile {
  std::filesystem::path path;
  int64_t bytes = 0;
  bool stale = false;  // older than DiskCache::kStaleTempAge: no live writer is expected to own it
};

// How a DiskCache treats its directory.
enum class CacheAccess {
  kReadWrite,  // create the directory if missing and probe that a file can be written in it
  kInspect,    // for list(), temp_files() and clear() (`lsc cache ls|clear`): never create the
               // directory, no probe, no warning; put() keeps entries in memory
};

// Default directory: $LIGHTSEQ_CACHE_DIR, else $XDG_CACHE_HOME/lightseq (when absolute, as the
// XDG spec requires), else $HOME/.cache/lightseq, else the passwd entry's home/.cache/lightseq.
// Empty variables count as unset.
std::filesystem::path default_cache_dir();

// The entry-format version and its subdirectory name ("v1").
inline constexpr uint32_t kCacheFormatVersion = 1;

// Keys are file names: 1 to 128 of [A-Za-z0-9_-] (make_cache_key gives 64 hex digits).
bool is_valid_cache_key(std::string_view key);

// Receives the cache's warning (one line, no trailing newline).
using CacheWarningSink = std::function<void(const std::string&)>;

class DiskCache {
 public:
  // dir: where entries live; std::nullopt means default_cache_dir(). The directory is created if
  // missing, and probed by creating (and removing) a temp file in it. If it cannot be created or
  // written, one warning goes to `warn` (by default: stderr, printed once per directory per
  // process) and the cache works in memory; existing readable entries are still served. A later
  // write failure (disk full, file too large, directory made read-only) does the same, once.
  // Anything at an entry path that is not a regular file (a directory, FIFO, device, symbolic
  // link) is a bad entry: get() never reads through it, put() replaces it.
  explicit DiskCache(std::optional<std::filesystem::path> dir = std::nullopt,
                     CacheWarningSink warn = {}, CacheAccess access = CacheAccess::kReadWrite);

  // A hit, or nullopt (a miss; an entry that is unreadable or fails verification is also counted
  // in `corrupt`). Throws InternalError for a key that is not is_valid_cache_key().
  std::optional<CacheEntry> get(const std::string& key);
  // Stores the entry (atomically replacing any existing file for the key). Never throws for I/O:
  // a failed write warns once and keeps the entry in memory.
  void put(const std::string& key, const CacheEntry& entry);

  CacheStats stats() const;
  const std::filesystem::path& dir() const { return dir_; }
  // <dir>/v1: the directory holding this format's entry files.
  const std::filesystem::path& entries_dir() const { return entries_dir_; }
  bool persistent() const { return persistent_.load(); }
  std::string warning() const;  // "" if none

  // Entries on disk (and in memory when not persistent), sorted by key.
  std::vector<CacheEntryInfo> list() const;
  // Temp files of every format version, sorted by path.
  std::vector<CacheTempFile> temp_files() const;
  // Removes the stale temp files (a killed writer's; build_plan calls it). Best effort: returns
  // how many it removed; `error`, when given, receives the first failure ("" if none).
  int64_t remove_stale_temp_files(std::string* error = nullptr);
  // Removes every entry file of every format version (v<N>/<key>.lsq), stray temp files older
  // than kStaleTempAge (younger ones may belong to a live writer), and the in-memory entries;
  // returns how many entries (files + in-memory) it removed. Files in the directory that are not
  // lightseq cache files are left alone. Throws CacheError (path, strerror) if a file that should
  // go cannot be removed.
  int64_t clear();

  static constexpr std::chrono::minutes kStaleTempAge{10};

 private:
  std::filesystem::path entry_path(const std::string& key) const;
  // Writes an entry file, repairing once what a rebuild can repair (a directory at the entry path
  // is removed, a removed entries directory is recreated). false, and why, if the disk refuses.
  bool write_to_disk(const std::string& key, std::string_view bytes, std::string& reason);
  // Calls `visit` for every file directly inside a format directory (<dir>/v<N>/...). A format
  // directory that cannot be listed is reported in `error` (the first failure only).
  void for_each_format_file(
      const std::function<void(const std::filesystem::directory_entry&)>& visit,
      std::string& error) const;
  // Switches to memory-only mode and emits the warning, the first time only.
  void fall_back_to_memory(const std::string& reason);

  std::filesystem::path dir_;
  std::filesystem::path entries_dir_;
  CacheWarningSink warn_;
  std::atomic<bool> persistent_{true};
  mutable std::mutex mu_;  // guards warning_ and memory_
  std::string warning_;
  std::map<std::string, CacheEntry> memory_;
  std::atomic<int64_t> hits_{0}, misses_{0}, corrupt_{0}, writes_{0};
};

}  // namespace lightseq
