// builder.h — the helper the lowerings (layers.cpp, model_layers.cpp) build graphs with: tensors
// by name, ops by kind, parameter gradients and slices. Internal to compiler/graph.
#pragma once

#include <fmt/format.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "compiler/graph/graph.h"

namespace lightseq::graph_detail {

// Small helper that keeps the lowering code readable: tensors by name, ops by kind.
class Builder {
 public:
  explicit Builder(Graph& g) : g_(g) {}

  int tensor(const std::string& name, Shape shape, TensorRole role = TensorRole::kActivation,
             ElemType type = ElemType::kModel) {
    return g_.add_tensor(Tensor{name, std::move(shape), role, type});
  }
  int param(const std::string& name, Shape shape, ElemType type = ElemType::kModel) {
    return tensor(name, std::move(shape), TensorRole::kParam, type);
  }
  // The gradient of a parameter; of a slice of a parameter, the same slice of the parameter's
  // gradient (one gradient tensor per caller-visible parameter).
  int grad_of_param(int param) {
    const Tensor p = g_.tensor(param);
    if (p.view_of >= 0) {
      const int root = grad_of_root(p.view_of);
      Tensor t{"grad." + p.name, p.shape, TensorRole::kParamGrad};
      t.view_of = root;
      t.view_offset = p.view_offset;
      t.part = p.part;
      t.grad_of = param;
      return g_.add_tensor(std::move(t));
    }
    return grad_of_root(param);
  }
  // A gradient of `of` given or returned by the caller (grad_y, grad_x).
  int grad(const std::string& name, Shape shape, TensorRole role, int of) {
    const int id = tensor(name, std::move(shape), role);
    g_.tensor(id).grad_of = of;
    return id;
  }
  // Rows [row, row + shape[0]) of a parameter `whole` [R, ...] (`elems_per_row` elements each).
  int slice(int whole, const std::string& name, int64_t row, int64_t elems_per_row, Shape shape) {
    const Tensor w = g_.tensor(whole);
    Tensor t{name, std::move(shape), w.role, w.type};
    t.view_of = whole;
    t.view_offset = row * elems_per_row;
    return g_.add_tensor(std::move(t));
  }
  // Equal parts of `whole` along its leading dimension.
  std::vector<int> parts(int whole, const std::vector<std::string>& names) {
    std::vector<int> ids;
    const Tensor w = g_.tensor(whole);
    Shape part_shape(w.shape.begin() + 1, w.shape.end());
    for (size_t i = 0; i < names.size(); ++i) {
      Tensor t{names[i], part_shape, w.role, w.type};
      t.view_of = whole;
      t.part = static_cast<int>(i);
      ids.push_back(g_.add_tensor(std::move(t)));
    }
    return ids;
  }
  int op(OpKind kind, const std::string& name, std::vector<int> in, std::vector<int> out,
         OpAttrs attrs = {}) {
    return g_.add_op(Op{kind, name, std::move(in), std::move(out), std::move(attrs)});
  }
  // D[batch; m, n] = alpha · op(A) · op(B)
  void gemm(const std::string& name, int a, Transpose ta, int b, Transpose tb, int d, Dim m, Dim n,
            Dim k, Dim batch = Dim::constant(1), double alpha = 1.0, std::string alpha_text = "") {
    OpAttrs at;
    at.trans_a = ta;
    at.trans_b = tb;
    at.m = m;
    at.n = n;
    at.k = k;
    at.batch = batch;
    at.alpha = alpha;
    at.alpha_text = std::move(alpha_text);
    op(OpKind::kGemm, name, {a, b}, {d}, at);
  }
  int dropout(const std::string& name, int in, int out, int site, DropoutKind kind) {
    OpAttrs at;
    at.dropout_site = site;
    at.dropout_kind = kind;
    return op(OpKind::kDropout, name, {in}, {out}, at);
  }
  int dropout_grad(const std::string& name, int in, int out, int site, DropoutKind kind) {
    OpAttrs at;
    at.dropout_site = site;
    at.dropout_kind = kind;
    return op(OpKind::kDropoutGrad, name, {in}, {out}, at);
  }
  Graph& graph() { return g_; }

 private:
  int grad_of_root(int param) {
    auto it = grads_.find(param);
    if (it != grads_.end()) return it->second;
    const Tensor p = g_.tensor(param);
    const int id = tensor("grad." + p.name, p.shape, TensorRole::kParamGrad);
    g_.tensor(id).grad_of = param;
    return grads_[param] = id;
  }
  Graph& g_;
  std::map<int, int> grads_;  // parameter → its gradient
};

}  // namespace lightseq::graph_detail
