#include "runtime/model.h"

#include <fmt/format.h>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
#include "compiler/spec/validate.h"
#include "flash_attention.sig.cuh"
#include "runtime/device.h"
#include "runtime/module.h"

namespace lightseq {

std::shared_ptr<CompiledModel> CompiledModel::load(const ModelSpec& spec,
                                                   const RuntimeOptions& options) {
  if (auto issues = validate_spec(spec); !issues.empty())
    throw SpecError(std::move(issues), spec.name);
  const int count = device_count();
  if (count == 0) throw Error("lightseq needs an NVIDIA GPU: " + no_gpu_reason());
  if (options.device < 0 || options.device >= count) {
    throw Error(fmt::format("device {} does not exist: this machine has {} GPU(s) (0..{})",
                            options.device, count, count - 1));
  }
  std::shared_ptr<CompiledModel> m(new CompiledModel());
  m->device_ = options.device;
  m->plan_ = plan_model(spec);
  DiskCache cache(options.cache_dir);
  BuildOptions build;
  build.archs = {device_target(options.device)};
  m->report_ = build_plan(m->plan_, cache, build);

  ScopedContext ctx(options.device);
  KernelTable table;
  for (const CompiledModule& cm : m->report_.modules) {
    auto module = std::make_unique<KernelModule>(cm.entry, options.device);
    for (const std::string& label : cm.entry.labels) table[label] = module->function(label);
    m->modules_.push_back(std::move(module));
  }
  m->gemm_ = std::make_unique<GemmRunner>();
  m->stack_to_layer_.assign(spec.layers.size(), -1);
  for (size_t i = 0; i < m->plan_.layers.size(); ++i) {
    const LayerPlan& lp = m->plan_.layers[i];
    m->executors_.push_back(
        std::make_unique<LayerExecutor>(lp, spec.precision, table, m->gemm_.get()));
    const LayerType t = lp.layer.type;
    if (t == LayerType::kEncoder || t == LayerType::kDecoder) {
      // lower_model names stacks "layers[i]" in spec order
      const int stack = std::stoi(lp.layer.name.substr(7));
      m->stack_to_layer_.at(stack) = static_cast<int>(i);
    }
  }
  return m;
}

CompiledModel::~CompiledModel() {
  if (modules_.empty()) return;
  ScopedContext ctx(device_);
  executors_.clear();
  gemm_.reset();
  modules_.clear();
}

const LayerExecutor& CompiledModel::stack(int stack) const {
  if (stack < 0 || stack >= static_cast<int>(stack_to_layer_.size())) {
    throw Error(fmt::format("model '{}' has {} layer stack(s); there is no stack {}",
                            plan_.spec.name, stack_to_layer_.size(), stack));
  }
  return *executors_.at(stack_to_layer_[stack]);
}

const LayerExecutor& CompiledModel::layer(std::string_view name) const {
  std::vector<std::string> names;
  for (size_t i = 0; i < plan_.layers.size(); ++i) {
    if (plan_.layers[i].layer.name == name) return *executors_.at(i);
    names.push_back(plan_.layers[i].layer.name);
  }
  throw Error(fmt::format("model '{}' has no layer '{}'; its layers: {}", plan_.spec.name, name,
                          fmt::join(names, ", ")));
}

namespace {

// The unfused attention backend materializes [B, heads, T, T] scores (and [B, heads, T, S] for a
// decoder's cross-attention); beyond this it refuses rather than fail an allocation or overflow an
// index.
constexpr int64_t kMaxScoreElements = int64_t{1} << 36;

void check_scores(const LayerStackSpec& s, const RunShape& shape, int64_t keys, const char* what,
                  const std::string& where) {
  if (shape.batch * s.heads * shape.seq > kMaxScoreElements / keys) {
    throw Error(fmt::format(
        "{}: {} with batch {}, sequence length {} and {} keys needs {}×{}×{}×{} "
        "attention scores, more than the unfused attention backend supports "
        "(2^36); use shorter sequences or a smaller batch",
        where, what, shape.batch, shape.seq, keys, shape.batch, s.heads, shape.seq, keys));
  }
}

// `exec`: the stack's executor (an "auto" stack runs a shape fused or unfused as it picks).
void check_shape(const LayerStackSpec& s, const LayerExecutor& exec, const RunShape& shape,
                 const std::string& where) {
  if (shape.batch < 1 || shape.seq < 1) {
    throw Error(fmt::format("{}: batch ({}) and sequence length ({}) must be at least 1", where,
                            shape.batch, shape.seq));
  }
  if (s.kind == LayerKind::kDecoder && shape.src_seq < 1) {
    throw Error(
        fmt::format("{}: the encoder sequence length (RunShape::src_seq = {}) must be at "
                    "least 1: a decoder layer attends to the encoder output",
                    where, shape.src_seq));
  }
  // The fused attention never materializes the scores (the validator allows it only where its
  // kernels run): no limit from them.
  if (s.attention == AttentionBackend::kFused || exec.fused_at(shape)) {
    if (shape.batch * s.heads > kern::kFlashMaxBatchHeads) {
      throw Error(fmt::format(
          "{}: the fused attention runs batch × heads = {} × {} = {} blocks in a grid dimension "
          "of at most {}; use a batch of at most {}",
          where, shape.batch, s.heads, shape.batch * s.heads, kern::kFlashMaxBatchHeads,
          kern::kFlashMaxBatchHeads / s.heads));
    }
    return;
  }
  check_scores(s, shape, shape.seq, "self-attention", where);
  if (s.kind == LayerKind::kDecoder)
    check_scores(s, shape, shape.src_seq, "cross-attention", where);
}

void check_dtype(Precision given, Precision model, const std::string& where) {
  if (given != model) {
    throw Error(
        fmt::format("{}: inputs are {} but the model was compiled for {}; convert them or "
                    "compile the model for {}",
                    where, to_string(given), to_string(model), to_string(given)));
  }
}

// The stack's layer, checked to be of the kind a typed layer class wants.
const LayerStackSpec& stack_of_kind(const CompiledModel& model, int stack, LayerKind kind) {
  model.stack(stack);  // throws for a stack that does not exist
  const LayerStackSpec& s = model.spec().layers.at(stack);
  if (s.kind != kind) {
    auto a = [](LayerKind k) { return k == LayerKind::kEncoder ? "an encoder" : "a decoder"; };
    throw Error(fmt::format("layers[{}] of '{}' is {} stack, not {} stack; use {}", stack,
                            model.spec().name, a(s.kind), a(kind),
                            s.kind == LayerKind::kEncoder ? "EncoderLayer" : "DecoderLayer"));
  }
  return s;
}

}  // namespace

void CompiledModel::check_run_shape(std::string_view name, const RunShape& shape) const {
  const LayerExecutor& exec = layer(name);  // throws for a layer that does not exist
  for (size_t i = 0; i < stack_to_layer_.size(); ++i) {
    if (executors_.at(stack_to_layer_[i]).get() == &exec) {
      check_shape(plan_.spec.layers[i], exec, shape,
                  fmt::format("{} ({})", name, exec.plan().layer.description));
      return;
    }
  }
  if (shape.batch < 1 || shape.seq < 1) {
    throw Error(fmt::format("{}: batch ({}) and sequence length ({}) must be at least 1", name,
                            shape.batch, shape.seq));
  }
}

// ---- StackLayer
// ----------------------------------------------------------------------------------

StackLayer::StackLayer(std::shared_ptr<const CompiledModel> model, int stack, LayerKind kind)
    : model_(std::move(model)),
      exec_(&model_->stack(stack)),
      spec_(stack_of_kind(*model_, stack, kind)) {}

std::string StackLayer::where() const {
  return fmt::format("{} layer ({})", to_string(spec_.kind), exec_->plan().layer.description);
}

SavedActivations StackLayer::run_forward(const Bindings& b, Precision dtype, const RunShape& shape,
                                         const DropoutConfig& dropout, Allocator& allocator,
                                         CUstream stream, void* saved_arena) const {
  check_dtype(dtype, model_->spec().precision, where());
  check_shape(spec_, *exec_, shape, where());
  ScopedContext ctx(model_->device());
  return exec_->forward(b, shape, dropout, allocator, stream, saved_arena);
}

SavedActivations StackLayer::rebuild_saved(void* saved_arena, const Bindings& inputs,
                                           const RunShape& shape,
                                           const DropoutConfig& dropout) const {
  check_shape(spec_, *exec_, shape, where());
  return exec_->saved_from_arena(saved_arena, inputs, shape, dropout);
}

void StackLayer::run_backward(const Bindings& b, const SavedActivations& saved, GradMode mode,
                              Allocator& allocator, CUstream stream) const {
  ScopedContext ctx(model_->device());
  exec_->backward(b, saved, mode, allocator, stream);
}

namespace {

void* mutable_ptr(const void* p) { return const_cast<void*>(p); }

// The graph names of a parameter struct's pointers: `prefix` "" for the weights (EncoderWeights,
// DecoderWeights), "grad." for their gradients (EncoderGrads, DecoderGrads: the same fields).
template <class A>
void bind_attention(Bindings& b, const std::string& name, const A& a) {
  b[name + ".in_proj_weight"] = mutable_ptr(a.in_proj_weight);
  b[name + ".in_proj_bias"] = mutable_ptr(a.in_proj_bias);
  b[name + ".out_proj.weight"] = mutable_ptr(a.out_proj_weight);
  b[name + ".out_proj.bias"] = mutable_ptr(a.out_proj_bias);
}

template <class S>
void bind_ffn_and_norms(Bindings& b, const std::string& prefix, const S& w) {
  b[prefix + "linear1.weight"] = mutable_ptr(w.linear1_weight);
  b[prefix + "linear1.bias"] = mutable_ptr(w.linear1_bias);
  b[prefix + "linear2.weight"] = mutable_ptr(w.linear2_weight);
  b[prefix + "linear2.bias"] = mutable_ptr(w.linear2_bias);
  b[prefix + "norm1.weight"] = mutable_ptr(w.norm1_weight);
  b[prefix + "norm1.bias"] = mutable_ptr(w.norm1_bias);
  b[prefix + "norm2.weight"] = mutable_ptr(w.norm2_weight);
  b[prefix + "norm2.bias"] = mutable_ptr(w.norm2_bias);
}

template <class S>
Bindings encoder_params(const std::string& prefix, const S& w) {
  Bindings b;
  bind_attention(
      b, prefix + "self_attn",
      AttentionWeights{w.in_proj_weight, w.in_proj_bias, w.out_proj_weight, w.out_proj_bias});
  bind_ffn_and_norms(b, prefix, w);
  return b;
}

// The cross-attention's packed in_proj [3H, H] (bias [3H]) is bound whole, as PyTorch holds it:
// the graph reads its q rows and its k/v rows as slices (compiler/graph/layers.cpp).
template <class S>
Bindings decoder_params(const std::string& prefix, const S& w) {
  Bindings b;
  bind_attention(b, prefix + "self_attn", w.self_attn);
  bind_ffn_and_norms(b, prefix, w);
  b[prefix + "norm3.weight"] = mutable_ptr(w.norm3_weight);
  b[prefix + "norm3.bias"] = mutable_ptr(w.norm3_bias);
  bind_attention(b, prefix + "multihead_attn", w.multihead_attn);
  return b;
}

Bindings decoder_inputs(const DecoderInputs& in) {
  return {{"x", mutable_ptr(in.x)},
          {"key_padding_mask", mutable_ptr(in.key_padding_mask)},
          {"encoder_out", mutable_ptr(in.encoder_out)},
          {"encoder_padding_mask", mutable_ptr(in.encoder_padding_mask)}};
}

}  // namespace

// ---- EncoderLayer
// ---------------------------------------------------------------------------------

EncoderLayer::EncoderLayer(std::shared_ptr<const CompiledModel> model, int stack)
    : StackLayer(std::move(model), stack, LayerKind::kEncoder) {}

SavedActivations EncoderLayer::forward(const EncoderWeights& w, const EncoderInputs& in,
                                       const RunShape& shape, const DropoutConfig& dropout,
                                       Allocator& allocator, CUstream stream,
                                       void* saved_arena) const {
  Bindings b = encoder_params("", w);
  b["x"] = mutable_ptr(in.x);
  b["key_padding_mask"] = mutable_ptr(in.key_padding_mask);
  b["y"] = in.y;
  return run_forward(b, in.dtype, shape, dropout, allocator, stream, saved_arena);
}

SavedActivations EncoderLayer::saved_from_arena(void* saved_arena, const void* x,
                                                const uint8_t* key_padding_mask,
                                                const RunShape& shape,
                                                const DropoutConfig& dropout) const {
  return rebuild_saved(saved_arena,
                       {{"x", mutable_ptr(x)}, {"key_padding_mask", mutable_ptr(key_padding_mask)}},
                       shape, dropout);
}

void EncoderLayer::backward(const EncoderWeights& w, const EncoderGrads& g,
                            const EncoderGradInputs& io, const SavedActivations& saved,
                            GradMode mode, Allocator& allocator, CUstream stream) const {
  Bindings b = encoder_params("", w);
  b.merge(encoder_params("grad.", g));
  b["grad_y"] = mutable_ptr(io.grad_y);
  b["grad_x"] = io.grad_x;
  run_backward(b, saved, mode, allocator, stream);
}

// ---- DecoderLayer
// ---------------------------------------------------------------------------------

DecoderLayer::DecoderLayer(std::shared_ptr<const CompiledModel> model, int stack)
    : StackLayer(std::move(model), stack, LayerKind::kDecoder) {}

SavedActivations DecoderLayer::forward(const DecoderWeights& w, const DecoderInputs& in,
                                       const RunShape& shape, const DropoutConfig& dropout,
                                       Allocator& allocator, CUstream stream,
                                       void* saved_arena) const {
  Bindings b = decoder_params("", w);
  b.merge(decoder_inputs(in));
  b["y"] = in.y;
  return run_forward(b, in.dtype, shape, dropout, allocator, stream, saved_arena);
}

SavedActivations DecoderLayer::saved_from_arena(void* saved_arena, const DecoderInputs& in,
                                                const RunShape& shape,
                                                const DropoutConfig& dropout) const {
  return rebuild_saved(saved_arena, decoder_inputs(in), shape, dropout);
}

void DecoderLayer::backward(const DecoderWeights& w, const DecoderGrads& g,
                            const DecoderGradInputs& io, const SavedActivations& saved,
                            GradMode mode, Allocator& allocator, CUstream stream) const {
  Bindings b = decoder_params("", w);
  b.merge(decoder_params("grad.", g));
  b["grad_y"] = mutable_ptr(io.grad_y);
  b["grad_x"] = io.grad_x;
  b["grad_encoder_out"] = io.grad_encoder_out;
  run_backward(b, saved, mode, allocator, stream);
}

}  // namespace lightseq
