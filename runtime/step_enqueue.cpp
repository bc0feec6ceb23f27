// step_enqueue.cpp — one training step's launches (TrainStep::enqueue): the forward of every
// call over the step's activation buffers, the backward in reverse with the early parameter
// updates beside it (runtime/grad_lane.h), then the rest of the update. Issued eagerly or into
// a CUDA graph capture by TrainStep::run (step.cpp).
#include <fmt/format.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/grad_lane.h"
#include "runtime/step.h"
#include "runtime/step_arenas.h"

namespace lightseq {

using step_detail::align_up;
using step_detail::Io;
using step_detail::io_of;
using step_detail::kCounterBytes;
using step_detail::memset32;

void TrainStep::enqueue(Bucket& bk, bool train, CUstream s) {
  const ModelSpec& spec = model_->spec();
  const Precision p = spec.precision;
  const int64_t H = spec.embedding->hidden, eb = element_bytes(p);
  Allocator& al = *allocator_;
  const Io io = io_of(bk);
  memset32(bk.counters.get(), 0, kCounterBytes / 4,
           s);  // n_tokens and the error flags of this step
  const bool two = calls_.front().stream == Call::Stream::kSource;
  const RunShape src = bk.src, tgt = bk.tgt;
  auto rows_of = [](const RunShape& r) { return r.batch * r.seq; };
  auto shape_of = [&](const Call& c) {
    const bool source = ((c.type == LayerType::kEmbedding || c.type == LayerType::kFinalNorm) &&
                         c.stream == Call::Stream::kSource) ||
                        (two && c.type == LayerType::kEncoder);
    return source ? src : tgt;
  };
  auto dropout_of = [&](const Call& c) {
    DropoutConfig d = c.dropout;
    if (!train) d.attention = d.activation = d.hidden = d.embedding = d.attention_output = 0;
    return d;
  };
  // Activations: one [rows, H] buffer per stack boundary (the layers' inputs stay alive for their
  // backward), the masks, and one arena for every call's saved activations.
  const size_t n_calls = calls_.size();
  std::vector<int64_t> saved_at(n_calls, 0);
  int64_t saved_total = 0, hidden_total = 0;
  std::vector<int64_t> hidden_at(n_calls, -1);
  for (size_t i = 0; i + 1 < n_calls; ++i) {
    const Call& c = calls_[i];
    saved_at[i] = saved_total;
    saved_total += align_up(c.exec->saved_arena_bytes(shape_of(c)), kSavedArenaAlign);
    if (c.type == LayerType::kCriterion) continue;
    hidden_at[i] = hidden_total;  // this call's output
    hidden_total += align_up(rows_of(shape_of(c)) * H * eb, kSavedArenaAlign);
  }
  DeviceBuffer saved(al, static_cast<size_t>(std::max<int64_t>(saved_total, 1)), s);
  DeviceBuffer hidden(al, static_cast<size_t>(hidden_total), s);
  const int64_t src_rows = two ? rows_of(src) : 0, tgt_rows = rows_of(tgt);
  DeviceBuffer masks(al, static_cast<size_t>(align_up(src_rows, 256) + tgt_rows), s);
  uint8_t* src_mask = masks.as<uint8_t>();
  uint8_t* tgt_mask = masks.as<uint8_t>() + align_up(src_rows, 256);
  auto out_of = [&](size_t i) { return static_cast<char*>(hidden.get()) + hidden_at[i]; };
  // Two [rows, H] gradient buffers the backward alternates between (the current call's output
  // gradient, its input gradient); the criterion's fused linear + cross-entropy writes the first
  // in the forward.
  const int64_t max_rows = std::max(src_rows, tgt_rows);
  DeviceBuffer grad_buf;
  void* g[2] = {nullptr, nullptr};
  if (train) {
    grad_buf = DeviceBuffer(al, static_cast<size_t>(2 * align_up(max_rows * H * eb, 256)), s);
    g[0] = grad_buf.get();
    g[1] = static_cast<char*>(grad_buf.get()) + align_up(max_rows * H * eb, 256);
  }
  auto set = [](std::vector<void*>& args, int slot, const void* ptr) {
    if (slot >= 0) args[slot] = const_cast<void*>(ptr);
  };
  // With a process group (StepOptions::comm): the parameter-gradient arena is summed over the
  // group on `lane` as the backward completes each call's span, and the targets are counted over
  // the group while the forward runs. The lane also carries the early updates (after the sum).
  const Communicator* comm = train ? options_.comm.get() : nullptr;
  const SideLane* lane = train && (early_updates_ || comm) ? &side_lane(s, kUpdateLane) : nullptr;
  const Call& crit = calls_[n_calls - 2];
  auto crit_args = [&](std::vector<void*>& a, void* decoder_out, bool group_count) {
    set(a, crit.f[Call::kDecoderOut], decoder_out);
    set(a, crit.f[Call::kTargets], io.targets);
    set(a, crit.f[Call::kLoss], io.loss);
    set(a, crit.f[Call::kNll], io.nll);
    set(a, crit.f[Call::kBadTarget], io.bad_target);
    set(a, crit.f[Call::kLossScale], &mem_->state->loss_scale);
    set(a, crit.f[Call::kNTokens], io.n_tokens);
    set(a, crit.f[Call::kTotalTokens], group_count ? io.total_tokens : nullptr);
    // Fused linear + cross-entropy: its gradients come with the forward (none in evaluation).
    set(a, crit.f[Call::kGradDecoderOut], g[0]);
    if (!train) {
      for (int k : crit.fgrads) a[k] = nullptr;
    }
  };
  bool counting = false;  // the group's target count is being summed on the lane
  if (comm) {
    std::vector<void*> a = crit.fwd;
    crit_args(a, out_of(n_calls - 3), /*group_count=*/false);
    crit.exec->forward_steps_at(a, shape_of(crit), al, s, 0, count_steps_);
    fork_lane(*lane, s);
    comm->all_reduce_sum(io.n_tokens, io.total_tokens, 1, CommType::kF32, lane->stream);
    counting = true;
  }

  // ---- forward
  std::vector<std::vector<void*>> fargs(n_calls);
  void* memory = nullptr;  // the last encoder output (a decoder's encoder_out)
  void* prev = nullptr;
  for (size_t i = 0; i + 1 < n_calls; ++i) {
    const Call& c = calls_[i];
    std::vector<void*>& a = fargs[i] = c.fwd;
    const RunShape shape = shape_of(c);
    switch (c.type) {
      case LayerType::kEmbedding: {
        const bool source = c.stream == Call::Stream::kSource;
        if (!source && two) memory = prev;
        set(a, c.f[Call::kTokens], source ? io.src_tokens : io.tokens);
        set(a, c.f[Call::kTokenTypes], source ? nullptr : io.token_types);
        set(a, c.f[Call::kPaddingMask], source ? src_mask : tgt_mask);
        set(a, c.f[Call::kBadToken], io.bad_token);
        break;
      }
      case LayerType::kEncoder:
      case LayerType::kDecoder: {
        const bool source = two && c.type == LayerType::kEncoder;
        set(a, c.f[Call::kX], prev);
        set(a, c.f[Call::kKeyPaddingMask],
            spec.embedding->padding_idx >= 0 ? (source ? src_mask : tgt_mask) : nullptr);
        set(a, c.f[Call::kEncoderOut], memory);
        set(a, c.f[Call::kEncoderPaddingMask],
            spec.embedding->padding_idx >= 0 ? src_mask : nullptr);
        break;
      }
      case LayerType::kFinalNorm:
        set(a, c.f[Call::kX], prev);
        break;
      case LayerType::kCriterion:
        crit_args(a, prev, comm != nullptr);
        if (counting) join_lane(*lane, s);  // the group's count divides
        break;
      default:
        break;
    }
    if (c.type != LayerType::kCriterion) {
      // The layer's output: "out" / "normed" / "embedded" for the embedding, "y" for a stack.
      for (int k : c.outputs) a[k] = out_of(i);
      prev = out_of(i);
    }
    c.exec->forward_at(a, shape, dropout_of(c), al, s,
                       static_cast<char*>(saved.get()) + saved_at[i]);
  }
  if (!train) return;

  // ---- backward, in reverse. The embedding's gradients (both streams add into them) start at
  // zero, except a tied output projection's, which the criterion wrote.
  for (const ArenaEntry& e : arena_.entries) {
    if (e.layer != "embedding") continue;
    if (spec.embedding->tie_output && e.param == "embed_tokens.weight") continue;
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(
        reinterpret_cast<CUdeviceptr>(static_cast<char*>(mem_->grads.get()) + e.offset * eb), 0,
        static_cast<size_t>(e.numel * eb), s));
  }
  DeviceBuffer grad_memory;
  if (two) {
    grad_memory = DeviceBuffer(al, static_cast<size_t>(src_rows * H * eb), s);
    LIGHTSEQ_CU_CHECK(
        driver().cuMemsetD8Async(grad_memory.device_ptr(), 0, grad_memory.bytes(), s));
  }
  // The optimizer's update kernel (steps [0, 1) of its plan) or finishing kernel ([1, 2)) over
  // elements [begin, begin + count) of the arenas, on `stream`.
  const Call& opt = calls_.back();
  const std::vector<ManifestEntry>& opt_args = opt.exec->manifest(false);
  auto update = [&](int64_t begin, int64_t count, CUstream stream, size_t from, size_t to) {
    if (count <= 0) return;
    // The tensors the optimizer sizes by the run's batch are the arenas: each from `begin` on.
    std::vector<void*> a = opt.fwd;
    for (size_t k = 0; k < opt_args.size(); ++k) {
      if (a[k] && opt_args[k].shape == Shape{Dim::batch()})
        a[k] = static_cast<char*>(a[k]) + begin * elem_bytes(opt_args[k].type, p);
    }
    opt.exec->forward_steps_at(a, RunShape{count, 1, 0}, al, stream, from, to);
  };
  // Elements [begin, begin + count) of the gradient arena summed over the group, on `stream`.
  const CommType grad_type = comm_type(p);
  auto reduce = [&](int64_t begin, int64_t count, CUstream stream) {
    void* at = static_cast<char*>(mem_->grads.get()) + begin * eb;
    comm->all_reduce_sum(at, at, static_cast<size_t>(count), grad_type, stream);
  };
  std::vector<std::pair<int64_t, int64_t>> done;  // (begin, count): summed and/or updated early
  auto after_backward = [&](const Call& c) {
    if (!lane || c.arena_count == 0) return;
    fork_lane(*lane, s);
    if (comm) reduce(c.arena_begin, c.arena_count, lane->stream);
    if (early_updates_) update(c.arena_begin, c.arena_count, lane->stream, 0, 1);
    done.push_back({c.arena_begin, c.arena_count});
  };
  void* dy = g[0];                            // the gradient of the current call's output
  if (!crit.exec->plan().backward.empty()) {  // else its forward wrote the gradients
    std::vector<void*> a = crit.bwd;
    set(a, crit.b[Call::kDecoderOut], fargs[n_calls - 2][crit.f[Call::kDecoderOut]]);
    set(a, crit.b[Call::kGradDecoderOut], dy);
    crit.exec->backward_at(a, static_cast<char*>(saved.get()) + saved_at[n_calls - 2],
                           shape_of(crit), dropout_of(crit), GradMode::kOverwrite, al, s);
  }
  for (size_t i = n_calls - 2; i-- > 0;) {
    const Call& c = calls_[i];
    std::vector<void*> a = c.bwd;
    const RunShape shape = shape_of(c);
    if (c.type == LayerType::kEmbedding) {
      const bool source = c.stream == Call::Stream::kSource;
      set(a, c.b[Call::kTokens], source ? io.src_tokens : io.tokens);
      set(a, c.b[Call::kTokenTypes], source ? nullptr : io.token_types);
      set(a, c.b[Call::kGradOut], dy);
      c.exec->backward_at(a, static_cast<char*>(saved.get()) + saved_at[i], shape, dropout_of(c),
                          c.mode, al, s);
      // Below the target stream's embedding come the encoders: their output's gradient is what
      // the decoders summed into grad_memory.
      if (!source && two) dy = grad_memory.get();
      continue;
    }
    void* dx = dy == g[0] ? g[1] : g[0];
    set(a, c.b[Call::kX], out_of(i - 1));  // a stack's input: the previous call's output
    set(a, c.b[Call::kEncoderOut], memory);
    set(a, c.b[Call::kGradY], dy);
    set(a, c.b[Call::kGradX], dx);
    set(a, c.b[Call::kGradEncoderOut], grad_memory.get());
    c.exec->backward_at(a, static_cast<char*>(saved.get()) + saved_at[i], shape, dropout_of(c),
                        GradMode::kOverwrite, al, s);
    after_backward(c);
    dy = dx;
  }

  // ---- the rest of the gradient summed (the parts no stack call owns: the embedding's, the
  // criterion's), then the update: everything, or (after early updates) that rest
  std::vector<std::pair<int64_t, int64_t>> rest;  // [begin, end) element spans
  std::sort(done.begin(), done.end());
  int64_t at = 0;
  for (const auto& [b, n] : done) {
    if (b > at) rest.push_back({at, b});
    at = b + n;
  }
  if (at < arena_.total) rest.push_back({at, arena_.total});
  if (lane && !done.empty()) join_lane(*lane, s);
  if (comm) {
    for (const auto& [b, e] : rest) reduce(b, e - b, s);
  }
  if (!early_updates_ || done.empty()) {
    opt.exec->forward_at(opt.fwd, RunShape{arena_.total, 1, 0}, DropoutConfig{}, al, s, nullptr);
    return;
  }
  for (const auto& [b, e] : rest) update(b, e - b, s, 0, 1);
  update(0, arena_.total, s, 1, 2);  // the finishing kernel: step += 1 (loss scale, overflow)
}

}  // namespace lightseq
