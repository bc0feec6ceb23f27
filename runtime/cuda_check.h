// cuda_check.h — checked CUDA driver and cuBLAS calls.
//
//   LIGHTSEQ_CU_CHECK(driver().cuMemAllocAsync(&p, bytes, stream));
//   LIGHTSEQ_CU_CHECK_MSG(driver().cuMemAllocAsync(&p, bytes, stream),
//                         fmt::format("allocating {} bytes", bytes));
//   LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmul(...));
//
// A failure throws lightseq::CudaError:
//   "<expression> failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory) at runtime/allocator.cpp:42"
// with ": <context>" appended when the _MSG form is used. The context argument is evaluated only
// on failure. The status name and string come from the driver (cuGetErrorName/String) or, for
// cuBLAS, from a table here (so that runtime/gemm.cpp stays the only file calling cuBLAS).
#pragma once

#include <cublas_api.h>
#include <cuda.h>

#include <string>
#include <string_view>

namespace lightseq {

// "CUDA_ERROR_NO_DEVICE" / "no CUDA-capable device is detected"; "CUresult 999" and "" when the
// driver cannot name it. Never throw.
std::string cu_status_name(CUresult status);
std::string cu_status_string(CUresult status);
// "CUBLAS_STATUS_NOT_SUPPORTED" / "the functionality requested is not supported".
std::string cublas_status_name(cublasStatus_t status);
std::string cublas_status_string(cublasStatus_t status);

[[noreturn]] void throw_cu_error(CUresult status, std::string_view expression,
                                 std::string_view context, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, std::string_view expression,
                                     std::string_view context, const char* file, int line);

}  // namespace lightseq

#define LIGHTSEQ_CU_CHECK_MSG(expr, context)                                                 \
  do {                                                                                       \
    const CUresult lightseq_cu_status_ = (expr);                                             \
    if (lightseq_cu_status_ != CUDA_SUCCESS) {                                               \
      ::lightseq::throw_cu_error(lightseq_cu_status_, #expr, (context), __FILE__, __LINE__); \
    }                                                                                        \
  } while (0)

#define LIGHTSEQ_CU_CHECK(expr) LIGHTSEQ_CU_CHECK_MSG(expr, std::string_view{})

#define LIGHTSEQ_CUBLAS_CHECK_MSG(expr, context)                                          \
  do {                                                                                    \
    const cublasStatus_t lightseq_cublas_status_ = (expr);                                \
    if (lightseq_cublas_status_ != CUBLAS_STATUS_SUCCESS) {                               \
      ::lightseq::throw_cublas_error(lightseq_cublas_status_, #expr, (context), __FILE__, \
                                     __LINE__);                                           \
    }                                                                                     \
  } while (0)

#define LIGHTSEQ_CUBLAS_CHECK(expr) LIGHTSEQ_CUBLAS_CHECK_MSG(expr, std::string_view{})
