// gpu_kernels_reduce_test.cpp — templates/reduce.cuh on the GPU: column_sum_kernel over partials
// [n_blocks, stride] with a column offset and 1 to 3 outputs per launch (n_blocks 1, 7, 264, 513;
// cols 1, 7, 512, 4096, 12289) and convert_kernel (n 1, 7, 77, 1000003), each with
// Accumulate::kOverwrite (`=`, poisoned output) and Accumulate::kAdd (`+=` onto existing values),
// and accumulate_kernel (`+=`, aligned and not, in == out), for fp32/fp16/bf16.
#include <gtest/gtest.h>

#include <string>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using ref::all_close;
using ref::tolerance_for;

class GpuReduce : public GpuKernelTest, public testing::WithParamInterface<Precision> {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      all.push_back(codegen::column_sum(p));
      all.push_back(codegen::convert(p));
      all.push_back(codegen::accumulate(p));
    }
    prepare_kernels(all);
  }
};

// column_sum_kernel with n_out outputs in one launch: output y sums columns
// [col_offset + y * cols, col_offset + (y + 1) * cols); the unused output pointers are null.
TEST_P(GpuReduce, ColumnSumOverwritesAndAccumulates) {
  const Precision p = GetParam();
  for (int64_t n_out = 1; n_out <= kern::kColumnSumMaxOuts; ++n_out) {
    for (int64_t n_blocks : {1, 7, 264, 513}) {
      for (int64_t cols : {1, 7, 512, 4096, 12289}) {
        int64_t col_offset = cols % 2 == 1 ? 3 : 0;
        int64_t stride = n_out * cols + col_offset + (n_blocks % 2);
        SCOPED_TRACE(testing::Message()
                     << "n_out " << n_out << ", n_blocks " << n_blocks << ", cols " << cols
                     << ", stride " << stride << ", col_offset " << col_offset);
        const Vec partials = random(Precision::kFp32, n_blocks * stride, -1, 1);
        DeviceArray d_part = upload(Precision::kFp32, partials);
        std::vector<DeviceArray> outs;
        CUdeviceptr o[kern::kColumnSumMaxOuts] = {};
        for (int64_t y = 0; y < n_out; ++y) {
          outs.push_back(poisoned(p, cols));
          o[y] = outs.back().ptr();
        }
        CUdeviceptr part = d_part.ptr();
        int64_t nb = n_blocks, c = cols, n = n_out;
        kern::Accumulate acc = kern::Accumulate::kOverwrite;
        std::vector<void*> args{&part, &nb,   &stride, &col_offset, &c,
                                &n,    &o[0], &o[1],   &o[2],       &acc};
        launch(codegen::column_sum(p), kern::column_sum_grid(cols, n_out), kern::column_sum_block(),
               args);
        for (int64_t y = 0; y < n_out; ++y) {
          EXPECT_TRUE(all_close(
              "= out" + std::to_string(y), download(outs[y]),
              ref::column_sum(partials, n_blocks, stride, col_offset + y * cols, cols, {}, acc),
              tolerance_for(p)));
        }
        std::vector<Vec> old;
        for (int64_t y = 0; y < n_out; ++y) {
          old.push_back(random(p, cols, -4, 4));
          write(outs[y], old[y]);
        }
        acc = kern::Accumulate::kAdd;
        launch(codegen::column_sum(p), kern::column_sum_grid(cols, n_out), kern::column_sum_block(),
               args);
        for (int64_t y = 0; y < n_out; ++y) {
          EXPECT_TRUE(all_close(
              "+= out" + std::to_string(y), download(outs[y]),
              ref::column_sum(partials, n_blocks, stride, col_offset + y * cols, cols, old[y], acc),
              tolerance_for(p)));
        }
        if (HasFailure()) return;
      }
    }
  }
}

TEST_P(GpuReduce, ConvertOverwritesAndAccumulates) {
  const Precision p = GetParam();
  for (int64_t n : {1, 7, 77, 1000003}) {
    SCOPED_TRACE(testing::Message() << "n " << n);
    const Vec in = random(Precision::kFp32, n, -3, 3);
    DeviceArray d_in = upload(Precision::kFp32, in), out = poisoned(p, n);
    CUdeviceptr i = d_in.ptr(), o = out.ptr();
    int64_t count = n;
    kern::Accumulate acc = kern::Accumulate::kOverwrite;
    std::vector<void*> args{&i, &o, &count, &acc};
    launch(codegen::convert(p), kern::convert_grid(n), kern::convert_block(), args);
    EXPECT_TRUE(all_close("=", download(out), in, tolerance_for(p)));
    const Vec old = random(p, n, -3, 3);
    write(out, old);
    acc = kern::Accumulate::kAdd;
    launch(codegen::convert(p), kern::convert_grid(n), kern::convert_block(), args);
    Vec sum(n);
    for (int64_t k = 0; k < n; ++k) sum[k] = old[k] + in[k];
    EXPECT_TRUE(all_close("+=", download(out), sum, tolerance_for(p)));
    if (HasFailure()) return;
  }
}

// accumulate_kernel: out += in in fp32, one rounding; in may equal out (doubles it). Also at an
// element offset that breaks 4-element alignment (the scalar path).
TEST_P(GpuReduce, AccumulateAddsInPlace) {
  const Precision p = GetParam();
  for (int64_t n : {1, 7, 77, 1000003}) {
    for (int64_t shift : {0, 1}) {
      SCOPED_TRACE(testing::Message() << "n " << n << ", element offset " << shift);
      const Vec in = random(p, n + shift, -3, 3), old = random(p, n + shift, -3, 3);
      DeviceArray d_in = upload(p, in), out = upload(p, old);
      CUdeviceptr i = d_in.ptr() + shift * ref::dtype_bytes(p),
                  o = out.ptr() + shift * ref::dtype_bytes(p);
      int64_t count = n;
      launch(codegen::accumulate(p), kern::accumulate_grid(n), kern::accumulate_block(),
             {&i, &o, &count});
      Vec expect = old;
      for (int64_t k = 0; k < n; ++k) expect[shift + k] = old[shift + k] + in[shift + k];
      const Vec once = download(out);
      EXPECT_TRUE(all_close("+=", once, expect, tolerance_for(p)));
      // in == out: doubles.
      launch(codegen::accumulate(p), kern::accumulate_grid(n), kern::accumulate_block(),
             {&o, &o, &count});
      Vec doubled = once;
      for (int64_t k = 0; k < n; ++k) doubled[shift + k] = 2 * once[shift + k];
      EXPECT_TRUE(all_close("in == out", download(out), doubled, {0, 0, 0}));
      if (HasFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuReduce, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
