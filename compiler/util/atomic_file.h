// atomic_file.h — whole-file reads and atomic writes (temp file + fsync + rename), with every
// system call checked and reported with its path and strerror. Used by the disk cache and by the
// NVRTC driver's source dumps.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace lightseq {

// strerror(err), thread-safe.
std::string errno_message(int err);

// "a regular file", "a directory", "a FIFO", "a socket", "a character device", ...: st_mode's type.
std::string_view file_type_name(mode_t mode);

// ".<stem>.<pid>.<random>.tmp": a temp-file name unique across threads and live processes
// (pid + a per-thread random generator + a process-wide counter).
std::string temp_file_name(std::string_view stem);

// True for names of the form temp_file_name() produces (any stem, pid and random part).
bool is_temp_file_name(std::string_view name);

// Writes `data` to a temp file next to `path` (temp_file_name(<path's stem>), so for
// "<dir>/<key>.lsq" it is "<dir>/.<key>.<pid>.<random>.tmp"), fsyncs it, then renames it onto
// `path`, so a reader sees either the old file or the complete new one, never a
// partial write. Concurrent writers of one path are safe: the last rename wins. On failure the
// temp file is removed and CacheError is thrown ("cannot write '<tmp>': No space left on
// device"). The directory is not fsynced: after a crash the rename may be lost, which a cache
// reads as a miss. A write past the file-size limit (`ulimit -f`) raises SIGXFSZ, which kills a
// process that does not ignore it; lsc and CPython ignore it, so the write fails with EFBIG
// ("File too large") like any other.
void write_file_atomically(const std::filesystem::path& path, std::string_view data);

enum class ReadStatus {
  kOk,
  kMissing,     // the file (or a directory on its path) does not exist: ENOENT, ENOTDIR
  kOpenFailed,  // it exists but cannot be opened (EACCES, ...); `error` says why
  kReadFailed,  // opened but reading failed; `error` says why
  kTooLarge,    // larger than max_bytes (or it grew beyond while being read)
  kNotRegular,  // a directory, FIFO, socket, device or symbolic link; `error` says which
};

struct ReadResult {
  ReadStatus status = ReadStatus::kMissing;
  std::string data;    // the whole file when kOk
  std::string error;   // "cannot open '<path>': Permission denied"; "" when kOk / kMissing
  std::string reason;  // the same without the path: "cannot open: Permission denied"; "" when kOk
};

enum class Symlinks {
  kRefuse,  // a symbolic link is kNotRegular (cache entries: a link may point anywhere)
  kFollow,  // the link's target is read, if it is a regular file (a user's spec file)
};

// Reads a whole regular file (at most max_bytes, else kTooLarge). Nothing else is read from: the
// file is opened with O_NONBLOCK (a FIFO cannot block the open; O_NOFOLLOW too unless `symlinks`
// is kFollow) and fstat()ed before the first read.
ReadResult read_whole_file(const std::filesystem::path& path, std::size_t max_bytes,
                           Symlinks symlinks = Symlinks::kRefuse);

}  // namespace lightseq
