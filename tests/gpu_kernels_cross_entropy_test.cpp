// gpu_kernels_cross_entropy_test.cpp — templates/cross_entropy.cuh on the GPU against the float64
// reference: cross_entropy_kernel for fp32/fp16/bf16 × vocab 7, 8000, 30522, 32000, 50257 (vector
// widths 1, 4/8, 2, 4/8, 1: the row cached in registers at 7 and 8000, staged in shared memory at
// 30522 and 32000 in fp16/bf16, streamed otherwise) × rows 1…513 × label smoothing 0 / 0.1 ×
// ignore_index -100 / 1 × grad_scale; loss, nll, grad_logits (also aliasing logits); ignored rows
// exactly zero; out-of-range targets set the flag and count as ignored.
#include <gtest/gtest.h>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using ref::all_close;
using ref::fp32_tolerance;
using ref::tolerance_for;

const int64_t kVocabs[] = {7, 8000, 30522, 32000, 50257};
struct Case {
  int64_t rows;
  double smoothing;
  int64_t ignore_index;
  double grad_scale;
};
const Case kCases[] = {
    {1, 0.0, -100, 1.0}, {7, 0.1, -100, 0.25}, {77, 0.1, 1, 1.0 / 77}, {513, 0.0, 1, 2.0}};

class GpuCrossEntropy : public GpuKernelTest,
                        public testing::WithParamInterface<std::tuple<Precision, int64_t>> {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (int64_t v : kVocabs) all.push_back(codegen::cross_entropy(p, v));
    }
    prepare_kernels(all);
  }

 protected:
  struct Out {
    DeviceArray loss, nll, grad, bad;
  };
  // grad_into: where grad_logits go (nullptr: a fresh poisoned array).
  Out run(Precision p, int64_t vocab, const DeviceArray& logits, const DeviceArray& targets,
          const Case& c, const DeviceArray* grad_into) {
    Out o{poisoned(Precision::kFp32, c.rows), poisoned(Precision::kFp32, c.rows),
          grad_into ? DeviceArray{} : poisoned(p, c.rows * vocab), zeroed_raw(1, sizeof(int))};
    CUdeviceptr lg = logits.ptr(), tg = targets.ptr(), loss = o.loss.ptr(), nll = o.nll.ptr();
    CUdeviceptr grad = grad_into ? grad_into->ptr() : o.grad.ptr(), bad = o.bad.ptr();
    int64_t rows = c.rows, ignore = c.ignore_index;
    float eps = static_cast<float>(c.smoothing);
    // grad_scale lives in device memory; 1.0 also goes as a null pointer (the kernel's default).
    DeviceArray scale_buf = upload_pod(std::vector<float>{static_cast<float>(c.grad_scale)});
    CUdeviceptr scale = c.grad_scale == 1.0 ? 0 : scale_buf.ptr();
    const KernelInstance inst = codegen::cross_entropy(p, vocab);
    const int threads = std::stoi(inst.template_args.at(2));  // kThreads
    const int vec = std::stoi(inst.template_args.at(3));      // kVec
    launch(inst, kern::ce_grid(rows), kern::ce_block(threads),
           kern::ce_smem(vocab, threads, vec, static_cast<int>(element_bytes(p))),
           {&lg, &tg, &loss, &nll, &grad, &bad, &rows, &ignore, &eps, &scale});
    return o;
  }
};

TEST_P(GpuCrossEntropy, MatchesReference) {
  const auto [p, vocab] = GetParam();
  for (const Case& c : kCases) {
    if (vocab > 10000 && c.rows > 100) continue;  // time
    SCOPED_TRACE(testing::Message()
                 << "rows " << c.rows << ", smoothing " << c.smoothing << ", ignore_index "
                 << c.ignore_index << ", grad_scale " << c.grad_scale);
    const Vec logits = random(p, c.rows * vocab, -6, 6);
    std::vector<int64_t> targets(c.rows);
    for (int64_t& t : targets) t = rng().below(8) == 0 ? c.ignore_index : rng().below(vocab);
    if (c.rows > 1) targets[0] = c.ignore_index;
    const double eps = static_cast<float>(c.smoothing), scale = static_cast<float>(c.grad_scale);
    const ref::CrossEntropy r =
        ref::cross_entropy(logits, targets, c.rows, vocab, c.ignore_index, eps, scale);
    DeviceArray d_logits = upload(p, logits), d_targets = upload_pod(targets);
    Out o = run(p, vocab, d_logits, d_targets, c, nullptr);
    EXPECT_EQ(download_pod<int>(o.bad)[0], 0) << "bad_target set for valid targets";
    const Vec loss = download(o.loss), nll = download(o.nll), grad = download(o.grad);
    EXPECT_TRUE(all_close("loss", loss, r.loss, fp32_tolerance()));
    EXPECT_TRUE(all_close("nll", nll, r.nll, fp32_tolerance()));
    EXPECT_TRUE(all_close("grad_logits", grad, r.grad, tolerance_for(p)));
    for (int64_t row = 0; row < c.rows; ++row) {
      if (targets[row] != c.ignore_index) continue;
      ASSERT_EQ(loss[row], 0.0) << "ignored row " << row;
      ASSERT_EQ(nll[row], 0.0) << "ignored row " << row;
      for (int64_t j = 0; j < vocab; ++j)
        ASSERT_EQ(grad[row * vocab + j], 0.0) << "ignored row " << row;
    }
    // grad_logits may alias logits.
    DeviceArray inplace = upload(p, logits);
    Out a = run(p, vocab, inplace, d_targets, c, &inplace);
    EXPECT_TRUE(
        all_close("grad_logits aliasing logits", download(inplace), r.grad, tolerance_for(p)));
    EXPECT_TRUE(all_close("loss (aliased run)", download(a.loss), r.loss, fp32_tolerance()));
    if (HasFailure()) return;
  }
}

// Targets outside [0, V) (and not ignore_index) set *bad_target and are treated as ignored.
TEST_P(GpuCrossEntropy, OutOfRangeTargetsSetTheFlag) {
  const auto [p, vocab] = GetParam();
  const Case c{5, 0.1, -100, 1.0};
  const Vec logits = random(p, c.rows * vocab, -6, 6);
  const std::vector<int64_t> targets{0, vocab, vocab - 1, -7, -100};
  const ref::CrossEntropy r = ref::cross_entropy(logits, targets, c.rows, vocab, c.ignore_index,
                                                 static_cast<float>(c.smoothing), c.grad_scale);
  ASSERT_TRUE(r.bad_target);
  DeviceArray d_logits = upload(p, logits), d_targets = upload_pod(targets);
  Out o = run(p, vocab, d_logits, d_targets, c, nullptr);
  EXPECT_EQ(download_pod<int>(o.bad)[0], 1);
  const Vec loss = download(o.loss), grad = download(o.grad);
  EXPECT_TRUE(all_close("loss", loss, r.loss, fp32_tolerance()));
  EXPECT_TRUE(all_close("grad_logits", grad, r.grad, tolerance_for(p)));
  for (int64_t row : {1, 3}) {
    EXPECT_EQ(loss[row], 0.0) << "row " << row;
    for (int64_t j = 0; j < vocab; ++j) ASSERT_EQ(grad[row * vocab + j], 0.0) << "row " << row;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuCrossEntropy,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::ValuesIn(kVocabs)),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_vocab" +
                                  std::to_string(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace lightseq::kernel_test
