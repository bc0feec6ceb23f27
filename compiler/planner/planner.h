// planner.h — turns layer graphs into fusion plans.
//
// Pass 0 (attention_backend.cpp) rewrites each attention op into its chosen backend's ops. Then,
// per layer and per direction (forward, then backward), over the graph's ops in order:
//   1. GEMM epilogues (gemm_epilogues.cpp): a GEMM absorbs bias + ReLU/GELU (with aux) when no
//      dropout follows, dReLU/dGELU + bias gradient in the backward of such an activation, the
//      residual-gradient sum (beta = 1), a bias the next kernel cannot take, and the bias
//      gradient of its own A operand.
//   2. Kernel fusion (kernel_fusion.cpp): the remaining ops are matched, longest rule first, to
//      the fusion rules; each match is one generated kernel launch (plus the launches that
//      finish per-block partial sums into parameter gradients).
//   3. Verification: every op is covered exactly once; no step reads a tensor that a fused group
//      keeps internal or that nothing wrote before it.
#pragma once

#include "compiler/planner/plan.h"

namespace lightseq {

ModelPlan plan_model(const ModelSpec& spec);
LayerPlan plan_layer(LayerGraph layer, Precision precision);

// Human-readable plan (`lsc plan`): per layer, forward and backward, each kernel's label and the
// ops it fuses, each GEMM's shape in terms of B, T, S and its epilogue.
std::string format_plan(const ModelPlan& plan);

}  // namespace lightseq
