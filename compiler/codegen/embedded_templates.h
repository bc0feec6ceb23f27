// embedded_templates.h — the files of templates/, embedded into the library at build time
// (cmake/EmbedTemplates.cmake). NVRTC sees them as in-memory headers under their relative paths
// ("layernorm.cuh", "common/types.cuh").
#pragma once

#include <span>
#include <string>
#include <string_view>

namespace lightseq {

struct EmbeddedFile {
  std::string_view path;  // relative to templates/
  std::string_view text;
};

std::span<const EmbeddedFile> embedded_templates();

// SHA-256 (hex) over every embedded path and text, computed once; part of every cache key.
const std::string& templates_hash();

}  // namespace lightseq
