// instances.h — builds KernelInstance values (template arguments + readable labels) for each
// kernel family of docs/kernels.md. The only place that knows template parameter order.
#pragma once

#include <cstdint>
#include <string>

#include "compiler/planner/plan.h"
#include "compiler/spec/model_spec.h"

namespace lightseq::codegen {

std::string cuda_type(Precision p);       // "float", "__half", "__nv_bfloat16"
int vec_width(Precision p, int64_t cols);  // elements per 16-byte access that divide `cols`

struct LnFwd {
  int64_t hidden;
  bool branch;   // z = residual + dropout(branch + bias)
  bool norm;     // LayerNorm of z
  bool dropout;  // dropout on the branch
};
struct LnBwd {
  int64_t hidden;
  bool norm;         // LayerNorm backward (else the incoming gradient passes through)
  bool residual_in;  // add a residual gradient
  bool branch_out;   // bias-gradient partials of a branch (and the masked gradient if dropout)
  bool dropout;
};
struct BiasAct {
  int64_t cols;
  Activation act;
  bool dropout;
};
struct Heads {
  int64_t hidden, heads;
  int parts;
  bool bias;  // split: add bias; merge: bias-gradient partials
};
struct Softmax {
  bool padding, causal;  // fwd only
  bool dropout;
};
struct Embedding {
  int64_t hidden;
  PositionKind positions;
  bool layernorm, dropout;
};

KernelInstance ln_fwd(Precision p, const LnFwd& c);
KernelInstance ln_bwd(Precision p, const LnBwd& c);
KernelInstance bias_act_dropout_fwd(Precision p, const BiasAct& c);
KernelInstance bias_act_dropout_bwd(Precision p, const BiasAct& c);
KernelInstance split_heads(Precision p, const Heads& c);
KernelInstance merge_heads(Precision p, const Heads& c);
KernelInstance softmax_fwd(Precision p, const Softmax& c);
KernelInstance softmax_bwd(Precision p, const Softmax& c);
KernelInstance embedding_fwd(Precision p, const Embedding& c);
KernelInstance embedding_bwd(Precision p, const Embedding& c);
KernelInstance cross_entropy(Precision p, int64_t vocab);
KernelInstance adam(Precision p, OptimizerKind kind);
KernelInstance check_finite(Precision p);
KernelInstance column_sum(Precision p);
KernelInstance convert(Precision p);
KernelInstance accumulate(Precision p);


}  // namespace lightseq::codegen
