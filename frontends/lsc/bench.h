// bench.h — `lsc bench`: training-step timing of a spec's encoder and decoder stacks on a GPU.
#pragma once

#include <cstdint>
#include <string>

namespace lightseq::lsc {

struct BenchOptions {
  std::string spec;
  int64_t batch = 32;
  int64_t seq = 128;
  int64_t src_seq = 0;  // encoder positions a decoder attends to; 0: the same as seq
  int iters = 20;
  int warmup = 5;
  int device = 0;
};

int run_bench(const BenchOptions& options);

}  // namespace lightseq::lsc
