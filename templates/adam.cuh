// adam.cuh — fused Adam / AdamW over many parameter chunks in one launch (fp32 master weights for
// 16-bit models, loss-scale aware), and the finite-gradient check of dynamic loss scaling.
#pragma once

#include "common/adam_types.cuh"
#include "common/enums.cuh"
#include "adam.sig.cuh"
#include "common/types.cuh"

namespace lightseq::kern {

inline constexpr int kAdamVec = 4;

// Updates N consecutive elements (PyTorch torch.optim.Adam / AdamW, foreach=False formulas).
template <AdamMode kMode, int N, typename T>
__device__ __forceinline__ void adam_update(float (&p)[N], const float (&g_in)[N], float (&m)[N],
                                            float (&v)[N], const AdamArgs& a) {
  const float step = a.lr / a.bias_correction1;
  const float inv_sqrt_bc2 = rsqrtf(a.bias_correction2);
#pragma unroll
  for (int e = 0; e < N; ++e) {
    float g = g_in[e] * a.grad_scale;
    if constexpr (kMode == AdamMode::kAdam) {
      g += a.weight_decay * p[e];
    } else {
      p[e] *= 1.f - a.lr * a.weight_decay;
    }
    m[e] = a.beta1 * m[e] + (1.f - a.beta1) * g;
    v[e] = a.beta2 * v[e] + (1.f - a.beta2) * g * g;
    p[e] -= step * m[e] / (sqrtf(v[e]) * inv_sqrt_bc2 + a.eps);
  }
}

template <AdamMode kMode, int N, typename T>
__device__ __forceinline__ void adam_elements(const AdamChunk<T>& c, int64_t i, const AdamArgs& a) {
  float p[N], g[N], m[N], v[N];
  if (c.master != nullptr) {
    load_f32<N>(c.master + i, p);
  } else {
    load_float<N>(c.param + i, p);
  }
  load_float<N>(c.grad + i, g);
  load_f32<N>(c.exp_avg + i, m);
  load_f32<N>(c.exp_avg_sq + i, v);
  adam_update<kMode, N, T>(p, g, m, v, a);
  store_f32<N>(c.exp_avg + i, m);
  store_f32<N>(c.exp_avg_sq + i, v);
  if (c.master != nullptr) store_f32<N>(c.master + i, p);
  store_float<N>(c.param + i, p);
}

// adam_kernel — per element: g = grad * grad_scale (+ weight_decay * p for kAdam);
//   m = beta1 m + (1 - beta1) g; v = beta2 v + (1 - beta2) g^2; p *= 1 - lr * weight_decay
//   (kAdamW, first); p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps); param = T(p).
//   Nothing is written when found_inf && *found_inf (the step is skipped).
// Fuses:     unscale + weight decay + both moments + update + master-to-param cast.
// Shapes:    chunks [n_chunks] in device memory; chunk c covers elements [0, n) of its arrays.
//            master, param, exp_avg, exp_avg_sq updated in place.
// Grid/Block: adam_grid(n_chunks) blocks (one per chunk) of adam_block() threads, grid-stride
//            within the chunk. Split tensors into chunks of about kAdamChunkElems elements.
// Constants: none. Every element of every chunk, odd sizes included: 4-element vectors where all
//            the chunk's pointers allow it, scalars for the tail and for unaligned chunks.
// Numerics:  fp32.
template <typename T, AdamMode kMode>
__global__ void __launch_bounds__(adam_block())
    adam_kernel(const AdamChunk<T>* chunks, int n_chunks, AdamArgs args) {
  static_assert(kMode == AdamMode::kAdam || kMode == AdamMode::kAdamW, "AdamMode");
  if (args.found_inf != nullptr && *args.found_inf != 0) return;
  if (static_cast<int>(blockIdx.x) >= n_chunks) return;
  const AdamChunk<T> c = chunks[blockIdx.x];
  constexpr int kThreads = adam_block();
  int64_t vec_end = 0;
  const bool aligned = (c.master == nullptr || is_aligned(c.master, 16)) &&
                       is_aligned(c.param, kAdamVec * DType<T>::kBytes) &&
                       is_aligned(c.grad, kAdamVec * DType<T>::kBytes) &&
                       is_aligned(c.exp_avg, 16) && is_aligned(c.exp_avg_sq, 16);
  if (aligned) {
    vec_end = c.n / kAdamVec * kAdamVec;
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kAdamVec; i < vec_end;
         i += static_cast<int64_t>(kThreads) * kAdamVec) {
      adam_elements<kMode, kAdamVec, T>(c, i, args);
    }
  }
  for (int64_t i = vec_end + threadIdx.x; i < c.n; i += kThreads) {
    adam_elements<kMode, 1, T>(c, i, args);
  }
}

// check_finite_kernel — *found_inf = 1 if any gradient element of any chunk is inf or NaN.
// Fuses:     the whole overflow check of dynamic loss scaling (one launch for all parameters).
// Shapes:    chunks as adam_kernel (only grad and n are read). found_inf is only ever set to 1: the
//            caller zeroes it before the check.
// Grid/Block: check_finite_grid(n_chunks) blocks of check_finite_block() threads.
// Constants: none. Numerics: exact (exponent bits).
template <typename T>
__global__ void __launch_bounds__(check_finite_block())
    check_finite_kernel(const AdamChunk<T>* chunks, int n_chunks, int* found_inf) {
  if (static_cast<int>(blockIdx.x) >= n_chunks) return;
  if (*found_inf != 0) return;  // already known
  const AdamChunk<T> c = chunks[blockIdx.x];
  constexpr int kThreads = check_finite_block();
  bool bad = false;
  int64_t vec_end = 0;
  if (is_aligned(c.grad, kAdamVec * DType<T>::kBytes)) {
    vec_end = c.n / kAdamVec * kAdamVec;
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kAdamVec; i < vec_end;
         i += static_cast<int64_t>(kThreads) * kAdamVec) {
      float g[kAdamVec];
      load_float<kAdamVec>(c.grad + i, g);
#pragma unroll
      for (int e = 0; e < kAdamVec; ++e) bad |= (__float_as_uint(g[e]) & 0x7f800000u) == 0x7f800000u;
    }
  }
  for (int64_t i = vec_end + threadIdx.x; i < c.n; i += kThreads) {
    bad |= (__float_as_uint(to_float(c.grad[i])) & 0x7f800000u) == 0x7f800000u;
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1;
}

}  // namespace lightseq::kern
