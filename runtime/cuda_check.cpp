#include "runtime/cuda_check.h"

#include <fmt/format.h>

#include "compiler/errors.h"
#include "runtime/driver.h"

namespace lightseq {
namespace {

// "runtime/gemm.cpp" rather than the absolute build path.
std::string_view short_path(const char* file) {
  std::string_view path(file);
  size_t cut = path.rfind('/');
  if (cut != std::string_view::npos && cut > 0) {
    const size_t parent = path.rfind('/', cut - 1);
    if (parent != std::string_view::npos) return path.substr(parent + 1);
  }
  return path;
}

std::string failure_message(std::string_view expression, const std::string& name,
                            const std::string& text, std::string_view context, const char* file,
                            int line) {
  std::string out = fmt::format("{} failed: {}", expression, name);
  if (!text.empty()) out += fmt::format(" ({})", text);
  out += fmt::format(" at {}:{}", short_path(file), line);
  if (!context.empty()) out += fmt::format(": {}", context);
  return out;
}

}  // namespace

std::string cu_status_name(CUresult status) {
  const char* name = nullptr;
  if (const DriverApi* api = driver_library()) {
    if (api->cuGetErrorName(status, &name) != CUDA_SUCCESS) name = nullptr;
  }
  return name != nullptr ? std::string(name) : fmt::format("CUresult {}", static_cast<int>(status));
}

std::string cu_status_string(CUresult status) {
  const char* text = nullptr;
  if (const DriverApi* api = driver_library()) {
    if (api->cuGetErrorString(status, &text) != CUDA_SUCCESS) text = nullptr;
  }
  return text != nullptr ? std::string(text) : std::string();
}

std::string cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return fmt::format("cublasStatus_t {}", static_cast<int>(status));
}

std::string cublas_status_string(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "an invalid value was passed";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "the device does not support the operation";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "access to GPU memory failed";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "the GPU program failed to execute";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "an internal operation failed";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "the functionality requested is not supported";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "license error";
  }
  return "";
}

void throw_cu_error(CUresult status, std::string_view expression, std::string_view context,
                    const char* file, int line) {
  throw CudaError(failure_message(expression, cu_status_name(status), cu_status_string(status),
                                  context, file, line));
}

void throw_cublas_error(cublasStatus_t status, std::string_view expression,
                        std::string_view context, const char* file, int line) {
  throw CudaError(failure_message(expression, cublas_status_name(status),
                                  cublas_status_string(status), context, file, line));
}

}  // namespace lightseq
