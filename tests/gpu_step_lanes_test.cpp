// The whole-model step with the parameter-gradient lane and early updates (runtime/grad_lane.h,
// runtime/step_enqueue.cpp) against the same step on one stream: after an eager step, a captured
// one and replayed ones, every parameter, gradient, Adam moment and master weight, and the loss,
// are the same bit for bit (bf16, dropout on, a padded encoder-decoder batch); and the step in a
// process group of one against the step alone. A race between the
// streams, a missing join or an update run before its gradient is complete shows as a difference.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "compiler/spec/validate.h"
#include "frontends/spec/parse.h"
#include "runtime/allocator.h"
#include "runtime/model.h"
#include "runtime/step.h"
#include "tests/gpu_test_util.h"
#include "tests/reference/compare.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

constexpr std::string_view kSpec = R"({
  "name": "step-lanes", "precision": "bf16",
  "embedding": {"vocab": 96, "hidden": 64, "max_positions": 64, "padding_idx": 1,
                "scale": "sqrt_hidden", "dropout": 0.1, "tie_output": true},
  "layers": [
    {"type": "encoder", "count": 2, "hidden": 64, "heads": 4, "ffn": 256, "norm": "post",
     "dropout": {"attention": 0.1, "activation": 0.1, "hidden": 0.1}},
    {"type": "decoder", "count": 2, "hidden": 64, "heads": 4, "ffn": 256, "norm": "post",
     "dropout": {"attention": 0.1, "activation": 0.1, "hidden": 0.1}}
  ],
  "criterion": {"type": "cross_entropy", "label_smoothing": 0.1, "ignore_index": 1},
  "optimizer": {"type": "adamw", "lr": 1e-3, "weight_decay": 0.01}
})";

// A model and its step built with LIGHTSEQ_GRAD_LANE=`lane` (both read it then), in the process
// group `comm` when given.
struct Built {
  std::shared_ptr<const CompiledModel> model;
  std::unique_ptr<TrainStep> step;
};
Built build_with_lanes(const ModelSpec& spec, const char* lane,
                       std::shared_ptr<const Communicator> comm = nullptr) {
  test::ScopedEnv env("LIGHTSEQ_GRAD_LANE", lane);
  RuntimeOptions o;
  if (const char* dir = std::getenv("LIGHTSEQ_TEST_CACHE_DIR")) o.cache_dir = dir;
  StepOptions so;
  so.seed = 5;
  so.comm = std::move(comm);
  Built b{CompiledModel::load(spec, o), nullptr};
  b.step = std::make_unique<TrainStep>(b.model, so);
  return b;
}

// `one` and `two`, initialized alike, run the same padded encoder-decoder batches for 5 steps
// (eager, captured, replayed): after each, the loss, the counted targets and every parameter,
// gradient, Adam moment and master weight are the same bit for bit.
class GpuStepLanes : public test::GpuTest {
 protected:
  void expect_steps_equal(TrainStep& one, TrainStep& two, const ModelSpec& spec);
};

void GpuStepLanes::expect_steps_equal(TrainStep& one, TrainStep& two, const ModelSpec& spec) {
  const CUstream stream = stream_;
  one.init_parameters(3);
  two.init_parameters(3);
  one.set_lr(1e-3f, stream);
  two.set_lr(1e-3f, stream);

  // source, target tokens and targets: ids in [2, 96), the odd sequences' last quarter padded
  const int64_t batch = 6, src_len = 20, len = 16;
  std::mt19937 rng(static_cast<unsigned>(seed_));
  std::vector<int64_t> host(batch * (src_len + 2 * len));
  for (int64_t& t : host) t = 2 + static_cast<int64_t>(rng() % 94);
  auto pad = [&](int64_t* rows, int64_t n) {
    for (int64_t b = 1; b < batch; b += 2)
      for (int64_t t = n - n / 4; t < n; ++t) rows[b * n + t] = 1;
  };
  pad(host.data(), src_len);
  pad(host.data() + batch * src_len, len);
  pad(host.data() + batch * (src_len + len), len);
  DeviceBuffer tokens = upload_bytes(host.data(), host.size() * sizeof(int64_t));
  StepBatch b;
  b.src_tokens = tokens.as<int64_t>();
  b.tokens = b.src_tokens + batch * src_len;
  b.targets = b.tokens + batch * len;
  b.batch = batch, b.src_len = src_len, b.len = len;

  const ParamArena& arena = one.arena();
  const size_t eb = element_bytes(spec.precision), n = static_cast<size_t>(arena.total);
  auto bytes_at = [&](void* p, size_t bytes) {
    std::vector<uint8_t> v(bytes);
    LIGHTSEQ_CU_CHECK(
        driver().cuMemcpyDtoHAsync(v.data(), reinterpret_cast<CUdeviceptr>(p), bytes, stream));
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    return v;
  };
  for (int i = 0; i < 5; ++i) {  // eager, captured, then replayed
    SCOPED_TRACE(testing::Message() << "step " << i);
    one.run(b, stream);
    two.run(b, stream);
    const StepStats a = one.stats(stream), c = two.stats(stream);
    EXPECT_EQ(a.loss, c.loss);
    EXPECT_EQ(a.tokens, c.tokens);
    EXPECT_TRUE(ref::bytes_equal("parameters", bytes_at(one.params(), n * eb),
                                 bytes_at(two.params(), n * eb)));
    EXPECT_TRUE(ref::bytes_equal("gradients", bytes_at(one.grads(), n * eb),
                                 bytes_at(two.grads(), n * eb)));
    EXPECT_TRUE(ref::bytes_equal("exp_avg", bytes_at(one.exp_avg(), n * 4),
                                 bytes_at(two.exp_avg(), n * 4)));
    EXPECT_TRUE(ref::bytes_equal("exp_avg_sq", bytes_at(one.exp_avg_sq(), n * 4),
                                 bytes_at(two.exp_avg_sq(), n * 4)));
    EXPECT_TRUE(ref::bytes_equal("master weights", bytes_at(one.masters(), n * 4),
                                 bytes_at(two.masters(), n * 4)));
  }
  EXPECT_EQ(two.graphs_captured(), 1);
  EXPECT_EQ(two.graph_replays(), 4) << "launched after its capture and at the three steps after";
  const StepStats last = two.stats(stream);
  EXPECT_EQ(last.updates, 5) << "every step updated the parameters";
}

TEST_F(GpuStepLanes, TwoStreamsEqualOneBitForBit) {
  const ModelSpec spec = parse_spec_string(kSpec);
  const Built one = build_with_lanes(spec, "0"), two = build_with_lanes(spec, "1");
  EXPECT_TRUE(two.step->early_updates());
  expect_steps_equal(*one.step, *two.step, spec);
}

// A process group of one (NCCL, runtime/comm.h) runs every group path of the step — the targets
// counted before the forward and summed, each span's gradient summed on the lane as the
// backward completes it (then updated early), the rest summed at the end — and a sum over one
// process is the identity: the step equals the step without a group bit for bit, with the lane
// and early updates and without. (Several GPUs: scripts/gpu-step's `group` stage.)
TEST_F(GpuStepLanes, GroupOfOneEqualsNoGroupBitForBit) {
  if (const std::string why = Communicator::unavailable_reason(); !why.empty())
    GTEST_SKIP() << "NCCL unavailable: " << why;
  const ModelSpec spec = parse_spec_string(kSpec);
  auto comm = std::make_shared<const Communicator>(Communicator::new_id(), 0, 1, 0);
  for (const char* lane : {"0", "1"}) {
    SCOPED_TRACE(testing::Message() << "LIGHTSEQ_GRAD_LANE=" << lane);
    const Built alone = build_with_lanes(spec, lane), grouped = build_with_lanes(spec, lane, comm);
    expect_steps_equal(*alone.step, *grouped.step, spec);
  }
}

}  // namespace
}  // namespace lightseq
