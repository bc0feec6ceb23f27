// The backward's two-lane schedule (runtime/grad_lane.h), on every layer of the example and
// benchmark plans: the side lane holds only parameter-gradient work, every main step that could
// meet a side step's tensors waits for it (checked pairwise, independently of the schedule's own
// bookkeeping), no side step runs beside more than kJoinWindow main steps, and temporaries placed
// by the extended lifetimes never hand a side step's memory to a step before the next join.
#include "runtime/grad_lane.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
#include "tests/plan_specs.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

std::set<int> roots_of(const Graph& g, const std::vector<int>& ids) {
  std::set<int> out;
  for (int id : ids)
    if (id >= 0) out.insert(root_of(g, id));
  return out;
}

bool meet(const std::set<int>& a, const std::set<int>& b) {
  for (int x : a)
    if (b.count(x)) return true;
  return false;
}

std::string step_name(const Step& s) {
  if (const auto* gm = std::get_if<GemmStep>(&s)) return "gemm " + gm->name;
  return std::get<KernelStep>(s).kernel.label;
}

// Returns how many steps went to the side lane.
size_t check_backward(const LayerPlan& lp, const std::string& what) {
  const Graph& g = lp.layer.graph;
  const std::vector<Step>& steps = lp.backward;
  const LaneSchedule lanes = schedule_lanes(g, steps);
  const size_t n = steps.size();
  EXPECT_EQ(lanes.side.size(), n);
  EXPECT_EQ(lanes.join_before.size(), n);
  std::vector<std::set<int>> r(n), w(n);
  for (size_t i = 0; i < n; ++i) {
    r[i] = roots_of(g, step_reads(steps[i]));
    w[i] = roots_of(g, step_writes(steps[i]));
  }
  size_t side = 0;
  for (size_t s = 0; s < n; ++s) {
    if (!lanes.side[s]) continue;
    ++side;
    const std::string at = what + " step " + std::to_string(s) + " (" + step_name(steps[s]) + ")";
    EXPECT_FALSE(lanes.join_before[s]) << at << ": a side step is marked to join";
    for (int t : w[s]) {
      const TensorRole role = g.tensor(t).role;
      // Only parameter gradients and the call's own temporaries.
      EXPECT_TRUE(role == TensorRole::kParamGrad || !given_by_caller(role))
          << at << " writes '" << g.tensor(t).name << "'";
      if (role == TensorRole::kParamGrad) continue;
      // Whoever reads that value later is on the side lane too.
      for (size_t j = s + 1; j < n; ++j) {
        if (r[j].count(t)) {
          EXPECT_TRUE(lanes.side[j]) << at << ": main step " << j << " (" << step_name(steps[j])
                                     << ") reads its '" << g.tensor(t).name << "'";
        }
        if (w[j].count(t) && !r[j].count(t)) break;
      }
    }
    // Every later main step that meets it waits for a join in between.
    bool joined = false;
    for (size_t i = s + 1; i < n && !joined; ++i) {
      if (lanes.side[i]) continue;
      if (lanes.join_before[i]) {
        joined = true;
        break;
      }
      EXPECT_FALSE(meet(r[i], w[s]) || meet(w[i], w[s]) || meet(w[i], r[s]))
          << at << " and main step " << i << " (" << step_name(steps[i])
          << ") meet with no join between";
    }
  }
  // The window: from a side step, at most kJoinWindow main steps before the chain waits.
  for (size_t s = 0; s < n; ++s) {
    if (!lanes.side[s]) continue;
    size_t mains = 0;
    for (size_t j = s + 1; j < n; ++j) {
      if (lanes.side[j]) continue;
      if (lanes.join_before[j]) break;
      ++mains;
    }
    EXPECT_LE(mains, kJoinWindow) << what << " step " << s << " runs beside " << mains
                                  << " main steps with no join";
  }
  // Temporaries placed by the extended lifetimes: nothing a side step touches shares memory
  // with a temporary that a later step touches before the chain next waits for the lane.
  std::vector<Lifetime> life = step_lifetimes(g, steps);
  extend_side_lifetimes(g, steps, lanes, life);
  std::set<int> saved;
  for (int id : lp.saved) saved.insert(root_of(g, id));
  std::vector<int> temps;
  std::set<int> seen;
  for (int id : lp.used[1]) {
    const int t = root_of(g, id);
    if (given_by_caller(g.tensor(t).role) || saved.count(t) || !seen.insert(t).second) continue;
    temps.push_back(t);
  }
  std::vector<PlacedTensor> items;
  for (int t : temps) items.push_back({int64_t{1} << 20, life[t]});
  const Placement p = place_by_lifetime(items, 256);
  for (size_t a = 0; a < temps.size(); ++a) {
    for (size_t s = 0; s < n; ++s) {
      if (!lanes.side[s] || !(r[s].count(temps[a]) || w[s].count(temps[a]))) continue;
      for (size_t b = 0; b < temps.size(); ++b) {
        if (b == a || p.offset[a] != p.offset[b]) continue;
        for (size_t j = s + 1; j < n && !(!lanes.side[j] && lanes.join_before[j]); ++j) {
          EXPECT_FALSE(r[j].count(temps[b]) || w[j].count(temps[b]))
              << what << ": '" << g.tensor(temps[a]).name << "' (side step " << s << ") and '"
              << g.tensor(temps[b]).name << "' (step " << j << ") share memory";
        }
      }
    }
  }
  // The weight-gradient GEMMs go to the side lane unless a main step reads their result.
  for (size_t s = 0; s < n; ++s) {
    const auto* gm = std::get_if<GemmStep>(&steps[s]);
    if (!gm || g.tensor(root_of(g, gm->d)).role != TensorRole::kParamGrad) continue;
    bool read_by_main = false;
    for (size_t j = s + 1; j < n; ++j)
      read_by_main |= !lanes.side[j] && r[j].count(root_of(g, gm->d));
    if (!read_by_main &&
        (gm->bias_grad < 0 || g.tensor(root_of(g, gm->bias_grad)).role == TensorRole::kParamGrad)) {
      EXPECT_TRUE(lanes.side[s]) << what << ": weight-gradient GEMM " << gm->name << " on main";
    }
  }
  return side;
}

class GradLanePlans : public ::testing::TestWithParam<std::string> {};

TEST_P(GradLanePlans, SideLaneHoldsOnlyParameterGradientWorkAndJoinsBeforeAnyHazard) {
  size_t layers_with_side = 0, stacks = 0;
  for (const auto& [label, plan] : test::plans_by_attention(GetParam())) {
    for (const LayerPlan& lp : plan.layers) {
      const size_t side = check_backward(lp, label + " " + lp.layer.name);
      const LayerType type = lp.layer.type;
      if (type == LayerType::kEncoder || type == LayerType::kDecoder) {
        ++stacks;
        layers_with_side += side >= 4;  // at least the four linear layers' weight gradients
      }
    }
  }
  EXPECT_EQ(layers_with_side, stacks)
      << "a stack layer's backward left its weight gradients on main";
}

INSTANTIATE_TEST_SUITE_P(Specs, GradLanePlans, ::testing::ValuesIn(test::plan_specs()),
                         test::plan_spec_name);

TEST(LaneGemmSms, ReadsANonNegativeIntegerAndRefusesAnythingElse) {
  for (const auto& [value, want] :
       {std::pair<std::optional<std::string>, unsigned>{std::nullopt, 0},
        {"", 0},
        {"0", 0},
        {"32", 32}}) {
    test::ScopedEnv env("LIGHTSEQ_LANE_GEMM_SMS", value);
    EXPECT_EQ(lane_gemm_sms(), want) << value.value_or("(unset)");
  }
  test::ScopedEnv env("LIGHTSEQ_LANE_GEMM_SMS", "4097");
  EXPECT_THROW(lane_gemm_sms(), Error);
}

}  // namespace
}  // namespace lightseq
