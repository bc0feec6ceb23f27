// reduce.cuh — warp, group and block reductions (sum, max, online-softmax max+sum) by warp
// shuffles, and the block-level column reduction that writes one row of fp32 partials. Device-only.
// Every reduction combines values in a fixed order: results are deterministic run to run.
#pragma once

#include "common/types.cuh"

namespace lightseq::kern {

inline constexpr unsigned kFullMask = 0xffffffffu;

// Sum / max over aligned groups of `width` lanes (a power of two <= 32); every lane of the warp
// must call it (the shuffles use the full mask). Every lane of a group gets the group's result.
__device__ __forceinline__ float warp_sum(float v, int width = 32) {
  for (int o = width >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v, int width = 32) {
  for (int o = width >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Online-softmax state: running max m and the sum s of exp(x - m). m = -inf means "empty".
struct MaxSum {
  float m;
  float s;
};
__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.m, b.m);
  if (m == neg_inf()) return MaxSum{m, 0.f};
  return MaxSum{m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}
__device__ __forceinline__ MaxSum warp_max_sum(MaxSum v, int width = 32) {
  for (int o = width >> 1; o > 0; o >>= 1) {
    const MaxSum w{__shfl_xor_sync(kFullMask, v.m, o), __shfl_xor_sync(kFullMask, v.s, o)};
    v = combine(v, w);
  }
  return v;
}

// Block-wide reductions of N values at once. smem holds N * 32 floats. Every thread of the block
// must call them (they synchronize) and every thread gets the results. Safe to call back to back
// with the same smem: the leading barrier orders this call's writes after the last call's reads.
template <int kThreads, int N>
__device__ __forceinline__ void block_sum(float (&v)[N], float* smem) {
  static_assert(kThreads % 32 == 0 && kThreads >= 32 && kThreads <= 1024, "block size");
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n]);
  if constexpr (kThreads > 32) {
    constexpr int kWarps = kThreads / 32;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) {
#pragma unroll
      for (int n = 0; n < N; ++n) smem[n * 32 + warp] = v[n];
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < N; ++n) v[n] = warp_sum(lane < kWarps ? smem[n * 32 + lane] : 0.f);
  }
}

template <int kThreads>
__device__ __forceinline__ float block_max(float v, float* smem) {
  static_assert(kThreads % 32 == 0 && kThreads >= 32 && kThreads <= 1024, "block size");
  v = warp_max(v);
  if constexpr (kThreads > 32) {
    constexpr int kWarps = kThreads / 32;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = warp_max(lane < kWarps ? smem[lane] : neg_inf());
  }
  return v;
}

// smem: 64 floats.
template <int kThreads>
__device__ __forceinline__ MaxSum block_max_sum(MaxSum v, float* smem) {
  static_assert(kThreads % 32 == 0 && kThreads >= 32 && kThreads <= 1024, "block size");
  v = warp_max_sum(v);
  if constexpr (kThreads > 32) {
    constexpr int kWarps = kThreads / 32;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    __syncthreads();
    if (lane == 0) {
      smem[warp] = v.m;
      smem[32 + warp] = v.s;
    }
    __syncthreads();
    MaxSum w{neg_inf(), 0.f};
    if (lane < kWarps) w = MaxSum{smem[lane], smem[32 + lane]};
    v = warp_max_sum(w);
  }
  return v;
}

// Reductions over aligned groups of `width` consecutive threads (a power of two dividing the
// block). width <= 32: warp shuffles only. width > 32: shuffles, then shared memory across the
// group's warps between two barriers, so every thread of the block must call it with the same width
// (threads of an unused group pass neutral values). smem: N * 32 floats. Every thread of a group
// gets the group's result; the summation order is fixed.
template <int N>
__device__ __forceinline__ void group_sum(float (&v)[N], int width, float* smem) {
#pragma unroll
  for (int n = 0; n < N; ++n) v[n] = warp_sum(v[n], width < 32 ? width : 32);
  if (width > 32) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int warps = width >> 5;
    const int first = warp & ~(warps - 1);
    __syncthreads();
    if (lane == 0) {
#pragma unroll
      for (int n = 0; n < N; ++n) smem[n * 32 + warp] = v[n];
    }
    __syncthreads();
#pragma unroll
    for (int n = 0; n < N; ++n) {
      // Lane 0 adds up the group's warps, then hands the total to every lane.
      const float s = warp_sum(lane < warps ? smem[n * 32 + first + lane] : 0.f, warps);
      v[n] = __shfl_sync(kFullMask, s, 0);
    }
  }
}
__device__ __forceinline__ float group_max(float v, int width, float* smem) {
  v = warp_max(v, width < 32 ? width : 32);
  if (width > 32) {
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int warps = width >> 5;
    const int first = warp & ~(warps - 1);
    __syncthreads();
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    v = __shfl_sync(kFullMask, warp_max(lane < warps ? smem[first + lane] : neg_inf(), warps), 0);
  }
  return v;
}

// Column partials of a (kTx column-vectors) x (kTy row-lanes) tile: thread (ty, tx) = threadIdx.x
// / kTx, % kTx holds acc[V] for columns tx*V .. tx*V+V-1. Writes out[c] = sum over ty (fixed order)
// for c < n_valid (= columns of this tile inside the matrix). smem: kTy * kTx * V floats. Ends with
// the block synchronized, so smem may be reused.
template <int kTx, int kTy, int V>
__device__ __forceinline__ void write_column_partial(const float (&acc)[V], float* smem, float* out,
                                                     int n_valid) {
  constexpr int kCols = kTx * V;
  const int tx = threadIdx.x % kTx;
  const int ty = threadIdx.x / kTx;
  if constexpr (kTy == 1) {
#pragma unroll
    for (int e = 0; e < V; ++e) {
      if (tx * V + e < n_valid) out[tx * V + e] = acc[e];
    }
  } else {
    if (ty < kTy) {
#pragma unroll
      for (int e = 0; e < V; ++e) smem[ty * kCols + tx * V + e] = acc[e];
    }
    __syncthreads();
    for (int c = threadIdx.x; c < kCols; c += kTx * kTy) {
      float s = 0.f;
#pragma unroll 4
      for (int y = 0; y < kTy; ++y) s += smem[y * kCols + c];
      if (c < n_valid) out[c] = s;
    }
    __syncthreads();
  }
}

}  // namespace lightseq::kern
