// plan.h — the fusion plan: per layer, an ordered list of GEMMs (with their cuBLASLt epilogue)
// and generated kernel launches (each a fused group of graph ops), forward and backward.
#pragma once

#include <map>
#include <string>
#include <variant>
#include <vector>

#include "compiler/graph/layers.h"
#include "compiler/spec/model_spec.h"

namespace lightseq {

// One instantiation of a kernel template (docs/kernels.md).
struct KernelInstance {
  std::string family;                      // template file: "layernorm" → templates/layernorm.cuh
  std::string kernel;                      // "ln_fwd_kernel"
  std::vector<std::string> template_args;  // C++ template arguments, in order
  std::string label;                       // "ln_fwd:bf16:h=512:vec=8:branch=none:norm=on:drop=off"
  std::string name_expression() const;     // "&lightseq::kern::ln_fwd_kernel<__nv_bfloat16, 512, ...>"
  bool operator==(const KernelInstance&) const = default;
};

enum class Epilogue {
  kNone,
  kBias,          // D = A·B + bias
  kReluAuxBias,   // D = relu(A·B + bias); aux = relu bit mask
  kGeluAuxBias,   // D = gelu(A·B + bias); aux = A·B + bias
  kDReluBGrad,    // D = dD ⊙ relu'(aux); bias grad = Σ_rows D
  kDGeluBGrad,    // D = dD ⊙ gelu'(aux); bias grad = Σ_rows D
  kBGradA,        // D = op(A)·op(B); bias grad = Σ_k op(A) (the weight-gradient GEMM's bias)
};
std::string_view to_string(Epilogue e);

struct GemmStep {
  std::string name;        // the graph op's name: "sa.qkv_proj"
  OpAttrs attrs;           // m, n, k, batch, transposes, alpha
  int a = -1, b = -1, d = -1;
  int c = -1;              // ≥ 0: D = A·B + C (beta = 1), C read from this tensor
  bool accumulate = false; // D += A·B (beta = 1 onto D): gradients summed over layers
  Epilogue epilogue = Epilogue::kNone;
  int bias = -1;           // epilogue bias input (kBias, k*AuxBias)
  int aux = -1;            // epilogue aux output (k*AuxBias) or input (kD*BGrad)
  int bias_grad = -1;      // epilogue bias-gradient output (kD*BGrad, kBGradA)
  std::vector<std::string> fused_ops;  // graph ops folded into this GEMM (beyond the gemm itself)
};

struct KernelStep {
  KernelInstance kernel;
  std::vector<std::string> fused_ops;  // graph op names, in order
  std::vector<int> reads, writes;      // tensor ids of the layer's graph
  std::string note;                    // e.g. "finishes grad.linear2.bias from per-block partials"
  // The kernel's pointer arguments, by their names in docs/kernels.md ("grad_out", "gamma"), bound
  // to tensor ids. Arguments not listed are passed as null.
  std::map<std::string, int> args;
  // The dropout site the kernel draws from (its forward op's site), or -1.
  int dropout_site = -1;
  std::string dropout_which;  // "attention", "activation", "hidden", "embedding"
  double eps = 0;  // LayerNorm epsilon of ln_fwd / embedding_fwd
  // column_sum / convert steps: which block of columns of the preceding step's partial buffer
  // (or which fp32 scatter buffer) they finish.
  int partial_block = -1;
};

using Step = std::variant<GemmStep, KernelStep>;

struct LayerPlan {
  LayerGraph layer;
  std::vector<Step> forward, backward;
  std::vector<int> saved;  // forward tensors the backward reads (kept between them)
  // Kernels the runtime launches outside the step lists: accumulate:<dtype> adds an epilogue's
  // bias gradient (which cuBLASLt can only overwrite) into a gradient that accumulates (+=).
  std::vector<KernelInstance> support_kernels;
};

struct ModelPlan {
  ModelSpec spec;
  std::vector<LayerPlan> layers;
  // Every distinct kernel the model needs (by label), in first-use order.
  std::vector<KernelInstance> kernels() const;
};

}  // namespace lightseq
