// The executor's and the C++ API's input checks, which run before any device work (so they are
// tested on machines without a GPU), and the no-GPU error of CompiledModel::load.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
#include "compiler/spec/rules.h"
#include "flash_attention.sig.cuh"
#include "runtime/device.h"
#include "runtime/executor.h"
#include "runtime/model.h"

namespace lightseq {
namespace {

// Fails the test if the executor asks for memory: validation must come first.
class NoAllocator final : public Allocator {
 public:
  void* allocate(size_t bytes, CUstream) override {
    ADD_FAILURE() << "allocated " << bytes << " bytes before validating its inputs";
    throw Error("allocation not expected");
  }
  void deallocate(void*, size_t, CUstream) override {}
};

ModelSpec encoder_spec() {
  ModelSpec s;
  s.name = "t";
  s.precision = Precision::kBf16;
  LayerStackSpec l;
  l.hidden = 64;
  l.heads = 4;
  l.ffn = 128;
  s.layers.push_back(l);
  return s;
}

// encoder_spec() and a decoder stack of the same sizes after it.
ModelSpec encoder_decoder_spec() {
  ModelSpec s = encoder_spec();
  LayerStackSpec d = s.layers[0];
  d.kind = LayerKind::kDecoder;
  d.causal = true;
  s.layers.push_back(d);
  return s;
}

struct Fixture {
  ModelPlan plan = plan_model(encoder_spec());
  KernelTable kernels;
  GemmRunner gemm;
  std::unique_ptr<LayerExecutor> exec;
  std::vector<std::unique_ptr<std::array<double, 64>>> storage;  // aligned fake device memory
  Fixture() {
    for (const KernelInstance& k : plan.kernels()) kernels[k.label] = nullptr;
    exec = std::make_unique<LayerExecutor>(plan.layers[0], Precision::kBf16, kernels, &gemm);
  }
  Bindings all_forward() {
    Bindings b;
    for (const std::string& name : exec->required_bindings(false)) {
      storage.push_back(std::make_unique<std::array<double, 64>>());
      b[name] = storage.back()->data();
    }
    return b;
  }
};

TEST(RuntimeExecutor, NamesMissingBindings) {
  Fixture f;
  Bindings b = f.all_forward();
  b.erase("linear1.weight");
  b["norm2.bias"] = nullptr;
  NoAllocator alloc;
  try {
    f.exec->forward(b, {2, 3, 0}, {}, alloc, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing or null tensor(s): linear1.weight, norm2.bias"),
              std::string::npos)
        << e.what();
  }
}

TEST(RuntimeExecutor, RejectsMisalignedPointers) {
  Fixture f;
  Bindings b = f.all_forward();
  b["x"] = static_cast<char*>(b["x"]) + 2;
  NoAllocator alloc;
  try {
    f.exec->forward(b, {2, 3, 0}, {}, alloc, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'x'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("16-byte aligned"), std::string::npos) << e.what();
  }
}

// The positional calls bind by the manifest's order: the count is checked first, and a null slot
// is named by its manifest entry.
TEST(RuntimeExecutor, PositionalCallsCheckTheManifest) {
  Fixture f;
  NoAllocator alloc;
  const std::vector<ManifestEntry>& fwd = f.exec->manifest(false);
  ASSERT_EQ(fwd.size(), f.exec->required_bindings(false).size());
  auto message = [](auto&& call) {
    try {
      call();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::vector<void*> too_few(fwd.size() - 1, nullptr);
  EXPECT_NE(message([&] {
              f.exec->forward_at(too_few, {2, 3, 0}, {}, alloc, nullptr);
            })
                .find(fmt::format("{} tensor pointers given, the layer's manifest has {}",
                                  fwd.size() - 1, fwd.size())),
            std::string::npos);
  const Bindings b = f.all_forward();
  std::vector<void*> args;
  for (const ManifestEntry& e : fwd)
    args.push_back(e.name == "linear2.bias" ? nullptr : b.at(e.name));
  EXPECT_NE(message([&] {
              f.exec->forward_at(args, {2, 3, 0}, {}, alloc, nullptr);
            }).find("missing or null tensor(s): linear2.bias"),
            std::string::npos);
  std::vector<void*> bwd(f.exec->manifest(true).size() + 1, nullptr);
  EXPECT_NE(
      message([&] {
        f.exec->backward_at(bwd, nullptr, {2, 3, 0}, {}, GradMode::kOverwrite, alloc, nullptr);
      }).find("tensor pointers given, the layer's backward manifest has"),
      std::string::npos);
}

TEST(RuntimeExecutor, RejectsEmptyShapes) {
  Fixture f;
  NoAllocator alloc;
  EXPECT_THROW(f.exec->forward(f.all_forward(), {0, 3, 0}, {}, alloc, nullptr), Error);
  EXPECT_THROW(f.exec->forward(f.all_forward(), {2, -1, 0}, {}, alloc, nullptr), Error);
}

TEST(RuntimeExecutor, BackwardNeedsAForward) {
  Fixture f;
  NoAllocator alloc;
  SavedActivations none;
  EXPECT_THROW(f.exec->backward({}, none, GradMode::kOverwrite, alloc, nullptr), Error);
}

// The saved-activation arena: every slot is a monomial in B, T whose sum (each rounded up to the
// arena alignment) is saved_arena_bytes, and the layout covers the activations the backward reads.
TEST(RuntimeExecutor, SavedArenaLayoutIsAPolynomialInTheShape) {
  Fixture f;
  const auto& slots = f.exec->saved_slots();
  ASSERT_FALSE(slots.empty());
  for (const RunShape s : {RunShape{1, 1, 0}, RunShape{2, 3, 0}, RunShape{7, 513, 0}}) {
    int64_t want = 0;
    for (const SavedSlot& slot : slots) {
      EXPECT_EQ(slot.bytes.s, 0) << slot.name;
      const int64_t b = slot.bytes.eval(s.batch, s.seq, 0);
      EXPECT_GT(b, 0) << slot.name;
      want += (b + kSavedArenaAlign - 1) / kSavedArenaAlign * kSavedArenaAlign;
    }
    EXPECT_EQ(f.exec->saved_arena_bytes(s), want);
  }
  // B·T·H activations of a bf16 layer are saved (at least the layer input's LayerNorm output or
  // the attention probabilities), so the arena grows with both B and T.
  EXPECT_GT(f.exec->saved_arena_bytes({2, 8, 0}), f.exec->saved_arena_bytes({1, 8, 0}));
  EXPECT_GT(f.exec->saved_arena_bytes({1, 16, 0}), f.exec->saved_arena_bytes({1, 8, 0}));
  // A null arena is refused before any device work.
  EXPECT_THROW(f.exec->saved_from_arena(nullptr, {}, {2, 3, 0}, {}), Error);
}

TEST(RuntimeExecutor, PaddingMaskIsOptional) {
  Fixture f;
  const auto names = f.exec->required_bindings(false);
  EXPECT_NE(std::find(names.begin(), names.end(), "key_padding_mask"), names.end());
  Bindings b = f.all_forward();
  b.erase("key_padding_mask");
  b.erase("norm1.weight");  // so that the call stops at validation
  NoAllocator alloc;
  try {
    f.exec->forward(b, {2, 3, 0}, {}, alloc, nullptr);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("norm1.weight"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("key_padding_mask"), std::string::npos) << msg;
  }
}

TEST(RuntimeModel, LoadWithoutGpuSaysWhy) {
  if (device_count() > 0)
    GTEST_SKIP() << "this machine has a GPU; the no-GPU error is tested on CPU machines";
  try {
    CompiledModel::load(encoder_spec());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lightseq needs an NVIDIA GPU: "), std::string::npos)
        << e.what();
  }
}

TEST(RuntimeModel, InvalidSpecIsASpecError) {
  ModelSpec s = encoder_spec();
  s.layers[0].heads = 7;
  EXPECT_THROW(CompiledModel::load(s), SpecError);
}

}  // namespace
}  // namespace lightseq

namespace lightseq {
namespace {

// The decoder's graph names are the contract DecoderLayer (runtime/model.cpp) binds: PyTorch's
// nn.TransformerDecoderLayer names, the cross-attention's packed in_proj split in q and k/v rows.
TEST(RuntimeExecutor, DecoderBindingsAreTheTypedApisNamesAndItsArenaGrowsWithS) {
  ModelSpec spec = encoder_decoder_spec();
  const ModelPlan plan = plan_model(spec);
  KernelTable kernels;
  for (const KernelInstance& k : plan.kernels()) kernels[k.label] = nullptr;
  GemmRunner gemm;
  ASSERT_EQ(plan.layers.size(), 2u);
  LayerExecutor exec(plan.layers[1], Precision::kBf16, kernels, &gemm);

  std::set<std::string> params;
  for (const char* a :
       {"self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "multihead_attn.in_proj_weight", "multihead_attn.in_proj_bias",
        "multihead_attn.out_proj.weight", "multihead_attn.out_proj.bias", "linear1.weight",
        "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight", "norm1.bias",
        "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"}) {
    params.insert(a);
  }
  std::set<std::string> forward = params;
  forward.insert({"x", "key_padding_mask", "encoder_out", "encoder_padding_mask", "y"});
  const auto fwd = exec.required_bindings(false);
  EXPECT_EQ(std::set<std::string>(fwd.begin(), fwd.end()), forward);

  // The backward needs the parameters, the output gradient, and writes grad_x, grad_encoder_out
  // and every parameter's gradient; the forward's inputs come from its SavedActivations.
  std::set<std::string> backward{"grad_y", "grad_x", "grad_encoder_out"};
  for (const std::string& p : params) backward.insert("grad." + p);
  const auto bwd = exec.required_bindings(true);
  const std::set<std::string> got(bwd.begin(), bwd.end());
  for (const std::string& n : backward)
    EXPECT_TRUE(got.count(n)) << n << " is not bound in the backward";
  for (const std::string& n : got) {
    EXPECT_TRUE(backward.count(n) || params.count(n) || forward.count(n))
        << "unexpected binding " << n;
  }

  // The manifest says what each binding is: shapes, the +=, which forward tensor a gradient is of.
  for (const ManifestEntry& e : exec.manifest(true)) {
    if (e.name == "grad_encoder_out") {
      EXPECT_TRUE(e.accumulates) << "the decoder adds its memory gradient into the caller's buffer";
      EXPECT_EQ(e.grad_of, "encoder_out");
      EXPECT_EQ(shape_to_string(e.shape), "[B·S, 64]");
    } else {
      EXPECT_FALSE(e.accumulates) << e.name;
    }
    if (e.name == "grad_y") {
      EXPECT_EQ(e.grad_of, "y");
    }
    if (e.name == "grad_x") {
      EXPECT_EQ(e.grad_of, "x");
    }
    if (e.name == "grad.multihead_attn.in_proj_weight") {
      EXPECT_EQ(e.grad_of, "multihead_attn.in_proj_weight");
      EXPECT_EQ(shape_to_string(e.shape), "[192, 64]")
          << "the whole packed parameter, as PyTorch holds it";
    }
  }
  for (const ManifestEntry& e : exec.manifest(false)) {
    EXPECT_EQ(e.optional, e.name == "key_padding_mask" || e.name == "encoder_padding_mask")
        << e.name;
  }

  // Cross-attention keys/values are saved per encoder position: the arena grows with S too.
  bool any_s = false;
  for (const SavedSlot& slot : exec.saved_slots()) any_s |= slot.bytes.s > 0;
  EXPECT_TRUE(any_s);
  EXPECT_GT(exec.saved_arena_bytes({2, 8, 16}), exec.saved_arena_bytes({2, 8, 8}));
}

// "attention": "auto": the executor hands a call to its fused plan exactly where the rule admits
// the shape — at the key limit, not one past it (a decoder's S as its T), and not past the fused
// grids' batch — and answers for it: the saved arena is that plan's, and a forward checks its
// inputs there (before any memory is asked for).
TEST(RuntimeExecutor, AutoHandsACallToTheFusedPlanExactlyWhereTheRuleSays) {
  ModelSpec spec = encoder_decoder_spec();
  for (LayerStackSpec& l : spec.layers) l.attention = AttentionBackend::kAuto;
  const ModelPlan plan = plan_model(spec);
  KernelTable kernels;
  for (const KernelInstance& k : plan.kernels()) kernels[k.label] = nullptr;
  GemmRunner gemm;
  for (const LayerPlan& lp : plan.layers) {
    SCOPED_TRACE(lp.layer.name);
    ASSERT_NE(lp.fused, nullptr);
    LayerExecutor exec(lp, Precision::kBf16, kernels, &gemm);
    ASSERT_NE(exec.fused(), nullptr);
    const bool decoder = lp.layer.type == LayerType::kDecoder;
    const int64_t keys = lp.fused_rule.max_keys, batch = lp.fused_rule.max_batch;
    EXPECT_EQ(keys, spec_detail::kAutoFusedMaxKeys);
    EXPECT_EQ(batch, kern::kFlashMaxBatchHeads / spec.layers[0].heads);
    const int64_t s = decoder ? 7 : 0;
    for (const auto& [shape, fused] :
         {std::pair{RunShape{2, 1, s}, true}, std::pair{RunShape{2, keys, s}, true},
          std::pair{RunShape{2, keys + 1, s}, false}, std::pair{RunShape{batch, 3, s}, true},
          std::pair{RunShape{batch + 1, 3, s}, false}}) {
      SCOPED_TRACE(fmt::format("B {} T {} S {}", shape.batch, shape.seq, shape.src_seq));
      const LayerExecutor& runs = exec.at(shape);
      EXPECT_EQ(&runs, fused ? exec.fused() : &exec);
      EXPECT_EQ(exec.saved_arena_bytes(shape), runs.saved_arena_bytes(shape));
    }
    if (decoder) {
      EXPECT_EQ(&exec.at(RunShape{2, 3, keys}), exec.fused());
      EXPECT_EQ(&exec.at(RunShape{2, 3, keys + 1}), &exec) << "the cross-attention's keys";
    }
    // The plans differ where it shows: the unfused one saves the [B, heads, T, T] probabilities.
    const RunShape at{2, keys, s};
    EXPECT_GT(exec.saved_arena_bytes(RunShape{2, keys + 1, s}),
              exec.fused()->saved_arena_bytes(RunShape{2, keys + 1, s}));
    NoAllocator none;
    try {
      exec.forward(Bindings{}, at, DropoutConfig{}, none, nullptr);
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace lightseq
