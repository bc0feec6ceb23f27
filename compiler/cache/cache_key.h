// cache_key.h — the disk-cache key of one NVRTC program (DESIGN.md, "The disk cache"), and the
// SHA-256 helpers behind it.
//
// The key is the SHA-256 (64 lowercase hex digits) of a length-prefixed serialization of, in
// order: the generator version, the embedded-templates hash, the canonical arch, the NVRTC
// version, every option, the source and every name expression. Length prefixes make the encoding
// unambiguous ("ab"+"c" and "a"+"bc" give different keys). Deliberately NOT in the key: the
// program name and kernel labels (descriptive only; they do not change the image), and the
// embedded templates' text beyond their hash.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/nvrtc/nvrtc_compiler.h"

namespace lightseq {

// Bump when the code generator changes output semantics without changing the generated source
// text in a way the key sees (e.g. a changed meaning of a launch parameter the runtime passes,
// or a different way the runtime interprets lowered names / labels of a cached entry).
inline constexpr int kGeneratorVersion = 1;

// What identifies the code generator's output conventions.
struct GeneratorIdentity {
  int generator_version = kGeneratorVersion;
  std::string templates_hash;  // templates_hash()
};

// {kGeneratorVersion, templates_hash()}.
GeneratorIdentity current_generator_identity();

// The key with an explicit generator identity (tests vary it; make_cache_key below passes the
// current one). `arch` is canonicalized first ("80" and "sm_80" give one key); throws
// lightseq::Error on a malformed arch.
std::string make_cache_key(const ProgramSource& program, const std::string& arch,
                           const std::vector<std::string>& options,
                           const std::string& nvrtc_version, const GeneratorIdentity& generator);

// The key the compiler uses: make_cache_key(..., current_generator_identity()). Pass the exact
// nvrtc_options(arch) and nvrtc_version() the program is compiled with.
std::string make_cache_key(const ProgramSource& program, const std::string& arch,
                           const std::vector<std::string>& options,
                           const std::string& nvrtc_version);

}  // namespace lightseq
