// parallel.h — the one thread pool of the host code: NVRTC compiles in parallel (build_plan, `lsc
// build --resources`, the GPU tests' kernel preparation).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace lightseq {

// Runs fn(i) for every i in [0, n) on up to `jobs` threads (0 or less: the hardware concurrency),
// the calling thread among them, each index once, in no set order; returns when every call has
// finished. A call that throws does not stop the others: the first exception thrown is rethrown
// at the end.
template <typename Fn>
void parallel_for(size_t n, int jobs, Fn&& fn) {
  if (n == 0) return;
  size_t threads = jobs > 0 ? static_cast<size_t>(jobs)
                            : std::max<size_t>(1, std::thread::hardware_concurrency());
  threads = std::min(threads, n);
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::exception_ptr first_error;
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error) first_error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (std::thread& t : pool) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace lightseq
