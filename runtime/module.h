// module.h — a compiled program (a disk-cache entry) loaded onto one device, and kernel launches.
//
// A KernelModule loads a CacheEntry's image (cubin, or NUL-terminated PTX that the driver JIT
// compiles for the device) into the device's primary context, resolves every kernel's lowered
// name, and hands out CUfunctions by kernel label ("ln_fwd:bf16:h=512:vec=8:..."). One module per
// (program, device): a module is bound to its device's context.
#pragma once

#include <cuda.h>

#include <map>
#include <string>
#include <vector>

#include "compiler/cache/disk_cache.h"
#include "runtime/device.h"

namespace lightseq {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// Dynamic shared memory above this needs the kernel's opt-in attribute (launch() sets it).
inline constexpr size_t kDefaultDynamicSmemLimit = 48 * 1024;

class KernelModule {
 public:
  // Loads `entry` on `device` (retaining its primary context for the module's lifetime).
  // Throws CudaError naming the program, its arch and kind (cubin/PTX), the device's arch and the
  // JIT error log when the driver rejects the image (e.g. an sm_80 cubin on an sm_90 device), or
  // a lowered name that is not in the image; InternalError for a malformed entry (labels and
  // lowered names of different lengths, PTX without its terminating NUL, an empty image).
  KernelModule(const CacheEntry& entry, int device);
  ~KernelModule();
  KernelModule(KernelModule&& other) noexcept;
  KernelModule& operator=(KernelModule&& other) noexcept;
  KernelModule(const KernelModule&) = delete;
  KernelModule& operator=(const KernelModule&) = delete;

  // The kernel with this label. Throws CudaError naming the label and listing the module's
  // labels when it has none such.
  CUfunction function(const std::string& label) const;
  bool contains(const std::string& label) const { return functions_.count(label) != 0; }
  const std::vector<std::string>& labels() const { return labels_; }

  int device() const { return context_.ordinal(); }
  CUcontext context() const { return context_.get(); }
  const std::string& program() const { return program_; }
  // The driver JIT's info log (PTX images; usually empty for cubins).
  const std::string& jit_log() const { return jit_log_; }

 private:
  void unload() noexcept;

  PrimaryContext context_;
  CUmodule module_ = nullptr;
  std::string program_;
  std::string arch_;
  std::vector<std::string> labels_;
  std::map<std::string, CUfunction> functions_;
  std::string jit_log_;
};

// Launches `function` on `stream` (cuLaunchKernel with `args`, one pointer per kernel parameter,
// in order). The stream's context is made current for the call. When smem_bytes exceeds
// kDefaultDynamicSmemLimit the kernel's CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES is raised
// first and its preferred carveout set to the most shared memory (once; later launches find them
// set). Empty grids or blocks, and a failed launch, throw
// CudaError naming `label` (pass the kernel label for readable errors). No synchronization:
// graph-capturable.
void launch(CUfunction function, Dim3 grid, Dim3 block, size_t smem_bytes, CUstream stream,
            void** args, std::string_view label = {});

}  // namespace lightseq
