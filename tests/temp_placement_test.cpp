// Temporaries placed by lifetime (compiler/planner/temp_placement.h): on random lifetimes, and on
// every layer of the example and benchmark plans, no step touches two temporaries that share
// memory, and the block is no larger than the tensors laid end to end.
#include "compiler/planner/temp_placement.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "compiler/planner/planner.h"
#include "tests/plan_specs.h"

namespace lightseq {
namespace {

constexpr int64_t kAlign = 256;

bool disjoint(int64_t a, int64_t a_bytes, int64_t b, int64_t b_bytes) {
  auto up = [](int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
  return a + up(a_bytes) <= b || b + up(b_bytes) <= a || a_bytes == 0 || b_bytes == 0;
}

TEST(TempPlacement, TensorsWhoseLifetimesMeetNeverShareMemory) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<PlacedTensor> items(1 + rng() % 40);
    int64_t sum = 0;
    for (PlacedTensor& t : items) {
      t.bytes = static_cast<int64_t>(rng() % 5 == 0 ? 0 : rng() % 100000);
      if (rng() % 10 != 0) {  // one in ten: no step touches it (placed apart from all)
        t.life.first = rng() % 30;
        t.life.last = t.life.first + rng() % 10;
      }
      sum += (t.bytes + kAlign - 1) / kAlign * kAlign;
    }
    const Placement p = place_by_lifetime(items, kAlign);
    ASSERT_EQ(p.offset.size(), items.size());
    EXPECT_LE(p.total, sum);
    for (size_t i = 0; i < items.size(); ++i) {
      EXPECT_EQ(p.offset[i] % kAlign, 0);
      EXPECT_LE(p.offset[i] + items[i].bytes, p.total);
      for (size_t j = i + 1; j < items.size(); ++j) {
        if (items[i].life.overlaps(items[j].life)) {
          EXPECT_TRUE(disjoint(p.offset[i], items[i].bytes, p.offset[j], items[j].bytes))
              << "trial " << trial << ": tensors " << i << " and " << j << " overlap";
        }
      }
    }
  }
}

TEST(TempPlacement, DisjointLifetimesShareMemory) {
  std::vector<PlacedTensor> items(3);
  items[0] = {1000, {0, 1}};
  items[1] = {1000, {2, 3}};
  items[2] = {500, {1, 2}};
  const Placement p = place_by_lifetime(items, kAlign);
  EXPECT_EQ(p.offset[0], p.offset[1]);  // 0 and 1 never live together
  EXPECT_EQ(p.total, 1024 + 512);
}

// The executor's temporaries of one direction: roots of the tensors its steps touch that the
// caller does not bind and (backward) the forward did not save.
void check_direction(const LayerPlan& lp, int dir, const std::string& what) {
  const Graph& g = lp.layer.graph;
  const std::vector<Step>& steps = dir == 0 ? lp.forward : lp.backward;
  std::set<int> saved;
  for (int id : lp.saved) saved.insert(root_of(g, id));
  std::vector<int> temps;
  std::set<int> seen;
  for (int id : lp.used[dir]) {
    const int r = root_of(g, id);
    if (given_by_caller(g.tensor(r).role) || saved.count(r) || !seen.insert(r).second) continue;
    temps.push_back(r);
  }
  const std::vector<Lifetime> life = step_lifetimes(g, steps);
  std::vector<PlacedTensor> items;
  int64_t end_to_end = 0;
  for (int r : temps) {
    const Tensor& t = g.tensor(r);
    const int64_t bytes = t.shape.empty() ? 4096
                                          : shape_numel(t.shape).eval(8, 64, 48) *
                                                elem_bytes(t.type, Precision::kBf16);
    items.push_back({bytes, life[r]});
    end_to_end += (bytes + kAlign - 1) / kAlign * kAlign;
  }
  const Placement p = place_by_lifetime(items, kAlign);
  EXPECT_LE(p.total, end_to_end) << what;
  std::vector<int> index(g.tensors().size(), -1);
  for (size_t i = 0; i < temps.size(); ++i) index[temps[i]] = static_cast<int>(i);
  for (size_t s = 0; s < steps.size(); ++s) {
    std::vector<int> touched;
    for (int id : step_tensors(steps[s]))
      if (index[root_of(g, id)] >= 0) touched.push_back(index[root_of(g, id)]);
    std::sort(touched.begin(), touched.end());
    touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
    for (size_t i = 0; i < touched.size(); ++i) {
      for (size_t j = i + 1; j < touched.size(); ++j) {
        const int a = touched[i], b = touched[j];
        EXPECT_TRUE(disjoint(p.offset[a], items[a].bytes, p.offset[b], items[b].bytes))
            << what << " step " << s << ": '" << g.tensor(temps[a]).name << "' and '"
            << g.tensor(temps[b]).name << "' share memory";
      }
    }
  }
  // Also across steps: a tensor's memory is not taken by another between its first and last use.
  for (size_t a = 0; a < temps.size(); ++a) {
    for (size_t b = a + 1; b < temps.size(); ++b) {
      if (items[a].life.overlaps(items[b].life)) {
        EXPECT_TRUE(disjoint(p.offset[a], items[a].bytes, p.offset[b], items[b].bytes))
            << what << ": '" << g.tensor(temps[a]).name << "' and '" << g.tensor(temps[b]).name
            << "' live at once and share memory";
      }
    }
  }
}

class TempPlacementPlans : public ::testing::TestWithParam<std::string> {};

TEST_P(TempPlacementPlans, NoStepSeesTwoTemporariesInOnePlace) {
  for (const auto& [label, plan] : test::plans_by_attention(GetParam())) {
    for (const LayerPlan& lp : plan.layers) {
      if (lp.row_chunks.max_rows > 0) continue;  // the chunked criterion keeps its own layout
      for (int dir = 0; dir < 2; ++dir)
        check_direction(lp, dir, label + " " + lp.layer.name + (dir ? " bwd" : " fwd"));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Specs, TempPlacementPlans, ::testing::ValuesIn(test::plan_specs()),
                         test::plan_spec_name);

}  // namespace
}  // namespace lightseq
