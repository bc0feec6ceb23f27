#include "compiler/cache/cache_key.h"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "compiler/cache/disk_cache.h"
#include "compiler/codegen/embedded_templates.h"
#include "compiler/errors.h"

namespace lightseq {
namespace {

std::string openssl_error() {
  const unsigned long code = ERR_get_error();
  if (code == 0) return "no OpenSSL error queued";
  char buffer[256];
  ERR_error_string_n(code, buffer, sizeof(buffer));
  return buffer;
}

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

std::array<uint8_t, 32> sha256_digest(std::string_view data) {
  std::array<uint8_t, 32> digest{};
  unsigned int length = 0;
  if (EVP_Digest(data.data(), data.size(), digest.data(), &length, EVP_sha256(), nullptr) != 1 ||
      length != digest.size()) {
    throw InternalError(
        fmt::format("EVP_Digest(SHA-256) failed: {} ({}:{})", openssl_error(), __FILE__, __LINE__));
  }
  return digest;
}

std::string sha256_hex(std::string_view data) {
  static constexpr char kHex[] = "0123456789abcdef";
  const std::array<uint8_t, 32> digest = sha256_digest(data);
  std::string hex(2 * digest.size(), '0');
  for (size_t i = 0; i < digest.size(); ++i) {
    hex[2 * i] = kHex[digest[i] >> 4];
    hex[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return hex;
}

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
