// lsc bench — times training steps (forward + backward) of a spec's encoder and decoder stacks on a
// GPU, on random data: per-layer milliseconds (median over iterations, CUDA events) and tokens/s.
#include "frontends/lsc/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <iostream>
#include <map>
#include <random>
#include <span>
#include <string>

#include "compiler/errors.h"
#include "frontends/lsc/timing.h"
#include "frontends/lsc/upload.h"
#include "frontends/spec/parse.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/grad_lane.h"
#include "runtime/host_dtype.h"
#include "runtime/layer_calls.h"
#include "runtime/model.h"

namespace lightseq::lsc {

namespace {

// Half the batch with its last eighth padded.
std::vector<uint8_t> bench_mask(int64_t batch, int64_t seq) {
  std::vector<uint8_t> mask(batch * seq, 0);
  for (int64_t b = 0; b < batch; b += 2) {
    for (int64_t t = seq - seq / 8; t < seq; ++t) mask[b * seq + t] = 1;
  }
  return mask;
}

// One layer stack's tensors, bound by its manifest: per layer, its parameters, their gradients and
// its saved-activation arena; the activations between layers x0 … xN (layer i reads x_i as "x"
// and writes x_{i+1} as "y") and their gradients; every other tensor (a padding mask, a decoder's
// encoder output and its gradient, which every layer adds into) one buffer for the whole stack,
// by name. Values: parameters ~ N(0, 0.02²), activations ~ N(0, 1), gradients given ~ N(0, 0.001²),
// padding masks as bench_mask; the rest as allocated.
class StackMemory {
 public:
  StackMemory(const LayerExecutor& exec, int count, const RunShape& shape, Precision p,
              Allocator& alloc, CUstream stream)
      : shape_(shape), p_(p), alloc_(alloc), stream_(stream), rng_(1234) {
    const std::vector<uint64_t> seed_offset{42, 0};
    seed_offset_ = static_cast<uint64_t*>(buffer(sizeof(uint64_t) * 2));
    copy_in(seed_offset_, seed_offset.data(), sizeof(uint64_t) * 2);
    const auto& fwd = exec.manifest(false);
    const auto& bwd = exec.manifest(true);
    auto named = [](std::string_view n) {
      return [n](const ManifestEntry& e) { return e.name == n; };
    };
    auto grad_of = [](std::string_view n) {
      return [n](const ManifestEntry& e) { return e.grad_of == n; };
    };
    const ManifestEntry* x = find(fwd, named("x"));
    const ManifestEntry* y = find(bwd, grad_of("y"));
    if (!x || !y || !find(fwd, named("y")) || !find(bwd, grad_of("x"))) {
      throw Error(
          fmt::format("{}: lsc bench times layers that map x to y (this one's manifest "
                      "has no x, y or their gradients)",
                      exec.plan().layer.name));
    }
    for (int i = 0; i <= count; ++i) {
      chain_[0].push_back(value(*x, 1.f));
      chain_[1].push_back(value(*y, 1e-3f));
    }
    for (int i = 0; i < count; ++i) {
      std::map<std::string, void*> own;  // this layer's parameters and gradients, by name
      for (int dir = 0; dir < 2; ++dir) {
        std::vector<void*>& args = args_[dir].emplace_back();
        for (const ManifestEntry& e : dir == 0 ? fwd : bwd) {
          args.push_back(bind(e, i, own));
        }
      }
      saved_.push_back(buffer(static_cast<size_t>(exec.saved_arena_bytes(shape))));
    }
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  }

  std::span<void* const> args(int layer, bool backward) const {
    return args_[backward ? 1 : 0][layer];
  }
  void* saved(int layer) const { return saved_[layer]; }
  const uint64_t* seed_offset() const { return seed_offset_; }
  // The stack's buffers its calls add into (+=): zeroed before each step.
  const std::vector<std::pair<void*, size_t>>& zeroed_each_step() const { return zeroed_; }

 private:
  template <class Pred>
  static const ManifestEntry* find(const std::vector<ManifestEntry>& m, Pred pred) {
    auto it = std::find_if(m.begin(), m.end(), pred);
    return it == m.end() ? nullptr : &*it;
  }
  size_t bytes(const ManifestEntry& e) const {
    return static_cast<size_t>(shape_numel(e.shape).eval(shape_.batch, shape_.seq, shape_.src_seq) *
                               elem_bytes(e.type, p_));
  }
  void* buffer(size_t n) {
    return mem_.emplace_back(alloc_, std::max<size_t>(n, 1), stream_).get();
  }
  void copy_in(void* dst, const void* src, size_t n) {
    LIGHTSEQ_CU_CHECK(
        driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), src, n, stream_));
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));  // `src` goes after this
  }
  // A buffer for `e` holding what the class comment says for its kind of tensor.
  void* value(const ManifestEntry& e, float scale) {
    void* d = buffer(bytes(e));
    if (e.type == ElemType::kModel) {
      std::normal_distribution<float> normal(0.f, scale);
      std::vector<float> v(bytes(e) / elem_bytes(e.type, p_));
      for (float& f : v) f = normal(rng_);
      const std::vector<uint8_t> enc = encode(v, p_);
      copy_in(d, enc.data(), enc.size());
    } else if (e.type == ElemType::kU8 && e.shape.size() == 2) {  // a padding mask [B, T or S]
      const std::vector<uint8_t> mask =
          bench_mask(shape_.batch, e.shape[1].eval(shape_.batch, shape_.seq, shape_.src_seq));
      copy_in(d, mask.data(), mask.size());
    } else {
      LIGHTSEQ_CU_CHECK(
          driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(d), 0, bytes(e), stream_));
    }
    return d;
  }
  void* bind(const ManifestEntry& e, int layer, std::map<std::string, void*>& own) {
    if (e.name == "x") return chain_[0][layer];
    if (e.name == "y") return chain_[0][layer + 1];
    if (e.grad_of == "y") return chain_[1][layer + 1];  // their gradients, by what they are of
    if (e.grad_of == "x") return chain_[1][layer];
    const bool per_layer = e.role == TensorRole::kParam || e.role == TensorRole::kParamGrad;
    std::map<std::string, void*>& where = per_layer ? own : shared_;
    auto it = where.find(e.name);
    if (it != where.end()) return it->second;
    void* d = value(e, e.role == TensorRole::kParam ? 0.02f : 1.f);
    if (e.accumulates) zeroed_.emplace_back(d, bytes(e));
    return where[e.name] = d;
  }

  RunShape shape_;
  Precision p_;
  Allocator& alloc_;
  CUstream stream_;
  std::mt19937 rng_;
  std::deque<DeviceBuffer> mem_;
  uint64_t* seed_offset_ = nullptr;
  std::vector<void*> chain_[2];              // x0 … xN, and their gradients
  std::vector<std::vector<void*>> args_[2];  // per direction, per layer: the manifest's pointers
  std::vector<void*> saved_;                 // per layer: its saved-activation arena
  std::map<std::string, void*> shared_;      // the stack's other tensors, by name
  std::vector<std::pair<void*, size_t>> zeroed_;
};

}  // namespace

ModelSpec bench_spec(const BenchOptions& o) {
  ModelSpec spec = parse_spec_file(o.spec);
  if (!o.attention.empty()) {
    for (AttentionBackend a : kAttentionBackends) {  // main.cpp checked the name
      if (to_string(a) != o.attention) continue;
      for (LayerStackSpec& l : spec.layers) l.attention = a;
    }
  }
  return spec;
}

int run_bench(const BenchOptions& o) {
  if (o.step) return run_step_bench(o);
  const auto model = CompiledModel::load(bench_spec(o), RuntimeOptions{o.device, std::nullopt});
  const ModelSpec& spec = model->spec();
  if (spec.layers.empty()) {
    throw Error(fmt::format(
        "{} has no encoder or decoder stack to benchmark (lsc bench times layer stacks)",
        spec.name));
  }
  const Precision p = spec.precision;
  const int64_t src_seq = o.src_seq > 0 ? o.src_seq : o.seq;
  ScopedContext ctx(o.device);
  OwnedStream stream;
  StreamOrderedAllocator alloc(o.device);
  const bool has_decoder =
      std::any_of(spec.layers.begin(), spec.layers.end(),
                  [](const LayerStackSpec& s) { return s.kind == LayerKind::kDecoder; });
  std::cout << fmt::format(
      "lsc bench {} on {} ({}), {}, batch {} × seq {} ({} tokens){}, "
      "half the batch with its last eighth padded\n",
      spec.name, device_name(o.device), device_target(o.device), to_string(p), o.batch, o.seq,
      o.batch * o.seq,
      has_decoder ? fmt::format(", decoders attend to {} encoder positions", src_seq) : "");

  for (int s = 0; s < static_cast<int>(spec.layers.size()); ++s) {
    const LayerStackSpec& st = spec.layers[s];
    const RunShape shape{o.batch, o.seq, st.kind == LayerKind::kDecoder ? src_seq : 0};
    StackMemory mem(model->stack(s), st.count, shape, p, alloc, stream);
    // The dropout seed and offset from device memory (graph-safe), layer i at offset i·stride;
    // every step draws the same masks (the timing does not depend on which).
    DropoutConfig drop{.attention = st.dropout.attention,
                       .activation = st.dropout.activation,
                       .hidden = st.dropout.hidden,
                       .attention_output = st.dropout.attention_output_p(),
                       .seed_ptr = mem.seed_offset(),
                       .offset_ptr = mem.seed_offset() + 1};
    // Declared after the stream and the memory: captured graphs (and the temporaries they keep)
    // go first. Every call may be captured, whatever its temporaries (the Python binding's
    // default limits bound the memory captured calls keep; here it is printed).
    LayerCalls calls(model->stack(s), CallGraphs::Limits{.max_graphs = 2 * size_t(st.count),
                                                         .max_call_bytes = SIZE_MAX,
                                                         .max_total_bytes = SIZE_MAX});
    auto step = [&](bool graphs) {
      for (const auto& [ptr, bytes] : mem.zeroed_each_step()) {
        LIGHTSEQ_CU_CHECK(
            driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(ptr), 0, bytes, stream));
      }
      for (int k = 0; k < 2 * st.count; ++k) {  // the forwards, then the backwards in reverse
        const bool backward = k >= st.count;
        const int i = backward ? 2 * st.count - 1 - k : k;
        drop.offset = static_cast<uint64_t>(i) * kDropoutOffsetStride;
        const LayerCall call{backward, mem.args(i, backward), shape, drop, mem.saved(i)};
        // temporaries from the pool; a captured call's stay as long as its graph
        auto held = std::make_shared<std::vector<DeviceBuffer>>();
        const ChunkSource chunk = [&](size_t bytes) {
          held->emplace_back(alloc, bytes, stream);
          return held->back().get();
        };
        if (graphs) {
          calls.replay(call, stream, chunk, [&] { return std::shared_ptr<void>(held); });
        } else {
          calls.run(call, stream, chunk);
        }
      }
    };
    // How its attention runs at this shape: an "auto" stack's choice is per call.
    const LayerExecutor& exec = model->stack(s);
    const std::string attention =
        exec.fused()
            ? fmt::format("{} (\"auto\" at this shape)", exec.fused_at(shape) ? "fused" : "unfused")
            : std::string(to_string(st.attention));
    for (const bool graphs : {false, true}) {
      if (graphs && o.no_graphs) break;
      const Timing t = time_steps(o.warmup, o.iters, stream, [&] { step(graphs); });
      const CallGraphs::Stats g = calls.graph_stats();
      std::cout
          << fmt::format(
                 "layers[{}] {} × {} {}/{}/{} {}-LN {}, attention {}{}: step {:.3f} ms (median "
                 "of {}, min {:.3f}), {:.3f} ms per layer fwd+bwd, {:.0f} tokens/s; host "
                 "issue {:.3f} ms per layer fwd+bwd{}\n",
                 s, st.count, to_string(st.kind), st.hidden, st.heads, st.ffn, to_string(st.norm),
                 to_string(st.activation), attention,
                 std::string(graphs ? ", calls replayed from CUDA graphs" : "") +
                     (grad_lane_enabled() ? ", parameter-gradient lane" : ""),
                 t.median, t.count, t.min, t.median / st.count, o.batch * o.seq / (t.median / 1e3),
                 t.host_median / st.count,
                 graphs ? fmt::format(" ({} captures, {} replays, {} eager; the captured "
                                      "calls keep {:.1f} MiB of temporaries)",
                                      g.captures, g.replays, g.eager, g.pinned_bytes / 1048576.0)
                        : "")
          << std::flush;
    }
  }
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  return 0;
}

}  // namespace lightseq::lsc
