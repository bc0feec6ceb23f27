// step_arenas.h — TrainStep's persistent device memory and the helpers its two source files share
// (step.cpp: the schedule; step_state.cpp: parameters and checkpoints). Internal to runtime/.
#pragma once

#include <vector>

#include "common/adam_types.cuh"
#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/step.h"

namespace lightseq {

// The step's persistent device memory: the arenas (params and grads in the model's dtype, the
// rest fp32) and the run-time scalars every captured step reads.
struct TrainStep::Arenas {
  DeviceBuffer params, grads, exp_avg, exp_avg_sq, master;
  DeviceBuffer scalars;  // OptimState | lr (f32) | seed (u64) | offset (u64), each 16-aligned
  kern::OptimState* state = nullptr;
  float* lr = nullptr;
  uint64_t* seed = nullptr;
  uint64_t* offset = nullptr;
  static constexpr size_t kSeedAt = 32;  // the seed's byte offset in `scalars`
};

namespace step_detail {

inline void sync(CUstream s) { LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(s)); }

// n values of T from device memory (enqueued; read them after sync(s)).
template <typename T>
std::vector<T> download(const void* p, size_t n, CUstream s) {
  std::vector<T> v(n);
  if (n) {
    LIGHTSEQ_CU_CHECK(
        driver().cuMemcpyDtoHAsync(v.data(), reinterpret_cast<CUdeviceptr>(p), n * sizeof(T), s));
  }
  return v;
}

}  // namespace step_detail
}  // namespace lightseq
