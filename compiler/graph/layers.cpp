#include "compiler/graph/layers.h"

#include <fmt/format.h>

#include <cmath>
#include <map>

#include "compiler/errors.h"
#include "compiler/graph/builder.h"

namespace lightseq {

std::string_view to_string(LayerType t) {
  switch (t) {
    case LayerType::kEncoder:
      return "encoder";
    case LayerType::kDecoder:
      return "decoder";
    case LayerType::kEmbedding:
      return "embedding";
    case LayerType::kCriterion:
      return "criterion";
    case LayerType::kOptimizer:
      return "optimizer";
    case LayerType::kFinalNorm:
      return "final_norm";
  }
  throw InternalError("unknown LayerType");
}

namespace {

using graph_detail::Builder;

std::string fmt_p(double p) { return fmt::format("{:g}", p); }

std::string stack_description(const LayerStackSpec& s) {
  return fmt::format("{} × {} {}/{}/{} {}-LN {}{}, dropout attention {} activation {} hidden {}{}",
                     s.count, to_string(s.kind), s.hidden, s.heads, s.ffn, to_string(s.norm),
                     to_string(s.activation), s.causal ? " causal" : "", fmt_p(s.dropout.attention),
                     fmt_p(s.dropout.activation), fmt_p(s.dropout.hidden),
                     s.dropout.attention_output
                         ? fmt::format(" attention output {}", fmt_p(*s.dropout.attention_output))
                         : "");
}

// The pieces shared by the sublayers of encoder and decoder layers.
class LayerLowering {
 public:
  LayerLowering(Graph& g, const LayerStackSpec& s) : b_(g), s_(s) {
    H_ = s.hidden;
    heads_ = s.heads;
    d_ = s.head_dim();
    F_ = s.ffn;
  }
  Builder& b() { return b_; }

  // A sublayer's state, kept from its forward for its backward.
  struct Sub {
    std::string p;  // prefix ("sa", "ca", "ffn")
    std::string norm_name;
    int x = -1;          // residual stream in
    int branch_in = -1;  // what the branch reads (x, or LN(x) for pre-LN)
    int out = -1;        // residual stream out
    int ln_in = -1, gamma = -1, beta = -1, mean = -1, rstd = -1;
    int bias = -1, gemm_out = -1;  // the branch's last GEMM and its bias
    int hidden_site = -1;
    DropoutKind hidden_kind = DropoutKind::kHidden;
    // attention
    int w_in = -1, b_in = -1, w_kv = -1, b_kv = -1, w_o = -1;
    int heads = -1, q = -1, k = -1, v = -1, kv_heads = -1, ctx_h = -1, ctx = -1;
    int q_src = -1, kv_src = -1, key_padding = -1;
    bool cross = false;
    // ffn
    int w1 = -1, b1 = -1, w2 = -1, h = -1, act = -1, act_dropped = -1;
    int act_site = -1, attn_site = -1;
  };

  OpAttrs attention_attrs(const Sub& sub) const {
    OpAttrs at;
    at.attn.heads = heads_;
    at.attn.head_dim = d_;
    at.attn.scale = 1.0 / std::sqrt(static_cast<double>(d_));
    at.attn.scale_text = fmt::format("1/sqrt({})", d_);
    at.attn.padding = sub.key_padding >= 0;
    at.attn.causal = !sub.cross && s_.causal;
    at.attn.dropout_site = sub.attn_site;
    at.attn.backend = s_.attention;
    at.attn.fused = s_.attention == AttentionBackend::kFused;
    at.attn.forward_op = sub.p + ".attention";
    return at;
  }

  // --- forward --------------------------------------------------------------------------------
  void norm_fwd(Sub& sub, int in, int out, const std::string& name) {
    sub.ln_in = in;
    sub.norm_name = name;
    sub.gamma = b_.param(name + ".weight", {Dim::constant(H_)});
    sub.beta = b_.param(name + ".bias", {Dim::constant(H_)});
    sub.mean =
        b_.tensor(sub.p + ".ln_mean", {Dim::tokens()}, TensorRole::kActivation, ElemType::kF32);
    sub.rstd =
        b_.tensor(sub.p + ".ln_rstd", {Dim::tokens()}, TensorRole::kActivation, ElemType::kF32);
    OpAttrs at;
    at.eps = s_.eps;
    b_.op(OpKind::kLayerNorm, name, {in, sub.gamma, sub.beta}, {out, sub.mean, sub.rstd}, at);
  }

  // Sublayer entry: pre-LN normalizes first.
  void begin(Sub& sub, int x, const std::string& norm_name) {
    sub.x = x;
    sub.norm_name = norm_name;
    if (s_.norm == NormPlacement::kPre) {
      sub.branch_in = b_.tensor(sub.p + ".ln_out", {Dim::tokens(), Dim::constant(H_)});
      norm_fwd(sub, x, sub.branch_in, norm_name);
    } else {
      sub.branch_in = x;
    }
  }

  // Sublayer exit: bias + dropout + residual (+ LN for post-LN). An attention sublayer's output
  // dropout is dropout.attention_output's where the spec sets it.
  void end(Sub& sub, const std::string& out_name, bool attention) {
    int biased = b_.tensor(sub.p + ".out_biased", {Dim::tokens(), Dim::constant(H_)});
    b_.op(OpKind::kBiasAdd, sub.p + ".out_bias", {sub.gemm_out, sub.bias}, {biased});
    int branch = biased;
    const bool own = attention && s_.dropout.attention_output.has_value();
    if ((own ? *s_.dropout.attention_output : s_.dropout.hidden) > 0) {
      sub.hidden_site = site_++;
      sub.hidden_kind = own ? DropoutKind::kAttentionOutput : DropoutKind::kHidden;
      branch = b_.tensor(sub.p + ".out_dropped", {Dim::tokens(), Dim::constant(H_)});
      b_.dropout(sub.p + ".out_dropout", biased, branch, sub.hidden_site, sub.hidden_kind);
    }
    const bool post = s_.norm == NormPlacement::kPost;
    int sum = b_.tensor(post ? sub.p + ".residual" : out_name, {Dim::tokens(), Dim::constant(H_)});
    b_.op(OpKind::kResidualAdd, sub.p + ".residual_add", {branch, sub.x}, {sum});
    if (post) {
      sub.out = b_.tensor(out_name, {Dim::tokens(), Dim::constant(H_)});
      norm_fwd(sub, sum, sub.out, sub.norm_name);
    } else {
      sub.out = sum;
    }
  }

  void attention_fwd(Sub& sub, int enc, int key_padding) {
    const Dim bt = Dim::tokens();
    const Dim H = Dim::constant(H_);
    const std::string a = sub.cross ? "multihead_attn" : "self_attn";
    if (!sub.cross) {
      sub.w_in = b_.param(a + ".in_proj_weight", {Dim::constant(3 * H_), H});
      sub.b_in = b_.param(a + ".in_proj_bias", {Dim::constant(3 * H_)});
      int qkv = b_.tensor(sub.p + ".qkv", {bt, Dim::constant(3 * H_)});
      b_.gemm(sub.p + ".qkv_proj", sub.branch_in, Transpose::kNo, sub.w_in, Transpose::kYes, qkv,
              bt, Dim::constant(3 * H_), H);
      int qkv_b = b_.tensor(sub.p + ".qkv_biased", {bt, Dim::constant(3 * H_)});
      b_.op(OpKind::kBiasAdd, sub.p + ".qkv_bias", {qkv, sub.b_in}, {qkv_b});
      sub.heads = b_.tensor(
          sub.p + ".qkv_heads",
          {Dim::constant(3), Dim::batch(), Dim::constant(heads_), Dim::seq(), Dim::constant(d_)});
      OpAttrs at;
      at.parts = 3;
      b_.op(OpKind::kSplitHeads, sub.p + ".split_heads", {qkv_b}, {sub.heads}, at);
      auto qkv_parts = b_.parts(sub.heads, {sub.p + ".q", sub.p + ".k", sub.p + ".v"});
      sub.q = qkv_parts[0], sub.k = qkv_parts[1], sub.v = qkv_parts[2];
    } else {
      // PyTorch packs the cross-attention projections in one in_proj_weight [3H, H]: rows [0, H)
      // project the query, rows [H, 3H) the key and value: two row slices of the one parameter.
      const int w = b_.param(a + ".in_proj_weight", {Dim::constant(3 * H_), H});
      const int bias = b_.param(a + ".in_proj_bias", {Dim::constant(3 * H_)});
      sub.w_in = b_.slice(w, a + ".in_proj_weight[q]", 0, H_, {H, H});
      sub.b_in = b_.slice(bias, a + ".in_proj_bias[q]", 0, 1, {H});
      sub.w_kv = b_.slice(w, a + ".in_proj_weight[kv]", H_, H_, {Dim::constant(2 * H_), H});
      sub.b_kv = b_.slice(bias, a + ".in_proj_bias[kv]", H_, 1, {Dim::constant(2 * H_)});
      int q = b_.tensor(sub.p + ".q_lin", {bt, H});
      b_.gemm(sub.p + ".q_proj", sub.branch_in, Transpose::kNo, sub.w_in, Transpose::kYes, q, bt, H,
              H);
      int q_b = b_.tensor(sub.p + ".q_biased", {bt, H});
      b_.op(OpKind::kBiasAdd, sub.p + ".q_bias", {q, sub.b_in}, {q_b});
      sub.heads = b_.tensor(
          sub.p + ".q_heads",
          {Dim::constant(1), Dim::batch(), Dim::constant(heads_), Dim::seq(), Dim::constant(d_)});
      OpAttrs at;
      at.parts = 1;
      b_.op(OpKind::kSplitHeads, sub.p + ".split_q", {q_b}, {sub.heads}, at);
      sub.q = b_.parts(sub.heads, {sub.p + ".q"})[0];
      const Dim bs = Dim::src_tokens();
      int kv = b_.tensor(sub.p + ".kv", {bs, Dim::constant(2 * H_)});
      b_.gemm(sub.p + ".kv_proj", enc, Transpose::kNo, sub.w_kv, Transpose::kYes, kv, bs,
              Dim::constant(2 * H_), H);
      int kv_b = b_.tensor(sub.p + ".kv_biased", {bs, Dim::constant(2 * H_)});
      b_.op(OpKind::kBiasAdd, sub.p + ".kv_bias", {kv, sub.b_kv}, {kv_b});
      sub.kv_heads =
          b_.tensor(sub.p + ".kv_heads", {Dim::constant(2), Dim::batch(), Dim::constant(heads_),
                                          Dim::src_seq(), Dim::constant(d_)});
      at.parts = 2;
      b_.op(OpKind::kSplitHeads, sub.p + ".split_kv", {kv_b}, {sub.kv_heads}, at);
      auto kv_parts = b_.parts(sub.kv_heads, {sub.p + ".k", sub.p + ".v"});
      sub.k = kv_parts[0], sub.v = kv_parts[1];
    }
    if (s_.dropout.attention > 0) sub.attn_site = site_++;
    sub.key_padding = key_padding;
    sub.ctx_h = b_.tensor(
        sub.p + ".ctx_heads",
        {Dim::constant(1), Dim::batch(), Dim::constant(heads_), Dim::seq(), Dim::constant(d_)});
    int ctx_part = b_.parts(sub.ctx_h, {sub.p + ".ctx_h"})[0];
    // softmax(q·kᵀ / sqrt(d) + mask) (dropped) · v: one op; the planner's attention backend pass
    // chooses how it runs (compiler/planner/attention_backend.h).
    std::vector<int> in{sub.q, sub.k, sub.v};
    if (key_padding >= 0) in.push_back(key_padding);
    b_.op(OpKind::kAttention, sub.p + ".attention", in, {ctx_part}, attention_attrs(sub));
    sub.ctx = b_.tensor(sub.p + ".ctx", {bt, H});
    OpAttrs at;
    at.parts = 1;
    b_.op(OpKind::kMergeHeads, sub.p + ".merge_heads", {sub.ctx_h}, {sub.ctx}, at);
    sub.w_o = b_.param(a + ".out_proj.weight", {H, H});
    sub.bias = b_.param(a + ".out_proj.bias", {H});
    sub.gemm_out = b_.tensor(sub.p + ".out", {bt, H});
    b_.gemm(sub.p + ".out_proj", sub.ctx, Transpose::kNo, sub.w_o, Transpose::kYes, sub.gemm_out,
            bt, H, H);
  }

  void ffn_fwd(Sub& sub) {
    const Dim bt = Dim::tokens();
    const Dim H = Dim::constant(H_), F = Dim::constant(F_);
    sub.w1 = b_.param("linear1.weight", {F, H});
    sub.b1 = b_.param("linear1.bias", {F});
    sub.w2 = b_.param("linear2.weight", {H, F});
    sub.bias = b_.param("linear2.bias", {H});
    sub.h = b_.tensor(sub.p + ".h", {bt, F});
    b_.gemm(sub.p + ".linear1", sub.branch_in, Transpose::kNo, sub.w1, Transpose::kYes, sub.h, bt,
            F, H);
    int hb = b_.tensor(sub.p + ".h_biased", {bt, F});
    b_.op(OpKind::kBiasAdd, sub.p + ".linear1_bias", {sub.h, sub.b1}, {hb});
    sub.act = b_.tensor(sub.p + ".act", {bt, F});
    OpAttrs act;
    act.activation = s_.activation;
    b_.op(OpKind::kActivation, sub.p + ".activation", {hb}, {sub.act}, act);
    sub.act_dropped = sub.act;
    if (s_.dropout.activation > 0) {
      sub.act_site = site_++;
      sub.act_dropped = b_.tensor(sub.p + ".act_dropped", {bt, F});
      b_.dropout(sub.p + ".act_dropout", sub.act, sub.act_dropped, sub.act_site,
                 DropoutKind::kActivation);
    }
    sub.gemm_out = b_.tensor(sub.p + ".out", {bt, H});
    b_.gemm(sub.p + ".linear2", sub.act_dropped, Transpose::kNo, sub.w2, Transpose::kYes,
            sub.gemm_out, bt, H, F);
  }

  // --- backward -------------------------------------------------------------------------------
  // Given the gradient of the sublayer's output, produces the gradient of the branch's last GEMM
  // output (`d_branch`) and returns the gradient flowing along the residual stream.
  int norm_grad(Sub& sub, int dy, const std::string& out_name) {
    int dz = b_.tensor(out_name, {Dim::tokens(), Dim::constant(H_)}, TensorRole::kGrad);
    int dg = b_.grad_of_param(sub.gamma), db = b_.grad_of_param(sub.beta);
    b_.op(OpKind::kLayerNormGrad, sub.norm_name + "_grad",
          {dy, sub.ln_in, sub.mean, sub.rstd, sub.gamma}, {dz, dg, db});
    return dz;
  }

  // Returns the gradient w.r.t. the branch output before bias (the last GEMM's output).
  int end_grad(Sub& sub, int dy, int* d_residual) {
    int d_sum = dy;
    if (s_.norm == NormPlacement::kPost) d_sum = norm_grad(sub, dy, sub.p + ".d_residual");
    *d_residual = d_sum;
    int d_branch = d_sum;
    if (sub.hidden_site >= 0) {
      d_branch = b_.tensor(sub.p + ".d_out_dropped", {Dim::tokens(), Dim::constant(H_)},
                           TensorRole::kGrad);
      b_.dropout_grad(sub.p + ".out_dropout_grad", d_sum, d_branch, sub.hidden_site,
                      sub.hidden_kind);
    }
    b_.op(OpKind::kBiasGrad, sub.p + ".out_bias_grad", {d_branch}, {b_.grad_of_param(sub.bias)});
    return d_branch;
  }

  // Combines the gradient reaching the branch input with the residual gradient.
  int begin_grad(Sub& sub, int d_branch_in, int d_residual, const std::string& out_name) {
    const Shape shape{Dim::tokens(), Dim::constant(H_)};
    if (s_.norm == NormPlacement::kPre) {
      int d_ln = norm_grad(sub, d_branch_in, sub.p + ".d_ln_in");
      int dx = b_.tensor(out_name, shape, TensorRole::kGrad);
      b_.op(OpKind::kGradAdd, sub.p + ".residual_grad", {d_ln, d_residual}, {dx});
      return dx;
    }
    int dx = b_.tensor(out_name, shape, TensorRole::kGrad);
    b_.op(OpKind::kGradAdd, sub.p + ".residual_grad", {d_branch_in, d_residual}, {dx});
    return dx;
  }

  // Returns the gradient of the branch input; for cross attention also accumulates into d_enc.
  int attention_grad(Sub& sub, int d_out, int d_enc) {
    const Dim bt = Dim::tokens();
    const Dim H = Dim::constant(H_);
    int d_ctx = b_.tensor(sub.p + ".d_ctx", {bt, H}, TensorRole::kGrad);
    b_.gemm(sub.p + ".out_proj_dgrad", d_out, Transpose::kNo, sub.w_o, Transpose::kNo, d_ctx, bt, H,
            H);
    b_.gemm(sub.p + ".out_proj_wgrad", d_out, Transpose::kYes, sub.ctx, Transpose::kNo,
            b_.grad_of_param(sub.w_o), H, H, bt);
    int d_ctx_h = b_.tensor(
        sub.p + ".d_ctx_heads",
        {Dim::constant(1), Dim::batch(), Dim::constant(heads_), Dim::seq(), Dim::constant(d_)},
        TensorRole::kGrad);
    OpAttrs one;
    one.parts = 1;
    b_.op(OpKind::kMergeHeadsGrad, sub.p + ".merge_heads_grad", {d_ctx}, {d_ctx_h}, one);
    int d_ctx_part = b_.parts(d_ctx_h, {sub.p + ".d_ctx_h"})[0];
    // gradient of the head tensors (q | k | v), written part by part
    int d_heads = -1, d_q = -1, d_k = -1, d_v = -1, d_kv_heads = -1;
    if (!sub.cross) {
      d_heads =
          b_.tensor(sub.p + ".d_qkv_heads", b_.graph().tensor(sub.heads).shape, TensorRole::kGrad);
      auto p = b_.parts(d_heads, {sub.p + ".d_q", sub.p + ".d_k", sub.p + ".d_v"});
      d_q = p[0], d_k = p[1], d_v = p[2];
    } else {
      d_heads =
          b_.tensor(sub.p + ".d_q_heads", b_.graph().tensor(sub.heads).shape, TensorRole::kGrad);
      d_q = b_.parts(d_heads, {sub.p + ".d_q"})[0];
      d_kv_heads = b_.tensor(sub.p + ".d_kv_heads", b_.graph().tensor(sub.kv_heads).shape,
                             TensorRole::kGrad);
      auto p = b_.parts(d_kv_heads, {sub.p + ".d_k", sub.p + ".d_v"});
      d_k = p[0], d_v = p[1];
    }
    std::vector<int> in{d_ctx_part, sub.q, sub.k, sub.v};
    if (sub.key_padding >= 0) in.push_back(sub.key_padding);
    b_.op(OpKind::kAttentionGrad, sub.p + ".attention_grad", in, {d_q, d_k, d_v},
          attention_attrs(sub));
    const int parts_q = sub.cross ? 1 : 3;
    int d_lin = b_.tensor(sub.p + (sub.cross ? ".d_q_lin" : ".d_qkv"),
                          {bt, Dim::constant(parts_q * H_)}, TensorRole::kGrad);
    OpAttrs at;
    at.parts = parts_q;
    b_.op(OpKind::kSplitHeadsGrad, sub.p + (sub.cross ? ".split_q_grad" : ".split_heads_grad"),
          {d_heads}, {d_lin}, at);
    b_.op(OpKind::kBiasGrad, sub.p + (sub.cross ? ".q_bias_grad" : ".qkv_bias_grad"), {d_lin},
          {b_.grad_of_param(sub.b_in)});
    int d_in = b_.tensor(sub.p + ".d_branch_in", {bt, H}, TensorRole::kGrad);
    b_.gemm(sub.p + (sub.cross ? ".q_proj_dgrad" : ".qkv_proj_dgrad"), d_lin, Transpose::kNo,
            sub.w_in, Transpose::kNo, d_in, bt, H, Dim::constant(parts_q * H_));
    b_.gemm(sub.p + (sub.cross ? ".q_proj_wgrad" : ".qkv_proj_wgrad"), d_lin, Transpose::kYes,
            sub.branch_in, Transpose::kNo, b_.grad_of_param(sub.w_in), Dim::constant(parts_q * H_),
            H, bt);
    if (sub.cross) {
      const Dim bs = Dim::src_tokens();
      int d_kv = b_.tensor(sub.p + ".d_kv", {bs, Dim::constant(2 * H_)}, TensorRole::kGrad);
      at.parts = 2;
      b_.op(OpKind::kSplitHeadsGrad, sub.p + ".split_kv_grad", {d_kv_heads}, {d_kv}, at);
      b_.op(OpKind::kBiasGrad, sub.p + ".kv_bias_grad", {d_kv}, {b_.grad_of_param(sub.b_kv)});
      // d_enc accumulates over every decoder layer: the caller zeroes it before the stack.
      b_.gemm(sub.p + ".kv_proj_dgrad", d_kv, Transpose::kNo, sub.w_kv, Transpose::kNo, d_enc, bs,
              H, Dim::constant(2 * H_));
      b_.graph().ops_mut_last().attrs.accumulate_output = true;
      b_.gemm(sub.p + ".kv_proj_wgrad", d_kv, Transpose::kYes, enc_, Transpose::kNo,
              b_.grad_of_param(sub.w_kv), Dim::constant(2 * H_), H, bs);
    }
    return d_in;
  }

  int ffn_grad(Sub& sub, int d_out) {
    const Dim bt = Dim::tokens();
    const Dim H = Dim::constant(H_), F = Dim::constant(F_);
    int d_act_dropped = b_.tensor(sub.p + ".d_act_dropped", {bt, F}, TensorRole::kGrad);
    b_.gemm(sub.p + ".linear2_dgrad", d_out, Transpose::kNo, sub.w2, Transpose::kNo, d_act_dropped,
            bt, F, H);
    b_.gemm(sub.p + ".linear2_wgrad", d_out, Transpose::kYes, sub.act_dropped, Transpose::kNo,
            b_.grad_of_param(sub.w2), H, F, bt);
    int d_act = d_act_dropped;
    if (sub.act_site >= 0) {
      d_act = b_.tensor(sub.p + ".d_act", {bt, F}, TensorRole::kGrad);
      b_.dropout_grad(sub.p + ".act_dropout_grad", d_act_dropped, d_act, sub.act_site,
                      DropoutKind::kActivation);
    }
    int d_h = b_.tensor(sub.p + ".d_h", {bt, F}, TensorRole::kGrad);
    // The activation's derivative is taken at h + b1 (the pre-activation); the forward's output
    // (after its dropout: what linear2 read) comes along, from which ReLU's follows (kOutput).
    OpAttrs act;
    act.activation = s_.activation;
    b_.op(OpKind::kActivationGrad, sub.p + ".activation_grad",
          {d_act, sub.h, sub.b1, sub.act_dropped}, {d_h}, act);
    b_.op(OpKind::kBiasGrad, sub.p + ".linear1_bias_grad", {d_h}, {b_.grad_of_param(sub.b1)});
    int d_in = b_.tensor(sub.p + ".d_branch_in", {bt, H}, TensorRole::kGrad);
    b_.gemm(sub.p + ".linear1_dgrad", d_h, Transpose::kNo, sub.w1, Transpose::kNo, d_in, bt, H, F);
    b_.gemm(sub.p + ".linear1_wgrad", d_h, Transpose::kYes, sub.branch_in, Transpose::kNo,
            b_.grad_of_param(sub.w1), F, H, bt);
    return d_in;
  }

  int enc_ = -1;

 private:
  Builder b_;
  const LayerStackSpec& s_;
  int64_t H_, heads_, d_, F_;
  int site_ = 0;
};

LayerGraph lower_stack(const LayerStackSpec& s, int index) {
  LayerGraph lg;
  const bool decoder = s.kind == LayerKind::kDecoder;
  lg.type = decoder ? LayerType::kDecoder : LayerType::kEncoder;
  lg.name = fmt::format("layers[{}]", index);
  lg.description = stack_description(s);
  lg.count = s.count;
  LayerLowering L(lg.graph, s);
  Builder& b = L.b();
  const Shape hs{Dim::tokens(), Dim::constant(s.hidden)};
  int x = b.tensor("x", hs, TensorRole::kInput);
  // Self-attention keys are the layer's own tokens: the padding mask [B, T] applies to them.
  int pad =
      b.tensor("key_padding_mask", {Dim::batch(), Dim::seq()}, TensorRole::kInput, ElemType::kU8);
  int enc = -1, enc_pad = -1;
  if (decoder) {
    enc = b.tensor("encoder_out", {Dim::src_tokens(), Dim::constant(s.hidden)}, TensorRole::kInput);
    enc_pad = b.tensor("encoder_padding_mask", {Dim::batch(), Dim::src_seq()}, TensorRole::kInput,
                       ElemType::kU8);
    L.enc_ = enc;
  }
  using Sub = LayerLowering::Sub;
  Sub sa, ca, ffn;
  sa.p = "sa";
  ca.p = "ca";
  ffn.p = "ffn";
  ca.cross = true;
  // forward
  L.begin(sa, x, "norm1");
  L.attention_fwd(sa, -1, pad);
  L.end(sa, decoder ? "sa.y" : "attn.y", true);
  int stream = sa.out;
  if (decoder) {
    L.begin(ca, stream, "norm2");
    L.attention_fwd(ca, enc, enc_pad);
    L.end(ca, "ca.y", true);
    stream = ca.out;
  }
  L.begin(ffn, stream, decoder ? "norm3" : "norm2");
  L.ffn_fwd(ffn);
  L.end(ffn, "y", false);
  lg.graph.tensor(ffn.out).role = TensorRole::kOutput;

  // backward
  lg.graph.begin_backward();
  int dy = b.grad("grad_y", hs, TensorRole::kGradInput, b.graph().tensor_id("y"));
  int d_enc = decoder ? b.grad("grad_encoder_out", {Dim::src_tokens(), Dim::constant(s.hidden)},
                               TensorRole::kGradOutput, b.graph().tensor_id("encoder_out"))
                      : -1;
  int d_res = -1;
  int d_branch = L.end_grad(ffn, dy, &d_res);
  int d_stream =
      L.begin_grad(ffn, L.ffn_grad(ffn, d_branch), d_res, decoder ? "ca.d_y" : "attn.d_y");
  if (decoder) {
    d_branch = L.end_grad(ca, d_stream, &d_res);
    d_stream = L.begin_grad(ca, L.attention_grad(ca, d_branch, d_enc), d_res, "sa.d_y");
  }
  d_branch = L.end_grad(sa, d_stream, &d_res);
  const int grad_x = L.begin_grad(sa, L.attention_grad(sa, d_branch, -1), d_res, "grad_x");
  lg.graph.tensor(grad_x).role = TensorRole::kGradOutput;
  lg.graph.tensor(grad_x).grad_of = lg.graph.tensor_id("x");
  lg.graph.verify();
  return lg;
}

}  // namespace

LayerGraph lower_encoder(const LayerStackSpec& stack, int index) {
  if (stack.kind != LayerKind::kEncoder) throw InternalError("lower_encoder: not an encoder stack");
  return lower_stack(stack, index);
}

LayerGraph lower_decoder(const LayerStackSpec& stack, int index) {
  if (stack.kind != LayerKind::kDecoder) throw InternalError("lower_decoder: not a decoder stack");
  return lower_stack(stack, index);
}

std::vector<LayerGraph> lower_model(const ModelSpec& spec) {
  std::vector<LayerGraph> out;
  if (spec.embedding) out.push_back(lower_embedding(*spec.embedding));
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    out.push_back(lower_stack(spec.layers[i], static_cast<int>(i)));
    if (spec.layers[i].final_norm)
      out.push_back(lower_final_norm(spec.layers[i], static_cast<int>(i)));
  }
  if (spec.criterion) {
    if (!spec.embedding) throw InternalError("lower_model: a criterion needs an embedding (vocab)");
    out.push_back(lower_criterion(*spec.criterion, *spec.embedding));
  }
  if (spec.optimizer) out.push_back(lower_optimizer(*spec.optimizer, spec));
  return out;
}

}  // namespace lightseq
