// fused_attention_test.cpp — runtime/fused_attention.h without a GPU: what it refuses (precision,
// head dim, sizes, strides, alignment, dropout) with errors that say what to change, the kernel
// instances a call runs (mask and dropout from the arguments, the plans' geometry), and the
// backward's workspace from the signatures' extents. The launches: gpu_fused_attention_test.cpp.
#include "runtime/fused_attention.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "compiler/errors.h"
#include "flash_attention.sig.cuh"

namespace lightseq {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A valid call: 2 sequences, 4 heads of 64, q, k, v slices of one [rows, 3·256] buffer.
AttentionArgs valid() {
  alignas(16) static char buffer[1024];
  AttentionArgs a;
  a.q = buffer;
  a.k = buffer + 512;
  a.v = buffer + 1024 - 16;
  a.ld_q = a.ld_kv = 3 * 256;
  a.batch = 2, a.heads = 4, a.q_len = 300, a.k_len = 300;
  a.scale = 0.125f;
  return a;
}

TEST(FusedAttention, RefusesWhatTheKernelsDoNotTakeAndSaysWhatTo) {
  EXPECT_NE(error_of([] {
              FusedAttention({Precision::kFp32, 64, 0, {}});
            }).find("fp16 and bf16"),
            std::string::npos);
  for (const int64_t d : {int64_t{0}, int64_t{40}, int64_t{256}}) {
    EXPECT_NE(error_of([&] {
                FusedAttention({Precision::kBf16, d, 0, {}});
              }).find("head_dim " + std::to_string(d) + " is not taken"),
              std::string::npos)
        << d;
  }
  FusedAttention attn({Precision::kBf16, 64, 0, {}});
  EXPECT_NO_THROW(attn.instances(valid()));
  auto refusal = [&](auto change) {
    AttentionArgs a = valid();
    change(a);
    return error_of([&] { attn.instances(a); });
  };
  EXPECT_NE(refusal([](AttentionArgs& a) { a.heads = 0; }).find("heads > 0"), std::string::npos);
  EXPECT_NE(refusal([](AttentionArgs& a) { a.k_len = 0; }).find("at least one key"),
            std::string::npos);
  EXPECT_NE(refusal([](AttentionArgs& a) { a.ld_q = 100; }).find("multiples of 8"),
            std::string::npos);
  EXPECT_NE(refusal([](AttentionArgs& a) { a.ld_kv = 128; }).find("at least heads · head_dim"),
            std::string::npos);
  EXPECT_NE(
      refusal([](AttentionArgs& a) { a.k = static_cast<const char*>(a.k) + 2; }).find("16-byte"),
      std::string::npos);
  EXPECT_NE(refusal([](AttentionArgs& a) { a.dropout = 1.0; }).find("[0, 1)"), std::string::npos);
  EXPECT_NE(refusal([](AttentionArgs& a) { a.batch = 20000; }).find("split the batch"),
            std::string::npos);
}

TEST(FusedAttention, RunsThePlansInstancesForItsArguments) {
  FusedAttention attn({Precision::kFp16, 128, 0, {}});
  AttentionArgs a = valid();
  a.ld_q = a.ld_kv = 3 * 512;
  std::vector<KernelInstance> ks = attn.instances(a);
  ASSERT_EQ(ks.size(), 3u);
  EXPECT_EQ(ks[0].label, "flash_attn_fwd:fp16:d=128:mask=none:drop=off:seqs=padded:w=" +
                             std::to_string(kern::kFlashFwdWarps));
  EXPECT_EQ(ks[1].label, "flash_attn_bwd_dot:fp16:d=128");
  EXPECT_EQ(ks[2].label, "flash_attn_bwd_dkdv:fp16:d=128:mask=none:drop=off:seqs=padded:b=" +
                             std::to_string(kern::flash_bwd_blocks(128)));
  static const uint8_t pad[1] = {0};
  a.key_padding = pad;
  a.causal = true;
  a.dropout = 0.1;
  ks = attn.instances(a);
  EXPECT_EQ(ks[0].label, "flash_attn_fwd:fp16:d=128:mask=padding+causal:drop=on:seqs=padded:w=" +
                             std::to_string(kern::kFlashFwdWarps));
  static const int cu[2] = {0, 300};  // a packed batch: the packed builds
  a.cu_seqlens_k = cu;
  a.total_k = 300;
  ks = attn.instances(a);
  EXPECT_EQ(ks[0].label, "flash_attn_fwd:fp16:d=128:mask=padding+causal:drop=on:seqs=packed:w=" +
                             std::to_string(kern::kFlashFwdWarps));
  EXPECT_EQ(ks[2].label,
            "flash_attn_bwd_dkdv:fp16:d=128:mask=padding+causal:drop=on:seqs=packed:b=" +
                std::to_string(kern::flash_bwd_blocks(128)));
}

// The backward's workspace: D's rows and grad_q's parts where several key blocks share a query
// tile (k_len past one block); none where one block holds every key.
TEST(FusedAttention, SizesTheBackwardsWorkspaceFromTheSignatures) {
  FusedAttention attn({Precision::kBf16, 64, 0, {}});
  AttentionArgs a = valid();
  a.q_len = a.k_len = kern::kFlashBwdBlockN;  // one key block: the grad_k/grad_v kernel does all
  EXPECT_EQ(attn.backward_workspace(a), 0u);
  a.q_len = a.k_len = 300;
  const int64_t bh = a.batch * a.heads;
  const int m = kern::flash_bwd_block_m(64, kern::flash_bwd_blocks(64));
  auto aligned = [](int64_t bytes) {
    const int64_t align = FusedAttention::kWorkspaceAlign;
    return static_cast<size_t>((bytes + align - 1) / align * align);
  };
  const size_t want = aligned(bh * a.q_len * 4)                                           // D
                      + aligned(kern::flash_dq_acc_rows(bh, a.q_len, a.k_len) * 64 * 4)   // dq_acc
                      + aligned(kern::flash_dq_sync_words(bh, a.q_len, a.k_len, m) * 4);  // dq_sync
  EXPECT_EQ(attn.backward_workspace(a), want);
  a.q_len = 301;  // D's rows not a multiple of the alignment
  EXPECT_EQ(attn.backward_workspace(a) % FusedAttention::kWorkspaceAlign, 0u);
  // Packed queries: lse and D are [heads, total_q], whatever the longest sequence.
  static const int cu[3] = {0, 10, 310};
  a.cu_seqlens_q = a.cu_seqlens_k = cu;
  a.total_q = a.total_k = 310;
  EXPECT_EQ(FusedAttention::lse_entries(a), a.heads * 310);
  a.q_len = a.k_len = 300;
  EXPECT_EQ(attn.backward_workspace(a),
            aligned(a.heads * 310 * 4) +
                aligned(kern::flash_dq_acc_rows(bh, a.q_len, a.k_len) * 64 * 4) +
                aligned(kern::flash_dq_sync_words(bh, a.q_len, a.k_len, m) * 4));
  a.total_k = 0;  // a packed side without its rows
  EXPECT_NE(error_of([&] { attn.backward_workspace(a); }).find("a packed side needs its rows"),
            std::string::npos);
}

}  // namespace
}  // namespace lightseq
