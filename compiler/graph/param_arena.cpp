#include "compiler/graph/param_arena.h"

#include <fmt/format.h>

#include <map>
#include <set>

#include "compiler/errors.h"

namespace lightseq {

ParamArena parameter_arena(const ModelSpec& spec) {
  ModelSpec no_optimizer = spec;
  no_optimizer.optimizer.reset();
  ParamArena arena;
  std::set<std::string> seen;  // a tied parameter appears in two layers' graphs
  std::map<LayerKind, int64_t>
      instances;  // layers of each stack kind so far (nn.Transformer numbering)
  for (const LayerGraph& l : lower_model(no_optimizer)) {
    std::string prefix;
    int64_t first = 0;
    if (l.type == LayerType::kEncoder || l.type == LayerType::kDecoder) {
      const LayerKind kind =
          l.type == LayerType::kEncoder ? LayerKind::kEncoder : LayerKind::kDecoder;
      first = instances[kind];
      instances[kind] += l.count;
      prefix = std::string(to_string(kind)) + ".layers.";
    }
    for (int64_t i = 0; i < l.count; ++i) {
      for (const Tensor& t : l.graph.tensors()) {
        if (t.role != TensorRole::kParam || t.view_of >= 0) continue;  // slices are their parent's
        const std::string name =
            prefix.empty() ? t.name : fmt::format("{}{}.{}", prefix, first + i, t.name);
        if (!seen.insert(name).second) continue;
        const Dim n = shape_numel(t.shape);
        if (!n.is_constant()) {
          throw InternalError(
              fmt::format("parameter_arena: {} of {} has a run-time size", t.name, l.name));
        }
        ArenaEntry e{name, l.name, prefix.empty() ? 0 : i, t.name, t.shape, arena.total, n.factor};
        arena.total += (n.factor + kArenaAlignElems - 1) / kArenaAlignElems * kArenaAlignElems;
        arena.entries.push_back(std::move(e));
      }
    }
  }
  return arena;
}

}  // namespace lightseq
