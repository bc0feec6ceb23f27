// lanes.h — which of a backward's steps may run on a second stream (the parameter-gradient
// lane), and where the main stream must wait for it: derived from the plan's reads and writes.
//
// In a backward, the steps that only produce parameter gradients (the weight-gradient GEMMs, the
// bias and LayerNorm column sums, and any kernel whose outputs only they read) are off the
// critical path: no later step of the call reads what they write. The runtime runs them on a
// second stream beside the chain that carries the input gradient (runtime/grad_lane.h); `lsc
// plan` marks them.
//
// The schedule is derived from the plan's reads and writes (schedule_lanes):
//   side[i]         step i writes only parameter gradients, or temporaries that only side steps
//                   read after it (decided from the last step back);
//   fork            before a side step, when a main step was issued since the last fork, the side
//                   stream waits for the main one (an event), so it sees everything before;
//   join_before[i]  main step i touches a tensor that a side step since the last join writes, or
//                   writes one such a step reads, or is the kJoinWindow-th main step since the
//                   oldest side step not yet joined: the main stream first waits for the side one.
// A call ends with a join, so what the caller sees after it is complete, as before. Every tensor
// a side step touches lives, for temporary placement, until the step before the next join
// (extend_side_lifetimes): no later temporary takes its memory while the side stream may use it,
// and the window bounds what the lane adds to a call's temporaries.
#pragma once

#include <cstdint>
#include <vector>

#include "compiler/graph/graph.h"
#include "compiler/planner/plan.h"
#include "compiler/planner/temp_placement.h"

namespace lightseq {

// The tensors a step writes, and those it reads (a GEMM's D also read when it accumulates).
std::vector<int> step_writes(const Step& step);
std::vector<int> step_reads(const Step& step);

// How many main steps a side step may run beside before the chain waits for it (a guess until
// measured: 6 lets an encoder layer's FFN gradients finish beside the FFN and the first attention
// steps, and frees their temporaries before the attention backward's score-sized ones).
inline constexpr size_t kJoinWindow = 6;

struct LaneSchedule {
  std::vector<uint8_t> side;         // per step: runs on the side stream
  std::vector<uint8_t> join_before;  // per step: the main stream waits for the side one first
  bool any_side() const;
};

// The two-lane schedule of `steps` (a backward). No step is on the side lane when nothing is
// worth moving: no parameter gradient is written, or every step would be on the side lane (an
// embedding's backward: nothing to run beside).
LaneSchedule schedule_lanes(const Graph& g, const std::vector<Step>& steps);

// Lifetimes (step_lifetimes of the same steps) with every tensor a side step touches kept to the
// step before the join that follows it (the call's last step if none does).
void extend_side_lifetimes(const Graph& g, const std::vector<Step>& steps,
                           const LaneSchedule& lanes, std::vector<Lifetime>& lives);

}  // namespace lightseq
