// gpu_kernels_heads_test.cpp — the head layout kernels of templates/attention.cuh on the GPU:
// split_heads_kernel ([B·S, P·H] → [P, B, heads, S, d], + bias) and merge_heads_kernel (back, with
// bias-gradient partials) for fp32/fp16/bf16 × parts 1, 2, 3 × bias on/off × (hidden, heads) with
// head dims 8, 64, 128, 256 × (batch, seq) from (1, 1) to (1, 513). Copies must be bit-exact.
#include <gtest/gtest.h>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using ref::all_close;

struct Config {
  int64_t hidden, heads;
};
const Config kConfigs[] = {{8, 1}, {512, 8}, {768, 12}, {4096, 32}, {1024, 4}};
struct Shape {
  int64_t batch, seq;
};
const Shape kShapes[] = {{1, 1}, {2, 7}, {3, 77}, {1, 513}};
const ref::Tolerance kExact{0, 0, 0};

class HeadKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (const Config& c : kConfigs) {
        for (int parts = 1; parts <= 3; ++parts) {
          for (bool bias : {false, true}) {
            all.push_back(codegen::split_heads(p, {c.hidden, c.heads, parts, bias}));
            all.push_back(codegen::merge_heads(p, {c.hidden, c.heads, parts, bias}));
          }
        }
      }
      all.push_back(codegen::column_sum(p));
    }
    prepare_kernels(all);
  }
};

class GpuHeads : public HeadKernels,
                 public testing::WithParamInterface<std::tuple<Precision, int, bool>> {};

TEST_P(GpuHeads, SplitMatchesReference) {
  const auto [p, parts, bias] = GetParam();
  const int eb = ref::dtype_bytes(p);
  for (const Config& c : kConfigs) {
    for (const Shape& s : kShapes) {
      if (c.hidden > 768 && s.seq > 100) continue;  // time
      SCOPED_TRACE(testing::Message() << "hidden " << c.hidden << ", heads " << c.heads
                                      << ", batch " << s.batch << ", seq " << s.seq);
      const int64_t rows = s.batch * s.seq, width = parts * c.hidden;
      const Vec in = random(p, rows * width, -2, 2);
      const Vec b = bias ? random(p, width, -1, 1) : Vec();
      DeviceArray d_in = upload(p, in), d_b = upload(p, b), out = poisoned(p, rows * width);
      CUdeviceptr in_ptr = d_in.ptr(), b_ptr = bias ? d_b.ptr() : 0, out_ptr = out.ptr();
      int64_t batch = s.batch, seq = s.seq;
      launch(codegen::split_heads(p, {c.hidden, c.heads, parts, bias}),
             kern::split_heads_grid(rows, c.hidden, c.heads, parts, eb), kern::split_heads_block(),
             {&in_ptr, &b_ptr, &out_ptr, &batch, &seq});
      Vec expect = ref::split_heads(in, b, s.batch, s.seq, c.hidden, c.heads, parts);
      EXPECT_TRUE(
          all_close("split out", download(out), expect, bias ? ref::tolerance_for(p) : kExact));
      if (HasFailure()) return;
    }
  }
}

TEST_P(GpuHeads, MergeMatchesReferenceIncludingBiasGradPartials) {
  const auto [p, parts, bias_grad] = GetParam();
  const int eb = ref::dtype_bytes(p);
  for (const Config& c : kConfigs) {
    for (const Shape& s : kShapes) {
      if (c.hidden > 768 && s.seq > 100) continue;
      SCOPED_TRACE(testing::Message() << "hidden " << c.hidden << ", heads " << c.heads
                                      << ", batch " << s.batch << ", seq " << s.seq);
      const int64_t rows = s.batch * s.seq, width = parts * c.hidden;
      const int64_t blocks = kern::merge_blocks(rows);
      const Vec in = random(p, rows * width, -2, 2);
      DeviceArray d_in = upload(p, in), out = poisoned(p, rows * width);
      DeviceArray partials = poisoned(Precision::kFp32, bias_grad ? blocks * width : 0);
      CUdeviceptr in_ptr = d_in.ptr(), out_ptr = out.ptr(),
                  part_ptr = bias_grad ? partials.ptr() : 0;
      int64_t batch = s.batch, seq = s.seq;
      launch(codegen::merge_heads(p, {c.hidden, c.heads, parts, bias_grad}),
             kern::merge_grid(rows, c.hidden, c.heads, parts, eb),
             kern::merge_block(c.hidden, c.heads, parts, eb),
             {&in_ptr, &out_ptr, &part_ptr, &batch, &seq});
      const ref::MergeHeads m = ref::merge_heads(in, s.batch, s.seq, c.hidden, c.heads, parts);
      EXPECT_TRUE(all_close("merge out", download(out), m.out, kExact));
      if (bias_grad) {
        EXPECT_TRUE(all_close("bias grad (partials)",
                              ref::column_sum(download(partials), blocks, width, 0, width, {},
                                              kern::Accumulate::kOverwrite),
                              m.colsum, ref::fp32_tolerance()));
        DeviceArray grad = poisoned(p, width);
        CUdeviceptr g_ptr = grad.ptr(), none = 0;
        int64_t n_blocks = blocks, stride = width, offset = 0, cols = width, n_out = 1;
        kern::Accumulate acc = kern::Accumulate::kOverwrite;
        launch(codegen::column_sum(p), kern::column_sum_grid(width, n_out),
               kern::column_sum_block(),
               {&part_ptr, &n_blocks, &stride, &offset, &cols, &n_out, &g_ptr, &none, &none, &acc});
        EXPECT_TRUE(
            all_close("bias grad (column_sum)", download(grad), m.colsum, ref::tolerance_for(p)));
      }
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuHeads,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::Values(1, 2, 3), testing::Bool()),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_parts" +
                                  std::to_string(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_bias" : "_nobias");
                         });

}  // namespace
}  // namespace lightseq::kernel_test
