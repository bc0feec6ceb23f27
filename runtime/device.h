// device.h — GPUs and their contexts.
//
// lightseq uses each device's *primary* context (cuDevicePrimaryCtxRetain), the one the CUDA
// runtime API and therefore PyTorch use, so memory, streams and modules are shared with them
// freely. Nothing here keeps a "current device": every object names its device, and every call
// that needs a context makes the right one current for its duration and restores the previous.
#pragma once

#include <cuda.h>

#include <string>

namespace lightseq {

// Number of CUDA devices; 0 when there is no driver, no device, or cuInit fails. Never throws.
int device_count() noexcept;

// Why device_count() is 0 ("cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is
// detected)", "libcuda.so.1 could not be loaded (...)"); "" when there is a device. Never throws.
std::string no_gpu_reason();

// Compute capability as major * 10 + minor (90 for an H100). Throws CudaError for an ordinal
// outside [0, device_count()).
int device_arch(int ordinal);

// The target a device's kernels are compiled for: jit_target(device_arch(ordinal)) ("sm_90a" on
// an H100), or LIGHTSEQ_ARCH where set (e.g. "sm_90": the portable mma.sync kernels on a Hopper
// GPU, for comparison), which must name the device's own compute capability. Throws CudaError
// like device_arch, and lightseq::Error naming the variable for a LIGHTSEQ_ARCH that is malformed
// or another device's.
std::string device_target(int ordinal);

// "NVIDIA H100 80GB HBM3".
std::string device_name(int ordinal);

// The CUdevice of an ordinal, after checking the ordinal exists.
CUdevice cu_device(int ordinal);

// A reference on a device's primary context: retained in the constructor, released in the
// destructor. Movable, not copyable. Does not make the context current.
class PrimaryContext {
 public:
  explicit PrimaryContext(int ordinal);
  ~PrimaryContext();
  PrimaryContext(PrimaryContext&& other) noexcept;
  PrimaryContext& operator=(PrimaryContext&& other) noexcept;
  PrimaryContext(const PrimaryContext&) = delete;
  PrimaryContext& operator=(const PrimaryContext&) = delete;

  CUcontext get() const { return context_; }
  int ordinal() const { return ordinal_; }

 private:
  void release() noexcept;
  int ordinal_ = -1;
  CUdevice device_ = 0;
  CUcontext context_ = nullptr;
};

// Makes `context` current on this thread for the scope (when it is not already) and restores the
// previous current context afterwards. Cheap when the context is already current (one query).
class ContextGuard {
 public:
  explicit ContextGuard(CUcontext context);
  ~ContextGuard();
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;

 private:
  CUcontext previous_ = nullptr;
  bool switched_ = false;
};

// Retains the device's primary context and makes it current for the scope; restores the previous
// context and releases the reference at the end. The usual way to "use device N".
class ScopedContext {
 public:
  explicit ScopedContext(int ordinal);
  ~ScopedContext() = default;
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;

  CUcontext context() const { return primary_.get(); }
  int ordinal() const { return primary_.ordinal(); }

 private:
  PrimaryContext primary_;  // declared first: released after the guard restored the previous
  ContextGuard guard_;
};

// The context a stream belongs to (for the legacy/per-thread default stream: the current
// context; CudaError if there is none).
CUcontext stream_context(CUstream stream);

// The device ordinal of a context.
int context_device(CUcontext context);

// Whether the stream is being captured into a CUDA graph.
bool stream_is_capturing(CUstream stream);

}  // namespace lightseq
