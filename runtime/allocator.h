// allocator.h — device memory comes from the caller's allocator, stream-ordered.
//
// lightseq never allocates device memory behind the caller's back: every buffer a call needs
// (workspaces, temporaries) comes from the Allocator it is given, on the stream it is given. An
// allocation is usable by work enqueued on that stream after the allocate() call; a deallocation
// takes effect after the work already enqueued on that stream. Both are legal inside CUDA graph
// capture when the allocator is stream-ordered (StreamOrderedAllocator is). PyTorch's caching
// allocator adapts to this interface in the Python binding.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <utility>

#include "runtime/device.h"

namespace lightseq {

class Allocator {
 public:
  virtual ~Allocator() = default;
  // `bytes` of device memory usable in stream order on `stream`; nullptr when bytes == 0.
  // Throws CudaError naming the byte count when the memory cannot be had. Alignment: 256 bytes.
  virtual void* allocate(size_t bytes, CUstream stream) = 0;
  // Returns memory from allocate() (same bytes); the memory may be reused by work enqueued on
  // `stream` after this call. nullptr is ignored.
  virtual void deallocate(void* ptr, size_t bytes, CUstream stream) = 0;
};

// What StreamOrderedAllocator does to the device's default memory pool.
enum class PoolRelease {
  // Sets the pool's release threshold to "never": freed memory stays cached in the pool instead
  // of going back to the OS at every synchronization (the pool then behaves like a caching
  // allocator). This is a property of the device's default pool, shared by the whole process.
  kKeepCached,
  // Leaves the pool's settings alone.
  kPoolDefault,
};

// cuMemAllocAsync / cuMemFreeAsync on the device's default memory pool: stream-ordered,
// graph-capturable, cached by the driver. One per device; the streams passed to it must belong to
// that device. Thread-safe (it holds no mutable state).
class StreamOrderedAllocator final : public Allocator {
 public:
  explicit StreamOrderedAllocator(int device, PoolRelease release = PoolRelease::kKeepCached);
  void* allocate(size_t bytes, CUstream stream) override;
  void deallocate(void* ptr, size_t bytes, CUstream stream) override;
  int device() const { return context_.ordinal(); }

 private:
  PrimaryContext context_;
};

// The high-water mark of the memory in use from the device's default pool
// (StreamOrderedAllocator's: a TrainStep's arenas and every uncaptured step's temporaries), in
// bytes; with `reset`, the mark restarts from what is in use now. For benchmarks' peak-memory
// figures.
size_t pool_peak_bytes(int device, bool reset);
// The same for the memory captured CUDA graphs allocate (a replayed step's temporaries), which the
// driver keeps apart from the pool.
size_t graph_peak_bytes(int device, bool reset);

// Owns one allocation: allocated in the constructor, returned to its allocator on the same stream
// in the destructor (stream-ordered: work already enqueued on that stream may still use it).
// Movable, not copyable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(Allocator& allocator, size_t bytes, CUstream stream);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  CUdeviceptr device_ptr() const { return reinterpret_cast<CUdeviceptr>(ptr_); }
  size_t bytes() const { return bytes_; }
  CUstream stream() const { return stream_; }
  explicit operator bool() const { return ptr_ != nullptr; }

  // Deallocates now (stream-ordered) and leaves the buffer empty. Throws CudaError on failure
  // (the destructor cannot: it reports a failure on stderr instead).
  void reset();

 private:
  Allocator* allocator_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  CUstream stream_ = nullptr;
};

}  // namespace lightseq
