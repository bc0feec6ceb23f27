// graph.h — the layer-graph IR: tensors with symbolic shapes and primitive ops.
//
// A layer (encoder, decoder, embedding, criterion, optimizer) is lowered to a Graph of primitive
// ops (gemm, bias_add, dropout, layernorm, ...) for its forward and its backward. The fusion
// planner (compiler/planner) then groups those ops into GEMM epilogues and generated kernels.
// Shapes are symbolic in the run-time sizes: B (batch), T (target length), S (source length, the
// encoder side of a decoder's cross-attention); everything else is a compile-time constant.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "compiler/spec/model_spec.h"

namespace lightseq {

// factor · B^b · T^t · S^s
struct Dim {
  int64_t factor = 1;
  int b = 0, t = 0, s = 0;
  static Dim constant(int64_t n) { return {n, 0, 0, 0}; }
  static Dim batch() { return {1, 1, 0, 0}; }
  static Dim seq() { return {1, 0, 1, 0}; }
  static Dim src_seq() { return {1, 0, 0, 1}; }
  static Dim tokens() { return {1, 1, 1, 0}; }      // B·T
  static Dim src_tokens() { return {1, 1, 0, 1}; }  // B·S
  Dim operator*(const Dim& o) const { return {factor * o.factor, b + o.b, t + o.t, s + o.s}; }
  Dim operator*(int64_t n) const { return {factor * n, b, t, s}; }
  bool operator==(const Dim&) const = default;
  bool is_constant() const { return b == 0 && t == 0 && s == 0; }
  int64_t eval(int64_t batch, int64_t seq, int64_t src_seq) const;
  std::string to_string() const;  // "B·T", "1536", "8·B", "T"
};

using Shape = std::vector<Dim>;
std::string shape_to_string(const Shape& shape);  // "[B·T, 1536]"
Dim shape_numel(const Shape& shape);

enum class TensorRole {
  kInput,       // given by the caller (activations in, padding mask, tokens, targets)
  kParam,       // a parameter
  kActivation,  // produced by the forward
  kGradInput,   // gradient given to the backward (of an output)
  kGrad,        // gradient produced by the backward
  kParamGrad,   // gradient of a parameter, written (=) or accumulated (+=) as the caller chooses
  kOutput,      // result of the forward handed to the caller
  kGradOutput,  // gradient of a layer input, written into the caller's buffer (grad_x, ...)
  kScratch,  // a kernel's working buffer (per-block partials, an fp32 scatter target), made by the
             // planner and provided by the runtime for one call
};
std::string_view to_string(TensorRole r);
// Whether a call's caller provides the tensor's memory (inputs, parameters, outputs, gradients
// given or returned), rather than the runtime (activations, internal gradients, scratch).
bool given_by_caller(TensorRole r);

// kModel: the spec's precision. kOptimState: kern::OptimState (common/adam_types.cuh), the
// optimizer's device-resident step, loss scale and overflow flag.
enum class ElemType { kModel, kF32, kI64, kU8, kI32, kOptimState };
int elem_bytes(ElemType t, Precision model);  // bytes of one element

struct Tensor {
  std::string name;
  Shape shape;
  TensorRole role = TensorRole::kActivation;
  ElemType type = ElemType::kModel;
  // A view of part `part` (of `parts` equal parts along the leading dim) of another tensor,
  // e.g. q, k, v of the [3, B, heads, T, d] heads tensor. -1: not a view.
  int view_of = -1;
  int part = 0;
  // ≥ 0: the view starts this many elements into its parent instead (an unequal slice: the q rows
  // and the k/v rows of a packed in_proj_weight).
  int64_t view_offset = -1;
  // > 0: a column slice of a [rows, row_stride] parent (with view_offset its first column): `shape`
  // [rows, cols], row r's elements at view_offset + r·row_stride. Only kernels that take a row
  // stride read or write such a view (the fused attention's q, k, v and their gradients, column
  // slices of the packed projection [B·T, 3·H]).
  int64_t row_stride = 0;
  // A gradient's forward tensor (grad_y of y, grad_x of x, grad.<p> of p); -1 for others.
  int grad_of = -1;
  // A scratch tensor whose extent the kernel that writes it computes (its signature's extent
  // function, from the run-time sizes): `shape` is empty and the runtime sizes it per shape.
  bool sized_by_kernel = false;
  // An input the caller may leave null (token types: all type 0). Padding masks are optional too
  // (as u8 inputs; the runtime binds zeros for them).
  bool optional = false;
};

// The kinds of dropout site; each has its own probability at run time (DropoutConfig).
// kAttentionOutput: the attention sublayers' outputs, where the spec gives them their own
// probability (dropout.attention_output); otherwise those sites are kHidden.
enum class DropoutKind { kAttention, kActivation, kHidden, kEmbedding, kAttentionOutput };
std::string_view to_string(DropoutKind k);  // "attention", ...

enum class OpKind {
  // forward
  kGemm,
  kBiasAdd,
  kActivation,
  kDropout,
  kResidualAdd,
  kLayerNorm,
  kSplitHeads,
  kMergeHeads,
  kAttentionMask,
  kSoftmax,
  kEmbedding,
  kCrossEntropy,
  // the cross-entropy's gradient scale: inputs targets, the loss scale [1]; outputs grad_scale [1]
  // (loss scale / counted targets: the mean reduction) and n_tokens [1]
  kGradScale,
  kAdam,
  // softmax(q·kᵀ·scale + mask) (dropped) · v over [B, heads, T, d] views: inputs q, k, v (and the
  // key padding mask), output the context. A backend pass (compiler/planner/attention_backend.h)
  // replaces it, and its gradient, before fusion.
  kAttention,
  // The fused backend's forward (templates/flash_attention.cuh): inputs q, k, v (and the key
  // padding mask); outputs the context and the log-sum-exp of each query row [B, heads, T] fp32.
  kFlashAttention,
  // backward
  kLayerNormGrad,
  kDropoutGrad,
  // inputs the output's gradient, the pre-activation h, the bias, and the forward's output after
  // its dropout (what the next GEMM read: ReLU's derivative and the kept mask follow from it);
  // output the pre-activation's gradient
  kActivationGrad,
  kBiasGrad,
  kGradAdd,
  kSoftmaxGrad,
  kSplitHeadsGrad,
  kMergeHeadsGrad,
  kEmbeddingGrad,
  // inputs the context's gradient, q, k, v (and the key padding mask); outputs dq, dk, dv
  kAttentionGrad,
  // The fused backend's backward: inputs q, k, v, grad_ctx, lse, ctx (and the key padding mask);
  // outputs dq, dk, dv (D = Σ grad_ctx·ctx per query row is the planner's scratch).
  kFlashAttentionGrad,
};
std::string_view to_string(OpKind k);

enum class Transpose { kNo, kYes };

// Attributes of an op. Only the fields its kind uses are meaningful.
struct OpAttrs {
  // gemm: D = alpha · op(A) · op(B) (+ C), row-major, optionally batched.
  Transpose trans_a = Transpose::kNo, trans_b = Transpose::kNo;
  Dim m, n, k, batch = Dim::constant(1);
  double alpha = 1.0;
  std::string alpha_text;  // "1/sqrt(64)" for printing; empty: print the number
  // dropout sites: the site index within the layer (each site draws its own random stream)
  int dropout_site = -1;
  DropoutKind dropout_kind = DropoutKind::kHidden;
  // heads transforms
  int parts = 1;
  // attention mask
  bool padding_mask = false;
  bool causal = false;
  // layernorm
  double eps = 1e-5;
  // activation / activation_grad
  Activation activation = Activation::kRelu;
  // gemm: D += A·B (the output sums contributions of several layers; the caller zeroes it)
  bool accumulate_output = false;
  // adam: the hyperparameters fixed at compile time (the learning rate is a run-time tensor) and
  // the loss scaler's rule (growth_interval 0: a fixed loss scale, no overflow check)
  OptimizerKind optimizer = OptimizerKind::kAdamW;
  struct Adam {
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
    double growth_factor = 2.0, backoff_factor = 0.5;
    int growth_interval = 0;
    double clip_norm = 0;  // > 0: global-norm gradient clipping
  } adam;
  // attention / attention_grad
  struct Attention {
    int64_t heads = 0, head_dim = 0;
    double scale = 1.0;
    std::string scale_text;  // "1/sqrt(64)"
    bool padding = false;    // a key padding mask is the 4th (forward) / 5th (gradient) input
    bool causal = false;
    int dropout_site = -1;  // -1: no attention dropout
    // The spec's layers[].attention; and whether the backend pass runs this op fused: "fused", or
    // the fused plan of an "auto" stack (plan_model plans such a layer twice).
    AttentionBackend backend = AttentionBackend::kUnfused;
    bool fused = false;
    std::string forward_op;  // the kAttention op a kAttentionGrad differentiates
  } attn;
  // embedding
  int64_t vocab = 0, padding_idx = -1, max_positions = 0;
  int64_t token_types = 0;         // rows of the token-type table (0: none)
  bool learned_positions = false;  // a position table among the inputs (after the token table)
  PositionsFrom positions_from = PositionsFrom::kIndex;
  PaddingRows padding_rows = PaddingRows::kZero;
  double scale = 1.0;
  // cross-entropy
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  int64_t logits_chunk_bytes = 0;  // the fused linear + cross-entropy's chunk budget
};

struct Op {
  OpKind kind;
  std::string name;          // unique in its graph: "qkv_proj", "ln1", "ffn_act"
  std::vector<int> inputs;   // tensor ids; for gemm: A, B
  std::vector<int> outputs;  // tensor ids
  OpAttrs attrs;
};

class Graph {
 public:
  int add_tensor(Tensor t);  // returns its id; names must be unique
  int add_op(Op op);         // returns its id
  Op& ops_mut_last() { return ops_.back(); }
  int tensor_id(const std::string& name) const;  // throws InternalError if absent
  const Tensor& tensor(int id) const { return tensors_.at(id); }
  Tensor& tensor(int id) { return tensors_.at(id); }
  const std::vector<Tensor>& tensors() const { return tensors_; }
  const std::vector<Op>& ops() const { return ops_; }
  // The op producing `tensor` (or the tensor it views), or -1 for inputs/params.
  int producer(int tensor) const;
  // Ops reading `tensor`, in order.
  std::vector<int> consumers(int tensor) const;

  // Checks: every op's inputs are produced before it or are inputs/params/grad inputs; every
  // tensor is produced at most once; shapes of gemm operands agree with m, n, k. Throws
  // InternalError naming the op and the problem.
  void verify() const;

  // Replaces every op (a rewriting pass); ops before `backward_begin` are the forward.
  void set_ops(std::vector<Op> ops, int backward_begin);

  // Ops before this index are the forward, the rest the backward.
  void begin_backward() { backward_begin_ = static_cast<int>(ops_.size()); }
  int backward_begin() const {
    return backward_begin_ < 0 ? static_cast<int>(ops_.size()) : backward_begin_;
  }

 private:
  int backward_begin_ = -1;
  std::vector<Tensor> tensors_;
  std::vector<Op> ops_;
  std::map<std::string, int> by_name_;
};

}  // namespace lightseq
