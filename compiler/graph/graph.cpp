#include "compiler/graph/graph.h"

#include <fmt/format.h>

#include "common/adam_types.cuh"
#include "compiler/errors.h"

namespace lightseq {

int elem_bytes(ElemType t, Precision model) {
  switch (t) {
    case ElemType::kModel:
      return element_bytes(model);
    case ElemType::kF32:
      return 4;
    case ElemType::kI64:
      return 8;
    case ElemType::kU8:
      return 1;
    case ElemType::kI32:
      return 4;
    case ElemType::kOptimState:
      return static_cast<int>(sizeof(kern::OptimState));
  }
  throw InternalError("unknown ElemType");
}

int64_t Dim::eval(int64_t batch, int64_t seq, int64_t src_seq) const {
  int64_t v = factor;
  for (int i = 0; i < b; ++i) v *= batch;
  for (int i = 0; i < t; ++i) v *= seq;
  for (int i = 0; i < s; ++i) v *= src_seq;
  return v;
}

std::string Dim::to_string() const {
  std::string out;
  auto sym = [&](const char* name, int power) {
    for (int i = 0; i < power; ++i) {
      if (!out.empty()) out += "·";
      out += name;
    }
  };
  if (factor != 1 || is_constant()) out = std::to_string(factor);
  sym("B", b);
  sym("T", t);
  sym("S", s);
  return out;
}

std::string shape_to_string(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += shape[i].to_string();
  }
  return out + "]";
}

Dim shape_numel(const Shape& shape) {
  Dim n = Dim::constant(1);
  for (const Dim& d : shape) n = n * d;
  return n;
}

std::string_view to_string(TensorRole r) {
  switch (r) {
    case TensorRole::kInput:
      return "input";
    case TensorRole::kParam:
      return "param";
    case TensorRole::kActivation:
      return "activation";
    case TensorRole::kGradInput:
      return "grad_input";
    case TensorRole::kGrad:
      return "grad";
    case TensorRole::kParamGrad:
      return "param_grad";
    case TensorRole::kOutput:
      return "output";
    case TensorRole::kGradOutput:
      return "grad_output";
    case TensorRole::kScratch:
      return "scratch";
  }
  throw InternalError("unknown TensorRole");
}

bool given_by_caller(TensorRole r) {
  return r == TensorRole::kInput || r == TensorRole::kParam || r == TensorRole::kGradInput ||
         r == TensorRole::kParamGrad || r == TensorRole::kOutput || r == TensorRole::kGradOutput;
}

std::string_view to_string(DropoutKind k) {
  switch (k) {
    case DropoutKind::kAttention:
      return "attention";
    case DropoutKind::kActivation:
      return "activation";
    case DropoutKind::kHidden:
      return "hidden";
    case DropoutKind::kEmbedding:
      return "embedding";
    case DropoutKind::kAttentionOutput:
      return "attention_output";
  }
  throw InternalError("unknown DropoutKind");
}

std::string_view to_string(OpKind k) {
  switch (k) {
    case OpKind::kGemm:
      return "gemm";
    case OpKind::kBiasAdd:
      return "bias_add";
    case OpKind::kActivation:
      return "activation";
    case OpKind::kDropout:
      return "dropout";
    case OpKind::kResidualAdd:
      return "residual_add";
    case OpKind::kLayerNorm:
      return "layernorm";
    case OpKind::kSplitHeads:
      return "split_heads";
    case OpKind::kMergeHeads:
      return "merge_heads";
    case OpKind::kAttentionMask:
      return "attention_mask";
    case OpKind::kSoftmax:
      return "softmax";
    case OpKind::kEmbedding:
      return "embedding";
    case OpKind::kCrossEntropy:
      return "cross_entropy";
    case OpKind::kGradScale:
      return "grad_scale";
    case OpKind::kAdam:
      return "adam";
    case OpKind::kAttention:
      return "attention";
    case OpKind::kAttentionGrad:
      return "attention_grad";
    case OpKind::kFlashAttention:
      return "flash_attention";
    case OpKind::kFlashAttentionGrad:
      return "flash_attention_grad";
    case OpKind::kLayerNormGrad:
      return "layernorm_grad";
    case OpKind::kDropoutGrad:
      return "dropout_grad";
    case OpKind::kActivationGrad:
      return "activation_grad";
    case OpKind::kBiasGrad:
      return "bias_grad";
    case OpKind::kGradAdd:
      return "grad_add";
    case OpKind::kSoftmaxGrad:
      return "softmax_grad";
    case OpKind::kSplitHeadsGrad:
      return "split_heads_grad";
    case OpKind::kMergeHeadsGrad:
      return "merge_heads_grad";
    case OpKind::kEmbeddingGrad:
      return "embedding_grad";
  }
  throw InternalError("unknown OpKind");
}

int Graph::add_tensor(Tensor t) {
  if (by_name_.count(t.name))
    throw InternalError(fmt::format("graph: tensor '{}' added twice", t.name));
  int id = static_cast<int>(tensors_.size());
  by_name_[t.name] = id;
  tensors_.push_back(std::move(t));
  return id;
}

int Graph::add_op(Op op) {
  for (const Op& o : ops_) {
    if (o.name == op.name) throw InternalError(fmt::format("graph: op '{}' added twice", op.name));
  }
  ops_.push_back(std::move(op));
  return static_cast<int>(ops_.size()) - 1;
}

int Graph::tensor_id(const std::string& name) const {
  auto it = by_name_.find(name);
  if (it == by_name_.end()) throw InternalError(fmt::format("graph: no tensor '{}'", name));
  return it->second;
}

int Graph::producer(int tensor) const {
  for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
    for (int o : ops_[i].outputs) {
      if (o == tensor) return i;
    }
  }
  const Tensor& t = tensors_.at(tensor);
  return t.view_of >= 0 ? producer(t.view_of) : -1;
}

std::vector<int> Graph::consumers(int tensor) const {
  std::vector<int> out;
  for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
    for (int in : ops_[i].inputs) {
      if (in == tensor) {
        out.push_back(i);
        break;
      }
    }
  }
  return out;
}

void Graph::set_ops(std::vector<Op> ops, int backward_begin) {
  ops_ = std::move(ops);
  backward_begin_ = backward_begin;
}

void Graph::verify() const {
  std::vector<int> written(tensors_.size(), 0);
  auto is_given = [&](int id) {
    TensorRole r = tensors_[id].role;
    return r == TensorRole::kInput || r == TensorRole::kParam || r == TensorRole::kGradInput;
  };
  auto available = [&](int id) {
    if (is_given(id) || written[id]) return true;
    const Tensor& t = tensors_[id];
    if (t.view_of >= 0 && (written[t.view_of] || is_given(t.view_of))) return true;
    // a whole tensor is available once all of its parts were written
    int parts = 0, done = 0;
    for (size_t j = 0; j < tensors_.size(); ++j) {
      if (tensors_[j].view_of == id) {
        ++parts;
        done += written[j] ? 1 : 0;
      }
    }
    return parts > 0 && parts == done;
  };
  for (const Op& op : ops_) {
    for (int in : op.inputs) {
      if (in < 0 || in >= static_cast<int>(tensors_.size())) {
        throw InternalError(
            fmt::format("graph: op '{}' reads tensor id {} out of range", op.name, in));
      }
      if (!available(in)) {
        throw InternalError(fmt::format("graph: op '{}' reads '{}' before anything writes it",
                                        op.name, tensors_[in].name));
      }
    }
    for (int out : op.outputs) {
      if (is_given(out)) {
        throw InternalError(fmt::format("graph: op '{}' writes '{}', which is a {}", op.name,
                                        tensors_[out].name, to_string(tensors_[out].role)));
      }
      if (written[out]++) {
        throw InternalError(fmt::format("graph: '{}' is written twice (second by op '{}')",
                                        tensors_[out].name, op.name));
      }
    }
    for (const std::vector<int>* ids : {&op.inputs, &op.outputs}) {
      for (int id : *ids) {
        const Tensor& t = tensors_[id];
        if (t.row_stride <= 0) continue;
        // A column slice: rows of the parent's, columns inside its rows; only the fused attention
        // takes a row stride (any other op would read it as contiguous).
        const Tensor* parent = t.view_of >= 0 ? &tensors_[t.view_of] : nullptr;
        const bool fits = parent && t.shape.size() == 2 && parent->shape.size() == 2 &&
                          t.shape[0] == parent->shape[0] && t.shape[1].is_constant() &&
                          parent->shape[1] == Dim::constant(t.row_stride) && t.view_offset >= 0 &&
                          t.view_offset + t.shape[1].factor <= t.row_stride;
        const bool strided_op =
            op.kind == OpKind::kFlashAttention || op.kind == OpKind::kFlashAttentionGrad;
        if (!fits || !strided_op) {
          throw InternalError(fmt::format(
              "graph: op '{}' uses '{}' {}, a column slice (offset {}, row stride {}) that {}",
              op.name, t.name, shape_to_string(t.shape), t.view_offset, t.row_stride,
              fits
                  ? fmt::format("a {} op cannot take (only the fused attention's take row strides)",
                                to_string(op.kind))
                  : std::string("does not lie inside its parent's rows")));
        }
      }
    }
    if (op.kind == OpKind::kGemm) {
      if (op.inputs.size() < 2 || op.outputs.empty()) {
        throw InternalError(fmt::format("graph: gemm '{}' needs A, B and an output", op.name));
      }
      const Dim mn = op.attrs.batch * op.attrs.m * op.attrs.n;
      const Dim d = shape_numel(tensors_[op.outputs[0]].shape);
      const Dim mk = op.attrs.batch * op.attrs.m * op.attrs.k;
      const Dim kn = op.attrs.batch * op.attrs.k * op.attrs.n;
      const Dim a = shape_numel(tensors_[op.inputs[0]].shape);
      const Dim b = shape_numel(tensors_[op.inputs[1]].shape);
      // B may be shared across the batch (a weight): its size is k·n then.
      const Dim kn1 = op.attrs.k * op.attrs.n;
      if (!(d == mn) || !(a == mk) || !(b == kn || b == kn1)) {
        throw InternalError(fmt::format(
            "graph: gemm '{}' shapes disagree: m={} n={} k={} batch={}, A {} B {} D {}", op.name,
            op.attrs.m.to_string(), op.attrs.n.to_string(), op.attrs.k.to_string(),
            op.attrs.batch.to_string(), shape_to_string(tensors_[op.inputs[0]].shape),
            shape_to_string(tensors_[op.inputs[1]].shape),
            shape_to_string(tensors_[op.outputs[0]].shape)));
      }
    }
  }
}

}  // namespace lightseq
