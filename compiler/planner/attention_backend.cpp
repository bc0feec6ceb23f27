#include "compiler/planner/attention_backend.h"

#include <fmt/format.h>

#include <map>
#include <set>

#include "compiler/errors.h"
#include "compiler/spec/rules.h"
#include "flash_attention.sig.cuh"

namespace lightseq {

namespace {

// What the forward of one attention op made that its gradient reads: the unfused backend's
// probabilities, or the fused backend's context and log-sum-exp.
struct Saved {
  bool fused = false;
  int probs = -1, dropped = -1;
  int ctx = -1, lse = -1;
};

// "sa.attention" → "sa".
std::string prefix_of(const std::string& op_name) {
  const size_t dot = op_name.rfind('.');
  return dot == std::string::npos ? op_name : op_name.substr(0, dot);
}

class Rewriter {
 public:
  explicit Rewriter(Graph& g) : g_(g) {}

  int tensor(const std::string& name, Shape shape, TensorRole role,
             ElemType type = ElemType::kModel) {
    return g_.add_tensor(Tensor{name, std::move(shape), role, type});
  }
  void op(OpKind kind, const std::string& name, std::vector<int> in, std::vector<int> out,
          OpAttrs at = {}) {
    ops_.push_back(Op{kind, name, std::move(in), std::move(out), std::move(at)});
  }
  // D[batch; m, n] = alpha · op(A) · op(B)
  void gemm(const std::string& name, int a, Transpose ta, int b, Transpose tb, int d, Dim m, Dim n,
            Dim k, Dim batch, double alpha = 1.0, std::string alpha_text = "") {
    OpAttrs at;
    at.trans_a = ta, at.trans_b = tb;
    at.m = m, at.n = n, at.k = k, at.batch = batch;
    at.alpha = alpha;
    at.alpha_text = std::move(alpha_text);
    op(OpKind::kGemm, name, {a, b}, {d}, at);
  }
  void keep(const Op& o) { ops_.push_back(o); }
  std::vector<Op>& ops() { return ops_; }
  const Tensor& t(int id) const { return g_.tensor(id); }

 private:
  Graph& g_;
  std::vector<Op> ops_;
};

// The sizes of an attention over q [B, heads, T, d] and k, v [B, heads, S, d] (views).
struct Sizes {
  Dim seq_q, seq_k, d, bh;
  Shape scores;
};
Sizes sizes_of(const Rewriter& r, const Op& op) {
  const Shape& q = r.t(op.inputs[0]).shape;
  const Shape& k = r.t(op.inputs[1]).shape;
  if (q.size() != 4 || k.size() != 4) {
    throw InternalError(
        fmt::format("attention backend: '{}' expects [B, heads, T, d] views", op.name));
  }
  return {q[2], k[2], q[3], q[0] * q[1], Shape{q[0], q[1], q[2], k[2]}};
}

Saved unfused_forward(Rewriter& r, const Op& op) {
  const OpAttrs::Attention& a = op.attrs.attn;
  const std::string p = prefix_of(op.name);
  const Sizes z = sizes_of(r, op);
  const int q = op.inputs[0], k = op.inputs[1], v = op.inputs[2], ctx = op.outputs[0];
  const int scores = r.tensor(p + ".scores", z.scores, TensorRole::kActivation);
  r.gemm(p + ".scores", q, Transpose::kNo, k, Transpose::kYes, scores, z.seq_q, z.seq_k, z.d, z.bh,
         a.scale, a.scale_text);
  const int masked = r.tensor(p + ".scores_masked", z.scores, TensorRole::kActivation);
  OpAttrs mask;
  mask.padding_mask = a.padding;
  mask.causal = a.causal;
  std::vector<int> mask_in{scores};
  if (a.padding) mask_in.push_back(op.inputs.at(3));
  r.op(OpKind::kAttentionMask, p + ".mask", mask_in, {masked}, mask);
  Saved s;
  s.probs = r.tensor(p + ".probs", z.scores, TensorRole::kActivation);
  r.op(OpKind::kSoftmax, p + ".softmax", {masked}, {s.probs});
  s.dropped = s.probs;
  if (a.dropout_site >= 0) {
    s.dropped = r.tensor(p + ".probs_dropped", z.scores, TensorRole::kActivation);
    OpAttrs d;
    d.dropout_site = a.dropout_site;
    d.dropout_kind = DropoutKind::kAttention;
    r.op(OpKind::kDropout, p + ".probs_dropout", {s.probs}, {s.dropped}, d);
  }
  r.gemm(p + ".context", s.dropped, Transpose::kNo, v, Transpose::kNo, ctx, z.seq_q, z.d, z.seq_k,
         z.bh);
  return s;
}

void unfused_backward(Rewriter& r, const Op& op, const Saved& s) {
  const OpAttrs::Attention& a = op.attrs.attn;
  const std::string p = prefix_of(op.attrs.attn.forward_op);
  Op fwd_like = op;
  fwd_like.inputs.erase(fwd_like.inputs.begin());  // q, k, v as in the forward
  const Sizes z = sizes_of(r, fwd_like);
  const int d_ctx = op.inputs[0], q = op.inputs[1], k = op.inputs[2], v = op.inputs[3];
  const int d_q = op.outputs[0], d_k = op.outputs[1], d_v = op.outputs[2];
  const int d_dropped = r.tensor(p + ".d_probs_dropped", z.scores, TensorRole::kGrad);
  r.gemm(p + ".context_dgrad_probs", d_ctx, Transpose::kNo, v, Transpose::kYes, d_dropped, z.seq_q,
         z.seq_k, z.d, z.bh);
  r.gemm(p + ".context_dgrad_v", s.dropped, Transpose::kYes, d_ctx, Transpose::kNo, d_v, z.seq_k,
         z.d, z.seq_q, z.bh);
  int d_probs = d_dropped;
  if (a.dropout_site >= 0) {
    d_probs = r.tensor(p + ".d_probs", z.scores, TensorRole::kGrad);
    OpAttrs d;
    d.dropout_site = a.dropout_site;
    d.dropout_kind = DropoutKind::kAttention;
    r.op(OpKind::kDropoutGrad, p + ".probs_dropout_grad", {d_dropped}, {d_probs}, d);
  }
  const int d_scores = r.tensor(p + ".d_scores", z.scores, TensorRole::kGrad);
  r.op(OpKind::kSoftmaxGrad, p + ".softmax_grad", {d_probs, s.probs}, {d_scores});
  r.gemm(p + ".scores_dgrad_q", d_scores, Transpose::kNo, k, Transpose::kNo, d_q, z.seq_q, z.d,
         z.seq_k, z.bh, a.scale, a.scale_text);
  r.gemm(p + ".scores_dgrad_k", d_scores, Transpose::kYes, q, Transpose::kNo, d_k, z.seq_k, z.d,
         z.seq_q, z.bh, a.scale, a.scale_text);
}

// The fused kernels read and write the token layout of the projections around the attention
// (flash_attention.cuh): q, k and v as column slices of the packed projection [B·T, P·H], the
// context as the output projection's input [B·T, H], the gradients likewise. The lowering's head
// split before the attention and merge after it, and their gradients, are dropped for them.
class TokenLayout {
 public:
  explicit TokenLayout(Graph& g) : g_(g) {}

  // Records what the fused attention op (or its gradient) at `op` reads and writes in the token
  // layout, and the head moves around it that go.
  void forward(const Op& op) {
    for (int i = 0; i < 3; ++i) replace_[op.inputs[i]] = columns(op.inputs[i], OpKind::kSplitHeads);
    replace_[op.outputs[0]] = merged(op.outputs[0], OpKind::kMergeHeads, /*after=*/true);
  }
  void backward(const Op& op) {
    replace_[op.inputs[0]] = merged(op.inputs[0], OpKind::kMergeHeadsGrad, /*after=*/false);
    for (int i = 0; i < 3; ++i) {
      replace_[op.outputs[i]] = columns(op.outputs[i], OpKind::kSplitHeadsGrad);
    }
  }
  int operator()(int tensor) const {
    auto it = replace_.find(tensor);
    return it == replace_.end() ? tensor : it->second;
  }
  bool dropped(int op) const { return dropped_.count(op) > 0; }

 private:
  const Op& the_op(int tensor, OpKind kind, bool reader) {
    const int heads = g_.tensor(tensor).view_of;
    if (heads >= 0) {
      const std::vector<int> ops =
          reader ? g_.consumers(heads) : std::vector<int>{g_.producer(heads)};
      for (int o : ops) {
        if (o >= 0 && g_.ops()[o].kind == kind) {
          dropped_.insert(o);
          return g_.ops()[o];
        }
      }
    }
    throw InternalError(fmt::format("attention backend: '{}' is no part of a {} of heads",
                                    g_.tensor(tensor).name, to_string(kind)));
  }
  // Part i of a [P, B, heads, T, d] tensor split from (or merged into) packed rows [B·T, P·H]: the
  // column slice [i·H, (i + 1)·H) of those rows, or the rows themselves where P = 1.
  int columns(int part, OpKind move) {
    const bool split = move == OpKind::kSplitHeads;
    const Op& o = the_op(part, move, /*reader=*/!split);
    const int packed = split ? o.inputs[0] : o.outputs[0];
    const int parts = o.attrs.parts;
    if (parts == 1) return packed;
    const Tensor& whole = g_.tensor(packed);
    const Tensor& head_part = g_.tensor(part);
    const int64_t width = whole.shape.back().factor / parts;
    static constexpr const char* kNames[] = {"q", "k", "v"};
    const int first = parts == 2 ? 1 : 0;  // [kv]: the cross-attention's key and value
    Tensor t{fmt::format("{}[{}]", whole.name, kNames[first + head_part.part]),
             {whole.shape[0], Dim::constant(width)},
             whole.role,
             whole.type};
    t.view_of = packed;
    t.view_offset = head_part.part * width;
    t.row_stride = parts * width;
    return g_.add_tensor(std::move(t));
  }
  // The one part of a [1, B, heads, T, d] tensor merged into (or split from) [B·T, H] rows.
  int merged(int part, OpKind move, bool after) {
    const Op& o = the_op(part, move, /*reader=*/after);
    if (o.attrs.parts != 1) {
      throw InternalError(
          fmt::format("attention backend: '{}' moves {} parts, not 1", o.name, o.attrs.parts));
    }
    return after ? o.outputs[0] : o.inputs[0];
  }

  Graph& g_;
  std::map<int, int> replace_;
  std::set<int> dropped_;
};

// The fused backend (templates/flash_attention.cuh): one forward op saving the context and the
// log-sum-exp, and a backward of three ops recomputing the probabilities; both in the token
// layout (TokenLayout).
Saved fused_forward(Rewriter& r, const Op& op, const TokenLayout& tokens) {
  const std::string p = prefix_of(op.name);
  const Sizes z = sizes_of(r, op);
  const Shape q = r.t(op.inputs[0]).shape;  // [B, heads, T, d]
  Saved s;
  s.fused = true;
  s.ctx = tokens(op.outputs[0]);
  s.lse = r.tensor(p + ".lse", {q[0], q[1], z.seq_q}, TensorRole::kActivation, ElemType::kF32);
  OpAttrs at = op.attrs;
  at.dropout_site = op.attrs.attn.dropout_site;
  at.dropout_kind = DropoutKind::kAttention;
  std::vector<int> in{tokens(op.inputs[0]), tokens(op.inputs[1]), tokens(op.inputs[2])};
  if (op.attrs.attn.padding) in.push_back(op.inputs.at(3));
  r.op(OpKind::kFlashAttention, p + ".flash_attention", in, {s.ctx, s.lse}, at);
  return s;
}

void fused_backward(Rewriter& r, const Op& op, const Saved& s, const TokenLayout& tokens) {
  const std::string p = prefix_of(op.attrs.attn.forward_op);
  std::vector<int> in{tokens(op.inputs[1]),
                      tokens(op.inputs[2]),
                      tokens(op.inputs[3]),
                      tokens(op.inputs[0]),
                      s.lse,
                      s.ctx};
  if (op.attrs.attn.padding) in.push_back(op.inputs.at(4));
  OpAttrs at = op.attrs;
  at.dropout_site = op.attrs.attn.dropout_site;
  at.dropout_kind = DropoutKind::kAttention;
  r.op(OpKind::kFlashAttentionGrad, p + ".flash_grad", in,
       {tokens(op.outputs[0]), tokens(op.outputs[1]), tokens(op.outputs[2])}, at);
}

// Why an attention op may not run fused ("" when it may): the kernels' limits.
std::string fused_refusal(const Op& op, Precision precision) {
  const int64_t d = op.attrs.attn.head_dim;
  if (precision == Precision::kFp32) return "the fused kernels run fp16 and bf16";
  if (!spec_detail::fused_head_dim_ok(d)) {
    return fmt::format("head_dim {} (the fused kernels: up to {} by {})", d,
                       spec_detail::kFusedMaxHeadDim, spec_detail::kFusedHeadDimMultiple);
  }
  return "";
}

// An "auto" attention's rule (one per layer: its attentions share heads).
FusedRule fused_rule_of(const Op& op) {
  return {spec_detail::kAutoFusedMaxKeys, kern::kFlashMaxBatchHeads / op.attrs.attn.heads};
}

// Why the pass runs `op` as it does, for `lsc plan`.
std::string choice_reason(const Op& op, Precision precision) {
  const OpAttrs::Attention& a = op.attrs.attn;
  const bool by_rule = a.backend == AttentionBackend::kAuto;
  if (a.fused) {
    const std::string why =
        by_rule ? fmt::format(
                      "\"attention\": \"auto\", for calls whose attentions have at most "
                      "{} keys and whose batch is at most {}: measured faster there "
                      "(compiler/spec/rules.h)",
                      fused_rule_of(op).max_keys, fused_rule_of(op).max_batch)
                : std::string("the spec asks for it (\"attention\": \"fused\")");
    return why +
           ": scores never materialized; the backward recomputes them from q, k and the "
           "log-sum-exp, in the projections' token layout (no head split or merge)";
  }
  const std::string refusal = fused_refusal(op, precision);
  const std::string why =
      !by_rule ? std::string("the spec's \"attention\": \"unfused\" (its default)")
      : refusal.empty()
          ? fmt::format(
                "\"attention\": \"auto\", for calls with more than {} keys or a batch "
                "above {} (the layer's fused plan runs the others)",
                fused_rule_of(op).max_keys, fused_rule_of(op).max_batch)
          : fmt::format("\"attention\": \"auto\", but the fused kernels cannot run: {}", refusal);
  return why + ": scores materialized as [B, heads, T, S]";
}

}  // namespace

std::optional<FusedVariant> auto_fused_variant(const LayerGraph& layer, Precision precision) {
  FusedVariant v{layer, {}};
  std::vector<Op> ops = layer.graph.ops();
  bool any = false;
  for (Op& op : ops) {
    if (op.kind != OpKind::kAttention || op.attrs.attn.backend != AttentionBackend::kAuto) continue;
    if (!fused_refusal(op, precision).empty()) return std::nullopt;
    op.attrs.attn.fused = true;
    v.rule = fused_rule_of(op);
    any = true;
  }
  if (!any) return std::nullopt;
  v.layer.graph.set_ops(std::move(ops), layer.graph.backward_begin());
  return v;
}

std::vector<AttentionChoice> choose_attention(LayerGraph& layer, Precision precision) {
  Graph& g = layer.graph;
  const std::vector<Op> old = g.ops();
  const int old_split = g.backward_begin();
  Rewriter r(g);
  std::vector<AttentionChoice> choices;
  std::map<std::string, Saved> saved;  // forward op name → what its gradient reads
  // The fused ops' token layout, first: it drops head moves that come before them.
  TokenLayout tokens(g);
  std::set<std::string> fused;
  for (const Op& op : old) {
    if (op.kind == OpKind::kAttention && op.attrs.attn.fused) {
      tokens.forward(op);
      fused.insert(op.name);
    } else if (op.kind == OpKind::kAttentionGrad && fused.count(op.attrs.attn.forward_op)) {
      tokens.backward(op);
    }
  }
  int split = -1;
  for (int i = 0; i < static_cast<int>(old.size()); ++i) {
    if (i == old_split) split = static_cast<int>(r.ops().size());
    const Op& op = old[i];
    if (tokens.dropped(i)) continue;
    if (op.kind == OpKind::kAttention) {
      if (op.attrs.attn.fused) {
        const std::string why = fused_refusal(op, precision);
        if (!why.empty()) {  // the spec validator refuses these: a planner bug if one gets here
          throw InternalError(
              fmt::format("attention backend: '{}' cannot run fused: {}", op.name, why));
        }
        choices.push_back({op.name, "fused", choice_reason(op, precision)});
        saved[op.name] = fused_forward(r, op, tokens);
      } else {
        choices.push_back({op.name, "unfused", choice_reason(op, precision)});
        saved[op.name] = unfused_forward(r, op);
      }
    } else if (op.kind == OpKind::kAttentionGrad) {
      auto it = saved.find(op.attrs.attn.forward_op);
      if (it == saved.end()) {
        throw InternalError(
            fmt::format("attention backend: '{}' differentiates '{}', which is not in the forward",
                        op.name, op.attrs.attn.forward_op));
      }
      if (it->second.fused) {
        fused_backward(r, op, it->second, tokens);
      } else {
        unfused_backward(r, op, it->second);
      }
    } else {
      r.keep(op);
    }
  }
  if (split < 0) split = static_cast<int>(r.ops().size());
  if (!choices.empty()) {
    g.set_ops(std::move(r.ops()), split);
    g.verify();
  }
  return choices;
}

}  // namespace lightseq
