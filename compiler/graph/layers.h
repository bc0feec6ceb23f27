// layers.h — lowering of each layer type of a spec to its forward + backward Graph.
#pragma once

#include <string>
#include <vector>

#include "compiler/graph/graph.h"
#include "compiler/spec/model_spec.h"

namespace lightseq {

// kFinalNorm: the LayerNorm after a kind's last stack (LayerStackSpec::final_norm).
enum class LayerType { kEncoder, kDecoder, kEmbedding, kCriterion, kOptimizer, kFinalNorm };
std::string_view to_string(LayerType t);

// One distinct layer of a model: a stack of identical layers lowers once.
struct LayerGraph {
  LayerType type;
  std::string name;         // "encoder", "decoder", "embedding", "criterion", "optimizer"
  std::string description;  // "6 × encoder 512/8/2048 post-LN relu, dropout 0.1/0.1/0.1"
  int64_t count = 1;        // identical instances (the stack's count)
  Graph graph;
};

LayerGraph lower_encoder(const LayerStackSpec& stack, int index);
LayerGraph lower_decoder(const LayerStackSpec& stack, int index);
LayerGraph lower_embedding(const EmbeddingSpec& emb);
LayerGraph lower_criterion(const CriterionSpec& crit, const EmbeddingSpec& emb);
// The optimizer: one update of every parameter, held in flat arenas of the model's parameter
// count N (the model-level step's layout): "params" (the model's dtype), "grads", fp32 "exp_avg"
// and "exp_avg_sq", fp32 "master_params" for fp16/bf16 models, the learning rate "lr" [1] fp32
// and "optim_state" [1] (kern::OptimState) in device memory. fp16 models check the gradients
// for inf/NaN and scale the loss dynamically (torch.amp.GradScaler's defaults).
// "layers[i].final_norm": y = LayerNorm(x) after stack i, its parameters nn.TransformerEncoder's
// / nn.TransformerDecoder's `norm` ("encoder.norm.weight", ...).
LayerGraph lower_final_norm(const LayerStackSpec& stack, int index);
LayerGraph lower_optimizer(const OptimizerSpec& opt, const ModelSpec& model);
// The inputs of its kAdam op, by position (master last, present for fp16/bf16 only).
enum AdamInput : int {
  kAdamParams,
  kAdamGrads,
  kAdamExpAvg,
  kAdamExpAvgSq,
  kAdamLr,
  kAdamState,
  kAdamMaster
};

// Every layer of a validated spec, in execution order of the forward.
std::vector<LayerGraph> lower_model(const ModelSpec& spec);

}  // namespace lightseq
