#include "compiler/codegen/embedded_templates.h"

#include <string>

#include "compiler/util/sha256.h"

namespace lightseq {

const std::string& templates_hash() {
  static const std::string hash = [] {
    std::string all;
    for (const EmbeddedFile& f : embedded_templates()) {
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
