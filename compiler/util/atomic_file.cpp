#include "compiler/util/atomic_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <random>

#include "compiler/errors.h"

namespace lightseq {
namespace fs = std::filesystem;

namespace {

// Closes a file descriptor on scope exit unless released; close errors on this path are
// irrelevant (it only runs when an earlier error is already being reported).
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

uint64_t next_random() {
  // Per thread, seeded from the OS; a fork()ed child inherits its parent's state, which is why
  // the pid is part of every temp name as well, and the counter separates threads' draws.
  thread_local std::mt19937_64 generator{std::random_device{}()};
  static std::atomic<uint64_t> counter{0};
  return generator() ^ (counter.fetch_add(1, std::memory_order_relaxed) * 0x9E3779B97F4A7C15ull);
}

bool all_of(std::string_view s, bool (*pred)(char)) {
  if (s.empty()) return false;
  for (char c : s) {
    if (!pred(c)) return false;
  }
  return true;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f'); }

}  // namespace

std::string errno_message(int err) {
  char buffer[256];
  // GNU strerror_r returns a pointer to the message (possibly static, possibly `buffer`).
  const char* message = strerror_r(err, buffer, sizeof(buffer));
  return message;
}

std::string temp_file_name(std::string_view stem) {
  return fmt::format(".{}.{}.{:016x}.tmp", stem, static_cast<long>(::getpid()), next_random());
}

bool is_temp_file_name(std::string_view name) {
  // ".<stem>.<pid digits>.<16 hex>.tmp"
  constexpr std::string_view kSuffix = ".tmp";
  if (name.size() < 1 + 1 + 1 + 1 + 1 + 16 + kSuffix.size() || name.front() != '.' ||
      !name.ends_with(kSuffix)) {
    return false;
  }
  std::string_view rest = name.substr(1, name.size() - 1 - kSuffix.size());
  const size_t random_dot = rest.rfind('.');
  if (random_dot == std::string_view::npos || !all_of(rest.substr(random_dot + 1), is_hex) ||
      rest.size() - random_dot - 1 != 16) {
    return false;
  }
  rest = rest.substr(0, random_dot);
  const size_t pid_dot = rest.rfind('.');
  return pid_dot != std::string_view::npos && pid_dot > 0 &&
         all_of(rest.substr(pid_dot + 1), is_digit);
}

void write_file_atomically(const fs::path& path, std::string_view data) {
  const fs::path tmp = path.parent_path() / temp_file_name(path.stem().string());
  FdGuard fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    throw CacheError(fmt::format("cannot create '{}': {}", tmp.string(), errno_message(errno)));
  }
  auto fail = [&](std::string_view what, int err) {
    ::unlink(tmp.c_str());  // best effort: the error being reported is the original one
    throw CacheError(fmt::format("cannot {} '{}': {}", what, tmp.string(), errno_message(err)));
  };
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write", errno);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) fail("fsync", errno);
  if (::close(fd.release()) != 0) fail("close", errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    throw CacheError(fmt::format("cannot rename '{}' to '{}': {}", tmp.string(), path.string(),
                                 errno_message(err)));
  }
}

std::string_view file_type_name(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

ReadResult read_whole_file(const fs::path& path, std::size_t max_bytes, Symlinks symlinks) {
  ReadResult result;
  // "cannot open: Permission denied" / "cannot open '<path>': Permission denied".
  auto call_failed = [&](ReadStatus status, std::string_view call, int err) {
    result.status = status;
    result.reason = fmt::format("cannot {}: {}", call, errno_message(err));
    result.error = fmt::format("cannot {} '{}': {}", call, path.string(), errno_message(err));
    result.data.clear();
    return result;
  };
  // "is a FIFO, not a regular file" / "'<path>' is a FIFO, not a regular file".
  auto refused = [&](ReadStatus status, std::string reason) {
    result.status = status;
    result.error = fmt::format("'{}' {}", path.string(), reason);
    result.reason = std::move(reason);
    result.data.clear();
    return result;
  };
  const int follow = symlinks == Symlinks::kFollow ? 0 : O_NOFOLLOW;
  FdGuard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | follow));
  if (fd.get() < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) {
      result.status = ReadStatus::kMissing;
      result.reason = fmt::format("cannot open: {}", errno_message(err));
      return result;
    }
    // A symbolic link (ELOOP under O_NOFOLLOW) or a socket (ENXIO) fails to open: say what it is.
    struct stat st {};
    const int found =
        symlinks == Symlinks::kFollow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st);
    if (found == 0 && !S_ISREG(st.st_mode)) {
      return refused(ReadStatus::kNotRegular,
                     fmt::format("is {}, not a regular file", file_type_name(st.st_mode)));
    }
    return call_failed(ReadStatus::kOpenFailed, "open", err);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return call_failed(ReadStatus::kReadFailed, "stat", errno);
  if (!S_ISREG(st.st_mode)) {
    return refused(ReadStatus::kNotRegular,
                   fmt::format("is {}, not a regular file", file_type_name(st.st_mode)));
  }
  if (static_cast<uint64_t>(st.st_size) > max_bytes) {
    return refused(ReadStatus::kTooLarge, fmt::format("is {} bytes, more than the limit of {}",
                                                      static_cast<int64_t>(st.st_size), max_bytes));
  }
  // The size is a hint: the file may change under us (a concurrent rename replaces the whole
  // file, so we keep reading the inode we opened); read until EOF, bounded by max_bytes.
  result.data.resize(static_cast<size_t>(st.st_size));
  size_t done = 0;
  for (;;) {
    if (done == result.data.size()) {
      if (result.data.size() > max_bytes) {
        return refused(ReadStatus::kTooLarge, fmt::format("grew beyond {} bytes", max_bytes));
      }
      result.data.resize(result.data.size() + 4096);
    }
    const ssize_t n = ::read(fd.get(), result.data.data() + done, result.data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return call_failed(ReadStatus::kReadFailed, "read", errno);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  result.data.resize(done);
  result.status = ReadStatus::kOk;
  return result;
}

}  // namespace lightseq
