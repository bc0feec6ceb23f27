// reduce.cuh — the second stage of the column reductions (bias / gamma / beta gradients from the
// per-block fp32 partials), the fp32-to-parameter-gradient conversion after a scatter, and the
// accumulation of one T tensor into another.
#pragma once

#include "common/enums.cuh"
#include "common/types.cuh"
#include "reduce.sig.cuh"

namespace lightseq::kern {

// column_sum_kernel — out_y[c] (= | +=) sum_b partials[b * stride + col_offset + y * cols + c],
//            c < cols, for each output y < n_out: out0, out1, out2.
// Fuses:     the partial-sum reduction + cast + optional accumulation into an existing gradient,
//            for up to kColumnSumMaxOuts parameter gradients of one partials tensor per launch.
// Shapes:    partials [n_blocks, stride] fp32; out0, out1, out2 [cols] (out1, out2 null beyond
//            n_out). acc, for every output: Accumulate::kOverwrite (`=`) or Accumulate::kAdd (`+=`,
//            e.g. gradient accumulation or a shared parameter).
// Grid/Block: column_sum_grid(cols, n_out) blocks (y: the output) of column_sum_block() =
//            kColumnSumCols columns x kColumnSumRowLanes row lanes. Smem: 2.3 KB static.
// Constants: 1 <= n_out <= kColumnSumMaxOuts (n_out is gridDim.y; the launch formula reads it).
//            Numerics: fp32, fixed summation order (deterministic), the same for every output.
template <typename T>
__global__ void __launch_bounds__(column_sum_block())
    column_sum_kernel(const float* partials, int64_t n_blocks, int64_t stride, int64_t col_offset,
                      int64_t cols, int64_t n_out, T* out0, T* out1, T* out2, Accumulate acc) {
  static_assert(kColumnSumMaxOuts == 3, "one output pointer per grid row");
  constexpr int kCols = kColumnSumCols;
  constexpr int kLanes = kColumnSumRowLanes;
  __shared__ float red[kLanes][kCols + 1];
  T* const out = blockIdx.y == 0 ? out0 : blockIdx.y == 1 ? out1 : out2;
  const int cx = threadIdx.x % kCols;
  const int ry = threadIdx.x / kCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kCols + cx;
  float s = 0.f;
  if (c < cols) {
    const float* p = partials + col_offset + static_cast<int64_t>(blockIdx.y) * cols + c;
    int64_t b = ry;
    // Four independent accumulators: four loads in flight per thread.
    float s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (; b + 3 * kLanes < n_blocks; b += 4 * kLanes) {
      s += p[b * stride];
      s1 += p[(b + kLanes) * stride];
      s2 += p[(b + 2 * kLanes) * stride];
      s3 += p[(b + 3 * kLanes) * stride];
    }
    for (; b < n_blocks; b += kLanes) s += p[b * stride];
    s = (s + s1) + (s2 + s3);
  }
  red[ry][cx] = s;
  __syncthreads();
  if (ry == 0 && c < cols) {
    float total = 0.f;
#pragma unroll
    for (int r = 0; r < kLanes; ++r) total += red[r][cx];
    if (acc == Accumulate::kAdd) total += to_float(out[c]);
    out[c] = from_float<T>(total);
  }
}

// convert_kernel — out[i] (= | +=) T(in[i]), i < n.
// Fuses:     cast + optional accumulation (embedding gradients after the fp32 scatter).
// Shapes:    in [n] fp32, out [n]. acc as column_sum_kernel.
// Grid/Block: convert_grid(n) blocks of convert_block() threads, grid-stride over 4-element
//            vectors (scalars when the pointers are not aligned for them) plus the tail.
// Constants: none. Numerics: one rounding to T (after the fp32 add for kAdd).
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
    convert_kernel(const float* in, T* out, int64_t n, Accumulate acc) {
  constexpr int kV = 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x;
  int64_t vec_end = 0;
  if (is_aligned(in, 16) && is_aligned(out, kV * DType<T>::kBytes)) {
    vec_end = n / kV * kV;
    for (int64_t i = first * kV; i < vec_end; i += stride * kV) {
      float v[kV];
      load_f32<kV>(in + i, v);
      if (acc == Accumulate::kAdd) {
        float o[kV];
        load_float<kV>(out + i, o);
#pragma unroll
        for (int e = 0; e < kV; ++e) v[e] += o[e];
      }
      store_float<kV>(out + i, v);
    }
  }
  for (int64_t i = vec_end + first; i < n; i += stride) {
    float v = in[i];
    if (acc == Accumulate::kAdd) v += to_float(out[i]);
    out[i] = from_float<T>(v);
  }
}

// accumulate_kernel — out[i] += in[i], i < n (gradient accumulation of a T tensor).
// Fuses:     load + fp32 add + one rounding.
// Shapes:    in, out [n]. out `+=`; in may equal out (doubles it).
// Grid/Block: accumulate_grid(n) blocks of accumulate_block() threads, grid-stride over 4-element
//            vectors (scalars when the pointers are not aligned for them) plus the tail.
// Constants: none. Numerics: fp32 add, rounded once to T.
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
    accumulate_kernel(const T* in, T* out, int64_t n) {
  constexpr int kV = 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x;
  int64_t vec_end = 0;
  if (is_aligned(in, kV * DType<T>::kBytes) && is_aligned(out, kV * DType<T>::kBytes)) {
    vec_end = n / kV * kV;
    for (int64_t i = first * kV; i < vec_end; i += stride * kV) {
      float a[kV], b[kV];
      load_float<kV>(in + i, a);
      load_float<kV>(out + i, b);
#pragma unroll
      for (int e = 0; e < kV; ++e) b[e] += a[e];
      store_float<kV>(out + i, b);
    }
  }
  for (int64_t i = vec_end + first; i < n; i += stride) {
    out[i] = from_float<T>(to_float(out[i]) + to_float(in[i]));
  }
}

}  // namespace lightseq::kern
