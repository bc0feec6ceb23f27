// `lsc train` and `lsc bench --step` end to end: help, usage errors (exit 2), what is checked
// before the GPU (spec, data, --max-len, a resumed run's state: exit 1 with the message), the
// clear no-GPU error; and, on a GPU, a tiny model learning the copy task, a resumed run
// continuing the same loss curve bit for bit, and the whole-step benchmark.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "frontends/lsc/train_state.h"
#include "runtime/device.h"
#include "tests/gpu_test_util.h"
#include "tests/lsc_test_util.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

namespace fs = std::filesystem;
using namespace lsc_test;  // NOLINT: test helpers
using test::TempDir;

// An encoder-decoder small enough to learn the copy task in a few hundred steps.
constexpr std::string_view kTinySpec = R"({
  "name": "tiny-copy", "precision": "fp32",
  "embedding": {"vocab": 128, "hidden": 64, "max_positions": 64, "padding_idx": 1,
                "scale": "sqrt_hidden"},
  "layers": [
    {"type": "encoder", "count": 2, "hidden": 64, "heads": 4, "ffn": 256, "norm": "pre"},
    {"type": "decoder", "count": 2, "hidden": 64, "heads": 4, "ffn": 256, "norm": "pre"}
  ],
  "criterion": {"type": "cross_entropy", "ignore_index": 1},
  "optimizer": {"type": "adamw", "lr": 1e-3}
})";

std::string write(const fs::path& path, std::string_view text) {
  std::ofstream(path) << text;
  return path.string();
}

TEST(LscTrain, HelpListsEveryOption) {
  const Result r = run("train --help");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const char* option :
       {"--data FILE", "--valid FILE", "--synthetic TASK", "--steps", "--tokens-per-batch", "--lr",
        "--warmup", "--save DIR", "--save-every", "--resume DIR", "--valid-every", "--seed",
        "--max-len", "--log-every", "--no-graphs", "--device"}) {
    EXPECT_NE(r.output.find(option), std::string::npos) << option << "\n" << r.output;
  }
  const Result bench = run("bench --help");
  ASSERT_EQ(bench.status, 0) << bench.output;
  EXPECT_NE(bench.output.find("--step"), std::string::npos) << bench.output;
  EXPECT_NE(bench.output.find("--tokens"), std::string::npos) << bench.output;
}

TEST(LscTrain, UsageErrors) {
  const std::string spec = example("transformer-base");
  expect_usage_error("train " + spec,
                     "lsc train: give the examples: --data FILE (docs/train.md) or --synthetic "
                     "copy|reverse");
  expect_usage_error("train " + spec + " --data x.txt --synthetic copy",
                     "lsc train: --data and --synthetic exclude each other: give one");
  expect_usage_error("train " + spec + " --synthetic copy --valid v.txt",
                     "lsc train: --valid goes with --data; --synthetic makes its own validation "
                     "set");
  expect_usage_error("train " + spec + " --synthetic frob",
                     "--synthetic: 'frob' is not one of copy, reverse");
  expect_usage_error("train " + spec + " --synthetic copy --lr 0",
                     "--lr: 0 is not greater than 0: give one such as 5e-4");
  expect_usage_error("train " + spec + " --synthetic copy --lr fast",
                     "--lr: 'fast' is not a number: give one greater than 0, e.g. 5e-4");
  expect_usage_error("train " + spec + " --synthetic copy --steps 0",
                     "--steps: 0 is too small: must be at least 1");
  expect_usage_error("train " + spec + " --synthetic copy --tokens-per-batch 4",
                     "--tokens-per-batch: 4 is too small: must be at least 8");
  expect_usage_error("train " + spec + " --data ''",
                     "--data: an empty value is not allowed: give a file of examples "
                     "(docs/train.md)");
  expect_usage_error("bench " + spec + " --step --tokens 0",
                     "--tokens: 0 is too small: must be at least 1");
}

// Everything the CPU can check is checked before the GPU: these fail the same with and without.
TEST(LscTrain, SpecAndDataErrorsComeFirst) {
  TempDir dir;
  const std::string no_optimizer = write(dir.path() / "s.json", R"({"name": "s",
    "precision": "fp32", "embedding": {"vocab": 100, "hidden": 64, "padding_idx": 1},
    "layers": [{"type": "encoder", "count": 1, "hidden": 64, "heads": 4, "ffn": 128}],
    "criterion": {"type": "cross_entropy"}})");
  Result r = run("train " + no_optimizer + " --synthetic copy");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output,
            "lsc: error: s cannot be trained: it has no optimizer section; lsc train runs the "
            "whole model (embedding, stacks, criterion, optimizer): add \"optimizer\": "
            "{\"type\": \"adamw\", \"lr\": 5e-4} (docs/spec.md; examples/transformer-base.json "
            "has them all)\n");

  const std::string spec = example("transformer-base");
  const std::string data = write(dir.path() / "d.txt", "5 6 ||| 7\n8 9\n");
  r = run("train " + spec + " --data " + data);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "lsc: error: " + data +
                          ":2: no '|||': this spec has decoder stacks, so a line is 'source ids "
                          "||| target ids'\n");
  r = run("train " + spec + " --data " + (dir.path() / "none.txt").string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("none.txt: cannot open: No such file or directory"), std::string::npos)
      << r.output;

  r = run("train " + spec + " --synthetic copy --max-len 2000");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output,
            "lsc: error: --max-len 2000 is longer than transformer-base takes: lengths are rounded "
            "up to a multiple of 8 and embedding.max_positions is 1024; give at most 1024\n");
  r = run("train " + spec + " --synthetic copy --max-len 100 --tokens-per-batch 64");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output,
            "lsc: error: --tokens-per-batch 64 is too small for --max-len 100 (a sequence takes "
            "104 once rounded up to a multiple of 8): raise --tokens-per-batch to at least 104 "
            "or lower --max-len\n");
}

TEST(LscTrain, AResumeThatWouldChangeTheBatchesIsRefused) {
  TempDir dir;
  lsc::TrainState s;
  s.spec = "transformer-base";
  s.step = 30;
  s.checkpoint = lsc::checkpoint_name(30);
  s.seed = 1;
  s.tokens_per_batch = 4096;
  s.max_len = 32;
  s.data_source = "--synthetic copy";
  lsc::write_state(dir.path(), s);
  const std::string base = "train " + example("transformer-base") + " --resume " +
                           dir.path().string() + " --synthetic copy";
  Result r = run(base + " --seed 2");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("it was trained with --seed 1, this run has 2"), std::string::npos)
      << r.output;
  r = run(base);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("names the checkpoint " +
                          (dir.path() / "checkpoint-00000030.lsc").string() + ", which is missing"),
            std::string::npos)
      << r.output;
  std::ofstream(dir.path() / s.checkpoint) << "x";
  // a new run does not overwrite a saved one
  r = run("train " + example("transformer-base") + " --synthetic copy --save " +
          dir.path().string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("lsc: error: --save " + dir.path().string() +
                          ": it holds a saved run (train-state.json): continue it with --resume " +
                          dir.path().string() + ", or save into another directory"),
            std::string::npos)
      << r.output;
  r = run(base + " --steps 30");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("has trained 30 steps already, --steps is 30: nothing to do"),
            std::string::npos)
      << r.output;
}

TEST(LscTrain, WithoutAGpuSaysSo) {
  if (device_count() > 0) GTEST_SKIP() << "a GPU is present: this checks the message without one";
  for (const std::string& args : {"train " + example("transformer-base") + " --synthetic copy",
                                  "bench " + example("transformer-base") + " --step"}) {
    SCOPED_TRACE(args);
    const Result r = run(args);
    EXPECT_EQ(r.status, 1) << r.output;
    const std::string what = args.starts_with("train") ? "train" : "bench";
    EXPECT_NE(r.output.find("lsc: error: lsc " + what + " needs an NVIDIA GPU: " + no_gpu_reason()),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("compiles the kernels without a GPU"), std::string::npos) << r.output;
  }
}

// "step    40/60 ... | loss 1.2345 | nll ..." -> the step (without the run's total) and the loss
// and nll columns of every progress line
std::vector<std::string> losses(const std::string& output) {
  std::vector<std::string> out;
  size_t at = 0;
  while ((at = output.find("\nstep ", at)) != std::string::npos) {
    const size_t end = output.find('\n', at + 1);
    const std::string line = output.substr(at + 1, end - at - 1);
    const size_t from = line.find("| loss "), to = line.find("| lr ");
    out.push_back(line.substr(0, line.find('/')) + line.substr(from, to - from));
    at = end;
  }
  return out;
}

TEST(LscTrainGpu, TinyModelLearnsToCopy) {
  LIGHTSEQ_SKIP_WITHOUT_GPU();
  TempDir dir;
  const std::string spec = write(dir.path() / "tiny.json", kTinySpec);
  const Result r = run("train " + spec +
                       " --synthetic copy --steps 600 --tokens-per-batch 2048 --max-len 16 "
                       "--log-every 50 --valid-every 300 --warmup 40");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("valid step 600 |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("loss curve (per target token, nats):"), std::string::npos) << r.output;
  const size_t v = r.output.rfind("valid step 600 | loss ");
  ASSERT_NE(v, std::string::npos);
  const double valid_loss = std::stod(r.output.substr(v + 22));
  // chance is ln(100) = 4.6; nn.Transformer of this shape, trained the same way on the CPU, is
  // at 0.08 after 400 steps and 0.04-0.07 after 600
  EXPECT_LT(valid_loss, 1.0) << "the copy task should be learnt\n" << r.output;
}

// The same in bf16 (fp32 master weights): transformer-base in bf16 stayed at the unigram loss on
// this task (H200, 2026-12-06) while the fp32 tiny model learnt it; this separates a bf16 defect
// from a schedule too short for a post-LN 6+6 model.
TEST(LscTrainGpu, TinyBf16ModelLearnsToCopy) {
  LIGHTSEQ_SKIP_WITHOUT_GPU();
  TempDir dir;
  std::string text(kTinySpec);
  text.replace(text.find("\"fp32\""), 6, "\"bf16\"");
  const std::string spec = write(dir.path() / "tiny-bf16.json", text);
  const Result r = run("train " + spec +
                       " --synthetic copy --steps 600 --tokens-per-batch 2048 --max-len 16 "
                       "--log-every 50 --valid-every 300 --warmup 40");
  ASSERT_EQ(r.status, 0) << r.output;
  const size_t v = r.output.rfind("valid step 600 | loss ");
  ASSERT_NE(v, std::string::npos) << r.output;
  EXPECT_LT(std::stod(r.output.substr(v + 22)), 1.0) << "the copy task should be learnt\n"
                                                     << r.output;
}

TEST(LscTrainGpu, AResumedRunContinuesTheSameLossCurve) {
  LIGHTSEQ_SKIP_WITHOUT_GPU();
  TempDir dir;
  const std::string spec = write(dir.path() / "tiny.json", kTinySpec);
  const std::string common = "train " + spec +
                             " --synthetic reverse --tokens-per-batch 512 --max-len 16 "
                             "--log-every 10 --warmup 20 --seed 3 --valid-every 0 ";
  const fs::path whole = dir.path() / "whole", half = dir.path() / "half";
  const Result a = run(common + "--steps 60 --save " + whole.string());
  ASSERT_EQ(a.status, 0) << a.output;
  const Result b = run(common + "--steps 30 --save " + half.string());
  ASSERT_EQ(b.status, 0) << b.output;
  const Result c = run(common + "--steps 60 --resume " + half.string());
  ASSERT_EQ(c.status, 0) << c.output;
  const std::vector<std::string> la = losses(a.output), lb = losses(b.output),
                                 lc = losses(c.output);
  ASSERT_EQ(la.size(), 6u) << a.output;
  ASSERT_EQ(lb.size(), 3u) << b.output;
  ASSERT_EQ(lc.size(), 3u) << c.output;
  EXPECT_EQ(std::vector<std::string>(la.begin(), la.begin() + 3), lb);
  EXPECT_EQ(std::vector<std::string>(la.begin() + 3, la.end()), lc);
  // bit for bit: the saved curves hold the full doubles
  const lsc::TrainState sa = lsc::read_state(whole), sc = lsc::read_state(half);
  ASSERT_EQ(sa.curve.size(), sc.curve.size());
  for (size_t i = 0; i < sa.curve.size(); ++i) {
    EXPECT_EQ(sa.curve[i].step, sc.curve[i].step);
    EXPECT_EQ(sa.curve[i].loss, sc.curve[i].loss) << "step " << sa.curve[i].step;
    EXPECT_EQ(sa.curve[i].nll, sc.curve[i].nll) << "step " << sa.curve[i].step;
  }
  EXPECT_EQ(sa.data, sc.data);
  EXPECT_TRUE(fs::exists(half / lsc::checkpoint_name(60)));
  EXPECT_FALSE(fs::exists(half / lsc::checkpoint_name(30)));  // the old one is removed
}

TEST(LscTrainGpu, BenchTimesTheWholeStep) {
  LIGHTSEQ_SKIP_WITHOUT_GPU();
  TempDir dir;
  const std::string spec = write(dir.path() / "tiny.json", kTinySpec);
  const Result g = run("bench " + spec + " --step --tokens 512 --seq 32 --iters 5 --warmup 1");
  ASSERT_EQ(g.status, 0) << g.output;
  EXPECT_NE(g.output.find("batch 16 × len 32, source len 32 (512 tokens"), std::string::npos)
      << g.output;
  EXPECT_NE(g.output.find("host issue "), std::string::npos) << g.output;
  EXPECT_NE(g.output.find("graphs: 1 captured"), std::string::npos) << g.output;
  const Result e = run("bench " + spec + " --step --tokens 512 --seq 32 --iters 5 --no-graphs");
  ASSERT_EQ(e.status, 0) << e.output;
  EXPECT_NE(e.output.find("eager (--no-graphs)"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("graphs: 0 captured"), std::string::npos) << e.output;
}

}  // namespace
}  // namespace lightseq
