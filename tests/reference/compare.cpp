#include "tests/reference/compare.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

namespace lightseq::ref {

Tolerance tolerance_for(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return {1e-5, 1e-6, 1e-5};
    case Precision::kFp16:
      return {2e-3, 2e-4, 1e-3};
    case Precision::kBf16:
      return {1.6e-2, 2e-3, 8e-3};
  }
  return {};
}

Tolerance fp32_tolerance() { return {2e-5, 2e-6, 2e-5}; }

::testing::AssertionResult all_close(std::string_view name, std::span<const double> got,
                                     std::span<const double> ref, const Tolerance& tol) {
  return all_close(name, got, ref, tol, {});
}

::testing::AssertionResult all_close(std::string_view name, std::span<const double> got,
                                     std::span<const double> ref, const Tolerance& tol,
                                     std::span<const double> slack) {
  if (!slack.empty() && slack.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << name << ": " << slack.size() << " slacks for " << ref.size() << " elements";
  }
  if (got.size() != ref.size()) {
    return ::testing::AssertionFailure()
           << name << ": size " << got.size() << " != reference size " << ref.size();
  }
  double max_ref = 0, ref_sq = 0, err_sq = 0, max_err = 0;
  for (double r : ref) {
    if (std::isfinite(r)) max_ref = std::max(max_ref, std::fabs(r));
  }
  struct Bad {
    size_t i;
    double excess;
  };
  std::vector<Bad> bad;
  size_t n_bad = 0, n_nan = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], r = ref[i];
    const double err = std::fabs(g - r);
    const double bound =
        tol.rtol * std::fabs(r) + tol.atol * max_ref + tol.abs + (slack.empty() ? 0.0 : slack[i]);
    if (!std::isfinite(g)) ++n_nan;
    if (!(err <= bound)) {  // NaN-aware: a NaN error fails
      ++n_bad;
      const double excess = std::isfinite(err) ? err / (bound > 0 ? bound : 1e-300) : HUGE_VAL;
      bad.push_back({i, excess});
    }
    if (std::isfinite(r)) ref_sq += r * r;
    err_sq += std::isfinite(err) ? err * err : HUGE_VAL;
    if (!(err <= max_err)) max_err = err;
  }
  const double rel_norm = ref_sq > 0 ? std::sqrt(err_sq / ref_sq) : std::sqrt(err_sq);
  // The absolute allowances (tol.abs, and the slacks where given) bound the error's norm too.
  double abs_sq = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = tol.abs + (slack.empty() ? 0.0 : slack[i]);
    abs_sq += a * a;
  }
  const double abs_norm = std::sqrt(abs_sq);
  const bool norm_ok =
      rel_norm <= tol.rnorm || std::sqrt(err_sq) <= abs_norm || (ref_sq == 0 && err_sq == 0);
  if (n_bad == 0 && norm_ok) return ::testing::AssertionSuccess();

  std::ostringstream os;
  os.precision(9);
  os << name << ": " << n_bad << " of " << got.size() << " elements out of tolerance (" << n_nan
     << " not finite), max |err| " << max_err << ", max |ref| " << max_ref << ", ||err||/||ref|| "
     << rel_norm << (norm_ok ? "" : " (over the bound)") << "; tolerance rtol " << tol.rtol
     << " atol " << tol.atol << "*max|ref| abs " << tol.abs << " rnorm " << tol.rnorm << '\n';
  std::stable_sort(bad.begin(), bad.end(),
                   [](const Bad& a, const Bad& b) { return a.excess > b.excess; });
  const size_t show = std::min<size_t>(bad.size(), 8);
  for (size_t k = 0; k < show; ++k) {
    os << "  [" << bad[k].i << "] got " << got[bad[k].i] << " ref " << ref[bad[k].i] << '\n';
  }
  if (!bad.empty()) {
    os << "  first bad index "
       << std::min_element(bad.begin(), bad.end(),
                           [](const Bad& a, const Bad& b) { return a.i < b.i; })
              ->i
       << '\n';
  }
  return ::testing::AssertionFailure() << os.str();
}

::testing::AssertionResult bytes_equal(std::string_view name, std::span<const uint8_t> a,
                                       std::span<const uint8_t> b) {
  if (a.size() != b.size()) {
    return ::testing::AssertionFailure()
           << name << ": sizes differ (" << a.size() << " vs " << b.size() << ")";
  }
  size_t n_diff = 0, first = a.size();
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) {
      if (n_diff++ == 0) first = i;
    }
  }
  if (n_diff == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << name << ": " << n_diff << " of " << a.size()
                                       << " bytes differ, first at byte " << first;
}

}  // namespace lightseq::ref
