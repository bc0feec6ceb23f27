// driver.h — the CUDA driver API, loaded at run time from libcuda.so.1 (dlopen), never linked.
//
// Why not link CUDA::cuda_driver: the toolkit only ships a stub libcuda.so whose SONAME is
// libcuda.so.1; a binary linked against it cannot even start on a machine without the NVIDIA
// driver (the loader fails before main), which would take down every CPU-only test and `lsc`.
// Loading it ourselves lets device_count() answer 0 with a reason instead. cuBLASLt does the same
// (it dlopens libcuda itself), so both end up using the one driver library of the process.
//
// Symbols are resolved by the exact names cuda.h would have linked (cuMemcpyHtoDAsync ->
// cuMemcpyHtoDAsync_v2, ...): a member `cuX` of DriverApi has the type and the ABI of the
// header's `cuX`, so calls read like plain driver calls: driver().cuMemAllocAsync(&p, n, s).
//
// State: one lazily-initialized, immutable table per process (thread-safe static init), plus the
// result of the one cuInit(0). Nothing else here is global.
#pragma once

#include <cuda.h>

#include <string>

// X-macro list of every driver entry point lightseq calls. Add one here to use it.
#define LIGHTSEQ_DRIVER_FUNCTIONS(X)   \
  X(cuGetErrorName)                    \
  X(cuGetErrorString)                  \
  X(cuInit)                            \
  X(cuDriverGetVersion)                \
  X(cuDeviceGetCount)                  \
  X(cuDeviceGet)                       \
  X(cuDeviceGetAttribute)              \
  X(cuDeviceGetName)                   \
  X(cuDeviceTotalMem)                  \
  X(cuDevicePrimaryCtxRetain)          \
  X(cuDevicePrimaryCtxRelease)         \
  X(cuDeviceGetDefaultMemPool)         \
  X(cuCtxGetCurrent)                   \
  X(cuCtxSetCurrent)                   \
  X(cuCtxGetDevice)                    \
  X(cuStreamGetCtx)                    \
  X(cuStreamCreate)                    \
  X(cuStreamCreateWithPriority)        \
  X(cuCtxGetStreamPriorityRange)       \
  X(cuStreamDestroy)                   \
  X(cuStreamSynchronize)               \
  X(cuStreamIsCapturing)               \
  X(cuStreamWaitEvent)                 \
  X(cuThreadExchangeStreamCaptureMode) \
  X(cuStreamBeginCapture)              \
  X(cuStreamEndCapture)                \
  X(cuGraphInstantiate)                \
  X(cuGraphLaunch)                     \
  X(cuGraphExecDestroy)                \
  X(cuGraphDestroy)                    \
  X(cuMemPoolSetAttribute)             \
  X(cuMemPoolGetAttribute)             \
  X(cuDeviceGetGraphMemAttribute)      \
  X(cuDeviceSetGraphMemAttribute)      \
  X(cuMemGetInfo)                      \
  X(cuMemHostAlloc)                    \
  X(cuMemFreeHost)                     \
  X(cuMemAlloc)                        \
  X(cuMemFree)                         \
  X(cuMemcpyHtoD)                      \
  X(cuMemAllocAsync)                   \
  X(cuMemFreeAsync)                    \
  X(cuMemcpyHtoDAsync)                 \
  X(cuMemcpyDtoHAsync)                 \
  X(cuMemsetD8Async)                   \
  X(cuMemsetD32Async)                  \
  X(cuMemcpyDtoDAsync)                 \
  X(cuModuleLoadDataEx)                \
  X(cuModuleUnload)                    \
  X(cuModuleGetFunction)               \
  X(cuFuncGetAttribute)                \
  X(cuFuncSetAttribute)                \
  X(cuLaunchKernel)                    \
  X(cuEventCreate)                     \
  X(cuEventDestroy)                    \
  X(cuEventRecord)                     \
  X(cuEventSynchronize)                \
  X(cuEventElapsedTime)

namespace lightseq {

struct DriverApi {
#define LIGHTSEQ_DRIVER_MEMBER(name) decltype(&::name) name = nullptr;
  LIGHTSEQ_DRIVER_FUNCTIONS(LIGHTSEQ_DRIVER_MEMBER)
#undef LIGHTSEQ_DRIVER_MEMBER
};

// The driver, loaded and initialized (cuInit(0) succeeded). Throws CudaError saying why not:
// "libcuda.so.1 could not be loaded: ...", "cuInit failed: CUDA_ERROR_NO_DEVICE (...)".
const DriverApi& driver();

// The loaded library whether or not cuInit succeeded (cuGetErrorName works without cuInit), or
// nullptr when libcuda.so.1 cannot be loaded or lacks a symbol. Never throws.
const DriverApi* driver_library() noexcept;

// "" when driver() works; otherwise the reason it throws. Never throws.
std::string driver_unavailable_reason();

}  // namespace lightseq
