// gpu_fused_attention_test.cpp — runtime/fused_attention.h (the fused attention as a function) on
// the GPU. A packed batch of variable lengths (cu_seqlens_q / cu_seqlens_k) gives what the same
// batch padded to its longest sequences gives with its padding keys masked: out, lse and the three
// gradients equal value for value (the padded kernels' correctness against float64 is
// gpu_kernels_flash_test's), dropout included (a packed batch draws the entries of the batch
// padded to q_len and k_len). fp16/bf16 × head dims 32, 64, 128 × causal or not × dropout on and
// off; self-attention with lengths 0, 1, 7, 77, 128 (one key block: the backward in one launch)
// and 129, 513 (several), cross-attention with key lengths of their own (0 included); q, k and v
// column slices of packed buffers. A packed sequence longer than the given maximum is flagged.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "flash_attention.sig.cuh"
#include "runtime/fused_attention.h"
#include "tests/gpu_harness.h"
#include "tests/reference/compare.h"

namespace lightseq::kernel_test {
namespace {

using ref::all_close;
using ref::tolerance_for;

const Precision kHalves[] = {Precision::kFp16, Precision::kBf16};

struct Lengths {
  std::vector<int> q, k;  // per sequence; k empty: self-attention (k = q)
};
const Lengths kCases[] = {
    {{7, 1, 77, 0, 128}, {}},       // one key block (k_len <= 128)
    {{129, 5, 513, 64, 200}, {}},   // several key blocks, sequences shorter than the longest
    {{3, 77, 40}, {150, 0, 129}},   // cross-attention; a sequence without keys
    {{1, 300, 65}, {64, 64, 200}},  // more queries than keys in one
};

// Rows of a [rows, ld] buffer: sequence b's i-th token at row first[b] + i.
struct Layout {
  std::vector<int64_t> first;
  int64_t rows;
};
Layout padded(size_t n, int64_t len) {
  Layout l{{}, static_cast<int64_t>(n) * len};
  for (size_t b = 0; b < n; ++b) l.first.push_back(static_cast<int64_t>(b) * len);
  return l;
}
Layout packed(const std::vector<int>& lens) {
  Layout l{{}, 0};
  for (int n : lens) {
    l.first.push_back(l.rows);
    l.rows += n;
  }
  return l;
}
std::vector<int32_t> offsets(const std::vector<int>& lens) {
  std::vector<int32_t> cu{0};
  for (int n : lens) cu.push_back(cu.back() + n);
  return cu;
}

class GpuFusedAttention
    : public GpuKernelTest,
      public testing::WithParamInterface<std::tuple<Precision, int64_t, bool, bool>> {};

TEST_P(GpuFusedAttention, PackedBatchesEqualTheirPaddedForm) {
  const auto [p, d, causal, drop] = GetParam();
  StreamOrderedAllocator allocator(0);
  FusedAttention attn({p, d, 0, {}});
  FusedAttention other({p, d, 0, {}, kern::kFlashFwdWarpsAlt, kern::flash_bwd_other_blocks(d)});
  const int64_t heads = 2, H = heads * d;
  for (const Lengths& c : kCases) {
    const bool self = c.k.empty();
    if (causal && !self) continue;  // (causal cross-attention: the test below)
    const std::vector<int>& ql = c.q;
    const std::vector<int>& kl = self ? c.q : c.k;
    const size_t n = ql.size();
    const int64_t T = *std::max_element(ql.begin(), ql.end());
    const int64_t S = *std::max_element(kl.begin(), kl.end());
    SCOPED_TRACE(testing::Message() << n << " sequences, longest " << T << " queries, " << S
                                    << " keys" << (self ? " (self)" : ""));
    // Per sequence: q, grad_out [qn, H]; k, v [kn, H].
    std::vector<Vec> q(n), k(n), v(n), go(n);
    for (size_t b = 0; b < n; ++b) {
      q[b] = random(p, ql[b] * H, -1, 1);
      go[b] = random(p, ql[b] * H, -1, 1);
      k[b] = random(p, kl[b] * H, -1, 1);
      v[b] = random(p, kl[b] * H, -1, 1);
    }
    // Both forms: q [rows_q, H] and k, v column slices of [rows_k, 2·H]; padding rows 0.
    struct Form {
      Layout lq, lk;
      DeviceArray q, kv, go, out, lse, gq, gkv, pad, cu_q, cu_k;
    };
    auto make = [&](bool pack) {
      Form f;
      f.lq = pack ? packed(ql) : padded(n, T);
      f.lk = pack ? packed(kl) : padded(n, S);
      Vec qb(f.lq.rows * H, 0.0), gob(f.lq.rows * H, 0.0), kvb(f.lk.rows * 2 * H, 0.0);
      for (size_t b = 0; b < n; ++b) {
        for (int i = 0; i < ql[b]; ++i) {
          std::copy_n(q[b].begin() + i * H, H, qb.begin() + (f.lq.first[b] + i) * H);
          std::copy_n(go[b].begin() + i * H, H, gob.begin() + (f.lq.first[b] + i) * H);
        }
        for (int j = 0; j < kl[b]; ++j) {
          std::copy_n(k[b].begin() + j * H, H, kvb.begin() + (f.lk.first[b] + j) * 2 * H);
          std::copy_n(v[b].begin() + j * H, H, kvb.begin() + (f.lk.first[b] + j) * 2 * H + H);
        }
      }
      f.q = upload(p, qb);
      f.go = upload(p, gob);
      f.kv = upload(p, kvb);
      f.out = poisoned(p, std::max<int64_t>(1, f.lq.rows * H));
      // lse: [batch·heads, T] padded, [heads, total] packed (FusedAttention::lse_entries)
      f.lse = poisoned(Precision::kFp32,
                       std::max<int64_t>(1, pack ? heads * f.lq.rows : n * heads * T));
      f.gq = poisoned(p, std::max<int64_t>(1, f.lq.rows * H));
      f.gkv = poisoned(p, std::max<int64_t>(1, f.lk.rows * 2 * H));
      if (pack) {
        f.cu_q = upload_pod(offsets(ql));
        f.cu_k = upload_pod(offsets(kl));
      } else {  // the padded form masks its padding keys
        std::vector<uint8_t> pad(n * S, 0);
        for (size_t b = 0; b < n; ++b)
          for (int64_t j = kl[b]; j < S; ++j) pad[b * S + j] = 1;
        f.pad = upload_pod(pad);
      }
      return f;
    };
    Form pk = make(true), pd = make(false);
    const uint64_t seed = rng().next(), offset = rng().next() >> 8;
    auto args = [&](const Form& f) {
      AttentionArgs a;
      const size_t eb = element_bytes(p);
      a.q = reinterpret_cast<const void*>(f.q.ptr());
      a.k = reinterpret_cast<const void*>(f.kv.ptr());
      a.v = reinterpret_cast<const void*>(f.kv.ptr() + H * eb);
      a.ld_q = H;
      a.ld_kv = 2 * H;
      a.cu_seqlens_q = reinterpret_cast<const int*>(ptr_or_null(f.cu_q.n ? &f.cu_q : nullptr));
      a.cu_seqlens_k = reinterpret_cast<const int*>(ptr_or_null(f.cu_k.n ? &f.cu_k : nullptr));
      a.key_padding = reinterpret_cast<const uint8_t*>(ptr_or_null(f.pad.n ? &f.pad : nullptr));
      a.batch = static_cast<int64_t>(n);
      a.heads = heads;
      a.q_len = T;
      a.k_len = S;
      a.total_q = f.lq.rows;
      a.total_k = f.lk.rows;
      a.causal = causal;
      a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
      a.dropout = drop ? 0.2 : 0.0;
      a.seed = seed;
      a.offset = offset;
      return a;
    };
    auto run = [&](FusedAttention& with, Form& f) {
      const AttentionArgs a = args(f);
      with.forward(a, reinterpret_cast<void*>(f.out.ptr()), reinterpret_cast<float*>(f.lse.ptr()),
                   nullptr, stream());
      with.backward(
          a, reinterpret_cast<const void*>(f.out.ptr()),
          reinterpret_cast<const float*>(f.lse.ptr()), reinterpret_cast<const void*>(f.go.ptr()),
          reinterpret_cast<void*>(f.gq.ptr()), reinterpret_cast<void*>(f.gkv.ptr()),
          reinterpret_cast<void*>(f.gkv.ptr() + H * element_bytes(p)), allocator, stream());
    };
    run(attn, pk);
    run(attn, pd);
    {  // the other geometries (8-warp forward ring, the other blocks per SM): the same bytes
      Form alt = make(true);
      run(other, alt);
      EXPECT_EQ(download_bytes(alt.out), download_bytes(pk.out)) << "out, other geometry";
      EXPECT_EQ(download_bytes(alt.lse), download_bytes(pk.lse)) << "lse, other geometry";
      EXPECT_EQ(download_bytes(alt.gq), download_bytes(pk.gq)) << "grad_q, other geometry";
      EXPECT_EQ(download_bytes(alt.gkv), download_bytes(pk.gkv))
          << "grad_k, grad_v, other geometry";
    }
    const Vec out[2] = {download(pk.out), download(pd.out)},
              lse[2] = {download(pk.lse), download(pd.lse)};
    const Vec gq[2] = {download(pk.gq), download(pd.gq)},
              gkv[2] = {download(pk.gkv), download(pd.gkv)};
    // Value for value (-0 equals +0: a padded key block adds zeros a packed one never adds).
    int64_t mismatches = 0;
    auto same_rows = [&](const char* what, const Vec(&x)[2], const Layout& a, const Layout& b,
                         const std::vector<int>& lens, int64_t width) {
      for (size_t s = 0; s < n; ++s)
        for (int i = 0; i < lens[s]; ++i)
          for (int64_t c = 0; c < width; ++c) {
            const double u = x[0][(a.first[s] + i) * width + c],
                         w = x[1][(b.first[s] + i) * width + c];
            if (!(u == w) && !(std::isnan(u) && std::isnan(w)) && mismatches++ < 5) {
              ADD_FAILURE() << what << ": sequence " << s << ", row " << i << ", column " << c
                            << ": packed " << u << ", padded " << w;
            }
          }
    };
    same_rows("out", out, pk.lq, pd.lq, ql, H);
    same_rows("grad_q", gq, pk.lq, pd.lq, ql, H);
    same_rows("grad_k, grad_v", gkv, pk.lk, pd.lk, kl, 2 * H);
    for (size_t b = 0; b < n; ++b)  // lse: packed [heads, total], padded [batch·heads, T]
      for (int64_t h = 0; h < heads; ++h)
        for (int i = 0; i < ql[b]; ++i) {
          const double u = lse[0][h * pk.lq.rows + pk.lq.first[b] + i],
                       w = lse[1][(static_cast<int64_t>(b) * heads + h) * T + i];
          if (!(u == w) && mismatches++ < 5) {
            ADD_FAILURE() << "lse: sequence " << b << ", head " << h << ", row " << i << ": packed "
                          << u << ", padded " << w;
          }
        }
    // every packed lse entry written (a sequence's rows, each head)
    ASSERT_TRUE(std::none_of(lse[0].begin(), lse[0].end(), [](double e) { return std::isnan(e); }))
        << "a packed lse entry left unwritten";
    EXPECT_EQ(mismatches, 0);
    for (const Vec& x : {out[0], gq[0], gkv[0]}) {
      ASSERT_TRUE(std::none_of(x.begin(), x.end(), [](double e) { return std::isnan(e); }))
          << "a packed row left unwritten";
    }
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuFusedAttention,
                         testing::Combine(testing::ValuesIn(kHalves),
                                          testing::Values<int64_t>(32, 64, 128), testing::Bool(),
                                          testing::Bool()),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_d" +
                                  std::to_string(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_causal" : "") +
                                  (std::get<3>(info.param) ? "_drop" : "");
                         });

// Causal cross-attention, packed (each sequence its own query and key lengths, so the causal
// offset kn - qn differs per sequence, including sequences without keys and with more keys than
// queries): each sequence as a padded batch of one gives the same out and gradients (to the
// kernels' rounding: the packed launch's longest sequences may choose several key blocks where a
// sequence alone has one).
class GpuFusedAttentionCross : public GpuKernelTest,
                               public testing::WithParamInterface<std::tuple<Precision, int64_t>> {
};

TEST_P(GpuFusedAttentionCross, PackedCausalMatchesEachSequenceAlone) {
  const auto [p, d] = GetParam();
  StreamOrderedAllocator allocator(0);
  FusedAttention attn({p, d, 0, {}});
  const int64_t heads = 2, H = heads * d;
  const std::vector<int> ql{40, 200, 7, 130, 64}, kl{300, 50, 0, 130, 1};
  const size_t n = ql.size();
  const Layout lq = packed(ql), lk = packed(kl);
  const Vec q = random(p, lq.rows * H, -1, 1), kv = random(p, lk.rows * 2 * H, -1, 1),
            go = random(p, lq.rows * H, -1, 1);
  const size_t eb = element_bytes(p);
  // One call: q [rows, H], k and v slices of [rows_k, 2·H]; `cu` null: padded, batch `b`.
  struct Call {
    DeviceArray q, kv, go, out, lse, gq, gkv, cu_q, cu_k;
  };
  auto call = [&](const Vec& qv, const Vec& kvv, const Vec& gov, const std::vector<int>& qs,
                  const std::vector<int>& ks, bool pack) {
    Call c;
    c.q = upload(p, qv);
    c.kv = upload(p, kvv);
    c.go = upload(p, gov);
    const int64_t rq = static_cast<int64_t>(qv.size()) / H,
                  rk = static_cast<int64_t>(kvv.size()) / (2 * H);
    c.out = poisoned(p, std::max<int64_t>(1, rq * H));
    c.gq = poisoned(p, std::max<int64_t>(1, rq * H));
    c.gkv = poisoned(p, std::max<int64_t>(1, rk * 2 * H));
    AttentionArgs a;
    a.q = reinterpret_cast<const void*>(c.q.ptr());
    a.k = reinterpret_cast<const void*>(c.kv.ptr());
    a.v = reinterpret_cast<const void*>(c.kv.ptr() + H * eb);
    a.ld_q = H, a.ld_kv = 2 * H;
    a.batch = static_cast<int64_t>(qs.size()), a.heads = heads;
    a.q_len = *std::max_element(qs.begin(), qs.end());
    a.k_len = *std::max_element(ks.begin(), ks.end());
    a.total_q = rq, a.total_k = rk;
    if (pack) {
      c.cu_q = upload_pod(offsets(qs));
      c.cu_k = upload_pod(offsets(ks));
      a.cu_seqlens_q = reinterpret_cast<const int*>(c.cu_q.ptr());
      a.cu_seqlens_k = reinterpret_cast<const int*>(c.cu_k.ptr());
    }
    a.causal = true;
    a.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    c.lse = poisoned(Precision::kFp32, std::max<int64_t>(1, FusedAttention::lse_entries(a)));
    attn.forward(a, reinterpret_cast<void*>(c.out.ptr()), reinterpret_cast<float*>(c.lse.ptr()),
                 nullptr, stream());
    attn.backward(a, reinterpret_cast<const void*>(c.out.ptr()),
                  reinterpret_cast<const float*>(c.lse.ptr()),
                  reinterpret_cast<const void*>(c.go.ptr()), reinterpret_cast<void*>(c.gq.ptr()),
                  reinterpret_cast<void*>(c.gkv.ptr()),
                  reinterpret_cast<void*>(c.gkv.ptr() + H * eb), allocator, stream());
    return c;
  };
  const Call all = call(q, kv, go, ql, kl, true);
  const Vec out = download(all.out), gq = download(all.gq), gkv = download(all.gkv);
  for (size_t b = 0; b < n; ++b) {
    SCOPED_TRACE(testing::Message()
                 << "sequence " << b << ": " << ql[b] << " queries, " << kl[b] << " keys");
    if (ql[b] == 0) continue;
    auto rows = [](const Vec& v, int64_t first, int64_t count, int64_t width) {
      return Vec(v.begin() + first * width, v.begin() + (first + count) * width);
    };
    const Vec qb = rows(q, lq.first[b], ql[b], H), gob = rows(go, lq.first[b], ql[b], H);
    const Vec kvb = rows(kv, lk.first[b], kl[b], 2 * H);
    if (kl[b] == 0) {  // no keys: out and grad_q zero
      for (double e : rows(out, lq.first[b], ql[b], H)) ASSERT_EQ(e, 0.0);
      for (double e : rows(gq, lq.first[b], ql[b], H)) ASSERT_EQ(e, 0.0);
      continue;
    }
    const Call one = call(qb, kvb, gob, {ql[b]}, {kl[b]}, false);
    EXPECT_TRUE(
        all_close("out", rows(out, lq.first[b], ql[b], H), download(one.out), tolerance_for(p)));
    EXPECT_TRUE(
        all_close("grad_q", rows(gq, lq.first[b], ql[b], H), download(one.gq), tolerance_for(p)));
    EXPECT_TRUE(all_close("grad_k, grad_v", rows(gkv, lk.first[b], kl[b], 2 * H), download(one.gkv),
                          tolerance_for(p)));
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuFusedAttentionCross,
                         testing::Combine(testing::ValuesIn(kHalves),
                                          testing::Values<int64_t>(64, 128)),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_d" +
                                  std::to_string(std::get<1>(info.param));
                         });

// A packed sequence longer than the q_len the call gives: flagged (bad_seqlens), its first q_len
// rows computed, nothing written past the rows the call covers.
TEST_F(GpuKernelTest, FusedAttentionFlagsAPackedSequenceLongerThanItsMaximum) {
  FusedAttention attn({Precision::kBf16, 64, 0, {}});
  const std::vector<int> lens{5, 40};
  const int64_t H = 64, rows = 45;
  DeviceArray q = upload(Precision::kBf16, random(Precision::kBf16, rows * 3 * H, -1, 1));
  DeviceArray out = poisoned(Precision::kBf16, rows * H), lse = poisoned(Precision::kFp32, rows);
  DeviceArray cu = upload_pod(offsets(lens)), flag = upload_pod(std::vector<int32_t>{0});
  AttentionArgs a;
  a.q = reinterpret_cast<const void*>(q.ptr());
  a.k = reinterpret_cast<const void*>(q.ptr() + H * 2);
  a.v = reinterpret_cast<const void*>(q.ptr() + 2 * H * 2);
  a.ld_q = a.ld_kv = 3 * H;
  a.cu_seqlens_q = a.cu_seqlens_k = reinterpret_cast<const int*>(cu.ptr());
  a.batch = 2, a.heads = 1, a.q_len = 32, a.k_len = 32;  // 40 > 32
  a.total_q = a.total_k = rows;
  a.scale = 0.125f;
  attn.forward(a, reinterpret_cast<void*>(out.ptr()), reinterpret_cast<float*>(lse.ptr()),
               reinterpret_cast<int*>(flag.ptr()), stream());
  EXPECT_EQ(download_pod<int32_t>(flag).at(0), 1);
  const Vec o = download(out);
  for (int64_t r = 0; r < 5 + 32; ++r) EXPECT_FALSE(std::isnan(o[r * H])) << "row " << r;
  for (int64_t r = 5 + 32; r < rows; ++r) EXPECT_TRUE(std::isnan(o[r * H])) << "row " << r;
}

}  // namespace
}  // namespace lightseq::kernel_test
