// gpu_layer_test_util.h — shared by the layer-level GPU tests (encoder and decoder): one compiled
// model per spec for the whole binary, layer tolerances per dtype, the padding pattern, and a
// fixture that moves float64 reference vectors to and from the device in the model's dtype.
#pragma once

#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "frontends/spec/parse.h"
#include "runtime/model.h"
#include "tests/gpu_test_util.h"
#include "tests/reference/compare.h"
#include "tests/reference/dtype.h"
#include "tests/reference/layers.h"

namespace lightseq::test {

// Layer-level bounds: a layer chains ~15 roundings to the model's dtype, so its error is a few
// times a single kernel's (tests/reference/compare.h) — the flash-attention rule applied to the
// whole computation, written as plain numbers.
inline ref::Tolerance layer_tolerance(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return {1e-3, 1e-4, 5e-5, 1e-6};
    case Precision::kFp16:
      return {5e-2, 1e-2, 1e-2, 1e-4};
    case Precision::kBf16:
      return {2e-1, 6e-2, 6e-2, 1e-3};
  }
  return {};
}

// The bound for a gradient. ReLU's derivative jumps at 0: where the 16-bit activations feeding
// linear1 put a pre-activation on the other side of 0 than float64 does (a handful of the B·T·F
// values), that token's whole contribution to one row of dW1 flips, and the error flows on into
// every gradient computed from linear1's input gradient (grad_x, the LayerNorm gradients). Any
// 16-bit implementation does this (H100, 2026-11-28: fp16 ReLU encoder layers showed 1.1–1.6%
// relative-norm error in those gradients, 4–46 elements of 65536 off in grad_x). With 16-bit ReLU,
// gradients are judged by their relative norm alone, at 3× the layer bound. fp32 ReLU layers are
// moved off the kink instead (ref::move_off_relu_kink) and judged strictly.
inline ref::Tolerance gradient_tolerance(Activation act, Precision p) {
  ref::Tolerance t = layer_tolerance(p);
  if (act != Activation::kRelu || p == Precision::kFp32) return t;
  t.rtol = t.atol = t.abs = 1e9;
  t.rnorm *= 3;
  return t;
}

// Every other sequence has its last quarter (at least one position, never all) padded; empty when
// seq is 1 (a sequence of one token cannot be padded without masking all of it).
inline std::vector<uint8_t> padding_pattern(int64_t batch, int64_t seq) {
  if (seq <= 1) return {};
  std::vector<uint8_t> mask(batch * seq, 0);
  for (int64_t b = 0; b < batch; b += 2) {
    for (int64_t t = seq - std::max<int64_t>(1, seq / 4); t < seq; ++t) mask[b * seq + t] = 1;
  }
  return mask;
}

// One compiled model per spec for the whole test binary: compiling is the expensive part, and
// layers are re-entrant.
inline std::shared_ptr<const CompiledModel> model_for(const ModelSpec& spec) {
  static std::map<std::string, std::shared_ptr<const CompiledModel>> models;
  const std::string key = spec_to_json(spec).dump();
  auto it = models.find(key);
  if (it != models.end()) return it->second;
  RuntimeOptions o;
  if (const char* dir = std::getenv("LIGHTSEQ_TEST_CACHE_DIR")) o.cache_dir = dir;
  auto m = CompiledModel::load(spec, o);
  models[key] = m;
  return m;
}

class GpuLayerTest : public GpuTest {
 protected:
  DeviceBuffer up(const ref::Vec& v, Precision p) {
    const std::vector<uint8_t> bytes = ref::encode(p, v);
    return upload_bytes(bytes.data(), bytes.size());
  }
  DeviceBuffer up_mask(const std::vector<uint8_t>& m) { return upload_bytes(m.data(), m.size()); }
  DeviceBuffer poisoned(size_t elems, Precision p) {
    std::vector<uint8_t> nan(elems * element_bytes(p), 0xff);  // NaN in every dtype
    return upload_bytes(nan.data(), nan.size());
  }
  ref::Vec down(const DeviceBuffer& b, size_t elems, Precision p) {
    std::vector<uint8_t> bytes(elems * element_bytes(p));
    download_bytes(b, bytes.data(), bytes.size());
    return ref::decode(p, bytes);
  }
  // Every parameter gradient in `grads` (device, by PyTorch name) against `scale` × the
  // reference's.
  template <class Params>
  void expect_param_grads(Params want, const std::map<std::string, DeviceBuffer>& grads,
                          Precision p, const ref::Tolerance& tol, double scale = 1.0,
                          const std::string& label = "grad.") {
    for (auto& [name, v] : ref::named_tensors(want)) {
      ref::Vec scaled = *v;
      for (double& e : scaled) e *= scale;
      EXPECT_TRUE(ref::all_close(label + name, down(grads.at(name), v->size(), p), scaled, tol));
    }
  }
  // Device copies of named reference tensors: the values, and NaN-poisoned gradient buffers.
  void upload_named(const std::vector<std::pair<std::string, ref::Vec*>>& named, Precision p,
                    std::map<std::string, DeviceBuffer>* values,
                    std::map<std::string, DeviceBuffer>* grads) {
    for (const auto& [name, v] : named) {
      values->emplace(name, up(*v, p));
      if (grads) grads->emplace(name, poisoned(v->size(), p));
    }
  }
};

}  // namespace lightseq::test
