// call_graphs.cpp — see call_graphs.h.
#include "runtime/call_graphs.h"

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq {

CallGraphs::~CallGraphs() {
  for (auto& [key, e] : graphs_) {
    if (e.exec) driver().cuGraphExecDestroy(e.exec);
  }
}

bool CallGraphs::full(size_t call_bytes) const {
  return graphs_.size() >= limits_.max_graphs ||
         stats_.pinned_bytes + call_bytes > limits_.max_total_bytes;
}

void CallGraphs::call(const Key& key, CUstream stream,
                      const std::function<size_t(CUstream, size_t)>& run,
                      const std::function<std::shared_ptr<void>()>& owner) {
  CUstreamCaptureStatus outer = CU_STREAM_CAPTURE_STATUS_NONE;
  LIGHTSEQ_CU_CHECK(driver().cuStreamIsCapturing(stream, &outer));
  bool capture = false, remember = false;
  size_t call_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (enabled_ && outer == CU_STREAM_CAPTURE_STATUS_NONE) {
      auto it = graphs_.find(key);
      if (it != graphs_.end()) {
        LIGHTSEQ_CU_CHECK(driver().cuGraphLaunch(it->second.exec, stream));
        ++stats_.replays;
        return;
      }
      if (!refused_.count(key)) {
        // Seen before with temporaries that fit: captured now. Otherwise the eager run's bytes
        // are remembered (the latest: a call's first run at a shape may take more than later ones,
        // e.g. GEMM workspaces not yet shared).
        auto s = seen_.find(key);
        if (s != seen_.end() && s->second <= limits_.max_call_bytes && !full(s->second)) {
          capture = true;
          call_bytes = s->second;
        } else {
          remember = true;
        }
      }
    }
    if (!capture) ++stats_.eager;
  }
  if (!capture) {
    const size_t used = run(stream, 0);
    if (remember) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (seen_.size() >= kMaxSeen) seen_.clear();
      seen_[key] = used;
    }
    return;
  }
  // Capture on a stream of our own (the caller's may be the legacy default stream, which cannot
  // capture); capturing runs nothing, so the graph is then launched on the caller's stream.
  CUstream c = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&c, CU_STREAM_NON_BLOCKING));
  CUgraph graph = nullptr;
  CUgraphExec exec = nullptr;
  bool ok = driver().cuStreamBeginCapture(c, CU_STREAM_CAPTURE_MODE_RELAXED) == CUDA_SUCCESS;
  if (ok) {
    auto end_capture = [&] {
      const bool ended = driver().cuStreamEndCapture(c, &graph) == CUDA_SUCCESS;
      if (graph && !ended) {
        driver().cuGraphDestroy(graph);
        graph = nullptr;
      }
    };
    try {
      call_bytes = run(c, call_bytes);
    } catch (const Error&) {
      ok = false;  // not capturable (or a real error, which the eager run below raises again)
    } catch (...) {
      end_capture();
      if (graph) driver().cuGraphDestroy(graph);
      driver().cuStreamDestroy(c);
      throw;
    }
    end_capture();
    ok = ok && graph != nullptr && driver().cuGraphInstantiate(&exec, graph, 0) == CUDA_SUCCESS;
    if (graph) driver().cuGraphDestroy(graph);
  }
  driver().cuStreamDestroy(c);
  if (!ok) {
    if (exec) driver().cuGraphExecDestroy(exec);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      refused_.insert(key);
      seen_.erase(key);
      if (++stats_.refused >= kMaxRefused) enabled_ = false;
      ++stats_.eager;
    }
    run(stream, 0);  // an error the call itself raises surfaces here, as it would have eagerly
    return;
  }
  std::shared_ptr<void> keep = owner();
  std::lock_guard<std::mutex> lock(mutex_);
  auto [it, inserted] = graphs_.try_emplace(key);
  if (inserted) {
    it->second = Entry{exec, std::move(keep), call_bytes};
    stats_.pinned_bytes += call_bytes;
    ++stats_.captures;
  } else {  // another thread captured the same call meanwhile
    driver().cuGraphExecDestroy(exec);
    exec = it->second.exec;
  }
  seen_.erase(key);
  LIGHTSEQ_CU_CHECK(driver().cuGraphLaunch(exec, stream));
  ++stats_.replays;
}

CallGraphs::Stats CallGraphs::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void CallGraphs::set_enabled(bool on) {
  std::lock_guard<std::mutex> lock(mutex_);
  enabled_ = on;
}

}  // namespace lightseq
