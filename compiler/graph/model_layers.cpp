// model_layers.cpp — lowering of the model-level layers of a spec: the embedding, the output
// projection + criterion, and the optimizer (the layer stacks are layers.cpp's).
#include <fmt/format.h>

#include <cmath>

#include "compiler/errors.h"
#include "compiler/graph/builder.h"
#include "compiler/graph/layers.h"
#include "compiler/graph/param_arena.h"

namespace lightseq {

using graph_detail::Builder;

LayerGraph lower_embedding(const EmbeddingSpec& e) {
  LayerGraph lg;
  lg.type = LayerType::kEmbedding;
  lg.name = "embedding";
  lg.description = fmt::format(
      "embedding {}×{}, {} positions (max {}){}{}, scale {:g}{}, dropout {:g}", e.vocab, e.hidden,
      to_string(e.positions), e.max_positions,
      e.padding_idx >= 0 && e.padding_rows == PaddingRows::kEmbedded ? ", padding embedded" : "",
      e.token_types > 0 ? fmt::format(", {} token types", e.token_types) : "", e.scale,
      e.layernorm ? ", layernorm" : "", e.dropout);
  Builder b(lg.graph);
  const Dim H = Dim::constant(e.hidden);
  const Shape hs{Dim::tokens(), H};
  int tokens = b.tensor("tokens", {Dim::batch(), Dim::seq()}, TensorRole::kInput, ElemType::kI64);
  int table = b.param("embed_tokens.weight", {Dim::constant(e.vocab), H});
  std::vector<int> in{tokens, table};
  int pos = -1;
  if (e.positions == PositionKind::kLearned) {
    pos = b.param("embed_positions.weight", {Dim::constant(e.max_positions), H});
    in.push_back(pos);
  }
  // BERT's token types: ids (may be left null: all type 0) and their table, after the others.
  int types = -1, type_table = -1;
  if (e.token_types > 0) {
    types = b.tensor("token_types", {Dim::batch(), Dim::seq()}, TensorRole::kInput, ElemType::kI64);
    lg.graph.tensor(types).optional = true;
    type_table = b.param("embed_token_types.weight", {Dim::constant(e.token_types), H});
    in.push_back(types);
    in.push_back(type_table);
  }
  int sum = b.tensor("embedded", hs);
  // Set to 1 (never cleared) when a token is outside [0, vocab) or a position past max_positions.
  int bad = b.tensor("bad_token", {Dim::constant(1)}, TensorRole::kOutput, ElemType::kI32);
  std::vector<int> outs{sum, bad};
  // The stacks' key padding mask (1 where the token is padding_idx), made with the lookup.
  if (e.padding_idx >= 0) {
    outs.push_back(
        b.tensor("padding_mask", {Dim::batch(), Dim::seq()}, TensorRole::kOutput, ElemType::kU8));
  }
  OpAttrs lookup;
  lookup.vocab = e.vocab;
  lookup.padding_idx = e.padding_idx;
  lookup.max_positions = e.max_positions;
  lookup.positions_from = e.positions_from;
  lookup.padding_rows = e.padding_rows;
  lookup.scale = e.scale;
  lookup.token_types = e.token_types;
  lookup.learned_positions = pos >= 0;
  b.op(OpKind::kEmbedding, "embed", in, outs, lookup);
  int cur = sum;
  int gamma = -1, beta = -1, mean = -1, rstd = -1;
  if (e.layernorm) {
    gamma = b.param("layernorm.weight", {H});
    beta = b.param("layernorm.bias", {H});
    mean = b.tensor("ln_mean", {Dim::tokens()}, TensorRole::kActivation, ElemType::kF32);
    rstd = b.tensor("ln_rstd", {Dim::tokens()}, TensorRole::kActivation, ElemType::kF32);
    int normed = b.tensor("normed", hs);
    OpAttrs at;
    at.eps = e.layernorm_eps;
    b.op(OpKind::kLayerNorm, "layernorm", {sum, gamma, beta}, {normed, mean, rstd}, at);
    cur = normed;
  }
  int out = cur;
  if (e.dropout > 0) {
    out = b.tensor("out", hs);
    b.dropout("dropout", cur, out, 0, DropoutKind::kEmbedding);
  }
  lg.graph.tensor(out).role = TensorRole::kOutput;
  lg.graph.begin_backward();
  int dy = b.grad("grad_out", hs, TensorRole::kGradInput, out);
  int d = dy;
  if (e.dropout > 0) {
    d = b.tensor("d_dropped", hs, TensorRole::kGrad);
    b.dropout_grad("dropout_grad", dy, d, 0, DropoutKind::kEmbedding);
  }
  if (e.layernorm) {
    int dsum = b.tensor("d_embedded", hs, TensorRole::kGrad);
    b.op(OpKind::kLayerNormGrad, "layernorm_grad", {d, sum, mean, rstd, gamma},
         {dsum, b.grad_of_param(gamma), b.grad_of_param(beta)});
    d = dsum;
  }
  // Gradients in the order of the keys they are grouped by: token, position, type.
  std::vector<int> grads{b.grad_of_param(table)};
  if (pos >= 0) grads.push_back(b.grad_of_param(pos));
  std::vector<int> grad_in{d, tokens};
  if (types >= 0) {
    grads.push_back(b.grad_of_param(type_table));
    grad_in.push_back(types);
  }
  b.op(OpKind::kEmbeddingGrad, "embed_grad", grad_in, grads, lookup);
  lg.graph.verify();
  return lg;
}

namespace {

// What both criteria declare after their inputs, in manifest order: the per-row loss and NLL, the
// logits' gradient (`d_role`: internal to the fused linear + cross-entropy, an output of a loss
// over given logits), the bad-target flag, and the mean reduction's scale and count.
struct CeTensors {
  int loss, nll, d_logits, bad, loss_scale, total_tokens, grad_scale, n_tokens;
};

CeTensors declare_cross_entropy(Builder& b, Dim rows, Dim vocab, TensorRole d_role,
                                const char* d_name) {
  const Shape one{Dim::constant(1)};
  CeTensors t;
  t.loss = b.tensor("loss", {rows}, TensorRole::kOutput, ElemType::kF32);
  t.nll = b.tensor("nll", {rows}, TensorRole::kOutput, ElemType::kF32);
  t.d_logits = b.tensor(d_name, {rows, vocab}, d_role);
  // Set to 1 (never cleared) when a target is outside [0, vocab) and not the ignore index.
  t.bad = b.tensor("bad_target", one, TensorRole::kOutput, ElemType::kI32);
  // The loss is the mean over the counted targets (torch's reduction='mean'): d_logits is
  // multiplied by loss_scale / their count, both in device memory (the optimizer's loss scale; a
  // captured step counts each batch's targets on the device).
  t.loss_scale = b.tensor("loss_scale", one, TensorRole::kInput, ElemType::kF32);
  // Optional: the count of targets over every process of a data-parallel group (runtime/comm.h),
  // which divides instead of this call's own count, so that each process's gradients are its
  // share of the whole batch's mean and their sum is that mean's gradient.
  t.total_tokens = b.tensor("total_tokens", one, TensorRole::kInput, ElemType::kF32);
  b.graph().tensor(t.total_tokens).optional = true;
  t.grad_scale = b.tensor("grad_scale", one, TensorRole::kActivation, ElemType::kF32);
  t.n_tokens = b.tensor("n_tokens", one, TensorRole::kOutput, ElemType::kF32);
  return t;
}

OpAttrs cross_entropy_attrs(const CriterionSpec& c, const EmbeddingSpec& e) {
  OpAttrs ce;
  ce.vocab = e.vocab;
  ce.ignore_index = c.ignore_index;
  ce.label_smoothing = c.label_smoothing;
  return ce;
}

// A cross-entropy over logits computed elsewhere (lightseq.nn.CrossEntropyLoss): the loss and the
// logits' gradient of the mean loss in one pass, both outputs of the forward (the caller scales the
// gradient by the loss's incoming gradient); nothing to save, no backward.
LayerGraph lower_logits_criterion(const CriterionSpec& c, const EmbeddingSpec& e) {
  LayerGraph lg;
  lg.type = LayerType::kCriterion;
  lg.name = "criterion";
  lg.description =
      fmt::format("cross-entropy over {} logits, label smoothing {:g}, ignore index {}", e.vocab,
                  c.label_smoothing, c.ignore_index);
  Builder b(lg.graph);
  const Dim V = Dim::constant(e.vocab), bt = Dim::tokens();
  int logits = b.tensor("logits", {bt, V}, TensorRole::kInput);
  int targets = b.tensor("targets", {Dim::batch(), Dim::seq()}, TensorRole::kInput, ElemType::kI64);
  const CeTensors t = declare_cross_entropy(b, bt, V, TensorRole::kOutput, "grad_logits");
  const OpAttrs ce = cross_entropy_attrs(c, e);
  b.op(OpKind::kGradScale, "grad_scale", {targets, t.loss_scale, t.total_tokens},
       {t.grad_scale, t.n_tokens}, ce);
  b.op(OpKind::kCrossEntropy, "cross_entropy", {logits, targets, t.grad_scale},
       {t.loss, t.nll, t.d_logits, t.bad}, ce);
  lg.graph.begin_backward();
  lg.graph.verify();
  return lg;
}

}  // namespace

LayerGraph lower_criterion(const CriterionSpec& c, const EmbeddingSpec& e) {
  if (c.input == CriterionInput::kLogits) return lower_logits_criterion(c, e);
  LayerGraph lg;
  lg.type = LayerType::kCriterion;
  lg.name = "criterion";
  lg.description = fmt::format(
      "output projection {}×{}{} + cross-entropy, label smoothing {:g}, ignore index {}", e.hidden,
      e.vocab, e.tie_output ? " (tied to the embedding)" : "", c.label_smoothing, c.ignore_index);
  Builder b(lg.graph);
  const Dim H = Dim::constant(e.hidden), V = Dim::constant(e.vocab), bt = Dim::tokens();
  int h = b.tensor("decoder_out", {bt, H}, TensorRole::kInput);
  int targets = b.tensor("targets", {Dim::batch(), Dim::seq()}, TensorRole::kInput, ElemType::kI64);
  int w = b.param(e.tie_output ? "embed_tokens.weight" : "output_projection.weight", {V, H});
  // Forward and backward in one pass: the gradient of the logits is produced with the loss.
  const CeTensors t = declare_cross_entropy(b, bt, V, TensorRole::kGrad, "d_logits");
  OpAttrs ce = cross_entropy_attrs(c, e);
  ce.logits_chunk_bytes = c.logits_chunk_mib << 20;
  // First: the count is over every row, also when the rest runs in chunks of rows.
  b.op(OpKind::kGradScale, "grad_scale", {targets, t.loss_scale, t.total_tokens},
       {t.grad_scale, t.n_tokens}, ce);
  int logits = b.tensor("logits", {bt, V});
  b.gemm("output_proj", h, Transpose::kNo, w, Transpose::kYes, logits, bt, V, H);
  b.op(OpKind::kCrossEntropy, "cross_entropy", {logits, targets, t.grad_scale},
       {t.loss, t.nll, t.d_logits, t.bad}, ce);
  lg.graph.begin_backward();
  int dh = b.grad("grad_decoder_out", {bt, H}, TensorRole::kGradOutput, h);
  b.gemm("output_proj_dgrad", t.d_logits, Transpose::kNo, w, Transpose::kNo, dh, bt, H, V);
  // Tied: the embedding's backward adds its scatter into this gradient.
  b.gemm("output_proj_wgrad", t.d_logits, Transpose::kYes, h, Transpose::kNo, b.grad_of_param(w), V,
         H, bt);
  lg.graph.verify();
  return lg;
}

LayerGraph lower_final_norm(const LayerStackSpec& s, int index) {
  LayerGraph lg;
  lg.type = LayerType::kFinalNorm;
  lg.name = fmt::format("layers[{}].final_norm", index);
  lg.description =
      fmt::format("LayerNorm after the last {} stack, eps {:g}", to_string(s.kind), s.eps);
  Builder b(lg.graph);
  const Dim H = Dim::constant(s.hidden);
  const Shape hs{Dim::tokens(), H};
  const std::string prefix = fmt::format("{}.norm", to_string(s.kind));
  int x = b.tensor("x", hs, TensorRole::kInput);
  int gamma = b.param(prefix + ".weight", {H});
  int beta = b.param(prefix + ".bias", {H});
  int mean = b.tensor("ln_mean", {Dim::tokens()}, TensorRole::kActivation, ElemType::kF32);
  int rstd = b.tensor("ln_rstd", {Dim::tokens()}, TensorRole::kActivation, ElemType::kF32);
  int y = b.tensor("y", hs, TensorRole::kOutput);
  OpAttrs at;
  at.eps = s.eps;
  b.op(OpKind::kLayerNorm, "norm", {x, gamma, beta}, {y, mean, rstd}, at);
  lg.graph.begin_backward();
  int dy = b.grad("grad_y", hs, TensorRole::kGradInput, y);
  int dx = b.grad("grad_x", hs, TensorRole::kGradOutput, x);
  b.op(OpKind::kLayerNormGrad, "norm_grad", {dy, x, mean, rstd, gamma},
       {dx, b.grad_of_param(gamma), b.grad_of_param(beta)});
  lg.graph.verify();
  return lg;
}

LayerGraph lower_optimizer(const OptimizerSpec& o, const ModelSpec& model) {
  LayerGraph lg;
  lg.type = LayerType::kOptimizer;
  lg.name = "optimizer";
  lg.description = fmt::format("{} lr {:g}, betas ({:g}, {:g}), eps {:g}, weight decay {:g}{}",
                               to_string(o.kind), o.lr, o.beta1, o.beta2, o.eps, o.weight_decay,
                               model.precision == Precision::kFp32 ? "" : ", fp32 master weights");
  Builder b(lg.graph);
  // The optimizer sees its parameters as one list of the run's `batch` elements: the model's
  // parameter arena (param_arena.h; the model-level step passes its total, or a part of it when
  // it updates a layer's parameters as soon as their gradients are complete), or, in a spec with
  // nothing else (lightseq.optim), parameters that live elsewhere.
  const Shape all{Dim::batch()};
  const Shape one{Dim::constant(1)};
  std::vector<int> in{b.param("params", all),
                      b.tensor("grads", all, TensorRole::kInput),
                      b.param("exp_avg", all, ElemType::kF32),
                      b.param("exp_avg_sq", all, ElemType::kF32),
                      b.tensor("lr", one, TensorRole::kInput, ElemType::kF32),
                      b.param("optim_state", one, ElemType::kOptimState)};
  if (model.precision != Precision::kFp32)
    in.push_back(b.param("master_params", all, ElemType::kF32));
  OpAttrs at;
  at.optimizer = o.kind;
  at.adam.beta1 = o.beta1;
  at.adam.beta2 = o.beta2;
  at.adam.eps = o.eps;
  at.adam.weight_decay = o.weight_decay;
  // fp16 gradients overflow: dynamic loss scaling with torch.amp.GradScaler's defaults.
  if (model.precision == Precision::kFp16) at.adam.growth_interval = 2000;
  at.adam.clip_norm = o.clip_norm;
  b.op(OpKind::kAdam, "step", in, {}, at);
  lg.graph.verify();
  return lg;
}

}  // namespace lightseq
