// call_graphs.h — replays a repeated call's launches from a CUDA graph.
//
// A layer's forward or backward issues ~20 kernels and ~10 cuBLASLt GEMMs; issuing them costs the
// host ~0.2 ms per direction (cuBLASLt ~7 µs a GEMM, ~3.5 µs a launch), more than the GPU needs
// for a small layer. In a training loop the same call recurs with the same pointers (the weights,
// and the activations PyTorch's caching allocator hands out again each iteration), so its
// launches can be captured once and replayed with one cuGraphLaunch.
//
// A call is identified by a key the caller builds from everything its launches depend on: the
// direction, every pointer, the shape, the dropout probabilities and seed/offset address, the
// gradient mode and the stream. The first time a key is seen the call runs eagerly; the second
// time it is captured (on a private stream, in relaxed mode: the caller's allocation callback may
// allocate) and replayed, and from then on replayed. The memory the call's temporaries live in
// (allocated by the call itself) must outlive the graph: the caller hands over an owner of it
// when a capture happens, and the cache holds it as long as the graph.
//
// Limits keep the pinned memory bounded: a call whose temporaries (as its latest eager run
// measured them) exceed max_call_bytes runs eagerly, and once max_graphs graphs or max_total_bytes
// of temporaries are held, new keys run eagerly (graphs are never evicted: one may still be
// running). A call on a stream that is being captured (an outer CUDA graph: torch.cuda.graph,
// torch.compile's cudagraphs) runs eagerly, into that capture. A capture that fails runs the call
// eagerly and never retries that key. Thread-safe (no lock is held while `run` runs: it may call
// back into an interpreter). Not for calls whose launches read host state that changes between
// calls with the same key.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

namespace lightseq {

class CallGraphs {
 public:
  struct Limits {
    size_t max_graphs = 64;
    size_t max_call_bytes = size_t{32} << 20;
    size_t max_total_bytes = size_t{256} << 20;
  };
  struct Stats {
    int64_t eager = 0, captures = 0, replays = 0, refused = 0;
    size_t pinned_bytes = 0;
  };
  using Key = std::vector<uint64_t>;

  CallGraphs() = default;
  explicit CallGraphs(Limits limits) : limits_(limits) {}
  ~CallGraphs();
  CallGraphs(const CallGraphs&) = delete;
  CallGraphs& operator=(const CallGraphs&) = delete;

  // Runs the call `key` on `stream`: run(s, bytes) issues its launches on stream s (the caller's,
  // or the capture stream), its temporaries allocated as one block of `bytes` where that is not 0
  // (a capture: what this key's eager call used), and returns the bytes it used; owner(): what
  // keeps those temporaries alive, asked for after a capture. lightseq::Error from a capture makes
  // the key run eagerly from then on (kMaxRefused of them turn capturing off); any other
  // exception (the interpreter's, from an allocation callback) propagates.
  void call(const Key& key, CUstream stream, const std::function<size_t(CUstream, size_t)>& run,
            const std::function<std::shared_ptr<void>()>& owner);

  Stats stats() const;
  void set_enabled(bool on);

 private:
  struct Entry {
    CUgraphExec exec = nullptr;
    std::shared_ptr<void> owner;
    size_t bytes = 0;
  };
  bool full(size_t call_bytes) const;

  Limits limits_;
  bool enabled_ = true;
  mutable std::mutex mutex_;
  std::map<Key, Entry> graphs_;
  std::map<Key, size_t> seen_;  // keys run once, with the bytes they used (forgotten past kMaxSeen)
  std::set<Key> refused_;
  Stats stats_;
  static constexpr size_t kMaxSeen = 4096;
  static constexpr int64_t kMaxRefused = 8;
};

}  // namespace lightseq
