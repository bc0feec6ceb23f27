// parallel.h — the float64 references' one loop helper: [begin, end) split into contiguous
// ranges, one per hardware thread. Each index must write only its own outputs, summing in the
// order it would alone: the results are then the same bits as the serial loop's, on any number of
// threads. (A layer's reference at 1024/16/4096 took ~2.5 s serial on the 2-core machine; the GPU
// layer tests compute ~200 of them, on the device's 16 cores.)
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace lightseq::ref {

// Calls body(i) for every i in [begin, end). `min_per_thread`: fewer indices than that per thread
// run serially (a thread costs ~10-50 µs to start).
template <typename Body>
void parallel_for(int64_t begin, int64_t end, Body&& body, int64_t min_per_thread = 1) {
  const int64_t n = end - begin;
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t workers = std::min(hw, n / std::max<int64_t>(1, min_per_thread));
  if (workers <= 1) {
    for (int64_t i = begin; i < end; ++i) body(i);
    return;
  }
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(workers));
  for (int64_t w = 0; w < workers; ++w) {
    const int64_t lo = begin + n * w / workers, hi = begin + n * (w + 1) / workers;
    threads.emplace_back([&body, &errors, w, lo, hi] {
      try {
        for (int64_t i = lo; i < hi; ++i) body(i);
      } catch (...) {
        errors[static_cast<size_t>(w)] = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

}  // namespace lightseq::ref
