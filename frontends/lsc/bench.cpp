// lsc bench — times training steps (forward + backward) of a spec's encoder and decoder stacks on a
// GPU, on random data: per-layer milliseconds (median over iterations, CUDA events) and tokens/s.
#include "frontends/lsc/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <random>
#include <tuple>

#include "compiler/errors.h"
#include "frontends/lsc/timing.h"
#include "frontends/lsc/upload.h"
#include "frontends/spec/parse.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/host_dtype.h"
#include "runtime/model.h"

namespace lightseq::lsc {

namespace {

struct Buffer {
  DeviceBuffer mem;
  Buffer(Allocator& a, size_t bytes, CUstream s) : mem(a, bytes, s) {}
  void* get() { return mem.get(); }
};

void upload(void* dst, const std::vector<float>& values, Precision p, CUstream stream) {
  const std::vector<uint8_t> bytes = encode(values, p);
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), bytes.data(),
                                               bytes.size(), stream));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
}

// One layer's parameters and gradients in device memory, random, in the model's dtype.
class ParamMemory {
 public:
  ParamMemory(Allocator& a, CUstream s, Precision p, std::mt19937& rng)
      : alloc_(a), stream_(s), p_(p), rng_(rng) {}
  // n values ~ N(offset, scale²)
  void* value(size_t n, float scale, float offset) {
    std::normal_distribution<float> normal(0.f, 1.f);
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng_) * scale + offset;
    void* d = grad(n);
    upload(d, v, p_, stream_);
    return d;
  }
  void* weight(size_t n) { return value(n, 0.02f, 0); }
  // n elements, left as allocated (gradients are written by the step)
  void* grad(size_t n) {
    mem_.push_back(std::make_unique<Buffer>(alloc_, n * element_bytes(p_), stream_));
    return mem_.back()->get();
  }

 private:
  Allocator& alloc_;
  CUstream stream_;
  Precision p_;
  std::mt19937& rng_;
  std::vector<std::unique_ptr<Buffer>> mem_;
};

// Half the batch with its last eighth padded.
std::vector<uint8_t> bench_mask(int64_t batch, int64_t seq) {
  std::vector<uint8_t> mask(batch * seq, 0);
  for (int64_t b = 0; b < batch; b += 2) {
    for (int64_t t = seq - seq / 8; t < seq; ++t) mask[b * seq + t] = 1;
  }
  return mask;
}

}  // namespace

ModelSpec bench_spec(const BenchOptions& o) {
  ModelSpec spec = parse_spec_file(o.spec);
  if (!o.attention.empty()) {
    for (LayerStackSpec& l : spec.layers) {
      l.attention = o.attention == "fused" ? AttentionBackend::kFused : AttentionBackend::kUnfused;
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
  std::mt19937 rng(1234);
  const bool has_decoder =
      std::any_of(spec.layers.begin(), spec.layers.end(),
                  [](const LayerStackSpec& s) { return s.kind == LayerKind::kDecoder; });
  std::cout << fmt::format(
      "lsc bench {} on {} (sm_{}), {}, batch {} × seq {} ({} tokens){}, "
      "half the batch with its last eighth padded\n",
      spec.name, device_name(o.device), device_arch(o.device), to_string(p), o.batch, o.seq,
      o.batch * o.seq,
      has_decoder ? fmt::format(", decoders attend to {} encoder positions", src_seq) : "");
  const std::vector<uint8_t> mask = bench_mask(o.batch, o.seq),
                             src_mask = bench_mask(o.batch, src_seq);
  Buffer mask_dev(alloc, mask.size(), stream), src_mask_dev(alloc, src_mask.size(), stream);
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mask_dev.get()),
                                               mask.data(), mask.size(), stream));
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(src_mask_dev.get()),
                                               src_mask.data(), src_mask.size(), stream));
  const auto* pad = static_cast<const uint8_t*>(mask_dev.get());
  const auto* src_pad = static_cast<const uint8_t*>(src_mask_dev.get());

  for (int s = 0; s < static_cast<int>(spec.layers.size()); ++s) {
    const LayerStackSpec& st = spec.layers[s];
    const bool decoder = st.kind == LayerKind::kDecoder;
    const int64_t H = st.hidden, F = st.ffn, tokens = o.batch * o.seq,
                  src_tokens = o.batch * src_seq;
    ParamMemory mem(alloc, stream, p, rng);
    // activations between layers: x0 … xN, and their gradients; a decoder stack also reads an
    // encoder output and sums its gradient
    std::vector<void*> xs, grads;
    for (int i = 0; i <= st.count; ++i) xs.push_back(mem.value(tokens * H, 1.f, 0));
    for (int i = 0; i <= st.count; ++i) grads.push_back(mem.value(tokens * H, 1e-3f, 0));
    void* enc = decoder ? mem.value(src_tokens * H, 1.f, 0) : nullptr;
    void* grad_enc = decoder ? mem.grad(src_tokens * H) : nullptr;
    const RunShape shape{o.batch, o.seq, decoder ? src_seq : 0};
    DropoutConfig drop{st.dropout.attention,
                       st.dropout.activation,
                       st.dropout.hidden,
                       0,
                       st.dropout.attention_output_p(),
                       42,
                       0};
    Timing t;
    if (!decoder) {
      EncoderLayer layer(model, s);
      std::vector<std::pair<EncoderWeights, EncoderGrads>> layers;
      for (int i = 0; i < st.count; ++i) {
        EncoderWeights w{mem.weight(3 * H * H), mem.weight(3 * H),  mem.weight(H * H),
                         mem.weight(H),         mem.weight(F * H),  mem.weight(F),
                         mem.weight(H * F),     mem.weight(H),      mem.value(H, 0, 1),
                         mem.value(H, 0, 0),    mem.value(H, 0, 1), mem.value(H, 0, 0)};
        EncoderGrads g{mem.grad(3 * H * H), mem.grad(3 * H), mem.grad(H * H), mem.grad(H),
                       mem.grad(F * H),     mem.grad(F),     mem.grad(H * F), mem.grad(H),
                       mem.grad(H),         mem.grad(H),     mem.grad(H),     mem.grad(H)};
        layers.emplace_back(w, g);
      }
      t = time_steps(o.warmup, o.iters, stream, [&] {
        std::vector<SavedActivations> saved;
        for (int i = 0; i < st.count; ++i) {
          drop.offset += kDropoutOffsetStride;
          saved.push_back(layer.forward(layers[i].first, {p, xs[i], pad, xs[i + 1]}, shape, drop,
                                        alloc, stream));
        }
        for (int i = st.count - 1; i >= 0; --i) {
          layer.backward(layers[i].first, layers[i].second, {grads[i + 1], grads[i]}, saved[i],
                         GradMode::kOverwrite, alloc, stream);
        }
      });
    } else {
      DecoderLayer layer(model, s);
      std::vector<std::pair<DecoderWeights, DecoderGrads>> layers;
      for (int i = 0; i < st.count; ++i) {
        DecoderWeights w;
        DecoderGrads g;
        for (auto [aw, ag] : {std::pair{&w.self_attn, &g.self_attn},
                              std::pair{&w.multihead_attn, &g.multihead_attn}}) {
          *aw = {mem.weight(3 * H * H), mem.weight(3 * H), mem.weight(H * H), mem.weight(H)};
          *ag = {mem.grad(3 * H * H), mem.grad(3 * H), mem.grad(H * H), mem.grad(H)};
        }
        w.linear1_weight = mem.weight(F * H), w.linear1_bias = mem.weight(F);
        w.linear2_weight = mem.weight(H * F), w.linear2_bias = mem.weight(H);
        for (auto [wg, wb, gg, gb] :
             {std::tuple{&w.norm1_weight, &w.norm1_bias, &g.norm1_weight, &g.norm1_bias},
              std::tuple{&w.norm2_weight, &w.norm2_bias, &g.norm2_weight, &g.norm2_bias},
              std::tuple{&w.norm3_weight, &w.norm3_bias, &g.norm3_weight, &g.norm3_bias}}) {
          *wg = mem.value(H, 0, 1), *wb = mem.value(H, 0, 0), *gg = mem.grad(H), *gb = mem.grad(H);
        }
        g.linear1_weight = mem.grad(F * H), g.linear1_bias = mem.grad(F);
        g.linear2_weight = mem.grad(H * F), g.linear2_bias = mem.grad(H);
        layers.emplace_back(w, g);
      }
      const size_t enc_bytes = static_cast<size_t>(src_tokens * H) * element_bytes(p);
      t = time_steps(o.warmup, o.iters, stream, [&] {
        std::vector<SavedActivations> saved;
        for (int i = 0; i < st.count; ++i) {
          drop.offset += kDropoutOffsetStride;
          saved.push_back(layer.forward(layers[i].first, {p, xs[i], pad, enc, src_pad, xs[i + 1]},
                                        shape, drop, alloc, stream));
        }
        // the layers' encoder-output gradients sum into one buffer, zeroed first (part of the step)
        LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(reinterpret_cast<CUdeviceptr>(grad_enc), 0,
                                                   enc_bytes, stream));
        for (int i = st.count - 1; i >= 0; --i) {
          layer.backward(layers[i].first, layers[i].second, {grads[i + 1], grads[i], grad_enc},
                         saved[i], GradMode::kOverwrite, alloc, stream);
        }
      });
    }
    std::cout
        << fmt::format(
               "layers[{}] {} × {} {}/{}/{} {}-LN {}: step {:.3f} ms (median of {}, min {:.3f}), "
               "{:.3f} ms per layer fwd+bwd, {:.0f} tokens/s; host issue {:.3f} ms per layer "
               "fwd+bwd\n",
               s, st.count, to_string(st.kind), H, st.heads, F, to_string(st.norm),
               to_string(st.activation), t.median, t.count, t.min, t.median / st.count,
               tokens / (t.median / 1e3), t.host_median / st.count)
        << std::flush;
  }
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  return 0;
}

}  // namespace lightseq::lsc
