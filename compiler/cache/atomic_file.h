// atomic_file.h — whole-file reads and atomic writes (temp file + fsync + rename), with every
// system call checked and reported with its path and strerror. Used by the disk cache and by the
// NVRTC driver's source dumps.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

namespace lightseq {

// strerror(err), thread-safe.
std::string errno_message(int err);

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
// reads as a miss.
void write_file_atomically(const std::filesystem::path& path, std::string_view data);

enum class ReadStatus {
  kOk,
  kMissing,     // the file (or a directory on its path) does not exist: ENOENT, ENOTDIR
  kOpenFailed,  // it exists but cannot be opened (EACCES, ...); `error` says why
  kReadFailed,  // opened but reading failed or it is larger than max_bytes; `error` says why
};

struct ReadResult {
  ReadStatus status = ReadStatus::kMissing;
  std::string data;   // the whole file when kOk
  std::string error;  // "cannot open '<path>': Permission denied"; "" when kOk / kMissing
};

// Reads a whole file (at most max_bytes, else kReadFailed).
ReadResult read_whole_file(const std::filesystem::path& path, std::size_t max_bytes);

}  // namespace lightseq
