// philox.cuh — counter-based dropout (docs/kernels.md, "Dropout"). Philox4x32-10 exactly as in
// Random123 (Salmon et al., SC'11), the per-element keep test, and the DropoutArgs every kernel
// with a dropout site takes. Compiles as device code and as plain host C++ (the runtime builds
// DropoutArgs with make_dropout_args; the host test checks the known-answer vectors).
//
// Element i (flat index in the layout of the dropout op's output) draws
//   r = philox4x32_10(counter = {lo(i/4), hi(i/4), lo(offset), hi(offset)}, key = {lo(seed),
//   hi(seed)})
// and is kept iff r[i % 4] < keep_below, keep_below = round((1 - p) * 2^32); kept elements are
// multiplied by scale = 1 / (1 - p) (0 when p = 1). One Philox call serves 4 consecutive elements.
//
// The attention probabilities (the unfused softmax's dropout and the fused attention's, which drop
// the same entries) are numbered per row and drawn 16 bits at a time, 8 per call: entry j of row
// `row` of a [rows, k_len] probability matrix draws r = philox4x32_10(counter = row·⌈k_len/8⌉ +
// j/8, ...) and is kept iff u < keep16, u = bits 16·(j % 2) .. +15 of r[(j % 8) / 2], keep16 =
// (keep_below + 2^15) >> 16 (p resolved to 2^-16). The fused kernels regenerate these draws for
// every tile of the scores, forward and backward, where they cost more than the tensor-core
// products: twice the decisions per call halves that.
#pragma once

#include "common/config.cuh"

namespace lightseq::kern {

struct DropoutArgs {
  uint64_t seed;
  uint64_t offset;
  uint64_t keep_below;  // in [0, 2^32]: 2^32 keeps everything, 0 drops everything
  float scale;
  // Graph-safe random numbers (PyTorch's PhiloxCudaState under capture): when set, the kernel
  // reads the seed from *seed_ptr and adds *offset_ptr to `offset`, so a captured CUDA graph
  // replays with the values in device memory at replay time. Null: the values above are used.
  const uint64_t* seed_ptr;
  const uint64_t* offset_ptr;
};

// p is clamped to [0, 1]. p = 0: keep_below = 2^32, scale = 1. p = 1: keep_below = 0, scale = 0.
LIGHTSEQ_HD inline DropoutArgs make_dropout_args(uint64_t seed, uint64_t offset, double p) {
  if (!(p > 0.0)) p = 0.0;  // also maps NaN to 0
  if (p > 1.0) p = 1.0;
  DropoutArgs a;
  a.seed = seed;
  a.offset = offset;
  a.keep_below = static_cast<uint64_t>((1.0 - p) * 4294967296.0 + 0.5);
  a.scale = p >= 1.0 ? 0.f : static_cast<float>(1.0 / (1.0 - p));
  a.seed_ptr = nullptr;
  a.offset_ptr = nullptr;
  return a;
}

// What a kernel with a dropout site does first: the seed and offset from device memory where the
// caller gave pointers (device code only: the pointers are device addresses).
LIGHTSEQ_HD inline DropoutArgs load_dropout_state(DropoutArgs a) {
  if (a.seed_ptr != nullptr) a.seed = *a.seed_ptr;
  if (a.offset_ptr != nullptr) a.offset += *a.offset_ptr;
  a.seed_ptr = nullptr;
  a.offset_ptr = nullptr;
  return a;
}

struct Philox4 {
  uint32_t v[4];
};

LIGHTSEQ_HD inline Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
#if defined(__CUDA_ARCH__)
    // 32-bit halves explicitly: a 64-bit product makes NVVM emit a chain of 64-bit ops.
    const uint32_t hi0 = __umulhi(0xD2511F53u, c0);
    const uint32_t lo0 = 0xD2511F53u * c0;
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c2);
    const uint32_t lo1 = 0xCD9E8D57u * c2;
#else
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
#endif
    c0 = hi1 ^ c1 ^ k0;
    c2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The four draws for elements 4*group .. 4*group+3.
LIGHTSEQ_HD inline Philox4 dropout_draws(const DropoutArgs& a, uint64_t group) {
  return philox4x32_10(static_cast<uint32_t>(group), static_cast<uint32_t>(group >> 32),
                       static_cast<uint32_t>(a.offset), static_cast<uint32_t>(a.offset >> 32),
                       static_cast<uint32_t>(a.seed), static_cast<uint32_t>(a.seed >> 32));
}

// Whether element i is kept.
LIGHTSEQ_HD inline bool dropout_keep(const DropoutArgs& a, uint64_t i) {
  const Philox4 r = dropout_draws(a, i >> 2);
  const uint32_t k = static_cast<uint32_t>(i & 3);
  const uint32_t u = k == 0 ? r.v[0] : k == 1 ? r.v[1] : k == 2 ? r.v[2] : r.v[3];
  return static_cast<uint64_t>(u) < a.keep_below;
}

// Keep bits of elements i0 .. i0+N-1 (bit e <-> element i0+e), N a power of two <= 32, i0 a
// multiple of N (so N < 4 stays inside one group of 4, and N >= 4 covers whole groups).
template <int N>
LIGHTSEQ_HD inline uint32_t dropout_keep_bits(const DropoutArgs& a, uint64_t i0) {
  static_assert(N >= 1 && N <= 32 && (N & (N - 1)) == 0, "N must be a power of two <= 32");
  uint32_t bits = 0;
  if constexpr (N >= 4) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int g = 0; g < N / 4; ++g) {
      const Philox4 r = dropout_draws(a, (i0 >> 2) + g);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
      for (int k = 0; k < 4; ++k) {
        bits |= static_cast<uint32_t>(static_cast<uint64_t>(r.v[k]) < a.keep_below) << (4 * g + k);
      }
    }
  } else {
    const Philox4 r = dropout_draws(a, i0 >> 2);
    const uint32_t k0 = static_cast<uint32_t>(i0 & 3);
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int e = 0; e < N; ++e) {
      const uint32_t k = k0 + e;
      const uint32_t u = k == 0 ? r.v[0] : k == 1 ? r.v[1] : k == 2 ? r.v[2] : r.v[3];
      bits |= static_cast<uint32_t>(static_cast<uint64_t>(u) < a.keep_below) << e;
    }
  }
  return bits;
}

// ---- attention probabilities: 8 keys per Philox call, numbered per row ------------------------

// The 16-bit threshold: u < attn_keep16 keeps (65536 keeps everything, 0 drops everything).
LIGHTSEQ_HD inline uint32_t attn_keep16(const DropoutArgs& a) {
  return static_cast<uint32_t>((a.keep_below + 32768u) >> 16);
}

// The keep bits of keys 8·group_in_row .. +7 of a row (bit e: key 8·(j / 8) + e), from the call
// numbered `group` = row·⌈k_len/8⌉ + j/8 (attn_group). Bits past k_len are meaningless.
LIGHTSEQ_HD inline uint64_t attn_group(uint64_t row, int64_t k_len, int64_t j) {
  return row * static_cast<uint64_t>((k_len + 7) / 8) + static_cast<uint64_t>(j / 8);
}
LIGHTSEQ_HD inline uint32_t attn_keep_byte(const DropoutArgs& a, uint64_t group) {
  const Philox4 r = dropout_draws(a, group);
  const uint32_t keep16 = attn_keep16(a);
  uint32_t bits = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int e = 0; e < 8; ++e) {
    const uint32_t u = (r.v[e / 2] >> (16 * (e % 2))) & 0xFFFFu;
    bits |= static_cast<uint32_t>(u < keep16) << e;
  }
  return bits;
}

// Keep bits of keys j0 .. j0+N-1 of row `row` (bit e: key j0 + e): N a power of two <= 8, j0 a
// multiple of N (so they lie in one call's 8).
template <int N>
LIGHTSEQ_HD inline uint32_t attn_keep_bits(const DropoutArgs& a, uint64_t row, int64_t k_len,
                                           int64_t j0) {
  static_assert(N >= 1 && N <= 8 && (N & (N - 1)) == 0, "N must be a power of two <= 8");
  const uint32_t byte = attn_keep_byte(a, attn_group(row, k_len, j0));
  if constexpr (N == 8) {
    return byte;
  } else {
    return (byte >> (j0 % 8)) & ((1u << N) - 1u);
  }
}

// Applies a dropout keep mask to N values: kept ones scaled, dropped ones zeroed.
template <int N>
LIGHTSEQ_HD inline void apply_dropout(float (&v)[N], uint32_t keep, float scale) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int e = 0; e < N; ++e) v[e] = ((keep >> e) & 1u) ? v[e] * scale : 0.f;
}

}  // namespace lightseq::kern
