// templates_host_test.cpp — the host-compilable parts of templates/common: launch formulas (every
// row covered, partial buffers sized, vector widths), the dropout argument rounding, and Philox
// against the Random123 known-answer vectors. The kernels themselves are compiled by NVRTC tests
// and checked on a GPU elsewhere.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "templates/common/adam_types.cuh"
#include "templates/common/enums.cuh"
#include "templates/common/launch.cuh"
#include "templates/common/philox.cuh"
#include "tests/kernel_instances.h"

namespace lightseq::kern {
namespace {

// ---- Philox and dropout ------------------------------------------------------------------------

struct Kat {
  uint32_t ctr[4];
  uint32_t key[2];
  uint32_t out[4];
};

TEST(TemplatesPhilox, Random123KnownAnswers) {
  // Random123 kat_vectors, "philox4x32 10": counter, key, expected.
  const Kat kats[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
      {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
       {0xffffffff, 0xffffffff},
       {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
      {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
       {0xa4093822, 0x299f31d0},
       {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
  };
  for (const Kat& k : kats) {
    const Philox4 r = philox4x32_10(k.ctr[0], k.ctr[1], k.ctr[2], k.ctr[3], k.key[0], k.key[1]);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.v[i], k.out[i]) << "word " << i;
  }
}

TEST(TemplatesPhilox, DrawsUseCounterAndKeyLayout) {
  // counter = {lo(i/4), hi(i/4), lo(offset), hi(offset)}, key = {lo(seed), hi(seed)}.
  const DropoutArgs a = make_dropout_args(0x0123456789abcdefull, 0xfedcba9876543210ull, 0.25);
  const uint64_t group = (uint64_t{5} << 32) | 7u;
  const Philox4 want = philox4x32_10(7u, 5u, 0x76543210u, 0xfedcba98u, 0x89abcdefu, 0x01234567u);
  const Philox4 got = dropout_draws(a, group);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got.v[i], want.v[i]);
  for (int k = 0; k < 4; ++k) {
    EXPECT_EQ(dropout_keep(a, group * 4 + k), uint64_t{want.v[k]} < a.keep_below) << k;
  }
}

TEST(TemplatesDropout, MakeDropoutArgsRounding) {
  const uint64_t two32 = uint64_t{1} << 32;
  DropoutArgs a = make_dropout_args(1, 2, 0.0);
  EXPECT_EQ(a.seed, 1u);
  EXPECT_EQ(a.offset, 2u);
  EXPECT_EQ(a.keep_below, two32);
  EXPECT_EQ(a.scale, 1.f);
  a = make_dropout_args(1, 2, 1.0);
  EXPECT_EQ(a.keep_below, 0u);
  EXPECT_EQ(a.scale, 0.f);
  a = make_dropout_args(1, 2, 0.5);
  EXPECT_EQ(a.keep_below, two32 / 2);
  EXPECT_EQ(a.scale, 2.f);
  a = make_dropout_args(1, 2, 0.1);  // 0.9 * 2^32 = 3865470566.4
  EXPECT_EQ(a.keep_below, 3865470566u);
  EXPECT_FLOAT_EQ(a.scale, static_cast<float>(1.0 / 0.9));
  a = make_dropout_args(1, 2, 0.3);  // 0.7 * 2^32 = 3006477107.2
  EXPECT_EQ(a.keep_below, 3006477107u);
  // Out-of-range probabilities are clamped; NaN means no dropout.
  EXPECT_EQ(make_dropout_args(1, 2, -0.5).keep_below, two32);
  EXPECT_EQ(make_dropout_args(1, 2, 1.5).keep_below, 0u);
  EXPECT_EQ(make_dropout_args(1, 2, std::numeric_limits<double>::quiet_NaN()).keep_below, two32);
}

TEST(TemplatesDropout, KeepAllAndDropAll) {
  const DropoutArgs keep = make_dropout_args(42, 0, 0.0);
  const DropoutArgs drop = make_dropout_args(42, 0, 1.0);
  for (uint64_t i = 0; i < 4096; ++i) {
    ASSERT_TRUE(dropout_keep(keep, i));
    ASSERT_FALSE(dropout_keep(drop, i));
  }
  EXPECT_EQ(dropout_keep_bits<8>(keep, 64), 0xffu);
  EXPECT_EQ(dropout_keep_bits<8>(drop, 64), 0u);
}

TEST(TemplatesDropout, KeepBitsMatchScalarTest) {
  const DropoutArgs a = make_dropout_args(1234, 99, 0.37);
  for (uint64_t i0 = 0; i0 < 256; i0 += 8) {
    const uint32_t b8 = dropout_keep_bits<8>(a, i0);
    const uint32_t b4 = dropout_keep_bits<4>(a, i0 + 4);
    const uint32_t b2 = dropout_keep_bits<2>(a, i0 + 2);
    const uint32_t b1 = dropout_keep_bits<1>(a, i0 + 3);
    for (int e = 0; e < 8; ++e) EXPECT_EQ((b8 >> e) & 1u, dropout_keep(a, i0 + e) ? 1u : 0u);
    for (int e = 0; e < 4; ++e) EXPECT_EQ((b4 >> e) & 1u, dropout_keep(a, i0 + 4 + e) ? 1u : 0u);
    for (int e = 0; e < 2; ++e) EXPECT_EQ((b2 >> e) & 1u, dropout_keep(a, i0 + 2 + e) ? 1u : 0u);
    EXPECT_EQ(b1, dropout_keep(a, i0 + 3) ? 1u : 0u);
  }
  // 32 elements: eight groups.
  const uint32_t b32 = dropout_keep_bits<32>(a, 4096);
  for (int e = 0; e < 32; ++e) EXPECT_EQ((b32 >> e) & 1u, dropout_keep(a, 4096 + e) ? 1u : 0u);
}

TEST(TemplatesDropout, KeepRateAndIndependenceOfSites) {
  const double p = 0.1;
  const DropoutArgs a = make_dropout_args(7, 0, p);
  const DropoutArgs b = make_dropout_args(7, 1, p);  // next site: its own offset
  const int n = 1 << 18;
  int kept = 0, same = 0;
  for (int i = 0; i < n; ++i) {
    const bool ka = dropout_keep(a, i);
    kept += ka;
    same += ka == dropout_keep(b, i);
  }
  const double rate = static_cast<double>(kept) / n;
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(rate, 1 - p, 6 * sigma);
  // Independent sites agree with probability p^2 + (1-p)^2 = 0.82.
  EXPECT_NEAR(static_cast<double>(same) / n, 0.82, 0.01);
}

// The attention probabilities' numbering: 16-bit draws, 8 per call, per row.
TEST(TemplatesDropout, AttentionDrawsAreSixteenBitHalvesPerRow) {
  const DropoutArgs a = make_dropout_args(1234, 99, 0.37);
  EXPECT_EQ(attn_keep16(a), static_cast<uint32_t>((a.keep_below + 32768) >> 16));
  EXPECT_EQ(attn_keep16(make_dropout_args(1, 0, 0.1)), 58982u);  // round(0.9 · 2^16)
  EXPECT_EQ(attn_keep16(make_dropout_args(1, 0, 0.0)), 65536u);
  EXPECT_EQ(attn_keep16(make_dropout_args(1, 0, 1.0)), 0u);
  for (const int64_t k_len : {1, 7, 8, 77, 128}) {
    for (uint64_t row : {uint64_t{0}, uint64_t{5}, uint64_t{1} << 33}) {
      for (int64_t j = 0; j < k_len; ++j) {
        // the definition: call row·⌈k_len/8⌉ + j/8, its 16-bit half (j % 8)
        const Philox4 r = dropout_draws(a, row * ((k_len + 7) / 8) + j / 8);
        const uint32_t u = (r.v[(j % 8) / 2] >> (16 * (j % 2))) & 0xFFFFu;
        const uint32_t want = u < attn_keep16(a) ? 1u : 0u;
        ASSERT_EQ(attn_keep_bits<1>(a, row, k_len, j), want) << k_len << " " << row << " " << j;
        if (j % 2 == 0) {
          ASSERT_EQ(attn_keep_bits<2>(a, row, k_len, j) & 1u, want);
        }
        if (j % 4 == 0) {
          ASSERT_EQ(attn_keep_bits<4>(a, row, k_len, j) & 1u, want);
        }
        if (j % 8 == 0) {
          const uint32_t byte = attn_keep_bits<8>(a, row, k_len, j);
          for (int e = 0; e < 8 && j + e < k_len; ++e) {
            ASSERT_EQ((byte >> e) & 1u, attn_keep_bits<1>(a, row, k_len, j + e));
          }
        }
      }
    }
  }
  const DropoutArgs keep = make_dropout_args(42, 0, 0.0), drop = make_dropout_args(42, 0, 1.0);
  EXPECT_EQ(attn_keep_byte(keep, 123), 0xffu);
  EXPECT_EQ(attn_keep_byte(drop, 123), 0u);
}

TEST(TemplatesDropout, AttentionKeepRateAndIndependence) {
  const double p = 0.1;
  const DropoutArgs a = make_dropout_args(7, 0, p), b = make_dropout_args(7, 1, p);
  const int64_t rows = 2048, k_len = 77;  // rows of 77: calls never straddle two
  int64_t kept = 0, same = 0, n = rows * k_len;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < k_len; ++j) {
      const uint32_t ka = attn_keep_bits<1>(a, r, k_len, j);
      kept += ka;
      same += ka == attn_keep_bits<1>(b, r, k_len, j);
    }
  }
  const double sigma = std::sqrt(p * (1 - p) / n);
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 6 * sigma);
  EXPECT_NEAR(static_cast<double>(same) / n, 0.82, 0.01);
}

TEST(TemplatesDropout, ApplyDropout) {
  float v[4] = {1.f, 2.f, 3.f, 4.f};
  apply_dropout<4>(v, 0b1010u, 1.25f);
  EXPECT_EQ(v[0], 0.f);
  EXPECT_EQ(v[1], 2.5f);
  EXPECT_EQ(v[2], 0.f);
  EXPECT_EQ(v[3], 5.f);
}

// ---- launch formulas ---------------------------------------------------------------------------

TEST(TemplatesLaunch, Helpers) {
  EXPECT_EQ(ceil_div(0, 4), 0);
  EXPECT_EQ(ceil_div(9, 4), 3);
  EXPECT_EQ(pow2_ceil(0), 1);
  EXPECT_EQ(pow2_ceil(1), 1);
  EXPECT_EQ(pow2_ceil(33), 64);
  EXPECT_EQ(pow2_ceil(64), 64);
  static_assert(ln_grid(4096, 1024, 8).x == 1024, "constexpr on the host");
}

TEST(TemplatesLaunch, VecWidth) {
  EXPECT_EQ(vec_width(2, 1024), 8);
  EXPECT_EQ(vec_width(2, 520), 8);
  EXPECT_EQ(vec_width(2, 522), 2);
  EXPECT_EQ(vec_width(2, 7), 1);
  EXPECT_EQ(vec_width(4, 1024), 4);
  EXPECT_EQ(vec_width(4, 6), 2);
  EXPECT_EQ(vec_width(4, 30522), 2);
  EXPECT_EQ(heads_vec(2, 768, 12), 8);  // d = 64
  EXPECT_EQ(heads_vec(2, 520, 8), 1);   // d = 65
  EXPECT_EQ(heads_vec(4, 96, 4), 4);    // d = 24
}

const int64_t kRowCounts[] = {1, 2, 7, 71, 263, 264, 265, 4096, 65537};

// Hidden sizes with the vector width the code generator would pick, per element size.
std::vector<std::pair<int64_t, int>> hidden_and_vec() {
  std::vector<std::pair<int64_t, int>> out;
  for (int eb : {2, 4}) {
    for (int64_t h : {8, 64, 256, 512, 520, 522, 768, 1000, 1024, 2048, 4096, 5120, 8192, 12288,
                      16384, 32768, 65536, 100003}) {
      out.push_back({h, vec_width(eb, h)});
    }
  }
  return out;
}

void check_row_layout(int64_t h, int v, int tpr, int rpb, int slots, bool cached, int max_elems,
                      int block, int block_threads) {
  SCOPED_TRACE(testing::Message() << "hidden " << h << " vec " << v);
  EXPECT_GE(tpr, 32);
  EXPECT_LE(tpr, 1024);
  EXPECT_EQ(tpr & (tpr - 1), 0) << "power of two";
  EXPECT_EQ(block, tpr * rpb);
  EXPECT_LE(block, 1024);
  EXPECT_EQ(rpb, tpr >= block_threads ? 1 : block_threads / tpr);
  if (cached) {
    EXPECT_LE(tpr, kLnMaxCachedThreads);
    EXPECT_GE(static_cast<int64_t>(slots) * tpr * v, h) << "slots cover the row";
    EXPECT_LE(slots * v, max_elems);
    EXPECT_LT(static_cast<int64_t>(slots - 1) * tpr * v, h) << "no empty slot";
  } else {
    EXPECT_EQ(tpr, kLnStreamThreads);
    EXPECT_GT(ceil_div(h / v, kLnMaxCachedThreads) * v, max_elems);
  }
}

TEST(TemplatesLaunch, LayerNormForwardLayout) {
  for (auto [h, v] : hidden_and_vec()) {
    check_row_layout(h, v, ln_threads_per_row(h, v), ln_rows_per_block(h, v), ln_slots(h, v),
                     ln_fwd_cached(h, v), kLnFwdMaxElems, ln_block(h, v), kLnFwdBlockThreads);
    for (int64_t rows : kRowCounts) {
      const GridDim g = ln_grid(rows, h, v);
      const int64_t rpb = ln_rows_per_block(h, v);
      EXPECT_GE(g.x * rpb, rows);
      EXPECT_LT((g.x - 1) * rpb, rows);
      EXPECT_EQ(g.y, 1u);
      EXPECT_EQ(g.z, 1u);
    }
  }
  // Examples: a warp per row up to 1024 halves, a block beyond, streamed past 16384 elements.
  EXPECT_EQ(ln_threads_per_row(768, 8), 32);
  EXPECT_EQ(ln_slots(768, 8), 3);
  EXPECT_EQ(ln_block(1024, 8), 128);
  EXPECT_EQ(ln_threads_per_row(4096, 8), 128);
  EXPECT_EQ(ln_threads_per_row(8192, 8), 256);
  EXPECT_TRUE(ln_fwd_cached(16384, 8));
  EXPECT_FALSE(ln_fwd_cached(32768, 8));
  EXPECT_EQ(ln_block(32768, 8), 1024);
}

TEST(TemplatesLaunch, LayerNormBackwardLayout) {
  for (auto [h, v] : hidden_and_vec()) {
    check_row_layout(h, v, ln_bwd_threads_per_row(h, v), ln_bwd_rows_per_block(h, v),
                     ln_bwd_slots(h, v), ln_bwd_cached(h, v), kLnBwdMaxElems, ln_bwd_block(h, v),
                     kLnBwdBlockThreads);
    EXPECT_EQ(embedding_bwd_block(h, v), ln_bwd_block(h, v));
    EXPECT_EQ(embedding_fwd_block(h, v), ln_block(h, v));
  }
  EXPECT_EQ(ln_bwd_threads_per_row(512, 8), 32);
  EXPECT_EQ(ln_bwd_threads_per_row(1024, 8), 64);
  EXPECT_EQ(ln_bwd_rows_per_block(1024, 8), 4);
  EXPECT_EQ(ln_bwd_block(768, 8), 256);
  EXPECT_EQ(ln_bwd_block(8192, 8), 512);
  EXPECT_TRUE(ln_bwd_cached(8192, 8));
  EXPECT_FALSE(ln_bwd_cached(16384, 8));
  EXPECT_EQ(ln_bwd_partial_cols(768, Norm::kOn, BranchOut::kOn), 3 * 768);
  EXPECT_EQ(ln_bwd_partial_cols(768, Norm::kOn, BranchOut::kOff), 2 * 768);
  EXPECT_EQ(ln_bwd_partial_cols(768, Norm::kOff, BranchOut::kOn), 768);
  EXPECT_EQ(ln_bwd_partial_cols(768, Norm::kOff, BranchOut::kOff), 0);
  EXPECT_EQ(embedding_bwd_partial_cols(512, Norm::kOn), 1024);
  EXPECT_EQ(embedding_bwd_partial_cols(512, Norm::kOff), 0);
}

TEST(TemplatesLaunch, PartialBlocksCoverEveryRowOnce) {
  EXPECT_EQ(partial_blocks(0), 0);
  EXPECT_EQ(ln_bwd_grid(0).x, 0u);
  EXPECT_EQ(partial_blocks(1), 1);
  EXPECT_EQ(partial_blocks(100), 100);
  EXPECT_EQ(partial_blocks(264), 264);
  EXPECT_EQ(partial_blocks(1000), 264);
  EXPECT_EQ(partial_blocks(65536), 1024);
  for (int64_t rows : kRowCounts) {
    const int64_t nb = partial_blocks(rows);
    EXPECT_EQ(ln_bwd_blocks(rows), nb);
    EXPECT_EQ(bad_bwd_blocks(rows), nb);
    EXPECT_EQ(merge_blocks(rows), nb);
    EXPECT_EQ(embedding_bwd_blocks(rows), nb);
    EXPECT_EQ(ln_bwd_grid(rows).x, static_cast<uint32_t>(nb));
    ASSERT_GE(nb, 1);
    ASSERT_LE(nb, rows);
    EXPECT_EQ(partial_row_begin(rows, nb, 0), 0);
    EXPECT_EQ(partial_row_begin(rows, nb, nb), rows);
    int64_t most = 0;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t n = partial_row_begin(rows, nb, b + 1) - partial_row_begin(rows, nb, b);
      ASSERT_GE(n, 1) << "block " << b << " of " << nb << " owns no row";
      most = n > most ? n : most;
    }
    EXPECT_LE(most, ceil_div(rows, nb));
  }
  // Large row counts: no 64-bit overflow in b * rows.
  const int64_t big = int64_t{1} << 34;
  const int64_t nb = partial_blocks(big);
  EXPECT_EQ(partial_row_begin(big, nb, nb), big);
}

TEST(TemplatesLaunch, BiasActDropout) {
  EXPECT_EQ(bad_fwd_block(), 256);
  EXPECT_EQ(bad_fwd_grid(1, 8, 8).x, 1u);
  EXPECT_EQ(bad_fwd_grid(4, 1024, 8).x, 2u);  // 512 vectors
  EXPECT_EQ(bad_fwd_grid(65536, 4096, 8).x, static_cast<uint32_t>(kElementwiseMaxBlocks));
  for (int64_t cols : {8, 64, 520, 768, 1024, 3072, 4096, 16384, 30000}) {
    for (int eb : {2, 4}) {
      const int v = vec_width(eb, cols);
      const int64_t nvc = cols / v;
      const int tx = coltile_tx(nvc);
      const int ty = coltile_ty(nvc);
      EXPECT_EQ(bad_bwd_block(cols, v), tx * ty);
      EXPECT_LE(tx * ty, 1024);
      EXPECT_GE(tx * ty, 128);
      for (int64_t rows : kRowCounts) {
        const GridDim g = bad_bwd_grid(rows, cols, v);
        EXPECT_EQ(g.x, static_cast<uint32_t>(bad_bwd_blocks(rows)));
        EXPECT_GE(int64_t{g.y} * tx, nvc) << "column tiles cover the row";
        EXPECT_LT(int64_t{g.y - 1} * tx, nvc);
      }
    }
  }
}

TEST(TemplatesLaunch, Heads) {
  for (auto [h, heads] :
       {std::pair<int64_t, int64_t>{512, 8}, {768, 12}, {1024, 16}, {520, 8}, {8192, 64}}) {
    for (int eb : {2, 4}) {
      const int v = heads_vec(eb, h, heads);
      EXPECT_EQ((h / heads) % v, 0);
      for (int parts : {1, 2, 3}) {
        for (int64_t rows : kRowCounts) {
          EXPECT_GE(int64_t{split_heads_grid(rows, h, heads, parts, eb).x} * split_heads_block(),
                    rows * parts * h / v);
          const GridDim g = merge_grid(rows, h, heads, parts, eb);
          EXPECT_EQ(g.x, static_cast<uint32_t>(merge_blocks(rows)));
          const int64_t nvc = parts * h / v;
          EXPECT_GE(int64_t{g.y} * coltile_tx(nvc), nvc);
          EXPECT_EQ(merge_block(h, heads, parts, eb), coltile_block(nvc));
        }
      }
    }
  }
}

TEST(TemplatesLaunch, SoftmaxLayout) {
  for (int threads : {32, 128, 256, 512, 1024}) {
    for (int eb : {2, 4}) {
      for (int64_t k : {1,   2,    7,    8,    31,   32,   64,   71,    100,    128,
                        512, 1000, 1024, 1025, 2048, 4096, 8192, 16384, 100000, 1000003}) {
        SCOPED_TRACE(testing::Message() << "k_len " << k << " threads " << threads << " eb " << eb);
        const int v = softmax_vec(k, eb);
        EXPECT_TRUE(v == 1 || v == 16 / eb);
        EXPECT_EQ(k % v, 0);
        const int lanes = softmax_lanes(k, threads, eb);
        EXPECT_EQ(lanes & (lanes - 1), 0) << "power of two";
        EXPECT_LE(lanes, threads);
        EXPECT_TRUE(lanes == threads || ceil_div(ceil_div(k, v), lanes) <= kSoftmaxSlots);
        EXPECT_TRUE(lanes == 1 || ceil_div(ceil_div(k, v), lanes / 2) > kSoftmaxSlots)
            << "no more lanes than needed";
        EXPECT_EQ(softmax_rows_per_block(k, threads, eb) * lanes, threads);
        EXPECT_EQ(softmax_cached(k, threads, eb), v > 1 && ceil_div(k / v, lanes) <= kSoftmaxSlots);
        for (int64_t rows : kRowCounts) {
          const GridDim g = softmax_grid(rows, k, threads, eb);
          const int64_t rpb = softmax_rows_per_block(k, threads, eb);
          EXPECT_GE(int64_t{g.x} * rpb, rows);
          EXPECT_LT(int64_t{g.x - 1} * rpb, rows);
        }
      }
    }
  }
  EXPECT_EQ(softmax_lanes(128, 256, 2), 4);
  EXPECT_TRUE(softmax_cached(128, 256, 2));
  EXPECT_EQ(softmax_lanes(1024, 256, 2), 32);
  EXPECT_TRUE(softmax_cached(1024, 256, 2));
  EXPECT_EQ(softmax_lanes(71, 256, 2), 32);  // scalar, streamed
  EXPECT_EQ(softmax_lanes(2048, 256, 2), 64);
  EXPECT_EQ(softmax_rows_per_block(2048, 256, 2), 4);
  EXPECT_FALSE(softmax_cached(71, 256, 2));  // scalars: streamed
  EXPECT_EQ(softmax_lanes(8192, 256, 2), 256);
  EXPECT_TRUE(softmax_cached(8192, 256, 2));
  EXPECT_FALSE(softmax_cached(16384, 256, 2));
  EXPECT_TRUE(softmax_cached(16384, 512, 2));
  EXPECT_EQ(softmax_block(256), 256);
}

TEST(TemplatesLaunch, CrossEntropy) {
  // cached in registers: at most kCeMaxCachedThreads threads of kCeMaxElems values
  EXPECT_EQ(ce_threads(1000, 8), 128);
  EXPECT_EQ(ce_threads(8000, 8), 256);
  EXPECT_TRUE(ce_cached(8000, 256, 8));
  EXPECT_EQ(ce_smem(8000, 256, 8, 2), 0);
  // staged in shared memory up to 96 KiB a row
  EXPECT_EQ(ce_threads(32000, 8), kCeThreads);
  EXPECT_FALSE(ce_cached(32000, 1024, 8));
  EXPECT_EQ(ce_smem(32000, kCeThreads, 8, 2), 64000);
  EXPECT_EQ(ce_smem(30522, kCeThreads, 2, 2), 61044);
  EXPECT_EQ(ce_smem(49152, kCeThreads, 8, 2), 96 * 1024);
  // streamed: past 96 KiB, or copies narrower than cp.async's 4 bytes
  EXPECT_EQ(ce_smem(32000, kCeThreads, 4, 4), 0);
  EXPECT_EQ(ce_smem(50257, kCeThreads, 1, 2), 0);
  EXPECT_EQ(ce_threads(256000, 8), kCeThreads);
  EXPECT_EQ(ce_smem(256000, kCeThreads, 8, 2), 0);
  EXPECT_EQ(ce_grid(4096).x, 4096u);
  EXPECT_EQ(ce_block(512), 512);
}

TEST(TemplatesLaunch, AdamAndReduce) {
  EXPECT_EQ(adam_grid(37).x, 37u);
  EXPECT_EQ(check_finite_grid(37).x, 37u);
  EXPECT_EQ(kAdamChunkElems % 4, 0);
  EXPECT_EQ(column_sum_block(), kColumnSumCols * kColumnSumRowLanes);
  for (int64_t cols : {1, 15, 16, 17, 768, 3 * 1024}) {
    for (int64_t n_out = 1; n_out <= kColumnSumMaxOuts; ++n_out) {
      const GridDim g = column_sum_grid(cols, n_out);
      EXPECT_GE(int64_t{g.x} * kColumnSumCols, cols);
      EXPECT_LT(int64_t{g.x - 1} * kColumnSumCols, cols);
      EXPECT_EQ(g.y, static_cast<uint32_t>(n_out));
      EXPECT_EQ(g.z, 1u);
    }
  }
  EXPECT_EQ(convert_grid(1).x, 1u);
  EXPECT_EQ(convert_grid(4 * 256 + 1).x, 2u);
  EXPECT_EQ(convert_grid(int64_t{1} << 36).x, static_cast<uint32_t>(kElementwiseMaxBlocks));
  EXPECT_EQ(accumulate_grid(0).x, 0u);
  EXPECT_EQ(accumulate_grid(4 * 256).x, 1u);
  EXPECT_EQ(accumulate_block(), kElementwiseThreads);
  // The argument structs keep the layout the kernels see (pointers, then int64; floats, pointer).
  EXPECT_EQ(sizeof(AdamChunk<uint16_t>), 48u);
  EXPECT_EQ(sizeof(OptimState), 16u);
  EXPECT_EQ(sizeof(DropoutArgs), 48u);
}

TEST(TemplatesEnums, MaskBits) {
  static_assert(static_cast<int>(Mask::kPaddingCausal) == 3, "bit set");
  EXPECT_FALSE(has_padding(Mask::kNone));
  EXPECT_FALSE(has_causal(Mask::kNone));
  EXPECT_TRUE(has_padding(Mask::kPadding));
  EXPECT_FALSE(has_causal(Mask::kPadding));
  EXPECT_TRUE(has_causal(Mask::kCausal));
  EXPECT_TRUE(has_padding(Mask::kPaddingCausal));
  EXPECT_TRUE(has_causal(Mask::kPaddingCausal));
}

}  // namespace
}  // namespace lightseq::kern
