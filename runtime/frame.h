// frame.h — the state of one LayerExecutor call (internal to runtime/).
#pragma once

#include <fmt/format.h>

#include <map>
#include <vector>

#include "compiler/errors.h"
#include "runtime/executor.h"

namespace lightseq {

// Everything one forward or backward call needs while it runs.
struct LayerExecutor::Frame {
  Frame(const Graph* g, Precision p, RunShape s, DropoutConfig d, GradMode m, Allocator* a, CUstream st)
      : graph(g), precision(p), shape(s), dropout(d), mode(m), allocator(a), stream(st),
        ptr(g->tensors().size(), nullptr) {}

  const Graph* graph;
  Precision precision;
  RunShape shape;
  DropoutConfig dropout;
  GradMode mode = GradMode::kOverwrite;
  Allocator* allocator;
  CUstream stream;
  std::vector<void*> ptr;                // per tensor id; null = unbound
  std::map<int, DeviceBuffer> owned;     // activations allocated in this call
  std::vector<DeviceBuffer> temps;       // partial-sum workspaces etc.
  // The most recent per-block partial buffer, for the column_sum steps that follow it.
  const float* partials = nullptr;
  int64_t partial_blocks = 0, partial_stride = 0, partial_width = 0;

  int64_t numel(int id) const {
    return shape_numel(graph->tensor(id).shape).eval(shape.batch, shape.seq, shape.src_seq);
  }
  void* at(int id) const {
    void* p = ptr.at(id);
    if (!p) throw InternalError(fmt::format("executor: tensor '{}' has no memory", graph->tensor(id).name));
    return p;
  }
};

}  // namespace lightseq
