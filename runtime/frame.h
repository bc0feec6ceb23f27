// frame.h — the state of one LayerExecutor call (internal to runtime/).
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <map>
#include <vector>

#include "compiler/errors.h"
#include "runtime/executor.h"
#include "runtime/launch.h"

namespace lightseq {

// What a layer's plan resolves to at one run-time shape (LayerExecutor::resolve): every kernel
// launch packed, every tensor's size (kernel-sized scratch included). Computed once per shape.
struct LayerExecutor::ShapePlan {
  std::vector<ResolvedLaunch> forward, backward;  // parallel to the plan's steps (GEMMs: unused)
  ScratchExtents scratch;
  std::vector<int64_t> tensor_bytes;  // per tensor id
  // The most GEMM workspace any GEMM at this shape has taken so far (GemmRunner::run): what a
  // call allocates once for all its GEMMs.
  mutable std::atomic<size_t> gemm_workspace{0};
};

// Everything one forward or backward call needs while it runs.
struct LayerExecutor::Frame {
  Frame(const Graph* g, const ShapePlan* sp, Precision p, RunShape s, DropoutConfig d, GradMode m,
        Allocator* a, CUstream st)
      : graph(g),
        shape_plan(sp),
        precision(p),
        shape(s),
        dropout(d),
        mode(m),
        allocator(a),
        stream(st),
        ptr(g->tensors().size(), nullptr) {}

  const Graph* graph;
  const ShapePlan* shape_plan;
  Precision precision;
  RunShape shape;
  DropoutConfig dropout;
  GradMode mode = GradMode::kOverwrite;
  Allocator* allocator;
  CUstream stream;         // where the current step is issued: the caller's, or the side lane's
  int lane = 0;            // 0: the main stream, 1: the side lane
  std::vector<void*> ptr;  // per tensor id; null = unbound
  std::map<int, DeviceBuffer> owned;  // zero padding masks made for this call
  std::vector<DeviceBuffer> blocks;   // this call's temporaries (one block) and GEMM workspace
  // Shared by the GEMMs of one lane (they run in its stream's order), one per lane.
  void* gemm_workspace[2] = {nullptr, nullptr};
  size_t gemm_workspace_bytes[2] = {0, 0};

  int64_t numel(int id) const {
    return shape_numel(graph->tensor(id).shape).eval(shape.batch, shape.seq, shape.src_seq);
  }
  int64_t bytes(int id) const { return shape_plan->tensor_bytes.at(id); }
  void* at(int id) const {
    void* p = ptr.at(id);
    if (!p)
      throw InternalError(
          fmt::format("executor: tensor '{}' has no memory", graph->tensor(id).name));
    return p;
  }
};

}  // namespace lightseq
