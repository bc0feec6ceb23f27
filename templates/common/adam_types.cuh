// adam_types.cuh — the argument structs of adam.cuh, host-compilable so the runtime builds them
// with the same layout (T only appears behind pointers: any 2-byte type mirrors __half).
#pragma once

#include "common/config.cuh"

namespace lightseq::kern {

// One contiguous piece of one parameter tensor. master is null when param is itself the fp32
// master copy (T = float) or when a 16-bit parameter has no master (updated in place, in fp32
// arithmetic).
template <typename T>
struct AdamChunk {
  float* master;
  T* param;
  const T* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t n;
};

// bias_correction1 = 1 - beta1^step, bias_correction2 = 1 - beta2^step (the values, not the
// powers). grad_scale multiplies every gradient (1 / loss_scale). found_inf may be null.
struct AdamArgs {
  float lr;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  float bias_correction1;
  float bias_correction2;
  float grad_scale;
  const int* found_inf;
};

}  // namespace lightseq::kern
