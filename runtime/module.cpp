#include "runtime/module.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq {
namespace {

constexpr size_t kJitLogBytes = 64 * 1024;

std::string log_text(const std::vector<char>& buffer) {
  return std::string(buffer.data(), strnlen(buffer.data(), buffer.size()));
}

void check_entry(const CacheEntry& entry) {
  if (entry.labels.size() != entry.lowered_names.size()) {
    throw InternalError(
        fmt::format("cache entry for program '{}' has {} labels but {} lowered names",
                    entry.program, entry.labels.size(), entry.lowered_names.size()));
  }
  if (entry.image.empty()) {
    throw InternalError(
        fmt::format("cache entry for program '{}' has an empty image", entry.program));
  }
  if (entry.is_ptx && entry.image.back() != '\0') {
    throw InternalError(fmt::format(
        "cache entry for program '{}' holds PTX without its terminating NUL", entry.program));
  }
}

}  // namespace

KernelModule::KernelModule(const CacheEntry& entry, int device)
    : context_(device), program_(entry.program), arch_(entry.arch), labels_(entry.labels) {
  check_entry(entry);
  const DriverApi& api = driver();
  ContextGuard guard(context_.get());

  std::vector<char> error_log(kJitLogBytes, '\0');
  std::vector<char> info_log(kJitLogBytes, '\0');
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
                            CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES};
  void* values[] = {error_log.data(), reinterpret_cast<void*>(uintptr_t{kJitLogBytes}),
                    info_log.data(), reinterpret_cast<void*>(uintptr_t{kJitLogBytes})};
  const CUresult status = api.cuModuleLoadDataEx(
      &module_, entry.image.data(), static_cast<unsigned>(std::size(options)), options, values);
  jit_log_ = log_text(info_log);
  if (status != CUDA_SUCCESS) {
    module_ = nullptr;
    const std::string errors = log_text(error_log);
    throw CudaError(
        fmt::format("cannot load program '{}' ({} {}, {} kernel{}) on CUDA device {} ({}, sm_{}): "
                    "cuModuleLoadDataEx failed: {} ({}){}{}",
                    program_, arch_, entry.is_ptx ? "PTX" : "cubin", labels_.size(),
                    labels_.size() == 1 ? "" : "s", device, device_name(device),
                    device_arch(device), cu_status_name(status), cu_status_string(status),
                    errors.empty() ? "" : "\nJIT error log:\n", errors));
  }
  try {
    for (size_t i = 0; i < labels_.size(); ++i) {
      CUfunction function = nullptr;
      LIGHTSEQ_CU_CHECK_MSG(
          api.cuModuleGetFunction(&function, module_, entry.lowered_names[i].c_str()),
          fmt::format("program '{}': kernel '{}' (lowered name {}) is not in the image", program_,
                      labels_[i], entry.lowered_names[i]));
      functions_.emplace(labels_[i], function);
    }
  } catch (...) {
    unload();
    throw;
  }
}

KernelModule::~KernelModule() { unload(); }

KernelModule::KernelModule(KernelModule&& other) noexcept
    : context_(std::move(other.context_)),
      module_(std::exchange(other.module_, nullptr)),
      program_(std::move(other.program_)),
      arch_(std::move(other.arch_)),
      labels_(std::move(other.labels_)),
      functions_(std::move(other.functions_)),
      jit_log_(std::move(other.jit_log_)) {}

KernelModule& KernelModule::operator=(KernelModule&& other) noexcept {
  if (this != &other) {
    unload();
    context_ = std::move(other.context_);
    module_ = std::exchange(other.module_, nullptr);
    program_ = std::move(other.program_);
    arch_ = std::move(other.arch_);
    labels_ = std::move(other.labels_);
    functions_ = std::move(other.functions_);
    jit_log_ = std::move(other.jit_log_);
  }
  return *this;
}

void KernelModule::unload() noexcept {
  if (module_ == nullptr) return;
  CUmodule module = std::exchange(module_, nullptr);
  functions_.clear();
  try {
    ContextGuard guard(context_.get());
    const CUresult status = driver().cuModuleUnload(module);
    if (status != CUDA_SUCCESS && status != CUDA_ERROR_DEINITIALIZED) {
      std::fprintf(stderr, "lightseq: unloading program '%s' failed: %s\n", program_.c_str(),
                   cu_status_name(status).c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightseq: unloading program '%s' failed: %s\n", program_.c_str(),
                 e.what());
  }
}

CUfunction KernelModule::function(const std::string& label) const {
  auto it = functions_.find(label);
  if (it == functions_.end()) {
    throw CudaError(fmt::format(
        "program '{}' has no kernel labelled '{}'; its kernels: {}", program_, label,
        labels_.empty() ? std::string("(none)") : fmt::format("{}", fmt::join(labels_, ", "))));
  }
  return it->second;
}

void launch(CUfunction function, Dim3 grid, Dim3 block, size_t smem_bytes, CUstream stream,
            void** args, std::string_view label) {
  const std::string_view name = label.empty() ? std::string_view("(unlabelled kernel)") : label;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0) {
    throw CudaError(fmt::format("launch of {}: empty grid ({}, {}, {}) or block ({}, {}, {})", name,
                                grid.x, grid.y, grid.z, block.x, block.y, block.z));
  }
  const DriverApi& api = driver();
  ContextGuard guard(stream_context(stream));
  if (smem_bytes > kDefaultDynamicSmemLimit) {
    int current = 0;
    LIGHTSEQ_CU_CHECK_MSG(
        api.cuFuncGetAttribute(&current, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, function),
        fmt::format("launch of {}", name));
    if (static_cast<size_t>(current) < smem_bytes) {
      LIGHTSEQ_CU_CHECK_MSG(
          api.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                 static_cast<int>(smem_bytes)),
          fmt::format("launch of {}: {} bytes of dynamic shared memory exceed what the device "
                      "allows this kernel",
                      name, smem_bytes));
      // A kernel past the default limit asks for the most shared memory per SM (the least L1),
      // so that the driver's carveout never leaves room for fewer of its blocks than its
      // registers allow (flash_attn_bwd_dkdv with one key block: two of ~61 KiB). Not measured
      // against the default; kernels within the limit keep the driver's choice.
      LIGHTSEQ_CU_CHECK_MSG(
          api.cuFuncSetAttribute(function, CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                                 CU_SHAREDMEM_CARVEOUT_MAX_SHARED),
          fmt::format("launch of {}: the shared memory carveout", name));
    }
  }
  LIGHTSEQ_CU_CHECK_MSG(
      api.cuLaunchKernel(function, grid.x, grid.y, grid.z, block.x, block.y, block.z,
                         static_cast<unsigned>(smem_bytes), stream, args, nullptr),
      fmt::format("launch of {} with grid ({}, {}, {}), block ({}, {}, {}), {} bytes of dynamic "
                  "shared memory",
                  name, grid.x, grid.y, grid.z, block.x, block.y, block.z, smem_bytes));
}

}  // namespace lightseq
