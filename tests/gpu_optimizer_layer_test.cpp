// The optimizer layer of a spec runs through its plan (CompiledModel::layer("optimizer"),
// LayerExecutor, the generic launch path with its tensor-list chunk tables) on the GPU, against the
// float64 Adam / AdamW reference (tests/reference/kernels.h):
//  - flat arenas of the model's parameter count ("params", "grads", "exp_avg", "exp_avg_sq",
//    "master_params" for fp16/bf16), split into chunks with a partial last one;
//  - the learning rate and OptimState read from device memory at each call: lr changed between
//    calls, the step counted on the device by optim_finish (bias corrections of steps 1, 2, 3);
//  - fp16: an inf gradient skips the update (weights and moments bit-identical), backs the loss
//    scale off and does not count the step; the loss scale divides the gradients;
//  - a second set of arenas (other pointers) gets its own chunk table: the same update bit for bit.
// The CPU part checks the bindings the executor asks for and the arena size.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "common/adam_types.cuh"
#include "compiler/graph/param_arena.h"
#include "compiler/planner/planner.h"
#include "runtime/model.h"
#include "tests/gpu_layer_test_util.h"
#include "tests/reference/kernels.h"

namespace lightseq {
namespace {

using ref::Vec;
using test::model_for;
using Names = std::set<std::string>;

// An embedding of 1001 × 136 = 136136 parameters, 136192 with the arena's alignment: chunks of
// 65536, 65536 and 5120 elements.
constexpr int64_t kVocab = 1001, kHidden = 136;
constexpr int64_t kParams =
    (kVocab * kHidden + kArenaAlignElems - 1) / kArenaAlignElems * kArenaAlignElems;

struct OptCase {
  Precision precision;
  OptimizerKind kind;
  bool clip = false;  // global-norm clipping (clip_norm below the gradients' norm)
};
std::string opt_case_name(const OptCase& c) {
  return fmt::format("{}_{}{}", to_string(c.precision), to_string(c.kind), c.clip ? "_clip" : "");
}
// The gradients are uniform in ±1 (unscaled): their norm is about sqrt(kParams / 3) ≈ 213.
constexpr double kClipNorm = 50;

ModelSpec optimizer_spec(const OptCase& c) {
  ModelSpec s;
  s.name = "gpu-optimizer-layer-test";
  s.precision = c.precision;
  EmbeddingSpec e;
  e.vocab = kVocab;
  e.hidden = kHidden;
  e.positions = PositionKind::kSinusoidal;
  e.max_positions = 16;
  e.padding_idx = 1;
  s.embedding = e;
  OptimizerSpec o;
  o.kind = c.kind;
  o.lr = 2e-3;
  o.beta1 = 0.9;
  o.beta2 = 0.98;
  // Not Adam's default eps: 1e-6 puts more elements where the update g/(|g| + eps) amplifies
  // g's fp32 rounding (ref::adam_update_slack bounds what that explains).
  o.eps = 1e-6;
  o.weight_decay = 0.05;
  o.clip_norm = c.clip ? kClipNorm : 0.0;
  s.optimizer = o;
  return s;
}

Names opt_bindings(const OptCase& c) {
  Names n{"params", "grads", "exp_avg", "exp_avg_sq", "lr", "optim_state"};
  if (c.precision != Precision::kFp32) n.insert("master_params");
  return n;
}

std::vector<OptCase> all_opt_cases() {
  std::vector<OptCase> out;
  for (Precision p : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
    for (OptimizerKind k : {OptimizerKind::kAdam, OptimizerKind::kAdamW}) out.push_back({p, k});
    out.push_back({p, OptimizerKind::kAdamW, true});
  }
  return out;
}

class GpuOptimizerLayer : public test::GpuLayerTest, public ::testing::WithParamInterface<OptCase> {
 protected:
  // One set of device arenas.
  struct Arenas {
    DeviceBuffer params, grads, exp_avg, exp_avg_sq, master;
    Bindings bind(const DeviceBuffer& lr, const DeviceBuffer& state) const {
      Bindings b{{"params", params.get()},   {"grads", grads.get()},
                 {"exp_avg", exp_avg.get()}, {"exp_avg_sq", exp_avg_sq.get()},
                 {"lr", lr.get()},           {"optim_state", state.get()}};
      if (master) b["master_params"] = master.get();
      return b;
    }
  };
  kern::OptimState state_of(const DeviceBuffer& b) {
    kern::OptimState s{};
    download_bytes(b, &s, sizeof(s));
    return s;
  }
  DeviceBuffer up_state(const kern::OptimState& s) { return upload_bytes(&s, sizeof(s)); }
  DeviceBuffer up_lr(float lr) { return upload_bytes(&lr, sizeof(lr)); }
  std::vector<uint8_t> bytes_of(const DeviceBuffer& b, size_t n) {
    std::vector<uint8_t> v(n);
    download_bytes(b, v.data(), n);
    return v;
  }
};

TEST_P(GpuOptimizerLayer, StepsMatchTheReferenceWithDeviceScalars) {
  const OptCase c = GetParam();
  const Precision p = c.precision;
  const bool has_master = p != Precision::kFp32;
  const bool fp16 = p == Precision::kFp16;
  const ModelSpec spec = optimizer_spec(c);
  const OptimizerSpec& o = *spec.optimizer;
  const kern::AdamMode mode =
      c.kind == OptimizerKind::kAdam ? kern::AdamMode::kAdam : kern::AdamMode::kAdamW;
  const auto model = model_for(spec);
  const LayerExecutor& exec = model->layer("optimizer");
  const int64_t n = kParams;
  ref::Rng rng(seed_ ^ 0x5bd1e995u);

  Vec master = rng.uniform_vec(n, -1, 1);
  ref::round_in_place(Precision::kFp32, master);
  if (!has_master) ref::round_in_place(p, master);
  Vec m(n, 0.0), v(n, 0.0);
  Arenas a;
  a.params = up(master, p);
  a.grads = poisoned(n, p);
  a.exp_avg = up(m, Precision::kFp32);
  a.exp_avg_sq = up(v, Precision::kFp32);
  if (has_master) a.master = up(master, Precision::kFp32);
  const float loss_scale = fp16 ? 1024.0f : 1.0f;
  DeviceBuffer state = up_state(kern::initial_optim_state(loss_scale));
  DeviceBuffer lr = up_lr(static_cast<float>(o.lr));

  int good_steps = 0;
  float want_scale = loss_scale;
  for (int call = 1; call <= 4; ++call) {
    SCOPED_TRACE(testing::Message() << "call " << call);
    Vec grad = rng.uniform_vec(n, -want_scale, want_scale);
    const bool overflow = fp16 && call == 2;
    if (overflow) grad[n - 3] = INFINITY;  // in the partial last chunk
    ref::round_in_place(p, grad);
    a.grads = up(grad, p);
    // The learning rate is a run-time value: a schedule changes it between calls.
    const float lr_now = static_cast<float>(o.lr * call);
    lr = up_lr(lr_now);
    const std::vector<uint8_t> before_p = bytes_of(a.params, n * element_bytes(p));
    const std::vector<uint8_t> before_m = bytes_of(a.exp_avg, n * 4),
                               before_v = bytes_of(a.exp_avg_sq, n * 4);
    exec.forward(a.bind(lr, state), {kParams, 1, 0}, {}, *allocator_, stream_);
    sync();
    const kern::OptimState st = state_of(state);
    EXPECT_EQ(st.found_inf, 0) << "cleared by optim_finish";
    if (overflow) {
      EXPECT_TRUE(ref::bytes_equal("params after an overflow",
                                   bytes_of(a.params, n * element_bytes(p)), before_p));
      EXPECT_TRUE(
          ref::bytes_equal("exp_avg after an overflow", bytes_of(a.exp_avg, n * 4), before_m));
      EXPECT_TRUE(ref::bytes_equal("exp_avg_sq after an overflow", bytes_of(a.exp_avg_sq, n * 4),
                                   before_v));
      want_scale *= 0.5f;
      EXPECT_EQ(st.step, good_steps) << "a skipped update is not counted";
      EXPECT_EQ(st.loss_scale, want_scale) << "backed off";
      continue;
    }
    ++good_steps;
    EXPECT_EQ(st.step, good_steps);
    EXPECT_EQ(st.loss_scale, want_scale);

    ref::AdamHyper h;
    h.lr = lr_now;
    h.beta1 = static_cast<float>(o.beta1), h.beta2 = static_cast<float>(o.beta2);
    h.eps = static_cast<float>(o.eps), h.weight_decay = static_cast<float>(o.weight_decay);
    h.grad_scale = 1.0 / want_scale;
    if (c.clip) {  // torch.nn.utils.clip_grad_norm_: g *= min(1, max_norm / (‖g‖ + 1e-6))
      double sq = 0;
      for (double g : grad) sq += (g / want_scale) * (g / want_scale);
      const double coef = kClipNorm / (std::sqrt(sq) + 1e-6);
      ASSERT_LT(coef, 0.5) << "the test's gradients must be clipped";
      h.grad_scale *= coef;
    }
    h.bias_correction1 = 1 - std::pow(h.beta1, good_steps);
    h.bias_correction2 = 1 - std::pow(h.beta2, good_steps);
    Vec p_ref = master, m_ref = m, v_ref = v, delta(n), slack(n);
    double max_delta = 0;
    for (int64_t i = 0; i < n; ++i) {
      slack[i] = ref::adam_update_slack(mode, h, grad[i], master[i], m[i], v[i]);
      ref::adam_step(mode, h, grad[i], p_ref[i], m_ref[i], v_ref[i]);
      delta[i] = p_ref[i] - master[i];
      max_delta = std::max(max_delta, std::fabs(delta[i]));
    }
    const Vec got_m = down(a.exp_avg, n, Precision::kFp32),
              got_v = down(a.exp_avg_sq, n, Precision::kFp32);
    const Vec got_p = has_master ? down(a.master, n, Precision::kFp32) : down(a.params, n, p);
    EXPECT_TRUE(ref::all_close("exp_avg", got_m, m_ref, ref::fp32_tolerance()));
    EXPECT_TRUE(ref::all_close("exp_avg_sq", got_v, v_ref, ref::fp32_tolerance()));
    // 2 ulp of the fp32 weight plus 1e-4 of the update; the update itself relative to its size.
    EXPECT_TRUE(ref::all_close(has_master ? "master_params" : "params", got_p, p_ref,
                               {std::ldexp(1.0, -22), 0, 1, 1e-4 * max_delta}, slack));
    Vec got_delta(n);
    for (int64_t i = 0; i < n; ++i) got_delta[i] = got_p[i] - master[i];
    EXPECT_TRUE(ref::all_close("update", got_delta, delta, {2e-3, 1e-3, 1e-3, 0}, slack));
    if (has_master) {
      EXPECT_TRUE(ref::bytes_equal("params = master rounded to T",
                                   bytes_of(a.params, n * element_bytes(p)),
                                   ref::encode(p, got_p)));
    }
    if (HasFailure()) return;
    master = got_p, m = got_m, v = got_v;  // continue from the device state
  }
  if (fp16) {
    EXPECT_EQ(good_steps, 3);
  }

  // Other arenas with the same contents: their own chunk table, the same update bit for bit.
  Arenas b;
  b.params = up(down(a.params, n, p), p);
  b.exp_avg = up(m, Precision::kFp32);
  b.exp_avg_sq = up(v, Precision::kFp32);
  if (has_master) b.master = up(master, Precision::kFp32);
  Vec grad = rng.uniform_vec(n, -want_scale, want_scale);
  ref::round_in_place(p, grad);
  a.grads = up(grad, p);
  b.grads = up(grad, p);
  const kern::OptimState st = state_of(state);
  DeviceBuffer state_b = up_state(st);
  exec.forward(a.bind(lr, state), {kParams, 1, 0}, {}, *allocator_, stream_);
  exec.forward(b.bind(lr, state_b), {kParams, 1, 0}, {}, *allocator_, stream_);
  sync();
  EXPECT_TRUE(ref::bytes_equal("params, other arenas", bytes_of(b.params, n * element_bytes(p)),
                               bytes_of(a.params, n * element_bytes(p))));
  EXPECT_TRUE(ref::bytes_equal("exp_avg_sq, other arenas", bytes_of(b.exp_avg_sq, n * 4),
                               bytes_of(a.exp_avg_sq, n * 4)));
  EXPECT_EQ(state_of(state_b).step, st.step + 1);
}

INSTANTIATE_TEST_SUITE_P(All, GpuOptimizerLayer, ::testing::ValuesIn(all_opt_cases()),
                         [](const auto& info) { return opt_case_name(info.param); });

// ---- CPU: what the GPU test relies on
// ------------------------------------------------------------

TEST(ModelOptimizerPlan, BindingsAndArenaSizeAreWhatTheGpuTestUses) {
  for (const OptCase& c : all_opt_cases()) {
    SCOPED_TRACE(opt_case_name(c));
    const ModelSpec spec = optimizer_spec(c);
    ASSERT_TRUE(validate_spec(spec).empty());
    const ModelPlan plan = plan_model(spec);
    const LayerPlan* opt = nullptr;
    for (const LayerPlan& l : plan.layers) {
      if (l.layer.type == LayerType::kOptimizer) opt = &l;
    }
    ASSERT_NE(opt, nullptr);
    const Graph& g = opt->layer.graph;
    // The run's batch: the model-level step passes the arena's total, or a part of it.
    EXPECT_EQ(g.tensor(g.tensor_id("params")).shape, Shape{Dim::batch()});
    EXPECT_EQ(parameter_arena(spec).total, kParams)
        << "the optimizer's arenas are the parameter arena";
    KernelTable kernels;
    for (const KernelInstance& k : plan.kernels()) kernels[k.label] = nullptr;
    GemmRunner gemm;
    const LayerExecutor exec(*opt, spec.precision, kernels, &gemm);
    const auto f = exec.required_bindings(false);
    EXPECT_EQ(Names(f.begin(), f.end()), opt_bindings(c));
    EXPECT_TRUE(exec.required_bindings(true).empty()) << "the optimizer has no backward";
    // check_finite only where the loss is scaled (fp16), grad_norm only when clipping,
    // optim_finish always, after adam.
    std::vector<std::string> kernels_run;
    for (const Step& st : opt->forward)
      kernels_run.push_back(std::get<KernelStep>(st).kernel.kernel);
    std::vector<std::string> want{"adam_kernel", "optim_finish_kernel"};
    if (c.clip) want.insert(want.begin(), "grad_norm_kernel");
    if (c.precision == Precision::kFp16) want.insert(want.begin(), "check_finite_kernel");
    EXPECT_EQ(kernels_run, want);
  }
}

}  // namespace
}  // namespace lightseq
