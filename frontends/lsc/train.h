// train.h — `lsc train`: trains a spec's whole model (TrainStep, runtime/step.h) on a tokenized
// data file or a synthetic task, with length-bucketed batches, the inverse_sqrt learning-rate
// schedule, progress lines, periodic validation and resumable checkpoints (docs/train.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lightseq::lsc {

struct TrainOptions {
  std::string spec;
  std::string data;       // --data FILE
  std::string valid;      // --valid FILE (with --data)
  std::string synthetic;  // --synthetic copy|reverse
  int64_t steps = 1000;
  int64_t tokens_per_batch = 4096;
  double lr = 0;        // 0: the spec's optimizer.lr
  int64_t warmup = -1;  // -1: default_warmup(steps)
  std::string save;     // --save DIR ("" : --resume's DIR, or no checkpoints)
  std::string resume;   // --resume DIR
  int64_t save_every = 1000;
  int64_t valid_every = 500;  // 0: only at the end
  int64_t seed = 1;
  int64_t max_len = 0;  // 0: 32 for --synthetic, the embedding's max_positions for --data
  int64_t log_every = 100;
  bool no_graphs = false;
  int device = 0;
  // --gpus N: N processes, one per GPU, each on its own batches, their gradients summed
  // (frontends/lsc/group.h); 0: one, or what torchrun's environment says.
  int gpus = 0;
  std::vector<std::string> args;  // the command line after the program's name (to start ranks)
};

// A usage error of a combination of options (exit 2), or "" when there is none.
std::string train_usage_error(const TrainOptions& options);

// Throws Error (SpecError, DataError, CudaError...) with what is wrong and how to fix it.
int run_train(const TrainOptions& options);

}  // namespace lightseq::lsc
