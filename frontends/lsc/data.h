// data.h — `lsc train`'s examples: the token conventions a spec implies, the tokenized text format
// (docs/train.md), and the synthetic copy / reverse tasks. Host-only (no GPU, no TrainStep).
//
// An example is what one row of a StepBatch holds before padding: the encoder's source (in a model
// with decoder stacks), the input of the stack the criterion reads, and one target per input
// position (the criterion's ignore_index where a position is not scored).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/errors.h"
#include "compiler/spec/model_spec.h"

namespace lightseq::lsc {

// A data file or option that cannot be used: what() names the file (and line) and what is wrong,
// "train.txt:3: 'x7' is not a token id: a line holds whole numbers separated by spaces".
class DataError : public Error {
 public:
  using Error::Error;
};

// How the examples of a spec are laid out (docs/train.md, "Which spec takes what").
enum class ModelShape {
  kEncoderDecoder,  // decoder stacks: source ||| target; decoder input = BOS + target[:-1]
  kLanguageModel,   // encoder-only with a causal first stack: the next token is the target
  kTagger,          // encoder-only, not causal: one target per input position
};

struct TokenRules {
  ModelShape shape = ModelShape::kEncoderDecoder;
  int64_t vocab = 0;
  int64_t padding_idx = -1;  // the embedding's (-1: none)
  int64_t pad = 0;           // what token streams are padded with: padding_idx, or 0 without one
  int64_t ignore_index = -100;
  int64_t bos = 0;  // the smallest id >= 0 that is neither padding_idx nor ignore_index
  int64_t max_positions = 0;
};

// The rules of a spec. Throws Error when lsc train cannot train it, saying what to add or change:
// no embedding, criterion or optimizer section, or a model that attends to its padding (no
// padding_idx and not a causal encoder-only model).
TokenRules token_rules(const ModelSpec& spec);

struct Example {
  std::vector<int32_t> src;      // encoder input (empty unless kEncoderDecoder)
  std::vector<int32_t> tokens;   // the criterion's stack's input
  std::vector<int32_t> targets;  // tokens.size() of them
  bool operator==(const Example&) const = default;
};

struct Dataset {
  std::vector<Example> examples;
  int64_t skipped = 0;  // examples with a stream longer than max_len, left out
  int64_t longest = 0;  // the longest stream of the file, skipped examples included
  // FNV-1a over the kept examples' ids: a resumed run checks it has the same data
  uint64_t fingerprint = 0;
};

// Parses the text of a data file (docs/train.md): one example per line, token ids separated by
// spaces or tabs, `|||` between source and target; blank lines and lines starting with '#' are
// skipped. Examples with a stream longer than max_len are counted in `skipped`, not kept.
// Throws DataError "<name>:<line>: <what is wrong>" at the first bad line, or "<name>: no
// examples: ..." when nothing is left.
Dataset parse_examples(std::string_view text, std::string_view name, const TokenRules& rules,
                       int64_t max_len);

// Reads `path` and parses it. An unreadable file is a DataError naming it and the reason.
Dataset read_examples(const std::filesystem::path& path, const TokenRules& rules, int64_t max_len);

// --- synthetic tasks ---------------------------------------------------------------------------

enum class SyntheticTask { kCopy, kReverse };
std::string_view to_string(SyntheticTask t);  // "copy", "reverse"

// Token ids the synthetic tasks draw from: the kSyntheticTokens smallest ids above rules.bos that
// are neither padding_idx nor ignore_index and lie in the vocabulary (fewer for a small vocab).
// Throws DataError when the vocabulary leaves fewer than 2.
inline constexpr int64_t kSyntheticTokens = 100;
// lsc train's synthetic sets: a fresh training set per epoch, one validation set, and the default
// --max-len.
inline constexpr int64_t kSyntheticTrainExamples = 10000;
inline constexpr int64_t kSyntheticValidExamples = 1000;
inline constexpr int64_t kSyntheticMaxLen = 32;
std::vector<int32_t> synthetic_alphabet(const TokenRules& rules);

// `count` examples of `task`, each a sequence x of length n uniform in [1, n_max] drawn uniformly
// from the alphabet, y = x (copy) or x reversed, deterministic in `seed`:
//   kEncoderDecoder: src = x, tokens = BOS + y[:-1], targets = y            (n_max = max_len)
//   kLanguageModel:  tokens = BOS + x + y[:-1], targets = ignore × n + y    (n_max = max_len / 2)
//   kTagger:         tokens = x, targets = y                                (n_max = max_len)
std::vector<Example> synthetic_examples(SyntheticTask task, const TokenRules& rules, int64_t count,
                                        int64_t max_len, uint64_t seed);

// --- deterministic random numbers (the same on every platform, unlike <random>'s
// distributions) ------------------------------------------------------------------------------

// SplitMix64 (Steele, Lea, Flood 2014).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n >= 1 (rejection sampling: no modulo bias).
  uint64_t below(uint64_t n);

 private:
  uint64_t state_;
};

// A seed for one named stream of a run ("train", "valid", "order"), mixed with a number (the
// epoch): independent streams from one --seed.
uint64_t stream_seed(uint64_t seed, std::string_view stream, uint64_t number = 0);

}  // namespace lightseq::lsc
