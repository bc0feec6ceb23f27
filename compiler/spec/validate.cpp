// validate.cpp — every rule of docs/spec.md, checked on a built ModelSpec. The parser runs this
// after reading the JSON (and quotes values as written); the Python front end runs it directly.
#include "compiler/spec/validate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "compiler/spec/rules.h"

namespace lightseq {
namespace {

using namespace spec_detail;

std::string show(double x) { return fmt::format("{}", x); }
std::string show(int64_t x) { return std::to_string(x); }
std::string show(bool x) { return x ? "true" : "false"; }
std::string in_quotes(std::string_view s) { return fmt::format("\"{}\"", s); }

// The kernels take every real-valued field as a float (kF32 scalars in templates/*.sig.cuh,
// AdamArgs), so the rules on them hold for the float a value becomes: 1e-50 is 0 and 1e39 is inf
// in float32, 0.9999999999 is 1. (A double beyond float's range converts to inf, as on IEEE
// hardware; the cast itself would be undefined behaviour.)
float as_float32(double x) {
  constexpr double kRoundsToInf = 0x1.ffffffp127;  // FLT_MAX + half its ulp
  if (std::fabs(x) >= kRoundsToInf) return std::copysign(std::numeric_limits<float>::infinity(), x);
  return static_cast<float>(x);
}

bool probability(double p) {  // false for NaN
  const float f = as_float32(p);
  return p >= 0.0 && f < 1.0f;
}
bool positive_finite(double x) {
  const float f = as_float32(x);
  return std::isfinite(f) && f > 0.0f;
}
bool non_negative_finite(double x) {
  const float f = as_float32(x);
  return std::isfinite(f) && x >= 0.0;
}

// A rule's message for `x`, prefixed with why, when `x` passes the rule as a double but not as the
// float the kernels take: "becomes 0 in float32, the precision the kernels use (the smallest
// positive float32 is 1e-45); it must be ...".
std::string float32_message(double x, std::string_view message) {
  const float f = as_float32(x);
  std::string why;
  if (std::isfinite(x) && std::isinf(f)) {
    why = fmt::format("becomes inf in float32, the precision the kernels use (at most {})",
                      std::numeric_limits<float>::max());
  } else if (f == 0.0f && x != 0.0) {
    why = fmt::format(
        "becomes 0 in float32, the precision the kernels use (the smallest positive float32 is {})",
        std::numeric_limits<float>::denorm_min());
  } else if (f == 1.0f && x < 1.0) {
    why = "becomes 1 in float32, the precision the kernels use";
  }
  if (why.empty()) return std::string(message);
  return fmt::format("{}; it {}", why, message);
}

bool width_ok(int64_t w, int64_t max) {
  return w >= kVectorElements && w <= max && w % kVectorElements == 0;
}

// The nearest multiple of 8 in [8, max], rounding up.
int64_t nearest_width(int64_t w, int64_t max) {
  if (w < kVectorElements) return kVectorElements;
  if (w > max) return max;
  return (w + kVectorElements - 1) / kVectorElements * kVectorElements;
}

// The head count nearest `heads` for which hidden / count is a multiple of 8 and at most 256
// (ties: more heads). `hidden` must be width_ok, so hidden / 8 heads always qualifies.
int64_t nearest_heads(int64_t hidden, int64_t heads) {
  heads = std::clamp<int64_t>(heads, 0, hidden);
  int64_t best = hidden / kVectorElements;
  for (int64_t d = 1; d <= hidden / kVectorElements; ++d) {
    if (hidden % d != 0) continue;
    int64_t head_dim = hidden / d;
    if (head_dim % kVectorElements != 0 || head_dim > kMaxHeadDim) continue;
    if (std::llabs(d - heads) <= std::llabs(best - heads)) best = d;
  }
  return best;
}

class Validator {
 public:
  std::vector<SpecIssue> issues;

  void add(std::string path, std::string value, std::string message) {
    issues.push_back(SpecIssue{std::move(path), std::move(value), std::move(message)});
  }

  void check_range(const std::string& path, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
      add(path, show(v), fmt::format("must be in [{}, {}]; try {}", lo, hi, v < lo ? lo : hi));
    }
  }

  void check_width(const std::string& path, int64_t v, int64_t max) {
    if (v < kVectorElements || v > max) {
      add(path, show(v),
          fmt::format("must be in [{}, {}]; try {}", kVectorElements, max, nearest_width(v, max)));
    } else if (v % kVectorElements != 0) {
      add(path, show(v),
          fmt::format(
              "must be a multiple of 8 (kernels move 16-byte vectors of 8 elements); try {}",
              nearest_width(v, max)));
    }
  }

  void check_probability(const std::string& path, double p) {
    if (!probability(p)) {
      add(path, show(p), float32_message(p, "must be a probability in [0, 1); 0 turns it off"));
    }
  }

  void check_eps(const std::string& path, double eps) {
    if (!positive_finite(eps)) {
      add(path, show(eps),
          float32_message(eps,
                          "must be a positive finite number (LayerNorm divides by "
                          "sqrt(variance + eps)); try 1e-5"));
    }
  }

  void check_name(const std::string& name) {
    std::string fixed;
    for (char c : name) {
      bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
      if (fixed.size() < kMaxNameLength) fixed += ok ? c : '-';
    }
    while (!fixed.empty() && !std::isalnum(static_cast<unsigned char>(fixed.front()))) {
      fixed.erase(fixed.begin());
    }
    if (fixed.empty()) fixed = "model";
    if (fixed != name) {
      add("name", quote_string(name),
          fmt::format("must be 1 to {} letters, digits, '.', '_' or '-', starting with a letter or "
                      "digit (it is used in file names); try \"{}\"",
                      kMaxNameLength, fixed));
    }
  }

  void check_embedding(const EmbeddingSpec& e) {
    check_range("embedding.vocab", e.vocab, 1, kMaxVocab);
    check_width("embedding.hidden", e.hidden, kMaxHidden);
    if (e.positions != PositionKind::kSinusoidal && e.positions != PositionKind::kLearned) {
      add("embedding.positions", show(static_cast<int64_t>(e.positions)),
          "must be \"sinusoidal\" or \"learned\"");
    }
    check_range("embedding.max_positions", e.max_positions, 1, kMaxPositions);
    if (e.positions_from == PositionsFrom::kTokens && e.padding_idx < 0) {
      add("embedding.positions_from", "\"tokens\"",
          "counts positions over the non-padding tokens, so it needs a padding token: set "
          "\"padding_idx\", or use \"index\"");
    }
    if (e.padding_rows == PaddingRows::kEmbedded && e.padding_idx < 0) {
      add("embedding.padding_rows", "\"embedded\"",
          "says how a padding token is embedded, so it needs one: set \"padding_idx\", or "
          "remove \"padding_rows\"");
    } else if (e.padding_rows != PaddingRows::kZero && e.padding_rows != PaddingRows::kEmbedded) {
      add("embedding.padding_rows", show(static_cast<int64_t>(e.padding_rows)),
          "must be \"zero\" or \"embedded\"");
    }
    int64_t vocab = (e.vocab >= 1 && e.vocab <= kMaxVocab) ? e.vocab : kMaxVocab;
    if (e.padding_idx < -1 || e.padding_idx >= vocab) {
      add("embedding.padding_idx", show(e.padding_idx),
          fmt::format("must be -1 (no padding token) or a token id in [0, {}); try -1", vocab));
    }
    if (!positive_finite(e.scale)) {
      add("embedding.scale", show(e.scale),
          float32_message(e.scale, "must be a positive finite number or \"sqrt_hidden\"; try 1"));
    }
    check_probability("embedding.dropout", e.dropout);
    check_range("embedding.token_types", e.token_types, 0, kMaxTokenTypes);
    check_eps("embedding.layernorm_eps", e.layernorm_eps);
  }

  // `width`: the residual width every stack must have (0 when no valid reference exists yet);
  // `width_source` names where it comes from.
  void check_stack(const LayerStackSpec& s, const std::string& at, int64_t width,
                   const std::string& width_source) {
    check_range(at + ".count", s.count, 1, kMaxCount);
    check_width(at + ".hidden", s.hidden, kMaxHidden);
    const bool hidden_ok = width_ok(s.hidden, kMaxHidden);
    if (hidden_ok && width != 0 && s.hidden != width) {
      add(at + ".hidden", show(s.hidden),
          fmt::format("must equal {} = {} (all stacks share one residual stream); try {}",
                      width_source, width, width));
    }
    check_heads(s, at, hidden_ok);
    check_width(at + ".ffn", s.ffn, kMaxFfn);
    if (std::ranges::find(kActivations, s.activation) == kActivations.end()) {
      std::vector<std::string_view> names;
      for (Activation a : kActivations) names.push_back(to_string(a));
      add(at + ".activation", show(static_cast<int64_t>(s.activation)),
          fmt::format("must be one of \"{}\"", fmt::join(names, "\", \"")));
    }
    if (s.norm != NormPlacement::kPre && s.norm != NormPlacement::kPost) {
      add(at + ".norm", show(static_cast<int64_t>(s.norm)), "must be \"pre\" or \"post\"");
    }
    check_eps(at + ".eps", s.eps);
    if (s.kind == LayerKind::kDecoder && !s.causal) {
      add(at + ".causal", show(s.causal),
          "a decoder's self-attention is always causal; remove \"causal\" or set it to true (for "
          "bidirectional attention use \"type\": \"encoder\")");
    }
    check_probability(at + ".dropout.attention", s.dropout.attention);
    check_probability(at + ".dropout.activation", s.dropout.activation);
    check_probability(at + ".dropout.hidden", s.dropout.hidden);
    if (s.dropout.attention_output) {
      check_probability(at + ".dropout.attention_output", *s.dropout.attention_output);
    }
  }

  void check_heads(const LayerStackSpec& s, const std::string& at, bool hidden_ok) {
    const std::string path = at + ".heads";
    if (!hidden_ok) {
      if (s.heads < 1) add(path, show(s.heads), "must be at least 1");
      return;
    }
    const int64_t fix = nearest_heads(s.hidden, s.heads);
    const std::string heads_text = fmt::format("{} head{}", s.heads, s.heads == 1 ? "" : "s");
    if (s.heads < 1) {
      add(path, show(s.heads), fmt::format("must be at least 1; try {}", fix));
    } else if (s.hidden % s.heads != 0) {
      add(path, show(s.heads),
          fmt::format("hidden {} is not divisible by {}; try {}", s.hidden, heads_text, fix));
    } else if (s.head_dim() % kVectorElements != 0) {
      add(path, show(s.heads),
          fmt::format("head_dim = hidden {} / {} = {} must be a multiple of 8 (kernels move "
                      "16-byte vectors); try {}",
                      s.hidden, heads_text, s.head_dim(), fix));
    } else if (s.head_dim() > kMaxHeadDim) {
      add(path, show(s.heads),
          fmt::format("head_dim = hidden {} / {} = {} exceeds {}, the largest head the "
                      "attention kernels support; try {}",
                      s.hidden, heads_text, s.head_dim(), kMaxHeadDim, fix));
    }
  }

  // The fused attention kernels' limits (templates/flash_attention.cuh).
  void check_fused_attention(const ModelSpec& spec, const LayerStackSpec& s,
                             const std::string& at) {
    if (spec.precision == Precision::kFp32) {
      add(at + ".attention", "\"fused\"",
          "the fused attention runs fp16 and bf16 (tensor cores); use \"unfused\" for an fp32 "
          "model");
    }
    const int64_t d = s.head_dim();
    if (s.heads > 0 && s.hidden % s.heads == 0 && !fused_head_dim_ok(d)) {
      add(at + ".attention", "\"fused\"",
          fmt::format("the fused attention takes head_dim (hidden / heads = {}) a multiple of {} "
                      "up to {}; use \"unfused\"",
                      d, kFusedHeadDimMultiple, kFusedMaxHeadDim));
    }
  }

  void check_layers(const ModelSpec& spec) {
    if (spec.layers.size() > static_cast<size_t>(kMaxStacks)) {
      add("layers", fmt::format("[{} stacks]", spec.layers.size()),
          fmt::format("at most {} stacks; give a stack of identical layers once, with \"count\": "
                      "N (up to {})",
                      kMaxStacks, kMaxCount));
    }
    int64_t width = 0;
    std::string width_source;
    if (spec.embedding && width_ok(spec.embedding->hidden, kMaxHidden)) {
      width = spec.embedding->hidden;
      width_source = "embedding.hidden";
    }
    std::optional<size_t> first_decoder;
    bool seen_encoder = false;
    for (size_t i = 0; i < spec.layers.size(); ++i) {
      const LayerStackSpec& s = spec.layers[i];
      const std::string at = fmt::format("layers[{}]", i);
      if (s.kind == LayerKind::kEncoder) {
        if (first_decoder) {
          add(at + ".type", in_quotes("encoder"),
              fmt::format("encoder stacks must come before the first decoder stack (layers[{}]), "
                          "whose cross-attention reads the encoder's output; move this stack "
                          "before it",
                          *first_decoder));
        }
        seen_encoder = true;
      } else if (s.kind == LayerKind::kDecoder) {
        if (!seen_encoder && !first_decoder) {
          add(at + ".type", in_quotes("decoder"),
              "a decoder cross-attends to the output of an encoder stack, and none comes before "
              "it; add an encoder stack first, or for a decoder-only (GPT-style) model use "
              "\"type\": \"encoder\" with \"causal\": true");
        }
        if (!first_decoder) first_decoder = i;
      } else {
        add(at + ".type", show(static_cast<int64_t>(s.kind)), "must be \"encoder\" or \"decoder\"");
      }
      check_stack(s, at, width, width_source);
      if (s.attention == AttentionBackend::kFused) check_fused_attention(spec, s, at);
      if (s.final_norm) {
        for (size_t j = i + 1; j < spec.layers.size(); ++j) {
          if (spec.layers[j].kind == s.kind) {
            add(at + ".final_norm", "true",
                fmt::format("the final LayerNorm follows the last {} stack, and layers[{}] comes "
                            "after this one; set it there instead",
                            to_string(s.kind), j));
            break;
          }
        }
      }
      if (width == 0 && width_ok(s.hidden, kMaxHidden)) {
        width = s.hidden;
        width_source = at + ".hidden";
      }
    }
  }

  void check_criterion(const ModelSpec& spec) {
    const CriterionSpec& c = *spec.criterion;
    if (c.kind != CriterionKind::kCrossEntropy) {
      add("criterion.type", show(static_cast<int64_t>(c.kind)), "must be \"cross_entropy\"");
    }
    if (!spec.embedding) {
      add("criterion", "{...}",
          "the cross-entropy is over the vocabulary, which the \"embedding\" section defines "
          "(vocab, output projection); add an embedding or remove the criterion");
    }
    check_probability("criterion.label_smoothing", c.label_smoothing);
    check_range("criterion.ignore_index", c.ignore_index, kMinIndex, kMaxIndex);
    check_range("criterion.logits_chunk_mib", c.logits_chunk_mib, 1, int64_t{1} << 20);
    if (c.input != CriterionInput::kHidden && c.input != CriterionInput::kLogits) {
      add("criterion.input", show(static_cast<int64_t>(c.input)),
          "must be \"hidden\" or \"logits\"");
    }
  }

  void check_optimizer(const OptimizerSpec& o) {
    if (o.kind != OptimizerKind::kAdam && o.kind != OptimizerKind::kAdamW) {
      add("optimizer.type", show(static_cast<int64_t>(o.kind)), "must be \"adam\" or \"adamw\"");
    }
    if (!positive_finite(o.lr)) {
      add("optimizer.lr", show(o.lr),
          float32_message(o.lr, "must be a positive finite number; try 1e-3"));
    }
    if (!probability(o.beta1)) {
      add("optimizer.betas[0]", show(o.beta1),
          float32_message(o.beta1, "must be in [0, 1); try 0.9"));
    }
    if (!probability(o.beta2)) {
      add("optimizer.betas[1]", show(o.beta2),
          float32_message(o.beta2, "must be in [0, 1); try 0.999"));
    }
    if (!positive_finite(o.eps)) {
      add("optimizer.eps", show(o.eps),
          float32_message(
              o.eps, "must be a positive finite number (Adam divides by sqrt(v) + eps); try 1e-8"));
    }
    if (!non_negative_finite(o.weight_decay)) {
      add("optimizer.weight_decay", show(o.weight_decay),
          float32_message(o.weight_decay,
                          "must be a finite number >= 0; 0 turns weight decay off"));
    }
    if (!non_negative_finite(o.clip_norm)) {
      add("optimizer.clip_norm", show(o.clip_norm),
          float32_message(o.clip_norm,
                          "must be a finite number >= 0 (the largest global gradient norm); 0 "
                          "turns clipping off; try 1.0"));
    }
  }
};

}  // namespace

std::vector<SpecIssue> validate_spec(const ModelSpec& spec) {
  Validator v;
  v.check_name(spec.name);
  if (spec.precision != Precision::kFp32 && spec.precision != Precision::kFp16 &&
      spec.precision != Precision::kBf16) {
    v.add("precision", show(static_cast<int64_t>(spec.precision)),
          "must be \"fp32\", \"fp16\" or \"bf16\"");
  }
  if (spec.embedding) v.check_embedding(*spec.embedding);
  if (spec.layers.empty() && !spec.embedding && !spec.optimizer) {
    v.add("layers", "[]",
          "a spec needs at least one layer stack, an embedding or an optimizer; add a stack such "
          "as {\"type\": \"encoder\", \"hidden\": 512, \"heads\": 8, \"ffn\": 2048}");
  }
  v.check_layers(spec);
  if (spec.criterion) v.check_criterion(spec);
  if (spec.optimizer) v.check_optimizer(*spec.optimizer);
  return std::move(v.issues);
}

}  // namespace lightseq
