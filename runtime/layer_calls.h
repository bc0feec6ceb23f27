// layer_calls.h — a layer called by position (LayerExecutor::forward_at / backward_at), eagerly or
// replayed from a CUDA graph once the same call recurs (runtime/call_graphs.h). What the front
// ends call a layer through: the Python binding, `lsc bench`, a C++ training loop.
//
// A call's temporaries come from a ChunkSource, bump-allocated (nothing is handed back during the
// call): the first chunk is as large as the previous call of the same direction took in all, so a
// steady loop asks for one chunk per call. A captured call asks for exactly what its eager run
// used, and that memory must then live as long as the graph: the caller's `owner` keeps it.
//
//   LayerCalls calls(model->layer("layers[0]"));
//   std::vector<void*> args = ...;  // the forward manifest's pointers, in order
//   calls.replay({.args = args, .shape = {B, T, 0}, .dropout = d, .saved_arena = saved}, stream,
//                chunk, owner);
#pragma once

#include <cuda.h>

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>

#include "runtime/allocator.h"
#include "runtime/call_graphs.h"
#include "runtime/executor.h"

namespace lightseq {

// One call of a layer: its forward (backward = false) or its backward, the manifest's pointers in
// its order (LayerExecutor::manifest).
struct LayerCall {
  bool backward = false;
  std::span<void* const> args;
  RunShape shape;
  DropoutConfig dropout;
  void* saved_arena = nullptr;           // saved_arena_bytes(shape) bytes (see forward_at)
  GradMode mode = GradMode::kOverwrite;  // the backward's parameter gradients: `=` or `+=`
};

// `bytes` of device memory, 256-byte aligned, usable in the call's stream order and alive at least
// until the call returns (for a captured call: as long as the owner keeps it).
using ChunkSource = std::function<void*(size_t bytes)>;

// An Allocator that serves one call's temporaries from chunks of a ChunkSource, one after another
// (deallocate does nothing: the chunks go when their owner drops them). The first chunk is at
// least `first_chunk` bytes. Throws Error when the source returns a null or misaligned pointer.
class ChunkArena final : public Allocator {
 public:
  static constexpr size_t kAlign = 256;
  ChunkArena(const ChunkSource& source, size_t first_chunk)
      : source_(source), first_chunk_(first_chunk) {}
  void* allocate(size_t bytes, CUstream stream) override;
  void deallocate(void*, size_t, CUstream) override {}
  size_t total() const { return total_; }  // bytes handed out so far (rounded to kAlign)

 private:
  const ChunkSource& source_;
  size_t first_chunk_;
  uintptr_t base_ = 0;
  size_t capacity_ = 0, used_ = 0, total_ = 0;
  int chunks_ = 0;
};

// The calls of one layer (thread-safe; the executor must outlive it).
class LayerCalls {
 public:
  explicit LayerCalls(const LayerExecutor& exec, CallGraphs::Limits limits = {})
      : exec_(exec), graphs_(limits) {}

  const LayerExecutor& executor() const { return exec_; }

  // Issues the call's launches on `stream`; returns the bytes of temporaries it took.
  size_t run(const LayerCall& call, CUstream stream, const ChunkSource& chunk);

  // The same, replayed from a CUDA graph when a call with the same key (layer_call_key) recurs:
  // the first time eager, the second captured, then one graph launch. owner(): what keeps the
  // chunks of a captured call alive, asked for once right after its capture. The dropout must then
  // come from device memory (DropoutConfig::seed_ptr / offset_ptr) for a replay to draw afresh.
  void replay(const LayerCall& call, CUstream stream, const ChunkSource& chunk,
              const std::function<std::shared_ptr<void>()>& owner);

  CallGraphs::Stats graph_stats() const { return graphs_.stats(); }
  // Whether replay() captures and replays (captured graphs stay until this object goes).
  void set_graphs(bool on) { graphs_.set_enabled(on); }

 private:
  // One call; `first_chunk` bytes at least in the first chunk. Returns the bytes it took.
  size_t issue(const LayerCall& call, CUstream stream, const ChunkSource& chunk,
               size_t first_chunk) const;

  const LayerExecutor& exec_;
  std::atomic<size_t> hint_[2] = {0, 0};  // per direction: what the latest eager call took
  CallGraphs graphs_;
};

// Everything a call's launches depend on (direction, shape, every pointer, the dropout
// probabilities, seed/offset values and addresses, gradient mode, stream): equal keys issue equal
// launches, so a graph captured for one replays the other.
CallGraphs::Key layer_call_key(const LayerCall& call, CUstream stream);

}  // namespace lightseq
