// upload.h — lsc's GPU plumbing for whole-model steps: a stream it owns, batches packed into
// pinned host memory and copied to the device without synchronizing, and the device's memory
// figures.
#pragma once

#include <cuda.h>

#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "frontends/lsc/batcher.h"
#include "runtime/allocator.h"
#include "runtime/step.h"

namespace lightseq::lsc {

// A non-blocking stream, synchronized and destroyed after everything allocated on it is freed
// (declare it before the allocator and the buffers).
class OwnedStream {
 public:
  OwnedStream();
  ~OwnedStream();
  OwnedStream(const OwnedStream&) = delete;
  OwnedStream& operator=(const OwnedStream&) = delete;
  operator CUstream() const { return s_; }

 private:
  CUstream s_ = nullptr;
};

// Packs batches (pack_batch) into a ring of pinned host buffers and copies them to the device
// with cuMemcpyHtoDAsync on the stream: the host waits only when it is kSlots batches ahead of the
// copies (a pageable copy would wait for the whole stream at every step). Each shape gets one
// device buffer, allocated on its first batch and reused; the copy into it is ordered after the
// step that read it last, on the same stream. Needs the device's context current.
class BatchUploader {
 public:
  static constexpr int kSlots = 4;
  // max_elements: the largest BatchShape::elements() to come (3 × the token budget bounds it).
  BatchUploader(Allocator& allocator, CUstream stream, int64_t max_elements);
  ~BatchUploader();
  BatchUploader(const BatchUploader&) = delete;
  BatchUploader& operator=(const BatchUploader&) = delete;

  struct Uploaded {
    StepBatch batch;
    int64_t targets = 0;  // the targets that count (not ignore_index)
  };
  Uploaded upload(const std::vector<Example>& examples, std::span<const uint32_t> rows,
                  const TokenRules& rules);
  // Distinct shapes seen (each is a TrainStep bucket: one eager run, one capture).
  int64_t shapes() const { return static_cast<int64_t>(device_.size()); }

 private:
  struct Slot {
    int64_t* host = nullptr;
    CUevent copied = nullptr;
    bool pending = false;
  };
  void release() noexcept;

  Allocator& allocator_;
  CUstream stream_;
  int64_t max_elements_;
  std::array<Slot, kSlots> slots_{};
  int next_ = 0;
  std::map<BatchShape, DeviceBuffer> device_;
};

// Device memory figures for `lsc bench --step` and `lsc train`: the default pool's high-water mark
// (pool_peak_bytes, reset by reset_memory_peaks), the graph memory's (memory that captured graphs
// allocate, if any), and the device's used memory (cuMemGetInfo: the context, cuBLAS, cached pool
// memory and every other process included). Needs the device's context current.
struct MemoryFigures {
  uint64_t pool_peak = 0;   // the default memory pool (StreamOrderedAllocator, TrainStep arenas)
  uint64_t graph_peak = 0;  // memory allocated inside captured graphs
  uint64_t device_used = 0, device_total = 0;
};
void reset_memory_peaks(int device);
MemoryFigures memory_figures(int device);

}  // namespace lightseq::lsc
