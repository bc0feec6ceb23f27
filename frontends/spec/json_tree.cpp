#include "frontends/spec/json_tree.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

namespace lightseq::spec_detail {
namespace {

using Json = nlohmann::json;

// Builds a JsonNode tree from nlohmann's SAX events. Stops (returns false) at a syntax error,
// which it records, or when nesting exceeds kMaxJsonDepth.
class TreeBuilder : public nlohmann::json_sax<Json> {
 public:
  std::optional<JsonNode> root;
  bool too_deep = false;
  bool failed = false;
  size_t error_byte = 0;  // nlohmann's byte offset: 1-based index of the offending character
  std::string error_message;

  bool null() override { return add(JsonNode{}); }
  bool boolean(bool val) override {
    JsonNode n;
    n.kind = JsonKind::kBool;
    n.boolean = val;
    return add(std::move(n));
  }
  bool number_integer(number_integer_t val) override {
    JsonNode n;
    n.kind = JsonKind::kInteger;
    n.integer = val;
    n.text = std::to_string(val);
    return add(std::move(n));
  }
  bool number_unsigned(number_unsigned_t val) override {
    JsonNode n;
    n.kind = JsonKind::kInteger;
    n.text = std::to_string(val);
    if (val <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      n.integer = static_cast<int64_t>(val);
    } else {
      n.integer_fits = false;
    }
    return add(std::move(n));
  }
  bool number_float(number_float_t val, const string_t& s) override {
    JsonNode n;
    n.kind = JsonKind::kFloat;
    n.number = val;
    n.text = s;
    return add(std::move(n));
  }
  bool string(string_t& val) override {
    JsonNode n;
    n.kind = JsonKind::kString;
    n.text = std::move(val);
    return add(std::move(n));
  }
  bool binary(binary_t&) override { return false; }  // never produced by the JSON reader
  bool start_object(std::size_t) override { return open(JsonKind::kObject); }
  bool key(string_t& val) override {
    stack_.back()->keys.push_back(std::move(val));
    return true;
  }
  bool end_object() override { return close(); }
  bool start_array(std::size_t) override { return open(JsonKind::kArray); }
  bool end_array() override { return close(); }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    failed = true;
    error_byte = position;
    error_message = strip_prefix(ex.what());
    return false;
  }

 private:
  // Pointers to the open containers. A container's address is stable while it is open: its
  // parent only grows after it closes.
  std::vector<JsonNode*> stack_;

  bool add(JsonNode n) {
    add_node(std::move(n));
    return true;
  }
  JsonNode* add_node(JsonNode n) {
    if (stack_.empty()) {
      root = std::move(n);
      return &*root;
    }
    stack_.back()->items.push_back(std::move(n));
    return &stack_.back()->items.back();
  }
  bool open(JsonKind kind) {
    if (static_cast<int>(stack_.size()) >= kMaxJsonDepth) {
      too_deep = true;
      return false;
    }
    JsonNode n;
    n.kind = kind;
    stack_.push_back(add_node(std::move(n)));
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  // "[json.exception.parse_error.101] parse error at line 1, column 4: syntax error ..." ->
  // "syntax error ...". The location is recomputed from the byte offset.
  static std::string strip_prefix(std::string_view what) {
    if (size_t at = what.find("parse error at line "); at != std::string_view::npos) {
      if (size_t colon = what.find(": ", at); colon != std::string_view::npos) {
        return std::string(what.substr(colon + 2));
      }
    }
    if (what.starts_with("[json.exception.")) {
      if (size_t close = what.find("] "); close != std::string_view::npos) {
        return std::string(what.substr(close + 2));
      }
    }
    return std::string(what);
  }
};

// Offset of the opening bracket that makes the nesting deeper than kMaxJsonDepth, found by a
// scan that skips strings. Only called after the SAX parser stopped there, so the text before
// that bracket is well-formed JSON and the scan agrees with the parser.
size_t too_deep_offset(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return text.size();
}

// The part of the offending line around `offset`: up to 30 bytes before, 10 after.
std::string excerpt(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line_start = 0;
  if (offset > 0) {
    size_t newline = text.rfind('\n', offset - 1);
    if (newline != std::string_view::npos) line_start = newline + 1;
  }
  size_t line_end = text.find('\n', offset);
  if (line_end == std::string_view::npos) line_end = text.size();
  size_t from = std::max(line_start, offset >= 30 ? offset - 30 : size_t{0});
  size_t to = std::min(line_end, offset + 11);
  std::string out = from > line_start ? "..." : "";
  out += printable(text.substr(from, to - from), 200);
  if (to < line_end) out += "...";
  return out.empty() ? "(empty)" : out;
}

void render_into(const JsonNode& node, std::string& out) {
  switch (node.kind) {
    case JsonKind::kNull:
      out += "null";
      return;
    case JsonKind::kBool:
      out += node.boolean ? "true" : "false";
      return;
    case JsonKind::kInteger:
    case JsonKind::kFloat:
      out += node.text;
      return;
    case JsonKind::kString:
      out += quote_string(node.text, 40);
      return;
    case JsonKind::kArray:
    case JsonKind::kObject: {
      bool object = node.kind == JsonKind::kObject;
      out += object ? '{' : '[';
      for (size_t i = 0; i < node.items.size() && out.size() <= 40; ++i) {
        if (i > 0) out += ',';
        if (object) out += quote_string(node.keys[i], 40) + ':';
        render_into(node.items[i], out);
      }
      out += object ? '}' : ']';
      return;
    }
  }
}

}  // namespace

JsonParseResult parse_json_tree(std::string_view text) {
  TreeBuilder builder;
  Json::sax_parse(text.begin(), text.end(), &builder);
  JsonParseResult result;
  if (builder.failed || builder.too_deep) {
    size_t offset = builder.too_deep ? too_deep_offset(text)
                                     : (builder.error_byte == 0 ? 0 : builder.error_byte - 1);
    LineColumn lc = line_column(text, offset);
    std::string message =
        builder.too_deep ? fmt::format("nested deeper than {} levels; a model spec nests at most 4",
                                       kMaxJsonDepth)
                         : printable(builder.error_message);
    result.error = SpecIssue{fmt::format("line {}, column {}", lc.line, lc.column),
                             excerpt(text, offset), std::move(message)};
    return result;
  }
  result.root = std::move(builder.root);
  return result;
}

LineColumn line_column(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  LineColumn lc;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++lc.line;
      line_start = i + 1;
    }
  }
  lc.column = static_cast<int64_t>(offset - line_start) + 1;
  return lc;
}

std::string render_node(const JsonNode& node) {
  std::string out;
  render_into(node, out);
  if (out.size() > 40) {
    if (node.kind == JsonKind::kObject) return "{...}";
    if (node.kind == JsonKind::kArray) return "[...]";
  }
  return out;
}

std::string_view kind_name(const JsonNode& node) {
  switch (node.kind) {
    case JsonKind::kNull:
      return "null";
    case JsonKind::kBool:
      return "a boolean";
    case JsonKind::kInteger:
    case JsonKind::kFloat:
      return "a number";
    case JsonKind::kString:
      return "a string";
    case JsonKind::kArray:
      return "an array";
    case JsonKind::kObject:
      return "an object";
  }
  return "an unknown value";
}

std::string printable(std::string_view s, size_t max_chars) {
  std::string out;
  append_escaped(out, s, max_chars, Escape::kText);
  return out;
}

}  // namespace lightseq::spec_detail
