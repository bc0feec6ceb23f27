// The decoder layer (nn.TransformerDecoderLayer: causal self-attention, cross-attention over the
// encoder output, feed-forward) on the GPU against the float64 reference of
// tests/reference/layers.h (proven against finite differences): forward output, grad_x,
// grad_encoder_out and every parameter gradient (both attentions, both linears, three LayerNorms),
// post-LN and pre-LN, ReLU and GELU, fp32/fp16/bf16, with and without padding (target and
// encoder masks), at real and awkward sizes (T ≠ S, T = 1, S = 1). Dropout off here; dropout
// determinism and the typed layers' bad-input errors at the end.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <map>
#include <optional>

#include "runtime/model.h"
#include "tests/gpu_layer_test_util.h"
#include "tests/reference/layers.h"

namespace lightseq {
namespace {

using test::gradient_tolerance;
using test::layer_tolerance;
using test::model_for;

struct Case {
  int64_t hidden, heads, ffn;
  NormPlacement norm;
  Activation act;
  Precision precision;
  int64_t batch, seq, src_seq;
  bool padding;
};

std::string case_name(const Case& c) {
  return fmt::format("h{}_heads{}_f{}_{}_{}_{}_B{}_T{}_S{}{}", c.hidden, c.heads, c.ffn,
                     to_string(c.norm), to_string(c.act), to_string(c.precision), c.batch, c.seq,
                     c.src_seq, c.padding ? "_pad" : "");
}

LayerStackSpec stack_for(const Case& c, LayerKind kind) {
  LayerStackSpec l;
  l.kind = kind;
  l.hidden = c.hidden;
  l.heads = c.heads;
  l.ffn = c.ffn;
  l.norm = c.norm;
  l.activation = c.act;
  l.causal = kind == LayerKind::kDecoder;
  l.eps = 1e-5;
  return l;
}

// An encoder stack (a decoder needs one before it) and the decoder stack under test, layers[1].
ModelSpec spec_for(const Case& c) {
  ModelSpec s;
  s.name = "gpu-decoder-test";
  s.precision = c.precision;
  s.layers = {stack_for(c, LayerKind::kEncoder), stack_for(c, LayerKind::kDecoder)};
  return s;
}

// The C++ API's structs over buffers keyed by PyTorch parameter names: DecoderWeights (const
// pointers) or DecoderGrads.
template <class Out>
Out decoder_struct(const std::map<std::string, DeviceBuffer>& buffers) {
  using Ptr = decltype(Out{}.linear1_weight);
  auto p = [&](const std::string& n) -> Ptr { return buffers.at(n).get(); };
  Out d;
  for (auto [att, name] :
       {std::pair{&d.self_attn, "self_attn"}, std::pair{&d.multihead_attn, "multihead_attn"}}) {
    const std::string a = name;
    *att = {p(a + ".in_proj_weight"), p(a + ".in_proj_bias"), p(a + ".out_proj.weight"),
            p(a + ".out_proj.bias")};
  }
  d.linear1_weight = p("linear1.weight"), d.linear1_bias = p("linear1.bias");
  d.linear2_weight = p("linear2.weight"), d.linear2_bias = p("linear2.bias");
  d.norm1_weight = p("norm1.weight"), d.norm1_bias = p("norm1.bias");
  d.norm2_weight = p("norm2.weight"), d.norm2_bias = p("norm2.bias");
  d.norm3_weight = p("norm3.weight"), d.norm3_bias = p("norm3.bias");
  return d;
}
DecoderWeights decoder_weights(const std::map<std::string, DeviceBuffer>& w) {
  return decoder_struct<DecoderWeights>(w);
}
DecoderGrads decoder_grads(const std::map<std::string, DeviceBuffer>& g) {
  return decoder_struct<DecoderGrads>(g);
}

const uint8_t* mask_ptr(const std::optional<DeviceBuffer>& m) {
  return m ? static_cast<const uint8_t*>(m->get()) : nullptr;
}

class GpuDecoderLayer : public test::GpuLayerTest, public ::testing::WithParamInterface<Case> {};

TEST_P(GpuDecoderLayer, ForwardAndEveryGradientMatchTheReference) {
  const Case c = GetParam();
  const Precision p = c.precision;
  SCOPED_TRACE(seed_note());
  ref::Rng rng(seed_);
  ref::LayerConfig cfg{c.hidden, c.heads, c.ffn, c.norm, c.act, /*causal=*/true, 1e-5, p};
  ref::DecoderLayerParams params = ref::random_decoder_params(cfg, rng);
  for (auto& [name, v] : ref::named_tensors(params)) ref::round_in_place(p, *v);
  const int64_t rows = c.batch * c.seq, src_rows = c.batch * c.src_seq;
  ref::DecoderLayerInput in{c.batch,
                            c.seq,
                            c.src_seq,
                            rng.uniform_vec(rows * c.hidden, -1, 1),
                            rng.uniform_vec(src_rows * c.hidden, -1, 1),
                            {},
                            {}};
  ref::round_in_place(p, in.x);
  ref::round_in_place(p, in.memory);
  if (c.padding) {
    in.key_padding = test::padding_pattern(c.batch, c.seq);
    in.memory_key_padding = test::padding_pattern(c.batch, c.src_seq);
  }
  ref::Vec grad_out = rng.uniform_vec(rows * c.hidden, -1, 1);
  ref::round_in_place(p, grad_out);
  // As in the encoder test: fp32 ReLU layers are moved off the kink, 16-bit ones judged by norm.
  const ref::DecoderLayerResult want =
      c.act == Activation::kRelu && p == Precision::kFp32
          ? ref::move_off_relu_kink(cfg, params, in, grad_out, 1e-4).result
          : ref::decoder_layer_reference(cfg, params, in, grad_out);

  const auto model = model_for(spec_for(c));
  DecoderLayer layer(model, 1);
  std::map<std::string, DeviceBuffer> w, g;
  upload_named(ref::named_tensors(params), p, &w, &g);
  const DecoderWeights dw = decoder_weights(w);
  const DecoderGrads dg = decoder_grads(g);
  DeviceBuffer x = up(in.x, p), enc = up(in.memory, p), y = poisoned(rows * c.hidden, p);
  DeviceBuffer dy = up(grad_out, p), dx = poisoned(rows * c.hidden, p);
  // grad_encoder_out is accumulated (+=): start it at a random base and expect base + gradient.
  ref::Vec base = rng.uniform_vec(src_rows * c.hidden, -1, 1);
  ref::round_in_place(p, base);
  DeviceBuffer denc = up(base, p);
  std::optional<DeviceBuffer> mask, enc_mask;
  if (!in.key_padding.empty()) mask.emplace(up_mask(in.key_padding));
  if (!in.memory_key_padding.empty()) enc_mask.emplace(up_mask(in.memory_key_padding));
  const RunShape shape{c.batch, c.seq, c.src_seq};
  const DecoderInputs inputs{p, x.get(), mask_ptr(mask), enc.get(), mask_ptr(enc_mask), y.get()};
  SavedActivations saved = layer.forward(dw, inputs, shape, DropoutConfig{}, *allocator_, stream_);
  layer.backward(dw, dg, {dy.get(), dx.get(), denc.get()}, saved, GradMode::kOverwrite, *allocator_,
                 stream_);
  sync();
  const ref::Tolerance tol = layer_tolerance(p), gtol = gradient_tolerance(c.act, p);
  EXPECT_TRUE(ref::all_close("y", down(y, want.out.size(), p), want.out, tol));
  EXPECT_TRUE(ref::all_close("grad_x", down(dx, want.grad_x.size(), p), want.grad_x, gtol));
  ref::Vec want_denc = base;
  for (size_t i = 0; i < want_denc.size(); ++i) want_denc[i] += want.grad_memory[i];
  EXPECT_TRUE(ref::all_close("grad_encoder_out (base + gradient)", down(denc, want_denc.size(), p),
                             want_denc, gtol));
  expect_param_grads(want.grad, g, p, gtol);

  // `+=`: a second backward with GradMode::kAccumulate adds the same gradients again.
  layer.backward(dw, dg, {dy.get(), dx.get(), denc.get()}, saved, GradMode::kAccumulate,
                 *allocator_, stream_);
  sync();
  expect_param_grads(want.grad, g, p, gtol, 2.0, "accumulated grad.");
  // grad_x is written whatever the mode; grad_encoder_out is always added to
  EXPECT_TRUE(ref::all_close("grad_x after the += backward", down(dx, want.grad_x.size(), p),
                             want.grad_x, gtol));
  for (size_t i = 0; i < want_denc.size(); ++i) want_denc[i] += want.grad_memory[i];
  EXPECT_TRUE(ref::all_close("grad_encoder_out after two backwards (base + 2 gradients)",
                             down(denc, want_denc.size(), p), want_denc, gtol));
}

std::vector<Case> all_cases() {
  std::vector<Case> out;
  const struct {
    int64_t h, heads, f, batch, seq, src_seq;
  } real[] = {{512, 8, 2048, 4, 32, 24}, {768, 12, 3072, 2, 64, 48}, {1024, 16, 4096, 2, 33, 40}};
  for (const auto& s : real) {
    for (NormPlacement n : {NormPlacement::kPost, NormPlacement::kPre}) {
      for (Activation a : {Activation::kRelu, Activation::kGelu}) {
        for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
          for (bool pad : {false, true})
            out.push_back({s.h, s.heads, s.f, n, a, p, s.batch, s.seq, s.src_seq, pad});
        }
      }
    }
  }
  // awkward shapes on a small layer: one target token, one source token, long either side
  const struct {
    int64_t batch, seq, src_seq;
  } awkward[] = {{1, 1, 1},   {3, 1, 5},    {1, 7, 1},  {2, 7, 9},
                 {3, 77, 20}, {1, 20, 513}, {2, 513, 7}};
  for (const auto& s : awkward) {
    for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
      for (NormPlacement n : {NormPlacement::kPost, NormPlacement::kPre}) {
        out.push_back({64, 4, 128, n, Activation::kGelu, p, s.batch, s.seq, s.src_seq,
                       s.seq > 1 || s.src_seq > 1});
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(All, GpuDecoderLayer, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return case_name(info.param); });

// ---- dropout: same seed and offset, same bits; the arena path gives the same bits --------------

class GpuDecoderDropout : public test::GpuLayerTest {};

TEST_F(GpuDecoderDropout, SameSeedSameBitsOtherOffsetOtherBitsArenaPathSameBits) {
  Case c{256, 4, 1024, NormPlacement::kPost, Activation::kRelu, Precision::kBf16, 4, 40, 30, true};
  ModelSpec spec = spec_for(c);
  spec.layers[1].dropout = {0.1, 0.1, 0.1};
  const auto model = model_for(spec);
  DecoderLayer layer(model, 1);
  ref::Rng rng(seed_);
  ref::LayerConfig cfg{c.hidden, c.heads, c.ffn, c.norm, c.act, true, 1e-5, std::nullopt};
  ref::DecoderLayerParams params = ref::random_decoder_params(cfg, rng);
  const Precision p = c.precision;
  std::map<std::string, DeviceBuffer> w, g;
  upload_named(ref::named_tensors(params), p, &w, &g);
  const DecoderWeights dw = decoder_weights(w);
  const DecoderGrads dg = decoder_grads(g);
  const int64_t rows = c.batch * c.seq, src_rows = c.batch * c.src_seq;
  DeviceBuffer x = up(rng.uniform_vec(rows * c.hidden, -1, 1), p);
  DeviceBuffer enc = up(rng.uniform_vec(src_rows * c.hidden, -1, 1), p);
  DeviceBuffer dy = up(rng.uniform_vec(rows * c.hidden, -1, 1), p);
  DeviceBuffer enc_mask = up_mask(test::padding_pattern(c.batch, c.src_seq));
  const size_t out_bytes = rows * c.hidden * element_bytes(p),
               enc_bytes = src_rows * c.hidden * element_bytes(p);
  auto run = [&](uint64_t seed, uint64_t offset, bool arena = false) {
    DeviceBuffer y(*allocator_, out_bytes, stream_), dx(*allocator_, out_bytes, stream_);
    DeviceBuffer denc(*allocator_, enc_bytes, stream_);
    LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(denc.device_ptr(), 0, enc_bytes, stream_));
    const RunShape shape{c.batch, c.seq, c.src_seq};
    const DropoutConfig d{
        .attention = 0.1, .activation = 0.1, .hidden = 0.1, .seed = seed, .offset = offset};
    std::vector<uint8_t> nan(arena ? static_cast<size_t>(layer.saved_arena_bytes(shape)) : 0, 0xff);
    DeviceBuffer memory = arena ? upload_bytes(nan.data(), nan.size()) : DeviceBuffer();
    const DecoderInputs in{
        p, x.get(), nullptr, enc.get(), static_cast<const uint8_t*>(enc_mask.get()), y.get()};
    auto saved = layer.forward(dw, in, shape, d, *allocator_, stream_, memory.get());
    if (arena) saved = layer.saved_from_arena(memory.get(), in, shape, d);
    layer.backward(dw, dg, {dy.get(), dx.get(), denc.get()}, saved, GradMode::kOverwrite,
                   *allocator_, stream_);
    std::vector<uint8_t> out(2 * out_bytes + enc_bytes);
    download_bytes(y, out.data(), out_bytes);
    download_bytes(dx, out.data() + out_bytes, out_bytes);
    download_bytes(denc, out.data() + 2 * out_bytes, enc_bytes);
    return out;
  };
  const auto a = run(7, 100), b = run(7, 100), other = run(7, 100 + kDropoutOffsetStride);
  EXPECT_TRUE(ref::bytes_equal("same seed and offset: y, grad_x and grad_encoder_out", a, b));
  EXPECT_NE(a, other) << "a different offset must draw different dropout masks";
  EXPECT_FALSE(layer.saved_slots(RunShape{c.batch, c.seq, c.src_seq}).empty());
  EXPECT_TRUE(ref::bytes_equal("saved arena path: y, grad_x and grad_encoder_out", a,
                               run(7, 100, /*arena=*/true)));
}

// ---- bad input to the typed layers: an error that names the problem ---------------------------

#define EXPECT_CONTAINS(text, part)                       \
  do {                                                    \
    const std::string text_ = (text);                     \
    EXPECT_NE(text_.find(part), std::string::npos)        \
        << "expected \"" << (part) << "\" in: " << text_; \
  } while (0)

class GpuTypedLayerErrors : public test::GpuLayerTest {
 protected:
  // The message of the Error `f` throws ("" and a test failure if it throws nothing).
  template <class F>
  std::string error_of(F&& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no lightseq::Error thrown";
    return "";
  }
};

TEST_F(GpuTypedLayerErrors, EachNamesWhatIsWrong) {
  const Case c{64, 4, 128,  NormPlacement::kPre, Activation::kGelu, Precision::kFp16, 2,
               8,  6, false};
  const auto model = model_for(spec_for(c));
  EXPECT_CONTAINS(error_of([&] { DecoderLayer(model, 0); }),
                  "is an encoder stack, not a decoder stack; use EncoderLayer");
  EXPECT_CONTAINS(error_of([&] { EncoderLayer(model, 1); }),
                  "is a decoder stack, not an encoder stack; use DecoderLayer");
  EXPECT_CONTAINS(error_of([&] { DecoderLayer(model, 2); }), "there is no stack 2");

  ref::Rng rng(seed_);
  ref::LayerConfig cfg{c.hidden, c.heads, c.ffn, c.norm, c.act, true, 1e-5, std::nullopt};
  ref::DecoderLayerParams params = ref::random_decoder_params(cfg, rng);
  std::map<std::string, DeviceBuffer> w;
  upload_named(ref::named_tensors(params), c.precision, &w, nullptr);
  const DecoderWeights dw = decoder_weights(w);
  DeviceBuffer x = poisoned(c.batch * c.seq * c.hidden, c.precision),
               y = poisoned(c.batch * c.seq * c.hidden, c.precision);
  DeviceBuffer enc = poisoned(c.batch * c.src_seq * c.hidden, c.precision);
  DecoderLayer layer(model, 1);
  const DecoderInputs good{c.precision, x.get(), nullptr, enc.get(), nullptr, y.get()};
  auto fwd = [&](DecoderInputs in, RunShape shape) {
    return
        [&layer, &dw, in, shape, this] { layer.forward(dw, in, shape, {}, *allocator_, stream_); };
  };
  EXPECT_CONTAINS(error_of(fwd(good, {c.batch, c.seq, 0})), "src_seq = 0) must be at least 1");
  DecoderInputs wrong_dtype = good;
  wrong_dtype.dtype = Precision::kBf16;
  EXPECT_CONTAINS(error_of(fwd(wrong_dtype, {c.batch, c.seq, c.src_seq})),
                  "inputs are bf16 but the model was compiled for fp16");
  DecoderInputs no_encoder = good;
  no_encoder.encoder_out = nullptr;
  EXPECT_CONTAINS(error_of(fwd(no_encoder, {c.batch, c.seq, c.src_seq})),
                  "missing or null tensor(s): encoder_out");
  DecoderInputs misaligned = good;
  misaligned.encoder_out = static_cast<const char*>(enc.get()) + 2;
  EXPECT_CONTAINS(error_of(fwd(misaligned, {c.batch, c.seq, c.src_seq})), "'encoder_out'");
  DecoderWeights no_cross = dw;
  no_cross.multihead_attn.in_proj_weight = nullptr;
  EXPECT_CONTAINS(
      error_of([&] {
        layer.forward(no_cross, good, {c.batch, c.seq, c.src_seq}, {}, *allocator_, stream_);
      }),
      "missing or null tensor(s): multihead_attn.in_proj_weight");
  // the unfused attention's score limit, checked before anything is allocated or launched
  EXPECT_CONTAINS(error_of(fwd(good, {c.batch, c.seq, int64_t{1} << 34})),
                  "cross-attention with batch 2");
  EXPECT_CONTAINS(error_of(fwd(good, {int64_t{1} << 20, 1 << 13, c.src_seq})),
                  "more than the unfused attention backend supports");
  // nothing ran: the stream is still usable
  sync();
}

}  // namespace
}  // namespace lightseq
