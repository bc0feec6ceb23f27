// parse.cpp — JSON tree -> ModelSpec. Structural problems (unknown, duplicate or missing keys,
// wrong types, unknown names) are found here; the rules on values are validate_spec()'s. Both
// kinds are merged, a value with a structural problem is not judged again by the rules, and the
// issues are sorted into document order.
#include "frontends/spec/parse.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <system_error>
#include <unordered_map>
#include <unordered_set>

#include "compiler/spec/rules.h"
#include "compiler/util/atomic_file.h"
#include "frontends/spec/json_tree.h"

namespace lightseq {
namespace {

using namespace spec_detail;

enum class Need { kOptional, kRequired };

struct Field {
  std::string_view key;
  Need need;
  std::string_view example;  // for a missing required key: "\"heads\": 8"
  std::function<void(const JsonNode&, const std::string&)> read;
};

std::string join(const std::string& path, std::string_view key) {
  std::string k = printable(key, 40);
  return path.empty() ? k : path + "." + k;
}

bool is_numeric_text(std::string_view s) {
  double x = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
  return !s.empty() && ec == std::errc() && end == s.data() + s.size();
}

class SpecReader {
 public:
  explicit SpecReader(const JsonNode& root) : root_(root) { index(root, ""); }

  ModelSpec read() {
    ModelSpec spec;
    if (root_.kind != JsonKind::kObject) {
      issue(root_, "",
            fmt::format("a model spec must be a JSON object, not {}; start with "
                        "{{\"name\": \"my-model\", \"precision\": \"bf16\", \"layers\": [...]}}",
                        kind_name(root_)));
      return spec;
    }
    read_object(root_, "",
                {{"name", Need::kRequired, "\"name\": \"my-model\"",
                  [&](auto& n, auto& p) { read_string(n, p, spec.name); }},
                 {"precision", Need::kRequired, "\"precision\": \"bf16\"",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kPrecisions), spec.precision); }},
                 {"embedding", Need::kOptional, "",
                  [&](auto& n, auto& p) { spec.embedding = read_embedding(n, p); }},
                 {"layers", Need::kOptional, "",
                  [&](auto& n, auto& p) { spec.layers = read_layers(n, p); }},
                 {"criterion", Need::kOptional, "",
                  [&](auto& n, auto& p) { spec.criterion = read_criterion(n, p); }},
                 {"optimizer", Need::kOptional, "",
                  [&](auto& n, auto& p) { spec.optimizer = read_optimizer(n, p); }}});
    return spec;
  }

  // The structural issues plus validate_spec()'s, in document order.
  std::vector<SpecIssue> issues(const ModelSpec& spec) {
    for (SpecIssue& rule_issue : validate_spec(spec)) {
      if (already_reported(rule_issue.path)) continue;
      // Quote the value as written; a rule broken by a default names the key as missing.
      auto it = by_path_.find(rule_issue.path);
      rule_issue.value = it != by_path_.end() ? render_node(*it->second) : "(missing)";
      int64_t rank = rank_of_path(rule_issue.path);
      issues_.push_back({std::move(rule_issue), rank});
    }
    std::stable_sort(issues_.begin(), issues_.end(),
                     [](const Ranked& a, const Ranked& b) { return a.rank < b.rank; });
    std::vector<SpecIssue> out;
    for (Ranked& r : issues_) {
      if (r.issue.path.empty()) r.issue.path = "(root)";
      out.push_back(std::move(r.issue));
    }
    return out;
  }

 private:
  struct Ranked {
    SpecIssue issue;
    int64_t rank;
  };
  struct Place {
    int64_t rank;  // position in a pre-order walk of the document
    int64_t end;   // after all its descendants: where a missing key of this object would go
  };

  const JsonNode& root_;
  std::unordered_map<const JsonNode*, Place> places_;
  std::unordered_map<std::string, const JsonNode*> by_path_;  // first occurrence of each path
  int64_t next_rank_ = 0;
  std::unordered_set<std::string> reported_;  // paths with a structural issue
  std::vector<Ranked> issues_;

  void index(const JsonNode& node, const std::string& path) {
    Place& place = places_[&node];
    place.rank = next_rank_++;
    by_path_.emplace(path, &node);
    for (size_t i = 0; i < node.items.size(); ++i) {
      index(node.items[i], node.kind == JsonKind::kObject ? join(path, node.keys[i])
                                                          : fmt::format("{}[{}]", path, i));
    }
    places_[&node].end = next_rank_++;
  }

  int64_t rank_of_path(std::string path) const {
    for (bool exact = true;; exact = false) {
      if (auto it = by_path_.find(path); it != by_path_.end()) {
        const Place& place = places_.at(it->second);
        return exact ? place.rank : place.end;
      }
      if (path.empty()) return 0;
      size_t cut = path.find_last_of(".[");
      path = cut == std::string::npos ? "" : path.substr(0, cut);
    }
  }

  // True when `path` or an enclosing path ("layers[1]" for "layers[1].heads") has a structural
  // issue: one lookup per level, so a spec with thousands of issues stays linear.
  bool already_reported(std::string path) const {
    for (;;) {
      if (reported_.count(path) > 0) return true;
      if (path.empty()) return false;
      const size_t cut = path.find_last_of(".[");
      path = cut == std::string::npos ? "" : path.substr(0, cut);
    }
  }

  void issue(const JsonNode& node, const std::string& path, std::string message) {
    issues_.push_back(
        {SpecIssue{path, render_node(node), std::move(message)}, places_[&node].rank});
    reported_.insert(path);
  }

  void missing(const std::string& path, std::string message) {
    issues_.push_back({SpecIssue{path, "(missing)", std::move(message)}, rank_of_path(path)});
    reported_.insert(path);
  }

  bool expect(const JsonNode& n, const std::string& path, JsonKind kind, std::string_view what) {
    if (n.kind == kind) return true;
    issue(n, path, fmt::format("must be {}, not {}", what, kind_name(n)));
    return false;
  }

  void read_object(const JsonNode& node, const std::string& path, std::vector<Field> fields) {
    std::unordered_map<std::string_view, size_t> seen;  // key -> index of its first value
    for (size_t i = 0; i < node.items.size(); ++i) {
      const std::string& key = node.keys[i];
      const std::string at = join(path, key);
      if (auto [it, inserted] = seen.emplace(key, i); !inserted) {
        issue(node.items[i], at,
              fmt::format("duplicate key (first given as {}); remove one",
                          render_node(node.items[it->second])));
        continue;
      }
      auto field =
          std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == key; });
      if (field != fields.end()) {
        field->read(node.items[i], at);
        continue;
      }
      std::vector<std::string_view> names;
      for (const Field& f : fields) names.push_back(f.key);
      if (auto guess = closest_name(key, names)) {
        issue(node.items[i], at, fmt::format("unknown key; did you mean '{}'?", *guess));
      } else {
        issue(node.items[i], at,
              fmt::format("unknown key; expected one of: {}", fmt::join(names, ", ")));
      }
    }
    for (const Field& f : fields) {
      if (f.need == Need::kRequired && !seen.contains(f.key)) {
        missing(join(path, f.key), fmt::format("required; add e.g. {}", f.example));
      }
    }
  }

  bool read_int(const JsonNode& n, const std::string& path, int64_t& out) {
    if (n.kind == JsonKind::kInteger && n.integer_fits) {
      out = n.integer;
      return true;
    }
    if (n.kind == JsonKind::kInteger ||
        (n.kind == JsonKind::kFloat && n.text.find_first_of(".eE") == std::string::npos)) {
      issue(n, path, "is too large for a 64-bit integer");
    } else if (n.kind == JsonKind::kFloat) {
      if (std::trunc(n.number) == n.number && std::fabs(n.number) < 9e15) {
        issue(n, path, fmt::format("must be an integer; write {}", static_cast<int64_t>(n.number)));
      } else {
        issue(n, path, "must be an integer, not a fraction");
      }
    } else if (n.kind == JsonKind::kString && is_numeric_text(n.text)) {
      issue(n, path, "must be an integer, not a string; remove the quotes");
    } else {
      expect(n, path, JsonKind::kInteger, "an integer");
    }
    return false;
  }

  bool read_number(const JsonNode& n, const std::string& path, double& out) {
    if (n.kind == JsonKind::kFloat) {
      out = n.number;
    } else if (n.kind == JsonKind::kInteger) {
      out = n.integer_fits ? static_cast<double>(n.integer) : std::strtod(n.text.c_str(), nullptr);
    } else if (n.kind == JsonKind::kString && is_numeric_text(n.text)) {
      issue(n, path, "must be a number, not a string; remove the quotes");
      return false;
    } else {
      return expect(n, path, JsonKind::kFloat, "a number");
    }
    return true;
  }

  void read_bool(const JsonNode& n, const std::string& path, bool& out) {
    if (expect(n, path, JsonKind::kBool, "true or false")) out = n.boolean;
  }

  void read_string(const JsonNode& n, const std::string& path, std::string& out) {
    if (expect(n, path, JsonKind::kString, "a string")) out = n.text;
  }

  template <typename E, size_t N>
  static std::vector<E> all(const std::array<E, N>& values) {
    return {values.begin(), values.end()};
  }

  template <typename E>
  // `values` is a non-deduced context: E comes from `out`, so a braced list converts.
  bool read_enum(const JsonNode& n, const std::string& path, const std::vector<E>& values, E& out) {
    std::vector<std::string_view> names;
    for (E v : values) names.push_back(to_string(v));
    const std::string choices = fmt::format("\"{}\"", fmt::join(names, "\", \""));
    if (n.kind != JsonKind::kString) {
      issue(n, path, fmt::format("must be one of {}, not {}", choices, kind_name(n)));
      return false;
    }
    for (E v : values) {
      if (n.text == to_string(v)) {
        out = v;
        return true;
      }
    }
    auto guess = closest_name(n.text, names);
    issue(n, path,
          fmt::format("must be one of {}{}", choices,
                      guess ? fmt::format("; did you mean \"{}\"?", *guess) : ""));
    return false;
  }

  EmbeddingSpec read_embedding(const JsonNode& node, const std::string& path) {
    EmbeddingSpec e;
    if (!expect(node, path, JsonKind::kObject, "an object")) return e;
    bool sqrt_hidden = false;
    read_object(
        node, path,
        {{"vocab", Need::kRequired, "\"vocab\": 32000",
          [&](auto& n, auto& p) { read_int(n, p, e.vocab); }},
         {"hidden", Need::kRequired, "\"hidden\": 512",
          [&](auto& n, auto& p) { read_int(n, p, e.hidden); }},
         {"positions", Need::kOptional, "",
          [&](auto& n, auto& p) { read_enum(n, p, all(kPositionKinds), e.positions); }},
         {"positions_from", Need::kOptional, "",
          [&](auto& n, auto& p) { read_enum(n, p, all(kPositionsFromValues), e.positions_from); }},
         {"max_positions", Need::kOptional, "",
          [&](auto& n, auto& p) { read_int(n, p, e.max_positions); }},
         {"padding_idx", Need::kOptional, "",
          [&](auto& n, auto& p) { read_int(n, p, e.padding_idx); }},
         {"padding_rows", Need::kOptional, "",
          [&](auto& n, auto& p) { read_enum(n, p, all(kPaddingRowsValues), e.padding_rows); }},
         {"scale", Need::kOptional, "",
          [&](auto& n, auto& p) {
            if (n.kind == JsonKind::kString && n.text == "sqrt_hidden") {
              sqrt_hidden = true;
            } else if (n.kind == JsonKind::kString) {
              issue(n, p, "must be a number or \"sqrt_hidden\"");
            } else if (n.kind == JsonKind::kInteger || n.kind == JsonKind::kFloat) {
              read_number(n, p, e.scale);
            } else {
              issue(n, p, fmt::format("must be a number or \"sqrt_hidden\", not {}", kind_name(n)));
            }
          }},
         {"dropout", Need::kOptional, "", [&](auto& n, auto& p) { read_number(n, p, e.dropout); }},
         {"token_types", Need::kOptional, "",
          [&](auto& n, auto& p) { read_int(n, p, e.token_types); }},
         {"layernorm", Need::kOptional, "",
          [&](auto& n, auto& p) { read_bool(n, p, e.layernorm); }},
         {"layernorm_eps", Need::kOptional, "",
          [&](auto& n, auto& p) { read_number(n, p, e.layernorm_eps); }},
         {"tie_output", Need::kOptional, "",
          [&](auto& n, auto& p) { read_bool(n, p, e.tie_output); }}});
    if (sqrt_hidden && e.hidden > 0) e.scale = std::sqrt(static_cast<double>(e.hidden));
    return e;
  }

  std::vector<LayerStackSpec> read_layers(const JsonNode& node, const std::string& path) {
    std::vector<LayerStackSpec> layers;
    if (!expect(node, path, JsonKind::kArray, "an array of layer stacks")) return layers;
    for (size_t i = 0; i < node.items.size(); ++i) {
      layers.push_back(read_stack(node.items[i], fmt::format("{}[{}]", path, i)));
    }
    return layers;
  }

  LayerStackSpec read_stack(const JsonNode& node, const std::string& path) {
    LayerStackSpec s;
    if (!expect(node, path, JsonKind::kObject, "an object")) return s;
    bool causal_given = false;
    read_object(node, path,
                {{"type", Need::kRequired, "\"type\": \"encoder\"",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kLayerKinds), s.kind); }},
                 {"count", Need::kOptional, "", [&](auto& n, auto& p) { read_int(n, p, s.count); }},
                 {"hidden", Need::kRequired, "\"hidden\": 512",
                  [&](auto& n, auto& p) { read_int(n, p, s.hidden); }},
                 {"heads", Need::kRequired, "\"heads\": 8",
                  [&](auto& n, auto& p) { read_int(n, p, s.heads); }},
                 {"ffn", Need::kRequired, "\"ffn\": 2048",
                  [&](auto& n, auto& p) { read_int(n, p, s.ffn); }},
                 {"activation", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kActivations), s.activation); }},
                 {"norm", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kNormPlacements), s.norm); }},
                 {"eps", Need::kOptional, "", [&](auto& n, auto& p) { read_number(n, p, s.eps); }},
                 {"causal", Need::kOptional, "",
                  [&](auto& n, auto& p) {
                    causal_given = true;
                    read_bool(n, p, s.causal);
                  }},
                 {"final_norm", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_bool(n, p, s.final_norm); }},
                 {"attention", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kAttentionBackends), s.attention); }},
                 {"dropout", Need::kOptional, "",
                  [&](auto& n, auto& p) { s.dropout = read_dropout(n, p); }}});
    if (!causal_given) s.causal = s.kind == LayerKind::kDecoder;
    return s;
  }

  DropoutSpec read_dropout(const JsonNode& node, const std::string& path) {
    DropoutSpec d;
    if (!expect(node, path, JsonKind::kObject,
                "an object such as {\"attention\": 0.1, \"activation\": 0.1, \"hidden\": 0.1}")) {
      return d;
    }
    read_object(
        node, path,
        {{"attention", Need::kOptional, "",
          [&](auto& n, auto& p) { read_number(n, p, d.attention); }},
         {"activation", Need::kOptional, "",
          [&](auto& n, auto& p) { read_number(n, p, d.activation); }},
         {"hidden", Need::kOptional, "", [&](auto& n, auto& p) { read_number(n, p, d.hidden); }},
         {"attention_output", Need::kOptional, "", [&](auto& n, auto& p) {
            double v = 0;
            if (read_number(n, p, v)) d.attention_output = v;
          }}});
    return d;
  }

  CriterionSpec read_criterion(const JsonNode& node, const std::string& path) {
    CriterionSpec c;
    if (!expect(node, path, JsonKind::kObject, "an object")) return c;
    read_object(node, path,
                {{"type", Need::kRequired, "\"type\": \"cross_entropy\"",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kCriterionKinds), c.kind); }},
                 {"label_smoothing", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_number(n, p, c.label_smoothing); }},
                 {"ignore_index", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_int(n, p, c.ignore_index); }},
                 {"logits_chunk_mib", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_int(n, p, c.logits_chunk_mib); }},
                 {"input", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kCriterionInputs), c.input); }}});
    return c;
  }

  OptimizerSpec read_optimizer(const JsonNode& node, const std::string& path) {
    OptimizerSpec o;
    if (!expect(node, path, JsonKind::kObject, "an object")) return o;
    read_object(node, path,
                {{"type", Need::kRequired, "\"type\": \"adamw\"",
                  [&](auto& n, auto& p) { read_enum(n, p, all(kOptimizerKinds), o.kind); }},
                 {"lr", Need::kOptional, "", [&](auto& n, auto& p) { read_number(n, p, o.lr); }},
                 {"betas", Need::kOptional, "",
                  [&](auto& n, auto& p) {
                    if (n.kind != JsonKind::kArray) {
                      issue(
                          n, p,
                          fmt::format("must be an array of two numbers [beta1, beta2], not {}; try "
                                      "[0.9, 0.999]",
                                      kind_name(n)));
                      return;
                    }
                    if (n.items.size() != 2) {
                      issue(n, p, "must hold exactly two numbers [beta1, beta2]; try [0.9, 0.999]");
                      return;
                    }
                    read_number(n.items[0], p + "[0]", o.beta1);
                    read_number(n.items[1], p + "[1]", o.beta2);
                  }},
                 {"eps", Need::kOptional, "", [&](auto& n, auto& p) { read_number(n, p, o.eps); }},
                 {"weight_decay", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_number(n, p, o.weight_decay); }},
                 {"clip_norm", Need::kOptional, "",
                  [&](auto& n, auto& p) { read_number(n, p, o.clip_norm); }}});
    return o;
  }
};

std::string too_large_message() {
  return fmt::format(
      "larger than {} KiB; a model spec is a few KiB of JSON (a stack of identical "
      "layers is written once, with \"count\")",
      kMaxSpecBytes >> 10);
}

}  // namespace

ModelSpec parse_spec_string(std::string_view json, std::string_view source_name) {
  if (json.size() > kMaxSpecBytes) {
    throw SpecError(
        {SpecIssue{"(root)", fmt::format("({} bytes)", json.size()), too_large_message()}},
        std::string(source_name));
  }
  // An empty text gets our own message: nlohmann's wording for it differs between its versions.
  if (json.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    throw SpecError(
        {SpecIssue{"line 1, column 1", "(empty)",
                   "the spec is empty; write a JSON object such as "
                   "{\"name\": \"my-model\", \"precision\": \"bf16\", \"layers\": [...]}"}},
        std::string(source_name));
  }
  JsonParseResult tree = parse_json_tree(json);
  if (tree.error) throw SpecError({*tree.error}, std::string(source_name));
  SpecReader reader(*tree.root);
  ModelSpec spec = reader.read();
  std::vector<SpecIssue> issues = reader.issues(spec);
  if (!issues.empty()) throw SpecError(std::move(issues), std::string(source_name));
  return spec;
}

ModelSpec parse_spec_file(const std::filesystem::path& path) {
  auto fail = [&](std::string reason) -> ModelSpec {
    throw SpecError({SpecIssue{"file", quote_string(path.string(), 200), std::move(reason)}},
                    path.string());
  };
  // A FIFO, a device or a directory is refused before the first read: none can block or stream.
  ReadResult file = read_whole_file(path, kMaxSpecBytes, Symlinks::kFollow);
  switch (file.status) {
    case ReadStatus::kOk:
      return parse_spec_string(file.data, path.string());
    case ReadStatus::kNotRegular:
      return fail(file.reason + "; give the path of a JSON spec file");
    case ReadStatus::kTooLarge:
      return fail(too_large_message());
    case ReadStatus::kMissing:
    case ReadStatus::kOpenFailed:
    case ReadStatus::kReadFailed:
      break;
  }
  return fail(file.reason);
}

}  // namespace lightseq
