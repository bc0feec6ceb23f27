// json_tree.h — a JSON document as written: keys in document order, duplicates kept, numbers
// with their source text. The spec parser reads this instead of nlohmann::json because a spec
// error must quote a value as the user wrote it ("1e-5", not "1e-05"), report issues in document
// order and catch duplicate keys, none of which nlohmann's DOM keeps.
//
// Built from nlohmann's SAX parser, which is iterative; the tree itself is limited to
// kMaxJsonDepth levels of nesting so that walking and destroying it cannot overflow the stack.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/errors.h"
#include "compiler/spec/rules.h"  // quote_string

namespace lightseq::spec_detail {

// Deepest nesting accepted. A model spec nests 4 levels (root, layers, a stack, its dropout).
inline constexpr int kMaxJsonDepth = 32;

enum class JsonKind { kNull, kBool, kInteger, kFloat, kString, kArray, kObject };

struct JsonNode {
  JsonKind kind = JsonKind::kNull;
  bool boolean = false;
  // kInteger: the value, when it fits in int64 (integer_fits); kFloat: the value (always finite).
  int64_t integer = 0;
  bool integer_fits = true;
  double number = 0.0;
  std::string text;  // kString: the value; kInteger/kFloat: the number as written
  std::vector<std::string>
      keys;                     // kObject: keys[i] names items[i], document order, duplicates kept
  std::vector<JsonNode> items;  // kArray elements or kObject values
};

struct JsonParseResult {
  std::optional<JsonNode> root;    // set iff the text is well-formed and not too deep
  std::optional<SpecIssue> error;  // set otherwise: path "line L, column C", value an excerpt
};

JsonParseResult parse_json_tree(std::string_view text);

// 1-based line and column of the byte at `offset` (clamped to the text's end).
struct LineColumn {
  int64_t line = 1;
  int64_t column = 1;
};
LineColumn line_column(std::string_view text, size_t offset);

// The value as written, for a SpecIssue: numbers and literals verbatim, strings quoted and
// escaped, containers as "{...}" / "[...]" (or their short compact form). Always printable ASCII.
std::string render_node(const JsonNode& node);

// "a string", "a number", "a boolean", "null", "an array", "an object".
std::string_view kind_name(const JsonNode& node);

// Bytes outside printable ASCII written as \n, \t, \xNN; cut with "..." beyond `max_chars`.
std::string printable(std::string_view s, size_t max_chars = 200);

}  // namespace lightseq::spec_detail
