// math.cuh — activations and their derivatives in fp32. gelu is the exact erf form (PyTorch's
// default, approximate='none'); gelu_tanh the tanh approximation (approximate='tanh', GPT-2's
// gelu_new); softmax_exp the exponential of softmaxes. Device-only.
#pragma once

#include "common/enums.cuh"
#include "common/types.cuh"

namespace lightseq::kern {

// gelu(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2))).
__device__ __forceinline__ float gelu(float x) {
  return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
}
// gelu'(x) = Phi(x) + x * phi(x), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
__device__ __forceinline__ float gelu_grad(float x) {
  const float cdf = 0.5f * (1.f + erff(x * 0.70710678118654752f));
  const float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
  return cdf + x * pdf;
}
// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
__device__ __forceinline__ float gelu_tanh(float x) {
  const float u = 0.79788456080286536f * (x + 0.044715f * x * x * x);
  return 0.5f * x * (1.f + tanhf(u));
}
// gelu_tanh'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) u'(x), t = tanh(u), u' = sqrt(2/pi)(1 + 3 0.044715
// x^2).
__device__ __forceinline__ float gelu_tanh_grad(float x) {
  const float t = tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x));
  const float du = 0.79788456080286536f * (1.f + 0.134145f * x * x);
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
}
// exp(x) for x <= 0 (max-subtracted: a softmax's or a cross-entropy's). fp32 data gets expf
// (PyTorch's accuracy); 16-bit data, whose rounding error is ~1e3 times larger, gets ex2.approx (2
// ulp; the x * log2(e) rounding adds |x| * 2^-24 relative, negligible at the magnitudes that
// survive the final rounding).
template <typename T>
__device__ __forceinline__ float softmax_exp(float x) {
  if constexpr (IsSame<T, float>::kValue) {
    return expf(x);
  } else {
    return exp2f(x * 1.4426950408889634f);
  }
}

__device__ __forceinline__ float relu(float x) { return x > 0.f ? x : 0.f; }
// relu'(0) = 0, as PyTorch (threshold_backward passes the gradient only where x > 0).
__device__ __forceinline__ float relu_grad(float x) { return x > 0.f ? 1.f : 0.f; }

template <Act kAct>
__device__ __forceinline__ float activate(float x) {
  if constexpr (kAct == Act::kNone) {
    return x;
  } else if constexpr (kAct == Act::kRelu) {
    return relu(x);
  } else if constexpr (kAct == Act::kGelu) {
    return gelu(x);
  } else if constexpr (kAct == Act::kGeluTanh) {
    return gelu_tanh(x);
  } else {
    static_assert(kAct == Act::kNone, "unhandled Act");
    return x;
  }
}

template <Act kAct>
__device__ __forceinline__ float activate_grad(float x) {
  if constexpr (kAct == Act::kNone) {
    return 1.f;
  } else if constexpr (kAct == Act::kRelu) {
    return relu_grad(x);
  } else if constexpr (kAct == Act::kGelu) {
    return gelu_grad(x);
  } else if constexpr (kAct == Act::kGeluTanh) {
    return gelu_tanh_grad(x);
  } else {
    static_assert(kAct == Act::kNone, "unhandled Act");
    return 1.f;
  }
}

}  // namespace lightseq::kern
