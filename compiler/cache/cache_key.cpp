#include "compiler/cache/cache_key.h"

#include <fmt/format.h>

#include "compiler/cache/disk_cache.h"
#include "compiler/codegen/embedded_templates.h"
#include "compiler/errors.h"
#include "compiler/util/sha256.h"

namespace lightseq {
namespace {

// "<tag>:<byte length>:<bytes>\n": the length makes the field boundaries unambiguous whatever
// bytes the value holds; the tag makes a reordering of fields change the key.
void append_field(std::string& out, std::string_view tag, std::string_view value) {
  out += tag;
  out += ':';
  out += std::to_string(value.size());
  out += ':';
  out += value;
  out += '\n';
}

// "<tag>#<count>\n" then one "item" field per element.
void append_list(std::string& out, std::string_view tag, const std::vector<std::string>& items) {
  out += tag;
  out += '#';
  out += std::to_string(items.size());
  out += '\n';
  for (const std::string& item : items) append_field(out, "item", item);
}

}  // namespace

GeneratorIdentity current_generator_identity() {
  return GeneratorIdentity{kGeneratorVersion, templates_hash()};
}

std::string make_cache_key(const ProgramSource& program, const std::string& arch,
                           const std::vector<std::string>& options,
                           const std::string& nvrtc_version, const GeneratorIdentity& generator) {
  std::string text = "lightseq-cache-key-v1\n";
  append_field(text, "generator_version", std::to_string(generator.generator_version));
  append_field(text, "templates_hash", generator.templates_hash);
  append_field(text, "arch", canonical_arch(arch));
  append_field(text, "nvrtc_version", nvrtc_version);
  append_list(text, "options", options);
  append_field(text, "source", program.source);
  append_list(text, "name_expressions", program.name_expressions);
  return sha256_hex(text);
}

std::string make_cache_key(const ProgramSource& program, const std::string& arch,
                           const std::vector<std::string>& options,
                           const std::string& nvrtc_version) {
  return make_cache_key(program, arch, options, nvrtc_version, current_generator_identity());
}

}  // namespace lightseq
