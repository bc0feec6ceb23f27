// temp_placement.h — where a layer call's temporaries go in its one block of memory.
//
// A call's steps run in order on one stream, so two temporaries that no step between them uses
// at the same time may share memory: a tensor's lifetime is the span from the first to the last
// step that touches it (or a view of it), and temporaries whose lifetimes are disjoint may
// overlap in memory. place_by_lifetime() assigns offsets greedily, largest first, each at the
// lowest aligned offset free of every placed tensor whose lifetime meets its own (first fit, as
// activation-memory planners do); the block is the highest end. Steps later in the stream reuse
// memory only after the steps before them have finished, by stream order: no synchronization.
// Pure host code (tests/temp_placement_test.cpp checks the invariant on every example plan).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "compiler/graph/graph.h"
#include "compiler/planner/plan.h"

namespace lightseq {

// Every tensor id a step reads or writes: its GEMM operands and epilogue tensors, or its kernel's
// reads, writes, arguments and tensor-list slots (views as themselves, not their roots).
std::vector<int> step_tensors(const Step& step);

// Per tensor id: the first and last index of a step in `steps` that touches its root tensor (a
// view's parent), or {SIZE_MAX, 0} for a tensor no step touches.
struct Lifetime {
  size_t first = SIZE_MAX, last = 0;
  bool used() const { return first <= last; }
  bool overlaps(const Lifetime& o) const {
    return !used() || !o.used() || (first <= o.last && o.first <= last);
  }
};
std::vector<Lifetime> step_lifetimes(const Graph& g, const std::vector<Step>& steps);

// The root tensor of a view (following view_of), or the tensor itself.
int root_of(const Graph& g, int id);

struct PlacedTensor {
  int64_t bytes = 0;
  Lifetime life;  // an unused lifetime overlaps everything (placed apart from all)
};
// Offsets (multiples of `align`) for `items`, and the block size they need.
struct Placement {
  std::vector<int64_t> offset;
  int64_t total = 0;
};
Placement place_by_lifetime(const std::vector<PlacedTensor>& items, int64_t align);

}  // namespace lightseq
