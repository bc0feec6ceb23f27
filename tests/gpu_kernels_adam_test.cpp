// gpu_kernels_adam_test.cpp — templates/adam.cuh on the GPU against the float64 reference:
// adam_kernel for fp32/fp16/bf16 × Adam (L2) / AdamW (decoupled) over tensors of 1, 7, 65539 and
// 1000003 elements packed back to back (so most chunks start unaligned), split into chunks of at
// most kAdamChunkElems: one and several steps (bias corrections of steps 1, 2, 3), fp32 master
// weights with the T copy equal to the rounded master for fp16/bf16 (and 16-bit parameters without
// a master, updated in place), the loss scale, step and learning rate read from device memory
// (OptimState, lr), and found_inf (0: the step happens; 1: nothing is written; the state is never
// written). check_finite_kernel finds one inf or NaN anywhere (first element, a tail, a
// one-element tensor) and ignores large finite values. optim_finish_kernel follows
// torch.amp.GradScaler.update's rule over a sequence of good and overflowing steps.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstring>

#include "common/adam_types.cuh"
#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using ref::all_close;

// AdamChunk<T> (common/adam_types.cuh) with device addresses as integers; the layout must be its.
struct HostAdamChunk {
  CUdeviceptr master, param, grad, exp_avg, exp_avg_sq;
  int64_t n;
};
static_assert(sizeof(HostAdamChunk) == sizeof(kern::AdamChunk<float>) &&
              offsetof(HostAdamChunk, grad) == offsetof(kern::AdamChunk<float>, grad) &&
              offsetof(HostAdamChunk, n) == offsetof(kern::AdamChunk<float>, n));
// The launch's constant hyperparameters; lr goes to device memory.
struct Hyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.01f;
};

bool same_state(const kern::OptimState& a, const kern::OptimState& b) {
  return std::memcmp(&a, &b, sizeof(a)) == 0;
}

const int64_t kTensorSizes[] = {1, 7, 65539, 1000003};

class AdamKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      all.push_back(codegen::adam(p, OptimizerKind::kAdam));
      all.push_back(codegen::adam(p, OptimizerKind::kAdamW));
      all.push_back(codegen::check_finite(p));
      all.push_back(codegen::optim_finish(p));
    }
    prepare_kernels(all);
  }

 protected:
  // Flat buffers holding every tensor back to back, and the chunk table over them.
  struct State {
    int64_t total = 0;
    std::vector<int64_t> offsets;  // first element of each tensor
    DeviceArray master, param, grad, m, v, chunks;
    int n_chunks = 0;
  };
  // has_master: fp32 master weights beside the T parameters (fp16/bf16 only).
  State make_state(Precision p, const Vec& master, const Vec& grad, bool has_master) {
    State s;
    for (int64_t n : kTensorSizes) {
      s.offsets.push_back(s.total);
      s.total += n;
    }
    s.master = upload(Precision::kFp32, has_master ? master : Vec());
    s.param = upload(p, master);
    s.grad = upload(p, grad);
    s.m = upload(Precision::kFp32, Vec(s.total, 0.0));
    s.v = upload(Precision::kFp32, Vec(s.total, 0.0));
    const int64_t eb = ref::dtype_bytes(p);
    std::vector<HostAdamChunk> chunks;
    for (size_t t = 0; t < s.offsets.size(); ++t) {
      for (int64_t c = 0; c < kTensorSizes[t]; c += kern::kAdamChunkElems) {
        const int64_t at = s.offsets[t] + c;
        chunks.push_back({has_master ? s.master.ptr() + 4 * at : 0, s.param.ptr() + eb * at,
                          s.grad.ptr() + eb * at, s.m.ptr() + 4 * at, s.v.ptr() + 4 * at,
                          std::min<int64_t>(kern::kAdamChunkElems, kTensorSizes[t] - c)});
      }
    }
    s.n_chunks = static_cast<int>(chunks.size());
    s.chunks = upload_pod(chunks);
    return s;
  }
  // One adam_kernel launch with lr and `st` in device memory; returns the state as it is after
  // (the kernel only reads it). blocks > 0: that many blocks striding over the chunks
  // instead of one per chunk (the kernel's grid stride).
  kern::OptimState launch_adam(Precision p, OptimizerKind kind, State& s, const Hyper& h,
                               const kern::OptimState& st, unsigned blocks = 0) {
    DeviceArray lr = upload_pod(std::vector<float>{h.lr});
    DeviceArray state = upload_pod(std::vector<kern::OptimState>{st});
    CUdeviceptr chunks = s.chunks.ptr(), lr_ptr = lr.ptr(), state_ptr = state.ptr(),
                norm_partials = 0;  // no clipping (the optimizer layer test clips)
    int n = s.n_chunks;
    float b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weight_decay, max_norm = 0;
    const kern::GridDim grid = blocks > 0 ? kern::GridDim{blocks, 1, 1} : kern::adam_grid(n);
    launch(codegen::adam(p, kind), grid, kern::adam_block(),
           {&chunks, &n, &b1, &b2, &eps, &wd, &lr_ptr, &state_ptr, &norm_partials, &max_norm});
    return download_pod<kern::OptimState>(state)[0];
  }
  kern::OptimState run_check_finite(Precision p, State& s, kern::OptimState st) {
    DeviceArray state = upload_pod(std::vector<kern::OptimState>{st});
    CUdeviceptr chunks = s.chunks.ptr(), f = state.ptr();
    int n = s.n_chunks;
    launch(codegen::check_finite(p), kern::check_finite_grid(n), kern::check_finite_block(),
           {&chunks, &n, &f});
    return download_pod<kern::OptimState>(state)[0];
  }
};

struct Variant {
  Precision precision;
  OptimizerKind kind;
  bool master;  // fp32 master weights (16-bit parameters)
};
std::vector<Variant> all_variants() {
  std::vector<Variant> v;
  for (Precision p : kAllPrecisions) {
    for (OptimizerKind k : {OptimizerKind::kAdam, OptimizerKind::kAdamW}) {
      v.push_back({p, k, p != Precision::kFp32});
      if (p != Precision::kFp32) v.push_back({p, k, false});  // 16-bit, updated in place
    }
  }
  return v;
}

std::string variant_name(const Variant& v) {
  return precision_name(v.precision) + "_" + std::string(to_string(v.kind)) +
         (v.precision == Precision::kFp32 ? ""
          : v.master                      ? "_master"
                                          : "_nomaster");
}
void PrintTo(const Variant& v, std::ostream* os) { *os << variant_name(v); }

class GpuAdam : public AdamKernels, public testing::WithParamInterface<Variant> {};

TEST_P(GpuAdam, StepsMatchReferenceAndFoundInfSkips) {
  const auto [p, kind, has_master] = GetParam();
  const bool in_place_16 = p != Precision::kFp32 && !has_master;
  const kern::AdamMode mode =
      kind == OptimizerKind::kAdam ? kern::AdamMode::kAdam : kern::AdamMode::kAdamW;
  int64_t total = 0;
  for (int64_t n : kTensorSizes) total += n;
  Vec master = random(Precision::kFp32, total, -1, 1);
  if (!has_master) ref::round_in_place(p, master);
  const double loss_scale = p == Precision::kFp16 ? 1024.0 : 1.0;
  State s = make_state(p, master, random(p, total, -loss_scale, loss_scale), has_master);
  DeviceArray flag = zeroed_raw(1, sizeof(int));
  Vec m(total, 0.0), v(total, 0.0);

  const Hyper hyper;
  for (int step = 1; step <= 3; ++step) {
    SCOPED_TRACE(testing::Message() << "step " << step);
    const Vec grad = random(p, total, -loss_scale, loss_scale);
    write(s.grad, grad);
    // The device state before update number `step`. Step 1: one block per chunk; steps 2 and 3:
    // 1 and 3 blocks striding over the 20 chunks (every chunk updated once, or the check fails).
    const kern::OptimState st{static_cast<float>(loss_scale), step - 1, 0, 7};
    const unsigned blocks = step == 1 ? 0u : step == 2 ? 1u : 3u;
    EXPECT_TRUE(same_state(launch_adam(p, kind, s, hyper, st, blocks), st))
        << "adam_kernel only reads the state";

    ref::AdamHyper h;
    h.lr = hyper.lr, h.beta1 = hyper.beta1, h.beta2 = hyper.beta2, h.eps = hyper.eps;
    h.weight_decay = hyper.weight_decay, h.grad_scale = 1.0 / loss_scale;
    h.bias_correction1 = 1 - std::pow(static_cast<double>(hyper.beta1), step);
    h.bias_correction2 = 1 - std::pow(static_cast<double>(hyper.beta2), step);
    Vec p_ref = master, m_ref = m, v_ref = v, delta(total), slack(total);
    for (int64_t i = 0; i < total; ++i) {
      slack[i] = ref::adam_update_slack(mode, h, grad[i], master[i], m[i], v[i]);
      ref::adam_step(mode, h, grad[i], p_ref[i], m_ref[i], v_ref[i]);
      delta[i] = p_ref[i] - master[i];
    }
    double max_delta = 0;
    for (double d : delta) max_delta = std::max(max_delta, std::fabs(d));
    const Vec got_m = download(s.m), got_v = download(s.v);
    const Vec got_p = has_master ? download(s.master) : download(s.param);
    EXPECT_TRUE(all_close("exp_avg", got_m, m_ref, ref::fp32_tolerance()));
    EXPECT_TRUE(all_close("exp_avg_sq", got_v, v_ref, ref::fp32_tolerance()));
    if (in_place_16) {
      // fp32 arithmetic, then one rounding to T: within an ulp of T of the rounded exact value.
      ref::round_in_place(p, p_ref);
      EXPECT_TRUE(all_close("param (16-bit, in place)", got_p, p_ref,
                            {2 * ref::unit_roundoff(p), 0, 1, 1e-7}));
    } else {
      // 2 ulp of the fp32 weight, plus 1e-4 of the update (a wrong update term is far outside).
      const ref::Tolerance wt{std::ldexp(1.0, -22), 0, 1, 1e-4 * max_delta};
      EXPECT_TRUE(all_close(has_master ? "master" : "param", got_p, p_ref, wt, slack));
      // The update itself, element by element, relative to its size.
      Vec got_delta(total);
      for (int64_t i = 0; i < total; ++i) got_delta[i] = got_p[i] - master[i];
      EXPECT_TRUE(all_close("update", got_delta, delta, {2e-3, 1e-3, 1e-3, 0}, slack));
    }
    if (has_master) {
      EXPECT_TRUE(ref::bytes_equal("param = master rounded to T", download_bytes(s.param),
                                   ref::encode(p, got_p)));
    }
    if (HasFailure()) return;
    master = got_p, m = got_m, v = got_v;  // continue from the device state (no drift)
  }

  // found_inf: nothing is written.
  const std::vector<uint8_t> before_p = download_bytes(s.param),
                             before_master = download_bytes(s.master);
  const std::vector<uint8_t> before_m = download_bytes(s.m), before_v = download_bytes(s.v);
  launch_adam(p, kind, s, hyper, kern::OptimState{1.0f, 3, 1, 0});
  EXPECT_TRUE(ref::bytes_equal("param after a skipped step", download_bytes(s.param), before_p));
  EXPECT_TRUE(
      ref::bytes_equal("master after a skipped step", download_bytes(s.master), before_master));
  EXPECT_TRUE(ref::bytes_equal("exp_avg after a skipped step", download_bytes(s.m), before_m));
  EXPECT_TRUE(ref::bytes_equal("exp_avg_sq after a skipped step", download_bytes(s.v), before_v));
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuAdam, testing::ValuesIn(all_variants()),
                         [](const auto& info) { return variant_name(info.param); });

class GpuCheckFinite : public AdamKernels, public testing::WithParamInterface<Precision> {};

TEST_P(GpuCheckFinite, FindsASingleInfOrNan) {
  const Precision p = GetParam();
  int64_t total = 0;
  for (int64_t n : kTensorSizes) total += n;
  Vec grad = random(p, total, -1, 1);
  grad[total / 2] = p == Precision::kFp16 ? 65504.0 : 3e38;  // large but finite
  State s = make_state(p, random(Precision::kFp32, total, -1, 1), grad, p != Precision::kFp32);
  const kern::OptimState clean{128.0f, 5, 0, 9};
  EXPECT_TRUE(same_state(run_check_finite(p, s, clean), clean)) << "all gradients are finite";
  const int64_t big = s.offsets[3];
  const int64_t places[] = {0,
                            1,
                            s.offsets[1] + 6,
                            big + kern::kAdamChunkElems,
                            total - 1,
                            big + 5 * kern::kAdamChunkElems + 12345};
  for (int64_t at : places) {
    for (double bad : {INFINITY, -INFINITY, NAN}) {
      SCOPED_TRACE(testing::Message() << "element " << at << " = " << bad);
      Vec g = grad;
      g[at] = bad;
      write(s.grad, g);
      const kern::OptimState got = run_check_finite(p, s, clean);
      EXPECT_EQ(got.found_inf, 1);
      EXPECT_EQ(got.loss_scale, clean.loss_scale);
      EXPECT_EQ(got.step, clean.step);
      EXPECT_EQ(got.growth_tracker, clean.growth_tracker);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuCheckFinite, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

// torch.amp.GradScaler.update: an overflow halves the scale and restarts the count; growth_interval
// good steps in a row double it (unless that overflows fp32); the step counts good steps only.
class GpuOptimFinish : public AdamKernels {};

TEST_F(GpuOptimFinish, FollowsGradScalerUpdate) {
  struct Case {
    int interval;
    float scale;
    kern::OptimState end;  // worked out by hand for the sequence below
  };
  const Case cases[] = {
      {3, 65536.0f, {16384.0f, 6, 0, 1}}, {0, 1.0f, {1.0f, 6, 0, 0}}, {1, 2e38f, {1e38f, 6, 0, 0}}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << "growth_interval " << c.interval << ", scale " << c.scale);
    kern::OptimState want = kern::initial_optim_state(c.scale);
    DeviceArray state = upload_pod(std::vector<kern::OptimState>{want});
    const bool overflow[] = {false, false, true, false, false, false, true, true, false};
    for (bool inf : overflow) {
      if (inf) {
        kern::OptimState with = download_pod<kern::OptimState>(state)[0];
        with.found_inf = 1;
        state = upload_pod(std::vector<kern::OptimState>{with});
      }
      CUdeviceptr sp = state.ptr();
      float growth = 2.0f, backoff = 0.5f;
      int interval = c.interval;
      launch(codegen::optim_finish(Precision::kFp32), kern::grid_1d(1), 32,
             {&sp, &growth, &backoff, &interval});
      // The rule, on the host.
      if (inf) {
        if (c.interval > 0) want.loss_scale *= 0.5f, want.growth_tracker = 0;
      } else {
        ++want.step;
        if (c.interval > 0 && ++want.growth_tracker >= c.interval) {
          if (std::isfinite(want.loss_scale * 2.0f)) want.loss_scale *= 2.0f;
          want.growth_tracker = 0;
        }
      }
      const kern::OptimState got = download_pod<kern::OptimState>(state)[0];
      EXPECT_EQ(got.loss_scale, want.loss_scale);
      EXPECT_EQ(got.step, want.step);
      EXPECT_EQ(got.growth_tracker, want.growth_tracker);
      EXPECT_EQ(got.found_inf, 0) << "cleared for the next step";
    }
    const kern::OptimState got = download_pod<kern::OptimState>(state)[0];
    EXPECT_EQ(got.loss_scale, c.end.loss_scale);
    EXPECT_EQ(got.step, c.end.step);
    EXPECT_EQ(got.growth_tracker, c.end.growth_tracker);
  }
}

}  // namespace
}  // namespace lightseq::kernel_test
