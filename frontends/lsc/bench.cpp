// lsc bench — times training steps (forward + backward) of a spec's encoder stacks on a GPU, on
// random data: per-layer milliseconds (median over iterations, CUDA events) and tokens/s.
#include "frontends/lsc/bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <random>

#include "compiler/errors.h"
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
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(dst), bytes.data(), bytes.size(), stream));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
}

struct LayerState {
  std::vector<std::unique_ptr<Buffer>> mem;
  EncoderWeights w;
  EncoderGrads g;
};

}  // namespace

int run_bench(const BenchOptions& o) {
  const auto model = CompiledModel::load_file(o.spec, RuntimeOptions{o.device, std::nullopt});
  const ModelSpec& spec = model->spec();
  const Precision p = spec.precision;
  const int eb = element_bytes(p);
  ScopedContext ctx(o.device);
  CUstream stream;
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
  StreamOrderedAllocator alloc(o.device);
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto random = [&](size_t n, float scale) {
    std::vector<float> v(n);
    for (float& x : v) x = normal(rng) * scale;
    return v;
  };
  std::cout << fmt::format("lsc bench {} on {} (sm_{}), {}, batch {} × seq {} ({} tokens), "
                           "half the batch with its last eighth padded\n",
                           spec.name, device_name(o.device), device_arch(o.device), to_string(p),
                           o.batch, o.seq, o.batch * o.seq);
  bool any = false;
  for (int s = 0; s < static_cast<int>(spec.layers.size()); ++s) {
    const LayerStackSpec& st = spec.layers[s];
    if (st.kind != LayerKind::kEncoder) {
      std::cout << fmt::format("layers[{}]: {} stacks are not benchmarked yet (encoder only)\n", s, to_string(st.kind));
      continue;
    }
    any = true;
    EncoderLayer layer(model, s);
    const int64_t H = st.hidden, F = st.ffn, tokens = o.batch * o.seq;
    std::vector<LayerState> layers(st.count);
    auto add = [&](LayerState& l, size_t n, float scale, float offset) {
      l.mem.push_back(std::make_unique<Buffer>(alloc, n * eb, stream));
      std::vector<float> v = random(n, scale);
      for (float& x : v) x += offset;
      upload(l.mem.back()->get(), v, p, stream);
      return l.mem.back()->get();
    };
    auto grad = [&](LayerState& l, size_t n) {
      l.mem.push_back(std::make_unique<Buffer>(alloc, n * eb, stream));
      return l.mem.back()->get();
    };
    for (LayerState& l : layers) {
      l.w = {add(l, 3 * H * H, 0.02f, 0), add(l, 3 * H, 0.02f, 0), add(l, H * H, 0.02f, 0),
             add(l, H, 0.02f, 0),         add(l, F * H, 0.02f, 0), add(l, F, 0.02f, 0),
             add(l, H * F, 0.02f, 0),     add(l, H, 0.02f, 0),     add(l, H, 0.f, 1.f),
             add(l, H, 0.f, 0),           add(l, H, 0.f, 1.f),     add(l, H, 0.f, 0)};
      l.g = {grad(l, 3 * H * H), grad(l, 3 * H), grad(l, H * H), grad(l, H), grad(l, F * H), grad(l, F),
             grad(l, H * F),     grad(l, H),     grad(l, H),     grad(l, H), grad(l, H),     grad(l, H)};
    }
    // activations between layers: x0 … xN, and gradients
    LayerState io;
    std::vector<void*> xs, grads;
    for (int i = 0; i <= st.count; ++i) xs.push_back(add(io, tokens * H, 1.f, 0));
    for (int i = 0; i <= st.count; ++i) grads.push_back(add(io, tokens * H, 1e-3f, 0));
    std::vector<uint8_t> mask(o.batch * o.seq, 0);
    for (int64_t b = 0; b < o.batch; b += 2) {
      for (int64_t t = o.seq - o.seq / 8; t < o.seq; ++t) mask[b * o.seq + t] = 1;
    }
    Buffer mask_dev(alloc, mask.size(), stream);
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(reinterpret_cast<CUdeviceptr>(mask_dev.get()), mask.data(), mask.size(), stream));
    const RunShape shape{o.batch, o.seq, 0};
    DropoutConfig drop{st.dropout.attention, st.dropout.activation, st.dropout.hidden, 0, 42, 0};
    auto step = [&]() {
      std::vector<SavedActivations> saved;
      for (int i = 0; i < st.count; ++i) {
        drop.offset += kDropoutOffsetStride;
        saved.push_back(layer.forward(layers[i].w, {p, xs[i], static_cast<uint8_t*>(mask_dev.get()), xs[i + 1]},
                                      shape, drop, alloc, stream));
      }
      for (int i = st.count - 1; i >= 0; --i) {
        layer.backward(layers[i].w, layers[i].g, {grads[i + 1], grads[i]}, saved[i], GradMode::kOverwrite,
                       alloc, stream);
      }
    };
    CUevent start, stop;
    LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&start, CU_EVENT_DEFAULT));
    LIGHTSEQ_CU_CHECK(driver().cuEventCreate(&stop, CU_EVENT_DEFAULT));
    for (int i = 0; i < o.warmup; ++i) step();
    std::vector<float> ms;
    for (int i = 0; i < o.iters; ++i) {
      LIGHTSEQ_CU_CHECK(driver().cuEventRecord(start, stream));
      step();
      LIGHTSEQ_CU_CHECK(driver().cuEventRecord(stop, stream));
      LIGHTSEQ_CU_CHECK(driver().cuEventSynchronize(stop));
      float t = 0;
      LIGHTSEQ_CU_CHECK(driver().cuEventElapsedTime(&t, start, stop));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    std::cout << fmt::format(
        "layers[{}] {} × encoder {}/{}/{} {}-LN {}: step {:.3f} ms (median of {}, min {:.3f}), "
        "{:.3f} ms per layer fwd+bwd, {:.0f} tokens/s\n",
        s, st.count, H, st.heads, F, to_string(st.norm), to_string(st.activation), median, ms.size(),
        ms.front(), median / st.count, tokens / (median / 1e3));
    LIGHTSEQ_CU_CHECK(driver().cuEventDestroy(start));
    LIGHTSEQ_CU_CHECK(driver().cuEventDestroy(stop));
  }
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  LIGHTSEQ_CU_CHECK(driver().cuStreamDestroy(stream));
  if (!any) throw Error(fmt::format("{} has no encoder stack to benchmark", spec.name));
  return 0;
}

}  // namespace lightseq::lsc
