// cuBLASLt is loaded on first use (runtime/cublaslt_loader.cpp): its host-side entry points work
// on a machine without a GPU, through the loader, and report the library's version.
#include <cublasLt.h>
#include <gtest/gtest.h>

namespace lightseq {
namespace {

TEST(CublasLtLoader, ResolvesTheLibraryOnFirstUse) {
  const size_t version = cublasLtGetVersion();
  EXPECT_EQ(version / 10000, static_cast<size_t>(CUBLAS_VER_MAJOR)) << version;
}

TEST(CublasLtLoader, HostSideDescriptorsWork) {
  cublasLtMatrixLayoutOpaque_t layout;
  ASSERT_EQ(cublasLtMatrixLayoutInit(&layout, CUDA_R_16BF, 64, 32, 64), CUBLAS_STATUS_SUCCESS);
  int32_t batch = 4;
  ASSERT_EQ(cublasLtMatrixLayoutSetAttribute(&layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
                                             sizeof(batch)),
            CUBLAS_STATUS_SUCCESS);
  int32_t got = 0;
  size_t written = 0;
  ASSERT_EQ(cublasLtMatrixLayoutGetAttribute(&layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &got,
                                             sizeof(got), &written),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(got, 4);
  cublasLtMatmulDescOpaque_t desc;
  ASSERT_EQ(cublasLtMatmulDescInit(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_RELU_AUX_BIAS;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(&desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                           sizeof(epilogue)),
            CUBLAS_STATUS_SUCCESS);
  cublasLtMatmulPreferenceOpaque_t pref;
  EXPECT_EQ(cublasLtMatmulPreferenceInit(&pref), CUBLAS_STATUS_SUCCESS);
}

}  // namespace
}  // namespace lightseq
