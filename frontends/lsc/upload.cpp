#include "frontends/lsc/upload.h"

#include <fmt/format.h>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"

namespace lightseq::lsc {

OwnedStream::OwnedStream() {
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&s_, CU_STREAM_NON_BLOCKING));
}

OwnedStream::~OwnedStream() {
  driver().cuStreamSynchronize(s_);  // a destructor must not throw; a failure showed earlier
  driver().cuStreamDestroy(s_);
}

BatchUploader::BatchUploader(Allocator& allocator, CUstream stream, int64_t max_elements)
    : allocator_(allocator), stream_(stream), max_elements_(max_elements) {
  try {
    for (Slot& s : slots_) {
      void* p = nullptr;
      LIGHTSEQ_CU_CHECK_MSG(driver().cuMemHostAlloc(&p, max_elements * sizeof(int64_t), 0),
                            fmt::format("{} bytes of pinned host memory for batches",
                                        max_elements * sizeof(int64_t)));
      s.host = static_cast<int64_t*>(p);
      LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&s.copied, CU_EVENT_DISABLE_TIMING));
    }
  } catch (...) {
    release();
    throw;
  }
}

BatchUploader::~BatchUploader() { release(); }

void BatchUploader::release() noexcept {
  // must not throw (a destructor): a failing call here showed as an error earlier
  for (Slot& s : slots_) {
    if (s.copied) {
      if (s.pending) driver().cuEventSynchronize(s.copied);
      driver().cuEventDestroy(s.copied);
      s.copied = nullptr;
    }
    if (s.host) driver().cuMemFreeHost(s.host);
    s.host = nullptr;
  }
}

BatchUploader::Uploaded BatchUploader::upload(const std::vector<Example>& examples,
                                              std::span<const uint32_t> rows,
                                              const TokenRules& rules) {
  const BatchShape shape = batch_shape(examples, rows);
  if (shape.elements() > max_elements_) {
    throw InternalError(fmt::format("BatchUploader: a batch of {} elements, room for {}",
                                    shape.elements(), max_elements_));
  }
  Slot& slot = slots_[next_];
  next_ = (next_ + 1) % kSlots;
  // the copy from this slot kSlots batches ago must have read it
  if (slot.pending) LIGHTSEQ_CU_CHECK(driver().cuEventSynchronize(slot.copied));
  Uploaded up;
  up.targets =
      pack_batch(examples, rows, rules, {slot.host, static_cast<size_t>(shape.elements())});
  auto it = device_.find(shape);
  if (it == device_.end()) {
    it = device_
             .emplace(shape, DeviceBuffer(allocator_, shape.elements() * sizeof(int64_t), stream_))
             .first;
  }
  const DeviceBuffer& dev = it->second;
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(dev.device_ptr(), slot.host,
                                               shape.elements() * sizeof(int64_t), stream_));
  LIGHTSEQ_CU_CHECK(driver().cuEventRecord(slot.copied, stream_));
  slot.pending = true;
  const int64_t* base = dev.as<int64_t>();
  up.batch.src_tokens = shape.src_len > 0 ? base : nullptr;
  up.batch.tokens = base + shape.batch * shape.src_len;
  up.batch.targets = up.batch.tokens + shape.batch * shape.len;
  up.batch.batch = shape.batch;
  up.batch.src_len = shape.src_len;
  up.batch.len = shape.len;
  return up;
}

void reset_memory_peaks(int device) {
  pool_peak_bytes(device, /*reset=*/true);
  graph_peak_bytes(device, /*reset=*/true);
}

MemoryFigures memory_figures(int device) {
  MemoryFigures m;
  m.pool_peak = pool_peak_bytes(device, /*reset=*/false);
  m.graph_peak = graph_peak_bytes(device, /*reset=*/false);
  size_t free = 0, total = 0;
  LIGHTSEQ_CU_CHECK(driver().cuMemGetInfo(&free, &total));
  m.device_used = total - free;
  m.device_total = total;
  return m;
}

}  // namespace lightseq::lsc
