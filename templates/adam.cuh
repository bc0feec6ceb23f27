// adam.cuh — fused Adam / AdamW over many parameter chunks in one launch (fp32 master weights for
// 16-bit models, loss-scale aware), and the finite-gradient check of dynamic loss scaling.
#pragma once

#include "adam.sig.cuh"
#include "common/adam_types.cuh"
#include "common/enums.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"

namespace lightseq::kern {

inline constexpr int kAdamVec = 4;

// Updates N consecutive elements (PyTorch torch.optim.Adam / AdamW, foreach=False formulas).
// What one update uses, from the launch's constants and the device-resident lr and OptimState.
struct AdamStep {
  float lr, beta1, beta2, eps, weight_decay;
  float step_size;     // lr / bias_correction1
  float inv_sqrt_bc2;  // 1 / sqrt(bias_correction2)
  float grad_scale;    // 1 / loss_scale
};

// bias_correction = 1 - beta^step in double, as PyTorch computes it (on the host) for Adam/AdamW.
__device__ __forceinline__ AdamStep adam_step_of(float beta1, float beta2, float eps,
                                                 float weight_decay, float lr,
                                                 const OptimState& st) {
  const double step = static_cast<double>(st.step) + 1.0;
  const double bc1 = 1.0 - pow(static_cast<double>(beta1), step);
  const double bc2 = 1.0 - pow(static_cast<double>(beta2), step);
  AdamStep a;
  a.lr = lr, a.beta1 = beta1, a.beta2 = beta2, a.eps = eps, a.weight_decay = weight_decay;
  a.step_size = static_cast<float>(static_cast<double>(lr) / bc1);
  a.inv_sqrt_bc2 = static_cast<float>(1.0 / sqrt(bc2));
  a.grad_scale = 1.f / st.loss_scale;
  return a;
}

template <AdamMode kMode, int N, typename T>
__device__ __forceinline__ void adam_update(float (&p)[N], const float (&g_in)[N], float (&m)[N],
                                            float (&v)[N], const AdamStep& a) {
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
    p[e] -= a.step_size * m[e] / (sqrtf(v[e]) * a.inv_sqrt_bc2 + a.eps);
  }
}

template <AdamMode kMode, int N, typename T>
__device__ __forceinline__ void adam_elements(const AdamChunk<T>& c, int64_t i, const AdamStep& a) {
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

// adam_kernel — per element, with step = state->step + 1, bc_i = 1 - beta_i^step (double),
//   g = grad / state->loss_scale (+ weight_decay * p for kAdam); m = beta1 m + (1 - beta1) g;
//   v = beta2 v + (1 - beta2) g^2; p *= 1 - lr * weight_decay (kAdamW, first);
//   p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps); param = T(p). lr = *lr.
//   With norm_partials (grad_norm_kernel's, one per chunk): g is first multiplied by
//   min(1, max_norm / (‖grad / loss_scale‖₂ + 1e-6)) (torch.nn.utils.clip_grad_norm_).
//   Nothing is written when state->found_inf (the step is skipped). The state is only read:
//   optim_finish_kernel advances it after every group's update.
// Fuses:     unscale + weight decay + both moments + update + master-to-param cast.
// Shapes:    chunks [n_chunks] in device memory; chunk c covers elements [0, n) of its arrays.
//            master, param, exp_avg, exp_avg_sq updated in place. lr and state in device memory
//            (a CUDA graph replays with their current values).
// Grid/Block: adam_grid(n_chunks) blocks (one per chunk) of adam_block() threads, block-stride
//            within the chunk; any grid.x from 1 up does every chunk (block b takes chunks b,
//            b + gridDim.x, ...). Split tensors into chunks of about
//            kAdamChunkElems elements.
// Constants: none. Every element of every chunk, odd sizes included: 4-element vectors where all
//            the chunk's pointers allow it, scalars for the tail and for unaligned chunks.
// Numerics:  fp32 (bias corrections in fp64).
template <typename T, AdamMode kMode>
__global__ void __launch_bounds__(adam_block())
    adam_kernel(const AdamChunk<T>* chunks, int n_chunks, float beta1, float beta2, float eps,
                float weight_decay, const float* lr, const OptimState* state,
                const float* norm_partials, float max_norm) {
  static_assert(kMode == AdamMode::kAdam || kMode == AdamMode::kAdamW, "AdamMode");
  const OptimState st = *state;
  if (st.found_inf != 0) return;
  if (static_cast<int>(blockIdx.x) >= n_chunks) return;
  AdamStep args = adam_step_of(beta1, beta2, eps, weight_decay, *lr, st);
  constexpr int kThreads = adam_block();
  if (norm_partials != nullptr) {  // global-norm clipping: every block sums in the same order
    __shared__ float smem[32];
    float sq[1] = {0.f};
    for (int i = threadIdx.x; i < n_chunks; i += kThreads) sq[0] += norm_partials[i];
    block_sum<kThreads, 1>(sq, smem);
    const float norm = sqrtf(sq[0]) * args.grad_scale;  // of the unscaled gradients
    const float coef = max_norm / (norm + 1e-6f);
    if (coef < 1.f) args.grad_scale *= coef;
  }
  for (int ci = static_cast<int>(blockIdx.x); ci < n_chunks; ci += static_cast<int>(gridDim.x)) {
    const AdamChunk<T> c = chunks[ci];
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
}

// Calls f(g) for each gradient element of chunk c that this thread owns (as float): 4-element
// vectors where the pointer's alignment allows, then the tail, each thread striding by kThreads.
template <int kThreads, typename T, typename F>
__device__ __forceinline__ void for_each_grad(const AdamChunk<T>& c, F&& f) {
  int64_t vec_end = 0;
  if (is_aligned(c.grad, kAdamVec * DType<T>::kBytes)) {
    vec_end = c.n / kAdamVec * kAdamVec;
    for (int64_t i = static_cast<int64_t>(threadIdx.x) * kAdamVec; i < vec_end;
         i += static_cast<int64_t>(kThreads) * kAdamVec) {
      float g[kAdamVec];
      load_float<kAdamVec>(c.grad + i, g);
#pragma unroll
      for (int e = 0; e < kAdamVec; ++e) f(g[e]);
    }
  }
  for (int64_t i = vec_end + threadIdx.x; i < c.n; i += kThreads) f(to_float(c.grad[i]));
}

// check_finite_kernel — state->found_inf = 1 if any gradient element of any chunk is inf or NaN.
// Fuses:     the whole overflow check of dynamic loss scaling (one launch for all parameters).
// Shapes:    chunks as adam_kernel (only grad and n are read). found_inf is only ever set to 1:
//            optim_finish_kernel clears it at the end of the step.
// Grid/Block: check_finite_grid(n_chunks) blocks of check_finite_block() threads.
// Constants: none. Numerics: exact (exponent bits).
template <typename T>
__global__ void __launch_bounds__(check_finite_block())
    check_finite_kernel(const AdamChunk<T>* chunks, int n_chunks, OptimState* state) {
  if (static_cast<int>(blockIdx.x) >= n_chunks) return;
  int* found_inf = &state->found_inf;
  if (*found_inf != 0) return;  // already known
  const AdamChunk<T> c = chunks[blockIdx.x];
  constexpr int kThreads = check_finite_block();
  bool bad = false;
  for_each_grad<kThreads>(
      c, [&](float g) { bad |= (__float_as_uint(g) & 0x7f800000u) == 0x7f800000u; });
  if (__syncthreads_or(bad) && threadIdx.x == 0) *found_inf = 1;
}

// grad_norm_kernel — partials[c] = Σ grad² over chunk c (fp32): the pieces of the global gradient
//   norm that adam_kernel's clipping sums (in a fixed order: deterministic).
// Fuses:     the squared norm of every gradient in one launch.
// Shapes:    chunks as adam_kernel (only grad and n are read); partials [n_chunks] fp32, `=`.
// Grid/Block: check_finite_grid(n_chunks) blocks of check_finite_block() threads. Smem: 128 B.
// Constants: none. Numerics: fp32 sums of squares in a fixed order.
template <typename T>
__global__ void __launch_bounds__(check_finite_block())
    grad_norm_kernel(const AdamChunk<T>* chunks, int n_chunks, float* partials) {
  if (static_cast<int>(blockIdx.x) >= n_chunks) return;
  constexpr int kThreads = check_finite_block();
  __shared__ float smem[32];
  const AdamChunk<T> c = chunks[blockIdx.x];
  float acc[1] = {0.f};
  for_each_grad<kThreads>(c, [&](float g) { acc[0] += g * g; });
  block_sum<kThreads, 1>(acc, smem);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc[0];
}

// optim_finish_kernel — ends an optimizer step on the device (torch.amp.GradScaler.update's rule):
//   found_inf: the update was skipped; with growth_interval > 0 (dynamic loss scaling)
//     loss_scale *= backoff_factor and growth_tracker = 0.
//   else: step += 1; with growth_interval > 0, growth_tracker += 1 and when it reaches
//     growth_interval loss_scale *= growth_factor (if that stays finite) and growth_tracker = 0.
//   Then found_inf = 0, ready for the next step. growth_interval = 0: a fixed loss scale.
// Shapes:    one OptimState. Grid/Block: one thread.
template <typename T>
__global__ void optim_finish_kernel(OptimState* state, float growth_factor, float backoff_factor,
                                    int growth_interval) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  OptimState s = *state;
  if (s.found_inf != 0) {
    if (growth_interval > 0) {
      s.loss_scale *= backoff_factor;
      s.growth_tracker = 0;
    }
  } else {
    s.step += 1;
    if (growth_interval > 0 && ++s.growth_tracker >= growth_interval) {
      const float grown = s.loss_scale * growth_factor;
      if (isfinite(grown)) s.loss_scale = grown;
      s.growth_tracker = 0;
    }
  }
  s.found_inf = 0;
  *state = s;
}

}  // namespace lightseq::kern
