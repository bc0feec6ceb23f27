// gpu_kernels_embedding_test.cpp — templates/embedding.cuh and embedding_grad.cuh on the GPU
// against the float64 references: the forward and the backward pipeline (LayerNorm statistics,
// grouping, ordered sums) for fp32/fp16/bf16 × sinusoidal/learned positions × LayerNorm on/off ×
// dropout on/off × hidden 8, 512, 768, 4096 × (batch, seq) up to (1, 513), vocab 64, 1000 and
// 50257; out, sum_out, mean, rstd; padding tokens give zero rows and no gradient (table, positions,
// LayerNorm parameters), or (PaddingRows::kEmbedded) are embedded like any token with no gradient
// into their table row and counted position's row; out-of-range tokens and positions set the flag
// and give zero rows; the table gradients `=` and `+=`, the LayerNorm partials with column_sum; a
// batch of one repeated token; every backward run twice, bit for bit the same; BERT's token types
// (with and without ids, a bad id).
#include <gtest/gtest.h>

#include <cmath>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using kern::Drop;
using kern::Norm;
using kern::Pos;
using ref::all_close;
using ref::fp32_tolerance;
using ref::tolerance_for;

struct Variant {
  PositionKind pos;
  bool norm, dropout;
  PositionsFrom from = PositionsFrom::kIndex;
  bool embed_padding = false;  // PaddingRows::kEmbedded (BERT, RoBERTa) instead of zero rows
};
std::vector<Variant> all_variants() {
  std::vector<Variant> v;
  for (PositionKind pos : {PositionKind::kSinusoidal, PositionKind::kLearned}) {
    for (bool norm : {false, true}) {
      for (bool drop : {false, true}) v.push_back({pos, norm, drop});
    }
  }
  // fairseq's positions (counted over the non-padding tokens)
  v.push_back({PositionKind::kSinusoidal, false, false, PositionsFrom::kTokens});
  v.push_back({PositionKind::kLearned, true, true, PositionsFrom::kTokens});
  // padding tokens embedded like any other: BERT (index positions), RoBERTa (counted positions)
  v.push_back({PositionKind::kLearned, true, true, PositionsFrom::kIndex, true});
  v.push_back({PositionKind::kLearned, true, false, PositionsFrom::kTokens, true});
  v.push_back({PositionKind::kSinusoidal, false, false, PositionsFrom::kTokens, true});
  return v;
}
std::string variant_name(const Variant& v) {
  return std::string(to_string(v.pos)) + (v.norm ? "_norm" : "") + (v.dropout ? "_drop" : "") +
         (v.from == PositionsFrom::kTokens ? "_from_tokens" : "") +
         (v.embed_padding ? "_embedded_padding" : "");
}
void PrintTo(const Variant& v, std::ostream* os) { *os << variant_name(v); }
struct Size {
  int64_t hidden, batch, seq, vocab, padding_idx;
};
const Size kSizes[] = {{8, 1, 1, 50257, 1},     {8, 3, 77, 50257, 50256}, {512, 2, 7, 1000, 1},
                       {512, 1, 513, 1000, -1}, {768, 3, 77, 1000, 0},    {4096, 2, 33, 64, 1}};
const int64_t kHiddens[] = {8, 512, 768, 4096};
// Learned position tables have a few rows more than the longest sequence of a case.
constexpr int64_t kExtraPositions = 5;

KernelInstance fwd_instance(Precision p, int64_t h, const Variant& v) {
  return codegen::embedding_fwd(p, {h, v.pos, v.norm, v.dropout, v.from});
}
// Table gradients: long fp32 sums (a token's rows) rounded once to p.
ref::Tolerance grad_tolerance(Precision p) {
  return p == Precision::kFp32 ? fp32_tolerance() : tolerance_for(p);
}
codegen::Embedding config(int64_t h, const Variant& v) {
  return {h, v.pos, v.norm, v.dropout, v.from};
}

class EmbeddingKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (int64_t h : kHiddens) {
        for (const Variant& v : all_variants()) {
          all.push_back(fwd_instance(p, h, v));
          if (v.norm) all.push_back(codegen::embedding_bwd(p, config(h, v)));
          all.push_back(codegen::embedding_grad(p, config(h, v)));
        }
      }
      for (kern::Key key : {kern::Key::kToken, kern::Key::kPosition, kern::Key::kType}) {
        for (PositionsFrom from : {PositionsFrom::kIndex, PositionsFrom::kTokens}) {
          const codegen::EmbeddingGroup g = codegen::embedding_group(p, key, from);
          all.insert(all.end(), {g.count, g.start, g.place, g.order});
        }
      }
      all.push_back(codegen::column_sum(p));
    }
    prepare_kernels(all);
  }

 protected:
  ref::EmbeddingArgs args_of(const Size& s, const Variant& v, double p_drop) {
    ref::EmbeddingArgs a;
    a.batch = s.batch, a.seq = s.seq, a.vocab = s.vocab, a.hidden = s.hidden;
    a.padding_idx = s.padding_idx, a.max_positions = s.seq + kExtraPositions;
    a.zero_padding = !v.embed_padding;
    a.pos_from = v.from == PositionsFrom::kTokens ? kern::PosFrom::kTokens : kern::PosFrom::kIndex;
    // Counted positions start past padding_idx.
    if (v.from == PositionsFrom::kTokens)
      a.max_positions += std::max<int64_t>(s.padding_idx, 0) + 1;
    a.scale = static_cast<float>(std::sqrt(static_cast<double>(s.hidden)));
    a.eps = 1e-5f;
    a.pos = v.pos == PositionKind::kLearned ? Pos::kLearned : Pos::kSinusoidal;
    a.norm = v.norm ? Norm::kOn : Norm::kOff;
    a.drop = v.dropout ? Drop::kOn : Drop::kOff;
    a.d = kern::make_dropout_args(rng().next(), rng().next() >> 8, p_drop);
    return a;
  }
  // Tokens: uniform over the vocabulary, about 1 in 8 the padding token.
  std::vector<int64_t> tokens(const ref::EmbeddingArgs& a) {
    std::vector<int64_t> t(a.batch * a.seq);
    for (int64_t& x : t)
      x = a.padding_idx >= 0 && rng().below(8) == 0 ? a.padding_idx : rng().below(a.vocab);
    return t;
  }
  struct Fwd {
    DeviceArray out, sum_out, mean, rstd, bad, pad_mask;
  };
  Fwd run_fwd(Precision p, const Variant& v, const ref::EmbeddingArgs& a, const DeviceArray& tok,
              const DeviceArray& table, const DeviceArray& pos, const DeviceArray& gamma,
              const DeviceArray& beta, const DeviceArray* types = nullptr,
              const DeviceArray* type_table = nullptr) {
    const int64_t rows = a.batch * a.seq, H = a.hidden;
    DeviceArray pad_mask = zeroed_raw(rows, 1);
    poison(pad_mask);
    Fwd f{poisoned(p, rows * H),
          poisoned(p, v.norm ? rows * H : 0),
          poisoned(Precision::kFp32, v.norm ? rows : 0),
          poisoned(Precision::kFp32, v.norm ? rows : 0),
          zeroed_raw(1, sizeof(int)),
          std::move(pad_mask)};
    CUdeviceptr t = tok.ptr(), tb = table.ptr(),
                ps = v.pos == PositionKind::kLearned ? pos.ptr() : 0;
    CUdeviceptr g = v.norm ? gamma.ptr() : 0, b = v.norm ? beta.ptr() : 0, out = f.out.ptr();
    CUdeviceptr sum = v.norm ? f.sum_out.ptr() : 0, mean = v.norm ? f.mean.ptr() : 0;
    CUdeviceptr rstd = v.norm ? f.rstd.ptr() : 0, bad = f.bad.ptr(), pm = f.pad_mask.ptr();
    CUdeviceptr ty = ptr_or_null(types), tt = ptr_or_null(type_table);
    int64_t batch = a.batch, seq = a.seq, vocab = a.vocab, pad = a.padding_idx,
            zero_pad = a.zero_padding ? 1 : 0, maxp = a.max_positions, n_types = a.n_types;
    float scale = static_cast<float>(a.scale), eps = static_cast<float>(a.eps);
    kern::DropoutArgs d = a.d;
    const int vec = codegen::vec_width(p, H);
    launch(fwd_instance(p, H, v), kern::embedding_fwd_grid(rows, H, vec),
           kern::embedding_fwd_block(H, vec),
           {&t,  &tb,    &ps,  &g,     &b,   &ty,       &tt,   &out,     &sum,   &mean, &rstd, &bad,
            &pm, &batch, &seq, &vocab, &pad, &zero_pad, &maxp, &n_types, &scale, &eps,  &d});
    return f;
  }
  // The backward's inputs on the device (what the forward saved and the incoming gradient).
  struct BwdIn {
    CUdeviceptr grad_out, tokens, sum_out, mean, rstd, gamma;
    CUdeviceptr token_types = 0;  // null: every row type 0 (models with a type table)
  };
  // A backward case: what the forward saved (sum_out in T, its LayerNorm statistics in fp32), a
  // random incoming gradient, the float64 reference, and all of it on the device.
  struct BwdCase {
    ref::EmbeddingBackward want;
    DeviceArray grad_out, tokens, sum_out, mean, rstd, gamma;
    BwdIn in() const {
      return {grad_out.ptr(), tokens.ptr(), sum_out.ptr(), mean.ptr(), rstd.ptr(), gamma.ptr()};
    }
  };
  BwdCase bwd_case(Precision p, const ref::EmbeddingArgs& a, const std::vector<int64_t>& tok,
                   const Vec& gamma) {
    const int64_t rows = a.batch * a.seq, H = a.hidden;
    const Vec sum_out = random(p, rows * H, -2, 2), grad_out = random(p, rows * H, -1, 1);
    ref::LnForward st = ref::layernorm_fwd(sum_out, gamma, gamma, rows, H, a.eps);
    ref::round_in_place(Precision::kFp32, st.mean);
    ref::round_in_place(Precision::kFp32, st.rstd);
    return {ref::embedding_bwd(a, grad_out, tok, sum_out, st.mean, st.rstd, gamma),
            upload(p, grad_out),
            upload_pod(tok),
            upload(p, sum_out),
            upload(Precision::kFp32, st.mean),
            upload(Precision::kFp32, st.rstd),
            upload(p, gamma)};
  }
  // The backward pipeline as the planner emits it: the LayerNorm statistics and partials (norm),
  // then per table the grouping kernels and the ordered sum into grad (T, `acc`).
  void run_bwd(Precision p, const Variant& v, const ref::EmbeddingArgs& a, const BwdIn& in,
               DeviceArray& grad_table, DeviceArray* grad_pos, DeviceArray* partials,
               kern::Accumulate acc, DeviceArray* grad_type = nullptr) {
    const int64_t rows = a.batch * a.seq, H = a.hidden;
    const int vec = codegen::vec_width(p, H);
    int64_t batch = a.batch, seq = a.seq, vocab = a.vocab, pad = a.padding_idx,
            zero_pad = a.zero_padding ? 1 : 0, maxp = a.max_positions, n_rows = rows,
            n_types = a.n_types;
    kern::DropoutArgs d = a.d;
    CUdeviceptr go = in.grad_out, tok = in.tokens, ty = in.token_types;
    CUdeviceptr sum = v.norm ? in.sum_out : 0, mean = v.norm ? in.mean : 0;
    CUdeviceptr rstd = v.norm ? in.rstd : 0, g = v.norm ? in.gamma : 0, stats_ptr = 0;
    DeviceArray stats = poisoned(Precision::kFp32, v.norm ? rows * 2 : 0);
    if (v.norm) {
      stats_ptr = stats.ptr();
      CUdeviceptr part = partials->ptr();
      launch(codegen::embedding_bwd(p, config(H, v)), kern::embedding_bwd_grid(rows),
             kern::embedding_bwd_block(H, vec),
             {&go, &tok, &sum, &mean, &rstd, &g, &ty, &stats_ptr, &part, &batch, &seq, &vocab, &pad,
              &zero_pad, &maxp, &n_types, &d});
    }
    for (kern::Key key : {kern::Key::kToken, kern::Key::kPosition, kern::Key::kType}) {
      DeviceArray* grad = key == kern::Key::kToken      ? &grad_table
                          : key == kern::Key::kPosition ? grad_pos
                                                        : grad_type;
      if (grad == nullptr) continue;
      int64_t n_keys = kern::embedding_keys(key, a.vocab, a.max_positions, a.n_types);
      const codegen::EmbeddingGroup k = codegen::embedding_group(p, key, v.from);
      DeviceArray keys = zeroed_raw(rows, sizeof(int)), members = zeroed_raw(rows, sizeof(int));
      DeviceArray order = zeroed_raw(rows, sizeof(int));
      DeviceArray groups = zeroed_raw(kern::embedding_groups_size(n_keys), sizeof(int));
      poison(keys);
      poison(members);
      poison(order);
      CUdeviceptr kp = keys.ptr(), gp = groups.ptr(), mp = members.ptr(), op = order.ptr();
      CUdeviceptr out = grad->ptr();
      const int t = kern::kElementwiseThreads;
      launch(k.count, kern::embedding_group_grid(rows), t,
             {&tok, &ty, &kp, &gp, &batch, &seq, &vocab, &pad, &zero_pad, &maxp, &n_types});
      launch(k.start, kern::embedding_group_grid(n_keys), t, {&gp, &n_keys});
      launch(k.place, kern::embedding_group_grid(rows), t, {&kp, &gp, &mp, &n_rows, &n_keys});
      launch(k.order, kern::embedding_group_grid(rows), t, {&kp, &gp, &mp, &op, &n_rows, &n_keys});
      float scale = key == kern::Key::kToken ? static_cast<float>(a.scale) : 1.f;
      launch(codegen::embedding_grad(p, config(H, v)), kern::embedding_grad_grid(n_keys),
             kern::embedding_grad_block(H, vec),
             {&go, &sum, &mean, &rstd, &stats_ptr, &g, &gp, &op, &out, &n_keys, &scale, &d, &acc});
    }
  }
  // pad_mask[row] is 1 exactly where the token is padding_idx (bad tokens are not padding).
  void expect_pad_mask(const DeviceArray& mask, const std::vector<int64_t>& tok,
                       int64_t padding_idx) {
    const std::vector<uint8_t> got = download_pod<uint8_t>(mask);
    ASSERT_EQ(got.size(), tok.size());
    for (size_t i = 0; i < tok.size(); ++i) {
      ASSERT_EQ(int{got[i]}, tok[i] == padding_idx ? 1 : 0) << "pad_mask row " << i;
    }
  }
  // Token rows only (padding and bad rows have no defined sum_out / mean / rstd).
  static Vec token_rows(const Vec& v, const std::vector<ref::RowKind>& kind, int64_t width) {
    Vec out;
    for (size_t r = 0; r < kind.size(); ++r) {
      if (kind[r] == ref::RowKind::kToken)
        out.insert(out.end(), v.begin() + r * width, v.begin() + (r + 1) * width);
    }
    return out;
  }
  // Padding and out-of-range rows of out are exactly zero.
  static void expect_zero_rows(const Vec& out, const std::vector<ref::RowKind>& kind, int64_t H) {
    for (size_t row = 0; row < kind.size(); ++row) {
      if (kind[row] == ref::RowKind::kToken) continue;
      for (int64_t c = 0; c < H; ++c) {
        ASSERT_EQ(out[row * H + c], 0.0)
            << (kind[row] == ref::RowKind::kPadding ? "padding" : "bad") << " row " << row
            << " column " << c;
      }
    }
  }
  static ref::Tolerance out_tolerance(Precision p, const ref::EmbeddingArgs& a) {
    ref::Tolerance t = tolerance_for(p);
    // fp32 sin/cos of t·freq: the argument alone carries ~1.5 ulp(t) of error in any fp32 code.
    if (a.pos == Pos::kSinusoidal && a.norm == Norm::kOff) t.abs = 4e-7 * a.max_positions;
    return t;
  }
};

class GpuEmbedding : public EmbeddingKernels,
                     public testing::WithParamInterface<std::tuple<Precision, Variant>> {};

TEST_P(GpuEmbedding, ForwardMatchesReference) {
  const auto [p, v] = GetParam();
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message()
                 << "hidden " << s.hidden << ", batch " << s.batch << ", seq " << s.seq
                 << ", vocab " << s.vocab << ", padding_idx " << s.padding_idx);
    const ref::EmbeddingArgs a = args_of(s, v, v.dropout ? 0.1 : 0.0);
    const int64_t H = s.hidden;
    const std::vector<int64_t> tok = tokens(a);
    const Vec table = random(p, s.vocab * H, -1, 1), pos = random(p, a.max_positions * H, -1, 1);
    const Vec gamma = random(p, H, 0.5, 1.5), beta = random(p, H, -0.5, 0.5);
    DeviceArray d_tok = upload_pod(tok), d_table = upload(p, table), d_pos = upload(p, pos);
    DeviceArray d_gamma = upload(p, gamma), d_beta = upload(p, beta);
    Fwd f = run_fwd(p, v, a, d_tok, d_table, d_pos, d_gamma, d_beta);

    EXPECT_EQ(download_pod<int>(f.bad)[0], 0) << "bad_token set for valid tokens";
    expect_pad_mask(f.pad_mask, tok, a.padding_idx);
    const ref::EmbeddingForward r = ref::embedding_fwd(a, tok, table, pos, gamma, beta, nullptr);
    const Vec out = download(f.out);
    if (v.norm) {
      const Vec sum_out = download(f.sum_out);
      ref::Tolerance st = tolerance_for(p);
      if (a.pos == Pos::kSinusoidal) st.abs = 4e-7 * a.max_positions;
      EXPECT_TRUE(
          all_close("sum_out", token_rows(sum_out, r.kind, H), token_rows(r.sum, r.kind, H), st));
      // The LayerNorm normalizes e rounded to T, the value sum_out stores (docs/kernels.md).
      const ref::EmbeddingForward ln =
          ref::embedding_fwd(a, tok, table, pos, gamma, beta, &sum_out);
      const Vec mean = download(f.mean), rstd = download(f.rstd);
      EXPECT_TRUE(all_close("mean", token_rows(mean, r.kind, 1), token_rows(ln.mean, r.kind, 1),
                            fp32_tolerance()));
      EXPECT_TRUE(all_close("rstd", token_rows(rstd, r.kind, 1), token_rows(ln.rstd, r.kind, 1),
                            fp32_tolerance()));
      EXPECT_TRUE(all_close("out", out, ln.out, tolerance_for(p)));
      // Padding rows: sum_out, mean and rstd are zero too.
      for (size_t row = 0; row < r.kind.size(); ++row) {
        if (r.kind[row] != ref::RowKind::kPadding) continue;
        ASSERT_EQ(mean[row], 0.0) << "padding row " << row;
        ASSERT_EQ(rstd[row], 0.0) << "padding row " << row;
        for (int64_t c = 0; c < H; ++c)
          ASSERT_EQ(sum_out[row * H + c], 0.0) << "padding row " << row;
      }
    } else {
      EXPECT_TRUE(all_close("out", out, r.out, out_tolerance(p, a)));
    }
    expect_zero_rows(out, r.kind, H);
    if (HasFailure()) return;
  }
}

TEST_P(GpuEmbedding, BackwardMatchesReferenceAndSkipsPadding) {
  const auto [p, v] = GetParam();
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message()
                 << "hidden " << s.hidden << ", batch " << s.batch << ", seq " << s.seq
                 << ", vocab " << s.vocab << ", padding_idx " << s.padding_idx);
    const ref::EmbeddingArgs a = args_of(s, v, v.dropout ? 0.1 : 0.0);
    const int64_t H = s.hidden, rows = s.batch * s.seq;
    const bool learned = v.pos == PositionKind::kLearned;
    const std::vector<int64_t> tok = tokens(a);
    const BwdCase bc = bwd_case(p, a, tok, random(p, H, 0.5, 1.5));
    const ref::EmbeddingBackward& r = bc.want;
    const int64_t blocks = kern::embedding_bwd_blocks(rows);
    const int64_t cols = kern::embedding_bwd_partial_cols(H, Norm::kOn);
    const BwdIn in = bc.in();
    // `=`: every row written (rows of tokens without a gradient: zero), into poisoned buffers.
    DeviceArray grad_table = poisoned(p, s.vocab * H);
    DeviceArray grad_pos = poisoned(p, learned ? a.max_positions * H : 0);
    DeviceArray partials = poisoned(Precision::kFp32, v.norm ? blocks * cols : 0);
    run_bwd(p, v, a, in, grad_table, learned ? &grad_pos : nullptr, &partials,
            kern::Accumulate::kOverwrite);
    const Vec got_table = download(grad_table);
    EXPECT_TRUE(all_close("grad_table (=)", got_table, r.grad_table, grad_tolerance(p)));
    if (s.padding_idx >= 0) {
      for (int64_t c = 0; c < H; ++c) {
        ASSERT_EQ(got_table[s.padding_idx * H + c], 0.0) << "the padding token got a gradient";
      }
    }
    if (learned) {
      EXPECT_TRUE(all_close("grad_pos (=)", download(grad_pos), r.grad_pos, grad_tolerance(p)));
    }
    if (v.norm) {
      const Vec pv = download(partials);
      EXPECT_TRUE(
          all_close("dgamma (partials)",
                    ref::column_sum(pv, blocks, cols, 0, H, {}, kern::Accumulate::kOverwrite),
                    r.dgamma, fp32_tolerance()));
      EXPECT_TRUE(
          all_close("dbeta (partials)",
                    ref::column_sum(pv, blocks, cols, H, H, {}, kern::Accumulate::kOverwrite),
                    r.dbeta, fp32_tolerance()));
      // dgamma and dbeta in one launch, as the planner finishes them.
      DeviceArray dgamma = poisoned(p, H), dbeta = poisoned(p, H);
      CUdeviceptr part = partials.ptr(), g = dgamma.ptr(), b = dbeta.ptr(), none = 0;
      int64_t n_blocks = blocks, stride = cols, offset = 0, n_cols = H, n_out = 2;
      kern::Accumulate acc = kern::Accumulate::kOverwrite;
      launch(codegen::column_sum(p), kern::column_sum_grid(H, n_out), kern::column_sum_block(),
             {&part, &n_blocks, &stride, &offset, &n_cols, &n_out, &g, &b, &none, &acc});
      EXPECT_TRUE(all_close("dgamma (column_sum)", download(dgamma), r.dgamma, tolerance_for(p)));
      EXPECT_TRUE(all_close("dbeta (column_sum)", download(dbeta), r.dbeta, tolerance_for(p)));
    }
    // Deterministic: a second run gives the same bits.
    {
      DeviceArray again = poisoned(p, s.vocab * H), again_pos = poisoned(p, grad_pos.n);
      DeviceArray again_part = poisoned(Precision::kFp32, partials.n);
      run_bwd(p, v, a, in, again, learned ? &again_pos : nullptr, &again_part,
              kern::Accumulate::kOverwrite);
      EXPECT_EQ(download_bytes(again), download_bytes(grad_table))
          << "grad_table differs run to run";
      if (learned) {
        EXPECT_EQ(download_bytes(again_pos), download_bytes(grad_pos));
      }
      if (v.norm) {
        EXPECT_EQ(download_bytes(again_part), download_bytes(partials));
      }
    }
    // `+=` onto nonzero gradients (the tied table, gradient accumulation): rows without a
    // gradient keep their bits.
    const Vec old_table = random(p, s.vocab * H, -1, 1);
    const Vec old_pos = random(p, learned ? a.max_positions * H : 0, -1, 1);
    write(grad_table, old_table);
    if (learned) write(grad_pos, old_pos);
    run_bwd(p, v, a, in, grad_table, learned ? &grad_pos : nullptr, &partials,
            kern::Accumulate::kAdd);
    Vec expect_table = old_table, expect_pos = old_pos;
    for (size_t i = 0; i < expect_table.size(); ++i) expect_table[i] += r.grad_table[i];
    for (size_t i = 0; i < expect_pos.size(); ++i) expect_pos[i] += r.grad_pos[i];
    const Vec acc_table = download(grad_table);
    EXPECT_TRUE(all_close("grad_table (+=)", acc_table, expect_table, grad_tolerance(p)));
    if (s.padding_idx >= 0) {
      for (int64_t c = 0; c < H; ++c) {
        const int64_t i = s.padding_idx * H + c;
        ASSERT_EQ(acc_table[i], old_table[i]) << "the padding token's gradient changed";
      }
    }
    if (learned) {
      EXPECT_TRUE(all_close("grad_pos (+=)", download(grad_pos), expect_pos, grad_tolerance(p)));
    }
    if (HasFailure()) return;
  }
}

// Most rows share one token (the case fp32 atomics make nondeterministic and a per-row scatter
// serializes): the sums are right and bit-identical run to run, the other tokens too.
TEST_P(GpuEmbedding, RepeatedTokensAreSummedDeterministically) {
  const auto [p, v] = GetParam();
  const Size s{512, 8, 513, 1000, 1};
  const ref::EmbeddingArgs a = args_of(s, v, v.dropout ? 0.1 : 0.0);
  const int64_t H = s.hidden, rows = s.batch * s.seq;
  const bool learned = v.pos == PositionKind::kLearned;
  std::vector<int64_t> tok(rows);
  for (int64_t& x : tok) {
    const uint64_t u = rng().below(16);
    x = u < 12 ? 7 : u < 14 ? s.padding_idx : static_cast<int64_t>(rng().below(s.vocab));
  }
  const BwdCase bc = bwd_case(p, a, tok, random(p, H, 0.5, 1.5));
  const ref::EmbeddingBackward& r = bc.want;
  const BwdIn in = bc.in();
  const int64_t cols = kern::embedding_bwd_partial_cols(H, Norm::kOn);
  std::vector<uint8_t> first_table, first_pos;
  for (int run = 0; run < 3; ++run) {
    DeviceArray grad_table = poisoned(p, s.vocab * H);
    DeviceArray grad_pos = poisoned(p, learned ? a.max_positions * H : 0);
    DeviceArray partials =
        poisoned(Precision::kFp32, v.norm ? kern::embedding_bwd_blocks(rows) * cols : 0);
    run_bwd(p, v, a, in, grad_table, learned ? &grad_pos : nullptr, &partials,
            kern::Accumulate::kOverwrite);
    if (run == 0) {
      EXPECT_TRUE(all_close("grad_table", download(grad_table), r.grad_table, grad_tolerance(p)));
      if (learned) {
        EXPECT_TRUE(all_close("grad_pos", download(grad_pos), r.grad_pos, grad_tolerance(p)));
      }
      first_table = download_bytes(grad_table);
      if (learned) first_pos = download_bytes(grad_pos);
    } else {
      EXPECT_EQ(download_bytes(grad_table), first_table) << "run " << run;
      if (learned) {
        EXPECT_EQ(download_bytes(grad_pos), first_pos) << "run " << run;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuEmbedding,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::ValuesIn(all_variants())),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_" +
                                  variant_name(std::get<1>(info.param));
                         });

class GpuEmbeddingBadTokens : public EmbeddingKernels,
                              public testing::WithParamInterface<Precision> {};

// Tokens outside [0, vocab) and positions t >= max_positions set *bad_token and give zero rows;
// the other rows are still right; the backward skips them.
TEST_P(GpuEmbeddingBadTokens, SetTheFlagAndGiveZeroRows) {
  const Precision p = GetParam();
  for (const Variant& v : all_variants()) {
    SCOPED_TRACE(variant_name(v));
    ref::EmbeddingArgs a = args_of({512, 2, 7, 1000, 1}, v, 0.0);
    a.max_positions = 6;  // t = 6 is out of range
    std::vector<int64_t> tok{3, 1000, 5, -1, 7, 8, 9, /**/ 10, 11, 1, 12, 999, 13, 14};
    const Vec table = random(p, a.vocab * a.hidden, -1, 1),
              pos = random(p, a.max_positions * a.hidden, -1, 1);
    const Vec gamma = random(p, a.hidden, 0.5, 1.5), beta = random(p, a.hidden, -0.5, 0.5);
    DeviceArray d_tok = upload_pod(tok), d_table = upload(p, table), d_pos = upload(p, pos);
    DeviceArray d_gamma = upload(p, gamma), d_beta = upload(p, beta);
    Fwd f = run_fwd(p, v, a, d_tok, d_table, d_pos, d_gamma, d_beta);
    EXPECT_EQ(download_pod<int>(f.bad)[0], 1);
    expect_pad_mask(f.pad_mask, tok, a.padding_idx);
    const ref::EmbeddingForward r = ref::embedding_fwd(a, tok, table, pos, gamma, beta, nullptr);
    ASSERT_TRUE(r.bad_token);
    const Vec out = download(f.out);
    expect_zero_rows(out, r.kind, a.hidden);
    if (!v.norm) {
      EXPECT_TRUE(all_close("out", out, r.out, out_tolerance(p, a)));
    }

    // Backward: those rows contribute nothing, and nothing lands outside the tables (a guard row
    // after each table stays zero).
    const int64_t rows = a.batch * a.seq, H = a.hidden;
    const BwdCase bc = bwd_case(p, a, tok, gamma);
    const ref::EmbeddingBackward& rb = bc.want;
    // A guard row after each table stays zero: nothing lands outside the tables.
    DeviceArray grad_table = upload(p, Vec((a.vocab + 1) * H, 0.0));
    DeviceArray grad_pos = upload(p, Vec((a.max_positions + 2) * H, 0.0));
    const int64_t cols = kern::embedding_bwd_partial_cols(H, Norm::kOn);
    DeviceArray partials =
        poisoned(Precision::kFp32, v.norm ? kern::embedding_bwd_blocks(rows) * cols : 0);
    run_bwd(p, v, a, bc.in(), grad_table, v.pos == PositionKind::kLearned ? &grad_pos : nullptr,
            &partials, kern::Accumulate::kAdd);
    Vec table_expect = rb.grad_table, pos_expect = rb.grad_pos;
    table_expect.resize((a.vocab + 1) * H, 0.0);
    pos_expect.resize((a.max_positions + 2) * H, 0.0);
    EXPECT_TRUE(all_close("grad_table (+ guard row)", download(grad_table), table_expect,
                          grad_tolerance(p)));
    if (v.pos == PositionKind::kLearned) {
      EXPECT_TRUE(
          all_close("grad_pos (+ guard rows)", download(grad_pos), pos_expect, grad_tolerance(p)));
    }
  }
}

// BERT's token types: type_table[type] joins the sum (type 0 where the caller gives no ids), its
// gradient is the deterministic sum over each type's rows, and an id outside [0, n_types) is a bad
// row (flag, zero row, no gradient anywhere).
TEST_P(GpuEmbeddingBadTokens, TokenTypesAreAddedAndGetTheirGradient) {
  const Precision p = GetParam();
  const Variant variants[] = {{PositionKind::kLearned, true, true},
                              {PositionKind::kSinusoidal, false, false}};
  for (const Variant& v : variants) {
    for (bool ids : {true, false}) {
      SCOPED_TRACE(variant_name(v) + (ids ? ", type ids" : ", no type ids (all 0)"));
      ref::EmbeddingArgs a = args_of({512, 3, 77, 1000, 1}, v, v.dropout ? 0.1 : 0.0);
      const int64_t H = a.hidden, rows = a.batch * a.seq;
      a.n_types = 3;
      a.type_table = random(p, a.n_types * H, -1, 1);
      if (ids) {
        a.types.resize(rows);
        for (int64_t& t : a.types) t = static_cast<int64_t>(rng().below(3));
        a.types[5] = 3;  // out of range: a bad row
      }
      const std::vector<int64_t> tok = tokens(a);
      const Vec table = random(p, a.vocab * H, -1, 1), pos = random(p, a.max_positions * H, -1, 1);
      const Vec gamma = random(p, H, 0.5, 1.5), beta = random(p, H, -0.5, 0.5);
      DeviceArray d_tok = upload_pod(tok), d_table = upload(p, table), d_pos = upload(p, pos);
      DeviceArray d_gamma = upload(p, gamma), d_beta = upload(p, beta);
      DeviceArray d_types = upload_pod(a.types), d_type_table = upload(p, a.type_table);
      Fwd f = run_fwd(p, v, a, d_tok, d_table, d_pos, d_gamma, d_beta, ids ? &d_types : nullptr,
                      &d_type_table);
      const ref::EmbeddingForward r = ref::embedding_fwd(a, tok, table, pos, gamma, beta, nullptr);
      EXPECT_EQ(download_pod<int>(f.bad)[0], r.bad_token ? 1 : 0);
      EXPECT_EQ(r.bad_token, ids) << "row 5's type is out of range";
      const Vec out = download(f.out);
      expect_zero_rows(out, r.kind, H);
      if (v.norm) {
        ref::Tolerance st = tolerance_for(p);
        EXPECT_TRUE(all_close("sum_out", token_rows(download(f.sum_out), r.kind, H),
                              token_rows(r.sum, r.kind, H), st));
      } else {
        EXPECT_TRUE(all_close("out", out, r.out, out_tolerance(p, a)));
      }

      const BwdCase bc = bwd_case(p, a, tok, gamma);
      BwdIn in = bc.in();
      in.token_types = ids ? d_types.ptr() : 0;
      const bool learned = v.pos == PositionKind::kLearned;
      DeviceArray grad_table = poisoned(p, a.vocab * H);
      DeviceArray grad_pos = poisoned(p, learned ? a.max_positions * H : 0);
      DeviceArray grad_type = poisoned(p, a.n_types * H);
      const int64_t cols = kern::embedding_bwd_partial_cols(H, Norm::kOn);
      DeviceArray partials =
          poisoned(Precision::kFp32, v.norm ? kern::embedding_bwd_blocks(rows) * cols : 0);
      run_bwd(p, v, a, in, grad_table, learned ? &grad_pos : nullptr, &partials,
              kern::Accumulate::kOverwrite, &grad_type);
      EXPECT_TRUE(
          all_close("grad_type", download(grad_type), bc.want.grad_type, grad_tolerance(p)));
      EXPECT_TRUE(
          all_close("grad_table", download(grad_table), bc.want.grad_table, grad_tolerance(p)));
      if (learned) {
        EXPECT_TRUE(all_close("grad_pos", download(grad_pos), bc.want.grad_pos, grad_tolerance(p)));
      }
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuEmbeddingBadTokens, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
