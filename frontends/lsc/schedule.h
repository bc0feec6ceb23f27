// schedule.h — `lsc train`'s learning rate: fairseq's inverse_sqrt schedule. A linear warm-up from
// 0 to the peak over `warmup` updates, then decay with the inverse square root of the update:
//
//   lr(s) = peak · s / warmup          for s <  warmup
//   lr(s) = peak · sqrt(warmup / s)    for s >= warmup        (s = 1, 2, ...: the update number)
//
// This is fairseq's `--lr-scheduler inverse_sqrt` with `--warmup-init-lr 0`, counted from 1:
// fairseq's update s uses lr(s - 1) (its first update has lr 0). warmup 0 is taken as 1 (no
// warm-up: the peak at the first update, then the decay).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace lightseq::lsc {

struct InverseSqrtSchedule {
  double peak = 0;
  int64_t warmup = 0;

  double at(int64_t update) const {
    const auto w = static_cast<double>(std::max<int64_t>(warmup, 1));
    const auto s = static_cast<double>(std::max<int64_t>(update, 1));
    return s < w ? peak * s / w : peak * std::sqrt(w / s);
  }
};

// `lsc train`'s default warm-up: a tenth of the run, at least 1 and at most fairseq's 4000.
constexpr int64_t default_warmup(int64_t steps) { return std::clamp<int64_t>(steps / 10, 1, 4000); }

}  // namespace lightseq::lsc
