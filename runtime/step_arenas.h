// step_arenas.h — TrainStep's internals that its two source files share (step.cpp: the schedule;
// step_state.cpp: parameters and checkpoints): the persistent device memory, one layer call's
// bound arguments, small helpers. Internal to runtime/.
#pragma once

#include <array>
#include <string_view>
#include <vector>

#include "common/adam_types.cuh"
#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/step.h"

namespace lightseq {

// The step's persistent device memory: the arenas (params and grads in the model's dtype, the
// rest fp32) and the run-time scalars every captured step reads.
struct TrainStep::Arenas {
  DeviceBuffer params, grads, exp_avg, exp_avg_sq, master;
  DeviceBuffer scalars;  // OptimState | lr (f32) | seed (u64) | offset (u64), each 16-aligned
  kern::OptimState* state = nullptr;
  float* lr = nullptr;
  uint64_t* seed = nullptr;
  uint64_t* offset = nullptr;
  static constexpr size_t kSeedAt = 32;  // the seed's byte offset in `scalars`
};

// One layer call of the step: its executor, its arguments in manifest order with the parameters
// (and their gradients) already bound, and where the per-step tensors go.
struct TrainStep::Call {
  // which token stream an embedding (or a final LayerNorm) call reads
  enum class Stream { kSource, kTarget };
  const LayerExecutor* exec = nullptr;
  LayerType type = LayerType::kEncoder;
  Stream stream = Stream::kTarget;
  std::vector<void*> fwd, bwd;
  DropoutConfig dropout;
  GradMode mode = GradMode::kOverwrite;
  // The per-step tensors' places in fwd / bwd (-1: the layer has none such), resolved once from
  // the manifests (kSlotNames), so a step binds them without looking anything up by name.
  enum Slot {
    kTokens,
    kTokenTypes,
    kPaddingMask,
    kBadToken,
    kX,
    kKeyPaddingMask,
    kEncoderOut,
    kEncoderPaddingMask,
    kDecoderOut,
    kTargets,
    kLoss,
    kNll,
    kBadTarget,
    kLossScale,
    kNTokens,
    kGradOut,
    kGradY,
    kGradX,
    kGradEncoderOut,
    kGradDecoderOut,
    kSlots
  };
  static constexpr const char* kSlotNames[kSlots] = {"tokens",
                                                     "token_types",
                                                     "padding_mask",
                                                     "bad_token",
                                                     "x",
                                                     "key_padding_mask",
                                                     "encoder_out",
                                                     "encoder_padding_mask",
                                                     "decoder_out",
                                                     "targets",
                                                     "loss",
                                                     "nll",
                                                     "bad_target",
                                                     "loss_scale",
                                                     "n_tokens",
                                                     "grad_out",
                                                     "grad_y",
                                                     "grad_x",
                                                     "grad_encoder_out",
                                                     "grad_decoder_out"};
  std::array<int, kSlots> f{}, b{};
  // The span of the parameter arena this call's parameters occupy ([arena_begin, +arena_count)
  // elements, nothing else inside), whose update may run as soon as its backward has run; count 0:
  // none (a call without parameters, or not one span).
  int64_t arena_begin = 0, arena_count = 0;
  std::vector<int> outputs;  // the forward's model-dtype outputs ("y", the embedding's "out")
  std::vector<int> fgrads;   // parameter gradients the forward writes (the fused criterion)
  void resolve_slots() {
    for (int dir = 0; dir < 2; ++dir) {
      const std::vector<ManifestEntry>& m = exec->manifest(dir == 1);
      std::array<int, kSlots>& at = dir == 0 ? f : b;
      at.fill(-1);
      for (size_t i = 0; i < m.size(); ++i) {
        for (int k = 0; k < kSlots; ++k) {
          if (m[i].name == kSlotNames[k]) at[k] = static_cast<int>(i);
        }
        if (dir == 0 && m[i].role == TensorRole::kOutput && m[i].type == ElemType::kModel)
          outputs.push_back(static_cast<int>(i));
        if (dir == 0 && m[i].role == TensorRole::kParamGrad) fgrads.push_back(static_cast<int>(i));
      }
    }
  }
  int fslot(std::string_view name) const {  // construction only
    const std::vector<ManifestEntry>& m = exec->manifest(false);
    for (size_t i = 0; i < m.size(); ++i) {
      if (m[i].name == name) return static_cast<int>(i);
    }
    return -1;
  }
};

namespace step_detail {

inline void sync(CUstream s) { LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(s)); }

// n values of T from device memory (enqueued; read them after sync(s)).
template <typename T>
std::vector<T> download(const void* p, size_t n, CUstream s) {
  std::vector<T> v(n);
  if (n) {
    LIGHTSEQ_CU_CHECK(
        driver().cuMemcpyDtoHAsync(v.data(), reinterpret_cast<CUdeviceptr>(p), n * sizeof(T), s));
  }
  return v;
}

}  // namespace step_detail
}  // namespace lightseq
