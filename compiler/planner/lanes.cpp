// lanes.cpp — see lanes.h.
#include "compiler/planner/lanes.h"

#include <algorithm>
#include <set>

namespace lightseq {

std::vector<int> step_writes(const Step& step) {
  if (const auto* gm = std::get_if<GemmStep>(&step)) {
    std::vector<int> out{gm->d};
    if (gm->bias_grad >= 0) out.push_back(gm->bias_grad);
    if (gm->aux >= 0 && writes_aux(gm->epilogue)) out.push_back(gm->aux);
    return out;
  }
  return std::get<KernelStep>(step).writes;
}

std::vector<int> step_reads(const Step& step) {
  std::vector<int> out;
  if (const auto* gm = std::get_if<GemmStep>(&step)) {
    for (int id : {gm->a, gm->b, gm->c, gm->bias, writes_aux(gm->epilogue) ? -1 : gm->aux})
      if (id >= 0) out.push_back(id);
    out.push_back(gm->d);  // read when it accumulates (the step's own flag or the call's mode)
    return out;
  }
  // A kernel's reads, and whatever else it is bound to that it does not write (tensor lists).
  const auto& k = std::get<KernelStep>(step);
  out = k.reads;
  for (int id : step_tensors(step)) {
    if (std::find(k.writes.begin(), k.writes.end(), id) == k.writes.end()) out.push_back(id);
  }
  return out;
}

bool LaneSchedule::any_side() const {
  return std::any_of(side.begin(), side.end(), [](uint8_t s) { return s != 0; });
}

namespace {

std::set<int> roots(const Graph& g, const std::vector<int>& ids) {
  std::set<int> out;
  for (int id : ids)
    if (id >= 0) out.insert(root_of(g, id));
  return out;
}

bool meets(const std::set<int>& a, const std::set<int>& b) {
  return std::any_of(a.begin(), a.end(), [&](int id) { return b.count(id) != 0; });
}

}  // namespace

LaneSchedule schedule_lanes(const Graph& g, const std::vector<Step>& steps) {
  const size_t n = steps.size();
  LaneSchedule out;
  out.side.assign(n, 0);
  out.join_before.assign(n, 0);
  std::vector<std::set<int>> reads(n), writes(n);
  for (size_t i = 0; i < n; ++i) {
    writes[i] = roots(g, step_writes(steps[i]));
    reads[i] = roots(g, step_reads(steps[i]));
  }
  // From the last step back: a step goes to the side lane when each tensor it writes is a
  // parameter gradient, or a temporary whose value (up to its next writer) only side steps read.
  for (size_t i = n; i-- > 0;) {
    if (writes[i].empty()) continue;
    bool side = true;
    for (int w : writes[i]) {
      const TensorRole role = g.tensor(w).role;
      if (role == TensorRole::kParamGrad) continue;
      if (given_by_caller(role)) {
        side = false;
        break;
      }
      for (size_t j = i + 1; j < n && side; ++j) {
        if (reads[j].count(w) && !out.side[j]) side = false;
        if (writes[j].count(w) && !reads[j].count(w)) break;  // overwritten: a new value
      }
      if (!side) break;
    }
    out.side[i] = side;
  }
  // A backward with no step left on the main stream has nothing to run beside: one lane.
  if (std::all_of(out.side.begin(), out.side.end(), [](uint8_t x) { return x != 0; })) {
    out.side.assign(n, 0);
    return out;
  }
  // The joins: a main step meeting what the side lane may still be writing or reading, or the
  // kJoinWindow-th main step since the oldest side step not yet joined (what a side step touches
  // is kept from reuse only until the join after it: a bounded window, not the whole call).
  std::set<int> side_writes, side_reads;
  size_t mains = 0, pending_since = SIZE_MAX;  // main steps seen; the count at the oldest pending
  for (size_t i = 0; i < n; ++i) {
    if (out.side[i]) {
      side_writes.insert(writes[i].begin(), writes[i].end());
      side_reads.insert(reads[i].begin(), reads[i].end());
      pending_since = std::min(pending_since, mains);
      continue;
    }
    const bool hazard = meets(reads[i], side_writes) || meets(writes[i], side_writes) ||
                        meets(writes[i], side_reads);
    const bool window = pending_since != SIZE_MAX && mains - pending_since >= kJoinWindow;
    if (hazard || window) {
      out.join_before[i] = 1;
      side_writes.clear();
      side_reads.clear();
      pending_since = SIZE_MAX;
    }
    ++mains;
  }
  return out;
}

void extend_side_lifetimes(const Graph& g, const std::vector<Step>& steps,
                           const LaneSchedule& lanes, std::vector<Lifetime>& lives) {
  const size_t n = steps.size();
  // Per root: the last step before the join that follows a side step touching it.
  std::vector<size_t> until(lives.size(), 0);
  std::vector<uint8_t> touched(lives.size(), 0);
  for (size_t i = 0; i < n; ++i) {
    if (!lanes.side[i]) continue;
    size_t end = n - 1;
    for (size_t j = i + 1; j < n; ++j) {
      if (!lanes.side[j] && lanes.join_before[j]) {
        end = j - 1;
        break;
      }
    }
    for (int id : step_tensors(steps[i])) {
      const int r = root_of(g, id);
      touched[r] = 1;
      until[r] = std::max(until[r], end);
    }
  }
  for (size_t id = 0; id < lives.size(); ++id) {
    const int r = root_of(g, static_cast<int>(id));
    if (touched[r]) lives[id].last = std::max(lives[id].last, until[r]);
  }
}

}  // namespace lightseq
