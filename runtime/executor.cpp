#include "runtime/executor.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <set>
#include <span>
#include <string_view>

#include "compiler/errors.h"
#include "reduce.sig.cuh"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/frame.h"
#include "runtime/grad_lane.h"
#include "runtime/launch.h"

namespace lightseq {

namespace {

int elem_bytes(const Tensor& t, Precision p) { return elem_bytes(t.type, p); }

}  // namespace

LayerExecutor::LayerExecutor(const LayerPlan& plan, Precision precision, KernelTable kernels,
                             GemmRunner* gemm)
    : plan_(plan), precision_(precision), kernels_(std::move(kernels)), gemm_(gemm) {
  if (plan_.fused) {
    fused_ = std::make_unique<LayerExecutor>(*plan_.fused, precision, kernels_, gemm);
    for (int dir = 0; dir < 2; ++dir) {
      if (fused_->manifest(dir == 1) != manifest(dir == 1)) {
        throw InternalError(fmt::format(
            "executor: {}: the fused and unfused plans of an \"auto\" layer bind different {} "
            "manifests",
            plan_.layer.name, dir == 1 ? "backward" : "forward"));
      }
    }
  }
  relu_aux_.assign(plan_.layer.graph.tensors().size(), false);
  for (const Step& st : plan_.forward) {
    if (const auto* g = std::get_if<GemmStep>(&st); g && g->epilogue == Epilogue::kReluAuxBias) {
      relu_aux_[g->aux] = true;
    }
  }
  // The saved activations' memory: the roots (a view's parent) of the non-input saved tensors.
  const Graph& g = plan_.layer.graph;
  lifetimes_[0] = step_lifetimes(g, plan_.forward);
  lifetimes_[1] = step_lifetimes(g, plan_.backward);
  if (grad_lane_enabled()) {
    lanes_ = schedule_lanes(g, plan_.backward);
    extend_side_lifetimes(g, plan_.backward, lanes_, lifetimes_[1]);
  }
  lane_gemm_sms_ = lane_gemm_sms();  // read (and checked) whether or not a side lane uses it
  const char* reuse = std::getenv("LIGHTSEQ_REUSE_TEMPORARIES");
  reuse_temporaries_ = !(reuse && std::string_view(reuse) == "0");
  for (int id : plan_.saved) {
    const Tensor& t = g.tensor(id);
    if (given_by_caller(t.role)) continue;
    const int root = t.view_of >= 0 ? t.view_of : id;
    if (saved_roots_.empty()) saved_roots_.assign(g.tensors().size(), 0);
    if (!saved_roots_[root]) {
      saved_roots_[root] = 1;
      saved_slots_.push_back({root, g.tensor(root).name, tensor_bytes(root)});
    }
  }
  for (const auto* steps : {&plan_.forward, &plan_.backward}) {
    for (const Step& st : *steps) {
      if (const auto* k = std::get_if<KernelStep>(&st); k && !kernels_.count(k->kernel.label)) {
        throw InternalError(fmt::format("executor: kernel '{}' was not loaded", k->kernel.label));
      }
    }
  }
  for (const KernelInstance& k : plan_.support_kernels) {
    if (k.sig == &sig::kAccumulate) accumulate_fn_ = kernels_.at(k.label);
  }
  from_saved_.assign(g.tensors().size(), 0);
  for (int id : plan_.saved) from_saved_[id] = 1;
}

LayerExecutor::~LayerExecutor() = default;

const LayerExecutor& LayerExecutor::at(const RunShape& s) const {
  return fused_ && plan_.fused_rule.takes(s.batch, s.seq, s.src_seq) ? *fused_ : *this;
}

const LayerExecutor::ShapePlan& LayerExecutor::resolve(const RunShape& shape) const {
  const std::array<int64_t, 3> key{shape.batch, shape.seq, shape.src_seq};
  std::lock_guard<std::mutex> lock(shapes_mutex_);
  auto it = shapes_.find(key);
  if (it != shapes_.end()) return *it->second;
  const Graph& g = plan_.layer.graph;
  auto sp = std::make_unique<ShapePlan>();
  sp->scratch.of.assign(g.tensors().size(), sig::Extent{-1, -1});
  for (auto [steps, out] :
       {std::pair{&plan_.forward, &sp->forward}, std::pair{&plan_.backward, &sp->backward}}) {
    out->resize(steps->size());
    for (size_t i = 0; i < steps->size(); ++i) {
      if (const auto* k = std::get_if<KernelStep>(&(*steps)[i])) {
        (*out)[i] = resolve_launch(*k, kernels_.at(k->kernel.label), g, shape, sp->scratch);
      }
    }
  }
  sp->tensor_bytes.resize(g.tensors().size());
  for (size_t id = 0; id < g.tensors().size(); ++id) {
    const Tensor& t = g.tensor(static_cast<int>(id));
    if (t.sized_by_kernel) {
      const sig::Extent e = sp->scratch.of[id];
      sp->tensor_bytes[id] = e.rows < 0 ? 0 : e.rows * e.cols * elem_bytes(t, precision_);
    } else {
      sp->tensor_bytes[id] =
          tensor_bytes(static_cast<int>(id)).eval(shape.batch, shape.seq, shape.src_seq);
    }
  }
  return *shapes_.emplace(key, std::move(sp)).first->second;
}

std::vector<std::string> LayerExecutor::required_bindings(bool backward) const {
  std::vector<std::string> out;
  for (const ManifestEntry& e : plan_.manifest[backward ? 1 : 0]) out.push_back(e.name);
  return out;
}

namespace {

// Binds the caller's pointers, parallel to `entries`, checking presence and alignment. Entries
// marked in `skip` (the backward's tensors taken from SavedActivations) are left alone.
void bind_positional(const std::vector<ManifestEntry>& entries, std::span<void* const> args,
                     std::vector<void*>* ptr, const std::string& layer,
                     const std::vector<uint8_t>* skip) {
  if (args.size() != entries.size()) {
    throw Error(fmt::format("{}: {} tensor pointers given, the layer's manifest has {}", layer,
                            args.size(), entries.size()));
  }
  std::vector<std::string> missing;
  for (size_t i = 0; i < entries.size(); ++i) {
    const ManifestEntry& e = entries[i];
    if (skip && (*skip)[e.tensor]) continue;
    void* p = args[i];
    if (p == nullptr) {
      if (!e.optional) missing.push_back(e.name);  // a padding mask may be null: nothing is padded
      continue;
    }
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) {
      throw Error(
          fmt::format("{}: '{}' at {} is not 16-byte aligned; lightseq's kernels use 16-byte "
                      "vector accesses (allocate with cudaMalloc/torch, and do not pass a view "
                      "at an odd offset)",
                      layer, e.name, p));
    }
    (*ptr)[e.tensor] = p;
  }
  if (!missing.empty()) {
    throw Error(fmt::format("{}: missing or null tensor(s): {}", layer, fmt::join(missing, ", ")));
  }
}

// The manifest's pointers from name bindings (absent: null).
std::vector<void*> by_manifest(const std::vector<ManifestEntry>& entries, const Bindings& given) {
  std::vector<void*> args(entries.size(), nullptr);
  for (size_t i = 0; i < entries.size(); ++i) {
    auto it = given.find(entries[i].name);
    if (it != given.end()) args[i] = it->second;
  }
  return args;
}

}  // namespace

Dim LayerExecutor::tensor_bytes(int id) const {
  const Tensor& t = plan_.layer.graph.tensor(id);
  const Dim numel = shape_numel(t.shape);
  if (relu_aux_[id]) {  // a bit mask: rows × relu_mask_ld(n) bits
    const int64_t n = t.shape.back().factor;
    Dim rows = numel;
    rows.factor /= n;
    return rows * (relu_mask_ld(n) / 8);
  }
  return numel * elem_bytes(t, precision_);
}

namespace {

// A slot's extent in the arena: its bytes rounded up to the arena alignment.
int64_t slot_extent(const SavedSlot& slot, const RunShape& s) {
  return (slot.bytes.eval(s.batch, s.seq, s.src_seq) + kSavedArenaAlign - 1) / kSavedArenaAlign *
         kSavedArenaAlign;
}

// Where view `t` of a parent at `parent` starts.
void* view_address(const Tensor& t, void* parent, int64_t numel, int elem) {
  const int64_t offset = t.view_offset >= 0 ? t.view_offset : t.part * numel;
  return static_cast<char*>(parent) + offset * elem;
}

}  // namespace

int64_t LayerExecutor::saved_arena_bytes(const RunShape& s) const {
  if (const LayerExecutor& e = at(s); &e != this) return e.saved_arena_bytes(s);
  int64_t total = 0;
  for (const SavedSlot& slot : saved_slots_) total += slot_extent(slot, s);
  return total;
}

std::map<int, void*> LayerExecutor::arena_places(void* arena, const RunShape& s) const {
  std::map<int, void*> out;
  if (!arena) return out;
  if (reinterpret_cast<uintptr_t>(arena) % kSavedArenaAlign != 0) {
    throw Error(fmt::format("{}: the saved-activation arena at {} is not {}-byte aligned",
                            plan_.layer.name, arena, kSavedArenaAlign));
  }
  int64_t offset = 0;
  for (const SavedSlot& slot : saved_slots_) {
    out[slot.tensor] = static_cast<char*>(arena) + offset;
    offset += slot_extent(slot, s);
  }
  return out;
}

void LayerExecutor::allocate_unbound(const std::vector<int>& used,
                                     const std::map<int, void*>& kept_at, SavedActivations* saved,
                                     Frame& f, const std::vector<Lifetime>* lives) const {
  const Graph& g = *f.graph;
  // The roots that need memory: this call's temporaries, and (forward) the saved activations
  // not placed in the caller's arena. Each group is one allocation (host cost: one allocator
  // call instead of one per tensor), laid out at kSavedArenaAlign offsets.
  std::vector<int> temps, kept;
  std::vector<uint8_t> seen(g.tensors().size(), 0);
  auto want = [&](int id) {
    if (f.ptr[id] || seen[id]) return;
    seen[id] = 1;
    const bool keep = saved && !saved_roots_.empty() && saved_roots_[id];
    if (keep && kept_at.count(id)) {
      f.ptr[id] = kept_at.at(id);
      return;
    }
    (keep ? kept : temps).push_back(id);
  };
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    if (f.ptr[id] || given_by_caller(t.role)) continue;
    want(t.view_of < 0 ? id : t.view_of);
  }
  // Each tensor at its own offset, or (temporaries, with `lives`) sharing memory with those whose
  // lifetimes in this call's steps do not meet its own (compiler/planner/temp_placement.h).
  auto place = [&](const std::vector<int>& ids, std::vector<DeviceBuffer>& owner,
                   const std::vector<Lifetime>* by_life) {
    std::vector<PlacedTensor> items;
    for (int id : ids) items.push_back({f.bytes(id), by_life ? (*by_life)[id] : Lifetime{}});
    Placement at;
    if (by_life) {
      at = place_by_lifetime(items, kSavedArenaAlign);
    } else {
      for (const PlacedTensor& t : items) {
        at.offset.push_back(at.total);
        at.total += (t.bytes + kSavedArenaAlign - 1) / kSavedArenaAlign * kSavedArenaAlign;
      }
    }
    if (at.total == 0) {
      for (int id : ids) f.ptr[id] = nullptr;
      return;
    }
    owner.emplace_back(*f.allocator, static_cast<size_t>(at.total), f.stream);
    char* base = static_cast<char*>(owner.back().get());
    for (size_t i = 0; i < ids.size(); ++i) f.ptr[ids[i]] = base + at.offset[i];
  };
  place(temps, f.blocks, reuse_temporaries_ ? lives : nullptr);
  if (saved) place(kept, saved->owned_, nullptr);
  // Views (of this call's memory and of the caller's tensors: a slice of a packed parameter).
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    if (f.ptr[id] || t.view_of < 0 || !f.ptr[t.view_of]) continue;
    f.ptr[id] = view_address(t, f.ptr[t.view_of], f.numel(id), elem_bytes(t, precision_));
  }
}

// A padding mask the caller left out means "nothing is padded": the kernels read an all-zero mask
// (a few bytes per sequence) rather than branching on a null pointer.
void LayerExecutor::bind_zero_masks(const std::vector<int>& used, Frame& f) const {
  for (int id : used) {
    const Tensor& t = f.graph->tensor(id);
    if (f.ptr[id] || t.type != ElemType::kU8 || t.role != TensorRole::kInput) continue;
    DeviceBuffer zeros(*f.allocator, static_cast<size_t>(f.numel(id)), f.stream);
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(zeros.device_ptr(), 0, zeros.bytes(), f.stream));
    f.ptr[id] = zeros.get();
    f.owned.emplace(id, std::move(zeros));
  }
}

SavedActivations LayerExecutor::forward(const Bindings& given, const RunShape& shape,
                                        const DropoutConfig& dropout, Allocator& allocator,
                                        CUstream stream, void* saved_arena, GradMode grads) const {
  return forward_at(by_manifest(plan_.manifest[0], given), shape, dropout, allocator, stream,
                    saved_arena, grads);
}

SavedActivations LayerExecutor::forward_at(std::span<void* const> args, const RunShape& shape,
                                           const DropoutConfig& dropout, Allocator& allocator,
                                           CUstream stream, void* saved_arena,
                                           GradMode grads) const {
  if (const LayerExecutor& e = at(shape); &e != this)
    return e.forward_at(args, shape, dropout, allocator, stream, saved_arena, grads);
  return run_forward(args, shape, dropout, allocator, stream, saved_arena, grads, 0, SIZE_MAX);
}

void LayerExecutor::forward_steps_at(std::span<void* const> args, const RunShape& shape,
                                     Allocator& allocator, CUstream stream, size_t begin,
                                     size_t end) const {
  if (const LayerExecutor& e = at(shape); &e != this)
    return e.forward_steps_at(args, shape, allocator, stream, begin, end);
  const bool chunked = plan_.row_chunks.max_rows > 0;
  if (!plan_.saved.empty() || begin > end ||
      end > (chunked ? plan_.row_chunks.begin : plan_.forward.size())) {
    throw InternalError(fmt::format(
        "{}: forward_steps_at [{}, {}) of {} steps runs only a plan that saves nothing (of a "
        "chunked plan, the steps before the chunks)",
        plan_.layer.name, begin, end, plan_.forward.size()));
  }
  if (chunked) {
    run_chunked_forward(args, shape, DropoutConfig{}, GradMode::kOverwrite, allocator, stream,
                        begin, end);
    return;
  }
  run_forward(args, shape, DropoutConfig{}, allocator, stream, nullptr, GradMode::kOverwrite, begin,
              end);
}

SavedActivations LayerExecutor::run_forward(std::span<void* const> args, const RunShape& shape,
                                            const DropoutConfig& dropout, Allocator& allocator,
                                            CUstream stream, void* saved_arena, GradMode grads,
                                            size_t begin, size_t end) const {
  const Graph& g = plan_.layer.graph;
  if (shape.batch <= 0 || shape.seq <= 0) {
    throw Error(fmt::format("{}: batch ({}) and sequence length ({}) must be positive",
                            plan_.layer.name, shape.batch, shape.seq));
  }
  if (plan_.row_chunks.max_rows > 0) {
    run_chunked_forward(args, shape, dropout, grads, allocator, stream);
    SavedActivations saved;  // the region did the backward: nothing is kept
    saved.shape_ = shape;
    saved.dropout_ = dropout;
    return saved;
  }
  const ShapePlan& sp = resolve(shape);
  Frame f(&g, &sp, precision_, shape, dropout, GradMode::kOverwrite, &allocator, stream);
  const std::vector<int>& used = plan_.used[0];
  bind_positional(plan_.manifest[0], args, &f.ptr, plan_.layer.name, nullptr);

  SavedActivations saved;
  saved.shape_ = shape;
  saved.dropout_ = dropout;
  allocate_unbound(used, arena_places(saved_arena, shape), &saved, f, &lifetimes_[0]);
  bind_zero_masks(used, f);
  for (int id : plan_.saved) {
    // A zero mask made for this call is not kept: the backward makes its own (bind_zero_masks).
    const bool made_here = f.owned.count(id) > 0 && g.tensor(id).role == TensorRole::kInput;
    if (!made_here) saved.ptr_[id] = f.ptr[id];
  }
  run_steps(plan_.forward, sp.forward, f, begin, end);
  return saved;
}

SavedActivations LayerExecutor::saved_from_arena(void* saved_arena, const Bindings& inputs,
                                                 const RunShape& shape,
                                                 const DropoutConfig& dropout) const {
  if (const LayerExecutor& e = at(shape); &e != this)
    return e.saved_from_arena(saved_arena, inputs, shape, dropout);
  std::vector<void*> by_id(plan_.layer.graph.tensors().size(), nullptr);
  for (int id : plan_.saved) {
    auto it = inputs.find(plan_.layer.graph.tensor(id).name);
    if (it != inputs.end()) by_id[id] = it->second;
  }
  return rebuild_saved(saved_arena, by_id, shape, dropout);
}

SavedActivations LayerExecutor::rebuild_saved(void* saved_arena, const std::vector<void*>& inputs,
                                              const RunShape& shape,
                                              const DropoutConfig& dropout) const {
  const Graph& g = plan_.layer.graph;
  if (!saved_arena && !saved_slots_.empty()) {
    throw Error(fmt::format("{}: the saved-activation arena is null", plan_.layer.name));
  }
  SavedActivations saved;
  saved.shape_ = shape;
  saved.dropout_ = dropout;
  saved.ptr_ = arena_places(saved_arena, shape);
  for (int id : plan_.saved) {
    const Tensor& t = g.tensor(id);
    if (t.role == TensorRole::kInput) {
      if (inputs[id]) {
        saved.ptr_[id] = inputs[id];
      } else if (t.type != ElemType::kU8 && !t.optional) {  // a mask or token types may be null
        throw Error(fmt::format("{}: the backward needs the forward's input '{}'", plan_.layer.name,
                                t.name));
      }
    } else if (t.view_of >= 0) {
      saved.ptr_[id] =
          view_address(t, saved.ptr_.at(t.view_of),
                       shape_numel(t.shape).eval(shape.batch, shape.seq, shape.src_seq),
                       elem_bytes(t, precision_));
    }
  }
  return saved;
}

void LayerExecutor::backward(const Bindings& given, const SavedActivations& saved, GradMode mode,
                             Allocator& allocator, CUstream stream) const {
  if (const LayerExecutor& e = at(saved.shape()); &e != this)
    return e.backward(given, saved, mode, allocator, stream);
  std::vector<void*> args = by_manifest(plan_.manifest[1], given);
  run_backward(args, saved, mode, allocator, stream);
}

void LayerExecutor::backward_at(std::span<void* const> args, void* saved_arena,
                                const RunShape& shape, const DropoutConfig& dropout, GradMode mode,
                                Allocator& allocator, CUstream stream) const {
  if (const LayerExecutor& e = at(shape); &e != this)
    return e.backward_at(args, saved_arena, shape, dropout, mode, allocator, stream);
  // The forward's inputs the backward reads come with the arguments; they and the arena are what
  // the forward saved.
  if (args.size() != plan_.manifest[1].size()) {
    throw Error(fmt::format("{}: {} tensor pointers given, the layer's backward manifest has {}",
                            plan_.layer.name, args.size(), plan_.manifest[1].size()));
  }
  std::vector<void*> inputs(plan_.layer.graph.tensors().size(), nullptr);
  for (size_t i = 0; i < args.size(); ++i) {
    if (plan_.manifest[1][i].role == TensorRole::kInput)
      inputs[plan_.manifest[1][i].tensor] = args[i];
  }
  run_backward(args, rebuild_saved(saved_arena, inputs, shape, dropout), mode, allocator, stream);
}

void LayerExecutor::run_backward(std::span<void* const> args, const SavedActivations& saved,
                                 GradMode mode, Allocator& allocator, CUstream stream) const {
  const Graph& g = plan_.layer.graph;
  if (saved.ptr_.empty() && !plan_.saved.empty()) {
    throw Error(fmt::format("{}: backward needs the SavedActivations of a forward of this layer",
                            plan_.layer.name));
  }
  const ShapePlan& sp = resolve(saved.shape_);
  Frame f(&g, &sp, precision_, saved.shape_, saved.dropout_, mode, &allocator, stream);
  const std::vector<int>& used = plan_.used[1];
  for (const auto& [id, p] : saved.ptr_) f.ptr[id] = p;
  // Inputs the backward reads come from the forward; bind the rest.
  bind_positional(plan_.manifest[1], args, &f.ptr, plan_.layer.name, &from_saved_);
  allocate_unbound(used, {}, nullptr, f, &lifetimes_[1]);
  bind_zero_masks(used, f);
  if (lanes_.any_side()) {
    // Both lanes' GEMM workspaces from the main stream before the fork, so that they are freed
    // on it after the join: one allocated on the side stream would be freed there after its last
    // join, a fork that CUDA graph capture refuses as unjoined.
    const size_t need = sp.gemm_workspace.load();
    for (int l = 0; l < 2 && need > 0; ++l) {
      f.gemm_workspace_bytes[l] = need;
      f.blocks.emplace_back(*f.allocator, need, f.stream);
      f.gemm_workspace[l] = f.blocks.back().get();
    }
  }
  run_steps(plan_.backward, sp.backward, f, 0, SIZE_MAX, lanes_.any_side() ? &lanes_ : nullptr);
}

void LayerExecutor::run_gemm(const GemmStep& g, Frame& f) const {
  const Graph& graph = *f.graph;
  const OpAttrs& at = g.attrs;
  auto ev = [&](const Dim& d) { return d.eval(f.shape.batch, f.shape.seq, f.shape.src_seq); };
  GemmArgs a;
  a.name = g.name;
  a.dtype = precision_;
  a.trans_a = at.trans_a;
  a.trans_b = at.trans_b;
  a.m = ev(at.m);
  a.n = ev(at.n);
  a.k = ev(at.k);
  a.batch = ev(at.batch);
  a.alpha = static_cast<float>(at.alpha);
  // Contiguous row-major operands; a weight (as many elements as one batch's operand) is shared.
  a.a = f.at(g.a);
  a.lda = at.trans_a == Transpose::kYes ? a.m : a.k;
  a.stride_a = a.batch > 1 && f.numel(g.a) == a.batch * a.m * a.k ? a.m * a.k : 0;
  a.b = f.at(g.b);
  a.ldb = at.trans_b == Transpose::kYes ? a.k : a.n;
  a.stride_b = a.batch > 1 && f.numel(g.b) == a.batch * a.k * a.n ? a.k * a.n : 0;
  a.d = f.at(g.d);
  a.ldd = a.n;
  a.stride_d = a.batch > 1 ? a.m * a.n : 0;
  const bool param_grad = graph.tensor(g.d).role == TensorRole::kParamGrad;
  if (g.c >= 0) {
    a.c = f.at(g.c);
    a.beta = 1.0f;
  } else if (g.accumulate || (param_grad && f.mode == GradMode::kAccumulate)) {
    a.c = a.d;  // D += A·B
    a.beta = 1.0f;
  }
  if (a.c) {
    a.ldc = a.ldd;
    a.stride_c = a.stride_d;
  }
  a.epilogue = g.epilogue;
  if (f.lane == 1) a.sm_count_target = static_cast<int32_t>(lane_gemm_sms_);
  // One workspace for all the GEMMs of a lane, as large as the largest any GEMM at this shape
  // took (none before the first call: each GEMM that needs one then allocates its own).
  std::atomic<size_t>& need = f.shape_plan->gemm_workspace;
  if (!f.gemm_workspace[f.lane] && need.load() > 0) {
    f.gemm_workspace_bytes[f.lane] = need.load();
    f.blocks.emplace_back(*f.allocator, f.gemm_workspace_bytes[f.lane], f.stream);
    f.gemm_workspace[f.lane] = f.blocks.back().get();
  }
  a.workspace = f.gemm_workspace[f.lane];
  a.workspace_bytes = f.gemm_workspace_bytes[f.lane];
  if (g.bias >= 0) a.bias = f.at(g.bias);
  if (g.aux >= 0) {
    a.aux = f.at(g.aux);
    a.aux_ld = relu_aux_[g.aux] ? relu_mask_ld(a.n) : gelu_aux_ld(a.n);
  }
  DeviceBuffer bias_grad_temp;
  if (g.bias_grad >= 0) {
    if (f.mode == GradMode::kAccumulate) {
      // cuBLASLt overwrites a bias gradient: write it aside, then add it in.
      bias_grad_temp =
          DeviceBuffer(*f.allocator, static_cast<size_t>(f.bytes(g.bias_grad)), f.stream);
      a.bias_grad = bias_grad_temp.get();
    } else {
      a.bias_grad = f.at(g.bias_grad);
    }
  }
  const size_t took = gemm_->run(a, f.stream, *f.allocator);
  for (size_t prev = need.load(); took > prev && !need.compare_exchange_weak(prev, took);) {
  }
  if (bias_grad_temp)
    accumulate_into(bias_grad_temp.get(), f.at(g.bias_grad), f.numel(g.bias_grad), f);
}

void LayerExecutor::run_steps(const std::vector<Step>& steps,
                              const std::vector<ResolvedLaunch>& launches, Frame& f, size_t begin,
                              size_t end, const LaneSchedule* lanes) const {
  const Graph& g = *f.graph;
  // A gradient the caller left null (the forward's optional gradients) is not wanted.
  auto unwanted = [&](int id) {
    const TensorRole r = g.tensor(id).role;
    return !f.ptr[id] && (r == TensorRole::kGradOutput || r == TensorRole::kParamGrad);
  };
  LaneSwitch lane(f.stream, f.lane);
  for (size_t i = begin; i < std::min(end, steps.size()); ++i) {
    const auto* gm = std::get_if<GemmStep>(&steps[i]);
    const auto* k = std::get_if<KernelStep>(&steps[i]);
    const bool skip =
        gm ? unwanted(gm->d) : std::any_of(k->writes.begin(), k->writes.end(), unwanted);
    if (lanes && lanes->side[i]) {
      if (skip) continue;  // a step not run forks nothing
      lane.to_side();
    } else if (lanes) {
      lane.to_main(lanes->join_before[i] != 0);  // joins where the schedule says, run or not
    }
    if (skip) continue;
    if (gm) {
      run_gemm(*gm, f);
    } else {
      enqueue(launches[i], f);
    }
  }
  lane.finish();
}

void LayerExecutor::run_chunked_forward(std::span<void* const> args, const RunShape& shape,
                                        const DropoutConfig& dropout, GradMode grads,
                                        Allocator& allocator, CUstream stream, size_t begin,
                                        size_t end) const {
  const Graph& g = plan_.layer.graph;
  const LayerPlan::RowChunks& rc = plan_.row_chunks;
  const int64_t per = std::max<int64_t>(1, rc.max_rows / shape.seq);  // sequences per chunk
  const RunShape first{std::min(per, shape.batch), shape.seq, shape.src_seq};
  const ShapePlan& sp_first = resolve(first);
  // Temporaries (the logits and their gradient) for the largest chunk, the first; only those of
  // steps [begin, end) when they all precede the region (the count of a data-parallel step).
  Frame f(&g, &sp_first, precision_, first, dropout, grads, &allocator, stream);
  std::vector<int> used = plan_.used[0];
  if (end <= rc.begin) {
    std::vector<uint8_t> touched(g.tensors().size(), 0);
    for (size_t i = begin; i < end; ++i) {
      for (int id : step_reads(plan_.forward[i])) touched[id] = 1;
      for (int id : step_writes(plan_.forward[i])) touched[id] = 1;
    }
    std::erase_if(used, [&](int id) { return !touched[id]; });
  }
  bind_positional(plan_.manifest[0], args, &f.ptr, plan_.layer.name, nullptr);
  allocate_unbound(used, {}, nullptr, f);
  bind_zero_masks(used, f);
  // The caller's tensors sized by the batch move with the chunk: bytes per sequence.
  const std::vector<void*> base = f.ptr;
  std::vector<std::pair<int, int64_t>> moving;
  for (int id : used) {
    const Tensor& t = g.tensor(id);
    const Dim bytes = tensor_bytes(id);
    if (!given_by_caller(t.role) || bytes.b == 0) continue;
    if (bytes.b != 1 || t.view_of >= 0) {
      throw InternalError(fmt::format("{}: '{}' cannot be split into chunks of sequences",
                                      plan_.layer.name, t.name));
    }
    moving.push_back({id, bytes.eval(1, shape.seq, shape.src_seq)});
  }
  // What precedes the region (the mean reduction's target count) sees every row.
  const ShapePlan& sp_full = resolve(shape);
  f.shape = shape;
  f.shape_plan = &sp_full;
  run_steps(plan_.forward, sp_full.forward, f, begin, std::min(end, rc.begin));
  if (end <= rc.begin) return;
  for (int64_t b0 = 0; b0 < shape.batch; b0 += per) {
    const RunShape cs{std::min(per, shape.batch - b0), shape.seq, shape.src_seq};
    const ShapePlan& sp = resolve(cs);
    f.shape = cs;
    f.shape_plan = &sp;
    f.mode = b0 == 0 ? grads : GradMode::kAccumulate;  // parameter gradients sum over chunks
    for (const auto& [id, stride] : moving) {
      f.ptr[id] = base[id] ? static_cast<char*>(base[id]) + b0 * stride : nullptr;
    }
    run_steps(plan_.forward, sp.forward, f, rc.begin);
  }
}

void LayerExecutor::accumulate_into(const void* in, void* out, int64_t n, Frame& f) const {
  if (!accumulate_fn_)
    throw InternalError("executor: the accumulate support kernel was not planned");
  const kern::GridDim grid = kern::accumulate_grid(n);
  if (grid.x == 0) return;
  void* args[] = {&in, &out, &n};
  launch(accumulate_fn_, Dim3{grid.x, grid.y, grid.z},
         Dim3{static_cast<unsigned>(kern::accumulate_block()), 1, 1}, 0, f.stream, args,
         "accumulate");
}

}  // namespace lightseq
