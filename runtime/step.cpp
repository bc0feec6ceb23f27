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

using step_detail::download;
using step_detail::sync;

namespace {

int64_t align_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

}  // namespace

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

namespace {

// A step's counters, each in its own 16-byte slot (every bound pointer is 16-byte aligned):
// n_tokens (f32), bad_token, bad_target (i32).
enum CounterSlot : size_t { kTokensSlot, kBadTokenSlot, kBadTargetSlot, kCounterSlots };
constexpr size_t kCounterSlotBytes = 16, kCounterBytes = kCounterSlots * kCounterSlotBytes;

struct Io {
  const int64_t *src_tokens, *tokens, *targets, *token_types;
  float *loss, *nll, *n_tokens;
  int *bad_token, *bad_target;
};

Io io_of(const TrainStep::Bucket& b) {
  auto* c = static_cast<char*>(b.counters.get());
  return {b.src_tokens.as<int64_t>(),
          b.tokens.as<int64_t>(),
          b.targets.as<int64_t>(),
          b.token_types ? b.token_types.as<int64_t>() : nullptr,
          b.loss.as<float>(),
          b.nll.as<float>(),
          reinterpret_cast<float*>(c + kTokensSlot * kCounterSlotBytes),
          reinterpret_cast<int*>(c + kBadTokenSlot * kCounterSlotBytes),
          reinterpret_cast<int*>(c + kBadTargetSlot * kCounterSlotBytes)};
}

void memset32(void* p, uint32_t v, size_t n, CUstream s) {
  LIGHTSEQ_CU_CHECK(driver().cuMemsetD32Async(reinterpret_cast<CUdeviceptr>(p), v, n, s));
}

void copy_d2d(void* dst, const void* src, int64_t bytes, CUstream s) {
  if (bytes == 0) return;
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(dst),
                                               reinterpret_cast<CUdeviceptr>(src), bytes, s));
}

}  // namespace

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
  ScopedContext ctx(model_->device());
  arena_ = parameter_arena(spec);
  allocator_ = std::make_unique<StreamOrderedAllocator>(model_->device());
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&capture_stream_, CU_STREAM_NON_BLOCKING));
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
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mem_->seed),
                                               &options_.seed, sizeof(uint64_t), s));
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
    c.arena_count = 0;
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
}

TrainStep::~TrainStep() {
  if (!mem_) return;
  ScopedContext ctx(model_->device());
  buckets_.clear();
  mem_.reset();
  if (capture_stream_) driver().cuStreamDestroy(capture_stream_);
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
        set(a, c.f[Call::kDecoderOut], prev);
        set(a, c.f[Call::kTargets], io.targets);
        set(a, c.f[Call::kLoss], io.loss);
        set(a, c.f[Call::kNll], io.nll);
        set(a, c.f[Call::kBadTarget], io.bad_target);
        set(a, c.f[Call::kLossScale], &mem_->state->loss_scale);
        set(a, c.f[Call::kNTokens], io.n_tokens);
        // Fused linear + cross-entropy: its gradients come with the forward (none in evaluation).
        set(a, c.f[Call::kGradDecoderOut], g[0]);
        if (!train) {
          for (int k : c.fgrads) a[k] = nullptr;
        }
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
  const Call& crit = calls_[n_calls - 2];
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
  auto update = [&](int64_t begin, int64_t count, CUstream stream, size_t from, size_t to) {
    if (count <= 0) return;
    std::vector<void*> a = opt.fwd;
    for (const auto& [name, bytes] : {std::pair<const char*, int64_t>{"params", eb},
                                      {"grads", eb},
                                      {"exp_avg", 4},
                                      {"exp_avg_sq", 4},
                                      {"master_params", 4}}) {
      const int k = opt.fslot(name);
      if (k >= 0 && a[k]) a[k] = static_cast<char*>(a[k]) + begin * bytes;
    }
    opt.exec->forward_steps_at(a, RunShape{count, 1, 0}, al, stream, from, to);
  };
  std::vector<std::pair<int64_t, int64_t>> updated;  // (begin, count)
  const SideLane* update_lane = early_updates_ ? &side_lane(s, kUpdateLane) : nullptr;
  auto update_early = [&](const Call& c) {
    if (!update_lane || c.arena_count == 0) return;
    fork_lane(*update_lane, s);
    update(c.arena_begin, c.arena_count, update_lane->stream, 0, 1);
    updated.push_back({c.arena_begin, c.arena_count});
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
    update_early(c);
    dy = dx;
  }

  // ---- update (what early updates left: everything, or the parts no stack call owns)
  std::vector<std::pair<int64_t, int64_t>> rest;  // [begin, end) element spans
  std::sort(updated.begin(), updated.end());
  int64_t at = 0;
  for (const auto& [b, n] : updated) {
    if (b > at) rest.push_back({at, b});
    at = b + n;
  }
  if (at < arena_.total) rest.push_back({at, arena_.total});
  if (!updated.empty()) join_lane(*update_lane, s);
  for (const auto& [b, e] : rest) update(b, e - b, s, 0, 1);
  update(0, arena_.total, s, 1, 2);  // the finishing kernel: step += 1 (loss scale, overflow)
}

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
      const CUresult r = driver().cuGraphInstantiate(&bk.exec, graph, 0);
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
