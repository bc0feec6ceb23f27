#include "tests/reference/kernels.h"

#include <cmath>
#include <limits>

namespace lightseq::ref {

using kern::Act;
using kern::Drop;
using kern::Mask;
using kern::Norm;

// ---- dropout ----------------------------------------------------------------------------------

bool keep(const DropoutArgs& d, uint64_t i) { return kern::dropout_keep(d, i); }

double dropout(const DropoutArgs& d, uint64_t i, double x) {
  return keep(d, i) ? x * static_cast<double>(d.scale) : 0.0;
}

bool attn_keep(const DropoutArgs& d, uint64_t row, int64_t k_len, int64_t j) {
  return kern::attn_keep_bits<1>(d, row, k_len, j) != 0;
}

std::vector<uint8_t> attn_keep_mask(const DropoutArgs& d, int64_t rows, int64_t k_len) {
  std::vector<uint8_t> m(rows * k_len);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j0 = 0; j0 < k_len; j0 += 8) {
      const uint32_t byte = kern::attn_keep_byte(d, kern::attn_group(r, k_len, j0));
      for (int64_t e = 0; e < 8 && j0 + e < k_len; ++e) m[r * k_len + j0 + e] = (byte >> e) & 1u;
    }
  }
  return m;
}

std::vector<uint8_t> keep_mask(const DropoutArgs& d, uint64_t n) {
  std::vector<uint8_t> m(n);
  for (uint64_t g = 0; g * 4 < n; ++g) {
    const kern::Philox4 r = kern::dropout_draws(d, g);
    for (uint64_t k = 0; k < 4 && 4 * g + k < n; ++k) {
      m[4 * g + k] = static_cast<uint64_t>(r.v[k]) < d.keep_below;
    }
  }
  return m;
}

// ---- layernorm --------------------------------------------------------------------------------

Vec bias_dropout_residual(const Vec& branch, const Vec& bias, const Vec& residual, int64_t rows,
                          int64_t hidden, const DropoutArgs* drop) {
  Vec z(rows * hidden);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < hidden; ++c) {
      const int64_t i = r * hidden + c;
      const double x = branch[i] + bias[c];
      z[i] = residual[i] + (drop ? dropout(*drop, i, x) : x);
    }
  }
  return z;
}

LnForward layernorm_fwd(const Vec& z, const Vec& gamma, const Vec& beta, int64_t rows,
                        int64_t hidden, double eps) {
  LnForward f{Vec(rows * hidden), Vec(rows), Vec(rows)};
  for (int64_t r = 0; r < rows; ++r) {
    const double* x = z.data() + r * hidden;
    double mean = 0;
    for (int64_t c = 0; c < hidden; ++c) mean += x[c];
    mean /= hidden;
    double var = 0;
    for (int64_t c = 0; c < hidden; ++c) var += (x[c] - mean) * (x[c] - mean);
    var /= hidden;
    const double rstd = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < hidden; ++c) {
      f.y[r * hidden + c] = (x[c] - mean) * rstd * gamma[c] + beta[c];
    }
    f.mean[r] = mean;
    f.rstd[r] = rstd;
  }
  return f;
}

void layernorm_bwd_row(const double* g, const double* z, double mean, double rstd,
                       const double* gamma, int64_t hidden, double* dx, double* dgamma,
                       double* dbeta) {
  double m1 = 0, m2 = 0;
  for (int64_t c = 0; c < hidden; ++c) {
    const double xhat = (z[c] - mean) * rstd;
    m1 += g[c] * gamma[c];
    m2 += g[c] * gamma[c] * xhat;
    if (dgamma) dgamma[c] += g[c] * xhat;
    if (dbeta) dbeta[c] += g[c];
  }
  m1 /= hidden;
  m2 /= hidden;
  for (int64_t c = 0; c < hidden; ++c) {
    const double xhat = (z[c] - mean) * rstd;
    dx[c] = rstd * (g[c] * gamma[c] - m1 - xhat * m2);
  }
}

LnBackward ln_bwd(const Vec& grad_out, const Vec& z, const Vec& mean, const Vec& rstd,
                  const Vec& gamma, const Vec& grad_residual, int64_t rows, int64_t hidden,
                  Norm norm, kern::ResidualIn res, Drop drop, const DropoutArgs& d) {
  LnBackward b{Vec(rows * hidden), Vec(rows * hidden), Vec(hidden), Vec(hidden), Vec(hidden)};
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * hidden;
    if (norm == Norm::kOn) {
      layernorm_bwd_row(grad_out.data() + base, z.data() + base, mean[r], rstd[r], gamma.data(),
                        hidden, b.grad_z.data() + base, b.dgamma.data(), b.dbeta.data());
    } else {
      for (int64_t c = 0; c < hidden; ++c) b.grad_z[base + c] = grad_out[base + c];
    }
    for (int64_t c = 0; c < hidden; ++c) {
      const int64_t i = base + c;
      if (res == kern::ResidualIn::kOn) b.grad_z[i] += grad_residual[i];
      b.grad_branch[i] = drop == Drop::kOn ? dropout(d, i, b.grad_z[i]) : b.grad_z[i];
      b.dbias[c] += b.grad_branch[i];
    }
  }
  return b;
}

// ---- bias_act_dropout ---------------------------------------------------------------------------

double activate(Act act, double x) {
  switch (act) {
    case Act::kNone:
      return x;
    case Act::kRelu:
      return x > 0 ? x : 0.0;
    case Act::kGelu:
      return 0.5 * x * (1.0 + std::erf(x * M_SQRT1_2));
    case Act::kGeluTanh:
      return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
  }
  return std::numeric_limits<double>::quiet_NaN();
}

double activate_grad(Act act, double x) {
  switch (act) {
    case Act::kNone:
      return 1.0;
    case Act::kRelu:
      return x > 0 ? 1.0 : 0.0;
    case Act::kGelu:
      return 0.5 * (1.0 + std::erf(x * M_SQRT1_2)) +
             x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    case Act::kGeluTanh: {
      const double c = std::sqrt(2.0 / M_PI);
      const double t = std::tanh(c * (x + 0.044715 * x * x * x));
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x);
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

Vec bias_act_dropout_fwd(const Vec& x, const Vec& bias, int64_t rows, int64_t cols, Act act,
                         Drop drop, const DropoutArgs& d) {
  Vec out(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) {
    const double a = activate(act, x[i] + bias[i % cols]);
    out[i] = drop == Drop::kOn ? dropout(d, i, a) : a;
  }
  return out;
}

BiasActBackward bias_act_dropout_bwd(const Vec& grad_out, const Vec& x, const Vec& bias,
                                     int64_t rows, int64_t cols, Act act, Drop drop,
                                     const DropoutArgs& d) {
  BiasActBackward b{Vec(rows * cols), Vec(cols)};
  for (int64_t i = 0; i < rows * cols; ++i) {
    const double g = drop == Drop::kOn ? dropout(d, i, grad_out[i]) : grad_out[i];
    b.grad_x[i] = activate_grad(act, x[i] + bias[i % cols]) * g;
    b.dbias[i % cols] += b.grad_x[i];
  }
  return b;
}

// ---- head layout ------------------------------------------------------------------------------

Vec split_heads(const Vec& in, const Vec& bias, int64_t batch, int64_t seq, int64_t hidden,
                int64_t heads, int64_t parts) {
  const int64_t d = hidden / heads;
  Vec out(parts * batch * seq * hidden);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      for (int64_t p = 0; p < parts; ++p) {
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t e = 0; e < d; ++e) {
            const int64_t col = p * hidden + h * d + e;
            const double v =
                in[(b * seq + s) * parts * hidden + col] + (bias.empty() ? 0 : bias[col]);
            out[(((p * batch + b) * heads + h) * seq + s) * d + e] = v;
          }
        }
      }
    }
  }
  return out;
}

MergeHeads merge_heads(const Vec& in, int64_t batch, int64_t seq, int64_t hidden, int64_t heads,
                       int64_t parts) {
  const int64_t d = hidden / heads, width = parts * hidden;
  MergeHeads m{Vec(batch * seq * width), Vec(width)};
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < seq; ++s) {
      for (int64_t p = 0; p < parts; ++p) {
        for (int64_t h = 0; h < heads; ++h) {
          for (int64_t e = 0; e < d; ++e) {
            const int64_t col = p * hidden + h * d + e;
            const double v = in[(((p * batch + b) * heads + h) * seq + s) * d + e];
            m.out[(b * seq + s) * width + col] = v;
            m.colsum[col] += v;
          }
        }
      }
    }
  }
  return m;
}

// ---- softmax ----------------------------------------------------------------------------------

std::vector<uint8_t> test_key_padding(Rng& rng, int64_t batch, int64_t k_len) {
  std::vector<uint8_t> pad(batch * k_len, 0);
  for (int64_t b = 1; b < batch; ++b) {
    for (int64_t j = 0; j < k_len; ++j) {
      pad[b * k_len + j] = b == 1 ? 1 : (j >= k_len - k_len / 4 || rng.below(5) == 0) && j > 0;
    }
  }
  return pad;
}

bool attn_masked(Mask mask, const std::vector<uint8_t>& key_padding, int64_t b, int64_t i,
                 int64_t j, int64_t q_len, int64_t k_len) {
  if (kern::has_padding(mask) && key_padding[b * k_len + j] != 0) return true;
  if (kern::has_causal(mask) && j > i + k_len - q_len) return true;
  return false;
}

SoftmaxForward attn_softmax_fwd(const Vec& scores, const std::vector<uint8_t>& key_padding,
                                int64_t batch, int64_t heads, int64_t q_len, int64_t k_len,
                                Mask mask, Drop drop, const DropoutArgs& d) {
  SoftmaxForward f{Vec(scores.size()), Vec(scores.size())};
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < q_len; ++i) {
        const int64_t base = ((b * heads + h) * q_len + i) * k_len;
        double mx = -INFINITY;
        for (int64_t j = 0; j < k_len; ++j) {
          if (!attn_masked(mask, key_padding, b, i, j, q_len, k_len))
            mx = std::max(mx, scores[base + j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < k_len; ++j) {
          const bool m = attn_masked(mask, key_padding, b, i, j, q_len, k_len);
          f.probs[base + j] = m ? 0.0 : std::exp(scores[base + j] - mx);
          sum += f.probs[base + j];
        }
        for (int64_t j = 0; j < k_len; ++j) {
          if (sum > 0) f.probs[base + j] /= sum;  // a fully masked row stays all zeros
          const bool kept = drop == Drop::kOff || attn_keep(d, base / k_len, k_len, j);
          f.dropped[base + j] =
              kept ? f.probs[base + j] * (drop == Drop::kOn ? d.scale : 1.0) : 0.0;
        }
      }
    }
  }
  return f;
}

Vec attn_softmax_bwd(const Vec& grad_dropped, const Vec& probs, int64_t rows, int64_t k_len,
                     Drop drop, const DropoutArgs& d) {
  Vec g(rows * k_len);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t base = r * k_len;
    double dot = 0;
    for (int64_t j = 0; j < k_len; ++j) {
      const bool kept = drop == Drop::kOff || attn_keep(d, r, k_len, j);
      const double dp = kept ? grad_dropped[base + j] * (drop == Drop::kOn ? d.scale : 1.0) : 0.0;
      g[base + j] = dp;
      dot += dp * probs[base + j];
    }
    for (int64_t j = 0; j < k_len; ++j) g[base + j] = probs[base + j] * (g[base + j] - dot);
  }
  return g;
}

// ---- embedding --------------------------------------------------------------------------------

double sinusoidal(int64_t t, int64_t c, int64_t hidden) {
  const int64_t half = hidden / 2;
  const int64_t k = c < half ? c : c - half;
  const double freq = std::exp(-static_cast<double>(k) * std::log(10000.0) / (half - 1));
  return c < half ? std::sin(t * freq) : std::cos(t * freq);
}

namespace {

// The position of row r's token: its index, or padding_idx + the count of non-padding tokens of
// its sequence up to and including it (fairseq's make_positions).
int64_t position(const EmbeddingArgs& a, const std::vector<int64_t>& tokens, int64_t r) {
  const int64_t t = r % a.seq;
  if (a.pos_from == kern::PosFrom::kIndex) return t;
  if (tokens[r] == a.padding_idx) return a.padding_idx;  // fairseq's make_positions
  int64_t n = 0;
  for (int64_t j = r - t; j <= r; ++j) n += tokens[j] != a.padding_idx ? 1 : 0;
  return a.padding_idx + n;
}

}  // namespace

namespace {
// A row's token type (0 without types or ids), -1 outside [0, n_types).
int64_t type_of(const EmbeddingArgs& a, int64_t row) {
  if (a.n_types == 0) return 0;
  const int64_t t = a.types.empty() ? 0 : a.types[row];
  return t >= 0 && t < a.n_types ? t : -1;
}
}  // namespace

EmbeddingForward embedding_fwd(const EmbeddingArgs& a, const std::vector<int64_t>& tokens,
                               const Vec& table, const Vec& pos_table, const Vec& gamma,
                               const Vec& beta, const Vec* ln_input) {
  const int64_t rows = a.batch * a.seq, H = a.hidden;
  EmbeddingForward f;
  f.kind.resize(rows);
  f.sum.assign(rows * H, 0.0);
  f.out.assign(rows * H, 0.0);
  f.mean.assign(rows, 0.0);
  f.rstd.assign(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = position(a, tokens, r), tok = tokens[r], type = type_of(a, r);
    if (tok < 0 || tok >= a.vocab || t >= a.max_positions || type < 0) {
      f.kind[r] = RowKind::kBad;
      f.bad_token = true;
      continue;
    }
    if (tok == a.padding_idx && a.zero_padding) {
      f.kind[r] = RowKind::kPadding;
      continue;
    }
    f.kind[r] = RowKind::kToken;  // an embedded padding token too
    double* e = f.sum.data() + r * H;
    for (int64_t c = 0; c < H; ++c) {
      double p = 0;
      if (a.pos == kern::Pos::kSinusoidal) p = sinusoidal(t, c, H);
      if (a.pos == kern::Pos::kLearned) p = pos_table[t * H + c];
      e[c] = table[tok * H + c] * a.scale + p;
      if (a.n_types > 0) e[c] += a.type_table[type * H + c];
    }
    Vec y(e, e + H);
    if (a.norm == Norm::kOn) {
      const Vec z = ln_input ? Vec(ln_input->begin() + r * H, ln_input->begin() + (r + 1) * H) : y;
      const LnForward ln = layernorm_fwd(z, gamma, beta, 1, H, a.eps);
      y = ln.y;
      f.mean[r] = ln.mean[0];
      f.rstd[r] = ln.rstd[0];
    }
    for (int64_t c = 0; c < H; ++c) {
      f.out[r * H + c] = a.drop == Drop::kOn ? dropout(a.d, r * H + c, y[c]) : y[c];
    }
  }
  return f;
}

EmbeddingBackward embedding_bwd(const EmbeddingArgs& a, const Vec& grad_out,
                                const std::vector<int64_t>& tokens, const Vec& sum_out,
                                const Vec& mean, const Vec& rstd, const Vec& gamma) {
  const int64_t rows = a.batch * a.seq, H = a.hidden;
  EmbeddingBackward b{Vec(a.vocab * H), Vec(a.max_positions * H), Vec(a.n_types * H), Vec(H),
                      Vec(H)};
  Vec g(H), de(H);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = position(a, tokens, r), tok = tokens[r], type = type_of(a, r);
    const bool padding = tok == a.padding_idx;
    if (tok < 0 || tok >= a.vocab || t >= a.max_positions || type < 0 ||
        (padding && a.zero_padding))
      continue;
    for (int64_t c = 0; c < H; ++c) {
      const int64_t i = r * H + c;
      g[c] = a.drop == Drop::kOn ? dropout(a.d, i, grad_out[i]) : grad_out[i];
    }
    if (a.norm == Norm::kOn) {
      layernorm_bwd_row(g.data(), sum_out.data() + r * H, mean[r], rstd[r], gamma.data(), H,
                        de.data(), b.dgamma.data(), b.dbeta.data());
    } else {
      de = g;
    }
    for (int64_t c = 0; c < H; ++c) {
      // An embedded padding token: no gradient into its table row (nn.Embedding's padding_idx),
      // nor into its counted position's row (padding_idx too); its index position gets one.
      if (!padding) b.grad_table[tok * H + c] += a.scale * de[c];
      const bool pos_grad = !padding || a.pos_from == kern::PosFrom::kIndex;
      if (a.pos == kern::Pos::kLearned && pos_grad) b.grad_pos[t * H + c] += de[c];
      if (a.n_types > 0) b.grad_type[type * H + c] += de[c];
    }
  }
  return b;
}

// ---- cross entropy ----------------------------------------------------------------------------

CrossEntropy cross_entropy(const Vec& logits, const std::vector<int64_t>& targets, int64_t rows,
                           int64_t vocab, int64_t ignore_index, double eps, double grad_scale) {
  CrossEntropy ce{Vec(rows), Vec(rows), Vec(rows * vocab), false};
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t y = targets[r];
    if (y == ignore_index) continue;
    if (y < 0 || y >= vocab) {
      ce.bad_target = true;
      continue;
    }
    const double* x = logits.data() + r * vocab;
    double mx = -INFINITY;
    for (int64_t j = 0; j < vocab; ++j) mx = std::max(mx, x[j]);
    double sum = 0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(x[j] - mx);
    const double lse = mx + std::log(sum);
    double sum_neg_logp = 0;
    for (int64_t j = 0; j < vocab; ++j) {
      sum_neg_logp += lse - x[j];
      const double p = std::exp(x[j] - lse);
      ce.grad[r * vocab + j] = grad_scale * (p - (j == y ? 1.0 - eps : 0.0) - eps / vocab);
    }
    ce.nll[r] = lse - x[y];
    ce.loss[r] = (1.0 - eps) * ce.nll[r] + eps / vocab * sum_neg_logp;
  }
  return ce;
}

// ---- adam -------------------------------------------------------------------------------------

void adam_step(kern::AdamMode mode, const AdamHyper& h, double g, double& p, double& m, double& v) {
  g *= h.grad_scale;
  if (mode == kern::AdamMode::kAdam) g += h.weight_decay * p;
  m = h.beta1 * m + (1 - h.beta1) * g;
  v = h.beta2 * v + (1 - h.beta2) * g * g;
  if (mode == kern::AdamMode::kAdamW) p -= h.lr * h.weight_decay * p;
  p -= h.lr * (m / h.bias_correction1) / (std::sqrt(v / h.bias_correction2) + h.eps);
}

double adam_update_slack(kern::AdamMode mode, const AdamHyper& h, double g, double p, double m,
                         double v) {
  // g' = g·grad_scale (+ wd·p) rounded to fp32 is off by up to an ulp of its larger term; move it
  // by 2 ulp (in units of g) either way and take the spread of the updated weight.
  const double term = std::fabs(g * h.grad_scale) +
                      (mode == kern::AdamMode::kAdam ? std::fabs(h.weight_decay * p) : 0);
  const double dg = std::ldexp(term, -22) / (h.grad_scale != 0 ? h.grad_scale : 1);
  double p_lo = p, m_lo = m, v_lo = v, p_hi = p, m_hi = m, v_hi = v;
  adam_step(mode, h, g - dg, p_lo, m_lo, v_lo);
  adam_step(mode, h, g + dg, p_hi, m_hi, v_hi);
  return std::fabs(p_hi - p_lo);
}

// ---- output projection + criterion ------------------------------------------------------------

OutputCriterion output_criterion(const Vec& h, const Vec& w, const std::vector<int64_t>& targets,
                                 int64_t rows, int64_t hidden, int64_t vocab, int64_t ignore_index,
                                 double smoothing) {
  Vec logits(rows * vocab);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < vocab; ++j) {
      double s = 0;
      for (int64_t c = 0; c < hidden; ++c) s += h[r * hidden + c] * w[j * hidden + c];
      logits[r * vocab + j] = s;
    }
  }
  OutputCriterion out{cross_entropy(logits, targets, rows, vocab, ignore_index, smoothing, 1.0),
                      Vec(rows * hidden, 0.0), Vec(vocab * hidden, 0.0)};
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < vocab; ++j) {
      const double g = out.ce.grad[r * vocab + j];
      if (g == 0) continue;
      for (int64_t c = 0; c < hidden; ++c) {
        out.grad_h[r * hidden + c] += g * w[j * hidden + c];
        out.grad_w[j * hidden + c] += g * h[r * hidden + c];
      }
    }
  }
  return out;
}

// ---- reduce -----------------------------------------------------------------------------------

Vec column_sum(const Vec& partials, int64_t n_blocks, int64_t stride, int64_t col_offset,
               int64_t cols, const Vec& out, kern::Accumulate acc) {
  Vec r(cols);
  for (int64_t c = 0; c < cols; ++c) {
    double s = 0;
    for (int64_t b = 0; b < n_blocks; ++b) s += partials[b * stride + col_offset + c];
    r[c] = (acc == kern::Accumulate::kAdd ? out[c] : 0.0) + s;
  }
  return r;
}

}  // namespace lightseq::ref
