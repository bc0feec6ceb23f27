// model_spec.h — the validated description of a model, as the compiler sees it.
//
// A ModelSpec is produced by the JSON front end (frontends/spec/parse.h) or by the Python front
// end, and is always validated before the compiler sees it: every field below already satisfies
// the rules documented in docs/spec.md. Batch size and sequence length are not part of a spec:
// they are run-time arguments, so a new shape never recompiles.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace lightseq {

enum class Precision { kFp32, kFp16, kBf16 };
enum class NormPlacement { kPre, kPost };
// kGelu: the exact (erf) GELU; kGeluTanh: its tanh approximation (GPT-2).
enum class Activation { kRelu, kGelu, kGeluTanh };
inline constexpr std::array kActivations{Activation::kRelu, Activation::kGelu,
                                         Activation::kGeluTanh};
enum class PositionKind { kSinusoidal, kLearned };
// Which position a token gets: its index in the sequence (0, 1, ...), or (fairseq's
// make_positions) padding_idx + the count of non-padding tokens up to and including it.
enum class PositionsFrom { kIndex, kTokens };
// What a padding token (padding_idx) embeds to: zero rows (fairseq: nothing flows through padding,
// positions and LayerNorm included), or embedded like any other token (torch.nn.Embedding, BERT,
// RoBERTa: the padding token's table row, and with positions from tokens the padding position's
// row, get no gradient; everything else does).
enum class PaddingRows { kZero, kEmbedded };
enum class LayerKind { kEncoder, kDecoder };
// How a stack's attention runs (compiler/planner/attention_backend.h): the unfused GEMM + softmax
// path, the fused kernels of templates/flash_attention.cuh (fp16/bf16, head_dim a multiple of
// 16 up to 128), or per call by a measured rule on its lengths (both planned; unfused alone where
// the fused kernels cannot run).
enum class AttentionBackend { kUnfused, kFused, kAuto };
enum class OptimizerKind { kAdam, kAdamW };
enum class CriterionKind { kCrossEntropy };
// What the criterion reads: the last stack's output, projected to the vocabulary in chunks by its
// own GEMM (the fused linear + cross-entropy), or logits computed elsewhere (a loss on its own).
enum class CriterionInput { kHidden, kLogits };

std::string_view to_string(Precision p);         // "fp32", "fp16", "bf16"
std::string_view to_string(NormPlacement n);     // "pre", "post"
std::string_view to_string(Activation a);        // "relu", "gelu", "gelu_tanh"
std::string_view to_string(PositionKind p);      // "sinusoidal", "learned"
std::string_view to_string(PositionsFrom p);     // "index", "tokens"
std::string_view to_string(PaddingRows p);       // "zero", "embedded"
std::string_view to_string(LayerKind k);         // "encoder", "decoder"
std::string_view to_string(AttentionBackend a);  // "unfused", "fused", "auto"
std::string_view to_string(OptimizerKind k);     // "adam", "adamw"
std::string_view to_string(CriterionKind k);     // "cross_entropy"
std::string_view to_string(CriterionInput i);    // "hidden", "logits"

// Every value of each spec enum, in the order messages list them: the parser reads its choices
// here, and Python (the binding's spec_choices()) its argument checks.
inline constexpr std::array kPrecisions{Precision::kFp32, Precision::kFp16, Precision::kBf16};
inline constexpr std::array kNormPlacements{NormPlacement::kPre, NormPlacement::kPost};
inline constexpr std::array kPositionKinds{PositionKind::kSinusoidal, PositionKind::kLearned};
inline constexpr std::array kPositionsFromValues{PositionsFrom::kIndex, PositionsFrom::kTokens};
inline constexpr std::array kPaddingRowsValues{PaddingRows::kZero, PaddingRows::kEmbedded};
inline constexpr std::array kLayerKinds{LayerKind::kEncoder, LayerKind::kDecoder};
inline constexpr std::array kAttentionBackends{AttentionBackend::kUnfused, AttentionBackend::kFused,
                                               AttentionBackend::kAuto};
inline constexpr std::array kOptimizerKinds{OptimizerKind::kAdam, OptimizerKind::kAdamW};
inline constexpr std::array kCriterionKinds{CriterionKind::kCrossEntropy};
inline constexpr std::array kCriterionInputs{CriterionInput::kHidden, CriterionInput::kLogits};
// Their names (to_string of each value, in that order): the command line's and Python's choices.
template <typename E, size_t N>
std::vector<std::string> names_of(const std::array<E, N>& values) {
  std::vector<std::string> out;
  for (E v : values) out.emplace_back(to_string(v));
  return out;
}

// Bytes of one element of the model's activations and parameters.
int element_bytes(Precision p);

struct EmbeddingSpec {
  int64_t vocab = 0;
  int64_t hidden = 0;
  PositionKind positions = PositionKind::kSinusoidal;
  PositionsFrom positions_from = PositionsFrom::kIndex;
  int64_t max_positions = 1024;
  int64_t padding_idx = -1;  // -1: no padding token
  PaddingRows padding_rows = PaddingRows::kZero;
  double scale = 1.0;       // token embeddings are multiplied by this (sqrt(hidden) in Fairseq)
  double dropout = 0.0;     // default probability; dropout is compiled in iff > 0
  int64_t token_types = 0;  // rows of a token-type table added to the sum (BERT: 2); 0: none
  bool layernorm = false;   // LayerNorm after the sum (BERT), before dropout
  double layernorm_eps = 1e-5;
  bool tie_output = true;  // the output projection reuses the token embedding matrix
  bool operator==(const EmbeddingSpec&) const = default;
};

struct DropoutSpec {
  double attention = 0.0;   // on attention probabilities
  double activation = 0.0;  // after the FFN activation
  double hidden = 0.0;      // on each sublayer's output, before the residual add
  // On the attention sublayers' outputs instead of `hidden` (DistilBERT has none there); unset:
  // `hidden`. A site of its own kind only when set.
  std::optional<double> attention_output = std::nullopt;
  double attention_output_p() const { return attention_output.value_or(hidden); }
  bool operator==(const DropoutSpec&) const = default;
};

// A stack of `count` identical layers.
struct LayerStackSpec {
  LayerKind kind = LayerKind::kEncoder;
  int64_t count = 1;
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t ffn = 0;
  Activation activation = Activation::kRelu;
  NormPlacement norm = NormPlacement::kPost;
  double eps = 1e-5;
  bool causal = false;  // causal self-attention (always true for decoders; GPT-style encoders)
  // A LayerNorm after the stack's last layer (pre-LN models: GPT-2's ln_f, Fairseq's
  // encoder/decoder_normalize_before); only the last stack of its kind has one.
  bool final_norm = false;
  AttentionBackend attention = AttentionBackend::kUnfused;
  DropoutSpec dropout;
  int64_t head_dim() const { return heads > 0 ? hidden / heads : 0; }
  bool operator==(const LayerStackSpec&) const = default;
};

struct CriterionSpec {
  CriterionKind kind = CriterionKind::kCrossEntropy;
  double label_smoothing = 0.0;
  int64_t ignore_index = -100;  // targets equal to this contribute no loss and no gradient
  // The fused linear + cross-entropy computes the logits (and their gradient, as large) over
  // chunks of token rows, each chunk's logits at most this many MiB.
  int64_t logits_chunk_mib = 256;
  CriterionInput input = CriterionInput::kHidden;
  bool operator==(const CriterionSpec&) const = default;
};

struct OptimizerSpec {
  OptimizerKind kind = OptimizerKind::kAdamW;
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  // > 0: gradients are scaled by min(1, clip_norm / (‖g‖₂ + 1e-6)) over all parameters first
  // (torch.nn.utils.clip_grad_norm_); 0: no clipping.
  double clip_norm = 0.0;
  bool operator==(const OptimizerSpec&) const = default;
};

struct ModelSpec {
  std::string name;
  Precision precision = Precision::kFp32;
  std::optional<EmbeddingSpec> embedding;
  std::vector<LayerStackSpec> layers;
  std::optional<CriterionSpec> criterion;
  std::optional<OptimizerSpec> optimizer;
  bool operator==(const ModelSpec&) const = default;
};

}  // namespace lightseq
