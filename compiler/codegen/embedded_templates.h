// embedded_templates.h — the files of templates/, embedded into the library at build time
// (cmake/EmbedTemplates.cmake). NVRTC sees them as in-memory headers under their relative paths
// ("layernorm.cuh", "common/types.cuh").
#pragma once

#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lightseq {

struct EmbeddedFile {
  std::string_view path;  // relative to templates/
  std::string_view text;
};

std::span<const EmbeddedFile> embedded_templates();

// The headers NVRTC compiles with: embedded_templates(), each replaced by its copy in
// $LIGHTSEQ_TEMPLATES_DIR where that directory has one (same relative path; a development aid:
// an experiment's device code timed beside the built-in one's without a rebuild, the launch
// formulas staying the built-in *.sig.cuh's; each copy that differs is reported on stderr). Read
// once.
// Throws lightseq::Error when the variable names no directory or a copy cannot be read.
std::span<const EmbeddedFile> templates();
// What templates() does for a directory `dir` (empty: the embedded set unchanged); the replaced
// texts are kept in `texts`, which must outlive the result.
std::vector<EmbeddedFile> templates_in(const std::string& dir, std::deque<std::string>& texts);

// SHA-256 (hex) over every path and text of templates(), computed once; part of every cache key
// (so kernels compiled from replaced templates never mix with the built-in ones in the cache).
const std::string& templates_hash();

}  // namespace lightseq
