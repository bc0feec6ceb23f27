#include "runtime/allocator.h"

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <limits>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq {

StreamOrderedAllocator::StreamOrderedAllocator(int device, PoolRelease release) : context_(device) {
  if (release == PoolRelease::kKeepCached) {
    CUmemoryPool pool = nullptr;
    LIGHTSEQ_CU_CHECK(driver().cuDeviceGetDefaultMemPool(&pool, cu_device(device)));
    cuuint64_t threshold = std::numeric_limits<cuuint64_t>::max();
    LIGHTSEQ_CU_CHECK(
        driver().cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold));
  }
}

size_t pool_peak_bytes(int device, bool reset) {
  PrimaryContext ctx(device);
  CUmemoryPool pool = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuDeviceGetDefaultMemPool(&pool, cu_device(device)));
  cuuint64_t high = 0;
  LIGHTSEQ_CU_CHECK(driver().cuMemPoolGetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &high));
  if (reset) {
    cuuint64_t zero = 0;  // resets the mark to the memory in use now
    LIGHTSEQ_CU_CHECK(driver().cuMemPoolSetAttribute(pool, CU_MEMPOOL_ATTR_USED_MEM_HIGH, &zero));
  }
  return static_cast<size_t>(high);
}

size_t graph_peak_bytes(int device, bool reset) {
  PrimaryContext ctx(device);
  cuuint64_t high = 0;
  LIGHTSEQ_CU_CHECK(driver().cuDeviceGetGraphMemAttribute(cu_device(device),
                                                          CU_GRAPH_MEM_ATTR_USED_MEM_HIGH, &high));
  if (reset) {
    cuuint64_t zero = 0;
    LIGHTSEQ_CU_CHECK(driver().cuDeviceSetGraphMemAttribute(
        cu_device(device), CU_GRAPH_MEM_ATTR_USED_MEM_HIGH, &zero));
  }
  return static_cast<size_t>(high);
}

void* StreamOrderedAllocator::allocate(size_t bytes, CUstream stream) {
  if (bytes == 0) return nullptr;
  ContextGuard guard(context_.get());
  CUdeviceptr ptr = 0;
  LIGHTSEQ_CU_CHECK_MSG(driver().cuMemAllocAsync(&ptr, bytes, stream),
                        fmt::format("cannot allocate {} bytes ({:.1f} MiB) on CUDA device {}",
                                    bytes, double(bytes) / (1 << 20), device()));
  if (ptr % 256 != 0) {
    throw InternalError(
        fmt::format("cuMemAllocAsync returned {:#x} for {} bytes: not 256-byte "
                    "aligned as lightseq's Allocator contract requires",
                    ptr, bytes));
  }
  return reinterpret_cast<void*>(ptr);
}

void StreamOrderedAllocator::deallocate(void* ptr, size_t bytes, CUstream stream) {
  if (ptr == nullptr) return;
  ContextGuard guard(context_.get());
  LIGHTSEQ_CU_CHECK_MSG(
      driver().cuMemFreeAsync(reinterpret_cast<CUdeviceptr>(ptr), stream),
      fmt::format("freeing {} bytes at {} on CUDA device {}", bytes, ptr, device()));
}

// --- DeviceBuffer ------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(Allocator& allocator, size_t bytes, CUstream stream)
    : allocator_(&allocator),
      ptr_(allocator.allocate(bytes, stream)),
      bytes_(bytes),
      stream_(stream) {}

DeviceBuffer::~DeviceBuffer() {
  const size_t bytes = bytes_;
  try {
    reset();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lightseq: DeviceBuffer of %zu bytes could not be freed: %s\n", bytes,
                 e.what());
  }
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : allocator_(std::exchange(other.allocator_, nullptr)),
      ptr_(std::exchange(other.ptr_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      stream_(std::exchange(other.stream_, nullptr)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    DeviceBuffer old(std::move(*this));  // freed when `old` goes out of scope
    allocator_ = std::exchange(other.allocator_, nullptr);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    stream_ = std::exchange(other.stream_, nullptr);
  }
  return *this;
}

void DeviceBuffer::reset() {
  if (ptr_ == nullptr) return;
  void* ptr = std::exchange(ptr_, nullptr);
  const size_t bytes = std::exchange(bytes_, 0);
  allocator_->deallocate(ptr, bytes, stream_);
}

}  // namespace lightseq
