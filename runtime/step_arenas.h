// step_arenas.h — TrainStep's internals that its source files share (step.cpp: construction,
// buckets, run; step_enqueue.cpp: one step's launches; step_state.cpp: parameters and
// checkpoints): the persistent device memory, one layer call's bound arguments, one shape's
// buffers, small helpers. Internal to runtime/.
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
    kTotalTokens,
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
                                                     "total_tokens",
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

// One shape's inputs and outputs at fixed addresses (a captured graph reads and writes them),
// and its graph.
struct TrainStep::Bucket {
  RunShape src, tgt;  // {B, S}, {B, T, S}
  DeviceBuffer src_tokens, tokens, targets;
  DeviceBuffer token_types;          // a model with token types: the batch's, or zeros
  DeviceBuffer loss, nll, counters;  // counters: n_tokens (f32) | bad_token | bad_target (i32)
  bool warm = false;                 // ran once uncaptured
  CUgraphExec exec = nullptr;
  ~Bucket() {
    if (exec) driver().cuGraphExecDestroy(exec);
  }
};

namespace step_detail {

inline void sync(CUstream s) { LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(s)); }

inline int64_t align_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// A step's counters, each in its own 16-byte slot (every bound pointer is 16-byte aligned):
// n_tokens (f32), bad_token, bad_target (i32), and with a process group the group's n_tokens
// summed (f32: exact up to 2^24 targets a step).
enum CounterSlot : size_t {
  kTokensSlot,
  kBadTokenSlot,
  kBadTargetSlot,
  kTotalTokensSlot,
  kCounterSlots
};
constexpr size_t kCounterSlotBytes = 16, kCounterBytes = kCounterSlots * kCounterSlotBytes;

struct Io {
  const int64_t *src_tokens, *tokens, *targets, *token_types;
  float *loss, *nll, *n_tokens;
  int *bad_token, *bad_target;
  float* total_tokens;
};

inline Io io_of(const TrainStep::Bucket& b) {
  auto* c = static_cast<char*>(b.counters.get());
  return {b.src_tokens.as<int64_t>(),
          b.tokens.as<int64_t>(),
          b.targets.as<int64_t>(),
          b.token_types ? b.token_types.as<int64_t>() : nullptr,
          b.loss.as<float>(),
          b.nll.as<float>(),
          reinterpret_cast<float*>(c + kTokensSlot * kCounterSlotBytes),
          reinterpret_cast<int*>(c + kBadTokenSlot * kCounterSlotBytes),
          reinterpret_cast<int*>(c + kBadTargetSlot * kCounterSlotBytes),
          reinterpret_cast<float*>(c + kTotalTokensSlot * kCounterSlotBytes)};
}

inline void memset32(void* p, uint32_t v, size_t n, CUstream s) {
  LIGHTSEQ_CU_CHECK(driver().cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(p), v, n, s));
}

inline void copy_d2d(void* dst, const void* src, int64_t bytes, CUstream s) {
  if (bytes == 0) return;
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst),
                                               reinterpret_cast<CUdeviceptr>(src), bytes, s));
}

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
