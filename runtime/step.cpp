#include "runtime/step.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "adam.sig.cuh"
#include "common/adam_types.cuh"
#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/grad_lane.h"
#include "runtime/step_arenas.h"

namespace lightseq {

using step_detail::align_up;
using step_detail::copy_d2d;
using step_detail::CounterSlot;
using step_detail::download;
using step_detail::Io;
using step_detail::io_of;
using step_detail::kBadTargetSlot;
using step_detail::kBadTokenSlot;
using step_detail::kCounterBytes;
using step_detail::kCounterSlotBytes;
using step_detail::kTokensSlot;
using step_detail::memset32;
using step_detail::sync;

TrainStep::TrainStep(std::shared_ptr<const CompiledModel> model, const StepOptions& options)
    : model_(std::move(model)), options_(options) {
  const ModelSpec& spec = model_->spec();
  std::vector<std::string> missing;
  if (!spec.embedding) missing.push_back("an embedding");
  if (!spec.criterion) missing.push_back("a criterion");
  if (!spec.optimizer) missing.push_back("an optimizer");
  if (!missing.empty()) {
    throw Error(
        fmt::format("model '{}' cannot train as a whole: its spec has no {} (docs/spec.md: add the "
                    "\"embedding\", \"criterion\" and \"optimizer\" sections)",
                    spec.name, fmt::join(missing, ", no ")));
  }
  if (spec.criterion->input != CriterionInput::kHidden) {
    throw Error(fmt::format(
        "model '{}' cannot train as a whole: its criterion reads logits (criterion.input \"{}\"), "
        "and the step's criterion projects the last stack's output itself; remove \"input\"",
        spec.name, to_string(spec.criterion->input)));
  }
  bool seen_decoder = false;
  for (size_t i = 0; i < spec.layers.size(); ++i) {
    if (spec.layers[i].kind == LayerKind::kDecoder) seen_decoder = true;
    if (spec.layers[i].kind == LayerKind::kEncoder && seen_decoder) {
      throw Error(fmt::format(
          "model '{}': layers[{}] is an encoder stack after a decoder stack; the training step "
          "runs the encoder stacks, then the decoder stacks: reorder the spec's layers",
          spec.name, i));
    }
  }
  // Before anything is allocated (the destructor does not run for a constructor that throws):
  // a communicator on another device.
  if (options_.comm && options_.comm->device() != model_->device()) {
    throw Error(fmt::format(
        "TrainStep: the process group's communicator is on device {}, the model on device {}: "
        "make both on the device this process trains on",
        options_.comm->device(), model_->device()));
  }
  ScopedContext ctx(model_->device());
  arena_ = parameter_arena(spec);
  allocator_ = std::make_unique<StreamOrderedAllocator>(model_->device());
  // With side lanes (runtime/grad_lane.h, made at the default, lowest priority): the graph's
  // nodes keep the priority of the stream they were captured on and the graph runs by them
  // (CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY below), so the chain's kernels, captured at the
  // highest priority, are dispatched ahead of the lanes' where both wait for SMs. Not yet
  // measured (benchmarks/RESULTS.md): the one-stream step is captured as before.
  prioritized_ = grad_lane_enabled() || options_.comm != nullptr;
  int least = 0, greatest = 0;
  LIGHTSEQ_CU_CHECK(driver().cuCtxGetStreamPriorityRange(&least, &greatest));
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreateWithPriority(&capture_stream_, CU_STREAM_NON_BLOCKING,
                                                        prioritized_ ? greatest : least));
  mem_ = std::make_unique<Arenas>();
  const Precision p = spec.precision;
  const int64_t n = arena_.total;
  const size_t pbytes = static_cast<size_t>(n) * element_bytes(p);
  CUstream s = nullptr;
  Allocator& al = *allocator_;
  mem_->params = DeviceBuffer(al, pbytes, s);
  mem_->grads = DeviceBuffer(al, pbytes, s);
  mem_->exp_avg = DeviceBuffer(al, n * sizeof(float), s);
  mem_->exp_avg_sq = DeviceBuffer(al, n * sizeof(float), s);
  if (p != Precision::kFp32) mem_->master = DeviceBuffer(al, n * sizeof(float), s);
  mem_->scalars = DeviceBuffer(al, 64, s);
  char* sc = static_cast<char*>(mem_->scalars.get());
  mem_->state = reinterpret_cast<kern::OptimState*>(sc);
  mem_->lr = reinterpret_cast<float*>(sc + 16);
  mem_->seed = reinterpret_cast<uint64_t*>(sc + Arenas::kSeedAt);
  mem_->offset = reinterpret_cast<uint64_t*>(sc + 48);
  // Zero everything (the gradient arena's alignment padding must stay zero: nothing writes it).
  for (DeviceBuffer* b : {&mem_->params, &mem_->grads, &mem_->exp_avg, &mem_->exp_avg_sq,
                          &mem_->master, &mem_->scalars}) {
    if (*b) LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(b->device_ptr(), 0, b->bytes(), s));
  }
  const float scale = options_.loss_scale.value_or(p == Precision::kFp16 ? 65536.f : 1.f);
  const kern::OptimState st = kern::initial_optim_state(scale);
  LIGHTSEQ_CU_CHECK(
      driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mem_->state), &st, sizeof(st), s));
  const uint64_t seed = rank_seed();
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mem_->seed), &seed,
                                               sizeof(uint64_t), s));
  set_lr(static_cast<float>(spec.optimizer->lr), s);
  sync(s);

  // The calls: embedding (source), encoder instances, embedding (target), decoder instances,
  // criterion, optimizer. Parameters bind to the arena by state_dict name.
  auto param_at = [&](const ArenaEntry& e, bool grad) -> void* {
    char* base = static_cast<char*>(grad ? mem_->grads.get() : mem_->params.get());
    return base + e.offset * element_bytes(p);
  };
  const bool has_decoder = std::any_of(spec.layers.begin(), spec.layers.end(),
                                       [](const auto& l) { return l.kind == LayerKind::kDecoder; });
  int call_index = 0;
  auto make_call = [&](const LayerExecutor& ex, int64_t instance) {
    Call c;
    c.exec = &ex;
    c.type = ex.plan().layer.type;
    // The optimizer's "parameters" are the arenas themselves (bound below).
    for (int dir = 0; dir < 2 && c.type != LayerType::kOptimizer; ++dir) {
      const std::vector<ManifestEntry>& m = ex.manifest(dir == 1);
      std::vector<void*>& args = dir == 0 ? c.fwd : c.bwd;
      args.assign(m.size(), nullptr);
      for (size_t i = 0; i < m.size(); ++i) {
        const bool grad = m[i].role == TensorRole::kParamGrad;
        if (m[i].role != TensorRole::kParam && !grad) continue;
        const std::string name = arena_name(c.type, instance, grad ? m[i].grad_of : m[i].name);
        const ArenaEntry* e = find_entry(arena_, name);
        if (!e) {
          throw InternalError(fmt::format("TrainStep: {} binds '{}', which the arena lacks",
                                          ex.plan().layer.name, name));
        }
        args[i] = param_at(*e, grad);
      }
    }
    c.dropout.seed_ptr = mem_->seed;
    c.dropout.offset_ptr = mem_->offset;
    c.dropout.offset = static_cast<uint64_t>(call_index++) * kDropoutOffsetStride;
    c.resolve_slots();
    if (c.type != LayerType::kOptimizer) {
      // Its parameters' span of the arena, if no other call's parameter lies inside it.
      int64_t lo = INT64_MAX, hi = 0;
      std::vector<const ArenaEntry*> mine;
      for (const ManifestEntry& m : ex.manifest(false)) {
        if (m.role != TensorRole::kParam) continue;
        const ArenaEntry* e = find_entry(arena_, arena_name(c.type, instance, m.name));
        if (!e) continue;
        mine.push_back(e);
        lo = std::min(lo, e->offset);
        hi = std::max(hi, e->offset + e->numel);
      }
      const bool alone =
          std::none_of(arena_.entries.begin(), arena_.entries.end(), [&](const auto& e) {
            return e.offset < hi && e.offset + e.numel > lo &&
                   std::find(mine.begin(), mine.end(), &e) == mine.end();
          });
      if (!mine.empty() && alone) {
        c.arena_begin = lo;
        c.arena_count = hi - lo;
      }
    }
    return c;
  };
  const LayerExecutor& emb = model_->layer("embedding");
  auto emb_call = [&](Call::Stream st) {
    Call c = make_call(emb, 0);
    c.stream = st;
    c.dropout.embedding = spec.embedding->dropout;
    c.mode = GradMode::kAccumulate;  // both streams add into one table (zeroed or tied below)
    return c;
  };
  std::map<LayerKind, int64_t> instances;
  auto stack_calls = [&](LayerKind kind) {
    for (size_t i = 0; i < spec.layers.size(); ++i) {
      const LayerStackSpec& l = spec.layers[i];
      if (l.kind != kind) continue;
      for (int64_t k = 0; k < l.count; ++k) {
        Call c = make_call(model_->stack(static_cast<int>(i)), instances[kind]++);
        c.dropout.attention = l.dropout.attention;
        c.dropout.activation = l.dropout.activation;
        c.dropout.hidden = l.dropout.hidden;
        c.dropout.attention_output = l.dropout.attention_output_p();
        calls_.push_back(std::move(c));
      }
      if (l.final_norm) {  // after the kind's last stack (validated)
        Call c = make_call(model_->layer(fmt::format("layers[{}].final_norm", i)), 0);
        c.stream = has_decoder && kind == LayerKind::kEncoder ? Call::Stream::kSource
                                                              : Call::Stream::kTarget;
        calls_.push_back(std::move(c));
      }
    }
  };
  if (has_decoder) {
    calls_.push_back(emb_call(Call::Stream::kSource));
    stack_calls(LayerKind::kEncoder);
    calls_.push_back(emb_call(Call::Stream::kTarget));
    stack_calls(LayerKind::kDecoder);
  } else {
    calls_.push_back(emb_call(Call::Stream::kTarget));
    stack_calls(LayerKind::kEncoder);
  }
  calls_.push_back(make_call(model_->layer("criterion"), 0));
  Call opt = make_call(model_->layer("optimizer"), 0);
  opt.fwd.assign(opt.exec->manifest(false).size(), nullptr);
  auto bind_opt = [&](std::string_view name, void* ptr) {
    const int i = opt.fslot(name);
    if (i >= 0) opt.fwd[i] = ptr;
  };
  bind_opt("params", mem_->params.get());
  bind_opt("grads", mem_->grads.get());
  bind_opt("exp_avg", mem_->exp_avg.get());
  bind_opt("exp_avg_sq", mem_->exp_avg_sq.get());
  bind_opt("master_params", mem_->master.get());
  bind_opt("lr", mem_->lr);
  bind_opt("optim_state", mem_->state);
  // Early updates: an optimizer plan that is one update kernel and the step's finishing kernel
  // (no gradient-norm clipping or overflow check, which need every gradient first) updates a
  // stack layer's parameters as soon as that layer's backward has run, on a second stream beside
  // the rest of the backward, and the rest (the embedding's, whose gradient comes last) after it.
  const std::vector<Step>& opt_steps = opt.exec->plan().forward;
  auto is = [&](size_t i, const sig::Kernel& k) {
    const auto* ks = i < opt_steps.size() ? std::get_if<KernelStep>(&opt_steps[i]) : nullptr;
    return ks && ks->kernel.sig == &k;
  };
  const char* early = std::getenv("LIGHTSEQ_EARLY_UPDATES");
  early_updates_ = opt_steps.size() == 2 && is(0, sig::kAdam) && is(1, sig::kOptimFinish) &&
                   grad_lane_enabled() && !(early && std::string_view(early) == "0");
  calls_.push_back(std::move(opt));
  if (options_.comm) {
    // The criterion's forward steps up to the one that counts the targets: a step with a
    // process group runs them first, so that the group's count is summed while the forward runs.
    const Call& crit = calls_[calls_.size() - 2];
    const int n_tokens = crit.fslot("n_tokens"), total = crit.fslot("total_tokens");
    const std::vector<Step>& steps = crit.exec->plan().forward;
    for (size_t i = 0; i < steps.size() && n_tokens >= 0; ++i) {
      const auto* ks = std::get_if<KernelStep>(&steps[i]);
      const int t = crit.exec->manifest(false)[static_cast<size_t>(n_tokens)].tensor;
      if (ks && std::find(ks->writes.begin(), ks->writes.end(), t) != ks->writes.end()) {
        count_steps_ = i + 1;
        break;
      }
    }
    if (count_steps_ == 0 || total < 0) {
      throw InternalError(
          "TrainStep: the criterion's plan has no step counting the targets (n_tokens) or no "
          "total_tokens input, which a process group needs");
    }
  }
}

TrainStep::~TrainStep() {
  if (!mem_) return;
  ScopedContext ctx(model_->device());
  buckets_.clear();
  mem_.reset();
  if (capture_stream_) driver().cuStreamDestroy(capture_stream_);
}

uint64_t TrainStep::rank_seed() const {
  const uint64_t rank = options_.comm ? static_cast<uint64_t>(options_.comm->rank()) : 0;
  return options_.seed + rank * 0x9e3779b97f4a7c15ull;  // 2^64 / golden ratio: ranks far apart
}

void* TrainStep::params() const { return mem_->params.get(); }
void* TrainStep::grads() const { return mem_->grads.get(); }
void* TrainStep::masters() const { return mem_->master ? mem_->master.get() : nullptr; }
void* TrainStep::exp_avg() const { return mem_->exp_avg.get(); }
void* TrainStep::exp_avg_sq() const { return mem_->exp_avg_sq.get(); }

TrainStep::Outputs TrainStep::last_outputs() const {
  if (!last_) throw Error("TrainStep::last_outputs: no step has run yet");
  const Io io = io_of(*last_);
  return {io.loss, io.nll, last_->tgt.batch * last_->tgt.seq, io.n_tokens};
}

const ArenaEntry& TrainStep::entry(std::string_view name) const {
  if (const ArenaEntry* e = find_entry(arena_, name)) return *e;
  std::vector<std::string> near;
  const std::string_view tail = name.substr(
      name.rfind('.') == std::string_view::npos ? 0 : name.rfind('.', name.rfind('.') - 1) + 1);
  for (const ArenaEntry& e : arena_.entries) {
    if (e.name.find(tail) != std::string::npos && near.size() < 4) near.push_back(e.name);
  }
  throw Error(fmt::format("model '{}' has no parameter '{}'{}", model_->spec().name, name,
                          near.empty() ? std::string(" (TrainStep::arena() lists them)")
                                       : fmt::format("; did you mean {}?", fmt::join(near, ", "))));
}

void TrainStep::set_lr(float lr, CUstream stream) {
  uint32_t bits;
  std::memcpy(&bits, &lr, sizeof(bits));
  ScopedContext ctx(model_->device());
  memset32(mem_->lr, bits, 1, stream);  // by value: nothing on the host must outlive the call
}

void TrainStep::check_pointers(const StepBatch& b) const {
  const bool two = calls_.front().stream == Call::Stream::kSource;
  std::vector<std::string> bad;
  if (!b.tokens) bad.push_back("tokens is null");
  if (!b.targets) bad.push_back("targets is null");
  if (two && !b.src_tokens)
    bad.push_back("src_tokens is null (the model has decoder stacks: it reads a source)");
  if (!two && b.src_tokens)
    bad.push_back("src_tokens is given but the model has no decoder stack to attend to it");
  if (b.token_types && model_->spec().embedding->token_types == 0)
    bad.push_back(
        "token_types is given but the embedding has no token-type table (set "
        "embedding.token_types)");
  if (!bad.empty()) {
    throw Error(
        fmt::format("TrainStep ({}): bad batch: {}", model_->spec().name, fmt::join(bad, "; ")));
  }
}

void TrainStep::check_batch(const StepBatch& b) const {
  check_pointers(b);
  const bool two = calls_.front().stream == Call::Stream::kSource;
  std::vector<std::string> bad;
  if (b.batch < 1) bad.push_back(fmt::format("batch = {} (must be at least 1)", b.batch));
  if (b.len < 1) bad.push_back(fmt::format("len = {} (must be at least 1)", b.len));
  if (two && b.src_len < 1)
    bad.push_back(fmt::format("src_len = {} (must be at least 1)", b.src_len));
  if (!bad.empty()) {
    throw Error(
        fmt::format("TrainStep ({}): bad batch: {}", model_->spec().name, fmt::join(bad, "; ")));
  }
  const EmbeddingSpec& e = *model_->spec().embedding;
  // Counted positions (fairseq's) start past padding_idx.
  const int64_t maxp = e.positions_from == PositionsFrom::kTokens
                           ? e.max_positions - e.padding_idx - 1
                           : e.max_positions;
  for (int64_t l : {b.len, two ? b.src_len : int64_t{0}}) {
    if (l > maxp) {
      throw Error(fmt::format(
          "TrainStep ({}): a sequence of {} tokens is longer than the embedding's max_positions "
          "{}{}: cut it, or raise max_positions",
          model_->spec().name, l, e.max_positions,
          e.positions_from == PositionsFrom::kTokens
              ? fmt::format(" allows ({} with positions counted from padding_idx {})", maxp,
                            e.padding_idx)
              : ""));
    }
  }
  for (const Call& c : calls_) {
    if (c.type != LayerType::kEncoder && c.type != LayerType::kDecoder) continue;
    const bool enc_of_two = two && c.type == LayerType::kEncoder;
    model_->check_run_shape(c.exec->plan().layer.name,
                            {b.batch, enc_of_two ? b.src_len : b.len, b.src_len});
  }
}

// A shape's buffers, on stream `s`.
std::unique_ptr<TrainStep::Bucket> TrainStep::make_bucket(const StepBatch& b, CUstream s) const {
  const bool two = calls_.front().stream == Call::Stream::kSource;
  auto bk = std::make_unique<Bucket>();
  bk->src = {b.batch, two ? b.src_len : 0, 0};
  bk->tgt = {b.batch, b.len, two ? b.src_len : 0};
  Allocator& al = *allocator_;
  const size_t rows = static_cast<size_t>(b.batch * b.len);
  if (two) bk->src_tokens = DeviceBuffer(al, b.batch * b.src_len * sizeof(int64_t), s);
  bk->tokens = DeviceBuffer(al, rows * sizeof(int64_t), s);
  bk->targets = DeviceBuffer(al, rows * sizeof(int64_t), s);
  if (model_->spec().embedding->token_types > 0)
    bk->token_types = DeviceBuffer(al, rows * sizeof(int64_t), s);
  bk->loss = DeviceBuffer(al, rows * sizeof(float), s);
  bk->nll = DeviceBuffer(al, rows * sizeof(float), s);
  bk->counters = DeviceBuffer(al, kCounterBytes, s);
  return bk;
}

// The batch's tokens into the bucket's (fixed) input buffers, on `s`.
void TrainStep::copy_inputs(Bucket& bk, const StepBatch& b, CUstream s) const {
  if (bk.src_tokens) copy_d2d(bk.src_tokens.get(), b.src_tokens, bk.src_tokens.bytes(), s);
  copy_d2d(bk.tokens.get(), b.tokens, bk.tokens.bytes(), s);
  copy_d2d(bk.targets.get(), b.targets, bk.targets.bytes(), s);
  if (bk.token_types) {
    if (b.token_types) {
      copy_d2d(bk.token_types.get(), b.token_types, bk.token_types.bytes(), s);
    } else {
      LIGHTSEQ_CU_CHECK(
          driver().cuMemsetD8Async(bk.token_types.device_ptr(), 0, bk.token_types.bytes(), s));
    }
  }
}

TrainStep::Bucket& TrainStep::bucket_for(const StepBatch& b) {
  const bool two = calls_.front().stream == Call::Stream::kSource;
  const std::array<int64_t, 3> key{b.batch, two ? b.src_len : 0, b.len};
  auto it = buckets_.find(key);
  if (it != buckets_.end()) return *it->second;
  check_batch(b);
  // The step's own memory (on the null stream, made ready once): it outlives any caller's stream.
  std::unique_ptr<Bucket> bk = make_bucket(b, nullptr);
  sync(nullptr);
  return *buckets_.emplace(key, std::move(bk)).first->second;
}

// The whole step on `s`. Every buffer made here is freed before it returns (stream-ordered), so
// under capture the graph owns its memory and leaves none behind.
void TrainStep::run(const StepBatch& b, CUstream s) {
  ScopedContext ctx(model_->device());
  check_pointers(b);
  Bucket& bk = bucket_for(b);
  copy_inputs(bk, b, s);
  // This step's dropout stream: every call draws at its own offset past the steps before.
  const uint64_t offset = static_cast<uint64_t>(steps_run_) * calls_.size() * kDropoutOffsetStride;
  memset32(mem_->offset, static_cast<uint32_t>(offset), 1, s);
  memset32(reinterpret_cast<char*>(mem_->offset) + 4, static_cast<uint32_t>(offset >> 32), 1, s);
  if (!options_.cuda_graphs || !bk.warm) {
    enqueue(bk, /*train=*/true, s);
    bk.warm = true;
  } else {
    if (!bk.exec) {
      // Captured on the step's own stream (the caller's may be the legacy default stream, which
      // cannot capture); capturing runs nothing, and the graph is launched on the caller's.
      const CUstream c = capture_stream_;
      // The side lanes the capture forks into exist before it (made in relaxed capture mode
      // otherwise: allowed, but nothing need be created while capturing).
      if (prioritized_) {
        side_lane(c, kGradLane);
        side_lane(c, kUpdateLane);
      }
      LIGHTSEQ_CU_CHECK(driver().cuStreamBeginCapture(c, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
      try {
        enqueue(bk, /*train=*/true, c);
      } catch (...) {
        CUgraph broken = nullptr;
        driver().cuStreamEndCapture(c, &broken);
        if (broken) driver().cuGraphDestroy(broken);
        throw;
      }
      CUgraph graph = nullptr;
      LIGHTSEQ_CU_CHECK(driver().cuStreamEndCapture(c, &graph));
      const CUresult r = driver().cuGraphInstantiate(
          &bk.exec, graph, prioritized_ ? CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY : 0);
      driver().cuGraphDestroy(graph);
      LIGHTSEQ_CU_CHECK(r);
      ++graphs_captured_;
    }
    LIGHTSEQ_CU_CHECK(driver().cuGraphLaunch(bk.exec, s));
    ++graph_replays_;
  }
  last_ = &bk;
  ++steps_run_;
}

StepStats TrainStep::stats(CUstream s) const {
  if (!last_) throw Error("TrainStep::stats: no step has run yet");
  ScopedContext ctx(model_->device());
  return read_stats(*last_, s);
}

StepStats TrainStep::read_stats(const Bucket& bk, CUstream s) const {
  const size_t rows = static_cast<size_t>(bk.tgt.batch * bk.tgt.seq);
  auto loss = download<float>(bk.loss.get(), rows, s);
  auto nll = download<float>(bk.nll.get(), rows, s);
  auto counters = download<char>(bk.counters.get(), kCounterBytes, s);
  auto state = download<kern::OptimState>(mem_->state, 1, s);
  sync(s);
  StepStats st;
  for (size_t i = 0; i < rows; ++i) st.loss += loss[i], st.nll += nll[i];
  auto slot = [&]<typename V>(CounterSlot i, V v) {
    std::memcpy(&v, counters.data() + i * kCounterSlotBytes, sizeof(V));
    return v;
  };
  st.tokens = static_cast<int64_t>(slot(kTokensSlot, 0.f));
  st.bad_token = slot(kBadTokenSlot, int32_t{0}) != 0;
  st.bad_target = slot(kBadTargetSlot, int32_t{0}) != 0;
  st.updates = state[0].step;
  st.loss_scale = state[0].loss_scale;
  st.skipped_updates = steps_run_ - (st.updates - updates_base_);
  return st;
}

StepStats TrainStep::evaluate(const StepBatch& b, CUstream s) {
  ScopedContext ctx(model_->device());
  check_batch(b);
  // Its own buffers, freed at the end: the last training step's outputs stay readable by stats().
  std::unique_ptr<Bucket> bk = make_bucket(b, s);
  copy_inputs(*bk, b, s);
  enqueue(*bk, /*train=*/false, s);
  return read_stats(*bk, s);
}

}  // namespace lightseq
