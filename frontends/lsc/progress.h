// progress.h — how `lsc train` prints: the progress line of a log step, the validation line and
// the loss-curve table of the summary. Pure formatting (host-only, tested on the CPU).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "frontends/lsc/train_state.h"

namespace lightseq::lsc {

// "0:07", "12:34", "1:02:03" (hours:minutes:seconds, the seconds rounded up).
std::string format_duration(double seconds);
// "950", "45.6k", "1.23M" (per second figures).
std::string format_count(double value);
// "[#####---------------]" of `width` cells, done / total filled.
std::string progress_bar(int64_t done, int64_t total, int width = 20);

struct ProgressLine {
  int64_t step = 0, steps = 0;
  double loss = 0, nll = 0;  // per counted target, nats
  double lr = 0;
  double tokens_per_second = 0;
  double ms_per_step = 0;
  double eta_seconds = 0;
  float loss_scale = 1;
  int64_t skipped_updates = 0;  // so far (fp16 overflows)
};
// "step   100/1000 [##------------------]  10% | loss 4.5670 | nll 4.3210 | lr 2.50e-04 |
//  45.6k tok/s | 12.34 ms/step | ETA 0:12 | loss scale 1"  (one line; "| 3 skipped" when any)
std::string format_progress(const ProgressLine& p);

// "valid  step 500 | loss 1.2345 | nll 1.1000 | ppl 3.00 | 12345 targets in 10 batches"
std::string format_validation(int64_t step, double loss, double nll, int64_t targets,
                              int64_t batches);

// The loss curve as a table, at most `max_rows` rows (every k-th point, and always the last).
std::string format_curve(std::span<const CurvePoint> curve, int max_rows = 20);

}  // namespace lightseq::lsc
