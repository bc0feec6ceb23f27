// launch.h — the one generic kernel launch path: a plan's KernelStep, resolved once per run-time
// shape into a packed argument buffer (by walking the kernel's signature), then patched with the
// call's pointers, dropout stream and gradient mode and launched. No kernel is named here.
#pragma once

#include <cuda.h>

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "compiler/planner/plan.h"
#include "runtime/executor.h"
#include "runtime/module.h"

namespace lightseq {

// What resolving a direction's steps learns about its kernel-sized scratch tensors (per tensor
// id; rows < 0 while unknown), and what later steps' scalars read from it (ScalarArg::kRowsOf).
struct ScratchExtents {
  std::vector<sig::Extent> of;  // elements, per tensor id
};

// The device chunk tables of one tensor-list parameter, one per set of slot pointers seen (a
// model-level step binds the same arenas every call: one table, built on first use). Built with a
// synchronous copy, so the first call with new pointers must not be inside a CUDA graph capture.
class ChunkTables {
 public:
  ChunkTables() = default;
  ChunkTables(const ChunkTables&) = delete;
  ChunkTables& operator=(const ChunkTables&) = delete;
  ~ChunkTables();
  // The table for `bases` (one pointer per slot, null for an unbound one): `n_chunks` entries of
  // the slot pointers advanced by chunk_elems elements each, then the chunk's element count.
  CUdeviceptr get(const std::vector<void*>& bases, const std::vector<int>& slot_bytes,
                  int64_t numel, int64_t chunk_elems, CUstream stream, const std::string& label);
  // Distinct pointer sets kept per parameter and shape: a model-level step with early updates
  // binds one per layer instance (a table is a few KB).
  static constexpr size_t kMaxTables = 1024;

 private:
  std::mutex mu_;
  std::vector<std::pair<std::vector<void*>, CUdeviceptr>> tables_;
};

// One kernel launch with everything that does not change between calls of the same shape.
struct ResolvedLaunch {
  CUfunction fn = nullptr;
  const KernelStep* step = nullptr;
  Dim3 grid, block;
  unsigned smem_bytes = 0;
  bool empty = false;  // a zero-sized grid: nothing to launch
  alignas(16) std::array<unsigned char, 512> storage{};
  std::vector<uint16_t> offsets;  // per parameter, into storage
  struct Pointer {
    uint16_t offset;
    int tensor;
    bool nullable = false;  // the kernel takes null (an optional input the caller left out)
  };
  std::vector<Pointer> pointers;  // tensor parameters, patched from the call's frame
  struct Dropout {
    uint16_t offset;
    int site;
    DropoutKind kind;
  };
  std::vector<Dropout> dropouts;     // DropoutArgs, from the call's seed/offset and probabilities
  std::vector<uint16_t> grad_modes;  // Accumulate, from the call's GradMode
  std::vector<int> zero_first;       // scratch tensors the kernel expects zeroed
  struct List {
    uint16_t offset;
    std::vector<int> slots;       // tensor per slot (-1: null)
    std::vector<int> slot_bytes;  // element bytes per slot
    int64_t numel = 0, chunk_elems = 0;
    std::shared_ptr<ChunkTables> tables;
  };
  std::vector<List> lists;  // tensor lists: chunk tables from the call's slot pointers
};

// Resolves `step` for `shape`: template values and scalars into the signature's launch and
// scratch-extent functions, arguments packed. Records the extents of the scratch tensors it
// sizes in `scratch`. Throws InternalError for a plan that disagrees with the signature.
ResolvedLaunch resolve_launch(const KernelStep& step, CUfunction fn, const Graph& graph,
                              const RunShape& shape, ScratchExtents& scratch);

// Enqueues a resolved launch with one call's pointers (frame.ptr), dropout and gradient mode.
void enqueue(const ResolvedLaunch& launch, const LayerExecutor::Frame& frame);

// The probability of a dropout site kind in a call's configuration.
double dropout_probability(const DropoutConfig& d, DropoutKind kind);

}  // namespace lightseq
