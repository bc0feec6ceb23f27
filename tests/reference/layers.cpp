#include "tests/reference/layers.h"

#include <cmath>
#include <set>
#include <stdexcept>

#include "compiler/planner/fusion_rules.h"
#include "tests/reference/dtype.h"
#include "tests/reference/kernels.h"
#include "tests/reference/parallel.h"

namespace lightseq::ref {

namespace {

void add_into(Vec& a, const Vec& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
}
Vec sum(const Vec& a, const Vec& b) {
  Vec r = a;
  add_into(r, b);
  return r;
}

// ---- linear: Y [n, out] = X [n, in] · W^T + b ------------------------------------------------
// Rows of the output in parallel, four outputs of a row at once (four independent sums: a
// float64 sum is a chain of dependent adds); each element sums b, then k = 0, 1, ... as a serial
// loop would, so the bits do not depend on either.
Vec linear_fwd(const Vec& x, int64_t n, int64_t in, const Vec& w, const Vec& b, int64_t out) {
  Vec y(n * out);
  parallel_for(0, n, [&](int64_t r) {
    const double* xr = x.data() + r * in;
    int64_t o = 0;
    for (; o + 4 <= out; o += 4) {
      const double *w0 = w.data() + o * in, *w1 = w0 + in, *w2 = w1 + in, *w3 = w2 + in;
      double s0 = b[o], s1 = b[o + 1], s2 = b[o + 2], s3 = b[o + 3];
      for (int64_t k = 0; k < in; ++k) {
        s0 += xr[k] * w0[k];
        s1 += xr[k] * w1[k];
        s2 += xr[k] * w2[k];
        s3 += xr[k] * w3[k];
      }
      y[r * out + o] = s0, y[r * out + o + 1] = s1, y[r * out + o + 2] = s2,
                  y[r * out + o + 3] = s3;
    }
    for (; o < out; ++o) {
      double s = b[o];
      for (int64_t k = 0; k < in; ++k) s += xr[k] * w[o * in + k];
      y[r * out + o] = s;
    }
  });
  return y;
}
// Returns dX; adds into dW, db. dX by rows, dW and db by output feature, each element summing
// over o (dX) or r (dW, db) in increasing order.
Vec linear_bwd(const Vec& dy, const Vec& x, int64_t n, int64_t in, const Vec& w, int64_t out,
               Vec& dw, Vec& db) {
  Vec dx(n * in);
  parallel_for(0, n, [&](int64_t r) {
    for (int64_t o = 0; o < out; ++o) {
      const double g = dy[r * out + o];
      for (int64_t k = 0; k < in; ++k) dx[r * in + k] += g * w[o * in + k];
    }
  });
  parallel_for(0, out, [&](int64_t o) {
    for (int64_t r = 0; r < n; ++r) {
      const double g = dy[r * out + o];
      db[o] += g;
      for (int64_t k = 0; k < in; ++k) dw[o * in + k] += g * x[r * in + k];
    }
  });
  return dx;
}

// ---- LayerNorm ------------------------------------------------------------------------------
struct NormSaved {
  Vec x, mean, rstd;
};
Vec norm_fwd(const Vec& x, int64_t n, int64_t h, const NormParams& p, double eps, NormSaved& s) {
  const LnForward f = layernorm_fwd(x, p.weight, p.bias, n, h, eps);
  s = {x, f.mean, f.rstd};
  return f.y;
}
Vec norm_bwd(const Vec& dy, int64_t n, int64_t h, const NormParams& p, const NormSaved& s,
             NormParams& g) {
  Vec dx(n * h);
  for (int64_t r = 0; r < n; ++r) {
    layernorm_bwd_row(dy.data() + r * h, s.x.data() + r * h, s.mean[r], s.rstd[r], p.weight.data(),
                      h, dx.data() + r * h, g.weight.data(), g.bias.data());
  }
  return dx;
}

using planner::fusion::act_of;  // the spec activation → the kernels' Act, as the planner maps it

// ---- multi-head attention ---------------------------------------------------------------------
struct AttnShape {
  int64_t batch, q_len, k_len, hidden, heads;
  bool causal;
  const std::vector<uint8_t>* key_padding;  // [batch, k_len] or empty
};
struct AttnSaved {
  Vec xq, xkv, q, k, v, probs, ctx;  // probs [batch, heads, q_len, k_len]
};

bool masked(const AttnShape& s, int64_t b, int64_t i, int64_t j) {
  if (!s.key_padding->empty() && (*s.key_padding)[b * s.k_len + j] != 0) return true;
  return s.causal && j > i + s.k_len - s.q_len;
}

Vec rows_of(const Vec& w, int64_t first, int64_t count, int64_t width) {
  return Vec(w.begin() + first * width, w.begin() + (first + count) * width);
}

Vec attn_fwd(const AttnShape& s, const AttentionParams& p, const Vec& xq, const Vec& xkv,
             AttnSaved& sv) {
  const int64_t H = s.hidden, d = H / s.heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  sv.xq = xq;
  sv.xkv = xkv;
  sv.q = linear_fwd(xq, s.batch * s.q_len, H, rows_of(p.in_proj_weight, 0, H, H),
                    rows_of(p.in_proj_bias, 0, H, 1), H);
  sv.k = linear_fwd(xkv, s.batch * s.k_len, H, rows_of(p.in_proj_weight, H, H, H),
                    rows_of(p.in_proj_bias, H, H, 1), H);
  sv.v = linear_fwd(xkv, s.batch * s.k_len, H, rows_of(p.in_proj_weight, 2 * H, H, H),
                    rows_of(p.in_proj_bias, 2 * H, H, 1), H);
  sv.probs.assign(s.batch * s.heads * s.q_len * s.k_len, 0.0);
  sv.ctx.assign(s.batch * s.q_len * H, 0.0);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t i = 0; i < s.q_len; ++i) {
        double* P = sv.probs.data() + ((b * s.heads + h) * s.q_len + i) * s.k_len;
        double mx = -INFINITY;
        for (int64_t j = 0; j < s.k_len; ++j) {
          if (masked(s, b, i, j)) continue;
          double dot = 0;
          for (int64_t e = 0; e < d; ++e) {
            dot +=
                sv.q[(b * s.q_len + i) * H + h * d + e] * sv.k[(b * s.k_len + j) * H + h * d + e];
          }
          P[j] = dot * scale;
          mx = std::max(mx, P[j]);
        }
        double total = 0;
        for (int64_t j = 0; j < s.k_len; ++j) {
          P[j] = masked(s, b, i, j) ? 0.0 : std::exp(P[j] - mx);
          total += P[j];
        }
        for (int64_t j = 0; j < s.k_len; ++j) {
          if (total > 0) P[j] /= total;
          for (int64_t e = 0; e < d; ++e) {
            sv.ctx[(b * s.q_len + i) * H + h * d + e] +=
                P[j] * sv.v[(b * s.k_len + j) * H + h * d + e];
          }
        }
      }
    }
  }
  return linear_fwd(sv.ctx, s.batch * s.q_len, H, p.out_proj_weight, p.out_proj_bias, H);
}

// Returns {dxq, dxkv}; adds into g.
std::pair<Vec, Vec> attn_bwd(const AttnShape& s, const AttentionParams& p, const AttnSaved& sv,
                             const Vec& dout, AttentionParams& g) {
  const int64_t H = s.hidden, d = H / s.heads;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const Vec dctx = linear_bwd(dout, sv.ctx, s.batch * s.q_len, H, p.out_proj_weight, H,
                              g.out_proj_weight, g.out_proj_bias);
  Vec dq(s.batch * s.q_len * H), dk(s.batch * s.k_len * H), dv(s.batch * s.k_len * H);
  Vec dP(s.k_len);
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t i = 0; i < s.q_len; ++i) {
        const double* P = sv.probs.data() + ((b * s.heads + h) * s.q_len + i) * s.k_len;
        const double* dc = dctx.data() + (b * s.q_len + i) * H + h * d;
        double dot = 0;
        for (int64_t j = 0; j < s.k_len; ++j) {
          const double* vj = sv.v.data() + (b * s.k_len + j) * H + h * d;
          double* dvj = dv.data() + (b * s.k_len + j) * H + h * d;
          dP[j] = 0;
          for (int64_t e = 0; e < d; ++e) {
            dP[j] += dc[e] * vj[e];
            dvj[e] += P[j] * dc[e];
          }
          dot += dP[j] * P[j];
        }
        for (int64_t j = 0; j < s.k_len; ++j) {
          const double dS = P[j] * (dP[j] - dot) * scale;
          if (dS == 0) continue;
          for (int64_t e = 0; e < d; ++e) {
            dq[(b * s.q_len + i) * H + h * d + e] += dS * sv.k[(b * s.k_len + j) * H + h * d + e];
            dk[(b * s.k_len + j) * H + h * d + e] += dS * sv.q[(b * s.q_len + i) * H + h * d + e];
          }
        }
      }
    }
  }
  // The three projections, gradients written into slices of in_proj_weight / in_proj_bias.
  Vec dxq(s.batch * s.q_len * H), dxkv(s.batch * s.k_len * H);
  const Vec* grads[3] = {&dq, &dk, &dv};
  for (int part = 0; part < 3; ++part) {
    const Vec w = rows_of(p.in_proj_weight, part * H, H, H);
    Vec dw(H * H), db(H);
    const bool is_q = part == 0;
    const int64_t n = is_q ? s.batch * s.q_len : s.batch * s.k_len;
    const Vec dx = linear_bwd(*grads[part], is_q ? sv.xq : sv.xkv, n, H, w, H, dw, db);
    add_into(is_q ? dxq : dxkv, dx);
    for (int64_t i = 0; i < H * H; ++i) g.in_proj_weight[part * H * H + i] += dw[i];
    for (int64_t i = 0; i < H; ++i) g.in_proj_bias[part * H + i] += db[i];
  }
  return {dxq, dxkv};
}

// ---- feed-forward -----------------------------------------------------------------------------
struct FfSaved {
  Vec x, pre, act;
};
Vec ff_fwd(const LayerConfig& c, const LinearParams& l1, const LinearParams& l2, const Vec& x,
           int64_t n, FfSaved& s) {
  s.x = x;
  s.pre = linear_fwd(x, n, c.hidden, l1.weight, l1.bias, c.ffn);
  s.act.resize(s.pre.size());
  for (size_t i = 0; i < s.pre.size(); ++i) s.act[i] = activate(act_of(c.activation), s.pre[i]);
  return linear_fwd(s.act, n, c.ffn, l2.weight, l2.bias, c.hidden);
}
Vec ff_bwd(const LayerConfig& c, const LinearParams& l1, const LinearParams& l2, const FfSaved& s,
           const Vec& dy, int64_t n, LinearParams& g1, LinearParams& g2) {
  Vec da = linear_bwd(dy, s.act, n, c.ffn, l2.weight, c.hidden, g2.weight, g2.bias);
  for (size_t i = 0; i < da.size(); ++i) da[i] *= activate_grad(act_of(c.activation), s.pre[i]);
  return linear_bwd(da, s.x, n, c.hidden, l1.weight, c.ffn, g1.weight, g1.bias);
}

AttentionParams zeros_like(const AttentionParams& p) {
  return {Vec(p.in_proj_weight.size()), Vec(p.in_proj_bias.size()), Vec(p.out_proj_weight.size()),
          Vec(p.out_proj_bias.size())};
}
LinearParams zeros_like(const LinearParams& p) {
  return {Vec(p.weight.size()), Vec(p.bias.size())};
}
NormParams zeros_like(const NormParams& p) { return {Vec(p.weight.size()), Vec(p.bias.size())}; }

void check_config(const LayerConfig& c) {
  if (c.hidden <= 0 || c.heads <= 0 || c.hidden % c.heads != 0 || c.ffn <= 0) {
    throw std::invalid_argument("layer reference: hidden must be a positive multiple of heads");
  }
}

AttentionParams random_attention(int64_t H, Rng& rng) {
  const double a = 1.0 / std::sqrt(static_cast<double>(H));
  return {rng.uniform_vec(3 * H * H, -a, a), rng.uniform_vec(3 * H, -0.5, 0.5),
          rng.uniform_vec(H * H, -a, a), rng.uniform_vec(H, -0.5, 0.5)};
}
LinearParams random_linear(int64_t out, int64_t in, Rng& rng) {
  const double a = 1.0 / std::sqrt(static_cast<double>(in));
  return {rng.uniform_vec(out * in, -a, a), rng.uniform_vec(out, -0.5, 0.5)};
}
NormParams random_norm(int64_t H, Rng& rng) {
  return {rng.uniform_vec(H, 0.5, 1.5), rng.uniform_vec(H, -0.5, 0.5)};
}

void add_attention_names(std::vector<std::pair<std::string, Vec*>>& out, const std::string& prefix,
                         AttentionParams& a) {
  out.emplace_back(prefix + ".in_proj_weight", &a.in_proj_weight);
  out.emplace_back(prefix + ".in_proj_bias", &a.in_proj_bias);
  out.emplace_back(prefix + ".out_proj.weight", &a.out_proj_weight);
  out.emplace_back(prefix + ".out_proj.bias", &a.out_proj_bias);
}
void add_pair_names(std::vector<std::pair<std::string, Vec*>>& out, const std::string& prefix,
                    Vec& w, Vec& b) {
  out.emplace_back(prefix + ".weight", &w);
  out.emplace_back(prefix + ".bias", &b);
}

}  // namespace

EncoderLayerResult encoder_layer_reference(const LayerConfig& c, const EncoderLayerParams& p,
                                           const EncoderLayerInput& in, const Vec& grad_out) {
  check_config(c);
  const int64_t n = in.batch * in.seq, H = c.hidden;
  const AttnShape sa{in.batch, in.seq, in.seq, H, c.heads, c.causal, &in.key_padding};
  AttnSaved a_s;
  NormSaved n1, n2;
  FfSaved f_s;
  EncoderLayerResult r;
  const bool pre = c.norm == NormPlacement::kPre;
  Vec x1;
  auto stored = [&](Vec v) {
    if (c.stored) round_in_place(*c.stored, v);
    return v;
  };
  if (pre) {
    const Vec a = norm_fwd(in.x, n, H, p.norm1, c.eps, n1);
    x1 = stored(sum(in.x, attn_fwd(sa, p.self_attn, a, a, a_s)));
    const Vec b = stored(norm_fwd(x1, n, H, p.norm2, c.eps, n2));
    r.out = sum(x1, ff_fwd(c, p.linear1, p.linear2, b, n, f_s));
  } else {
    x1 = stored(
        norm_fwd(sum(in.x, attn_fwd(sa, p.self_attn, in.x, in.x, a_s)), n, H, p.norm1, c.eps, n1));
    r.out =
        norm_fwd(sum(x1, ff_fwd(c, p.linear1, p.linear2, x1, n, f_s)), n, H, p.norm2, c.eps, n2);
  }
  r.ffn_pre = f_s.pre;
  if (grad_out.empty()) return r;

  EncoderLayerParams& g = r.grad;
  g = {zeros_like(p.self_attn), zeros_like(p.linear1), zeros_like(p.linear2), zeros_like(p.norm1),
       zeros_like(p.norm2)};
  if (pre) {
    Vec dx1 = grad_out;
    add_into(dx1, norm_bwd(ff_bwd(c, p.linear1, p.linear2, f_s, grad_out, n, g.linear1, g.linear2),
                           n, H, p.norm2, n2, g.norm2));
    const auto [dq, dkv] = attn_bwd(sa, p.self_attn, a_s, dx1, g.self_attn);
    r.grad_x = dx1;
    add_into(r.grad_x, norm_bwd(sum(dq, dkv), n, H, p.norm1, n1, g.norm1));
  } else {
    const Vec df = norm_bwd(grad_out, n, H, p.norm2, n2, g.norm2);
    Vec dx1 = df;
    add_into(dx1, ff_bwd(c, p.linear1, p.linear2, f_s, df, n, g.linear1, g.linear2));
    const Vec da = norm_bwd(dx1, n, H, p.norm1, n1, g.norm1);
    const auto [dq, dkv] = attn_bwd(sa, p.self_attn, a_s, da, g.self_attn);
    r.grad_x = sum(da, sum(dq, dkv));
  }
  return r;
}

DecoderLayerResult decoder_layer_reference(const LayerConfig& c, const DecoderLayerParams& p,
                                           const DecoderLayerInput& in, const Vec& grad_out) {
  check_config(c);
  const int64_t n = in.batch * in.seq, H = c.hidden;
  const AttnShape sa{in.batch, in.seq, in.seq, H, c.heads, c.causal, &in.key_padding};
  const AttnShape ca{in.batch, in.seq, in.memory_seq, H, c.heads, false, &in.memory_key_padding};
  AttnSaved sa_s, ca_s;
  NormSaved n1, n2, n3;
  FfSaved f_s;
  DecoderLayerResult r;
  const bool pre = c.norm == NormPlacement::kPre;
  Vec x1, x2;
  auto stored = [&](Vec v) {  // as in encoder_layer_reference
    if (c.stored) round_in_place(*c.stored, v);
    return v;
  };
  if (pre) {
    const Vec a = norm_fwd(in.x, n, H, p.norm1, c.eps, n1);
    x1 = stored(sum(in.x, attn_fwd(sa, p.self_attn, a, a, sa_s)));
    const Vec b = norm_fwd(x1, n, H, p.norm2, c.eps, n2);
    x2 = stored(sum(x1, attn_fwd(ca, p.cross_attn, b, in.memory, ca_s)));
    const Vec f = stored(norm_fwd(x2, n, H, p.norm3, c.eps, n3));
    r.out = sum(x2, ff_fwd(c, p.linear1, p.linear2, f, n, f_s));
  } else {
    x1 = stored(
        norm_fwd(sum(in.x, attn_fwd(sa, p.self_attn, in.x, in.x, sa_s)), n, H, p.norm1, c.eps, n1));
    x2 = stored(norm_fwd(sum(x1, attn_fwd(ca, p.cross_attn, x1, in.memory, ca_s)), n, H, p.norm2,
                         c.eps, n2));
    r.out =
        norm_fwd(sum(x2, ff_fwd(c, p.linear1, p.linear2, x2, n, f_s)), n, H, p.norm3, c.eps, n3);
  }
  r.ffn_pre = f_s.pre;
  if (grad_out.empty()) return r;

  DecoderLayerParams& g = r.grad;
  g = {zeros_like(p.self_attn), zeros_like(p.cross_attn), zeros_like(p.linear1),
       zeros_like(p.linear2),   zeros_like(p.norm1),      zeros_like(p.norm2),
       zeros_like(p.norm3)};
  if (pre) {
    Vec dx2 = grad_out;
    add_into(dx2, norm_bwd(ff_bwd(c, p.linear1, p.linear2, f_s, grad_out, n, g.linear1, g.linear2),
                           n, H, p.norm3, n3, g.norm3));
    const auto [dq2, dmem] = attn_bwd(ca, p.cross_attn, ca_s, dx2, g.cross_attn);
    r.grad_memory = dmem;
    Vec dx1 = dx2;
    add_into(dx1, norm_bwd(dq2, n, H, p.norm2, n2, g.norm2));
    const auto [dq1, dkv1] = attn_bwd(sa, p.self_attn, sa_s, dx1, g.self_attn);
    r.grad_x = dx1;
    add_into(r.grad_x, norm_bwd(sum(dq1, dkv1), n, H, p.norm1, n1, g.norm1));
  } else {
    const Vec df = norm_bwd(grad_out, n, H, p.norm3, n3, g.norm3);
    Vec dx2 = df;
    add_into(dx2, ff_bwd(c, p.linear1, p.linear2, f_s, df, n, g.linear1, g.linear2));
    const Vec dc = norm_bwd(dx2, n, H, p.norm2, n2, g.norm2);
    const auto [dq2, dmem] = attn_bwd(ca, p.cross_attn, ca_s, dc, g.cross_attn);
    r.grad_memory = dmem;
    const Vec dx1 = sum(dc, dq2);
    const Vec da = norm_bwd(dx1, n, H, p.norm1, n1, g.norm1);
    const auto [dq1, dkv1] = attn_bwd(sa, p.self_attn, sa_s, da, g.self_attn);
    r.grad_x = sum(da, sum(dq1, dkv1));
  }
  return r;
}

namespace {

// move_off_relu_kink for either layer: `reference` recomputes the layer's result (with ffn_pre).
template <class Params, class Input, class Result>
KinkFree<Result> kink_free(const LayerConfig& c, Params& p, const Input& in, const Vec& grad_out,
                           double band_rel,
                           Result (*reference)(const LayerConfig&, const Params&, const Input&,
                                               const Vec&)) {
  KinkFree<Result> k{reference(c, p, in, grad_out), 0};
  double scale = 0;
  for (double v : k.result.ffn_pre) scale = std::max(scale, std::abs(v));
  const double band = band_rel * scale;
  const int64_t F = c.ffn, rows = static_cast<int64_t>(k.result.ffn_pre.size()) / F;
  for (;; ++k.rounds) {
    bool moved = false;
    for (int64_t j = 0; j < F; ++j) {
      auto clear_with = [&](double shift, double width) {
        for (int64_t r = 0; r < rows; ++r) {
          if (std::abs(k.result.ffn_pre[r * F + j] + shift) <= width) return false;
        }
        return true;
      };
      if (clear_with(0, band)) continue;
      // The smallest shift (in steps of 3 bands, either way) that clears the whole column by half a
      // band more than needed, so that rounding the bias to a 16-bit stored precision cannot put
      // a value back into the band.
      double shift = 0;
      for (int step = 1; step <= 64 && shift == 0; ++step) {
        for (double s : {3 * band * step, -3 * band * step}) {
          if (shift == 0 && clear_with(s, 1.5 * band)) shift = s;
        }
      }
      if (shift == 0)
        throw std::runtime_error("linear1 column " + std::to_string(j) + " cannot be moved off 0");
      p.linear1.bias[j] += shift;
      moved = true;
    }
    if (!moved) return k;
    if (k.rounds == 4)
      throw std::runtime_error("linear1's pre-activations still near 0 after 4 rounds");
    if (c.stored) round_in_place(*c.stored, p.linear1.bias);
    k.result = reference(c, p, in, grad_out);
  }
}

}  // namespace

KinkFreeResult move_off_relu_kink(const LayerConfig& c, EncoderLayerParams& p,
                                  const EncoderLayerInput& in, const Vec& grad_out,
                                  double band_rel) {
  return kink_free(c, p, in, grad_out, band_rel, &encoder_layer_reference);
}

KinkFree<DecoderLayerResult> move_off_relu_kink(const LayerConfig& c, DecoderLayerParams& p,
                                                const DecoderLayerInput& in, const Vec& grad_out,
                                                double band_rel) {
  return kink_free(c, p, in, grad_out, band_rel, &decoder_layer_reference);
}

EncoderLayerParams random_encoder_params(const LayerConfig& c, Rng& rng) {
  check_config(c);
  EncoderLayerParams p;
  p.self_attn = random_attention(c.hidden, rng);
  p.linear1 = random_linear(c.ffn, c.hidden, rng);
  p.linear2 = random_linear(c.hidden, c.ffn, rng);
  p.norm1 = random_norm(c.hidden, rng);
  p.norm2 = random_norm(c.hidden, rng);
  return p;
}

DecoderLayerParams random_decoder_params(const LayerConfig& c, Rng& rng) {
  check_config(c);
  DecoderLayerParams p;
  p.self_attn = random_attention(c.hidden, rng);
  p.cross_attn = random_attention(c.hidden, rng);
  p.linear1 = random_linear(c.ffn, c.hidden, rng);
  p.linear2 = random_linear(c.hidden, c.ffn, rng);
  p.norm1 = random_norm(c.hidden, rng);
  p.norm2 = random_norm(c.hidden, rng);
  p.norm3 = random_norm(c.hidden, rng);
  return p;
}

std::vector<std::pair<std::string, Vec*>> named_tensors(EncoderLayerParams& p) {
  std::vector<std::pair<std::string, Vec*>> out;
  add_attention_names(out, "self_attn", p.self_attn);
  add_pair_names(out, "linear1", p.linear1.weight, p.linear1.bias);
  add_pair_names(out, "linear2", p.linear2.weight, p.linear2.bias);
  add_pair_names(out, "norm1", p.norm1.weight, p.norm1.bias);
  add_pair_names(out, "norm2", p.norm2.weight, p.norm2.bias);
  return out;
}

std::vector<std::pair<std::string, Vec*>> named_tensors(DecoderLayerParams& p) {
  std::vector<std::pair<std::string, Vec*>> out;
  add_attention_names(out, "self_attn", p.self_attn);
  add_attention_names(out, "multihead_attn", p.cross_attn);
  add_pair_names(out, "linear1", p.linear1.weight, p.linear1.bias);
  add_pair_names(out, "linear2", p.linear2.weight, p.linear2.bias);
  add_pair_names(out, "norm1", p.norm1.weight, p.norm1.bias);
  add_pair_names(out, "norm2", p.norm2.weight, p.norm2.bias);
  add_pair_names(out, "norm3", p.norm3.weight, p.norm3.bias);
  return out;
}

}  // namespace lightseq::ref
