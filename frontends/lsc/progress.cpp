#include "frontends/lsc/progress.h"

#include <fmt/format.h>

#include <cmath>

namespace lightseq::lsc {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(std::ceil(seconds));
  if (s >= 3600) return fmt::format("{}:{:02d}:{:02d}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02d}", s / 60, s % 60);
}

std::string format_count(double v) {
  if (!std::isfinite(v)) return "?";
  if (v >= 1e9) return fmt::format("{:.2f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e4) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

std::string progress_bar(int64_t done, int64_t total, int width) {
  const int64_t filled = total > 0 ? std::min<int64_t>(width, done * width / total) : 0;
  return "[" + std::string(filled, '#') + std::string(width - filled, '-') + "]";
}

std::string format_progress(const ProgressLine& p) {
  const int digits = static_cast<int>(fmt::formatted_size("{}", p.steps));
  std::string line = fmt::format(
      "step {:>{}}/{} {} {:3d}% | loss {:.4f} | nll {:.4f} | lr {:.2e} | {} tok/s | {:.2f} ms/step "
      "| ETA {} | loss scale {:g}",
      p.step, digits, p.steps, progress_bar(p.step, p.steps),
      p.steps > 0 ? static_cast<int>(p.step * 100 / p.steps) : 0, p.loss, p.nll, p.lr,
      format_count(p.tokens_per_second), p.ms_per_step, format_duration(p.eta_seconds),
      p.loss_scale);
  if (p.skipped_updates > 0) line += fmt::format(" | {} skipped", p.skipped_updates);
  return line;
}

std::string format_validation(int64_t step, double loss, double nll, int64_t targets,
                              int64_t batches) {
  return fmt::format(
      "valid step {} | loss {:.4f} | nll {:.4f} | ppl {:.2f} | {} targets in {} batches", step,
      loss, nll, std::exp(nll), targets, batches);
}

std::string format_curve(std::span<const CurvePoint> curve, int max_rows) {
  std::string out = fmt::format("{:>8} {:>9} {:>9} {:>10} {:>9} {:>10}\n", "step", "loss", "nll",
                                "valid loss", "ms/step", "lr");
  if (curve.empty()) return out;
  const size_t every = (curve.size() + max_rows - 1) / static_cast<size_t>(max_rows);
  for (size_t i = 0; i < curve.size(); ++i) {
    const bool last = i + 1 == curve.size();
    if (!last && (i + 1) % every != 0) continue;
    const CurvePoint& p = curve[i];
    out +=
        fmt::format("{:>8} {:>9.4f} {:>9.4f} {:>10} {:>9.2f} {:>10.2e}\n", p.step, p.loss, p.nll,
                    p.valid_loss ? fmt::format("{:.4f}", *p.valid_loss) : "-", p.ms_per_step, p.lr);
  }
  return out;
}

}  // namespace lightseq::lsc
