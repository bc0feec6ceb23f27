// attention_backend.h — pass 0 of the planner: how each attention op of a layer runs.
//
// The lowering (compiler/graph/layers.cpp) emits one kAttention op per attention sublayer and one
// kAttentionGrad in the backward. This pass picks a backend for each and rewrites the graph into
// that backend's ops before the fusion passes see it:
//   unfused  scores = q·kᵀ·scale (batched GEMM), mask, softmax, dropout, context = probs·v
//            (batched GEMM); the backward recomputes nothing and reads the saved probabilities.
//            Materializes [B, heads, T, S] scores: memory and bandwidth grow with T·S.
//   fused    templates/flash_attention.cuh: one kernel forward (saving the context and the
//            log-sum-exp), three backward (D = Σ grad·out, grad k/v per key tile, grad q per query
//            tile; one where every key fits one block), recomputing the probabilities; scores
//            never stored. fp16/bf16, head_dim a multiple of 16 up to 128. The kernels work in
//            the projections' token layout: the pass drops the lowering's head split and merge
//            (and their gradients) around a fused op and hands it column slices of the packed
//            projection [B·T, 3·H] and of its gradient (Tensor::row_stride) and the [B·T, H]
//            context; the QKV bias then goes to the projection GEMM's epilogue.
// The spec chooses per stack ("attention": "unfused" | "fused" | "auto"; the validator refuses
// "fused" where its kernels cannot run). "auto" chooses per call, by the call's lengths: the model
// plan holds such a layer planned twice (LayerPlan::fused, planned from auto_fused_variant's
// graph) and the runtime runs the fused plan where LayerPlan::fused_rule admits the call — at most
// kAutoFusedMaxKeys keys (compiler/spec/rules.h, with the measurements that set it) and a batch
// the fused grids take — the unfused plan elsewhere. Where the fused kernels cannot run at all
// (fp32, a head dim they lack) "auto" plans the unfused path alone. `lsc plan` prints each choice
// with its reason.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "compiler/graph/layers.h"
#include "compiler/planner/plan.h"

namespace lightseq {

// Rewrites every kAttention / kAttentionGrad op of `layer` into its chosen backend's ops (tensor
// and op names as before: "<sub>.scores", "<sub>.softmax", ...). Throws InternalError for a
// kAttentionGrad without its forward op.
std::vector<AttentionChoice> choose_attention(LayerGraph& layer, Precision precision);

// The fused plan of a layer with "auto" attention: a copy of `layer` (as lowered, before
// choose_attention) with every attention op marked fused, and the rule that sends a call to it.
// nullopt where the layer has no "auto" attention op or the fused kernels cannot run one.
struct FusedVariant {
  LayerGraph layer;
  FusedRule rule;
};
std::optional<FusedVariant> auto_fused_variant(const LayerGraph& layer, Precision precision);

}  // namespace lightseq
