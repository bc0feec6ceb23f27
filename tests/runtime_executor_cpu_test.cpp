// The executor's and the C++ API's input checks, which run before any device work (so they are
// tested on machines without a GPU), and the no-GPU error of CompiledModel::load.
#include <gtest/gtest.h>

#include "compiler/errors.h"
#include "compiler/planner/planner.h"
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
              std::string::npos) << e.what();
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
  if (device_count() > 0) GTEST_SKIP() << "this machine has a GPU; the no-GPU error is tested on CPU machines";
  try {
    CompiledModel::load(encoder_spec());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lightseq needs an NVIDIA GPU: "), std::string::npos) << e.what();
  }
}

TEST(RuntimeModel, InvalidSpecIsASpecError) {
  ModelSpec s = encoder_spec();
  s.layers[0].heads = 7;
  EXPECT_THROW(CompiledModel::load(s), SpecError);
}

}  // namespace
}  // namespace lightseq
