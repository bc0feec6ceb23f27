// math.cuh — activations and their derivatives in fp32. GELU is the exact erf form
// (PyTorch's default, approximate='none'). Device-only.
#pragma once

#include "common/enums.cuh"

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
  } else {
    static_assert(kAct == Act::kNone, "unhandled Act");
    return 1.f;
  }
}

}  // namespace lightseq::kern
