// enums.cuh — the compile-time switches of the kernel templates (docs/kernels.md). Each enum is
// declared once, as a list of (enumerator, label): the list makes the enum class and, on the
// host, its table (EnumInfo) from which the code generator spells name expressions
// (`lightseq::kern::Norm::kOn`) and kernel labels (`norm=on`). Enumerator names are part of the
// contract. Compiles as device code and as plain host C++.
#pragma once

#include "common/config.cuh"

// X(enumerator, label) lists; values are the positions (0, 1, ...).
// ln_fwd: what is added to the residual before the norm.
#define LIGHTSEQ_ENUM_Branch(X) X(kNone, "none") X(kBiasDropoutResidual, "bias_dropout_residual")
// Whether a LayerNorm is applied (ln_fwd, ln_bwd, embedding).
#define LIGHTSEQ_ENUM_Norm(X) X(kOff, "off") X(kOn, "on")
// Whether a dropout site is active; kOff skips the Philox draws entirely.
#define LIGHTSEQ_ENUM_Drop(X) X(kOff, "off") X(kOn, "on")
// ln_bwd: whether a residual gradient is added into grad_z.
#define LIGHTSEQ_ENUM_ResidualIn(X) X(kOff, "off") X(kOn, "on")
// ln_bwd: whether grad_branch (and its bias-gradient partials) is produced.
#define LIGHTSEQ_ENUM_BranchOut(X) X(kOff, "off") X(kOn, "on")
// Activation of bias_act_dropout. kGelu is the exact erf form (PyTorch's default), kGeluTanh the
// tanh approximation (GPT-2's "gelu_new", nn.GELU(approximate="tanh")).
#define LIGHTSEQ_ENUM_Act(X) \
  X(kNone, "none") X(kRelu, "relu") X(kGelu, "gelu") X(kGeluTanh, "gelu_tanh")
// bias_act_dropout_bwd: where the activation's derivative is taken from: its input x + bias, or
// (ReLU only) the forward's output, positive exactly where x + bias was and the entry was kept, so
// that the pre-activation need not be saved and no dropout mask is regenerated (PyTorch's ReLU
// backward reads its output too).
#define LIGHTSEQ_ENUM_ActFrom(X) X(kInput, "input") X(kOutput, "output")
// split_heads: whether the QKV bias is added.
#define LIGHTSEQ_ENUM_BiasAdd(X) X(kOff, "off") X(kOn, "on")
// merge_heads: whether column sums (a bias gradient) are written as partials.
#define LIGHTSEQ_ENUM_BiasGrad(X) X(kOff, "off") X(kOn, "on")
// Attention mask, a bit set: kPadding (key_padding) | kCausal.
#define LIGHTSEQ_ENUM_Mask(X) \
  X(kNone, "none") X(kPadding, "padding") X(kCausal, "causal") X(kPaddingCausal, "padding+causal")
// Position embedding of embedding_fwd/bwd. kNone: no position term.
#define LIGHTSEQ_ENUM_Pos(X) X(kNone, "none") X(kSinusoidal, "sinusoidal") X(kLearned, "learned")
// Which position a token of embedding_fwd/bwd has: its index t, or padding_idx + the count of
// non-padding tokens of its sequence up to and including it (fairseq's make_positions).
#define LIGHTSEQ_ENUM_PosFrom(X) X(kIndex, "index") X(kTokens, "tokens")
// What the embedding gradient's rows are grouped by (embedding_grad.cuh): the token (the token
// table's gradient), the position (a learned position table's) or the token type (BERT's
// token-type table's).
#define LIGHTSEQ_ENUM_Key(X) X(kToken, "token") X(kPosition, "position") X(kType, "type")
// adam_kernel: L2 regularisation folded into the gradient (kAdam) or decoupled decay (kAdamW).
#define LIGHTSEQ_ENUM_AdamMode(X) X(kAdam, "adam") X(kAdamW, "adamw")
// Whether a result overwrites (`=`) or is added to (`+=`) its output.
#define LIGHTSEQ_ENUM_Accumulate(X) X(kOverwrite, "overwrite") X(kAdd, "add")

// Every enum of the templates, by name.
#define LIGHTSEQ_ENUMS(E) \
  E(Branch)               \
  E(Norm)                 \
  E(Drop)                 \
  E(ResidualIn)           \
  E(BranchOut)            \
  E(Act)                  \
  E(ActFrom) E(BiasAdd) E(BiasGrad) E(Mask) E(Pos) E(PosFrom) E(Key) E(AdamMode) E(Accumulate)

namespace lightseq::kern {

#define LIGHTSEQ_ENUMERATOR(name, label) name,
#define LIGHTSEQ_DECLARE_ENUM(E) enum class E : int { LIGHTSEQ_ENUM_##E(LIGHTSEQ_ENUMERATOR) };
LIGHTSEQ_ENUMS(LIGHTSEQ_DECLARE_ENUM)
#undef LIGHTSEQ_DECLARE_ENUM
#undef LIGHTSEQ_ENUMERATOR

LIGHTSEQ_HD constexpr Mask mask_of(bool padding, bool causal) {
  return static_cast<Mask>((padding ? 1 : 0) | (causal ? 2 : 0));
}
LIGHTSEQ_HD constexpr bool has_padding(Mask m) { return (static_cast<int>(m) & 1) != 0; }
LIGHTSEQ_HD constexpr bool has_causal(Mask m) { return (static_cast<int>(m) & 2) != 0; }
static_assert(static_cast<int>(Mask::kPaddingCausal) == 3, "Mask is a bit set");

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
namespace lightseq::kern::sig {

// An enum's enumerators and labels, in value order (value = index).
struct EnumInfo {
  const char* type;           // "Norm"
  const char* const* names;   // "kOff", "kOn"
  const char* const* labels;  // "off", "on"
  int count;
};

#define LIGHTSEQ_ENUM_NAME(name, label) #name,
#define LIGHTSEQ_ENUM_LABEL(name, label) label,
#define LIGHTSEQ_ENUM_INFO(E)                                                             \
  inline constexpr const char* k##E##Names[] = {LIGHTSEQ_ENUM_##E(LIGHTSEQ_ENUM_NAME)};   \
  inline constexpr const char* k##E##Labels[] = {LIGHTSEQ_ENUM_##E(LIGHTSEQ_ENUM_LABEL)}; \
  inline constexpr EnumInfo k##E##Info{                                                   \
      #E, k##E##Names, k##E##Labels, static_cast<int>(sizeof(k##E##Names) / sizeof(const char*))};
LIGHTSEQ_ENUMS(LIGHTSEQ_ENUM_INFO)
#undef LIGHTSEQ_ENUM_INFO
#undef LIGHTSEQ_ENUM_LABEL
#undef LIGHTSEQ_ENUM_NAME

}  // namespace lightseq::kern::sig
#endif
