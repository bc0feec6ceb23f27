// The whole-model step on several GPUs (StepOptions::comm, runtime/comm.h): a group of N ranks,
// each on its share of a batch's sequences, computes the gradient the step computes alone on the
// whole batch (its mean over every target), and every rank ends each step with the same
// parameters, bit for bit. The parent test starts the ranks as processes of this binary
// (frontends/lsc/group.h's run_group, one GPU each); GpuGroupRank.Body is a rank's part and skips
// when not started so.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "frontends/lsc/group.h"
#include "frontends/spec/parse.h"
#include "runtime/allocator.h"
#include "runtime/comm.h"
#include "runtime/model.h"
#include "runtime/step.h"
#include "tests/gpu_test_util.h"
#include "tests/reference/compare.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

// fp32 and no dropout: the group's gradient and the whole batch's differ by summation order only.
constexpr std::string_view kSpec = R"({
  "name": "step-group", "precision": "fp32",
  "embedding": {"vocab": 96, "hidden": 64, "max_positions": 64, "padding_idx": 1,
                "scale": "sqrt_hidden", "dropout": 0.0, "tie_output": true},
  "layers": [
    {"type": "encoder", "count": 2, "hidden": 64, "heads": 4, "ffn": 256, "norm": "pre",
     "dropout": {"attention": 0.0, "activation": 0.0, "hidden": 0.0}},
    {"type": "decoder", "count": 2, "hidden": 64, "heads": 4, "ffn": 256, "norm": "pre",
     "dropout": {"attention": 0.0, "activation": 0.0, "hidden": 0.0}}
  ],
  "criterion": {"type": "cross_entropy", "label_smoothing": 0.1, "ignore_index": 1},
  "optimizer": {"type": "adamw", "lr": 1e-3, "weight_decay": 0.01}
})";

TEST(GpuGroup, GradientsEqualOneGpusOnTheWholeBatch) {
  LIGHTSEQ_SKIP_WITHOUT_GPU();
  if (device_count() < 2) {
    GTEST_SKIP() << "needs 2 GPUs, this machine has " << device_count()
                 << " (scripts/gpu-step OUT group, on a multi-GPU kind)";
  }
  if (const std::string why = Communicator::unavailable_reason(); !why.empty())
    GTEST_SKIP() << "NCCL unavailable: " << why;
  const int n = std::min(device_count(), 4);
  // One seed for every rank (their batch); both lane settings.
  test::ScopedEnv seed("LIGHTSEQ_TEST_SEED", std::to_string(test::test_seed()));
  for (const char* lane : {"0", "1"}) {
    SCOPED_TRACE(testing::Message() << "LIGHTSEQ_GRAD_LANE=" << lane << ", " << n << " ranks");
    test::ScopedEnv env("LIGHTSEQ_GRAD_LANE", lane);
    EXPECT_EQ(lsc::run_group(n, "/proc/self/exe",
                             {"--gtest_filter=GpuGroupRank.Body", "--gtest_brief=1"}),
              0)
        << "a rank failed: its output is above";
  }
}

TEST(GpuGroupRank, Body) {
  const auto group = lsc::group_env([](const char* v) -> const char* { return std::getenv(v); });
  if (!group)
    GTEST_SKIP() << "a rank of GpuGroup.GradientsEqualOneGpusOnTheWholeBatch, started by it";
  const int rank = group->rank, world = group->world, device = group->local_rank;
  SCOPED_TRACE(testing::Message() << "rank " << rank << " of " << world);
  ScopedContext ctx(device);
  CUstream stream = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  StreamOrderedAllocator alloc(device);
  auto comm = std::make_shared<const Communicator>(
      lsc::exchange_id(*group, &Communicator::new_id, std::chrono::minutes(5)), rank, world,
      device);

  const ModelSpec spec = parse_spec_string(kSpec);
  RuntimeOptions o;
  o.device = device;
  if (const char* dir = std::getenv("LIGHTSEQ_TEST_CACHE_DIR")) o.cache_dir = dir;
  const auto model = CompiledModel::load(spec, o);
  StepOptions so;
  so.seed = 5;
  so.comm = comm;
  TrainStep grouped(model, so);
  std::unique_ptr<TrainStep> alone;  // rank 0: the whole batch on one GPU
  if (rank == 0) alone = std::make_unique<TrainStep>(model, StepOptions{.seed = 5});

  // The whole batch (every rank draws the same): 2 sequences per rank, ids in [2, 96), each
  // sequence padded by its own amount so that the shares count different targets.
  const int64_t per = 2, batch = per * world, src_len = 20, len = 16;
  std::mt19937 rng(static_cast<unsigned>(test::test_seed()));
  std::vector<int64_t> host(batch * (src_len + 2 * len));
  for (int64_t& t : host) t = 2 + static_cast<int64_t>(rng() % 94);
  auto pad = [&](int64_t* rows, int64_t n) {
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = n - (b * 3) % (n / 2); t < n; ++t) rows[b * n + t] = 1;
  };
  int64_t* src = host.data();
  int64_t* tgt = src + batch * src_len;
  int64_t* y = tgt + batch * len;
  pad(src, src_len), pad(tgt, len), pad(y, len);
  DeviceBuffer d(alloc, host.size() * sizeof(int64_t), stream);
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(d.device_ptr(), host.data(),
                                               host.size() * sizeof(int64_t), stream));
  const int64_t* whole = d.as<int64_t>();
  StepBatch all{whole, whole + batch * src_len, whole + batch * (src_len + len), batch, src_len,
                len};
  StepBatch mine = all;
  mine.src_tokens += rank * per * src_len;
  mine.tokens += rank * per * len;
  mine.targets += rank * per * len;
  mine.batch = per;

  grouped.init_parameters(3);
  grouped.set_lr(1e-3f, stream);
  if (alone) {
    alone->init_parameters(3);
    alone->set_lr(1e-3f, stream);
  }
  const size_t n = static_cast<size_t>(grouped.arena().total);
  auto floats_at = [&](const void* p) {
    std::vector<float> v(n);
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(v.data(), reinterpret_cast<CUdeviceptr>(p),
                                                 n * sizeof(float), stream));
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    return std::vector<double>(v.begin(), v.end());
  };
  DeviceBuffer rank0(alloc, n * sizeof(float), stream);
  for (int step = 0; step < 3; ++step) {  // eager, captured, replayed
    SCOPED_TRACE(testing::Message() << "step " << step);
    grouped.run(mine, stream);
    const StepStats st = grouped.stats(stream);
    double sums[] = {st.loss, static_cast<double>(st.tokens)};
    comm->all_reduce_host(sums, 2);
    if (alone) {
      alone->run(all, stream);
      const StepStats want = alone->stats(stream);
      EXPECT_EQ(sums[1], static_cast<double>(want.tokens)) << "the group's targets";
      EXPECT_NEAR(sums[0], want.loss, 1e-5 * std::abs(want.loss)) << "the group's loss";
      // From equal parameters (step 0) the gradients agree to summation order; after an update
      // the parameters differ by Adam's rounding of nearly equal gradients, so only step 0's.
      if (step == 0) {
        EXPECT_TRUE(ref::all_close("the group's gradient", floats_at(grouped.grads()),
                                   floats_at(alone->grads()), ref::fp32_tolerance()));
      }
    }
    // Every rank holds rank 0's parameters bit for bit: rank 0's arena summed with zeros.
    const std::vector<double> own = floats_at(grouped.params());
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(rank0.device_ptr(), 0, n * sizeof(float), stream));
    if (rank == 0) {
      LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoDAsync(
          rank0.device_ptr(), reinterpret_cast<CUdeviceptr>(grouped.params()), n * 4, stream));
    }
    comm->all_reduce_sum(rank0.get(), rank0.get(), n, CommType::kF32, stream);
    const std::vector<double> first = floats_at(rank0.get());
    EXPECT_EQ(own, first) << "rank " << rank << "'s parameters differ from rank 0's";
  }
  EXPECT_EQ(grouped.graphs_captured(), 1);
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  LIGHTSEQ_CU_CHECK(driver().cuStreamDestroy(stream));
}

}  // namespace
}  // namespace lightseq
