// runtime_cpu_test.cpp — the parts of the runtime that need no GPU: device discovery that answers
// 0 (never throws) without a driver or device and says why, the messages of the CUDA/cuBLAS
// check macros, GEMM argument validation, and the aux layout helpers. Runs everywhere.
#include <gtest/gtest.h>

#include <iostream>
#include <string>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/gemm.h"
#include "runtime/launch.h"

namespace lightseq {
namespace {

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

TEST(Device, CountNeverThrowsAndZeroComesWithAReason) {
  int count = -1;
  EXPECT_NO_THROW(count = device_count());
  ASSERT_GE(count, 0);
  const std::string reason = no_gpu_reason();
  if (count == 0) {
    EXPECT_FALSE(reason.empty());
    std::cout << "device_count() = 0: " << reason << std::endl;
    try {
      driver();
      // A driver that initializes but reports no device is also a valid "0".
      EXPECT_TRUE(contains(reason, "0 devices")) << reason;
    } catch (const CudaError& e) {
      EXPECT_TRUE(contains(e.what(), driver_unavailable_reason())) << e.what();
    }
    EXPECT_THROW(device_arch(0), CudaError);
    EXPECT_THROW(ScopedContext(0), CudaError);
  } else {
    EXPECT_EQ(reason, "");
    EXPECT_GE(device_arch(0), 70);
    try {
      device_arch(count);
      ADD_FAILURE() << "device " << count << " accepted";
    } catch (const CudaError& e) {
      EXPECT_TRUE(contains(e.what(), "does not exist")) << e.what();
    }
  }
}

CUresult returns(CUresult r) { return r; }
cublasStatus_t returns_cublas(cublasStatus_t s) { return s; }

TEST(CudaCheck, DriverFailureNamesExpressionStatusAndLocation) {
  try {
    LIGHTSEQ_CU_CHECK(returns(CUDA_ERROR_INVALID_VALUE));
    FAIL() << "no throw";
  } catch (const CudaError& e) {
    const std::string message = e.what();
    EXPECT_TRUE(contains(message, "returns(CUDA_ERROR_INVALID_VALUE) failed: ")) << message;
    // Named by the driver when there is one, by number otherwise.
    EXPECT_TRUE(contains(message, "CUDA_ERROR_INVALID_VALUE (") || contains(message, "CUresult 1"))
        << message;
    EXPECT_TRUE(contains(message, "tests/runtime_cpu_test.cpp:")) << message;
  }
  EXPECT_NO_THROW(LIGHTSEQ_CU_CHECK(returns(CUDA_SUCCESS)));
}

TEST(CudaCheck, CublasFailureNamesStatusAndContext) {
  try {
    LIGHTSEQ_CUBLAS_CHECK_MSG(returns_cublas(CUBLAS_STATUS_NOT_SUPPORTED), "gemm 'ffn.linear1'");
    FAIL() << "no throw";
  } catch (const CudaError& e) {
    const std::string message = e.what();
    EXPECT_TRUE(contains(message,
                         "returns_cublas(CUBLAS_STATUS_NOT_SUPPORTED) failed: "
                         "CUBLAS_STATUS_NOT_SUPPORTED (the functionality requested is "
                         "not supported) at tests/runtime_cpu_test.cpp:"))
        << message;
    EXPECT_TRUE(message.ends_with(": gemm 'ffn.linear1'")) << message;
  }
  EXPECT_EQ(cublas_status_name(CUBLAS_STATUS_INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
  EXPECT_EQ(cublas_status_name(static_cast<cublasStatus_t>(12345)), "cublasStatus_t 12345");
}

// A well-formed forward GEMM (x·Wᵀ + b, GELU with aux); pointers are never dereferenced here.
GemmArgs valid_args() {
  static char storage[4096];
  GemmArgs g;
  g.name = "ffn.linear1";
  g.dtype = Precision::kBf16;
  g.trans_b = Transpose::kYes;
  g.m = 7;
  g.n = 64;
  g.k = 32;
  g.a = storage;
  g.lda = 32;
  g.b = storage;
  g.ldb = 32;
  g.d = storage;
  g.ldd = 64;
  g.epilogue = Epilogue::kGeluAuxBias;
  g.bias = storage;
  g.aux = storage;
  g.aux_ld = gelu_aux_ld(64);
  return g;
}

void expect_rule(const GemmArgs& g, const std::string& rule) {
  try {
    validate_gemm_args(g);
    ADD_FAILURE() << "accepted; expected: " << rule;
  } catch (const InternalError& e) {
    EXPECT_TRUE(contains(e.what(), rule)) << e.what();
    EXPECT_TRUE(contains(e.what(), "gemm 'ffn.linear1'")) << e.what();
  }
}

// Each dropout site kind reads its own probability (a spec's dropout.attention_output included).
TEST(DropoutConfig, EveryKindReadsItsOwnProbability) {
  DropoutConfig d;
  d.attention = 0.1, d.activation = 0.2, d.hidden = 0.3, d.embedding = 0.4,
  d.attention_output = 0.5;
  EXPECT_EQ(dropout_probability(d, DropoutKind::kAttention), 0.1);
  EXPECT_EQ(dropout_probability(d, DropoutKind::kActivation), 0.2);
  EXPECT_EQ(dropout_probability(d, DropoutKind::kHidden), 0.3);
  EXPECT_EQ(dropout_probability(d, DropoutKind::kEmbedding), 0.4);
  EXPECT_EQ(dropout_probability(d, DropoutKind::kAttentionOutput), 0.5);
}

TEST(GemmArgs, ValidationNamesTheRule) {
  EXPECT_NO_THROW(validate_gemm_args(valid_args()));
  GemmArgs g = valid_args();
  g.lda = 31;
  expect_rule(g, "lda must be ≥ k");
  g = valid_args();
  g.trans_a = Transpose::kYes;  // A stored [k, m]: lda ≥ m = 7 holds with 32
  EXPECT_NO_THROW(validate_gemm_args(g));
  g = valid_args();
  g.trans_b = Transpose::kNo;  // B stored [k, n]: ldb 32 < n = 64
  expect_rule(g, "ldb must be ≥ n");
  g = valid_args();
  g.bias = nullptr;
  expect_rule(g, "needs bias");
  g = valid_args();
  g.aux_ld = 68;
  expect_rule(g, "aux_ld must be a multiple of 8");
  g = valid_args();
  g.epilogue = Epilogue::kReluAuxBias;
  expect_rule(g, "aux_ld must be a multiple of 128");
  g.aux_ld = relu_mask_ld(g.n);
  EXPECT_NO_THROW(validate_gemm_args(g));
  g = valid_args();
  g.epilogue = Epilogue::kBGradA;
  expect_rule(g, "needs bias_grad");
  g.bias_grad = g.d;
  g.batch = 2;
  g.stride_d = g.m * g.ldd;
  expect_rule(g, "batch = 1");
  g = valid_args();
  g.beta = 1.0f;
  expect_rule(g, "needs c");
  g.c = g.d;
  g.ldc = g.ldd + 8;
  expect_rule(g, "ldc == ldd");
  g.ldc = g.ldd;
  EXPECT_NO_THROW(validate_gemm_args(g));
  g = valid_args();
  g.batch = 3;
  g.stride_d = 0;
  expect_rule(g, "stride_d must be ≥ m·ldd");
  g = valid_args();
  g.tf32 = Tf32::kAllow;
  expect_rule(g, "TF32 applies to fp32 only");
  g = valid_args();
  g.m = 0;
  expect_rule(g, "must be ≥ 1");
}

TEST(GemmArgs, DescriptionCarriesTheLayout) {
  const std::string text = describe(valid_args());
  EXPECT_TRUE(contains(text, "gemm 'ffn.linear1': bf16 D[1 x 7 x 64]")) << text;
  EXPECT_TRUE(contains(text, "trans_b = yes")) << text;
  EXPECT_TRUE(contains(text, "epilogue bias+gelu")) << text;
  EXPECT_TRUE(contains(text, "aux_ld = 64")) << text;
}

TEST(GemmArgs, TightAuxLayouts) {
  static_assert(relu_mask_ld(1) == 128 && relu_mask_ld(128) == 128 && relu_mask_ld(129) == 256);
  static_assert(relu_mask_bytes(3, 129) == 3 * 256 / 8);
  static_assert(gelu_aux_ld(9) == 16 && gelu_aux_ld(3072) == 3072);
  SUCCEED();
}

TEST(GemmRunner, RunWithoutADriverThrowsCudaError) {
  if (device_count() > 0) GTEST_SKIP() << "a GPU is present: this checks the no-driver path";
  GemmRunner runner;
  class NoAllocator final : public Allocator {
   public:
    void* allocate(size_t, CUstream) override { return nullptr; }
    void deallocate(void*, size_t, CUstream) override {}
  } allocator;
  try {
    runner.run(valid_args(), nullptr, allocator);
    FAIL() << "no throw";
  } catch (const CudaError& e) {
    EXPECT_TRUE(contains(e.what(), no_gpu_reason())) << e.what();
  }
}

}  // namespace
}  // namespace lightseq
