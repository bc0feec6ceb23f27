// attn_dropout.cuh — the fused attention's dropout keep bits in its tensor-core fragment layouts:
// which Philox calls (common/philox.cuh, the attention numbering: one call per 8 keys of a row)
// each thread of a warp draws, and how every thread gathers the bits of the entries it holds.
// Each is split in a draw (this thread's calls) and a gather that reads other lanes' draws through
// a callable: the kernels pass a warp shuffle, the host test (tests/attn_dropout_test.cpp) the
// whole warp's draws, so the very code the kernels run is checked against attn_keep_bits on a CPU.
//
// Fragment layouts (PTX mma.m16n8k16 C fragments), lane = 4g + t:
//   row layout (queries as rows: the forward, grad_q): a warp's [16 queries, kN keys] tile; thread
//     (g, t) holds rows g and g + 8 (r = 0, 1), keys 8n + 2t + h (h = 0, 1) of each 8-key block n.
//   column layout (keys as rows: grad_k/grad_v): a warp's [16 keys, kM queries] tile; thread
//     (g, t) holds keys g + 8r, queries 8n + 2t + h.
#pragma once

#include "common/philox.cuh"

namespace lightseq::kern::attn_dropout {

// ---- row layout -----------------------------------------------------------------------------
// The quad of threads holding a row's 8 keys of a block (t = 0..3, 2 keys each) splits the kN/8 · 2
// calls of its two rows: thread t draws the blocks n ≡ t (mod 4) of both rows, byte i of its draws
// being block 4·(i/2) + t, row i % 2, packed 4 to a word.
template <int kN>
struct Row {
  static_assert(kN % 32 == 0, "whole words of bytes per thread");
  static constexpr int kBytes = kN / 8 / 4 * 2;
  static constexpr int kWords = kBytes / 4;
};

// This thread's draws: rows[r] the flat rows (bh·q_len + query) of its rows g and g + 8, n0 the
// tile's first key (a multiple of 8).
template <int kN>
LIGHTSEQ_HD inline void row_draw(const DropoutArgs& drop, const uint64_t (&rows)[2], int64_t n0,
                                 int64_t k_len, int t, uint32_t (&words)[Row<kN>::kWords]) {
  const uint64_t per_row = static_cast<uint64_t>((k_len + 7) / 8);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int w = 0; w < Row<kN>::kWords; ++w) words[w] = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int i = 0; i < Row<kN>::kBytes; ++i) {
    const int64_t n = 4 * (i / 2) + t;
    const uint32_t byte = attn_keep_byte(drop, rows[i % 2] * per_row + n0 / 8 + n);
    words[i / 4] |= byte << (8 * (i % 4));
  }
}

// kb[n][r] bit h: whether thread t's entry (row r, key n0 + 8n + 2t + h) is kept. word_of(src, w):
// word w of the draws of the quad's thread src (called in the same order by every thread).
template <int kN, typename WordOf>
LIGHTSEQ_HD inline void row_gather(const WordOf& word_of, int t, uint32_t (&kb)[kN / 8][2]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int w = 0; w < Row<kN>::kWords; ++w) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int src = 0; src < 4; ++src) {
      const uint32_t word = word_of(src, w);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int b = 0; b < 4; ++b) {
        const int i = 4 * w + b;
        kb[4 * (i / 2) + src][i % 2] = (word >> (8 * b + 2 * t)) & 3u;
      }
    }
  }
}

// ---- column layout --------------------------------------------------------------------------
// A call's 8 keys of one query are held by the 8 threads of one t (one bit each). For each two
// query blocks n, n + 1 the warp's 32 calls (2 blocks × 8 queries × 2 key groups) are drawn one per
// thread: thread g draws block n + g / 4, query 8·(n + g/4) + 2t + g % 2, key group (g / 2) % 2.

// This thread's draw for the query blocks n, n + 1 (n even): bhq = bh·q_len, m0 the tile's first
// query, key0 the warp's first key (a multiple of 16).
LIGHTSEQ_HD inline uint32_t col_draw(const DropoutArgs& drop, uint64_t bhq, int64_t m0,
                                     int64_t key0, int64_t k_len, int n, int g, int t) {
  const uint64_t per_row = static_cast<uint64_t>((k_len + 7) / 8);
  const uint64_t query = bhq + static_cast<uint64_t>(m0 + 8 * (n + g / 4) + 2 * t + g % 2);
  return attn_keep_byte(drop, query * per_row + static_cast<uint64_t>(key0 / 8 + (g / 2) % 2));
}

// Bit 2r + h: whether thread (g, t)'s entry (key key0 + g + 8r, query 8·(n + dn) + 2t + h) is
// kept. byte_of(lane): that lane's col_draw (called in the same order by every thread).
template <typename ByteOf>
LIGHTSEQ_HD inline uint32_t col_gather(const ByteOf& byte_of, int dn, int g, int t) {
  uint32_t bits = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 2; ++r) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int h = 0; h < 2; ++h) {
      const uint32_t b = byte_of(4 * (4 * dn + 2 * r + h) + t);
      bits |= ((b >> g) & 1u) << (2 * r + h);
    }
  }
  return bits;
}

}  // namespace lightseq::kern::attn_dropout
