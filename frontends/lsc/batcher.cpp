#include "frontends/lsc/batcher.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <tuple>

namespace lightseq::lsc {

namespace {

template <class T>
void shuffle(std::vector<T>& v, Rng& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

}  // namespace

BatchShape bucket_of(const Example& e) {
  return {1, round_up_length(static_cast<int64_t>(e.src.size())),
          round_up_length(static_cast<int64_t>(e.tokens.size()))};
}

std::vector<std::vector<uint32_t>> make_batches(const std::vector<Example>& examples,
                                                int64_t tokens_per_batch, Order order,
                                                uint64_t seed) {
  std::vector<uint32_t> idx(examples.size());
  std::iota(idx.begin(), idx.end(), 0u);
  Rng rng(seed);
  if (order == Order::kShuffled) shuffle(idx, rng);
  std::vector<BatchShape> buckets(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    buckets[i] = bucket_of(examples[i]);
    if (buckets[i].row_tokens() > tokens_per_batch) {
      const Example& e = examples[i];
      throw DataError(fmt::format(
          "--tokens-per-batch {} is too small: an example of {} tokens takes {} (lengths are "
          "rounded up to a multiple of {}); raise --tokens-per-batch to at least {} or lower "
          "--max-len",
          tokens_per_batch, std::max(e.src.size(), e.tokens.size()), buckets[i].row_tokens(),
          kLengthMultiple, buckets[i].row_tokens()));
    }
  }
  // shortest buckets first (by the budget's measure, then the decoder's length); ties keep the
  // shuffled (or file) order
  std::stable_sort(idx.begin(), idx.end(), [&](uint32_t a, uint32_t b) {
    const BatchShape &x = buckets[a], &y = buckets[b];
    return std::tuple(x.row_tokens(), x.len, x.src_len) <
           std::tuple(y.row_tokens(), y.len, y.src_len);
  });
  std::vector<std::vector<uint32_t>> batches;
  for (size_t begin = 0; begin < idx.size();) {
    const BatchShape& b = buckets[idx[begin]];
    size_t end = begin;
    while (end < idx.size() && buckets[idx[end]] == b) ++end;
    const auto cap = std::min(static_cast<size_t>(tokens_per_batch / b.row_tokens()), end - begin);
    for (size_t i = begin; i < end; i += cap) {
      std::vector<uint32_t> batch(idx.begin() + i, idx.begin() + std::min(i + cap, end));
      for (size_t k = 0; order == Order::kShuffled && batch.size() < cap; ++k) {
        batch.push_back(idx[begin + k]);  // the bucket's first examples again: a full batch
      }
      batches.push_back(std::move(batch));
    }
    begin = end;
  }
  if (order == Order::kShuffled) shuffle(batches, rng);
  return batches;
}

BatchShape batch_shape(const std::vector<Example>& examples, std::span<const uint32_t> rows) {
  BatchShape s{static_cast<int64_t>(rows.size()), 0, 0};
  for (uint32_t r : rows) {
    const BatchShape b = bucket_of(examples[r]);
    s.src_len = std::max(s.src_len, b.src_len);
    s.len = std::max(s.len, b.len);
  }
  return s;
}

int64_t pack_batch(const std::vector<Example>& examples, std::span<const uint32_t> rows,
                   const TokenRules& rules, std::span<int64_t> out) {
  const BatchShape s = batch_shape(examples, rows);
  if (static_cast<int64_t>(out.size()) < s.elements()) {
    throw Error(fmt::format("pack_batch: {} elements for a batch of {}", out.size(), s.elements()));
  }
  int64_t* src = out.data();
  int64_t* tokens = src + s.batch * s.src_len;
  int64_t* targets = tokens + s.batch * s.len;
  int64_t counted = 0;
  for (int64_t b = 0; b < s.batch; ++b) {
    const Example& e = examples[rows[b]];
    int64_t* row = src + b * s.src_len;
    std::fill(std::copy(e.src.begin(), e.src.end(), row), row + s.src_len, rules.pad);
    row = tokens + b * s.len;
    std::fill(std::copy(e.tokens.begin(), e.tokens.end(), row), row + s.len, rules.pad);
    row = targets + b * s.len;
    std::fill(std::copy(e.targets.begin(), e.targets.end(), row), row + s.len, rules.ignore_index);
    counted += std::count_if(e.targets.begin(), e.targets.end(),
                             [&](int32_t t) { return t != rules.ignore_index; });
  }
  return counted;
}

TrainBatches::TrainBatches(ExamplesOf examples_of, int64_t tokens_per_batch, uint64_t seed)
    : examples_of_(std::move(examples_of)), tokens_per_batch_(tokens_per_batch), seed_(seed) {}

void TrainBatches::load_epoch(int64_t epoch) {
  if (epoch == loaded_epoch_) return;
  examples_ = examples_of_(epoch);
  batches_ = make_batches(*examples_, tokens_per_batch_, Order::kShuffled,
                          stream_seed(seed_, "order", static_cast<uint64_t>(epoch)));
  loaded_epoch_ = epoch;
}

void TrainBatches::seek(DataPosition pos) {
  load_epoch(pos.epoch);
  if (pos.batch < 0 || pos.batch >= batches_in_epoch()) {
    throw DataError(fmt::format(
        "the saved data position (epoch {}, batch {}) is outside that epoch's {} batches: the "
        "data or --tokens-per-batch differ from the run that saved it",
        pos.epoch, pos.batch, batches_in_epoch()));
  }
  pos_ = pos;
}

TrainBatches::Batch TrainBatches::next() {
  load_epoch(pos_.epoch);
  const std::vector<uint32_t>& rows = batches_[pos_.batch];
  if (++pos_.batch == batches_in_epoch()) pos_ = {pos_.epoch + 1, 0};
  return {examples_.get(), rows};
}

}  // namespace lightseq::lsc
