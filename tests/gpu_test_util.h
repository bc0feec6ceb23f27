// gpu_test_util.h — shared by the GPU tests: the visible no-GPU skip, host fp16/bf16 encoding,
// host images of device arrays (poisoned with NaN bytes), NaN-aware relative-error comparison,
// per-run seeds, and a fixture owning a context, a stream and an allocator on device 0.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "compiler/spec/model_spec.h"
#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/host_dtype.h"

// Skips (visibly, with the reason) when there is no GPU. Use at the top of a test or SetUp().
#define LIGHTSEQ_SKIP_WITHOUT_GPU()                              \
  do {                                                           \
    if (::lightseq::device_count() == 0) {                       \
      GTEST_SKIP() << "no GPU: " << ::lightseq::no_gpu_reason(); \
    }                                                            \
  } while (0)

namespace lightseq::test {

// --- fp16 / bf16 on the host: the library's own conversions (runtime/host_dtype.h), so the
// hand-computed cases in gemm_reference_test.cpp check those.
using ::lightseq::bf16_bits_to_float;
using ::lightseq::float_to_bf16_bits;
using ::lightseq::float_to_half_bits;
using ::lightseq::half_bits_to_float;

// --- host image of a device array --------------------------------------------------------------

// `count` elements of `dtype` as raw bytes, created poisoned (every byte 0xFF: NaN in fp32, fp16
// and bf16). set() rounds to the dtype; get() decodes.
class HostArray {
 public:
  HostArray() = default;
  HostArray(Precision dtype, size_t count)
      : dtype_(dtype), count_(count), bytes_(count * element_bytes(dtype), 0xFF) {}

  Precision dtype() const { return dtype_; }
  size_t size() const { return count_; }
  std::vector<uint8_t>& bytes() { return bytes_; }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

  void set(size_t i, double v) {
    const float f = static_cast<float>(v);
    if (dtype_ == Precision::kFp32) {
      std::memcpy(&bytes_[i * 4], &f, 4);
    } else {
      const uint16_t h = dtype_ == Precision::kFp16 ? float_to_half_bits(f) : float_to_bf16_bits(f);
      std::memcpy(&bytes_[i * 2], &h, 2);
    }
  }
  double get(size_t i) const {
    if (dtype_ == Precision::kFp32) {
      float f;
      std::memcpy(&f, &bytes_[i * 4], 4);
      return f;
    }
    uint16_t h;
    std::memcpy(&h, &bytes_[i * 2], 2);
    return dtype_ == Precision::kFp16 ? half_bits_to_float(h) : bf16_bits_to_float(h);
  }
  bool poisoned(size_t i) const {
    const size_t eb = element_bytes(dtype_);
    for (size_t b = 0; b < eb; ++b) {
      if (bytes_[i * eb + b] != 0xFF) return false;
    }
    return true;
  }
  void fill_uniform(std::mt19937_64& rng, double lo, double hi) {
    std::uniform_real_distribution<double> dist(lo, hi);
    for (size_t i = 0; i < count_; ++i) set(i, dist(rng));
  }

 private:
  Precision dtype_ = Precision::kFp32;
  size_t count_ = 0;
  std::vector<uint8_t> bytes_;
};

// --- comparison --------------------------------------------------------------------------------

inline double tolerance(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return 1e-5;
    case Precision::kFp16:
      return 2e-3;
    case Precision::kBf16:
      return 1e-2;
  }
  return 0.0;
}

struct Diff {
  double rel = 0.0;        // ‖out − ref‖ / ‖ref‖ over the finite outputs
  int64_t non_finite = 0;  // outputs that are NaN or ±inf (never acceptable here)
  int64_t worst = -1;      // index of the largest |out − ref| (or of the first non-finite)
  double worst_out = 0.0, worst_ref = 0.0;
  size_t count = 0;
};

// `ignore` (optional, same length): entries set are left out (ambiguous by construction).
inline Diff compare(const std::vector<double>& out, const std::vector<double>& ref,
                    const std::vector<uint8_t>* ignore = nullptr) {
  Diff d;
  d.count = out.size();
  double num = 0.0, den = 0.0, worst_abs = -1.0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (ignore != nullptr && (*ignore)[i]) continue;
    if (!std::isfinite(out[i])) {
      if (d.non_finite++ == 0) {
        d.worst = static_cast<int64_t>(i);
        d.worst_out = out[i];
        d.worst_ref = ref[i];
        worst_abs = INFINITY;
      }
      continue;
    }
    const double e = out[i] - ref[i];
    num += e * e;
    den += ref[i] * ref[i];
    if (std::abs(e) > worst_abs) {
      worst_abs = std::abs(e);
      d.worst = static_cast<int64_t>(i);
      d.worst_out = out[i];
      d.worst_ref = ref[i];
    }
  }
  d.rel = std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
  return d;
}

inline std::string describe(const Diff& d) {
  return "relative error " + std::to_string(d.rel) + ", " + std::to_string(d.non_finite) +
         " non-finite of " + std::to_string(d.count) + ", worst at " + std::to_string(d.worst) +
         ": got " + std::to_string(d.worst_out) + ", want " + std::to_string(d.worst_ref);
}

// Passes when there is no non-finite output and rel ≤ tol (written so that NaN fails).
inline ::testing::AssertionResult within(const Diff& d, double tol, const std::string& what) {
  if (d.non_finite == 0 && d.rel <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << what << ": " << describe(d) << " (tolerance " << tol << ")";
}

// --- seeds -------------------------------------------------------------------------------------

// $LIGHTSEQ_TEST_SEED when set (to reproduce a failure), else fresh from std::random_device.
inline uint64_t test_seed() {
  if (const char* s = std::getenv("LIGHTSEQ_TEST_SEED"); s != nullptr && *s != '\0') {
    return std::strtoull(s, nullptr, 0);
  }
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// --- fixture -----------------------------------------------------------------------------------

// Device 0's primary context made current, a non-blocking stream and a StreamOrderedAllocator.
// Skips visibly without a GPU. Copies are synchronous (tests may synchronize; the library not).
class GpuTest : public ::testing::Test {
 public:
  void SetUp() override {
    LIGHTSEQ_SKIP_WITHOUT_GPU();
    context_.emplace(0);
    LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING));
    allocator_.emplace(0);
    seed_ = test_seed();
    rng_.seed(seed_);
  }
  void TearDown() override {
    if (stream_ != nullptr) {
      LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
      LIGHTSEQ_CU_CHECK(driver().cuStreamDestroy(stream_));
    }
  }

  DeviceBuffer upload(const HostArray& host) {
    return upload_bytes(host.bytes().data(), host.bytes().size());
  }
  DeviceBuffer upload_bytes(const void* data, size_t bytes) {
    DeviceBuffer buffer(*allocator_, bytes, stream_);
    if (bytes > 0) {
      LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(buffer.device_ptr(), data, bytes, stream_));
      sync();
    }
    return buffer;
  }
  void download(const DeviceBuffer& buffer, HostArray& host) {
    download_bytes(buffer, host.bytes().data(), host.bytes().size());
  }
  void download_bytes(const DeviceBuffer& buffer, void* data, size_t bytes) {
    if (bytes == 0) return;
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(data, buffer.device_ptr(), bytes, stream_));
    sync();
  }
  void sync() { LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_)); }
  std::string seed_note() const {
    return "seed " + std::to_string(seed_) +
           " (rerun with LIGHTSEQ_TEST_SEED=" + std::to_string(seed_) + ")";
  }

  std::optional<ScopedContext> context_;
  CUstream stream_ = nullptr;
  std::optional<StreamOrderedAllocator> allocator_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace lightseq::test
