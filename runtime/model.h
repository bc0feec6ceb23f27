// model.h — the C++ API: a spec compiled for one GPU, and typed encoder and decoder layers on it.
//
//   auto model =
//   lightseq::CompiledModel::load(lightseq::parse_spec_file("examples/bert-base.json"),
//                                              {.device = 0});  // parse_spec_file:
//                                              frontends/spec/parse.h
//   lightseq::EncoderLayer layer(model, /*stack=*/0);
//   auto saved = layer.forward(weights, io, shape, dropout, allocator, stream);
//   layer.backward(weights, grads, grad_io, saved, lightseq::GradMode::kOverwrite, allocator,
//   stream);
//
// Kernels are compiled on first use for the device's arch and kept in the disk cache; a later
// process loads them from there. Nothing here keeps per-call state: several layers of one model,
// several models and several GPUs may be used from one process.
#pragma once

#include <cuda.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "compiler/compiler.h"
#include "runtime/executor.h"

namespace lightseq {

class KernelModule;

struct RuntimeOptions {
  int device = 0;
  std::optional<std::filesystem::path> cache_dir;  // default: default_cache_dir()
};

class CompiledModel {
 public:
  // Plans the spec, compiles (or loads from the cache) every kernel for the device's arch and
  // loads them on the device. Throws Error when there is no GPU (with the reason), SpecError for
  // an invalid spec, CompileError for a rejected kernel.
  static std::shared_ptr<CompiledModel> load(const ModelSpec& spec,
                                             const RuntimeOptions& options = {});
  ~CompiledModel();

  const ModelSpec& spec() const { return plan_.spec; }
  const ModelPlan& plan() const { return plan_; }
  int device() const { return device_; }
  const BuildReport& build_report() const { return report_; }

  // The executor of spec().layers[stack] (an encoder or decoder stack; its layers share it).
  const LayerExecutor& stack(int stack) const;
  // The executor of a planned layer by its plan name ("embedding", "criterion", "optimizer",
  // "layers[0]", ...). Throws Error listing the model's layers when it has none such.
  const LayerExecutor& layer(std::string_view name) const;
  // Refuses a run shape that layer `name` cannot take (sizes below 1, attention scores beyond the
  // unfused backend's limit), with a message naming the layer.
  void check_run_shape(std::string_view name, const RunShape& shape) const;

 private:
  CompiledModel() = default;
  ModelPlan plan_;
  int device_ = 0;
  BuildReport report_;
  std::vector<std::unique_ptr<KernelModule>> modules_;
  std::unique_ptr<GemmRunner> gemm_;
  std::vector<std::unique_ptr<LayerExecutor>> executors_;  // parallel to plan_.layers
  std::vector<int> stack_to_layer_;
};

// What the typed layers share: one layer stack of a compiled model, its executor, the checks
// every call makes, and the saved-activation arena's layout.
class StackLayer {
 public:
  int64_t saved_arena_bytes(const RunShape& shape) const { return exec_->saved_arena_bytes(shape); }
  // The arena's layout for a call of `shape` (an "auto" stack's plans lay it out differently).
  const std::vector<SavedSlot>& saved_slots(const RunShape& shape) const {
    return exec_->at(shape).saved_slots();
  }
  const LayerStackSpec& spec() const { return spec_; }

 protected:
  // Throws Error when stack `stack` of the model is not of `kind`.
  StackLayer(std::shared_ptr<const CompiledModel> model, int stack, LayerKind kind);
  // forward / saved_from_arena / backward of the executor after the dtype and shape checks, in
  // the model's device context.
  SavedActivations run_forward(const Bindings& b, Precision dtype, const RunShape& shape,
                               const DropoutConfig& dropout, Allocator& allocator, CUstream stream,
                               void* saved_arena) const;
  SavedActivations rebuild_saved(void* saved_arena, const Bindings& inputs, const RunShape& shape,
                                 const DropoutConfig& dropout) const;
  void run_backward(const Bindings& b, const SavedActivations& saved, GradMode mode,
                    Allocator& allocator, CUstream stream) const;
  std::string where() const;  // "encoder layer (...)" for error messages

  std::shared_ptr<const CompiledModel> model_;
  const LayerExecutor* exec_;
  LayerStackSpec spec_;
};

// Parameters of one encoder layer, in the layout of torch.nn.TransformerEncoderLayer (device
// pointers in the model's precision).
struct EncoderWeights {
  const void* in_proj_weight = nullptr;                       // [3H, H]
  const void* in_proj_bias = nullptr;                         // [3H]
  const void* out_proj_weight = nullptr;                      // [H, H]
  const void* out_proj_bias = nullptr;                        // [H]
  const void* linear1_weight = nullptr;                       // [F, H]
  const void* linear1_bias = nullptr;                         // [F]
  const void* linear2_weight = nullptr;                       // [H, F]
  const void* linear2_bias = nullptr;                         // [H]
  const void *norm1_weight = nullptr, *norm1_bias = nullptr;  // [H]
  const void *norm2_weight = nullptr, *norm2_bias = nullptr;  // [H]
};

// Their gradients, written (=) or accumulated (+=) as GradMode says.
struct EncoderGrads {
  void *in_proj_weight = nullptr, *in_proj_bias = nullptr;
  void *out_proj_weight = nullptr, *out_proj_bias = nullptr;
  void *linear1_weight = nullptr, *linear1_bias = nullptr;
  void *linear2_weight = nullptr, *linear2_bias = nullptr;
  void *norm1_weight = nullptr, *norm1_bias = nullptr;
  void *norm2_weight = nullptr, *norm2_bias = nullptr;
};

struct EncoderInputs {
  Precision dtype = Precision::kFp32;         // of x and y; must be the model's precision
  const void* x = nullptr;                    // [B·T, H], rows batch-major (b·T + t)
  const uint8_t* key_padding_mask = nullptr;  // [B, T], nonzero = pad; null = no padding
  void* y = nullptr;                          // [B·T, H] output
};

struct EncoderGradInputs {
  const void* grad_y = nullptr;  // [B·T, H]
  void* grad_x = nullptr;        // [B·T, H] output
};

class EncoderLayer : public StackLayer {
 public:
  EncoderLayer(std::shared_ptr<const CompiledModel> model, int stack);

  // Shapes: batch ≥ 1, seq ≥ 1. Throws Error for a wrong dtype, a null or misaligned pointer, a
  // sequence the attention backend cannot run.
  // With `saved_arena` (saved_arena_bytes(shape) bytes) the saved activations live there (see
  // LayerExecutor::forward); a front end then rebuilds them for the backward with saved_from_arena.
  SavedActivations forward(const EncoderWeights& w, const EncoderInputs& in, const RunShape& shape,
                           const DropoutConfig& dropout, Allocator& allocator, CUstream stream,
                           void* saved_arena = nullptr) const;
  // x and key_padding_mask as given to the forward that filled the arena.
  SavedActivations saved_from_arena(void* saved_arena, const void* x,
                                    const uint8_t* key_padding_mask, const RunShape& shape,
                                    const DropoutConfig& dropout) const;
  void backward(const EncoderWeights& w, const EncoderGrads& grads, const EncoderGradInputs& io,
                const SavedActivations& saved, GradMode mode, Allocator& allocator,
                CUstream stream) const;
};

// ---- decoder layers (nn.TransformerDecoderLayer) -----------------------------------------------

// One multi-head attention's parameters, as nn.MultiheadAttention holds them.
struct AttentionWeights {
  const void* in_proj_weight = nullptr;   // [3H, H]: rows [0, H) q, [H, 2H) k, [2H, 3H) v
  const void* in_proj_bias = nullptr;     // [3H]
  const void* out_proj_weight = nullptr;  // [H, H]
  const void* out_proj_bias = nullptr;    // [H]
};
struct AttentionGrads {
  void *in_proj_weight = nullptr, *in_proj_bias = nullptr;
  void *out_proj_weight = nullptr, *out_proj_bias = nullptr;
};

// Parameters of one decoder layer, in the layout of torch.nn.TransformerDecoderLayer: self_attn,
// multihead_attn (the cross-attention over the encoder output; its q rows project the decoder
// stream, its k/v rows the encoder output), linear1/linear2, norm1 (self-attention), norm2
// (cross-attention), norm3 (feed-forward).
struct DecoderWeights {
  AttentionWeights self_attn, multihead_attn;
  const void* linear1_weight = nullptr;                       // [F, H]
  const void* linear1_bias = nullptr;                         // [F]
  const void* linear2_weight = nullptr;                       // [H, F]
  const void* linear2_bias = nullptr;                         // [H]
  const void *norm1_weight = nullptr, *norm1_bias = nullptr;  // [H]
  const void *norm2_weight = nullptr, *norm2_bias = nullptr;  // [H]
  const void *norm3_weight = nullptr, *norm3_bias = nullptr;  // [H]
};
struct DecoderGrads {
  AttentionGrads self_attn, multihead_attn;
  void *linear1_weight = nullptr, *linear1_bias = nullptr;
  void *linear2_weight = nullptr, *linear2_bias = nullptr;
  void *norm1_weight = nullptr, *norm1_bias = nullptr;
  void *norm2_weight = nullptr, *norm2_bias = nullptr;
  void *norm3_weight = nullptr, *norm3_bias = nullptr;
};

// Shapes: RunShape{batch B, seq T (target tokens), src_seq S (encoder tokens)}.
struct DecoderInputs {
  Precision dtype = Precision::kFp32;             // of x, encoder_out and y
  const void* x = nullptr;                        // [B·T, H], rows b·T + t
  const uint8_t* key_padding_mask = nullptr;      // [B, T], nonzero = pad; null = none
  const void* encoder_out = nullptr;              // [B·S, H] (PyTorch's `memory`), rows b·S + s
  const uint8_t* encoder_padding_mask = nullptr;  // [B, S], nonzero = pad; null = none
  void* y = nullptr;                              // [B·T, H] output
};

struct DecoderGradInputs {
  const void* grad_y = nullptr;  // [B·T, H]
  void* grad_x = nullptr;        // [B·T, H] output (written)
  // [B·S, H]: ADDED TO (+=) whatever the GradMode, because every decoder layer of a stack reads
  // the same encoder output and their gradients sum in one buffer. Zero it before the stack's
  // first backward.
  void* grad_encoder_out = nullptr;
};

// The self-attention is causal (a decoder's always is) and masks the padded target keys; the
// cross-attention masks the padded encoder positions.
class DecoderLayer : public StackLayer {
 public:
  DecoderLayer(std::shared_ptr<const CompiledModel> model, int stack);

  // batch, seq and src_seq ≥ 1. Throws Error for a wrong dtype, a null or misaligned pointer, a
  // sequence the attention backend cannot run. `saved_arena` as for EncoderLayer.
  SavedActivations forward(const DecoderWeights& w, const DecoderInputs& in, const RunShape& shape,
                           const DropoutConfig& dropout, Allocator& allocator, CUstream stream,
                           void* saved_arena = nullptr) const;
  // The inputs (x, encoder_out and the masks) as given to the forward that filled the arena; y
  // and dtype are not read.
  SavedActivations saved_from_arena(void* saved_arena, const DecoderInputs& in,
                                    const RunShape& shape, const DropoutConfig& dropout) const;
  void backward(const DecoderWeights& w, const DecoderGrads& grads, const DecoderGradInputs& io,
                const SavedActivations& saved, GradMode mode, Allocator& allocator,
                CUstream stream) const;
};

}  // namespace lightseq
