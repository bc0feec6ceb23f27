// param_arena.h — where every parameter of a model lives in one flat arena (the model-level step's
// parameter, gradient and optimizer-state arenas, and the optimizer layer's tensor lists): derived
// from the lowered layer graphs, so a parameter is declared once, by its layer's lowering.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "compiler/graph/layers.h"

namespace lightseq {

// Each parameter starts at a multiple of this many elements (128 bytes in 16-bit, 256 in fp32):
// every kernel's 16-byte vector accesses and cuBLASLt's alignment rules hold for any parameter.
inline constexpr int64_t kArenaAlignElems = 64;

struct ArenaEntry {
  // PyTorch's state_dict name: "encoder.layers.3.self_attn.in_proj_weight" (nn.Transformer's
  // names for the stacks, nn.TransformerEncoderLayer's within a layer), "embed_tokens.weight".
  std::string name;
  std::string layer;     // the plan's layer: "layers[0]", "embedding", "criterion"
  int64_t instance = 0;  // which of the stack's identical layers (0 for the others)
  std::string param;     // the layer graph's parameter: "self_attn.in_proj_weight"
  Shape shape;           // constant
  int64_t offset = 0;    // elements from the arena's start
  int64_t numel = 0;
};

struct ParamArena {
  std::vector<ArenaEntry> entries;  // in the order of the plan's layers
  int64_t total = 0;                // elements, alignment padding included
};

// The state_dict name of parameter `param` (the layer graph's name) of instance `instance` of a
// layer of `type`: stacks are numbered over the model's stacks of their kind, as nn.Transformer's
// encoder.layers.i / decoder.layers.i ("encoder.layers.3.norm1.weight"); the model-level layers'
// parameters keep their names ("embed_tokens.weight"; a tied output projection is that one too).
std::string arena_name(LayerType type, int64_t instance, std::string_view param);

// The entry named `name`, or null.
const ArenaEntry* find_entry(const ParamArena& arena, std::string_view name);

// The arena of `spec`'s parameters (the optimizer's own state is not a parameter). A tied output
// projection is the embedding's table: one entry. Padding between entries is part of the arena:
// its gradients must be zero (the arena is zeroed once), so no optimizer moves it.
ParamArena parameter_arena(const ModelSpec& spec);

}  // namespace lightseq
