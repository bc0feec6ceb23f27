// The whole-model step with the parameter-gradient lane and early updates (runtime/grad_lane.h,
// runtime/step_enqueue.cpp) against the same step on one stream: after an eager step, a captured
// one and replayed ones, every parameter, gradient, Adam moment and master weight, and the loss,
// are the same bit for bit (bf16, dropout on, a padded encoder-decoder batch). A race between the
// streams, a missing join or an update run before its gradient is complete shows as a difference.
#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

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

class GpuStepLanes : public test::GpuTest {};

// A model and its step built with LIGHTSEQ_GRAD_LANE=`lane` (both read it then).
struct Built {
  std::shared_ptr<const CompiledModel> model;
  std::unique_ptr<TrainStep> step;
};
Built build_with_lanes(const ModelSpec& spec, const char* lane) {
  test::ScopedEnv env("LIGHTSEQ_GRAD_LANE", lane);
  RuntimeOptions o;
  if (const char* dir = std::getenv("LIGHTSEQ_TEST_CACHE_DIR")) o.cache_dir = dir;
  StepOptions so;
  so.seed = 5;
  Built b{CompiledModel::load(spec, o), nullptr};
  b.step = std::make_unique<TrainStep>(b.model, so);
  return b;
}

TEST_F(GpuStepLanes, TwoStreamsEqualOneBitForBit) {
  const ModelSpec spec = parse_spec_string(kSpec);
  const Built built_one = build_with_lanes(spec, "0"), built_two = build_with_lanes(spec, "1");
  TrainStep &one = *built_one.step, &two = *built_two.step;
  one.init_parameters(3);
  two.init_parameters(3);
  one.set_lr(1e-3f, stream_);
  two.set_lr(1e-3f, stream_);

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
        driver().cuMemcpyDtoHAsync(v.data(), reinterpret_cast<CUdeviceptr>(p), bytes, stream_));
    sync();
    return v;
  };
  for (int i = 0; i < 5; ++i) {  // eager, captured, then replayed
    SCOPED_TRACE(testing::Message() << "step " << i);
    one.run(b, stream_);
    two.run(b, stream_);
    const StepStats a = one.stats(stream_), c = two.stats(stream_);
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
  const StepStats last = two.stats(stream_);
  EXPECT_EQ(last.updates, 5) << "every step updated the parameters";
}

}  // namespace
}  // namespace lightseq
