// temp_placement.cpp — see temp_placement.h.
#include "compiler/planner/temp_placement.h"

#include <algorithm>
#include <numeric>
#include <utility>

namespace lightseq {

int root_of(const Graph& g, int id) {
  while (id >= 0 && g.tensor(id).view_of >= 0) id = g.tensor(id).view_of;
  return id;
}

std::vector<int> step_tensors(const Step& step) {
  std::vector<int> out;
  if (const auto* gm = std::get_if<GemmStep>(&step)) {
    for (int id : {gm->a, gm->b, gm->c, gm->d, gm->bias, gm->aux, gm->bias_grad})
      if (id >= 0) out.push_back(id);
    return out;
  }
  const auto& k = std::get<KernelStep>(step);
  out.insert(out.end(), k.reads.begin(), k.reads.end());
  out.insert(out.end(), k.writes.begin(), k.writes.end());
  for (const KernelArg& a : k.args) {
    if (a.tensor >= 0) out.push_back(a.tensor);
    for (int id : a.list)
      if (id >= 0) out.push_back(id);
  }
  return out;
}

std::vector<Lifetime> step_lifetimes(const Graph& g, const std::vector<Step>& steps) {
  std::vector<Lifetime> life(g.tensors().size());
  for (size_t i = 0; i < steps.size(); ++i) {
    for (int id : step_tensors(steps[i])) {
      Lifetime& l = life[root_of(g, id)];
      l.first = std::min(l.first, i);
      l.last = std::max(l.last, i);
    }
  }
  // A view lives as long as its root.
  for (size_t id = 0; id < life.size(); ++id) life[id] = life[root_of(g, static_cast<int>(id))];
  return life;
}

Placement place_by_lifetime(const std::vector<PlacedTensor>& items, int64_t align) {
  auto up = [&](int64_t n) { return (n + align - 1) / align * align; };
  std::vector<size_t> order(items.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (items[a].bytes != items[b].bytes) return items[a].bytes > items[b].bytes;
    return items[a].life.first < items[b].life.first;
  });
  Placement out;
  out.offset.assign(items.size(), 0);
  std::vector<size_t> placed;
  std::vector<std::pair<int64_t, int64_t>> busy;  // [begin, end) of overlapping placed tensors
  for (size_t i : order) {
    const int64_t size = up(items[i].bytes);
    busy.clear();
    for (size_t j : placed) {
      if (items[i].life.overlaps(items[j].life))
        busy.push_back({out.offset[j], out.offset[j] + up(items[j].bytes)});
    }
    std::sort(busy.begin(), busy.end());
    int64_t at = 0;
    for (const auto& [b, e] : busy) {
      if (at + size <= b) break;  // fits in the gap before this range
      at = std::max(at, e);
    }
    out.offset[i] = at;
    out.total = std::max(out.total, at + size);
    placed.push_back(i);
  }
  return out;
}

}  // namespace lightseq
