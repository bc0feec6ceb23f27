// plan.h — the fusion plan: per layer, an ordered list of GEMMs (with their cuBLASLt epilogue)
// and generated kernel launches (each a fused group of graph ops), forward and backward.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "compiler/graph/layers.h"
#include "compiler/ir/kernel.h"
#include "compiler/spec/model_spec.h"

namespace lightseq {

enum class Epilogue {
  kNone,
  kBias,         // D = A·B + bias
  kReluAuxBias,  // D = relu(A·B + bias); aux = relu bit mask
  kGeluAuxBias,  // D = gelu(A·B + bias); aux = A·B + bias
  kDReluBGrad,   // D = dD ⊙ relu'(aux); bias grad = Σ_rows D
  kDGeluBGrad,   // D = dD ⊙ gelu'(aux); bias grad = Σ_rows D
  kBGradA,       // D = op(A)·op(B); bias grad = Σ_k op(A) (the weight-gradient GEMM's bias)
};
std::string_view to_string(Epilogue e);
// Whether the epilogue writes its aux tensor (the forward's activation epilogues; the backward's
// read it).
bool writes_aux(Epilogue e);

struct GemmStep {
  std::string name;  // the graph op's name: "sa.qkv_proj"
  OpAttrs attrs;     // m, n, k, batch, transposes, alpha
  int a = -1, b = -1, d = -1;
  int c = -1;               // ≥ 0: D = A·B + C (beta = 1), C read from this tensor
  bool accumulate = false;  // D += A·B (beta = 1 onto D): gradients summed over layers
  Epilogue epilogue = Epilogue::kNone;
  int bias = -1;                       // epilogue bias input (kBias, k*AuxBias)
  int aux = -1;                        // epilogue aux output (k*AuxBias) or input (kD*BGrad)
  int bias_grad = -1;                  // epilogue bias-gradient output (kD*BGrad, kBGradA)
  std::vector<std::string> fused_ops;  // graph ops folded into this GEMM (beyond the gemm itself)
};

// The value of a scalar run-time parameter of a kernel step.
struct ScalarArg {
  enum class Kind {
    kUnset,
    kDim,       // a size: a monomial in B, T, S (rows = B·T)
    kConst,     // a number fixed by the model (an epsilon, a column offset)
    kRowsOf,    // the rows of a scratch tensor as the kernel that wrote it sized it
    kColsOf,    // its columns
    kChunksOf,  // the chunks of the tensor list bound to parameter `tensor` (its index)
  };
  Kind kind = Kind::kUnset;
  Dim dim;
  double value = 0;
  int tensor = -1;
  static ScalarArg size(Dim d) { return {Kind::kDim, d, 0, -1}; }
  static ScalarArg constant(double v) { return {Kind::kConst, {}, v, -1}; }
  static ScalarArg rows_of(int t) { return {Kind::kRowsOf, {}, 0, t}; }
  static ScalarArg cols_of(int t) { return {Kind::kColsOf, {}, 0, t}; }
  static ScalarArg chunks_of(int param) { return {Kind::kChunksOf, {}, 0, param}; }
};

// One run-time parameter of a kernel step, in the position of its signature's parameter.
struct KernelArg {
  int tensor = -1;        // pointer parameters: the tensor bound (-1: null)
  std::vector<int> list;  // Role::kTensorList: the tensor bound to each slot (-1: null)
  ScalarArg scalar;       // Role::kScalar
  int dropout_site = -1;  // Role::kDropout: the layer's site (-1: no dropout)
  DropoutKind dropout_kind = DropoutKind::kHidden;
};

struct KernelStep {
  KernelInstance kernel;
  std::vector<KernelArg> args;         // parallel to kernel.sig->params
  std::vector<std::string> fused_ops;  // graph op names, in order
  std::vector<int> reads, writes;      // tensor ids, from the parameters' roles
  std::string note;                    // e.g. "grad.linear2.bias = Σ of per-block partials"
  // The tensor bound to pointer parameter `name` (-1: none); InternalError if no such parameter.
  int tensor(std::string_view name) const;
};

using Step = std::variant<GemmStep, KernelStep>;

// How one attention op runs (compiler/planner/attention_backend.h chooses).
struct AttentionChoice {
  std::string op;       // the kAttention op: "sa.attention"
  std::string backend;  // "unfused"
  std::string reason;   // why this backend, for `lsc plan`
};

// One tensor a call of a layer binds: the layer's calling convention, derived from its plan. The
// runtime, the C++ API, the Python binding and `lsc plan` all read it (positionally, or by name).
struct ManifestEntry {
  std::string name;  // the graph's name: PyTorch's parameter names, "x", "y", "grad.<param>"
  int tensor = -1;   // its graph tensor id
  TensorRole role;   // forward: kInput, kParam, kOutput; backward: kParam, kInput (the forward's
                     // inputs it reads again), kGradInput, kGradOutput, kParamGrad
  Shape shape;       // symbolic in B, T, S
  ElemType type;     // kModel: the model's precision
  bool optional = false;     // may be null (a padding mask: nothing is padded)
  bool accumulates = false;  // the call adds into it (or only ever sets an error flag in it): the
                             // caller zeroes it (or passes a sum)
  std::string grad_of;       // a gradient's forward tensor ("y" for grad_y); empty otherwise
  bool operator==(const ManifestEntry&) const = default;
};

// Which plan of an "auto" layer (layers[].attention) runs a call: the fused one when the call's
// batch is at most max_batch (the fused grids' limit on batch · heads) and each of its attentions
// has at most max_keys keys (T; S for a decoder's cross-attention); the unfused one otherwise.
// compiler/planner/attention_backend.h sets it; the runtime and the Python front end read it.
struct FusedRule {
  int64_t max_keys = 0, max_batch = 0;
  bool takes(int64_t batch, int64_t seq, int64_t src_seq) const {
    return batch <= max_batch && seq <= max_keys && src_seq <= max_keys;
  }
};

struct LayerPlan {
  LayerGraph layer;  // as planned: after the attention backend pass rewrote it
  std::vector<AttentionChoice> attention;  // the backend chosen for each attention op
  // An "auto" layer: this plan runs its attention unfused, `fused` is the same layer planned with
  // the fused attention, and `fused_rule` says which runs a call. Null: this plan runs every call.
  std::shared_ptr<const LayerPlan> fused;
  FusedRule fused_rule;
  // This plan, then an "auto" layer's fused plan: every plan of the layer.
  std::vector<const LayerPlan*> plans() const {
    std::vector<const LayerPlan*> out{this};
    if (fused) out.push_back(fused.get());
    return out;
  }
  std::vector<Step> forward, backward;
  std::vector<int> saved;  // forward tensors the backward reads (kept between them)
  // Per direction (0 forward, 1 backward): the tensors its steps touch (views' parents included),
  // sorted, and what a call binds (the manifest).
  std::vector<int> used[2];
  std::vector<ManifestEntry> manifest[2];
  // Kernels the runtime launches outside the step lists: accumulate:<dtype> adds an epilogue's
  // bias gradient (which cuBLASLt can only overwrite) into a gradient that accumulates (+=).
  std::vector<KernelInstance> support_kernels;
  // Fused linear + cross-entropy (a criterion layer): its output projection, cross-entropy and
  // their backward GEMMs run in the forward call, over chunks of at most `max_rows` token rows
  // (whole sequences; at least one), so no more than one chunk's [rows, vocab] logits ever
  // exist. Forward steps [begin, end) form the chunked region; the backward has no steps; the
  // forward's gradient bindings may be null (evaluation: the region's gradient steps are
  // skipped). max_rows 0: no chunked region.
  struct RowChunks {
    int64_t max_rows = 0;
    int64_t budget_bytes = 0;  // what max_rows follows from (the spec's logits_chunk_mib)
    size_t begin = 0;
  };
  RowChunks row_chunks;
};

struct ModelPlan {
  ModelSpec spec;
  std::vector<LayerPlan> layers;  // an "auto" layer's fused plan hangs off its LayerPlan::fused
  // Every distinct kernel the model needs (by label), in first-use order.
  std::vector<KernelInstance> kernels() const;
};

}  // namespace lightseq
