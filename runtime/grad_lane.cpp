// grad_lane.cpp — see grad_lane.h.
#include "runtime/grad_lane.h"

#include <fmt/format.h>

#include <charconv>
#include <cstdlib>
#include <map>
#include <string_view>
#include <tuple>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq {

bool grad_lane_enabled() {
  const char* v = std::getenv("LIGHTSEQ_GRAD_LANE");
  if (v && std::string_view(v) == "0") return false;
  if (v && std::string_view(v) == "1") return true;
  return kGradLaneByDefault;
}

namespace {

// Environment variable `name` as an integer in [0, max]; unset or empty: 0. Throws Error naming
// the variable, what it means and how to undo it.
unsigned env_count(const char* name, unsigned max, std::string_view meaning,
                   std::string_view unset) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  unsigned n = 0;
  const std::string_view s(v);
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end != s.data() + s.size() || n > max) {
    throw Error(fmt::format("{}='{}': expected {}, an integer from 0 to {}; unset it to {}", name,
                            s, meaning, max, unset));
  }
  return n;
}

}  // namespace

unsigned lane_gemm_sms() {
  return env_count("LIGHTSEQ_LANE_GEMM_SMS", 4096,
                   "the SMs cuBLASLt plans the side lane's GEMMs for (0: the device's)",
                   "plan them for the whole device");
}

const SideLane& side_lane(CUstream main, int index) {
  CUcontext ctx = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuCtxGetCurrent(&ctx));
  thread_local std::map<std::tuple<CUcontext, CUstream, int>, SideLane> lanes;
  const auto key = std::make_tuple(ctx, main, index);
  if (auto it = lanes.find(key); it != lanes.end()) return it->second;
  // Creating a stream and events is allowed in relaxed capture mode only. A lane is kept only
  // once all three exist.
  CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_RELAXED;
  LIGHTSEQ_CU_CHECK(driver().cuThreadExchangeStreamCaptureMode(&mode));
  SideLane l;
  CUresult r = driver().cuStreamCreate(&l.stream, CU_STREAM_NON_BLOCKING);
  if (r == CUDA_SUCCESS) r = driver().cuEventCreate(&l.fork, CU_EVENT_DISABLE_TIMING);
  if (r == CUDA_SUCCESS) r = driver().cuEventCreate(&l.join, CU_EVENT_DISABLE_TIMING);
  driver().cuThreadExchangeStreamCaptureMode(&mode);
  if (r != CUDA_SUCCESS) {
    if (l.fork) driver().cuEventDestroy(l.fork);
    if (l.stream) driver().cuStreamDestroy(l.stream);
    LIGHTSEQ_CU_CHECK(r);
  }
  return lanes.emplace(key, l).first->second;
}

void fork_lane(const SideLane& lane, CUstream main) {
  LIGHTSEQ_CU_CHECK(driver().cuEventRecord(lane.fork, main));
  LIGHTSEQ_CU_CHECK(driver().cuStreamWaitEvent(lane.stream, lane.fork, 0));
}

void join_lane(const SideLane& lane, CUstream main) {
  LIGHTSEQ_CU_CHECK(driver().cuEventRecord(lane.join, lane.stream));
  LIGHTSEQ_CU_CHECK(driver().cuStreamWaitEvent(main, lane.join, 0));
}

LaneSwitch::~LaneSwitch() {
  try {
    finish();
  } catch (...) {  // already unwinding from the step that threw
  }
}

void LaneSwitch::to_side() {
  if (!side_) side_ = &side_lane(main_);
  if (main_since_fork_) fork_lane(*side_, main_);
  main_since_fork_ = false;
  pending_ = true;
  current_ = side_->stream;
  lane_ = 1;
}

void LaneSwitch::to_main(bool join) {
  if (join && pending_) {
    join_lane(*side_, main_);
    pending_ = false;
  }
  main_since_fork_ = true;
  current_ = main_;
  lane_ = 0;
}

}  // namespace lightseq
