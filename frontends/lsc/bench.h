// bench.h — `lsc bench`: training-step timing of a spec's encoder and decoder stacks on a GPU, or
// with --step of its whole training step (TrainStep: embedding → stacks → criterion → optimizer).
#pragma once

#include <cstdint>
#include <string>

#include "compiler/spec/model_spec.h"

namespace lightseq::lsc {

struct BenchOptions {
  std::string spec;
  int64_t batch = 32;
  int64_t seq = 128;
  int64_t src_seq = 0;  // encoder positions a decoder attends to; 0: the same as seq
  int iters = 20;
  int warmup = 5;
  int device = 0;
  bool step = false;       // --step: time TrainStep::run on a synthetic batch
  int64_t tokens = 4096;   // --step: tokens per batch (batch = tokens / seq)
  bool no_graphs = false;  // eager calls only (layers: no replayed timing; --step: the eager step)
  std::string attention;  // --attention: every stack's backend ("unfused", "fused"); "": the spec's
};

// The spec a bench runs: the file's, with --attention applied to every stack (the runtime
// validates it when it loads).
ModelSpec bench_spec(const BenchOptions& options);

int run_bench(const BenchOptions& options);
// `lsc bench --step` (bench_step.cpp).
int run_step_bench(const BenchOptions& options);

}  // namespace lightseq::lsc
