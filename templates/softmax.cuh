// softmax.cuh — attention probabilities of the unfused attention path: softmax over keys of the
// scaled scores with padding / causal masks and dropout, and its backward. Any k_len (< 2^31);
// the layout is picked at run time from k_len by the launch.cuh formulas (softmax_vec,
// softmax_lanes, softmax_cached), which the runtime also uses for the grid:
//  - `lanes` threads per row (a power of two giving each at most kSoftmaxSlots vectors, capped at
//    kThreads), kThreads / lanes rows per block; warp-shuffle reductions, plus shared memory across
//    the warps of a group wider than a warp;
//  - cached (16-byte vectors, <= kSoftmaxSlots per thread): the row stays in registers (one read,
//    one write); otherwise streamed: online max/sum, then a second pass. Rows whose k_len is not a
//    multiple of 16 / sizeof(T) are streamed on scalars (and one Philox call per element for the
//    dropout): about a fifth of the bandwidth; the planner should pad k_len and mask the padding.
// Dropout: the attention numbering of common/philox.cuh (attn_keep_bits: per row, 8 keys a call),
// the fused attention's too.
// Pointers (key_padding included) must be 16-byte aligned.
#pragma once

#include "common/math.cuh"
#include "common/philox.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"
#include "softmax.sig.cuh"

namespace lightseq::kern {

// Where this thread works: its row, its lane among the row's `lanes` threads, and the row length
// it sees (0 for the padding groups of the last block, which still join the reductions).
struct SoftmaxRow {
  int64_t row;
  int64_t base;  // row * k_len
  int lane;
  int lanes;
  int len;
};

__device__ __forceinline__ SoftmaxRow softmax_row(int threads, int64_t rows, int64_t k_len,
                                                  int lanes) {
  SoftmaxRow r;
  r.lanes = lanes;
  r.lane = threadIdx.x & (lanes - 1);
  r.row = static_cast<int64_t>(blockIdx.x) * (threads / lanes) + threadIdx.x / lanes;
  r.base = r.row * k_len;
  r.len = r.row < rows ? static_cast<int>(k_len) : 0;
  return r;
}

// Reductions over the `lanes` threads of a row: shuffles within a warp, shared memory across the
// warps of a wider group (every group of the block calls them: the row layout is uniform).
__device__ __forceinline__ float softmax_row_max(float v, int lanes, float* smem) {
  return group_max(v, lanes, smem);
}
__device__ __forceinline__ float softmax_row_sum(float v, int lanes, float* smem) {
  float a[1] = {v};
  group_sum<1>(a, lanes, smem);
  return a[0];
}

// The masks of one row: key_padding row (kPadding) and the last visible key (kCausal).
struct SoftmaxMask {
  const uint8_t* pad;
  int lim;  // keys j > lim are masked; >= -1
};

template <Mask kMask>
__device__ __forceinline__ SoftmaxMask softmax_mask(const uint8_t* key_padding, int64_t row,
                                                    int64_t heads, int64_t q_len, int64_t k_len) {
  SoftmaxMask m{key_padding, 0};
  if constexpr (has_padding(kMask)) m.pad += (row / (heads * q_len)) * k_len;
  if constexpr (has_causal(kMask)) {
    const int64_t lim = row % q_len + (k_len - q_len);
    m.lim = lim < -1 ? -1 : static_cast<int>(lim);
  }
  return m;
}

// Sets masked keys among the V keys at j0 to -inf.
template <Mask kMask, int V>
__device__ __forceinline__ void softmax_apply_mask(float (&x)[V], int j0, const SoftmaxMask& m) {
  if constexpr (has_padding(kMask)) {
    const Vec<uint8_t, V> pad = load_vec<V>(m.pad + j0);
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if (pad.v[e] != 0) x[e] = neg_inf();
    }
  }
  if constexpr (has_causal(kMask)) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if (j0 + e > m.lim) x[e] = neg_inf();
    }
  }
}

// Keep bits of the cached slots (slot k's V bits at bit k * V), drawn in a rolled loop: one copy
// of the Philox code instead of kSoftmaxSlots.
template <int V>
__device__ __forceinline__ uint32_t softmax_slot_keep_bits(const SoftmaxRow& r,
                                                           const DropoutArgs& drop) {
  static_assert(kSoftmaxSlots * V <= 32, "slot bits must fit 32 bits");
  uint32_t keep = 0;
#pragma unroll 1
  for (int k = 0; k < kSoftmaxSlots; ++k) {
    const int j0 = (k * r.lanes + r.lane) * V;
    if (j0 < r.len) keep |= attn_keep_bits<V>(drop, r.row, r.len, j0) << (k * V);
  }
  return keep;
}

template <typename T, int V, int kThreads, Mask kMask, Drop kDrop>
__device__ __forceinline__ void softmax_fwd_cached(const T* scores, T* probs, T* probs_dropped,
                                                   const SoftmaxRow& r, const SoftmaxMask& mask,
                                                   const DropoutArgs& drop, float* smem) {
  constexpr int kSlots = kSoftmaxSlots;
  float x[kSlots][V];
  float m = neg_inf();
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int j0 = (k * r.lanes + r.lane) * V;
    if (j0 < r.len) {
      load_float<V>(scores + r.base + j0, x[k]);
      softmax_apply_mask<kMask, V>(x[k], j0, mask);
#pragma unroll
      for (int e = 0; e < V; ++e) m = fmaxf(m, x[k][e]);
    } else {
#pragma unroll
      for (int e = 0; e < V; ++e) x[k][e] = neg_inf();
    }
  }
  m = softmax_row_max(m, r.lanes, smem);
  const float shift = m == neg_inf() ? 0.f : m;  // fully masked row: exp(-inf) = 0 everywhere
  float sum = 0.f;
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      x[k][e] = softmax_exp<T>(x[k][e] - shift);
      sum += x[k][e];
    }
  }
  sum = softmax_row_sum(sum, r.lanes, smem);
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
  uint32_t keep = 0;
  if constexpr (kDrop == Drop::kOn) keep = softmax_slot_keep_bits<V>(r, drop);
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int j0 = (k * r.lanes + r.lane) * V;
    if (j0 < r.len) {
#pragma unroll
      for (int e = 0; e < V; ++e) x[k][e] *= inv;
      store_float<V>(probs + r.base + j0, x[k]);
      if constexpr (kDrop == Drop::kOn) {
        apply_dropout<V>(x[k], keep >> (k * V), drop.scale);
        store_float<V>(probs_dropped + r.base + j0, x[k]);
      }
    }
  }
}

// Streamed: any k_len. probs may alias scores: each element is read, then written, by the same
// thread.
template <typename T, int V, int kThreads, Mask kMask, Drop kDrop>
__device__ __forceinline__ void softmax_fwd_streamed(const T* scores, T* probs, T* probs_dropped,
                                                     const SoftmaxRow& r, const SoftmaxMask& mask,
                                                     const DropoutArgs& drop, float* smem) {
  const int step = r.lanes * V;
  // Per-thread online max/sum, then the row max, then the sums rescaled to it and added.
  float m = neg_inf();
  float sum = 0.f;
#pragma unroll 1
  for (int j0 = r.lane * V; j0 < r.len; j0 += step) {
    float x[V];
    load_float<V>(scores + r.base + j0, x);
    softmax_apply_mask<kMask, V>(x, j0, mask);
    float vm = m;
#pragma unroll
    for (int e = 0; e < V; ++e) vm = fmaxf(vm, x[e]);
    if (vm == neg_inf()) continue;
    sum *= softmax_exp<T>(m - vm);  // exp(-inf) = 0 while sum is still 0
    m = vm;
#pragma unroll
    for (int e = 0; e < V; ++e) sum += softmax_exp<T>(x[e] - m);
  }
  const float row_m = softmax_row_max(m, r.lanes, smem);
  sum = softmax_row_sum(m == neg_inf() ? 0.f : sum * softmax_exp<T>(m - row_m), r.lanes, smem);
  const float shift = row_m == neg_inf() ? 0.f : row_m;
  const float inv = sum > 0.f ? 1.f / sum : 0.f;
#pragma unroll 1
  for (int j0 = r.lane * V; j0 < r.len; j0 += step) {
    float x[V];
    load_float<V>(scores + r.base + j0, x);
    softmax_apply_mask<kMask, V>(x, j0, mask);
#pragma unroll
    for (int e = 0; e < V; ++e) x[e] = softmax_exp<T>(x[e] - shift) * inv;
    store_float<V>(probs + r.base + j0, x);
    if constexpr (kDrop == Drop::kOn) {
      apply_dropout<V>(x, attn_keep_bits<V>(drop, r.row, r.len, j0), drop.scale);
      store_float<V>(probs_dropped + r.base + j0, x);
    }
  }
}

// attn_softmax_fwd_kernel — probs = softmax_j(scores masked), probs_dropped = dropout(probs).
// Fuses:     padding mask + causal mask + softmax + dropout + casts.
// Shapes:    scores, probs, probs_dropped [batch, heads, q_len, k_len] (rows = batch * heads *
//            q_len); key_padding [batch, k_len] uint8, nonzero = padded key. probs may alias
//            scores. Key j is masked for query i when key_padding[b, j] != 0 (Mask::kPadding) or
//            j > i + k_len - q_len (Mask::kCausal). A row with every key masked gives zeros.
//            Outputs `=`. Dropout: entry j of row `row` by attn_keep_bits (common/philox.cuh).
// Grid/Block: softmax_grid(rows, k_len, kThreads, sizeof(T)) blocks of kThreads. Smem: 256 B.
// Constants: kThreads a power of two in [32, 1024] (static_assert).
// Numerics:  fp32, max-subtracted exp (softmax_exp), multiplication by 1 / fp32 row sum.
template <typename T, int kThreads, Mask kMask, Drop kDrop>
__global__ void __launch_bounds__(kThreads)
    attn_softmax_fwd_kernel(const T* scores, T* probs, T* probs_dropped, const uint8_t* key_padding,
                            int64_t batch, int64_t heads, int64_t q_len, int64_t k_len,
                            DropoutArgs drop) {
  static_assert(kThreads >= 32 && kThreads <= 1024 && (kThreads & (kThreads - 1)) == 0,
                "kThreads must be a power of two in [32, 1024]");
  static_assert(kMask == Mask::kNone || kMask == Mask::kPadding || kMask == Mask::kCausal ||
                    kMask == Mask::kPaddingCausal,
                "Mask");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  drop = load_dropout_state(drop);
  constexpr int kEb = DType<T>::kBytes;
  constexpr int kV = kMaxVec<T>;
  __shared__ float smem[64];
  const SoftmaxRow r =
      softmax_row(kThreads, batch * heads * q_len, k_len, softmax_lanes(k_len, kThreads, kEb));
  const SoftmaxMask mask = softmax_mask<kMask>(key_padding, r.row, heads, q_len, k_len);
  if (softmax_cached(k_len, kThreads, kEb)) {
    softmax_fwd_cached<T, kV, kThreads, kMask, kDrop>(scores, probs, probs_dropped, r, mask, drop,
                                                      smem);
  } else if (softmax_vec(k_len, kEb) == kV) {
    softmax_fwd_streamed<T, kV, kThreads, kMask, kDrop>(scores, probs, probs_dropped, r, mask, drop,
                                                        smem);
  } else {
    softmax_fwd_streamed<T, 1, kThreads, kMask, kDrop>(scores, probs, probs_dropped, r, mask, drop,
                                                       smem);
  }
}

template <typename T, int V, int kThreads, Drop kDrop>
__device__ __forceinline__ void softmax_bwd_cached(const T* grad_dropped, const T* probs,
                                                   T* grad_scores, const SoftmaxRow& r,
                                                   const DropoutArgs& drop, float* smem) {
  constexpr int kSlots = kSoftmaxSlots;
  uint32_t keep = ~0u;
  if constexpr (kDrop == Drop::kOn) keep = softmax_slot_keep_bits<V>(r, drop);
  float dp[kSlots][V];
  Vec<T, V> p[kSlots];
  float dot = 0.f;
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int j0 = (k * r.lanes + r.lane) * V;
    if (j0 < r.len) {
      load_float<V>(grad_dropped + r.base + j0, dp[k]);
      if constexpr (kDrop == Drop::kOn) apply_dropout<V>(dp[k], keep >> (k * V), drop.scale);
      p[k] = load_vec<V>(probs + r.base + j0);
#pragma unroll
      for (int e = 0; e < V; ++e) dot += dp[k][e] * to_float(p[k].v[e]);
    }
  }
  dot = softmax_row_sum(dot, r.lanes, smem);
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int j0 = (k * r.lanes + r.lane) * V;
    if (j0 < r.len) {
#pragma unroll
      for (int e = 0; e < V; ++e) dp[k][e] = to_float(p[k].v[e]) * (dp[k][e] - dot);
      store_float<V>(grad_scores + r.base + j0, dp[k]);
    }
  }
}

// dP = dropout_mask(grad_dropped) for the V keys at j0 of the row.
template <typename T, int V, Drop kDrop>
__device__ __forceinline__ void softmax_grad_in(const T* grad_dropped, const SoftmaxRow& r, int j0,
                                                const DropoutArgs& drop, float (&dp)[V]) {
  load_float<V>(grad_dropped + r.base + j0, dp);
  if constexpr (kDrop == Drop::kOn) {
    apply_dropout<V>(dp, attn_keep_bits<V>(drop, r.row, r.len, j0), drop.scale);
  }
}

template <typename T, int V, int kThreads, Drop kDrop>
__device__ __forceinline__ void softmax_bwd_streamed(const T* grad_dropped, const T* probs,
                                                     T* grad_scores, const SoftmaxRow& r,
                                                     const DropoutArgs& drop, float* smem) {
  const int step = r.lanes * V;
  float dot = 0.f;
#pragma unroll 1
  for (int j0 = r.lane * V; j0 < r.len; j0 += step) {
    float dp[V], p[V];
    softmax_grad_in<T, V, kDrop>(grad_dropped, r, j0, drop, dp);
    load_float<V>(probs + r.base + j0, p);
#pragma unroll
    for (int e = 0; e < V; ++e) dot += dp[e] * p[e];
  }
  dot = softmax_row_sum(dot, r.lanes, smem);
#pragma unroll 1
  for (int j0 = r.lane * V; j0 < r.len; j0 += step) {
    float dp[V], p[V];
    softmax_grad_in<T, V, kDrop>(grad_dropped, r, j0, drop, dp);
    load_float<V>(probs + r.base + j0, p);
#pragma unroll
    for (int e = 0; e < V; ++e) dp[e] = p[e] * (dp[e] - dot);
    store_float<V>(grad_scores + r.base + j0, dp);
  }
}

// attn_softmax_bwd_kernel — dP = dropout_mask(grad_dropped) (same bits as the forward),
//   grad_scores = probs * (dP - sum_j dP * probs).
// Fuses:     dropout backward + softmax backward (masked keys have probs 0, so gradient 0).
// Shapes:    grad_dropped, probs, grad_scores [rows, k_len]. grad_scores `=`, may alias
//            grad_dropped. Dropout: as the forward (attn_keep_bits).
// Grid/Block: softmax_grid(rows, k_len, kThreads, sizeof(T)) blocks of kThreads. Smem: 256 B.
// Constants: kThreads a power of two in [32, 1024] (static_assert).
// Numerics:  fp32 dot product and products.
template <typename T, int kThreads, Drop kDrop>
__global__ void __launch_bounds__(kThreads)
    attn_softmax_bwd_kernel(const T* grad_dropped, const T* probs, T* grad_scores, int64_t rows,
                            int64_t k_len, DropoutArgs drop) {
  static_assert(kThreads >= 32 && kThreads <= 1024 && (kThreads & (kThreads - 1)) == 0,
                "kThreads must be a power of two in [32, 1024]");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  drop = load_dropout_state(drop);
  constexpr int kEb = DType<T>::kBytes;
  constexpr int kV = kMaxVec<T>;
  __shared__ float smem[64];
  const SoftmaxRow r = softmax_row(kThreads, rows, k_len, softmax_lanes(k_len, kThreads, kEb));
  if (softmax_cached(k_len, kThreads, kEb)) {
    softmax_bwd_cached<T, kV, kThreads, kDrop>(grad_dropped, probs, grad_scores, r, drop, smem);
  } else if (softmax_vec(k_len, kEb) == kV) {
    softmax_bwd_streamed<T, kV, kThreads, kDrop>(grad_dropped, probs, grad_scores, r, drop, smem);
  } else {
    softmax_bwd_streamed<T, 1, kThreads, kDrop>(grad_dropped, probs, grad_scores, r, drop, smem);
  }
}

}  // namespace lightseq::kern
