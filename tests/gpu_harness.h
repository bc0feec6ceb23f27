// gpu_harness.h — what the Gpu kernel suites (tests/gpu_kernels_*_test.cpp) share: kernel
// instances (compiler/codegen/instances.h) compiled once per process with NVRTC for device 0's
// arch, many programs in parallel, loaded through runtime/module.h; a fixture owning a context, a
// stream and an allocator; typed device arrays uploaded from T-rounded doubles, poisoned with NaN
// bytes (0xFF) before every launch and decoded back to doubles; launches that synchronize and name
// the kernel when they fail. Skips visibly ("no GPU: <reason>") without a GPU.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/launch.cuh"
#include "compiler/planner/plan.h"
#include "compiler/spec/model_spec.h"
#include "runtime/allocator.h"
#include "runtime/device.h"
#include "tests/reference/compare.h"
#include "tests/reference/dtype.h"
#include "tests/reference/random.h"

namespace lightseq::kernel_test {

using ref::Vec;

// "", or why the GPU suites skip ("libcuda.so.1 could not be loaded ...").
std::string gpu_unavailable();

#define LIGHTSEQ_KERNEL_TEST_REQUIRE_GPU()                                                \
  do {                                                                                    \
    if (const std::string why = ::lightseq::kernel_test::gpu_unavailable(); !why.empty()) \
      GTEST_SKIP() << "no GPU: " << why;                                                  \
  } while (0)

// Compiles (in parallel, once per process) and loads every instance not loaded yet. A program
// NVRTC rejects or the driver cannot load is remembered: function() of its kernels throws the
// error. Does nothing without a GPU.
void prepare_kernels(const std::vector<KernelInstance>& kernels);
// The loaded kernel (compiling it first if prepare_kernels did not). Throws the compile or load
// error (CompileError, CudaError) with the kernel's label.
CUfunction kernel_function(const KernelInstance& kernel);

// A device array of n elements of one type (fp32/fp16/bf16 values, or raw bytes: i64 tokens,
// u8 masks, i32 flags, structs).
struct DeviceArray {
  DeviceBuffer mem;
  size_t n = 0;
  size_t elem_bytes = 0;
  std::optional<Precision> dtype;  // set for floating-point arrays
  CUdeviceptr ptr() const { return mem.device_ptr(); }
  size_t bytes() const { return n * elem_bytes; }
};

inline CUdeviceptr ptr_or_null(const DeviceArray* a) { return a ? a->ptr() : 0; }

class GpuKernelTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  uint64_t seed() const { return seed_; }
  ref::Rng& rng() { return *rng_; }

  // n uniform values in [lo, hi) rounded to p (the values the device will read).
  Vec random(Precision p, size_t n, double lo, double hi);

  // Uploads values rounded to p.
  DeviceArray upload(Precision p, const Vec& values);
  DeviceArray upload_raw(const void* data, size_t n, size_t elem_bytes);
  template <typename U>
  DeviceArray upload_pod(const std::vector<U>& v) {
    return upload_raw(v.data(), v.size(), sizeof(U));
  }
  // n elements of p, every byte 0xFF (NaN in fp32, fp16, bf16).
  DeviceArray poisoned(Precision p, size_t n);
  // Raw zeroed / 0xFF-filled bytes.
  DeviceArray zeroed_raw(size_t n, size_t elem_bytes);
  void poison(DeviceArray& a);
  void fill_zero(DeviceArray& a);
  void write(DeviceArray& a, const Vec& values);  // re-uploads values (rounded to a.dtype)

  Vec download(const DeviceArray& a);
  std::vector<uint8_t> download_bytes(const DeviceArray& a);
  template <typename U>
  std::vector<U> download_pod(const DeviceArray& a) {
    std::vector<U> v(a.bytes() / sizeof(U));
    download_into(a, v.data());
    return v;
  }

  // Launches and synchronizes; a launch or execution error throws CudaError naming the label.
  // args: one pointer per kernel parameter, each to a value of exactly the parameter's type.
  void launch(const KernelInstance& kernel, kern::GridDim grid, int block, std::vector<void*> args);
  // The same with `smem_bytes` of dynamic shared memory.
  void launch(const KernelInstance& kernel, kern::GridDim grid, int block, int smem_bytes,
              std::vector<void*> args);

  CUstream stream() const { return stream_; }

 private:
  void download_into(const DeviceArray& a, void* out);
  std::optional<ScopedContext> context_;
  std::optional<StreamOrderedAllocator> allocator_;
  CUstream stream_ = nullptr;
  uint64_t seed_ = 0;
  std::optional<ref::Rng> rng_;
  std::optional<::testing::ScopedTrace> trace_;
};

// Names of test parameters.
std::string precision_name(Precision p);  // "fp32", "fp16", "bf16"
inline const Precision kAllPrecisions[] = {Precision::kFp32, Precision::kFp16, Precision::kBf16};
// The attention masks, and their names in test names: "nomask", "padding", "causal",
// "padding_causal".
inline const kern::Mask kAllMasks[] = {kern::Mask::kNone, kern::Mask::kPadding, kern::Mask::kCausal,
                                       kern::Mask::kPaddingCausal};
std::string mask_name(kern::Mask m);

}  // namespace lightseq::kernel_test
