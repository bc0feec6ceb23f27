// attn_dropout_test.cpp — templates/common/attn_dropout.cuh on the host: the fused attention's
// keep-bit draws and gathers, run for every lane of a warp with the warp shuffle replaced by a
// read of the other lanes' draws, give each entry a thread holds exactly the bit of the attention
// numbering (attn_keep_bits, common/philox.cuh) — the same entries the unfused softmax drops.
// The kernels (flash_attention.cuh) call these very functions with __shfl_sync.
#include "templates/common/attn_dropout.cuh"

#include <gtest/gtest.h>

#include <cstdint>

namespace lightseq::kern {
namespace {

using attn_dropout::Row;

// A warp's row-layout bits (queries as rows) for the 16 queries q0.. of head bh and the kN keys
// n0.., checked against attn_keep_bits; returns the number of entries compared.
template <int kN>
int64_t check_row_layout(const DropoutArgs& drop, int64_t bh, int64_t q_len, int64_t k_len,
                         int64_t q0, int64_t n0) {
  uint32_t words[32][Row<kN>::kWords];
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const uint64_t rows[2] = {static_cast<uint64_t>(bh * q_len + q0 + g),
                              static_cast<uint64_t>(bh * q_len + q0 + g + 8)};
    attn_dropout::row_draw<kN>(drop, rows, n0, k_len, t, words[lane]);
  }
  int64_t compared = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4, quad = lane & ~3;
    uint32_t kb[kN / 8][2];
    attn_dropout::row_gather<kN>([&](int src, int w) { return words[quad | src][w]; }, t, kb);
    for (int n = 0; n < kN / 8; ++n) {
      for (int r = 0; r < 2; ++r) {
        for (int h = 0; h < 2; ++h) {
          const int64_t query = q0 + g + 8 * r, key = n0 + 8 * n + 2 * t + h;
          if (query >= q_len || key >= k_len) continue;  // entries the kernels mask
          const uint32_t want = attn_keep_bits<1>(drop, bh * q_len + query, k_len, key);
          EXPECT_EQ((kb[n][r] >> h) & 1u, want)
              << "lane " << lane << ", query " << query << ", key " << key << ", k_len " << k_len;
          ++compared;
        }
      }
    }
  }
  return compared;
}

// The same for the column layout (keys as rows): the warp's 16 keys key0.. and the kM queries m0..
template <int kM>
int64_t check_col_layout(const DropoutArgs& drop, int64_t bh, int64_t q_len, int64_t k_len,
                         int64_t m0, int64_t key0) {
  int64_t compared = 0;
  for (int n = 0; n < kM / 8; n += 2) {
    uint32_t bytes[32];
    for (int lane = 0; lane < 32; ++lane) {
      bytes[lane] = attn_dropout::col_draw(drop, static_cast<uint64_t>(bh * q_len), m0, key0, k_len,
                                           n, lane / 4, lane % 4);
    }
    for (int lane = 0; lane < 32; ++lane) {
      const int g = lane / 4, t = lane % 4;
      for (int dn = 0; dn < 2; ++dn) {
        const uint32_t bits =
            attn_dropout::col_gather([&](int src) { return bytes[src]; }, dn, g, t);
        for (int r = 0; r < 2; ++r) {
          for (int h = 0; h < 2; ++h) {
            const int64_t key = key0 + g + 8 * r, query = m0 + 8 * (n + dn) + 2 * t + h;
            if (query >= q_len || key >= k_len) continue;
            const uint32_t want = attn_keep_bits<1>(drop, bh * q_len + query, k_len, key);
            EXPECT_EQ((bits >> (2 * r + h)) & 1u, want)
                << "lane " << lane << ", query " << query << ", key " << key << ", k_len " << k_len;
            ++compared;
          }
        }
      }
    }
  }
  return compared;
}

TEST(AttnDropout, RowLayoutBitsAreTheAttentionNumbering) {
  const DropoutArgs drop = make_dropout_args(987654321, 77, 0.37);
  int64_t compared = 0;
  for (const int64_t k_len : {1, 7, 8, 9, 63, 64, 65, 77, 128, 129, 200}) {
    for (const int64_t q_len : {5, 16, 33}) {
      for (int64_t n0 = 0; n0 < k_len; n0 += 64) {
        for (int64_t q0 = 0; q0 < q_len; q0 += 16) {
          compared += check_row_layout<64>(drop, 3, q_len, k_len, q0, n0);
        }
      }
      if (HasFailure()) return;
    }
  }
  EXPECT_GT(compared, 40000);
}

TEST(AttnDropout, ColumnLayoutBitsAreTheAttentionNumbering) {
  const DropoutArgs drop = make_dropout_args(123456789, 5, 0.37);
  int64_t compared = 0;
  for (const int64_t k_len : {1, 7, 8, 9, 16, 17, 63, 64, 65, 77, 128, 129}) {
    for (const int64_t q_len : {1, 31, 64, 70}) {
      for (int64_t key0 = 0; key0 < k_len; key0 += 16) {
        for (int64_t m0 = 0; m0 < q_len; m0 += 64) {
          compared += check_col_layout<64>(drop, 2, q_len, k_len, m0, key0);
        }
        for (int64_t m0 = 0; m0 < q_len; m0 += 32) {
          compared += check_col_layout<32>(drop, 2, q_len, k_len, m0, key0);
        }
      }
      if (HasFailure()) return;
    }
  }
  EXPECT_GT(compared, 100000);
}

// A gather reading the wrong lane is caught: the check is not vacuous.
TEST(AttnDropout, AWrongLaneIsCaught) {
  const DropoutArgs drop = make_dropout_args(42, 0, 0.5);
  uint32_t bytes[32];
  for (int lane = 0; lane < 32; ++lane) {
    bytes[lane] = attn_dropout::col_draw(drop, 0, 0, 0, 64, 0, lane / 4, lane % 4);
  }
  int mismatches = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const uint32_t right = attn_dropout::col_gather([&](int src) { return bytes[src]; }, 0, g, t);
    const uint32_t wrong =
        attn_dropout::col_gather([&](int src) { return bytes[src ^ 4]; }, 0, g, t);
    mismatches += right != wrong;
  }
  EXPECT_GT(mismatches, 0);
}

}  // namespace
}  // namespace lightseq::kern
