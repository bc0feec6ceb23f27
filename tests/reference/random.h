// random.h — the tests' random numbers: a small fast generator (xoshiro256**, seeded through
// splitmix64) and the per-test seed. GPU tests draw fresh inputs every run; the seed goes into
// every failure message, and LIGHTSEQ_TEST_SEED=<n> replays it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lightseq::ref {

class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform(double lo, double hi);  // [lo, hi)
  int64_t below(int64_t n);              // [0, n), n > 0
  double normal();                       // standard normal
  std::vector<double> uniform_vec(size_t n, double lo, double hi);

 private:
  uint64_t s_[4];
};

// $LIGHTSEQ_TEST_SEED when set, else a fresh nondeterministic seed.
uint64_t test_seed();
// "seed=123 (replay: LIGHTSEQ_TEST_SEED=123)", for SCOPED_TRACE.
std::string seed_note(uint64_t seed);

}  // namespace lightseq::ref
