// batcher.h — `lsc train`'s batches: examples bucketed by length (rounded up to a multiple of 8),
// as many rows per batch as the token budget allows, padded (padding_idx in the token streams,
// ignore_index in the targets) into the StepBatch layout; and the training stream, epoch after
// epoch, which can be positioned anywhere for a resumed run. Host-only.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "frontends/lsc/data.h"

namespace lightseq::lsc {

// Lengths are rounded up to a multiple of this: few shapes, so few CUDA graphs.
inline constexpr int64_t kLengthMultiple = 8;
constexpr int64_t round_up_length(int64_t n) {
  return (n + kLengthMultiple - 1) / kLengthMultiple * kLengthMultiple;
}

// A batch's shape, as TrainStep sees it (src_len is 0 without decoder stacks).
struct BatchShape {
  int64_t batch = 0, src_len = 0, len = 0;
  auto operator<=>(const BatchShape&) const = default;
  // A row's size in the token budget: the longer of its two streams (fairseq's max_tokens).
  int64_t row_tokens() const { return std::max(src_len, len); }
  // Elements of the packed batch: src [batch, src_len], tokens and targets [batch, len].
  int64_t elements() const { return batch * (src_len + 2 * len); }
};

// The bucket of an example: its rounded lengths, batch 1.
BatchShape bucket_of(const Example& e);

enum class Order {
  // Training: examples shuffled (by the seed) before bucketing, batches shuffled after; the last
  // batch of a bucket is filled up with the bucket's first examples (of this order), so that
  // every batch of a bucket has one shape — one CUDA graph per bucket, however many epochs.
  kShuffled,
  // Validation: examples in order within a bucket, buckets shortest first, every example once
  // (the last batch of a bucket may be smaller).
  kInOrder,
};

// Groups examples into batches: examples of one bucket go together, as many as fit the budget
// (batch × row_tokens() <= tokens_per_batch; a bucket with fewer examples is one batch). Returns
// each batch's example indices in the order they run. Throws DataError when an example alone
// exceeds the budget.
std::vector<std::vector<uint32_t>> make_batches(const std::vector<Example>& examples,
                                                int64_t tokens_per_batch, Order order,
                                                uint64_t seed);

// The shape of a batch of these rows (their bucket, batch = rows.size()).
BatchShape batch_shape(const std::vector<Example>& examples, std::span<const uint32_t> rows);

// Writes the batch into `out` (shape.elements() int64s, StepBatch's layout: src, then tokens, then
// targets, each row-major [batch, length]), padded with rules.pad / rules.ignore_index. Returns
// the targets that count (not ignore_index).
int64_t pack_batch(const std::vector<Example>& examples, std::span<const uint32_t> rows,
                   const TokenRules& rules, std::span<int64_t> out);

// Where a training run is in its data: batch `batch` of epoch `epoch` runs next.
struct DataPosition {
  int64_t epoch = 0, batch = 0;
  bool operator==(const DataPosition&) const = default;
};

// The training batches, epoch after epoch. Each epoch's examples come from `examples_of(epoch)`
// (the same set for a data file; a fresh one per epoch for a synthetic task) and its batches are
// make_batches(..., kShuffled, stream_seed(seed, "order", epoch)): the sequence depends only on
// the examples, the budget and the seed, so seek() to a saved position continues it exactly.
class TrainBatches {
 public:
  using ExamplesOf = std::function<std::shared_ptr<const std::vector<Example>>(int64_t epoch)>;
  TrainBatches(ExamplesOf examples_of, int64_t tokens_per_batch, uint64_t seed);

  DataPosition position() const { return pos_; }
  void seek(DataPosition pos);
  // The batches of the current epoch (for the progress line).
  int64_t batches_in_epoch() const { return static_cast<int64_t>(batches_.size()); }

  struct Batch {
    const std::vector<Example>* examples;
    std::span<const uint32_t> rows;
  };
  // The batch at position(), then moves past it (into the next epoch after its last batch).
  Batch next();

 private:
  void load_epoch(int64_t epoch);

  ExamplesOf examples_of_;
  int64_t tokens_per_batch_;
  uint64_t seed_;
  DataPosition pos_;
  int64_t loaded_epoch_ = -1;
  std::shared_ptr<const std::vector<Example>> examples_;
  std::vector<std::vector<uint32_t>> batches_;
};

}  // namespace lightseq::lsc
