#include "compiler/graph/param_arena.h"

#include <fmt/format.h>

#include <map>
#include <set>

#include "compiler/errors.h"

namespace lightseq {

std::string arena_name(LayerType type, int64_t instance, std::string_view param) {
  if (type == LayerType::kEncoder || type == LayerType::kDecoder) {
    return fmt::format(
        "{}.layers.{}.{}",
        to_string(type == LayerType::kEncoder ? LayerKind::kEncoder : LayerKind::kDecoder),
        instance, param);
  }
  return std::string(param);
}

const ArenaEntry* find_entry(const ParamArena& arena, std::string_view name) {
  for (const ArenaEntry& e : arena.entries) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

ParamArena parameter_arena(const ModelSpec& spec) {
  ModelSpec no_optimizer = spec;
  no_optimizer.optimizer.reset();
  ParamArena arena;
  std::set<std::string> seen;              // a tied parameter appears in two layers' graphs
  std::map<LayerType, int64_t> instances;  // layers of each type so far (nn.Transformer numbering)
  for (const LayerGraph& l : lower_model(no_optimizer)) {
    const bool stack = l.type == LayerType::kEncoder || l.type == LayerType::kDecoder;
    const int64_t first = instances[l.type];
    instances[l.type] += l.count;
    for (int64_t i = 0; i < l.count; ++i) {
      for (const Tensor& t : l.graph.tensors()) {
        if (t.role != TensorRole::kParam || t.view_of >= 0) continue;  // slices are their parent's
        const std::string name = arena_name(l.type, first + i, t.name);
        if (!seen.insert(name).second) continue;
        const Dim n = shape_numel(t.shape);
        if (!n.is_constant()) {
          throw InternalError(
              fmt::format("parameter_arena: {} of {} has a run-time size", t.name, l.name));
        }
        ArenaEntry e{name, l.name, stack ? i : 0, t.name, t.shape, arena.total, n.factor};
        arena.total += (n.factor + kArenaAlignElems - 1) / kArenaAlignElems * kArenaAlignElems;
        arena.entries.push_back(std::move(e));
      }
    }
  }
  return arena;
}

}  // namespace lightseq
