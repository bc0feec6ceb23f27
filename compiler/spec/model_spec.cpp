#include "compiler/spec/model_spec.h"

#include <fmt/format.h>

#include "compiler/errors.h"

namespace lightseq {
namespace {

// An enum holding a value outside its enumerators (a cast from a bad integer) is a bug in the
// caller; name the enum and the value instead of returning a made-up string.
[[noreturn]] void bad_enum(std::string_view type, int value) {
  throw InternalError(fmt::format("{} holds the invalid value {}", type, value));
}

}  // namespace

std::string_view to_string(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return "fp32";
    case Precision::kFp16:
      return "fp16";
    case Precision::kBf16:
      return "bf16";
  }
  bad_enum("Precision", static_cast<int>(p));
}

std::string_view to_string(NormPlacement n) {
  switch (n) {
    case NormPlacement::kPre:
      return "pre";
    case NormPlacement::kPost:
      return "post";
  }
  bad_enum("NormPlacement", static_cast<int>(n));
}

std::string_view to_string(AttentionBackend a) {
  switch (a) {
    case AttentionBackend::kUnfused:
      return "unfused";
    case AttentionBackend::kFused:
      return "fused";
    case AttentionBackend::kAuto:
      return "auto";
  }
  bad_enum("AttentionBackend", static_cast<int>(a));
}

std::string_view to_string(Activation a) {
  switch (a) {
    case Activation::kRelu:
      return "relu";
    case Activation::kGelu:
      return "gelu";
    case Activation::kGeluTanh:
      return "gelu_tanh";
  }
  bad_enum("Activation", static_cast<int>(a));
}

std::string_view to_string(PositionKind p) {
  switch (p) {
    case PositionKind::kSinusoidal:
      return "sinusoidal";
    case PositionKind::kLearned:
      return "learned";
  }
  bad_enum("PositionKind", static_cast<int>(p));
}

std::string_view to_string(PositionsFrom p) {
  switch (p) {
    case PositionsFrom::kIndex:
      return "index";
    case PositionsFrom::kTokens:
      return "tokens";
  }
  bad_enum("PositionsFrom", static_cast<int>(p));
}

std::string_view to_string(CriterionInput i) {
  switch (i) {
    case CriterionInput::kHidden:
      return "hidden";
    case CriterionInput::kLogits:
      return "logits";
  }
  bad_enum("CriterionInput", static_cast<int>(i));
}

std::string_view to_string(PaddingRows p) {
  switch (p) {
    case PaddingRows::kZero:
      return "zero";
    case PaddingRows::kEmbedded:
      return "embedded";
  }
  bad_enum("PaddingRows", static_cast<int>(p));
}

std::string_view to_string(LayerKind k) {
  switch (k) {
    case LayerKind::kEncoder:
      return "encoder";
    case LayerKind::kDecoder:
      return "decoder";
  }
  bad_enum("LayerKind", static_cast<int>(k));
}

std::string_view to_string(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::kAdam:
      return "adam";
    case OptimizerKind::kAdamW:
      return "adamw";
  }
  bad_enum("OptimizerKind", static_cast<int>(k));
}

std::string_view to_string(CriterionKind k) {
  switch (k) {
    case CriterionKind::kCrossEntropy:
      return "cross_entropy";
  }
  bad_enum("CriterionKind", static_cast<int>(k));
}

int element_bytes(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return 4;
    case Precision::kFp16:
    case Precision::kBf16:
      return 2;
  }
  bad_enum("Precision", static_cast<int>(p));
}

}  // namespace lightseq
