// lsc train's examples (frontends/lsc/data.h): the token rules a spec implies, the data file
// format (a good file of each model shape; every error message, exactly), and the synthetic
// copy / reverse tasks (correct, deterministic by seed).
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "frontends/lsc/data.h"
#include "tests/test_util.h"

namespace lightseq::lsc {
namespace {

using test::TempDir;

// An encoder-decoder (transformer-base's conventions: padding_idx = ignore_index = 1), a causal
// language model without a padding token, and a BERT-like tagger (padding_idx 0).
ModelSpec spec_of(ModelShape shape, int64_t vocab = 50) {
  ModelSpec s;
  s.name = "tiny";
  EmbeddingSpec e;
  e.vocab = vocab;
  e.hidden = 16;
  e.max_positions = 64;
  CriterionSpec c;
  LayerStackSpec enc;
  enc.hidden = 16, enc.heads = 2, enc.ffn = 32;
  s.layers.push_back(enc);
  switch (shape) {
    case ModelShape::kEncoderDecoder: {
      e.padding_idx = 1, c.ignore_index = 1;
      LayerStackSpec dec = enc;
      dec.kind = LayerKind::kDecoder, dec.causal = true;
      s.layers.push_back(dec);
      break;
    }
    case ModelShape::kLanguageModel:
      s.layers[0].causal = true;
      e.padding_idx = -1, c.ignore_index = -100;
      break;
    case ModelShape::kTagger:
      e.padding_idx = 0, c.ignore_index = -100;
      break;
  }
  s.embedding = e;
  s.criterion = c;
  s.optimizer = OptimizerSpec{};
  return s;
}

TokenRules rules_of(ModelShape shape, int64_t vocab = 50) {
  return token_rules(spec_of(shape, vocab));
}

std::vector<int32_t> v(std::initializer_list<int32_t> x) { return x; }

TEST(TrainData, TokenRulesFollowTheSpec) {
  const TokenRules ed = rules_of(ModelShape::kEncoderDecoder);
  EXPECT_EQ(ed.shape, ModelShape::kEncoderDecoder);
  EXPECT_EQ(ed.pad, 1);
  EXPECT_EQ(ed.ignore_index, 1);
  EXPECT_EQ(ed.bos, 0);
  const TokenRules lm = rules_of(ModelShape::kLanguageModel);
  EXPECT_EQ(lm.shape, ModelShape::kLanguageModel);
  EXPECT_EQ(lm.padding_idx, -1);
  EXPECT_EQ(lm.pad, 0);  // without a padding token, causal rows are padded with id 0
  EXPECT_EQ(lm.bos, 0);
  const TokenRules tag = rules_of(ModelShape::kTagger);
  EXPECT_EQ(tag.shape, ModelShape::kTagger);
  EXPECT_EQ(tag.pad, 0);
  EXPECT_EQ(tag.bos, 1);  // 0 is the padding_idx
}

TEST(TrainData, SpecsThatCannotTrainSayWhatToAdd) {
  ModelSpec s = spec_of(ModelShape::kEncoderDecoder);
  s.criterion.reset();
  s.optimizer.reset();
  try {
    token_rules(s);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "tiny cannot be trained: it has no criterion, no optimizer section; lsc train "
                 "runs the whole model (embedding, stacks, criterion, optimizer): add "
                 "\"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": "
                 "\"adamw\", \"lr\": 5e-4} (docs/spec.md; examples/transformer-base.json has them "
                 "all)");
  }
  ModelSpec tagger = spec_of(ModelShape::kTagger);
  tagger.embedding->padding_idx = -1;
  try {
    token_rules(tagger);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "tiny: embedding.padding_idx = -1: lsc train pads its batches, and without a "
                 "padding token this model would attend to the padding (only a causal "
                 "encoder-only model never looks past its last token); set "
                 "embedding.padding_idx, e.g. to 0");
  }
}

TEST(TrainData, GoodFileOfEachShape) {
  const std::string ed_text =
      "# source ||| target\n"
      "\n"
      "5 6 7 ||| 8 9\n"
      "  10\t11 |||  12  \r\n"
      "13 ||| 14 15 16";  // no final newline
  const Dataset ed = parse_examples(ed_text, "ed.txt", rules_of(ModelShape::kEncoderDecoder), 0);
  ASSERT_EQ(ed.examples.size(), 3u);
  EXPECT_EQ(ed.examples[0], (Example{v({5, 6, 7}), v({0, 8}), v({8, 9})}));  // BOS + target[:-1]
  EXPECT_EQ(ed.examples[1], (Example{v({10, 11}), v({0}), v({12})}));
  EXPECT_EQ(ed.examples[2], (Example{v({13}), v({0, 14, 15}), v({14, 15, 16})}));
  EXPECT_EQ(ed.skipped, 0);
  EXPECT_EQ(ed.longest, 3);

  const Dataset lm =
      parse_examples("3 4 5 6\n7 8 ||| 9 10\n", "lm.txt", rules_of(ModelShape::kLanguageModel), 0);
  ASSERT_EQ(lm.examples.size(), 2u);
  EXPECT_EQ(lm.examples[0], (Example{{}, v({3, 4, 5}), v({4, 5, 6})}));
  // prompt ||| answer: only the answer is scored
  EXPECT_EQ(lm.examples[1], (Example{{}, v({7, 8, 9}), v({-100, 9, 10})}));

  const Dataset tag =
      parse_examples("3 4 5\n6 7 ||| 8 -100\n", "tag.txt", rules_of(ModelShape::kTagger), 0);
  ASSERT_EQ(tag.examples.size(), 2u);
  EXPECT_EQ(tag.examples[0], (Example{{}, v({3, 4, 5}), v({3, 4, 5})}));
  EXPECT_EQ(tag.examples[1], (Example{{}, v({6, 7}), v({8, -100})}));
}

TEST(TrainData, LongExamplesAreSkippedAndCounted) {
  const TokenRules r = rules_of(ModelShape::kEncoderDecoder);
  const Dataset d = parse_examples("5 6 7 8 ||| 9\n5 ||| 6\n5 ||| 6 7 8 9 10\n", "f", r, 3);
  ASSERT_EQ(d.examples.size(), 1u);
  EXPECT_EQ(d.skipped, 2);
  EXPECT_EQ(d.longest, 5);
  try {
    parse_examples("5 6 7 8 ||| 9\n", "f.txt", r, 3);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(),
                 "f.txt: all 1 examples are longer than --max-len 3 (the longest has 4 tokens); "
                 "raise --max-len");
  }
}

TEST(TrainData, FingerprintFollowsTheExamplesNotTheLayout) {
  const TokenRules r = rules_of(ModelShape::kEncoderDecoder);
  const uint64_t a = parse_examples("5 6 ||| 7\n", "a", r, 0).fingerprint;
  EXPECT_EQ(a, parse_examples("# c\n5  6\t|||   7\n\n", "b", r, 0).fingerprint);
  EXPECT_NE(a, parse_examples("5 6 ||| 8\n", "c", r, 0).fingerprint);
  EXPECT_NE(a, parse_examples("5 ||| 6 7\n", "d", r, 0).fingerprint);
}

void expect_error(const std::string& text, const TokenRules& r, const std::string& message) {
  SCOPED_TRACE(text);
  try {
    parse_examples(text, "data.txt", r, 0);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(TrainData, EveryErrorNamesFileLineAndWhat) {
  const TokenRules ed = rules_of(ModelShape::kEncoderDecoder);
  expect_error("5 ||| 6\n5 6 7\n", ed,
               "data.txt:2: no '|||': this spec has decoder stacks, so a line is 'source ids ||| "
               "target ids'");
  expect_error("5 ||| 6 ||| 7\n", ed,
               "data.txt:1: more than one '|||': a line is 'source ids ||| target ids'");
  expect_error("||| 6\n", ed, "data.txt:1: the source (before '|||') is empty");
  expect_error("# x\n5 |||\n", ed, "data.txt:2: the target (after '|||') is empty");
  expect_error("5 x7 ||| 6\n", ed,
               "data.txt:1: 'x7' is not a token id: a line holds whole numbers separated by "
               "spaces");
  expect_error("5|||6\n", ed, "data.txt:1: '5|||6': write '|||' with spaces around it");
  expect_error("5 1.5 ||| 6\n", ed,
               "data.txt:1: '1.5' is not a token id: a line holds whole numbers separated by "
               "spaces");
  expect_error("5 50 ||| 6\n", ed, "data.txt:1: token id 50 is outside the vocabulary [0, 50)");
  expect_error("5 -2 ||| 6\n", ed, "data.txt:1: token id -2 is outside the vocabulary [0, 50)");
  expect_error("5 99999999999999999999 ||| 6\n", ed,
               "data.txt:1: token id 99999999999999999999 is outside the vocabulary [0, 50)");
  expect_error("5 1 ||| 6\n", ed,
               "data.txt:1: token id 1 is the embedding's padding_idx: the batcher pads with it, "
               "so a sequence cannot hold it");

  const TokenRules lm = rules_of(ModelShape::kLanguageModel);
  expect_error("5\n", lm,
               "data.txt:1: a language-model line needs at least 2 ids: the inputs are ids[:-1], "
               "the targets ids[1:]");
  expect_error("5 -100\n", lm, "data.txt:1: token id -100 is outside the vocabulary [0, 50)");
  expect_error("5 ||| 6 ||| 7\n", lm,
               "data.txt:1: more than one '|||': a line is 'ids' or 'prompt ids ||| answer ids'");
  expect_error("||| 6\n", lm, "data.txt:1: the prompt (before '|||') is empty");
  expect_error("5 |||\n", lm, "data.txt:1: the answer (after '|||') is empty");

  const TokenRules tag = rules_of(ModelShape::kTagger);
  expect_error("5 6 ||| 7\n", tag,
               "data.txt:1: 1 targets for 2 input ids: an encoder-only spec that is not causal "
               "takes one target per input id");
  expect_error("5 6 ||| 7 50\n", tag,
               "data.txt:1: target 50 is outside the vocabulary [0, 50) and is not the "
               "criterion's ignore_index -100");
  expect_error("||| 7\n", tag, "data.txt:1: the input (before '|||') is empty");
  expect_error("5 ||| 6 ||| 7\n", tag,
               "data.txt:1: more than one '|||': a line is 'ids' or 'ids ||| targets'");

  // ignore_index as a predicted id, where it is not the padding_idx too
  ModelSpec s = spec_of(ModelShape::kEncoderDecoder);
  s.criterion->ignore_index = 7;
  expect_error("5 ||| 6 7\n", token_rules(s),
               "data.txt:1: token id 7 is the criterion's ignore_index: as a target it would "
               "never be learned");

  expect_error("", ed, "data.txt: no examples: every line is blank or a comment");
  expect_error("# only\n\n   \n", ed, "data.txt: no examples: every line is blank or a comment");
}

TEST(TrainData, ReadingAFileNamesItAndTheReason) {
  TempDir dir;
  const TokenRules r = rules_of(ModelShape::kEncoderDecoder);
  const std::filesystem::path good = dir.path() / "good.txt";
  std::ofstream(good) << "5 6 ||| 7 8\n";
  EXPECT_EQ(read_examples(good, r, 0).examples.size(), 1u);
  const std::filesystem::path bad = dir.path() / "bad.txt";
  std::ofstream(bad) << "5 6 ||| 7 8\n5 6\n";
  try {
    read_examples(bad, r, 0);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              bad.string() +
                  ":2: no '|||': this spec has decoder stacks, so a line is 'source ids ||| "
                  "target ids'");
  }
  try {
    read_examples(dir.path() / "nope.txt", r, 0);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              (dir.path() / "nope.txt").string() + ": cannot open: No such file or directory");
  }
  try {
    read_examples(dir.path(), r, 0);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()), dir.path().string() + ": is a directory, not a regular file");
  }
}

TEST(TrainData, SyntheticAlphabetAvoidsReservedIds) {
  const std::vector<int32_t> a = synthetic_alphabet(rules_of(ModelShape::kEncoderDecoder, 32000));
  ASSERT_EQ(a.size(), static_cast<size_t>(kSyntheticTokens));
  EXPECT_EQ(a.front(), 2);  // 0 is BOS, 1 padding_idx and ignore_index
  EXPECT_EQ(a.back(), 101);
  EXPECT_EQ(synthetic_alphabet(rules_of(ModelShape::kEncoderDecoder, 10)).size(), 8u);
  try {
    synthetic_alphabet(rules_of(ModelShape::kEncoderDecoder, 3));
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(),
                 "--synthetic: the vocabulary [0, 3) leaves 1 token ids besides BOS 0, "
                 "padding_idx and ignore_index: the synthetic tasks need at least 2; use a spec "
                 "with a larger embedding.vocab");
  }
}

class Synthetic : public testing::TestWithParam<std::tuple<SyntheticTask, ModelShape>> {};

TEST_P(Synthetic, ExamplesAreTheTaskAndDeterministicBySeed) {
  const auto [task, shape] = GetParam();
  const TokenRules r = rules_of(shape, 1000);
  const std::vector<int32_t> alphabet = synthetic_alphabet(r);
  const std::set<int32_t> allowed(alphabet.begin(), alphabet.end());
  const int64_t max_len = 12;
  const std::vector<Example> a = synthetic_examples(task, r, 500, max_len, 7);
  ASSERT_EQ(a.size(), 500u);
  std::set<size_t> lengths;
  for (const Example& e : a) {
    ASSERT_EQ(e.tokens.size(), e.targets.size());
    ASSERT_LE(static_cast<int64_t>(e.tokens.size()), max_len);
    ASSERT_LE(static_cast<int64_t>(e.src.size()), max_len);
    std::vector<int32_t> x, y;  // the sequence and what the model must produce
    if (shape == ModelShape::kEncoderDecoder) {
      x = e.src;
      y = e.targets;
      ASSERT_EQ(e.tokens[0], r.bos);
      ASSERT_EQ(std::vector<int32_t>(e.tokens.begin() + 1, e.tokens.end()),
                std::vector<int32_t>(y.begin(), y.end() - 1));  // teacher forcing
    } else if (shape == ModelShape::kLanguageModel) {
      const size_t n = e.tokens.size() / 2;
      ASSERT_EQ(e.tokens[0], r.bos);
      x.assign(e.tokens.begin() + 1, e.tokens.begin() + 1 + n);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(e.targets[i], r.ignore_index);
      y.assign(e.targets.begin() + n, e.targets.end());
      // the next token: the input after the prompt is the answer shifted by one
      ASSERT_EQ(std::vector<int32_t>(e.tokens.begin() + n + 1, e.tokens.end()),
                std::vector<int32_t>(y.begin(), y.end() - 1));
    } else {
      x = e.tokens;
      y = e.targets;
    }
    std::vector<int32_t> want = x;
    if (task == SyntheticTask::kReverse) std::reverse(want.begin(), want.end());
    ASSERT_EQ(y, want);
    ASSERT_FALSE(x.empty());
    for (int32_t t : x) ASSERT_TRUE(allowed.count(t)) << t;
    lengths.insert(x.size());
  }
  EXPECT_EQ(lengths.size(), static_cast<size_t>(shape == ModelShape::kLanguageModel ? 6 : 12));
  EXPECT_EQ(a, synthetic_examples(task, r, 500, max_len, 7));
  EXPECT_NE(a, synthetic_examples(task, r, 500, max_len, 8));
}

INSTANTIATE_TEST_SUITE_P(
    TrainData, Synthetic,
    testing::Combine(testing::Values(SyntheticTask::kCopy, SyntheticTask::kReverse),
                     testing::Values(ModelShape::kEncoderDecoder, ModelShape::kLanguageModel,
                                     ModelShape::kTagger)));

TEST(TrainData, RngIsTheSameEverywhere) {
  // SplitMix64's reference outputs for seed 1234567
  Rng rng(1234567);
  EXPECT_EQ(rng.next(), 6457827717110365317ull);
  EXPECT_EQ(rng.next(), 3203168211198807973ull);
  Rng b(1);
  for (int i = 0; i < 1000; ++i) ASSERT_LT(b.below(7), 7u);
  EXPECT_NE(stream_seed(1, "train", 0), stream_seed(1, "train", 1));
  EXPECT_NE(stream_seed(1, "train", 0), stream_seed(1, "valid", 0));
  EXPECT_EQ(stream_seed(1, "train", 3), stream_seed(1, "train", 3));
}

}  // namespace
}  // namespace lightseq::lsc
