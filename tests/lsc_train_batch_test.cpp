// lsc train's host side beyond the data format: the batcher (token budget, buckets, padding),
// the training stream and its positions, the learning-rate schedule, the saved state (round trip,
// what a resumed run must share) and the progress formatting.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "frontends/lsc/batcher.h"
#include "frontends/lsc/progress.h"
#include "frontends/lsc/schedule.h"
#include "frontends/lsc/train_state.h"
#include "tests/test_util.h"

namespace lightseq::lsc {
namespace {

using test::TempDir;

TokenRules ed_rules() {
  TokenRules r;
  r.shape = ModelShape::kEncoderDecoder;
  r.vocab = 1000, r.padding_idx = 1, r.pad = 1, r.ignore_index = -100, r.bos = 0;
  r.max_positions = 1024;
  return r;
}

std::vector<Example> random_examples(int64_t n, uint64_t seed) {
  TokenRules r = ed_rules();
  return synthetic_examples(SyntheticTask::kCopy, r, n, 40, seed);
}

TEST(TrainBatch, RoundUpLength) {
  EXPECT_EQ(round_up_length(0), 0);
  EXPECT_EQ(round_up_length(1), 8);
  EXPECT_EQ(round_up_length(8), 8);
  EXPECT_EQ(round_up_length(9), 16);
}

TEST(TrainBatch, BudgetIsRespectedAndBucketsAreUniform) {
  const std::vector<Example> ex = random_examples(3000, 5);
  for (const Order order : {Order::kShuffled, Order::kInOrder}) {
    for (const int64_t budget : {64, 500, 4096}) {
      SCOPED_TRACE(testing::Message() << budget << (order == Order::kShuffled ? " shuffled" : ""));
      const auto batches = make_batches(ex, budget, order, 11);
      std::vector<int> seen(ex.size(), 0);
      std::map<std::pair<int64_t, int64_t>, std::set<int64_t>> rows;  // batch sizes per bucket
      std::map<std::pair<int64_t, int64_t>, int64_t> examples;        // examples per bucket
      for (const Example& e : ex) ++examples[{bucket_of(e).src_len, bucket_of(e).len}];
      for (const auto& batch : batches) {
        ASSERT_FALSE(batch.empty());
        const BatchShape s = batch_shape(ex, batch);
        EXPECT_LE(s.batch * s.row_tokens(), budget);
        EXPECT_EQ(s.len % kLengthMultiple, 0);
        EXPECT_EQ(s.src_len % kLengthMultiple, 0);
        const std::set<uint32_t> distinct(batch.begin(), batch.end());
        EXPECT_EQ(distinct.size(), batch.size());  // no example twice in one batch
        for (uint32_t r : batch) {
          ++seen[r];
          EXPECT_EQ(bucket_of(ex[r]).len, s.len);  // one bucket per batch
          EXPECT_EQ(bucket_of(ex[r]).src_len, s.src_len);
        }
        rows[{s.src_len, s.len}].insert(s.batch);
      }
      int64_t repeats = 0;
      for (int n : seen) {
        ASSERT_GE(n, 1);  // every example
        ASSERT_LE(n, order == Order::kShuffled ? 2 : 1);
        repeats += n - 1;
      }
      for (const auto& [bucket, sizes] : rows) {
        const int64_t cap =
            std::min(budget / std::max(bucket.first, bucket.second), examples[bucket]);
        if (order == Order::kShuffled) {
          EXPECT_EQ(sizes, std::set<int64_t>{cap});  // one shape per bucket
        } else {
          EXPECT_LE(sizes.size(), 2u);  // full batches, and the last one
          EXPECT_EQ(*sizes.rbegin(), cap);
        }
      }
      if (order == Order::kInOrder) {
        EXPECT_EQ(repeats, 0);
      }
    }
  }
}

TEST(TrainBatch, OrderIsDeterministicBySeedAndInOrderKeepsTheFile) {
  const std::vector<Example> ex = random_examples(1000, 3);
  EXPECT_EQ(make_batches(ex, 512, Order::kShuffled, 1), make_batches(ex, 512, Order::kShuffled, 1));
  EXPECT_NE(make_batches(ex, 512, Order::kShuffled, 1), make_batches(ex, 512, Order::kShuffled, 2));
  const auto in_order = make_batches(ex, 512, Order::kInOrder, 1);
  EXPECT_EQ(in_order, make_batches(ex, 512, Order::kInOrder, 2));  // the seed plays no part
  int64_t last = 0;
  for (const auto& rows : in_order) {
    const BatchShape s = batch_shape(ex, rows);
    EXPECT_GE(s.row_tokens(), last);  // shortest first
    last = s.row_tokens();
    for (size_t i = 1; i < rows.size(); ++i) EXPECT_LT(rows[i - 1], rows[i]);  // file order
  }
}

TEST(TrainBatch, AnExampleOverTheBudgetIsAClearError) {
  std::vector<Example> ex(1);
  ex[0].src.assign(20, 5);
  ex[0].tokens.assign(3, 5);
  ex[0].targets.assign(3, 5);
  try {
    make_batches(ex, 16, Order::kShuffled, 1);
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(),
                 "--tokens-per-batch 16 is too small: an example of 20 tokens takes 24 (lengths "
                 "are rounded up to a multiple of 8); raise --tokens-per-batch to at least 24 or "
                 "lower --max-len");
  }
}

TEST(TrainBatch, PackingPadsWithPaddingIdxAndIgnoreIndex) {
  const TokenRules r = ed_rules();
  std::vector<Example> ex(2);
  ex[0] = {{5, 6, 7}, {0, 8}, {8, 9}};
  ex[1] = {{10, 11, 12, 13, 14, 15, 16, 17, 18}, {0, 19, 20}, {19, 20, -100}};
  const std::vector<uint32_t> rows = {1, 0};
  const BatchShape s = batch_shape(ex, rows);
  EXPECT_EQ(s, (BatchShape{2, 16, 8}));
  std::vector<int64_t> out(s.elements(), 777);
  EXPECT_EQ(pack_batch(ex, rows, r, out), 4);  // 2 + 2 counted targets
  std::vector<int64_t> want;
  // src [2, 16]
  for (int64_t t : {10, 11, 12, 13, 14, 15, 16, 17, 18, 1, 1, 1, 1, 1, 1, 1}) want.push_back(t);
  for (int64_t t : {5, 6, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}) want.push_back(t);
  // tokens [2, 8]
  for (int64_t t : {0, 19, 20, 1, 1, 1, 1, 1}) want.push_back(t);
  for (int64_t t : {0, 8, 1, 1, 1, 1, 1, 1}) want.push_back(t);
  // targets [2, 8]
  for (int64_t t : {19, 20, -100, -100, -100, -100, -100, -100}) want.push_back(t);
  for (int64_t t : {8, 9, -100, -100, -100, -100, -100, -100}) want.push_back(t);
  EXPECT_EQ(out, want);

  // an encoder-only batch has no source part
  TokenRules lm = r;
  lm.shape = ModelShape::kLanguageModel;
  std::vector<Example> one(1);
  one[0] = {{}, {3, 4}, {4, 5}};
  const std::vector<uint32_t> row0 = {0};
  EXPECT_EQ(batch_shape(one, row0), (BatchShape{1, 0, 8}));
  std::vector<int64_t> small(16);
  EXPECT_EQ(pack_batch(one, row0, lm, small), 2);
  EXPECT_EQ(small, (std::vector<int64_t>{3, 4, 1, 1, 1, 1, 1, 1, 4, 5, -100, -100, -100, -100, -100,
                                         -100}));
}

TrainBatches::ExamplesOf synthetic_epochs() {
  return [](int64_t epoch) {
    return std::make_shared<const std::vector<Example>>(
        random_examples(300, stream_seed(9, "train", epoch)));
  };
}

// The batches from a position on, as (epoch, batch, packed ids) for comparison.
std::vector<std::vector<int64_t>> take(TrainBatches& t, int n) {
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < n; ++i) {
    const TrainBatches::Batch b = t.next();
    std::vector<int64_t> ids(batch_shape(*b.examples, b.rows).elements());
    pack_batch(*b.examples, b.rows, ed_rules(), ids);
    out.push_back(std::move(ids));
  }
  return out;
}

TEST(TrainBatch, TheStreamGoesThroughEpochsAndResumesAnywhere) {
  TrainBatches a(synthetic_epochs(), 256, 4);
  a.seek({0, 0});
  const int64_t per_epoch = a.batches_in_epoch();
  ASSERT_GT(per_epoch, 3);
  const auto all = take(a, static_cast<int>(per_epoch + 5));
  EXPECT_EQ(a.position(), (DataPosition{1, 5}));
  // a second stream positioned mid-way continues identically
  for (const DataPosition at : {DataPosition{0, 2}, DataPosition{1, 0}, DataPosition{1, 3}}) {
    TrainBatches b(synthetic_epochs(), 256, 4);
    b.seek(at);
    const size_t from = static_cast<size_t>(at.epoch * per_epoch + at.batch);
    const auto rest = take(b, static_cast<int>(all.size() - from));
    EXPECT_EQ(rest, std::vector<std::vector<int64_t>>(all.begin() + from, all.end()));
  }
  TrainBatches c(synthetic_epochs(), 256, 4);
  try {
    c.seek({0, per_epoch});
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              "the saved data position (epoch 0, batch " + std::to_string(per_epoch) +
                  ") is outside that epoch's " + std::to_string(per_epoch) +
                  " batches: the data or --tokens-per-batch differ from the run that saved it");
  }
}

TEST(TrainSchedule, InverseSqrtWithLinearWarmup) {
  const InverseSqrtSchedule s{5e-4, 4000};
  EXPECT_DOUBLE_EQ(s.at(1), 5e-4 / 4000);
  EXPECT_DOUBLE_EQ(s.at(2000), 2.5e-4);
  EXPECT_DOUBLE_EQ(s.at(4000), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(16000), 2.5e-4);  // sqrt(4000 / 16000) = 1/2
  EXPECT_DOUBLE_EQ(s.at(4001), 5e-4 * std::sqrt(4000.0 / 4001.0));
  for (int64_t i = 1; i < 4000; ++i) ASSERT_LT(s.at(i), s.at(i + 1));
  for (int64_t i = 4000; i < 9000; ++i) ASSERT_GT(s.at(i), s.at(i + 1));
  const InverseSqrtSchedule none{1e-3, 0};  // no warm-up: the peak first, then the decay
  EXPECT_DOUBLE_EQ(none.at(1), 1e-3);
  EXPECT_DOUBLE_EQ(none.at(4), 5e-4);
  EXPECT_EQ(default_warmup(1), 1);
  EXPECT_EQ(default_warmup(300), 30);
  EXPECT_EQ(default_warmup(100000), 4000);
}

TrainState a_state() {
  TrainState s;
  s.spec = "transformer-base";
  s.step = 500;
  s.data = {3, 17};
  s.checkpoint = checkpoint_name(500);
  s.seed = 1;
  s.tokens_per_batch = 4096;
  s.max_len = 32;
  s.data_source = "--synthetic copy";
  s.data_fingerprint = 0xfedcba9876543210ull;
  s.lr = 5e-4;
  s.warmup = 100;
  CurvePoint p;
  p.step = 100, p.loss = 4.123456789012345, p.nll = 3.9, p.lr = 1e-4, p.ms_per_step = 12.5;
  s.curve.push_back(p);
  p.step = 200, p.valid_loss = 2.5, p.valid_nll = 2.25;
  s.curve.push_back(p);
  return s;
}

TEST(TrainState, RoundTripsThroughItsFile) {
  TempDir dir;
  const TrainState s = a_state();
  EXPECT_EQ(s.checkpoint, "checkpoint-00000500.lsc");
  write_state(dir.path(), s);
  EXPECT_EQ(read_state(dir.path()), s);
  EXPECT_EQ(state_from_json(state_to_json(s), "x"), s);
}

TEST(TrainState, BadFilesAreNamed) {
  TempDir dir;
  try {
    read_state(dir.path());
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()),
              "--resume " + dir.path().string() + ": " + (dir.path() / kStateFile).string() +
                  ": cannot open: No such file or directory (a directory written by lsc train "
                  "--save holds it)");
  }
  try {
    state_from_json(R"({"format": "other"})", "s.json");
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_STREQ(e.what(),
                 "s.json: not an lsc train state (\"format\" is not \"lsc train state 1\")");
  }
  try {
    state_from_json(R"({"format": "lsc train state 1", "spec": "x"})", "s.json");
    FAIL() << "no error";
  } catch (const DataError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("s.json: not a valid lsc train state: ", 0), 0u)
        << e.what();
  }
}

TEST(TrainState, AResumedRunMustHaveTheSameBatches) {
  const TrainState saved = a_state();
  TrainState now = saved;
  EXPECT_EQ(resume_mismatch(saved, now, "d"), std::nullopt);
  now.lr = 1e-3;  // the schedule may change
  EXPECT_EQ(resume_mismatch(saved, now, "d"), std::nullopt);
  now = saved, now.seed = 2;
  EXPECT_EQ(resume_mismatch(saved, now, "d"),
            "--resume d: it was trained with --seed 1, this run has 2: resume with the same --seed "
            "(the batches depend on it), or start a new run without --resume");
  now = saved, now.tokens_per_batch = 2048;
  EXPECT_EQ(resume_mismatch(saved, now, "d"),
            "--resume d: it was trained with --tokens-per-batch 4096, this run has 2048: resume "
            "with the same --tokens-per-batch (the batches depend on it), or start a new run "
            "without --resume");
  now = saved, now.max_len = 64;
  EXPECT_NE(resume_mismatch(saved, now, "d")->find("--max-len 32, this run has 64"),
            std::string::npos);
  now = saved, now.data_source = "--synthetic reverse";
  EXPECT_EQ(resume_mismatch(saved, now, "d"),
            "--resume d: it was trained on --synthetic copy, this run reads --synthetic reverse: "
            "resume with the same data (the batches depend on it), or start a new run without "
            "--resume");
  now = saved, now.data_fingerprint = 1;
  EXPECT_EQ(resume_mismatch(saved, now, "d"),
            "--resume d: the examples of --synthetic copy differ from those it was trained on "
            "(fingerprint fedcba9876543210, now 0000000000000001): resume with the same data "
            "file, or start a new run without --resume");
  now = saved, now.spec = "bert-base";
  EXPECT_EQ(resume_mismatch(saved, now, "d"),
            "--resume d: it holds a run of spec 'transformer-base', not 'bert-base': give the "
            "spec it was trained with");
}

TEST(TrainProgress, Formatting) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(7.2), "0:08");
  EXPECT_EQ(format_duration(754), "12:34");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_count(950), "950");
  EXPECT_EQ(format_count(45600), "45.6k");
  EXPECT_EQ(format_count(1.234e6), "1.23M");
  EXPECT_EQ(progress_bar(1, 4, 8), "[##------]");
  ProgressLine p;
  p.step = 100, p.steps = 1000, p.loss = 4.567, p.nll = 4.321, p.lr = 2.5e-4;
  p.tokens_per_second = 45600, p.ms_per_step = 12.345, p.eta_seconds = 11.1, p.loss_scale = 1;
  EXPECT_EQ(format_progress(p),
            "step  100/1000 [##------------------]  10% | loss 4.5670 | nll 4.3210 | lr 2.50e-04 "
            "| 45.6k tok/s | 12.35 ms/step | ETA 0:12 | loss scale 1");
  p.loss_scale = 65536, p.skipped_updates = 3;
  EXPECT_NE(format_progress(p).find("| loss scale 65536 | 3 skipped"), std::string::npos);
  EXPECT_EQ(format_validation(500, 1.2345, 1.1, 12345, 10),
            "valid step 500 | loss 1.2345 | nll 1.1000 | ppl 3.00 | 12345 targets in 10 batches");
  const TrainState s = a_state();
  EXPECT_EQ(format_curve(s.curve),
            "    step      loss       nll valid loss   ms/step         lr\n"
            "     100    4.1235    3.9000          -     12.50   1.00e-04\n"
            "     200    4.1235    3.9000     2.5000     12.50   1.00e-04\n");
  std::vector<CurvePoint> many(45);
  for (size_t i = 0; i < many.size(); ++i) many[i].step = static_cast<int64_t>(i + 1) * 10;
  const std::string table = format_curve(many);
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 1 + 15);  // every 3rd (the last is one)
  EXPECT_NE(table.find("     450 "), std::string::npos);
}

}  // namespace
}  // namespace lightseq::lsc
