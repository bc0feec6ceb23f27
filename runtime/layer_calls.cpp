// layer_calls.cpp — see layer_calls.h.
#include "runtime/layer_calls.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "compiler/errors.h"

namespace lightseq {

void* ChunkArena::allocate(size_t bytes, CUstream) {
  if (bytes == 0) return nullptr;
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  total_ += bytes;
  if (base_ == 0 || used_ + bytes > capacity_) {
    const size_t want = std::max(bytes, chunks_ == 0 ? first_chunk_ : size_t{0});
    const auto ptr = reinterpret_cast<uintptr_t>(source_(want));
    if (ptr == 0 || ptr % kAlign != 0) {
      throw Error(
          fmt::format("the allocation callback returned {:#x} for {} bytes; it must return a "
                      "{}-byte aligned device pointer",
                      ptr, want, kAlign));
    }
    base_ = ptr;
    capacity_ = want;
    used_ = 0;
    ++chunks_;
  }
  void* p = reinterpret_cast<void*>(base_ + used_);
  used_ += bytes;
  return p;
}

size_t LayerCalls::issue(const LayerCall& c, CUstream stream, const ChunkSource& chunk,
                         size_t first_chunk) const {
  ChunkArena arena(chunk, first_chunk);
  if (c.backward) {
    exec_.backward_at(c.args, c.saved_arena, c.shape, c.dropout, c.mode, arena, stream);
  } else {
    exec_.forward_at(c.args, c.shape, c.dropout, arena, stream, c.saved_arena);
  }
  return arena.total();
}

size_t LayerCalls::run(const LayerCall& call, CUstream stream, const ChunkSource& chunk) {
  std::atomic<size_t>& hint = hint_[call.backward ? 1 : 0];
  const size_t used = issue(call, stream, chunk, hint.load());
  hint.store(used);  // the latest, not the largest: a first call at a shape may take more
  return used;
}

void LayerCalls::replay(const LayerCall& call, CUstream stream, const ChunkSource& chunk,
                        const std::function<std::shared_ptr<void>()>& owner) {
  graphs_.call(
      layer_call_key(call, stream), stream,
      [&](CUstream s, size_t bytes) {
        // a capture takes exactly what the call's eager run took, in one chunk
        return bytes != 0 ? issue(call, s, chunk, bytes) : run(call, s, chunk);
      },
      owner);
}

CallGraphs::Key layer_call_key(const LayerCall& c, CUstream stream) {
  const DropoutConfig& d = c.dropout;
  CallGraphs::Key key{c.backward ? 1u : 0u,
                      static_cast<uint64_t>(c.shape.batch),
                      static_cast<uint64_t>(c.shape.seq),
                      static_cast<uint64_t>(c.shape.src_seq),
                      d.seed,
                      d.offset,
                      reinterpret_cast<uintptr_t>(d.seed_ptr),
                      reinterpret_cast<uintptr_t>(d.offset_ptr),
                      reinterpret_cast<uintptr_t>(c.saved_arena),
                      c.mode == GradMode::kAccumulate ? 1u : 0u,
                      reinterpret_cast<uintptr_t>(stream)};
  for (double p : {d.attention, d.activation, d.hidden, d.embedding, d.attention_output}) {
    key.push_back(std::bit_cast<uint64_t>(p));
  }
  for (void* a : c.args) key.push_back(reinterpret_cast<uintptr_t>(a));
  return key;
}

}  // namespace lightseq
