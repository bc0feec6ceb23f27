// adam_types.cuh — the argument structs of adam.cuh, host-compilable so the runtime builds them
// with the same layout (T only appears behind pointers: any 2-byte type mirrors __half).
#pragma once

#include "common/config.cuh"

namespace lightseq::kern {

// One contiguous piece of one parameter tensor. master is null when param is itself the fp32
// master copy (T = float) or when a 16-bit parameter has no master (updated in place, in fp32
// arithmetic). The runtime packs these from a tensor list: the pointers in field order, then n.
template <typename T>
struct AdamChunk {
  float* master;
  T* param;
  const T* grad;
  float* exp_avg;
  float* exp_avg_sq;
  int64_t n;
};

// The optimizer's run-time scalars, in device memory: kernels read them there (never as launch
// arguments), so a step captured in a CUDA graph replays with the current values, and the step
// count and loss scale advance on the device (optim_finish_kernel) with no host synchronization.
struct OptimState {
  float loss_scale;        // what this step's loss was multiplied by (1: no loss scaling)
  int32_t step;            // updates applied so far; the next update is number step + 1
  int32_t found_inf;       // 1 when a gradient of this step is inf/NaN: the update is skipped
  int32_t growth_tracker;  // dynamic loss scaling: good steps since the scale last changed
};

// The state before the first step.
LIGHTSEQ_HD inline OptimState initial_optim_state(float loss_scale) {
  return OptimState{loss_scale, 0, 0, 0};
}

}  // namespace lightseq::kern
