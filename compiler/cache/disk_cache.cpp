#include "compiler/cache/disk_cache.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <system_error>

#include "compiler/cache/cache_key.h"
#include "compiler/errors.h"
#include "compiler/util/atomic_file.h"

namespace lightseq {
namespace fs = std::filesystem;

namespace {

constexpr std::string_view kMagic = "LSQCACHE";
constexpr std::string_view kEntrySuffix = ".lsq";
constexpr size_t kDigestBytes = 32;
// Magic, version, header length, image length, checksum: the smallest possible entry.
constexpr size_t kMinEntryBytes = 8 + 4 + 8 + 8 + kDigestBytes;
// A sanity bound for reads: a program's cubin is KBs to a few MBs.
constexpr size_t kMaxEntryBytes = size_t{1} << 30;

class ByteWriter {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void bytes(std::string_view s) { out_.append(s); }
  void str(std::string_view s) {
    u32(static_cast<uint32_t>(s.size()));
    bytes(s);
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

// Bounds-checked reads; any read past the end sets failed() and returns zeros / empty.
class ByteReader {
 public:
  explicit ByteReader(std::string_view data) : data_(data) {}
  bool failed() const { return failed_; }
  bool at_end() const { return pos_ == data_.size(); }
  size_t remaining() const { return data_.size() - pos_; }
  std::string_view bytes(uint64_t n) {
    if (failed_ || n > remaining()) {
      failed_ = true;
      return {};
    }
    std::string_view s = data_.substr(pos_, static_cast<size_t>(n));
    pos_ += static_cast<size_t>(n);
    return s;
  }
  uint64_t unsigned_le(int width) {
    std::string_view s = bytes(static_cast<uint64_t>(width));
    uint64_t v = 0;
    for (int i = static_cast<int>(s.size()) - 1; i >= 0; --i) {
      v = (v << 8) | static_cast<uint8_t>(s[static_cast<size_t>(i)]);
    }
    return v;
  }
  uint8_t u8() { return static_cast<uint8_t>(unsigned_le(1)); }
  uint32_t u32() { return static_cast<uint32_t>(unsigned_le(4)); }
  uint64_t u64() { return unsigned_le(8); }
  std::string str() { return std::string(bytes(u32())); }
  std::vector<std::string> str_list() {
    const uint32_t n = u32();
    std::vector<std::string> items;
    for (uint32_t i = 0; i < n && !failed_; ++i) items.push_back(str());
    return items;
  }

 private:
  std::string_view data_;
  size_t pos_ = 0;
  bool failed_ = false;
};

std::string encode_entry(const std::string& key, const CacheEntry& entry) {
  ByteWriter header;
  header.str(key);
  header.str(entry.program);
  header.str(entry.arch);
  header.u8(entry.is_ptx ? 1 : 0);
  header.u32(static_cast<uint32_t>(entry.labels.size()));
  for (const std::string& label : entry.labels) header.str(label);
  header.u32(static_cast<uint32_t>(entry.lowered_names.size()));
  for (const std::string& name : entry.lowered_names) header.str(name);

  ByteWriter file;
  file.bytes(kMagic);
  file.u32(kCacheFormatVersion);
  file.u64(header.out().size());
  file.bytes(header.out());
  file.u64(entry.image.size());
  file.bytes(std::string_view(entry.image.data(), entry.image.size()));
  const std::array<uint8_t, 32> digest = sha256_digest(file.out());
  file.bytes(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
  return std::move(file.out());
}

struct DecodedEntry {
  std::string key;
  CacheEntry entry;
};

// nullopt for anything but a complete, verified entry.
std::optional<DecodedEntry> decode_entry(std::string_view data) {
  if (data.size() < kMinEntryBytes || data.substr(0, kMagic.size()) != kMagic) return std::nullopt;
  const std::string_view payload = data.substr(0, data.size() - kDigestBytes);
  const std::array<uint8_t, 32> digest = sha256_digest(payload);
  if (std::memcmp(digest.data(), data.data() + payload.size(), kDigestBytes) != 0) {
    return std::nullopt;
  }
  ByteReader file(payload.substr(kMagic.size()));
  if (file.u32() != kCacheFormatVersion) return std::nullopt;
  ByteReader header(file.bytes(file.u64()));
  DecodedEntry decoded;
  decoded.key = header.str();
  decoded.entry.program = header.str();
  decoded.entry.arch = header.str();
  const uint8_t is_ptx = header.u8();
  decoded.entry.labels = header.str_list();
  decoded.entry.lowered_names = header.str_list();
  if (file.failed() || header.failed() || !header.at_end() || is_ptx > 1) return std::nullopt;
  decoded.entry.is_ptx = is_ptx == 1;
  const uint64_t image_bytes = file.u64();
  if (file.failed() || image_bytes != file.remaining()) return std::nullopt;
  const std::string_view image = file.bytes(image_bytes);
  decoded.entry.image.assign(image.begin(), image.end());
  return decoded;
}

bool is_entry_file_name(std::string_view name) {
  return name.size() > kEntrySuffix.size() && name.ends_with(kEntrySuffix) &&
         is_valid_cache_key(name.substr(0, name.size() - kEntrySuffix.size()));
}

// "v1", "v2", ...: the per-format subdirectories.
bool is_format_dir_name(std::string_view name) {
  return name.size() >= 2 && name[0] == 'v' &&
         std::all_of(name.begin() + 1, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void require_valid_key(const std::string& key) {
  if (!is_valid_cache_key(key)) {
    throw InternalError(fmt::format(
        "invalid cache key '{}': keys are 1 to 128 characters of [A-Za-z0-9_-] (make_cache_key)",
        key));
  }
}

// "" when `dir` exists (or was created) and a file can be created and removed in it; else why.
std::string probe_writable(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fmt::format("cannot create '{}': {}", dir.string(), errno_message(ec.value()));
  if (!fs::is_directory(dir, ec)) return fmt::format("'{}' is not a directory", dir.string());
  const fs::path probe = dir / temp_file_name("writable-probe");
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    return fmt::format("cannot create a file in '{}': {}", dir.string(), errno_message(errno));
  }
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(probe.c_str());
    return fmt::format("cannot close '{}': {}", probe.string(), errno_message(err));
  }
  if (::unlink(probe.c_str()) != 0) {
    return fmt::format("cannot remove '{}': {}", probe.string(), errno_message(errno));
  }
  return "";
}

// The default sink: stderr, once per directory per process (a library that opens one cache per
// model must not repeat the same warning).
void warn_to_stderr_once(const fs::path& dir, const std::string& message) {
  static std::mutex mu;
  static std::set<std::string> warned;
  std::lock_guard<std::mutex> lock(mu);
  if (!warned.insert(dir.string()).second) return;
  std::fprintf(stderr, "%s\n", message.c_str());
  std::fflush(stderr);
}

std::optional<std::string> non_empty_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

}  // namespace

bool is_valid_cache_key(std::string_view key) {
  return !key.empty() && key.size() <= 128 && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

fs::path default_cache_dir() {
  if (std::optional<std::string> dir = non_empty_env("LIGHTSEQ_CACHE_DIR")) return *dir;
  if (std::optional<std::string> xdg = non_empty_env("XDG_CACHE_HOME")) {
    if (fs::path(*xdg).is_absolute()) return fs::path(*xdg) / "lightseq";
  }
  if (std::optional<std::string> home = non_empty_env("HOME")) {
    return fs::path(*home) / ".cache" / "lightseq";
  }
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buffer(16384);
  if (getpwuid_r(::getuid(), &pw, buffer.data(), buffer.size(), &found) == 0 && found != nullptr &&
      found->pw_dir != nullptr && *found->pw_dir != '\0') {
    return fs::path(found->pw_dir) / ".cache" / "lightseq";
  }
  std::error_code ec;
  fs::path temp = fs::temp_directory_path(ec);
  if (ec) temp = "/tmp";
  return temp / fmt::format("lightseq-cache-{}", static_cast<unsigned long>(::getuid()));
}

DiskCache::DiskCache(std::optional<fs::path> dir, CacheWarningSink warn, CacheAccess access)
    : dir_(dir ? *dir : default_cache_dir()),
      entries_dir_(dir_ / fmt::format("v{}", kCacheFormatVersion)),
      warn_(std::move(warn)) {
  if (access == CacheAccess::kInspect) {
    persistent_.store(false);
    return;
  }
  const std::string reason = probe_writable(entries_dir_);
  if (!reason.empty()) fall_back_to_memory(reason);
}

fs::path DiskCache::entry_path(const std::string& key) const {
  return entries_dir_ / (key + std::string(kEntrySuffix));
}

void DiskCache::fall_back_to_memory(const std::string& reason) {
  std::string message = fmt::format(
      "lightseq: warning: cache directory '{}' is not writable ({}); compiled kernels will be "
      "kept in memory only. Set LIGHTSEQ_CACHE_DIR to a writable directory to keep them.",
      dir_.string(), reason);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!warning_.empty()) return;  // already warned: one warning per cache
    warning_ = message;
    persistent_.store(false);
  }
  if (warn_) {
    warn_(message);
  } else {
    warn_to_stderr_once(dir_, message);
  }
}

std::string DiskCache::warning() const {
  std::lock_guard<std::mutex> lock(mu_);
  return warning_;
}

CacheStats DiskCache::stats() const {
  return CacheStats{.hits = hits_.load(),
                    .misses = misses_.load(),
                    .corrupt = corrupt_.load(),
                    .writes = writes_.load()};
}

std::optional<CacheEntry> DiskCache::get(const std::string& key) {
  require_valid_key(key);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = memory_.find(key);
    if (it != memory_.end()) {
      ++hits_;
      return it->second;
    }
  }
  // Disk entries are not kept in memory after a read: another process may replace or remove
  // them, and a bad file must be seen as bad on the next get (it is rebuilt and overwritten).
  ReadResult read = read_whole_file(entry_path(key), kMaxEntryBytes);
  switch (read.status) {
    case ReadStatus::kMissing:
      ++misses_;
      return std::nullopt;
    case ReadStatus::kOpenFailed:
      // In a writable directory the rebuilt entry's rename replaces the unreadable file, so it
      // is a bad entry like any other; in a read-only one it is merely not available to us.
      if (persistent_.load()) ++corrupt_;
      ++misses_;
      return std::nullopt;
    case ReadStatus::kReadFailed:
    case ReadStatus::kTooLarge:
    case ReadStatus::kNotRegular:
      ++corrupt_;
      ++misses_;
      return std::nullopt;
    case ReadStatus::kOk:
      break;
  }
  std::optional<DecodedEntry> decoded = decode_entry(read.data);
  if (!decoded || decoded->key != key) {
    ++corrupt_;
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  return std::move(decoded->entry);
}

bool DiskCache::write_to_disk(const std::string& key, std::string_view bytes, std::string& reason) {
  const fs::path path = entry_path(key);
  try {
    write_file_atomically(path, bytes);
    return true;
  } catch (const CacheError& first) {
    reason = first.what();
  }
  // rename() replaces any file, FIFO, socket, device or symbolic link at the entry path, but not
  // a directory: that bad entry is removed. And the directory may have been removed under us
  // (`rm -rf` of the cache while running): it is recreated. Then one retry.
  std::error_code ec;
  if (fs::symlink_status(path, ec).type() == fs::file_type::directory) {
    fs::remove_all(path, ec);
  } else if (fs::exists(entries_dir_, ec) || !fs::create_directories(entries_dir_, ec)) {
    return false;
  }
  try {
    write_file_atomically(path, bytes);
    return true;
  } catch (const CacheError& second) {
    reason = second.what();
    return false;
  }
}

void DiskCache::put(const std::string& key, const CacheEntry& entry) {
  require_valid_key(key);
  if (persistent_.load()) {
    std::string reason;
    if (write_to_disk(key, encode_entry(key, entry), reason)) {
      ++writes_;
      return;
    }
    fall_back_to_memory(reason);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    memory_[key] = entry;
  }
  ++writes_;
}

std::vector<CacheEntryInfo> DiskCache::list() const {
  std::vector<CacheEntryInfo> infos;
  std::set<std::string> on_disk;
  std::error_code ec;
  for (fs::directory_iterator it(entries_dir_, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!is_entry_file_name(name)) continue;
    CacheEntryInfo info;
    info.key = name.substr(0, name.size() - kEntrySuffix.size());
    const ReadResult read = read_whole_file(it->path(), kMaxEntryBytes);
    if (read.status == ReadStatus::kMissing) continue;  // removed since the directory was read
    std::optional<DecodedEntry> decoded;
    if (read.status == ReadStatus::kOk) {
      info.bytes = static_cast<int64_t>(read.data.size());
      decoded = decode_entry(read.data);
      if (!decoded)
        info.problem = "truncated, corrupted or of another format";
      else if (decoded->key != info.key)
        info.problem = "holds another key's entry";
    } else {
      info.problem = read.error;
      std::error_code size_ec;
      if (it->is_regular_file(size_ec) && !it->is_symlink(size_ec)) {
        const uintmax_t size = it->file_size(size_ec);
        info.bytes = size_ec ? 0 : static_cast<int64_t>(size);
      }
    }
    info.valid = info.problem.empty();
    if (info.valid) {
      info.program = decoded->entry.program;
      info.arch = decoded->entry.arch;
      info.kernels = static_cast<int>(decoded->entry.labels.size());
    }
    on_disk.insert(info.key);
    infos.push_back(std::move(info));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, entry] : memory_) {
      if (on_disk.count(key) > 0) continue;
      CacheEntryInfo info;
      info.key = key;
      info.program = entry.program;
      info.arch = entry.arch;
      info.bytes = static_cast<int64_t>(encode_entry(key, entry).size());
      info.kernels = static_cast<int>(entry.labels.size());
      info.in_memory = true;
      infos.push_back(std::move(info));
    }
  }
  std::sort(infos.begin(), infos.end(),
            [](const CacheEntryInfo& a, const CacheEntryInfo& b) { return a.key < b.key; });
  return infos;
}

void DiskCache::for_each_format_file(const std::function<void(const fs::directory_entry&)>& visit,
                                     std::string& error) const {
  std::error_code ec;
  for (fs::directory_iterator dirs(dir_, ec), end; !ec && dirs != end; dirs.increment(ec)) {
    std::error_code type_ec;
    if (!is_format_dir_name(dirs->path().filename().string()) || !dirs->is_directory(type_ec)) {
      continue;
    }
    std::error_code file_ec;
    for (fs::directory_iterator files(dirs->path(), file_ec); !file_ec && files != end;
         files.increment(file_ec)) {
      visit(*files);
    }
    if (file_ec && error.empty()) {
      error = fmt::format("cannot list '{}': {}", dirs->path().string(),
                          errno_message(file_ec.value()));
    }
  }
  // No directory (or a file on its path): nothing of ours on disk.
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory &&
      error.empty()) {
    error = fmt::format("cannot list '{}': {}", dir_.string(), errno_message(ec.value()));
  }
}

std::vector<CacheTempFile> DiskCache::temp_files() const {
  std::vector<CacheTempFile> temps;
  const auto stale_before = fs::file_time_type::clock::now() - kStaleTempAge;
  std::string ignored;
  for_each_format_file(
      [&](const fs::directory_entry& file) {
        if (!is_temp_file_name(file.path().filename().string())) return;
        CacheTempFile temp{.path = file.path()};
        std::error_code ec;
        const uintmax_t size = file.is_regular_file(ec) ? file.file_size(ec) : 0;
        temp.bytes = ec ? 0 : static_cast<int64_t>(size);
        const auto written = fs::last_write_time(file.path(), ec);
        temp.stale = !ec && written < stale_before;
        temps.push_back(std::move(temp));
      },
      ignored);
  std::sort(temps.begin(), temps.end(),
            [](const CacheTempFile& a, const CacheTempFile& b) { return a.path < b.path; });
  return temps;
}

int64_t DiskCache::remove_stale_temp_files(std::string* error) {
  int64_t removed = 0;
  std::string first_error;
  for (const CacheTempFile& temp : temp_files()) {
    if (!temp.stale) continue;
    if (::unlink(temp.path.c_str()) == 0) {
      ++removed;
    } else if (errno != ENOENT && first_error.empty()) {  // ENOENT: another process got there first
      first_error = fmt::format("cannot remove '{}': {}", temp.path.string(), errno_message(errno));
    }
  }
  if (error != nullptr) *error = first_error;
  return removed;
}

int64_t DiskCache::clear() {
  int64_t removed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    removed += static_cast<int64_t>(memory_.size());
    memory_.clear();
  }
  std::string first_error;
  for_each_format_file(
      [&](const fs::directory_entry& file) {
        if (!is_entry_file_name(file.path().filename().string())) return;
        // A directory at an entry path is a bad entry too: it goes with its contents.
        std::error_code ec;
        int err = 0;
        if (file.symlink_status(ec).type() == fs::file_type::directory) {
          fs::remove_all(file.path(), ec);
          err = ec.value();
        } else if (::unlink(file.path().c_str()) != 0) {
          err = errno;
        }
        if (err == 0) {
          ++removed;
        } else if (err != ENOENT && first_error.empty()) {  // ENOENT: a concurrent clear()
          first_error =
              fmt::format("cannot remove '{}': {}", file.path().string(), errno_message(err));
        }
      },
      first_error);
  std::string temp_error;
  remove_stale_temp_files(&temp_error);
  if (first_error.empty()) first_error = temp_error;
  if (!first_error.empty()) throw CacheError(first_error);
  return removed;
}

}  // namespace lightseq
