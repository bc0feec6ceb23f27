// train_state.h — what `lsc train --save DIR` keeps beside the TrainStep's checkpoint so that
// `--resume DIR` continues the same run bit for bit: the update count, the position in the data,
// what decided the batches (seed, token budget, length limit, data), the learning-rate schedule
// and the loss curve so far. Host-only.
//
// DIR holds `train-state.json` and the checkpoint it names, `checkpoint-<step>.lsc` (written by
// TrainStep::save, atomically). A save writes the new checkpoint first, then the state (atomically:
// temp file, fsync, rename), then removes the previous checkpoint: a kill at any point leaves a
// state that names a complete checkpoint of its own step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "frontends/lsc/batcher.h"

namespace lightseq::lsc {

inline constexpr std::string_view kStateFile = "train-state.json";
inline constexpr std::string_view kStateFormat = "lsc train state 1";

// One point of the loss curve (a log step), per counted target token, in nats.
struct CurvePoint {
  int64_t step = 0;
  double loss = 0, nll = 0;
  double lr = 0;
  double ms_per_step = 0;  // training wall time per step over the log interval that ends here
  std::optional<double> valid_loss, valid_nll;  // when a validation ran at this step
  bool operator==(const CurvePoint&) const = default;
};

struct TrainState {
  std::string spec;  // the spec's name
  int64_t step = 0;  // updates done
  DataPosition data;
  std::string checkpoint;  // the TrainStep file in the same directory
  // What decides the sequence of batches: a resumed run must have the same.
  uint64_t seed = 0;
  int64_t tokens_per_batch = 0;
  int64_t max_len = 0;
  std::string data_source;  // "--synthetic copy", "--data /abs/train.txt"
  uint64_t data_fingerprint = 0;
  // The schedule (a resumed run may change it: a note says the curve will differ).
  double lr = 0;
  int64_t warmup = 0;
  std::vector<CurvePoint> curve;
  bool operator==(const TrainState&) const = default;
};

std::string state_to_json(const TrainState& state);
// Throws DataError "<name>: <what is wrong>" for a file that is not a state of this format.
TrainState state_from_json(std::string_view text, std::string_view name);

// DIR/train-state.json, read or written atomically (write_file_atomically).
TrainState read_state(const std::filesystem::path& dir);
void write_state(const std::filesystem::path& dir, const TrainState& state);

// "checkpoint-00000500.lsc"
std::string checkpoint_name(int64_t step);

// The first difference between a saved run and this one that would change its batches, as a
// DataError message naming the option and both values with the fix; nullopt when they agree.
std::optional<std::string> resume_mismatch(const TrainState& saved, const TrainState& now,
                                           const std::filesystem::path& dir);

}  // namespace lightseq::lsc
