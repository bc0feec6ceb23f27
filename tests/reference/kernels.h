// kernels.h — float64 CPU references of every kernel of docs/kernels.md, with the semantics
// written there. Inputs are doubles that already hold the values the device reads (rounded to the
// kernel's element type); outputs are exact (double) results the kernels are compared against.
// Dropout draws the same Philox bits as the kernels (templates/common/philox.cuh, compiled on the
// host), so a reference keeps exactly the elements the kernel keeps. Matrices are row-major;
// rows = b·T + t.
#pragma once

#include <cstdint>
#include <vector>

#include "common/enums.cuh"
#include "common/philox.cuh"
#include "tests/reference/random.h"

namespace lightseq::ref {

using Vec = std::vector<double>;
using kern::DropoutArgs;

// ---- dropout ----------------------------------------------------------------------------------
bool keep(const DropoutArgs& d, uint64_t i);                       // element i survives
double dropout(const DropoutArgs& d, uint64_t i, double x);        // keep ? x · scale : 0
std::vector<uint8_t> keep_mask(const DropoutArgs& d, uint64_t n);  // 1 = kept, elements [0, n)
// The attention probabilities' numbering (common/philox.cuh): entry j of row `row` of a
// [rows, k_len] matrix survives; the mask of the whole matrix.
bool attn_keep(const DropoutArgs& d, uint64_t row, int64_t k_len, int64_t j);
std::vector<uint8_t> attn_keep_mask(const DropoutArgs& d, int64_t rows, int64_t k_len);

// ---- layernorm.cuh ----------------------------------------------------------------------------
// z = residual + dropout(branch + bias), dropout on iff drop != nullptr (index row·hidden + col).
Vec bias_dropout_residual(const Vec& branch, const Vec& bias, const Vec& residual, int64_t rows,
                          int64_t hidden, const DropoutArgs* drop);
struct LnForward {
  Vec y, mean, rstd;  // y [rows, hidden]; mean, rstd [rows] (biased variance, 1/sqrt(var + eps))
};
LnForward layernorm_fwd(const Vec& z, const Vec& gamma, const Vec& beta, int64_t rows,
                        int64_t hidden, double eps);

struct LnBackward {
  Vec grad_z;                // [rows, hidden]
  Vec grad_branch;           // [rows, hidden]: dropout_mask(grad_z) (Drop::kOn), else grad_z
  Vec dgamma, dbeta, dbias;  // [hidden]; dbias = Σ_rows grad_branch
};
// ln_bwd_kernel. mean/rstd are the values the kernel is given (not recomputed from z). With
// Norm::kOff z, mean, rstd, gamma are unused; with ResidualIn::kOff grad_residual is unused.
LnBackward ln_bwd(const Vec& grad_out, const Vec& z, const Vec& mean, const Vec& rstd,
                  const Vec& gamma, const Vec& grad_residual, int64_t rows, int64_t hidden,
                  kern::Norm norm, kern::ResidualIn res, kern::Drop drop, const DropoutArgs& d);

// LayerNorm backward of one row given its forward statistics:
// dx = rstd·(g·γ - mean(g·γ) - x̂·mean(g·γ·x̂)); adds g·x̂ into dgamma and g into dbeta.
void layernorm_bwd_row(const double* g, const double* z, double mean, double rstd,
                       const double* gamma, int64_t hidden, double* dx, double* dgamma,
                       double* dbeta);

// ---- bias_act_dropout.cuh -----------------------------------------------------------------------
double activate(kern::Act act, double x);       // ReLU, exact erf GELU, tanh GELU, identity
double activate_grad(kern::Act act, double x);  // relu'(0) = 0; gelu' = Φ(x) + x·φ(x)
// out = dropout(act(x + bias)).
Vec bias_act_dropout_fwd(const Vec& x, const Vec& bias, int64_t rows, int64_t cols, kern::Act act,
                         kern::Drop drop, const DropoutArgs& d);
struct BiasActBackward {
  Vec grad_x;  // act'(x + bias) · dropout_mask(grad_out)
  Vec dbias;   // Σ_rows grad_x
};
BiasActBackward bias_act_dropout_bwd(const Vec& grad_out, const Vec& x, const Vec& bias,
                                     int64_t rows, int64_t cols, kern::Act act, kern::Drop drop,
                                     const DropoutArgs& d);

// ---- attention.cuh (head layout) ----------------------------------------------------------------
// in [batch·seq, parts·hidden] → out [parts, batch, heads, seq, hidden/heads] (+ bias if
// non-empty).
Vec split_heads(const Vec& in, const Vec& bias, int64_t batch, int64_t seq, int64_t hidden,
                int64_t heads, int64_t parts);
// in [parts, batch, heads, seq, d] → out [batch·seq, parts·hidden]; colsum = Σ_rows out.
struct MergeHeads {
  Vec out, colsum;
};
MergeHeads merge_heads(const Vec& in, int64_t batch, int64_t seq, int64_t hidden, int64_t heads,
                       int64_t parts);

// ---- softmax.cuh --------------------------------------------------------------------------------
// Whether key j is masked for query i of batch b (key_padding [batch, k_len], nonzero = pad;
// causal: j > i + k_len - q_len).
bool attn_masked(kern::Mask mask, const std::vector<uint8_t>& key_padding, int64_t b, int64_t i,
                 int64_t j, int64_t q_len, int64_t k_len);
// A key padding mask [batch, k_len] for the attention tests: batch 0 unpadded, batch 1 entirely
// padded (its rows fully masked), later batches a trailing quarter and a few scattered keys,
// never key 0.
std::vector<uint8_t> test_key_padding(Rng& rng, int64_t batch, int64_t k_len);
struct SoftmaxForward {
  Vec probs, dropped;  // [batch, heads, q_len, k_len]; dropped = dropout(probs) when kDrop
};
SoftmaxForward attn_softmax_fwd(const Vec& scores, const std::vector<uint8_t>& key_padding,
                                int64_t batch, int64_t heads, int64_t q_len, int64_t k_len,
                                kern::Mask mask, kern::Drop drop, const DropoutArgs& d);
// grad_scores = probs · (dP - Σ_j dP·probs), dP = dropout_mask(grad_dropped).
Vec attn_softmax_bwd(const Vec& grad_dropped, const Vec& probs, int64_t rows, int64_t k_len,
                     kern::Drop drop, const DropoutArgs& d);

// ---- embedding.cuh ------------------------------------------------------------------------------
// Fairseq sinusoidal table value P[t][c] (sin in [0, H/2), cos in [H/2, H), freq_k =
// exp(-k·ln(10000)/(H/2 - 1))).
double sinusoidal(int64_t t, int64_t c, int64_t hidden);
struct EmbeddingArgs {
  int64_t batch = 0, seq = 0, vocab = 0, hidden = 0;
  int64_t padding_idx = -1, max_positions = 0;
  // PaddingRows::kZero: a padding token gives a zero row and no gradient; false (kEmbedded): it is
  // embedded like any token, only its table row (and its counted position's row) get no gradient.
  bool zero_padding = true;
  double scale = 1, eps = 1e-5;
  kern::Pos pos = kern::Pos::kSinusoidal;
  kern::PosFrom pos_from = kern::PosFrom::kIndex;
  kern::Norm norm = kern::Norm::kOff;
  kern::Drop drop = kern::Drop::kOff;
  DropoutArgs d{};
  // BERT's token types: a table of n_types rows added to the sum; types[row] (empty: all 0).
  int64_t n_types = 0;
  std::vector<int64_t> types;
  Vec type_table;
};
enum class RowKind : uint8_t { kToken, kPadding, kBad };
struct EmbeddingForward {
  std::vector<RowKind> kind;  // per row
  bool bad_token = false;     // some row is kBad
  Vec sum = {};               // e = table[tok]·scale + P[t] (0 for zeroed padding/bad rows)
  Vec out, mean, rstd;        // out = dropout(LN(e) or e); zero rows for zeroed padding/bad
};
// ln_input: the LayerNorm input to use per row (the kernel's rounded sum_out), or null for `sum`.
EmbeddingForward embedding_fwd(const EmbeddingArgs& a, const std::vector<int64_t>& tokens,
                               const Vec& table, const Vec& pos_table, const Vec& gamma,
                               const Vec& beta, const Vec* ln_input);
struct EmbeddingBackward {
  Vec grad_table;  // [vocab, hidden]: Σ scale · dE over rows holding the token
  Vec grad_pos;    // [max_positions, hidden] (Pos::kLearned): Σ dE over rows at position t
  Vec grad_type;   // [n_types, hidden]: Σ dE over rows of the type
  Vec dgamma, dbeta;
};
// sum_out, mean, rstd: the forward's saved values (Norm::kOn). Out-of-range tokens and zeroed
// padding tokens contribute nothing; embedded padding tokens all but their table rows.
EmbeddingBackward embedding_bwd(const EmbeddingArgs& a, const Vec& grad_out,
                                const std::vector<int64_t>& tokens, const Vec& sum_out,
                                const Vec& mean, const Vec& rstd, const Vec& gamma);

// ---- cross_entropy.cuh --------------------------------------------------------------------------
struct CrossEntropy {
  Vec loss, nll;  // [rows]
  Vec grad;       // [rows, vocab]
  bool bad_target = false;
};
CrossEntropy cross_entropy(const Vec& logits, const std::vector<int64_t>& targets, int64_t rows,
                           int64_t vocab, int64_t ignore_index, double label_smoothing,
                           double grad_scale);

// The criterion layer composed: output projection, cross-entropy, and the two backward GEMMs.
// float64: logits = h·Wᵀ, the cross-entropy (grad_scale 1, as the plan binds it: the gradient of
// Σ_rows loss), grad_h = d_logits·W, grad_w = d_logitsᵀ·h.
struct OutputCriterion {
  CrossEntropy ce;
  Vec grad_h, grad_w;
};
OutputCriterion output_criterion(const Vec& h, const Vec& w, const std::vector<int64_t>& targets,
                                 int64_t rows, int64_t hidden, int64_t vocab, int64_t ignore_index,
                                 double smoothing);

// ---- adam.cuh ----------------------------------------------------------------------------------
struct AdamHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  double bias_correction1 = 1, bias_correction2 = 1;  // 1 - beta1^step, 1 - beta2^step
  double grad_scale = 1;
};
// One element: updates p (the fp32 master value), m, v in place from gradient g (as stored).
// g' = g·grad_scale; kAdam: g' += wd·p; m = β1 m + (1-β1) g'; v = β2 v + (1-β2) g'^2;
// kAdamW: p -= lr·wd·p; p -= lr · (m / bc1) / (sqrt(v / bc2) + eps) (PyTorch's Adam/AdamW).
void adam_step(kern::AdamMode mode, const AdamHyper& h, double g, double& p, double& m, double& v);
// How far the updated weight may be off because g' = g·grad_scale (+ wd·p for kAdam) is computed
// in fp32: with |g'| near eps the update g'/(|g'| + eps) amplifies g's rounding, and in kAdam mode
// g' can cancel to far below its terms. The spread of adam_step's p over g' ± 2 ulp of its terms.
double adam_update_slack(kern::AdamMode mode, const AdamHyper& h, double g, double p, double m,
                         double v);

// ---- reduce.cuh --------------------------------------------------------------------------------
// out[c] (=|+=) Σ_b partials[b·stride + col_offset + c]; `out` holds the old values for kAdd.
Vec column_sum(const Vec& partials, int64_t n_blocks, int64_t stride, int64_t col_offset,
               int64_t cols, const Vec& out, kern::Accumulate acc);

}  // namespace lightseq::ref
