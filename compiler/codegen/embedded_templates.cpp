#include "compiler/codegen/embedded_templates.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "compiler/errors.h"
#include "compiler/util/sha256.h"

namespace lightseq {

std::vector<EmbeddedFile> templates_in(const std::string& dir, std::deque<std::string>& texts) {
  std::vector<EmbeddedFile> headers(embedded_templates().begin(), embedded_templates().end());
  if (dir.empty()) return headers;
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) {
    throw Error(fmt::format(
        "{} (LIGHTSEQ_TEMPLATES_DIR) is not a directory: name a directory holding copies of "
        "templates/ files, or unset it to use the built-in templates",
        dir));
  }
  for (EmbeddedFile& h : headers) {
    const fs::path f = fs::path(dir) / h.path;
    if (!fs::is_regular_file(f)) continue;
    std::ifstream in(f);
    std::ostringstream text;
    if (!(text << in.rdbuf())) {
      throw Error(fmt::format("cannot read {} (LIGHTSEQ_TEMPLATES_DIR)", f.string()));
    }
    if (text.str() == h.text) continue;  // the same as the built-in file: nothing to report
    texts.push_back(text.str());
    h.text = texts.back();
    std::fprintf(stderr, "lightseq: templates/%.*s from %s (LIGHTSEQ_TEMPLATES_DIR)\n",
                 static_cast<int>(h.path.size()), h.path.data(), f.string().c_str());
  }
  return headers;
}

std::span<const EmbeddedFile> templates() {
  static std::deque<std::string> texts;
  static const std::vector<EmbeddedFile> headers = [] {
    const char* dir = std::getenv("LIGHTSEQ_TEMPLATES_DIR");
    return templates_in(dir != nullptr ? dir : "", texts);
  }();
  return headers;
}

const std::string& templates_hash() {
  static const std::string hash = [] {
    std::string all;
    for (const EmbeddedFile& f : templates()) {
      all += f.path;
      all.push_back('\0');
      all += std::to_string(f.text.size());
      all.push_back('\0');
      all += f.text;
    }
    return sha256_hex(all);
  }();
  return hash;
}

}  // namespace lightseq
