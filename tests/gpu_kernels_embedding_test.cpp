// gpu_kernels_embedding_test.cpp — templates/embedding.cuh on the GPU against the float64
// references: embedding_fwd_kernel / embedding_bwd_kernel for fp32/fp16/bf16 × sinusoidal/learned
// positions × LayerNorm on/off × dropout on/off × hidden 8, 512, 768, 4096 × (batch, seq) up to
// (1, 513), vocab 64, 1000 and 50257; out, sum_out, mean, rstd; padding tokens give zero rows and
// no gradient (table, positions, LayerNorm parameters); out-of-range tokens and positions set the
// flag and give zero rows; the scatter-added fp32 gradients, the LayerNorm partials with
// column_sum, and convert_kernel (= and +=) into the parameter gradient.
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
  return v;
}
std::string variant_name(const Variant& v) {
  return std::string(to_string(v.pos)) + (v.norm ? "_norm" : "") + (v.dropout ? "_drop" : "") +
         (v.from == PositionsFrom::kTokens ? "_from_tokens" : "");
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
KernelInstance bwd_instance(Precision p, int64_t h, const Variant& v) {
  return codegen::embedding_bwd(p, {h, v.pos, v.norm, v.dropout, v.from});
}

class EmbeddingKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (int64_t h : kHiddens) {
        for (const Variant& v : all_variants()) {
          all.push_back(fwd_instance(p, h, v));
          all.push_back(bwd_instance(p, h, v));
        }
      }
      all.push_back(codegen::column_sum(p));
      all.push_back(codegen::convert(p));
    }
    prepare_kernels(all);
  }

 protected:
  ref::EmbeddingArgs args_of(const Size& s, const Variant& v, double p_drop) {
    ref::EmbeddingArgs a;
    a.batch = s.batch, a.seq = s.seq, a.vocab = s.vocab, a.hidden = s.hidden;
    a.padding_idx = s.padding_idx, a.max_positions = s.seq + kExtraPositions;
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
              const DeviceArray& beta) {
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
    int64_t batch = a.batch, seq = a.seq, vocab = a.vocab, pad = a.padding_idx,
            maxp = a.max_positions;
    float scale = static_cast<float>(a.scale), eps = static_cast<float>(a.eps);
    kern::DropoutArgs d = a.d;
    const int vec = codegen::vec_width(p, H);
    launch(fwd_instance(p, H, v), kern::embedding_fwd_grid(rows, H, vec),
           kern::embedding_fwd_block(H, vec),
           {&t, &tb, &ps, &g, &b, &out, &sum, &mean, &rstd, &bad, &pm, &batch, &seq, &vocab, &pad,
            &maxp, &scale, &eps, &d});
    return f;
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
    // What the forward saved: sum_out in T, its statistics in fp32.
    const Vec sum_out = random(p, rows * H, -2, 2), gamma = random(p, H, 0.5, 1.5);
    ref::LnForward st = ref::layernorm_fwd(sum_out, gamma, gamma, rows, H, a.eps);
    ref::round_in_place(Precision::kFp32, st.mean);
    ref::round_in_place(Precision::kFp32, st.rstd);
    const Vec grad_out = random(p, rows * H, -1, 1);
    const ref::EmbeddingBackward r =
        ref::embedding_bwd(a, grad_out, tok, sum_out, st.mean, st.rstd, gamma);

    const int64_t blocks = kern::embedding_bwd_blocks(rows);
    const int64_t cols = kern::embedding_bwd_partial_cols(H, v.norm ? Norm::kOn : Norm::kOff);
    DeviceArray d_go = upload(p, grad_out), d_tok = upload_pod(tok), d_sum = upload(p, sum_out);
    DeviceArray d_mean = upload(Precision::kFp32, st.mean),
                d_rstd = upload(Precision::kFp32, st.rstd);
    DeviceArray d_gamma = upload(p, gamma);
    // The scatter is `+=`: start from nonzero buffers (a caller that zeroed them is a special
    // case).
    const Vec old_table = random(Precision::kFp32, s.vocab * H, -1, 1);
    const Vec old_pos = random(Precision::kFp32, learned ? a.max_positions * H : 0, -1, 1);
    Vec expect_table = old_table, expect_pos = old_pos;
    for (size_t i = 0; i < expect_table.size(); ++i) expect_table[i] += r.grad_table[i];
    for (size_t i = 0; i < expect_pos.size(); ++i) expect_pos[i] += r.grad_pos[i];
    DeviceArray grad_table = upload(Precision::kFp32, old_table);
    DeviceArray grad_pos = upload(Precision::kFp32, old_pos);
    DeviceArray partials = poisoned(Precision::kFp32, blocks * cols);
    CUdeviceptr go = d_go.ptr(), t = d_tok.ptr(), sum = v.norm ? d_sum.ptr() : 0;
    CUdeviceptr mean = v.norm ? d_mean.ptr() : 0, rstd = v.norm ? d_rstd.ptr() : 0;
    CUdeviceptr g = v.norm ? d_gamma.ptr() : 0, gt = grad_table.ptr(),
                gp = learned ? grad_pos.ptr() : 0;
    CUdeviceptr part = cols > 0 ? partials.ptr() : 0;
    int64_t batch = a.batch, seq = a.seq, vocab = a.vocab, pad = a.padding_idx,
            maxp = a.max_positions;
    float scale = static_cast<float>(a.scale);
    kern::DropoutArgs d = a.d;
    const int vec = codegen::vec_width(p, H);
    launch(bwd_instance(p, H, v), kern::embedding_bwd_grid(rows), kern::embedding_bwd_block(H, vec),
           {&go, &t, &sum, &mean, &rstd, &g, &gt, &gp, &part, &batch, &seq, &vocab, &pad, &maxp,
            &scale, &d});

    const Vec got_table = download(grad_table);
    EXPECT_TRUE(all_close("grad_table (+=)", got_table, expect_table, fp32_tolerance()));
    if (s.padding_idx >= 0) {
      for (int64_t c = 0; c < H; ++c) {
        const int64_t i = s.padding_idx * H + c;
        ASSERT_EQ(got_table[i], old_table[i]) << "the padding token got a gradient";
      }
    }
    if (learned) {
      EXPECT_TRUE(all_close("grad_pos (+=)", download(grad_pos), expect_pos, fp32_tolerance()));
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
      DeviceArray dgamma = poisoned(p, H);
      CUdeviceptr out = dgamma.ptr();
      int64_t n_blocks = blocks, stride = cols, offset = 0, n_cols = H;
      kern::Accumulate acc = kern::Accumulate::kOverwrite;
      launch(codegen::column_sum(p), kern::column_sum_grid(H), kern::column_sum_block(),
             {&part, &n_blocks, &stride, &offset, &n_cols, &out, &acc});
      EXPECT_TRUE(all_close("dgamma (column_sum)", download(dgamma), r.dgamma, tolerance_for(p)));
    }
    // convert_kernel: the fp32 scatter buffer into the parameter gradient, = then +=.
    DeviceArray param_grad = poisoned(p, s.vocab * H);
    CUdeviceptr in = grad_table.ptr(), out = param_grad.ptr();
    int64_t n = s.vocab * H;
    kern::Accumulate acc = kern::Accumulate::kOverwrite;
    launch(codegen::convert(p), kern::convert_grid(n), kern::convert_block(),
           {&in, &out, &n, &acc});
    EXPECT_TRUE(all_close("convert =", download(param_grad), expect_table, tolerance_for(p)));
    const Vec old = random(p, n, -1, 1);
    write(param_grad, old);
    acc = kern::Accumulate::kAdd;
    launch(codegen::convert(p), kern::convert_grid(n), kern::convert_block(),
           {&in, &out, &n, &acc});
    Vec sum_expect(n);
    for (int64_t i = 0; i < n; ++i) sum_expect[i] = old[i] + expect_table[i];
    EXPECT_TRUE(all_close("convert +=", download(param_grad), sum_expect, tolerance_for(p)));
    if (HasFailure()) return;
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
    const Vec sum_out = random(p, rows * H, -2, 2), grad_out = random(p, rows * H, -1, 1);
    ref::LnForward st = ref::layernorm_fwd(sum_out, gamma, gamma, rows, H, a.eps);
    ref::round_in_place(Precision::kFp32, st.mean);
    ref::round_in_place(Precision::kFp32, st.rstd);
    const ref::EmbeddingBackward rb =
        ref::embedding_bwd(a, grad_out, tok, sum_out, st.mean, st.rstd, gamma);
    DeviceArray d_go = upload(p, grad_out), d_sum = upload(p, sum_out);
    DeviceArray d_mean = upload(Precision::kFp32, st.mean),
                d_rstd = upload(Precision::kFp32, st.rstd);
    DeviceArray grad_table = upload(Precision::kFp32, Vec((a.vocab + 1) * H, 0.0));
    DeviceArray grad_pos = upload(Precision::kFp32, Vec((a.max_positions + 2) * H, 0.0));
    const int64_t cols = kern::embedding_bwd_partial_cols(H, v.norm ? Norm::kOn : Norm::kOff);
    DeviceArray partials = poisoned(Precision::kFp32, kern::embedding_bwd_blocks(rows) * cols);
    CUdeviceptr go = d_go.ptr(), t = d_tok.ptr(), sum = d_sum.ptr(), mean = d_mean.ptr();
    CUdeviceptr rstd = d_rstd.ptr(), g = d_gamma.ptr(), gt = grad_table.ptr(), gp = grad_pos.ptr();
    CUdeviceptr part = cols > 0 ? partials.ptr() : 0;
    int64_t batch = a.batch, seq = a.seq, vocab = a.vocab, pad = a.padding_idx,
            maxp = a.max_positions;
    float scale = static_cast<float>(a.scale);
    kern::DropoutArgs d = a.d;
    const int vec = codegen::vec_width(p, H);
    launch(bwd_instance(p, H, v), kern::embedding_bwd_grid(rows), kern::embedding_bwd_block(H, vec),
           {&go, &t, &sum, &mean, &rstd, &g, &gt, &gp, &part, &batch, &seq, &vocab, &pad, &maxp,
            &scale, &d});
    Vec table_expect = rb.grad_table, pos_expect = rb.grad_pos;
    table_expect.resize((a.vocab + 1) * H, 0.0);
    pos_expect.resize((a.max_positions + 2) * H, 0.0);
    EXPECT_TRUE(all_close("grad_table (+ guard row)", download(grad_table), table_expect,
                          fp32_tolerance()));
    if (v.pos == PositionKind::kLearned) {
      EXPECT_TRUE(
          all_close("grad_pos (+ guard rows)", download(grad_pos), pos_expect, fp32_tolerance()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuEmbeddingBadTokens, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
