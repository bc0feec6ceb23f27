// The encoder layer on the GPU against the float64 reference of tests/reference/layers.h (which is
// proven against finite differences): forward output and every gradient (input, all weights and
// biases, both LayerNorms), post-LN and pre-LN, ReLU and GELU, fp32/fp16/bf16, with and without
// padding, at real and awkward sizes. Dropout off here; dropout determinism at the end.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <optional>

#include "runtime/layer_calls.h"
#include "runtime/model.h"
#include "tests/gpu_layer_test_util.h"
#include "tests/reference/layers.h"
#include "tests/test_util.h"

namespace lightseq {
namespace {

struct Case {
  int64_t hidden, heads, ffn;
  NormPlacement norm;
  Activation act;
  Precision precision;
  int64_t batch, seq;
  bool padding;
  bool causal = false;
  bool fused = false;  // "attention": "fused" (templates/flash_attention.cuh)
};

std::string case_name(const Case& c) {
  return fmt::format("h{}_heads{}_f{}_{}_{}_{}_B{}_T{}{}{}{}", c.hidden, c.heads, c.ffn,
                     to_string(c.norm), to_string(c.act), to_string(c.precision), c.batch, c.seq,
                     c.padding ? "_pad" : "", c.causal ? "_causal" : "", c.fused ? "_fused" : "");
}

ModelSpec spec_for(const Case& c) {
  ModelSpec s;
  s.name = "gpu-encoder-test";
  s.precision = c.precision;
  LayerStackSpec l;
  l.hidden = c.hidden;
  l.heads = c.heads;
  l.ffn = c.ffn;
  l.norm = c.norm;
  l.activation = c.act;
  l.causal = c.causal;
  if (c.fused) l.attention = AttentionBackend::kFused;
  l.eps = 1e-5;
  s.layers.push_back(l);
  return s;
}

// The C++ API's structs over buffers keyed by PyTorch parameter names.
EncoderWeights encoder_weights(const std::map<std::string, DeviceBuffer>& w) {
  auto p = [&](const char* n) -> const void* { return w.at(n).get(); };
  return {p("self_attn.in_proj_weight"),
          p("self_attn.in_proj_bias"),
          p("self_attn.out_proj.weight"),
          p("self_attn.out_proj.bias"),
          p("linear1.weight"),
          p("linear1.bias"),
          p("linear2.weight"),
          p("linear2.bias"),
          p("norm1.weight"),
          p("norm1.bias"),
          p("norm2.weight"),
          p("norm2.bias")};
}
EncoderGrads encoder_grads(const std::map<std::string, DeviceBuffer>& g) {
  auto p = [&](const char* n) -> void* { return g.at(n).get(); };
  return {p("self_attn.in_proj_weight"),
          p("self_attn.in_proj_bias"),
          p("self_attn.out_proj.weight"),
          p("self_attn.out_proj.bias"),
          p("linear1.weight"),
          p("linear1.bias"),
          p("linear2.weight"),
          p("linear2.bias"),
          p("norm1.weight"),
          p("norm1.bias"),
          p("norm2.weight"),
          p("norm2.bias")};
}

using test::gradient_tolerance;
using test::layer_tolerance;
using test::model_for;

class GpuEncoderLayer : public test::GpuLayerTest, public ::testing::WithParamInterface<Case> {};

TEST_P(GpuEncoderLayer, ForwardAndEveryGradientMatchTheReference) {
  const Case c = GetParam();
  const Precision p = c.precision;
  SCOPED_TRACE(seed_note());
  ref::Rng rng(seed_);
  ref::LayerConfig cfg{c.hidden, c.heads, c.ffn, c.norm, c.act, c.causal, 1e-5, p};
  ref::EncoderLayerParams params = ref::random_encoder_params(cfg, rng);
  for (auto& [name, v] : ref::named_tensors(params)) ref::round_in_place(p, *v);
  const int64_t rows = c.batch * c.seq;
  ref::EncoderLayerInput in{c.batch, c.seq, rng.uniform_vec(rows * c.hidden, -1, 1), {}};
  ref::round_in_place(p, in.x);
  if (c.padding) in.key_padding = test::padding_pattern(c.batch, c.seq);
  ref::Vec grad_out = rng.uniform_vec(rows * c.hidden, -1, 1);
  ref::round_in_place(p, grad_out);
  // fp32 ReLU layers are moved off the kink (H100: one pre-activation of ~270k, within the GEMM's
  // accumulation error of 0, flipped a token's gradients by 1e-2). 16-bit ReLU layers keep their
  // kinks and are judged by norm below.
  const ref::EncoderLayerResult want =
      c.act == Activation::kRelu && p == Precision::kFp32
          ? ref::move_off_relu_kink(cfg, params, in, grad_out, 1e-4).result
          : ref::encoder_layer_reference(cfg, params, in, grad_out);

  const auto model = model_for(spec_for(c));
  EncoderLayer layer(model, 0);
  auto named = ref::named_tensors(params);
  std::map<std::string, DeviceBuffer> w, g;
  upload_named(named, p, &w, &g);
  const EncoderWeights ew = encoder_weights(w);
  const EncoderGrads eg = encoder_grads(g);
  DeviceBuffer x = up(in.x, p), y = poisoned(rows * c.hidden, p);
  DeviceBuffer dy = up(grad_out, p), dx = poisoned(rows * c.hidden, p);
  std::optional<DeviceBuffer> mask;
  if (c.padding) mask.emplace(up_mask(in.key_padding));
  const RunShape shape{c.batch, c.seq, 0};
  SavedActivations saved = layer.forward(
      ew, {p, x.get(), mask ? static_cast<const uint8_t*>(mask->get()) : nullptr, y.get()}, shape,
      DropoutConfig{}, *allocator_, stream_);
  layer.backward(ew, eg, {dy.get(), dx.get()}, saved, GradMode::kOverwrite, *allocator_, stream_);
  sync();
  const ref::Tolerance tol = layer_tolerance(p);
  const ref::Tolerance gtol = gradient_tolerance(c.act, p);
  EXPECT_TRUE(ref::all_close("y", down(y, want.out.size(), p), want.out, tol));
  EXPECT_TRUE(ref::all_close("grad_x", down(dx, want.grad_x.size(), p), want.grad_x, gtol));
  expect_param_grads(want.grad, g, p, gtol);

  // `+=`: a second backward with GradMode::kAccumulate adds the same gradients again.
  layer.backward(ew, eg, {dy.get(), dx.get()}, saved, GradMode::kAccumulate, *allocator_, stream_);
  sync();
  expect_param_grads(want.grad, g, p, gtol, 2.0, "accumulated grad.");
  EXPECT_TRUE(ref::all_close("grad_x after the += backward (written, not added)",
                             down(dx, want.grad_x.size(), p), want.grad_x, gtol));
}

std::vector<Case> all_cases() {
  std::vector<Case> out;
  const struct {
    int64_t h, heads, f, batch, seq;
  } real[] = {{512, 8, 2048, 4, 32}, {768, 12, 3072, 2, 64}, {1024, 16, 4096, 2, 33}};
  for (const auto& s : real) {
    for (NormPlacement n : {NormPlacement::kPost, NormPlacement::kPre}) {
      for (Activation a : {Activation::kRelu, Activation::kGelu}) {
        for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
          for (bool pad : {false, true})
            out.push_back({s.h, s.heads, s.f, n, a, p, s.batch, s.seq, pad});
        }
      }
    }
  }
  // awkward shapes on a small layer
  const struct {
    int64_t batch, seq;
  } awkward[] = {{1, 1}, {3, 1}, {1, 7}, {2, 7}, {3, 77}, {1, 513}};
  for (const auto& s : awkward) {
    for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
      for (NormPlacement n : {NormPlacement::kPost, NormPlacement::kPre}) {
        out.push_back({64, 4, 128, n, Activation::kGelu, p, s.batch, s.seq, s.seq > 1});
      }
    }
  }
  // the longest sequence the issue asks of the unfused attention backend
  out.push_back(
      {64, 4, 128, NormPlacement::kPre, Activation::kGelu, Precision::kFp16, 1, 4096, true});
  // causal (GPT-style) encoders
  for (Precision p : {Precision::kFp32, Precision::kBf16}) {
    out.push_back({256, 4, 1024, NormPlacement::kPre, Activation::kGelu, p, 2, 77, false, true});
    out.push_back({256, 4, 1024, NormPlacement::kPost, Activation::kRelu, p, 3, 20, true, true});
  }
  // the fused attention (flash_attention.cuh) against the same reference: head dims 64 and 32,
  // padding, causal, sequences across and inside one 64-row tile
  for (Precision p : {Precision::kFp16, Precision::kBf16}) {
    out.push_back(
        {512, 8, 2048, NormPlacement::kPost, Activation::kRelu, p, 4, 32, true, false, true});
    out.push_back(
        {256, 8, 1024, NormPlacement::kPre, Activation::kGelu, p, 2, 130, true, true, true});
    out.push_back(
        {768, 12, 3072, NormPlacement::kPre, Activation::kGeluTanh, p, 2, 77, false, true, true});
  }
  // GPT-2's block: pre-LN, causal, tanh GELU (bias + GELU in cuBLASLt's epilogue)
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
    for (bool pad : {false, true}) {
      out.push_back(
          {768, 12, 3072, NormPlacement::kPre, Activation::kGeluTanh, p, 2, 64, pad, true});
    }
  }
  out.push_back(
      {64, 4, 128, NormPlacement::kPost, Activation::kGeluTanh, Precision::kBf16, 3, 77, true});
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, GpuEncoderLayer, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---- dropout at the layer level ----------------------------------------------------------------

class GpuEncoderDropout : public test::GpuLayerTest {};

TEST_F(GpuEncoderDropout, SameSeedSameBitsOtherOffsetOtherBits) {
  Case c{256, 4, 1024, NormPlacement::kPost, Activation::kRelu, Precision::kBf16, 4, 40, true};
  ModelSpec spec = spec_for(c);
  spec.layers[0].dropout = {0.1, 0.1, 0.1};
  const auto model = model_for(spec);
  EncoderLayer layer(model, 0);
  ref::Rng rng(seed_);
  ref::LayerConfig cfg{c.hidden, c.heads, c.ffn, c.norm, c.act, false, 1e-5, std::nullopt};
  ref::EncoderLayerParams params = ref::random_encoder_params(cfg, rng);
  const Precision p = c.precision;
  std::map<std::string, DeviceBuffer> w, g;
  for (auto& [name, v] : ref::named_tensors(params)) {
    std::vector<uint8_t> bytes = ref::encode(p, *v);
    w.emplace(name, upload_bytes(bytes.data(), bytes.size()));
    g.emplace(name, upload_bytes(bytes.data(), bytes.size()));
  }
  const EncoderWeights ew = encoder_weights(w);
  const EncoderGrads eg = encoder_grads(g);
  const int64_t rows = c.batch * c.seq;
  std::vector<uint8_t> xb = ref::encode(p, rng.uniform_vec(rows * c.hidden, -1, 1));
  std::vector<uint8_t> db = ref::encode(p, rng.uniform_vec(rows * c.hidden, -1, 1));
  DeviceBuffer x = upload_bytes(xb.data(), xb.size()), dy = upload_bytes(db.data(), db.size());
  // arena: the front ends' path, saved activations in a caller-provided (poisoned) arena that the
  // backward rebuilds them from.
  // device: the graph-safe form, seed and offset read from device memory (0 and 0 on the host).
  auto run = [&](uint64_t seed, uint64_t offset, bool arena = false, bool device = false) {
    DeviceBuffer y(*allocator_, xb.size(), stream_), dx(*allocator_, xb.size(), stream_);
    const RunShape shape{c.batch, c.seq, 0};
    DropoutConfig d{
        .attention = 0.1, .activation = 0.1, .hidden = 0.1, .seed = seed, .offset = offset};
    DeviceBuffer state;
    if (device) {
      const uint64_t philox[2] = {seed, offset};
      state = upload_bytes(philox, sizeof(philox));
      d.seed = d.offset = 0;
      d.seed_ptr = static_cast<const uint64_t*>(state.get());
      d.offset_ptr = d.seed_ptr + 1;
    }
    std::vector<uint8_t> nan(arena ? static_cast<size_t>(layer.saved_arena_bytes(shape)) : 0, 0xff);
    DeviceBuffer memory = arena ? upload_bytes(nan.data(), nan.size()) : DeviceBuffer();
    auto saved = layer.forward(ew, {p, x.get(), nullptr, y.get()}, shape, d, *allocator_, stream_,
                               memory.get());
    if (arena) saved = layer.saved_from_arena(memory.get(), x.get(), nullptr, shape, d);
    layer.backward(ew, eg, {dy.get(), dx.get()}, saved, GradMode::kOverwrite, *allocator_, stream_);
    std::vector<uint8_t> out(2 * xb.size());
    download_bytes(y, out.data(), xb.size());
    download_bytes(dx, out.data() + xb.size(), xb.size());
    return out;
  };
  const auto a = run(7, 100), b = run(7, 100), other = run(7, 100 + kDropoutOffsetStride);
  EXPECT_TRUE(ref::bytes_equal("same seed and offset: y and grad_x", a, b));
  EXPECT_NE(a, other) << "a different offset must draw different dropout masks";
  EXPECT_FALSE(layer.saved_slots(RunShape{c.batch, c.seq, 0}).empty());
  EXPECT_TRUE(ref::bytes_equal("saved arena path: y and grad_x", a, run(7, 100, /*arena=*/true)));
  EXPECT_TRUE(ref::bytes_equal("seed and offset from device memory: y and grad_x", a,
                               run(7, 100, /*arena=*/false, /*device=*/true)));
  EXPECT_TRUE(
      ref::bytes_equal("device seed and offset, saved arena path", a, run(7, 100, true, true)));
  EXPECT_NE(a, run(8, 100, false, true)) << "another seed in device memory must draw other masks";
}

// One encoder layer's buffers bound by its manifests (parameters, their gradients, x, grad_y,
// y, grad_x, a padding mask, the saved arena and a device-resident dropout seed/offset), and one
// forward + backward through LayerCalls, eager or replayed from CUDA graphs.
struct BoundEncoder {
  DeviceBuffer upload_bytes(const void* data, size_t bytes) {
    DeviceBuffer b(allocator, bytes, stream);
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(b.device_ptr(), data, bytes, stream));
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    return b;
  }
  void download_bytes(const DeviceBuffer& b, void* data, size_t bytes) {
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(data, b.device_ptr(), bytes, stream));
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  }

  BoundEncoder(const LayerExecutor& exec, const Case& c, uint64_t seed, Allocator& allocator,
               CUstream stream)
      : exec(exec), c(c), allocator(allocator), stream(stream), shape{c.batch, c.seq, 0} {
    ref::Rng rng(seed);
    ref::LayerConfig cfg{c.hidden, c.heads, c.ffn, c.norm, c.act, false, 1e-5, std::nullopt};
    ref::EncoderLayerParams params = ref::random_encoder_params(cfg, rng);
    const Precision p = c.precision;
    const int64_t rows = c.batch * c.seq;
    for (auto& [name, v] : ref::named_tensors(params)) {
      std::vector<uint8_t> bytes = ref::encode(p, *v);
      mem.emplace(name, upload_bytes(bytes.data(), bytes.size()));
      mem.emplace("grad." + name, upload_bytes(bytes.data(), bytes.size()));
      outputs.push_back("grad." + name);
    }
    for (const char* name : {"x", "grad_y"}) {
      std::vector<uint8_t> b = ref::encode(p, rng.uniform_vec(rows * c.hidden, -1, 1));
      mem.emplace(name, upload_bytes(b.data(), b.size()));
    }
    const size_t act_bytes = static_cast<size_t>(rows * c.hidden) * element_bytes(p);
    mem.emplace("y", DeviceBuffer(allocator, act_bytes, stream));
    mem.emplace("grad_x", DeviceBuffer(allocator, act_bytes, stream));
    outputs.push_back("y");
    outputs.push_back("grad_x");
    const std::vector<uint8_t> pad = test::padding_pattern(c.batch, c.seq);
    mem.emplace("key_padding_mask", upload_bytes(pad.data(), pad.size()));
    saved = DeviceBuffer(allocator, static_cast<size_t>(exec.saved_arena_bytes(shape)), stream);
    for (int dir = 0; dir < 2; ++dir) {
      for (const ManifestEntry& e : exec.manifest(dir == 1)) {
        if (!mem.count(e.name)) throw std::runtime_error("the test binds no " + e.name);
        args[dir].push_back(mem.at(e.name).get());
      }
    }
    const uint64_t philox[2] = {7, 100};
    state = upload_bytes(philox, sizeof(philox));
    dropout = DropoutConfig{.attention = 0.1, .activation = 0.1, .hidden = 0.1};
    dropout.seed_ptr = static_cast<const uint64_t*>(state.get());
    dropout.offset_ptr = dropout.seed_ptr + 1;
  }

  // y, grad_x and (with `grads`) every parameter gradient, in `outputs` order, after one forward
  // and backward (each eager, or through replay()); the outputs are poisoned first.
  std::vector<uint8_t> step(LayerCalls& calls, bool graphs, bool grads = false,
                            GradMode mode = GradMode::kOverwrite) {
    for (const std::string& name : outputs) {
      if (!grads && name.starts_with("grad.")) continue;
      if (mode == GradMode::kAccumulate && name.starts_with("grad.")) continue;
      const std::vector<uint8_t> nan(mem.at(name).bytes(), 0xff);
      LIGHTSEQ_CU_CHECK(
          driver().cuMemcpyHtoDAsync(mem.at(name).device_ptr(), nan.data(), nan.size(), stream));
    }
    for (int dir = 0; dir < 2; ++dir) {
      auto held = std::make_shared<std::vector<DeviceBuffer>>();
      const ChunkSource chunk = [&](size_t bytes) {
        held->emplace_back(allocator, bytes, stream);
        return held->back().get();
      };
      const LayerCall call{dir == 1, args[dir], shape, dropout, saved.get(), mode};
      if (graphs) {
        calls.replay(call, stream, chunk, [&] { return std::shared_ptr<void>(held); });
      } else {
        calls.run(call, stream, chunk);
      }
    }
    std::vector<uint8_t> out;
    for (const std::string& name : outputs) {
      if (!grads && name.starts_with("grad.")) continue;
      std::vector<uint8_t> b(mem.at(name).bytes());
      download_bytes(mem.at(name), b.data(), b.size());
      out.insert(out.end(), b.begin(), b.end());
    }
    return out;
  }

  const LayerExecutor& exec;
  Case c;
  Allocator& allocator;
  CUstream stream;
  RunShape shape;
  std::map<std::string, DeviceBuffer> mem;  // by manifest name
  std::vector<std::string> outputs;         // the parameter gradients, then y and grad_x
  DeviceBuffer saved, state;
  std::vector<void*> args[2];
  DropoutConfig dropout;
};

// LayerCalls (runtime/layer_calls.h), the front ends' path: a call that recurs with the same
// pointers is run eagerly, then captured, then replayed from its CUDA graph; every one of them
// writes what the eager call wrote, bit for bit (outputs poisoned before each call), and a replay
// reads the dropout seed/offset from device memory as it is at replay time.
TEST_F(GpuEncoderDropout, ReplayedCallsEqualEagerCallsAndDrawTheirDropoutAfresh) {
  Case c{256, 4, 1024, NormPlacement::kPre, Activation::kGelu, Precision::kBf16, 4, 40, true};
  ModelSpec spec = spec_for(c);
  spec.layers[0].dropout = {0.1, 0.1, 0.1};
  const auto model = model_for(spec);
  BoundEncoder b(model->stack(0), c, seed_, *allocator_, stream_);
  LayerCalls calls(model->stack(0));
  const std::vector<uint8_t> eager = b.step(calls, false, true);
  for (const char* what : {"first call (eager)", "second call (captured)", "third call (replayed)",
                           "fourth call (replayed)"}) {
    EXPECT_TRUE(ref::bytes_equal(fmt::format("{}: y, grad_x and the parameter gradients", what),
                                 eager, b.step(calls, true, true)));
  }
  const CallGraphs::Stats st = calls.graph_stats();
  EXPECT_EQ(st.captures, 2) << "the forward and the backward captured once each";
  EXPECT_EQ(st.replays, 6) << "launched from their graphs at the second, third and fourth call";
  EXPECT_GT(st.pinned_bytes, 0u);
  // another offset in device memory: the replay draws other masks, those of an eager call
  const uint64_t next[2] = {7, 100 + kDropoutOffsetStride};
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(b.state.device_ptr(), next, sizeof(next), stream_));
  const std::vector<uint8_t> replayed = b.step(calls, true), fresh = b.step(calls, false);
  EXPECT_NE(replayed, eager) << "a replay must read the new offset";
  EXPECT_TRUE(ref::bytes_equal("replayed with the new offset vs eager", fresh, replayed));
}

// The backward's parameter-gradient steps on a second stream (runtime/grad_lane.h) write what
// one stream writes, bit for bit: y, grad_x and every parameter gradient, eager and replayed from
// CUDA graphs, written (=) and accumulated (+=), over repeated calls (a race would show as a
// difference in some call). LIGHTSEQ_GRAD_LANE=0 / =1 when each model is loaded.
TEST_F(GpuEncoderDropout, TwoLaneBackwardEqualsOneLaneBitForBit) {
  for (const Case& c :
       {Case{256, 4, 1024, NormPlacement::kPost, Activation::kRelu, Precision::kBf16, 4, 40, true},
        Case{512, 8, 2048, NormPlacement::kPre, Activation::kGelu, Precision::kFp16, 16, 32,
             true}}) {
    ModelSpec spec = spec_for(c);
    spec.layers[0].dropout = {0.1, 0.1, 0.1};
    // Loaded here, not through model_for's cache: the executors read the variable when built.
    RuntimeOptions o;
    if (const char* dir = std::getenv("LIGHTSEQ_TEST_CACHE_DIR")) o.cache_dir = dir;
    auto load = [&](const char* lane) {
      test::ScopedEnv env("LIGHTSEQ_GRAD_LANE", lane);
      return CompiledModel::load(spec, o);
    };
    const auto one = load("0"), two = load("1");
    BoundEncoder b1(one->stack(0), c, seed_, *allocator_, stream_);
    BoundEncoder b2(two->stack(0), c, seed_, *allocator_, stream_);
    LayerCalls calls1(one->stack(0)), calls2(two->stack(0));
    const std::vector<uint8_t> want = b1.step(calls1, false, true);
    for (int i = 0; i < 6; ++i) {
      const bool graphs = i % 2 == 1;
      EXPECT_TRUE(ref::bytes_equal(fmt::format("{} call {} ({}): two lanes vs one", case_name(c), i,
                                               graphs ? "replayed" : "eager"),
                                   want, b2.step(calls2, graphs, true)));
    }
    // Accumulated gradients: both start from the same values and add the same call once.
    const std::vector<uint8_t> acc1 = b1.step(calls1, false, true, GradMode::kAccumulate);
    const std::vector<uint8_t> acc2 = b2.step(calls2, false, true, GradMode::kAccumulate);
    EXPECT_NE(acc1, want) << "accumulating must change the parameter gradients";
    EXPECT_TRUE(ref::bytes_equal(case_name(c) + " accumulated: two lanes vs one", acc1, acc2));
  }
}

// "attention": "auto" (compiler/planner/attention_backend.h): a call runs the fused plan up to
// the rule's key limit and the unfused plan past it, bit for bit as a model compiled with that
// backend alone — y, grad_x and every parameter gradient with dropout, padding, eager and replayed
// from CUDA graphs — with that backend's saved arena. Shapes on both sides of the limit alternate
// through one LayerCalls, as a front end with varying lengths calls it.
TEST_F(GpuEncoderDropout, AutoRunsTheFusedPlanUpToTheKeyLimitAndUnfusedPastIt) {
  auto spec_with = [](const Case& c, AttentionBackend a) {
    ModelSpec spec = spec_for(c);
    spec.layers[0].dropout = {0.1, 0.1, 0.1};
    spec.layers[0].attention = a;
    return spec;
  };
  const Case base{128, 2, 256, NormPlacement::kPost, Activation::kRelu, Precision::kBf16,
                  2,   0, true};
  const auto automatic = model_for(spec_with(base, AttentionBackend::kAuto));
  const LayerExecutor& exec = automatic->stack(0);
  ASSERT_NE(exec.fused(), nullptr);
  LayerCalls calls(exec);
  const int64_t limit = exec.plan().fused_rule.max_keys;
  for (int round = 0; round < 2; ++round) {
    for (int64_t seq : {int64_t{40}, limit, limit + 1}) {
      Case c = base;
      c.seq = seq;
      const bool fused = seq <= limit;
      SCOPED_TRACE(
          fmt::format("T = {} (round {}): the {} plan", seq, round, fused ? "fused" : "unfused"));
      const auto alone =
          model_for(spec_with(c, fused ? AttentionBackend::kFused : AttentionBackend::kUnfused));
      EXPECT_EQ(&exec.at(RunShape{c.batch, seq, 0}), fused ? exec.fused() : &exec);
      EXPECT_EQ(exec.saved_arena_bytes(RunShape{c.batch, seq, 0}),
                alone->stack(0).saved_arena_bytes(RunShape{c.batch, seq, 0}));
      BoundEncoder a(exec, c, seed_, *allocator_, stream_);
      BoundEncoder w(alone->stack(0), c, seed_, *allocator_, stream_);
      LayerCalls wcalls(alone->stack(0));
      const std::vector<uint8_t> want = w.step(wcalls, false, true);
      EXPECT_TRUE(ref::bytes_equal("auto, eager", want, a.step(calls, false, true)));
      EXPECT_TRUE(ref::bytes_equal("auto, replayed", want, a.step(calls, true, true)));
      EXPECT_TRUE(ref::bytes_equal("auto, replayed again", want, a.step(calls, true, true)));
    }
  }
  // The typed layer takes a length past the limit (the unfused plan, its score limit checked).
  EncoderLayer layer(automatic, 0);
  EXPECT_EQ(layer.saved_arena_bytes(RunShape{2, limit + 1, 0}),
            exec.saved_arena_bytes(RunShape{2, limit + 1, 0}));
}

}  // namespace
}  // namespace lightseq
