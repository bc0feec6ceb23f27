// enums.cuh — the compile-time switches of the kernel templates (docs/kernels.md). The code
// generator spells them in name expressions (`lightseq::kern::Norm::kOn`), so enumerator names are
// part of the contract. Compiles as device code and as plain host C++.
#pragma once

#include "common/config.cuh"

namespace lightseq::kern {

// ln_fwd: what is added to the residual before the norm.
enum class Branch : int { kNone = 0, kBiasDropoutResidual = 1 };
// Whether a LayerNorm is applied (ln_fwd, ln_bwd, embedding).
enum class Norm : int { kOff = 0, kOn = 1 };
// Whether a dropout site is active; kOff skips the Philox draws entirely.
enum class Drop : int { kOff = 0, kOn = 1 };
// ln_bwd: whether a residual gradient is added into grad_z.
enum class ResidualIn : int { kOff = 0, kOn = 1 };
// ln_bwd: whether grad_branch (and its bias-gradient partials) is produced.
enum class BranchOut : int { kOff = 0, kOn = 1 };
// Activation of bias_act_dropout. kGelu is the exact erf form (PyTorch's default).
enum class Act : int { kNone = 0, kRelu = 1, kGelu = 2 };
// split_heads: whether the QKV bias is added.
enum class BiasAdd : int { kOff = 0, kOn = 1 };
// merge_heads: whether column sums (a bias gradient) are written as partials.
enum class BiasGrad : int { kOff = 0, kOn = 1 };
// Attention mask, a bit set: kPadding (key_padding) | kCausal.
enum class Mask : int { kNone = 0, kPadding = 1, kCausal = 2, kPaddingCausal = 3 };
// Position embedding of embedding_fwd/bwd. kNone: no position term.
enum class Pos : int { kNone = 0, kSinusoidal = 1, kLearned = 2 };
// adam_kernel: L2 regularisation folded into the gradient (kAdam) or decoupled decay (kAdamW).
enum class AdamMode : int { kAdam = 0, kAdamW = 1 };
// Whether a result overwrites (`=`) or is added to (`+=`) its output.
enum class Accumulate : int { kOverwrite = 0, kAdd = 1 };

LIGHTSEQ_HD constexpr bool has_padding(Mask m) { return (static_cast<int>(m) & 1) != 0; }
LIGHTSEQ_HD constexpr bool has_causal(Mask m) { return (static_cast<int>(m) & 2) != 0; }

}  // namespace lightseq::kern
