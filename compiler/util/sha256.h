// sha256.h — SHA-256 (OpenSSL's EVP), for cache keys, the templates' hash and dump file names.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace lightseq {

// SHA-256 of `data`, raw bytes.
std::array<uint8_t, 32> sha256_digest(std::string_view data);
// The same as 64 lowercase hex digits.
std::string sha256_hex(std::string_view data);

}  // namespace lightseq
