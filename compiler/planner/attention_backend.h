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
// The spec chooses per stack ("attention": "unfused" | "fused"; the validator refuses "fused"
// where its kernels cannot run). No "auto" rule yet: measured on an H100 (benchmarks/RESULTS.md,
// "Fused attention"), the fused kernels win where every key fits one backward block (k_len <= 128;
// the Transformer-base step, the 768/12 layer at T = 128) and lose 3-17 % per layer at T = 32, 64
// and >= 512. The lengths are run-time sizes while the backend is chosen per plan, so a length
// rule needs both backends planned and a choice per call; until then the default stays unfused.
// `lsc plan` prints each choice with its reason.
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
