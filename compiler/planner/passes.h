// passes.h — state shared by the planner's passes (internal to compiler/planner).
#pragma once

#include <map>
#include <optional>
#include <set>
#include <vector>

#include "compiler/planner/plan.h"

namespace lightseq::planner {

struct State {
  Graph& g;  // the planner adds scratch tensors
  Precision precision;
  std::vector<int> claimed;         // per op: 1 once a step covers it
  std::set<int> internal;           // tensors a fused group never materializes
  std::map<int, int> epilogue_aux;  // pre-bias GEMM output → aux tensor of its bias+act epilogue
  std::map<int, int> deferred_bgrad;  // tensor → bias_grad op waiting for a GEMM reading it as A^T
  int begin = 0, end = 0;             // op range of the direction being planned
  std::vector<Step>* out = nullptr;

  State(Graph& graph, Precision p) : g(graph), precision(p), claimed(graph.ops().size(), 0) {}
  const Op& op(int i) const { return g.ops()[i]; }
  // Unclaimed consumers of `tensor` within this direction.
  std::vector<int> live_consumers(int tensor) const;
};

// Pass 1: called for each unclaimed GEMM; emits its GemmStep.
void plan_gemm(State& s, int op);

// Pass 2: called for each unclaimed non-GEMM op; emits the kernel step(s) of the longest fusion
// rule that matches at `op`, or returns false if none does.
bool plan_kernel(State& s, int op);

// The plan's calling convention: LayerPlan::used and LayerPlan::manifest, from its steps.
void build_manifest(LayerPlan& lp);
// An "auto" layer's two plans (LayerPlan::fused) take one calling convention: each direction's
// manifest becomes the union of both, ordered by tensor id as build_manifest orders (the lowering's
// inputs, parameters and gradients keep their ids in both graphs). A plan is then given, and
// ignores, what only the other reads: the unfused backward the padding masks the fused one
// re-reads. InternalError when one tensor id names different entries.
void share_manifests(LayerPlan& a, LayerPlan& b);

// Would a fusion rule match a chain starting at `op`? (Used by pass 1 to leave a bias to a
// kernel rather than a GEMM epilogue.)
bool kernel_rule_matches(const State& s, int op);

}  // namespace lightseq::planner
