// grad_lane.h — a layer backward's parameter-gradient steps on a second stream.
//
// In a backward, the steps that only produce parameter gradients (the weight-gradient GEMMs, the
// bias and LayerNorm column sums, and any kernel whose outputs only they read) are off the
// critical path: no later step of the call reads what they write. At the token counts where a
// training step is a chain of small latency-bound kernels (a few SMs busy each), running them on a
// second stream beside the chain that carries the input gradient lets both proceed at once; under
// CUDA graph capture the two streams become two branches of the graph. Which steps, and where
// the main stream waits: compiler/planner/lanes.h.
//
// LIGHTSEQ_GRAD_LANE=1 turns it on (and the step's early updates, runtime/step_enqueue.cpp), =0
// off; the default is kGradLaneByDefault below.
#pragma once

#include <cuda.h>

#include "compiler/planner/lanes.h"

namespace lightseq {

// Whether layer backwards use the second lane and the model-level step updates early:
// LIGHTSEQ_GRAD_LANE=1 / =0, else kGradLaneByDefault. Off by default: on an H100 the step with
// the lane and early updates equals the one-stream step bit for bit but is barely faster (3.17 ->
// 3.02 ms at 512 tokens, none at 4096; RESULTS.md): the branches overlap, but every kernel they
// overlap slows by about as much.
inline constexpr bool kGradLaneByDefault = false;
bool grad_lane_enabled();
// LIGHTSEQ_LANE_GEMM_SMS=N: the GEMMs a layer backward runs on the gradient lane ask cuBLASLt to
// plan for N SMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET), the chain's GEMMs running beside them;
// unset or 0: the whole device. An experiment knob (the eleventh session's profile: beside the
// lane, the chain's GEMMs slowed by a third; planned for 66 SMs the step took ~0.5 % longer on
// an H100, RESULTS.md twelfth session); throws Error for anything but an integer in range.
unsigned lane_gemm_sms();

// Side stream `index` of a main stream in this thread and context, with the events that fork
// and join it: created on first use (in relaxed capture mode, so a first use inside a CUDA graph
// capture is allowed) and kept for the life of the process. kGradLane: a layer backward's
// parameter-gradient steps; kUpdateLane: the model-level step's early optimizer updates
// (runtime/step.cpp), which run beside the following layers' backward and their gradient lanes.
inline constexpr int kGradLane = 0, kUpdateLane = 1;
struct SideLane {
  CUstream stream = nullptr;
  CUevent fork = nullptr, join = nullptr;
};
const SideLane& side_lane(CUstream main, int index = kGradLane);
void fork_lane(const SideLane& lane, CUstream main);  // the side stream waits for `main`
void join_lane(const SideLane& lane, CUstream main);  // `main` waits for the side stream

// Which stream a call's steps go to: `current` (and `lane`: 0 main, 1 side) is switched between
// the main stream (current's value at construction) and the side lane, which forks from the
// main stream when that issued something since the last fork, and joins back on to_main(true)
// and at finish() (or destruction, also when a step throws).
class LaneSwitch {
 public:
  LaneSwitch(CUstream& current, int& lane) : current_(current), lane_(lane), main_(current) {}
  ~LaneSwitch();
  LaneSwitch(const LaneSwitch&) = delete;
  LaneSwitch& operator=(const LaneSwitch&) = delete;
  void to_side();
  void to_main(bool join);
  void finish() { to_main(/*join=*/true); }

 private:
  CUstream& current_;
  int& lane_;
  CUstream main_;
  const SideLane* side_ = nullptr;
  bool main_since_fork_ = true;  // the side lane has not seen the main stream's latest steps
  bool pending_ = false;         // side steps issued since the last join
};

}  // namespace lightseq
