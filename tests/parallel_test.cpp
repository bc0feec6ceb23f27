// parallel_for (compiler/parallel.h): every index once, on the threads asked for, the first
// exception rethrown after the other calls ran.
#include "compiler/parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

namespace lightseq {
namespace {

TEST(ParallelFor, CallsEveryIndexOnceWhateverTheJobs) {
  for (int jobs : {0, 1, 3, 64}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{200}}) {
      std::vector<std::atomic<int>> calls(n);
      parallel_for(n, jobs, [&](size_t i) { ++calls[i]; });
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(calls[i].load(), 1) << "jobs " << jobs << " i " << i;
    }
  }
}

TEST(ParallelFor, UsesAtMostTheJobsAskedForAndTheCallingThread) {
  std::mutex mu;
  std::set<std::thread::id> seen;
  parallel_for(64, 1, [&](size_t) {
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::this_thread::get_id());
  });
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(*seen.begin(), std::this_thread::get_id());
  seen.clear();
  parallel_for(64, 2, [&](size_t) {
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::this_thread::get_id());
  });
  EXPECT_LE(seen.size(), 2u);
}

TEST(ParallelFor, AThrowingCallStopsNoOtherAndTheFirstErrorIsRethrown) {
  std::atomic<int> ran{0};
  try {
    parallel_for(50, 4, [&](size_t i) {
      ++ran;
      if (i % 10 == 3) throw std::runtime_error("index " + std::to_string(i));
    });
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("index ", 0), 0u) << e.what();
  }
  EXPECT_EQ(ran.load(), 50);
}

}  // namespace
}  // namespace lightseq
