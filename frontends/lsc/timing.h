// timing.h — `lsc bench`'s timing loop: warm-up, then the median and min of many steps measured
// with CUDA events (GPU time), and the host's time to issue one step.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq::lsc {

// host_median: the host's time to issue one step (enqueue only: the step's calls returning, no
// synchronization), beside the GPU time between the events around it. When the host takes longer
// than the GPU, the step is host-bound and the event time measures the host.
struct Timing {
  double median = 0, min = 0;
  size_t count = 0;
  double host_median = 0;
};

// Median and min of `iters` timed calls of `step` after `warmup` untimed ones.
template <class Step>
Timing time_steps(int warmup, int iters, CUstream stream, Step&& step) {
  CUevent start, stop;
  LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&start, CU_EVENT_DEFAULT));
  LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&stop, CU_EVENT_DEFAULT));
  for (int i = 0; i < warmup; ++i) step();
  std::vector<float> ms;
  std::vector<double> host_ms;
  for (int i = 0; i < iters; ++i) {
    LIGHTSEQ_CU_CHECK(driver().cuEventRecord(start, stream));
    const auto issue_begin = std::chrono::steady_clock::now();
    step();
    host_ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - issue_begin)
            .count());
    LIGHTSEQ_CU_CHECK(driver().cuEventRecord(stop, stream));
    LIGHTSEQ_CU_CHECK(driver().cuEventSynchronize(stop));
    float t = 0;
    LIGHTSEQ_CU_CHECK(driver().cuEventElapsedTime(&t, start, stop));
    ms.push_back(t);
  }
  LIGHTSEQ_CU_CHECK(driver().cuEventDestroy(start));
  LIGHTSEQ_CU_CHECK(driver().cuEventDestroy(stop));
  std::sort(ms.begin(), ms.end());
  std::sort(host_ms.begin(), host_ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.size(), host_ms[host_ms.size() / 2]};
}

}  // namespace lightseq::lsc
