// layers.h — float64 forward and backward of one Transformer encoder layer and one decoder layer,
// exactly as PyTorch's nn.TransformerEncoderLayer / nn.TransformerDecoderLayer compute them
// (batch_first, dropout off), with parameters in PyTorch's layout. The judge of lightseq's layers;
// proven against central finite differences in tests/reference_test.cpp.
//
// Encoder, post-LN:  x1 = norm1(x + SA(x));        out = norm2(x1 + FF(x1))
//          pre-LN:   x1 = x + SA(norm1(x));        out = x1 + FF(norm2(x1))
// Decoder, post-LN:  x1 = norm1(x + SA(x));  x2 = norm2(x1 + CA(x1, mem));  out = norm3(x2 +
// FF(x2))
//          pre-LN:   x1 = x + SA(norm1(x));  x2 = x1 + CA(norm2(x1), mem); out = x2 + FF(norm3(x2))
// SA/CA: multi-head attention, q = xq Wq^T + bq, k = xkv Wk^T + bk, v = xkv Wv^T + bv with
// [Wq; Wk; Wv] = in_proj_weight [3H, H] (so a cross-attention's q rows are [0, H) and its kv rows
// [H, 3H)); scores q·k / sqrt(H/heads) per head; key j masked when key_padding[b, j] != 0 (true =
// pad) or, with causal, when j > i; softmax over keys; out_proj. FF(x) = linear2(act(linear1(x))),
// act = ReLU or exact (erf) GELU. LayerNorm: biased variance, eps inside the square root.
// Rows are batch-major: row = b·T + t.
//
// One deliberate difference: a query whose keys are all masked gets zero attention output
// (PyTorch's math path gives NaN there); it is what lightseq's softmax contract specifies.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "compiler/spec/model_spec.h"
#include "tests/reference/random.h"

namespace lightseq::ref {

using Vec = std::vector<double>;

struct AttentionParams {
  Vec in_proj_weight;   // [3H, H]
  Vec in_proj_bias;     // [3H]
  Vec out_proj_weight;  // [H, H]
  Vec out_proj_bias;    // [H]
};
struct LinearParams {
  Vec weight;  // [out, in]
  Vec bias;    // [out]
};
struct NormParams {
  Vec weight, bias;  // [H]
};

struct LayerConfig {
  int64_t hidden = 0, heads = 0, ffn = 0;
  NormPlacement norm = NormPlacement::kPost;  // kPre = PyTorch's norm_first=True
  Activation activation = Activation::kRelu;
  bool causal = false;  // causal self-attention (decoders: set it, as nn.Transformer does)
  double eps = 1e-5;
  // When set, the activations a fused implementation stores between kernels in this precision
  // (each sublayer's output and the FFN's input) are rounded to it, as the GPU layer does: the
  // judge then computes "the same computation at that precision" where a rounding flips a ReLU
  // (an element near 0 that rounds to the other side changes its gradient completely). Unset:
  // pure float64 (the finite-difference tests).
  std::optional<Precision> stored;
};

struct EncoderLayerParams {
  AttentionParams self_attn;
  LinearParams linear1, linear2;  // linear1 [F, H], linear2 [H, F]
  NormParams norm1, norm2;
};
struct EncoderLayerInput {
  int64_t batch = 0, seq = 0;
  Vec x;                             // [batch·seq, H]
  std::vector<uint8_t> key_padding;  // [batch, seq], nonzero = pad; empty = no padding mask
};
struct EncoderLayerResult {
  Vec out;                  // [batch·seq, H]
  Vec grad_x;               // empty when no output gradient was given
  EncoderLayerParams grad;  // gradients, same layout as the parameters
  Vec ffn_pre;              // [batch·seq, F]: linear1's output, the activation's input
};
// grad_out [batch·seq, H], or empty for the forward only.
EncoderLayerResult encoder_layer_reference(const LayerConfig& config,
                                           const EncoderLayerParams& params,
                                           const EncoderLayerInput& input, const Vec& grad_out);

struct DecoderLayerParams {
  AttentionParams self_attn, cross_attn;  // cross_attn = PyTorch's multihead_attn
  LinearParams linear1, linear2;
  NormParams norm1, norm2, norm3;
};
struct DecoderLayerInput {
  int64_t batch = 0, seq = 0, memory_seq = 0;
  Vec x;                                    // [batch·seq, H]
  Vec memory;                               // [batch·memory_seq, H] (encoder output)
  std::vector<uint8_t> key_padding;         // [batch, seq] or empty (tgt_key_padding_mask)
  std::vector<uint8_t> memory_key_padding;  // [batch, memory_seq] or empty
};
struct DecoderLayerResult {
  Vec out, grad_x, grad_memory;
  DecoderLayerParams grad;
  Vec ffn_pre;  // [batch·seq, F]: linear1's output, the activation's input
};
DecoderLayerResult decoder_layer_reference(const LayerConfig& config,
                                           const DecoderLayerParams& params,
                                           const DecoderLayerInput& input, const Vec& grad_out);

// ReLU's derivative jumps at 0: a pre-activation within a GEMM's rounding error of 0 may land on
// either side in an implementation, flipping that token's gradients. Shifts linear1's bias of
// every column holding a pre-activation within `band_rel`·max|pre| of 0 by the smallest multiple
// of 3 bands that clears the whole column with half a band to spare (the spare absorbs rounding
// the bias to the config's stored precision), then
// recomputes; returns the reference of the final parameters and the number of rounds that moved
// something. Throws std::runtime_error if that does not settle in 4 rounds.
template <class Result>
struct KinkFree {
  Result result;
  int rounds = 0;
};
using KinkFreeResult = KinkFree<EncoderLayerResult>;
KinkFreeResult move_off_relu_kink(const LayerConfig& config, EncoderLayerParams& params,
                                  const EncoderLayerInput& input, const Vec& grad_out,
                                  double band_rel);
KinkFree<DecoderLayerResult> move_off_relu_kink(const LayerConfig& config,
                                                DecoderLayerParams& params,
                                                const DecoderLayerInput& input, const Vec& grad_out,
                                                double band_rel);

// Random parameters in PyTorch-like ranges (weights ~ U(±1/sqrt(fan_in)), LayerNorm weight near 1,
// every bias nonzero so that a missing bias shows).
EncoderLayerParams random_encoder_params(const LayerConfig& config, Rng& rng);
DecoderLayerParams random_decoder_params(const LayerConfig& config, Rng& rng);

// Every parameter tensor with its PyTorch name ("self_attn.in_proj_weight", "linear1.bias", ...).
std::vector<std::pair<std::string, Vec*>> named_tensors(EncoderLayerParams& p);
std::vector<std::pair<std::string, Vec*>> named_tensors(DecoderLayerParams& p);

}  // namespace lightseq::ref
