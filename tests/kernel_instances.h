// kernel_instances.h — shorthands for the kernel tests: one instance of each kernel from a few
// switches, built with instantiate() on the kernels' signatures (templates/<family>.sig.cuh), so
// template order and labels come from there as they do for the planner.
#pragma once

#include <cstdint>

#include "adam.sig.cuh"
#include "attention.sig.cuh"
#include "bias_act_dropout.sig.cuh"
#include "compiler/ir/kernel.h"
#include "compiler/planner/fusion_rules.h"
#include "cross_entropy.sig.cuh"
#include "embedding.sig.cuh"
#include "embedding_grad.sig.cuh"
#include "flash_attention.sig.cuh"
#include "layernorm.sig.cuh"
#include "reduce.sig.cuh"
#include "softmax.sig.cuh"

namespace lightseq::codegen {

using lightseq::cuda_type;
using lightseq::vec_width;

struct LnFwd {
  int64_t hidden;
  bool branch, norm, dropout;
};
struct LnBwd {
  int64_t hidden;
  bool norm, residual_in, branch_out, dropout;
};
struct BiasAct {
  int64_t cols;
  Activation act;
  bool dropout;
};
struct Heads {
  int64_t hidden, heads;
  int parts;
  bool bias;
};
struct Softmax {
  bool padding, causal, dropout;
};
struct Embedding {
  int64_t hidden;
  PositionKind positions;
  bool layernorm, dropout;
  PositionsFrom from = PositionsFrom::kIndex;
};

inline kern::Act act(Activation a) { return planner::fusion::act_of(a); }
// The spec → template-argument mappings are the planner's (compiler/planner/fusion_rules.h).
inline kern::Pos pos(PositionKind p) {
  return planner::fusion::pos_of(p == PositionKind::kLearned);
}

inline KernelInstance ln_fwd(Precision p, const LnFwd& c) {
  return instantiate(
      sig::kLnFwd, p,
      {{"kHidden", c.hidden},
       tv("kBranch", c.branch ? kern::Branch::kBiasDropoutResidual : kern::Branch::kNone),
       on_off<kern::Norm>("kNorm", c.norm),
       on_off<kern::Drop>("kDrop", c.dropout)});
}
inline KernelInstance ln_bwd(Precision p, const LnBwd& c) {
  return instantiate(sig::kLnBwd, p,
                     {{"kHidden", c.hidden},
                      on_off<kern::Norm>("kNorm", c.norm),
                      on_off<kern::ResidualIn>("kRes", c.residual_in),
                      on_off<kern::BranchOut>("kBranchOut", c.branch_out),
                      on_off<kern::Drop>("kDrop", c.dropout)});
}
inline KernelInstance bias_act_dropout_fwd(Precision p, const BiasAct& c) {
  return instantiate(
      sig::kBiasActDropoutFwd, p,
      {{"kCols", c.cols}, tv("kAct", act(c.act)), on_off<kern::Drop>("kDrop", c.dropout)});
}
// from_output: ReLU's derivative from the forward's output (kern::ActFrom::kOutput).
inline KernelInstance bias_act_dropout_bwd(Precision p, const BiasAct& c,
                                           bool from_output = false) {
  return instantiate(sig::kBiasActDropoutBwd, p,
                     {{"kCols", c.cols},
                      tv("kAct", act(c.act)),
                      on_off<kern::Drop>("kDrop", c.dropout),
                      tv("kFrom", from_output ? kern::ActFrom::kOutput : kern::ActFrom::kInput)});
}
inline KernelInstance split_heads(Precision p, const Heads& c) {
  return instantiate(sig::kSplitHeads, p,
                     {{"kHidden", c.hidden},
                      {"kHeads", c.heads},
                      {"kParts", c.parts},
                      on_off<kern::BiasAdd>("kBias", c.bias)});
}
inline KernelInstance merge_heads(Precision p, const Heads& c) {
  return instantiate(sig::kMergeHeads, p,
                     {{"kHidden", c.hidden},
                      {"kHeads", c.heads},
                      {"kParts", c.parts},
                      on_off<kern::BiasGrad>("kBiasGrad", c.bias)});
}
inline KernelInstance softmax_fwd(Precision p, const Softmax& c) {
  return instantiate(
      sig::kSoftmaxFwd, p,
      {tv("kMask", kern::mask_of(c.padding, c.causal)), on_off<kern::Drop>("kDrop", c.dropout)});
}
struct Flash {
  int64_t head_dim;
  bool padding, causal, dropout;
  TemplateValue mask() const { return tv("kMask", kern::mask_of(padding, causal)); }
  TemplateValue drop() const { return on_off<kern::Drop>("kDrop", dropout); }
};
// The D and grad_q kernels' template parameters (the forward's, without its warps per block).
inline KernelInstance flash(const sig::Kernel& k, Precision p, const Flash& c) {
  return instantiate(k, p, {{"kD", c.head_dim}, c.mask(), c.drop()});
}
// The forward with `warps` warps of 16 query rows per block (the plans': kFlashFwdWarps).
inline KernelInstance flash_fwd(Precision p, const Flash& c, int warps = kern::kFlashFwdWarps) {
  return instantiate(sig::kFlashFwd, p,
                     {{"kD", c.head_dim}, c.mask(), c.drop(), {"kWarps", warps}});
}
// The grad_k/grad_v kernel built for `blocks` blocks per SM (the plans': flash_bwd_blocks).
inline KernelInstance flash_dkdv(Precision p, const Flash& c, int blocks) {
  return instantiate(sig::kFlashDkDv, p,
                     {{"kD", c.head_dim}, c.mask(), c.drop(), {"kBlocks", blocks}});
}
inline KernelInstance flash_dkdv(Precision p, const Flash& c) {
  return flash_dkdv(p, c, kern::flash_bwd_blocks(c.head_dim));
}
inline KernelInstance flash_dq(Precision p, const Flash& c) { return flash(sig::kFlashDq, p, c); }
inline KernelInstance flash_dot(Precision p, int64_t head_dim) {
  return instantiate(sig::kFlashDot, p, {{"kD", head_dim}});
}
inline KernelInstance softmax_bwd(Precision p, const Softmax& c) {
  return instantiate(sig::kSoftmaxBwd, p, {on_off<kern::Drop>("kDrop", c.dropout)});
}
inline kern::PosFrom pos_from(PositionsFrom f) { return planner::fusion::pos_from_of(f); }
inline KernelInstance embedding_fwd(Precision p, const Embedding& c) {
  return instantiate(sig::kEmbeddingFwd, p,
                     {{"kHidden", c.hidden},
                      tv("kPos", pos(c.positions)),
                      tv("kPosFrom", pos_from(c.from)),
                      on_off<kern::Norm>("kNorm", c.layernorm),
                      on_off<kern::Drop>("kDrop", c.dropout)});
}
// The LayerNorm part of the backward (layernorm embeddings only).
inline KernelInstance embedding_bwd(Precision p, const Embedding& c) {
  return instantiate(sig::kEmbeddingBwd, p,
                     {{"kHidden", c.hidden},
                      tv("kPosFrom", pos_from(c.from)),
                      on_off<kern::Drop>("kDrop", c.dropout)});
}
// The deterministic scatter (embedding_grad.cuh): the grouping kernels and the sum.
struct EmbeddingGroup {
  KernelInstance count, start, place, order;
};
inline EmbeddingGroup embedding_group(Precision p, kern::Key key, PositionsFrom from) {
  return {
      instantiate(sig::kEmbeddingGroupCount, p, {tv("kKey", key), tv("kPosFrom", pos_from(from))}),
      instantiate(sig::kEmbeddingGroupStart, p, {tv("kKey", key)}),
      instantiate(sig::kEmbeddingGroupPlace, p, {tv("kKey", key)}),
      instantiate(sig::kEmbeddingGroupOrder, p, {tv("kKey", key)})};
}
inline KernelInstance embedding_grad(Precision p, const Embedding& c) {
  return instantiate(sig::kEmbeddingGrad, p,
                     {{"kHidden", c.hidden},
                      on_off<kern::Norm>("kNorm", c.layernorm),
                      on_off<kern::Drop>("kDrop", c.dropout)});
}
inline KernelInstance cross_entropy(Precision p, int64_t vocab) {
  return instantiate(sig::kCrossEntropy, p, {{"kVocab", vocab}});
}
inline KernelInstance adam(Precision p, OptimizerKind kind) {
  return instantiate(sig::kAdam, p,
                     {tv("kMode", kind == OptimizerKind::kAdamW ? kern::AdamMode::kAdamW
                                                                : kern::AdamMode::kAdam)});
}
inline KernelInstance check_finite(Precision p) { return instantiate(sig::kCheckFinite, p, {}); }
inline KernelInstance optim_finish(Precision p) { return instantiate(sig::kOptimFinish, p, {}); }
inline KernelInstance column_sum(Precision p) { return instantiate(sig::kColumnSum, p, {}); }
inline KernelInstance convert(Precision p) { return instantiate(sig::kConvert, p, {}); }
inline KernelInstance accumulate(Precision p) { return instantiate(sig::kAccumulate, p, {}); }

}  // namespace lightseq::codegen
