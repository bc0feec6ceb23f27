// attention_backend.h — pass 0 of the planner: how each attention op of a layer runs.
//
// The lowering (compiler/graph/layers.cpp) emits one kAttention op per attention sublayer and one
// kAttentionGrad in the backward. This pass picks a backend for each and rewrites the graph into
// that backend's ops before the fusion passes see it:
//   unfused  scores = q·kᵀ·scale (batched GEMM), mask, softmax, dropout, context = probs·v
//            (batched GEMM); the backward recomputes nothing and reads the saved probabilities.
//            Materializes [B, heads, T, S] scores: memory and bandwidth grow with T·S.
// A fused (flash-style) backend joins the list when its kernels exist; the rule that picks it
// lives here, and `lsc plan` prints each choice with its reason.
#pragma once

#include <string>
#include <vector>

#include "compiler/graph/layers.h"
#include "compiler/planner/plan.h"

namespace lightseq {

// Rewrites every kAttention / kAttentionGrad op of `layer` into its chosen backend's ops (tensor
// and op names as before: "<sub>.scores", "<sub>.softmax", ...). Throws InternalError for a
// kAttentionGrad without its forward op.
std::vector<AttentionChoice> choose_attention(LayerGraph& layer, Precision precision);

}  // namespace lightseq
