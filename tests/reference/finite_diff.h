// finite_diff.h — what the CPU tests of the float64 references share: a seed that
// LIGHTSEQ_TEST_SEED can replace, central differences, a dot product, and their tolerance.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>

#include "tests/reference/compare.h"
#include "tests/reference/layers.h"

namespace lightseq::ref {

inline uint64_t fixed_seed(uint64_t seed) {
  const char* s = std::getenv("LIGHTSEQ_TEST_SEED");
  return s && *s ? std::strtoull(s, nullptr, 0) : seed;
}

// Central differences of a scalar function of `theta`, every element (h = 1e-6 relative).
inline Vec numeric_grad(Vec& theta, const std::function<double()>& loss) {
  Vec g(theta.size());
  for (size_t i = 0; i < theta.size(); ++i) {
    const double x = theta[i];
    const double h = 1e-6 * std::max(1.0, std::fabs(x));
    theta[i] = x + h;
    const double up = loss();
    theta[i] = x - h;
    const double down = loss();
    theta[i] = x;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

inline double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Finite differences agree to ~1e-8 relative in double; 1e-6 leaves room and still catches any
// real mistake (a wrong term is O(1) relative).
inline const Tolerance kFd{1e-6, 1e-6, 1e-6};

}  // namespace lightseq::ref
