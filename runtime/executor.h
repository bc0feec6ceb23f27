// executor.h — runs one layer's plan (compiler/planner/plan.h) on a GPU.
//
// Re-entrant: a LayerExecutor holds only immutable things (the plan, the loaded kernels, the GEMM
// runner). forward() returns the activations its backward needs (SavedActivations) instead of
// keeping them, so a layer may run several forwards before their backwards (activation
// checkpointing, a module called twice) and several models may share a process.
// Every call takes the caller's stream and allocator; nothing synchronizes, so a step can be
// captured in a CUDA graph.
//
// Tensors are bound by their graph names (the parameter names of PyTorch's modules:
// "self_attn.in_proj_weight", "norm1.bias", ...; inputs "x", "key_padding_mask"; the output "y";
// in the backward "grad_y", "grad_x" and "grad.<param>"). Everything else is allocated.
#pragma once

#include <cuda.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "compiler/planner/plan.h"
#include "compiler/planner/temp_placement.h"
#include "runtime/allocator.h"
#include "runtime/gemm.h"
#include "runtime/grad_lane.h"

namespace lightseq {

struct ResolvedLaunch;  // runtime/launch.h

// Run-time sizes: B, T and (for a decoder's cross-attention) S.
struct RunShape {
  int64_t batch = 0;
  int64_t seq = 0;
  int64_t src_seq = 0;
};

// Dropout at run time: probabilities per site kind and the Philox stream. The layer's sites draw
// at offset + site index; a caller advancing its offset by kDropoutOffsetStride per call never
// reuses random numbers. Graph-safe form (CUDA graphs, PyTorch's generator under capture): with
// seed_ptr / offset_ptr set, the kernels read the seed from device memory and add the device
// offset to `offset`, so a captured graph replays with the values there at replay time. Those
// values must not change between a forward and its backward.
struct DropoutConfig {
  double attention = 0, activation = 0, hidden = 0, embedding = 0;
  double attention_output =
      0;  // sites of kind kAttentionOutput (a spec's dropout.attention_output)
  uint64_t seed = 0;
  uint64_t offset = 0;
  const uint64_t* seed_ptr = nullptr;    // device address, or null: `seed`
  const uint64_t* offset_ptr = nullptr;  // device address, or null: `offset` alone
};
inline constexpr uint64_t kDropoutOffsetStride = 16;

enum class GradMode { kOverwrite, kAccumulate };  // parameter gradients: `=` or `+=`

using Bindings = std::unordered_map<std::string, void*>;

// label → kernel, for the device the executor runs on.
using KernelTable = std::unordered_map<std::string, CUfunction>;

// What a forward keeps for its backward: its shape and dropout stream, pointers to the caller's
// inputs the backward reads (x, the padding mask), and the saved activations — either owned
// buffers from the call's allocator or views into a caller-provided arena (saved_slots()).
class SavedActivations {
 public:
  SavedActivations() = default;
  SavedActivations(SavedActivations&&) = default;
  SavedActivations& operator=(SavedActivations&&) = default;
  const RunShape& shape() const { return shape_; }
  const DropoutConfig& dropout() const { return dropout_; }
  bool empty() const { return ptr_.empty(); }

 private:
  friend class LayerExecutor;
  RunShape shape_;
  DropoutConfig dropout_;
  std::map<int, void*> ptr_;         // saved tensor id → memory (activations and inputs)
  std::vector<DeviceBuffer> owned_;  // what this object owns of that memory
};

// One saved activation buffer, as laid out in a caller-provided arena: `bytes` is a monomial in
// B, T, S (Dim), so a front end can size the arena for symbolic shapes too. Slots are placed in
// order, each at an offset rounded up to kSavedArenaAlign.
struct SavedSlot {
  int tensor = -1;
  std::string name;
  Dim bytes;
};
inline constexpr int64_t kSavedArenaAlign = 256;

class LayerExecutor {
 public:
  LayerExecutor(const LayerPlan& plan, Precision precision, KernelTable kernels, GemmRunner* gemm);
  ~LayerExecutor();

  const LayerPlan& plan() const { return plan_; }

  // The executor that runs a call of `shape`: this one, or, for an "auto" layer, its fused plan's
  // where LayerPlan::fused_rule admits the shape. Every call below that takes a shape (or saved
  // activations, which carry theirs) goes there itself; both plans bind the same manifest. What
  // takes no shape (plan(), saved_slots()) is this plan's: ask at(shape) for the other's.
  const LayerExecutor& at(const RunShape& shape) const;
  // An "auto" layer's fused plan's executor (null for every other layer), and whether it runs a
  // call of `shape`.
  const LayerExecutor* fused() const { return fused_.get(); }
  bool fused_at(const RunShape& shape) const { return fused_ && &at(shape) == fused_.get(); }

  // Runs the forward. `given` binds every input and parameter and the output(s). Throws
  // lightseq::Error naming a missing binding, a misaligned pointer or a bad shape. With
  // `saved_arena` (saved_arena_bytes(shape) bytes, 256-byte aligned) the saved activations are
  // placed there instead of being allocated; the returned object then only points into it.
  // A criterion's fused linear + cross-entropy (LayerPlan::row_chunks) also writes its gradients
  // here (the backward has nothing left to do): bound gradients are written as `grads` says, and
  // gradients left null are not computed (evaluation).
  SavedActivations forward(const Bindings& given, const RunShape& shape,
                           const DropoutConfig& dropout, Allocator& allocator, CUstream stream,
                           void* saved_arena = nullptr,
                           GradMode grads = GradMode::kOverwrite) const;

  // The saved-activation layout of forward(..., saved_arena) and its size for a shape.
  const std::vector<SavedSlot>& saved_slots() const { return saved_slots_; }
  int64_t saved_arena_bytes(const RunShape& shape) const;

  // Rebuilds what forward(..., saved_arena) returned from the arena and the forward's inputs
  // (`inputs` binds "x" and, if the forward had one, "key_padding_mask"): a front end that keeps
  // the arena as a framework tensor calls this in its backward.
  SavedActivations saved_from_arena(void* saved_arena, const Bindings& inputs,
                                    const RunShape& shape, const DropoutConfig& dropout) const;

  // Runs the backward with the activations of one forward. `given` binds the parameters, the
  // output gradient(s), the input gradient(s) to write and every parameter gradient.
  void backward(const Bindings& given, const SavedActivations& saved, GradMode mode,
                Allocator& allocator, CUstream stream) const;

  // What a call binds, in order (the positional calls' argument order).
  const std::vector<ManifestEntry>& manifest(bool backward) const {
    return plan_.manifest[backward ? 1 : 0];
  }
  // Their names.
  std::vector<std::string> required_bindings(bool backward) const;

  // The calls above with the manifest's pointers in its order (no lookups by name): a front end
  // that binds every call the same way. backward_at rebuilds what the forward saved from its
  // arena and the forward's inputs among `args`.
  SavedActivations forward_at(std::span<void* const> args, const RunShape& shape,
                              const DropoutConfig& dropout, Allocator& allocator, CUstream stream,
                              void* saved_arena = nullptr,
                              GradMode grads = GradMode::kOverwrite) const;
  // The forward's steps [begin, end) only, bound as forward_at binds them, of a plan that saves
  // nothing (and of a plan with a chunked region, steps before the region only): a caller that
  // runs a plan in parts (the model-level step updates each layer's parameters as soon as their
  // gradients are complete, and finishes the optimizer step once; with a process group it counts
  // the criterion's targets before the forward).
  void forward_steps_at(std::span<void* const> args, const RunShape& shape, Allocator& allocator,
                        CUstream stream, size_t begin, size_t end) const;
  void backward_at(std::span<void* const> args, void* saved_arena, const RunShape& shape,
                   const DropoutConfig& dropout, GradMode mode, Allocator& allocator,
                   CUstream stream) const;

  struct Frame;      // one call's state (runtime/frame.h), internal
  struct ShapePlan;  // the plan resolved at one shape (runtime/frame.h), internal

  // This plan resolved for `shape` (computed on first use, then cached; thread-safe); an "auto"
  // layer's other plan: at(shape).resolve(shape).
  const ShapePlan& resolve(const RunShape& shape) const;

 private:
  // Memory for every tensor in `used` that nothing bound; views point into their parents.
  // Kept roots (the saved activations) go to `saved`: placed at `kept_at` when that names them
  // (the saved arena), else allocated and owned by `saved`.
  // With `lives` (the direction's step lifetimes) and reuse_temporaries_, temporaries whose
  // lifetimes do not meet share memory (compiler/planner/temp_placement.h).
  void allocate_unbound(const std::vector<int>& used, const std::map<int, void*>& kept_at,
                        SavedActivations* saved, Frame& frame,
                        const std::vector<Lifetime>* lives = nullptr) const;
  Dim tensor_bytes(int id) const;  // what a tensor's memory holds, as a monomial in B, T, S
  // Binds an all-zero mask to every used u8 input left null ("nothing is padded").
  void bind_zero_masks(const std::vector<int>& used, Frame& frame) const;
  std::map<int, void*> arena_places(void* arena, const RunShape& shape) const;
  SavedActivations rebuild_saved(void* saved_arena, const std::vector<void*>& inputs_by_id,
                                 const RunShape& shape, const DropoutConfig& dropout) const;
  SavedActivations run_forward(std::span<void* const> args, const RunShape& shape,
                               const DropoutConfig& dropout, Allocator& allocator, CUstream stream,
                               void* saved_arena, GradMode grads, size_t begin, size_t end) const;
  void run_backward(std::span<void* const> args, const SavedActivations& saved, GradMode mode,
                    Allocator& allocator, CUstream stream) const;
  // Steps [begin, end) of `steps` (all of them by default); a step that writes a gradient the
  // caller left null is skipped.
  // With `lanes` (the backward's), parameter-gradient steps go to a second stream
  // (runtime/grad_lane.h).
  void run_steps(const std::vector<Step>& steps, const std::vector<ResolvedLaunch>& launches,
                 Frame& frame, size_t begin = 0, size_t end = SIZE_MAX,
                 const LaneSchedule* lanes = nullptr) const;
  // The forward of a plan with a chunked region (LayerPlan::row_chunks): temporaries sized for
  // one chunk, the steps before the region at the full shape, the region once per chunk of whole
  // sequences with the caller's batch-sized tensors offset to the chunk.
  // [begin, end): of the steps before the region only (forward_steps_at), else all.
  void run_chunked_forward(std::span<void* const> args, const RunShape& shape,
                           const DropoutConfig& dropout, GradMode grads, Allocator& allocator,
                           CUstream stream, size_t begin = 0, size_t end = SIZE_MAX) const;
  void run_gemm(const GemmStep& g, Frame& frame) const;
  // out[i] += in[i] for n elements of the model's dtype (the `+=` of epilogue bias gradients).
  void accumulate_into(const void* in, void* out, int64_t n, Frame& frame) const;

  LayerPlan plan_;
  std::unique_ptr<LayerExecutor> fused_;  // an "auto" layer's fused plan (LayerPlan::fused)
  Precision precision_;
  KernelTable kernels_;
  GemmRunner* gemm_;
  CUfunction accumulate_fn_ = nullptr;  // the `+=` of epilogue bias gradients (support kernel)
  std::vector<bool> relu_aux_;          // per tensor: holds a ReLU bit mask (sized in bits)
  std::vector<SavedSlot> saved_slots_;
  std::vector<uint8_t> saved_roots_;    // per tensor id: a root of the saved activations (or empty)
  std::vector<uint8_t> from_saved_;     // per tensor id: the backward takes it from the forward
  std::vector<Lifetime> lifetimes_[2];  // per direction, per tensor id (temp_placement.h)
  // The backward's two-lane schedule (runtime/grad_lane.h; empty with LIGHTSEQ_GRAD_LANE=0).
  LaneSchedule lanes_;
  unsigned lane_gemm_sms_ = 0;  // the side lane's GEMMs: cuBLASLt's SM target (lane_gemm_sms())
  // A call's temporaries share memory by lifetime (LIGHTSEQ_REUSE_TEMPORARIES=0: each its own,
  // end to end, for comparison).
  bool reuse_temporaries_ = true;
  mutable std::mutex shapes_mutex_;
  mutable std::map<std::array<int64_t, 3>, std::unique_ptr<ShapePlan>> shapes_;
};

}  // namespace lightseq
