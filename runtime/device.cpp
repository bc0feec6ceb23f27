#include "runtime/device.h"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "compiler/errors.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq {

int device_count() noexcept {
  try {
    if (!driver_unavailable_reason().empty()) return 0;
    int count = 0;
    if (driver().cuDeviceGetCount(&count) != CUDA_SUCCESS) return 0;
    return count;
  } catch (...) {
    return 0;
  }
}

std::string no_gpu_reason() {
  try {
    std::string reason = driver_unavailable_reason();
    if (!reason.empty()) return reason;
    int count = 0;
    const CUresult status = driver().cuDeviceGetCount(&count);
    if (status != CUDA_SUCCESS) {
      return fmt::format("cuDeviceGetCount failed: {} ({})", cu_status_name(status),
                         cu_status_string(status));
    }
    if (count == 0) return "the CUDA driver reports 0 devices";
    return "";
  } catch (const std::exception& e) {
    return std::string("querying the CUDA driver failed: ") + e.what();
  }
}

CUdevice cu_device(int ordinal) {
  const DriverApi& api = driver();
  int count = 0;
  LIGHTSEQ_CU_CHECK(api.cuDeviceGetCount(&count));
  if (ordinal < 0 || ordinal >= count) {
    throw CudaError(fmt::format("CUDA device {} does not exist: this machine has {} device{}",
                                ordinal, count, count == 1 ? "" : "s"));
  }
  CUdevice device = 0;
  LIGHTSEQ_CU_CHECK(api.cuDeviceGet(&device, ordinal));
  return device;
}

int device_arch(int ordinal) {
  const CUdevice device = cu_device(ordinal);
  int major = 0, minor = 0;
  LIGHTSEQ_CU_CHECK(
      driver().cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device));
  LIGHTSEQ_CU_CHECK(
      driver().cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device));
  return major * 10 + minor;
}

std::string device_target(int ordinal) {
  const int arch = device_arch(ordinal);
  const char* env = std::getenv("LIGHTSEQ_ARCH");
  if (env == nullptr || *env == '\0') return jit_target(arch);
  std::string target;
  try {
    target = validate_arch(env);
  } catch (const Error& e) {
    throw Error(fmt::format("LIGHTSEQ_ARCH='{}': {}", env, e.what()));
  }
  if (parse_arch(target) != arch) {
    throw Error(fmt::format(
        "LIGHTSEQ_ARCH='{}' names another GPU than device {} (compute capability {}.{}): set it "
        "to sm_{} or sm_{}a, or unset it for {}",
        env, ordinal, arch / 10, arch % 10, arch, arch, jit_target(arch)));
  }
  return target;
}

std::string device_name(int ordinal) {
  const CUdevice device = cu_device(ordinal);
  char name[256] = {};
  LIGHTSEQ_CU_CHECK(driver().cuDeviceGetName(name, static_cast<int>(sizeof(name)) - 1, device));
  return name;
}

// --- PrimaryContext ----------------------------------------------------------------------------

PrimaryContext::PrimaryContext(int ordinal) : ordinal_(ordinal), device_(cu_device(ordinal)) {
  LIGHTSEQ_CU_CHECK_MSG(driver().cuDevicePrimaryCtxRetain(&context_, device_),
                        fmt::format("device {}", ordinal));
}

PrimaryContext::~PrimaryContext() { release(); }

PrimaryContext::PrimaryContext(PrimaryContext&& other) noexcept
    : ordinal_(std::exchange(other.ordinal_, -1)),
      device_(other.device_),
      context_(std::exchange(other.context_, nullptr)) {}

PrimaryContext& PrimaryContext::operator=(PrimaryContext&& other) noexcept {
  if (this != &other) {
    release();
    ordinal_ = std::exchange(other.ordinal_, -1);
    device_ = other.device_;
    context_ = std::exchange(other.context_, nullptr);
  }
  return *this;
}

void PrimaryContext::release() noexcept {
  if (context_ == nullptr) return;
  context_ = nullptr;
  const DriverApi* api = driver_library();
  if (api == nullptr) return;
  const CUresult status = api->cuDevicePrimaryCtxRelease(device_);
  // CUDA_ERROR_DEINITIALIZED: the process is exiting and the driver already shut down.
  if (status != CUDA_SUCCESS && status != CUDA_ERROR_DEINITIALIZED) {
    std::fprintf(stderr, "lightseq: cuDevicePrimaryCtxRelease(device %d) failed: %s\n", ordinal_,
                 cu_status_name(status).c_str());
  }
}

// --- ContextGuard ------------------------------------------------------------------------------

ContextGuard::ContextGuard(CUcontext context) {
  const DriverApi& api = driver();
  LIGHTSEQ_CU_CHECK(api.cuCtxGetCurrent(&previous_));
  if (previous_ != context) {
    LIGHTSEQ_CU_CHECK(api.cuCtxSetCurrent(context));
    switched_ = true;
  }
}

ContextGuard::~ContextGuard() {
  if (!switched_) return;
  const DriverApi* api = driver_library();
  if (api == nullptr) return;
  const CUresult status = api->cuCtxSetCurrent(previous_);
  if (status != CUDA_SUCCESS && status != CUDA_ERROR_DEINITIALIZED) {
    std::fprintf(stderr, "lightseq: restoring the previous CUDA context failed: %s\n",
                 cu_status_name(status).c_str());
  }
}

ScopedContext::ScopedContext(int ordinal) : primary_(ordinal), guard_(primary_.get()) {}

// --- queries -----------------------------------------------------------------------------------

CUcontext stream_context(CUstream stream) {
  CUcontext context = nullptr;
  LIGHTSEQ_CU_CHECK_MSG(
      driver().cuStreamGetCtx(stream, &context),
      stream == nullptr ? "the default stream needs a current context (use ScopedContext)" : "");
  if (context == nullptr) {
    throw CudaError(
        "cuStreamGetCtx returned no context: with the default stream, make a device "
        "current first (lightseq::ScopedContext)");
  }
  return context;
}

int context_device(CUcontext context) {
  ContextGuard guard(context);
  CUdevice device = 0;
  LIGHTSEQ_CU_CHECK(driver().cuCtxGetDevice(&device));
  // CUdevice values are the ordinals (cuDeviceGet(&d, i) gives d == i), but do not rely on it.
  int count = 0;
  LIGHTSEQ_CU_CHECK(driver().cuDeviceGetCount(&count));
  for (int i = 0; i < count; ++i) {
    CUdevice candidate = 0;
    LIGHTSEQ_CU_CHECK(driver().cuDeviceGet(&candidate, i));
    if (candidate == device) return i;
  }
  throw CudaError(
      fmt::format("context {} belongs to no enumerated device", static_cast<const void*>(context)));
}

bool stream_is_capturing(CUstream stream) {
  CUstreamCaptureStatus status = CU_STREAM_CAPTURE_STATUS_NONE;
  LIGHTSEQ_CU_CHECK(driver().cuStreamIsCapturing(stream, &status));
  return status != CU_STREAM_CAPTURE_STATUS_NONE;
}

}  // namespace lightseq
