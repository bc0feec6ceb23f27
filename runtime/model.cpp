#include "runtime/model.h"

#include <fmt/format.h>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
#include "frontends/spec/parse.h"
#include "runtime/device.h"
#include "runtime/module.h"

namespace lightseq {

std::shared_ptr<CompiledModel> CompiledModel::load(const ModelSpec& spec, const RuntimeOptions& options) {
  if (auto issues = validate_spec(spec); !issues.empty()) throw SpecError(std::move(issues), spec.name);
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
  build.archs = {fmt::format("sm_{}", device_arch(options.device))};
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
    m->executors_.push_back(std::make_unique<LayerExecutor>(lp, spec.precision, table, m->gemm_.get()));
    const LayerType t = lp.layer.type;
    if (t == LayerType::kEncoder || t == LayerType::kDecoder) {
      // lower_model names stacks "layers[i]" in spec order
      const int stack = std::stoi(lp.layer.name.substr(7));
      m->stack_to_layer_.at(stack) = static_cast<int>(i);
    }
  }
  return m;
}

std::shared_ptr<CompiledModel> CompiledModel::load_file(const std::filesystem::path& spec_json,
                                                        const RuntimeOptions& options) {
  return load(parse_spec_file(spec_json), options);
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
    throw Error(fmt::format("model '{}' has {} layer stack(s); there is no stack {}", plan_.spec.name,
                            stack_to_layer_.size(), stack));
  }
  return *executors_.at(stack_to_layer_[stack]);
}

namespace {

// The unfused attention backend materializes [B, heads, T, T] scores (and [B, heads, T, S] for a
// decoder's cross-attention); beyond this it refuses rather than fail an allocation or overflow an
// index.
constexpr int64_t kMaxScoreElements = int64_t{1} << 36;

void check_scores(const LayerStackSpec& s, const RunShape& shape, int64_t keys, const char* what,
                  const std::string& where) {
  if (shape.batch * s.heads * shape.seq > kMaxScoreElements / keys) {
    throw Error(fmt::format("{}: {} with batch {}, sequence length {} and {} keys needs {}×{}×{}×{} "
                            "attention scores, more than the unfused attention backend supports "
                            "(2^36); use shorter sequences or a smaller batch", where, what,
                            shape.batch, shape.seq, keys, shape.batch, s.heads, shape.seq, keys));
  }
}

void check_shape(const LayerStackSpec& s, const RunShape& shape, const std::string& where) {
  if (shape.batch < 1 || shape.seq < 1) {
    throw Error(fmt::format("{}: batch ({}) and sequence length ({}) must be at least 1", where,
                            shape.batch, shape.seq));
  }
  if (s.kind == LayerKind::kDecoder && shape.src_seq < 1) {
    throw Error(fmt::format("{}: the encoder sequence length (RunShape::src_seq = {}) must be at "
                            "least 1: a decoder layer attends to the encoder output", where, shape.src_seq));
  }
  check_scores(s, shape, shape.seq, "self-attention", where);
  if (s.kind == LayerKind::kDecoder) check_scores(s, shape, shape.src_seq, "cross-attention", where);
}

void check_dtype(Precision given, Precision model, const std::string& where) {
  if (given != model) {
    throw Error(fmt::format("{}: inputs are {} but the model was compiled for {}; convert them or "
                            "compile the model for {}", where, to_string(given), to_string(model),
                            to_string(given)));
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

// ---- EncoderLayer ---------------------------------------------------------------------------------

EncoderLayer::EncoderLayer(std::shared_ptr<const CompiledModel> model, int stack)
    : model_(std::move(model)),
      exec_(&model_->stack(stack)),
      spec_(stack_of_kind(*model_, stack, LayerKind::kEncoder)) {}

Bindings EncoderLayer::weight_bindings(const EncoderWeights& w) const {
  auto c = [](const void* p) { return const_cast<void*>(p); };
  return {{"self_attn.in_proj_weight", c(w.in_proj_weight)}, {"self_attn.in_proj_bias", c(w.in_proj_bias)},
          {"self_attn.out_proj.weight", c(w.out_proj_weight)}, {"self_attn.out_proj.bias", c(w.out_proj_bias)},
          {"linear1.weight", c(w.linear1_weight)},   {"linear1.bias", c(w.linear1_bias)},
          {"linear2.weight", c(w.linear2_weight)},   {"linear2.bias", c(w.linear2_bias)},
          {"norm1.weight", c(w.norm1_weight)},       {"norm1.bias", c(w.norm1_bias)},
          {"norm2.weight", c(w.norm2_weight)},       {"norm2.bias", c(w.norm2_bias)}};
}

SavedActivations EncoderLayer::forward(const EncoderWeights& w, const EncoderInputs& in,
                                       const RunShape& shape, const DropoutConfig& dropout,
                                       Allocator& allocator, CUstream stream, void* saved_arena) const {
  const std::string where = fmt::format("encoder layer ({})", exec_->plan().layer.description);
  check_dtype(in.dtype, model_->spec().precision, where);
  check_shape(spec_, shape, where);
  Bindings b = weight_bindings(w);
  b["x"] = const_cast<void*>(in.x);
  b["key_padding_mask"] = const_cast<uint8_t*>(in.key_padding_mask);
  b["y"] = in.y;
  ScopedContext ctx(model_->device());
  return exec_->forward(b, shape, dropout, allocator, stream, saved_arena);
}

SavedActivations EncoderLayer::saved_from_arena(void* saved_arena, const void* x,
                                                const uint8_t* key_padding_mask, const RunShape& shape,
                                                const DropoutConfig& dropout) const {
  check_shape(spec_, shape, fmt::format("encoder layer ({})", exec_->plan().layer.description));
  return exec_->saved_from_arena(saved_arena,
                                 {{"x", const_cast<void*>(x)},
                                  {"key_padding_mask", const_cast<uint8_t*>(key_padding_mask)}},
                                 shape, dropout);
}

void EncoderLayer::backward(const EncoderWeights& w, const EncoderGrads& g, const EncoderGradInputs& io,
                            const SavedActivations& saved, GradMode mode, Allocator& allocator,
                            CUstream stream) const {
  Bindings b = weight_bindings(w);
  b["grad_y"] = const_cast<void*>(io.grad_y);
  b["grad_x"] = io.grad_x;
  const std::pair<const char*, void*> grads[] = {
      {"grad.self_attn.in_proj_weight", g.in_proj_weight}, {"grad.self_attn.in_proj_bias", g.in_proj_bias},
      {"grad.self_attn.out_proj.weight", g.out_proj_weight}, {"grad.self_attn.out_proj.bias", g.out_proj_bias},
      {"grad.linear1.weight", g.linear1_weight}, {"grad.linear1.bias", g.linear1_bias},
      {"grad.linear2.weight", g.linear2_weight}, {"grad.linear2.bias", g.linear2_bias},
      {"grad.norm1.weight", g.norm1_weight},     {"grad.norm1.bias", g.norm1_bias},
      {"grad.norm2.weight", g.norm2_weight},     {"grad.norm2.bias", g.norm2_bias}};
  for (const auto& [name, p] : grads) b[name] = p;
  ScopedContext ctx(model_->device());
  exec_->backward(b, saved, mode, allocator, stream);
}

// ---- DecoderLayer ---------------------------------------------------------------------------------

DecoderLayer::DecoderLayer(std::shared_ptr<const CompiledModel> model, int stack)
    : model_(std::move(model)),
      exec_(&model_->stack(stack)),
      spec_(stack_of_kind(*model_, stack, LayerKind::kDecoder)) {}

namespace {

// PyTorch packs the cross-attention's projections in one in_proj [3H, H] (bias [3H]); the graph
// takes its q rows and its k/v rows as two parameters (compiler/graph/layers.cpp).
void bind_cross_in_proj(Bindings& b, const std::string& prefix, const void* weight, const void* bias,
                        int64_t hidden, int elem) {
  auto c = [](const void* p) { return const_cast<void*>(p); };
  for (const auto& [p, name] : {std::pair{weight, "in_proj_weight"}, std::pair{bias, "in_proj_bias"}}) {
    if (!p) {
      throw Error(fmt::format("decoder layer: {}multihead_attn.{} is null (the cross-attention's packed "
                              "q/k/v projection, as nn.MultiheadAttention holds it)", prefix, name));
    }
  }
  auto at = [&](const void* p, int64_t elems) -> void* { return static_cast<char*>(c(p)) + elems * elem; };
  b[prefix + "multihead_attn.in_proj_weight[q]"] = c(weight);
  b[prefix + "multihead_attn.in_proj_weight[kv]"] = at(weight, hidden * hidden);
  b[prefix + "multihead_attn.in_proj_bias[q]"] = c(bias);
  b[prefix + "multihead_attn.in_proj_bias[kv]"] = at(bias, hidden);
}

}  // namespace

Bindings DecoderLayer::weight_bindings(const DecoderWeights& w) const {
  auto c = [](const void* p) { return const_cast<void*>(p); };
  Bindings b{{"self_attn.in_proj_weight", c(w.self_attn.in_proj_weight)},
             {"self_attn.in_proj_bias", c(w.self_attn.in_proj_bias)},
             {"self_attn.out_proj.weight", c(w.self_attn.out_proj_weight)},
             {"self_attn.out_proj.bias", c(w.self_attn.out_proj_bias)},
             {"multihead_attn.out_proj.weight", c(w.multihead_attn.out_proj_weight)},
             {"multihead_attn.out_proj.bias", c(w.multihead_attn.out_proj_bias)},
             {"linear1.weight", c(w.linear1_weight)},
             {"linear1.bias", c(w.linear1_bias)},
             {"linear2.weight", c(w.linear2_weight)},
             {"linear2.bias", c(w.linear2_bias)},
             {"norm1.weight", c(w.norm1_weight)},
             {"norm1.bias", c(w.norm1_bias)},
             {"norm2.weight", c(w.norm2_weight)},
             {"norm2.bias", c(w.norm2_bias)},
             {"norm3.weight", c(w.norm3_weight)},
             {"norm3.bias", c(w.norm3_bias)}};
  bind_cross_in_proj(b, "", w.multihead_attn.in_proj_weight, w.multihead_attn.in_proj_bias, spec_.hidden,
                     element_bytes(model_->spec().precision));
  return b;
}

namespace {

Bindings decoder_inputs(const DecoderInputs& in) {
  return {{"x", const_cast<void*>(in.x)},
          {"key_padding_mask", const_cast<uint8_t*>(in.key_padding_mask)},
          {"encoder_out", const_cast<void*>(in.encoder_out)},
          {"encoder_padding_mask", const_cast<uint8_t*>(in.encoder_padding_mask)}};
}

}  // namespace

SavedActivations DecoderLayer::forward(const DecoderWeights& w, const DecoderInputs& in,
                                       const RunShape& shape, const DropoutConfig& dropout,
                                       Allocator& allocator, CUstream stream, void* saved_arena) const {
  const std::string where = fmt::format("decoder layer ({})", exec_->plan().layer.description);
  check_dtype(in.dtype, model_->spec().precision, where);
  check_shape(spec_, shape, where);
  Bindings b = weight_bindings(w);
  b.merge(decoder_inputs(in));
  b["y"] = in.y;
  ScopedContext ctx(model_->device());
  return exec_->forward(b, shape, dropout, allocator, stream, saved_arena);
}

SavedActivations DecoderLayer::saved_from_arena(void* saved_arena, const DecoderInputs& in,
                                                const RunShape& shape, const DropoutConfig& dropout) const {
  check_shape(spec_, shape, fmt::format("decoder layer ({})", exec_->plan().layer.description));
  return exec_->saved_from_arena(saved_arena, decoder_inputs(in), shape, dropout);
}

void DecoderLayer::backward(const DecoderWeights& w, const DecoderGrads& g, const DecoderGradInputs& io,
                            const SavedActivations& saved, GradMode mode, Allocator& allocator,
                            CUstream stream) const {
  Bindings b = weight_bindings(w);
  b["grad_y"] = const_cast<void*>(io.grad_y);
  b["grad_x"] = io.grad_x;
  b["grad_encoder_out"] = io.grad_encoder_out;
  const std::pair<const char*, void*> grads[] = {
      {"grad.self_attn.in_proj_weight", g.self_attn.in_proj_weight},
      {"grad.self_attn.in_proj_bias", g.self_attn.in_proj_bias},
      {"grad.self_attn.out_proj.weight", g.self_attn.out_proj_weight},
      {"grad.self_attn.out_proj.bias", g.self_attn.out_proj_bias},
      {"grad.multihead_attn.out_proj.weight", g.multihead_attn.out_proj_weight},
      {"grad.multihead_attn.out_proj.bias", g.multihead_attn.out_proj_bias},
      {"grad.linear1.weight", g.linear1_weight}, {"grad.linear1.bias", g.linear1_bias},
      {"grad.linear2.weight", g.linear2_weight}, {"grad.linear2.bias", g.linear2_bias},
      {"grad.norm1.weight", g.norm1_weight},     {"grad.norm1.bias", g.norm1_bias},
      {"grad.norm2.weight", g.norm2_weight},     {"grad.norm2.bias", g.norm2_bias},
      {"grad.norm3.weight", g.norm3_weight},     {"grad.norm3.bias", g.norm3_bias}};
  for (const auto& [name, p] : grads) b[name] = p;
  bind_cross_in_proj(b, "grad.", g.multihead_attn.in_proj_weight, g.multihead_attn.in_proj_bias,
                     spec_.hidden, element_bytes(model_->spec().precision));
  ScopedContext ctx(model_->device());
  exec_->backward(b, saved, mode, allocator, stream);
}

}  // namespace lightseq
