// gpu_kernels_layernorm_test.cpp — templates/layernorm.cuh on the GPU against the float64
// references (tests/reference/kernels.h): ln_fwd_kernel and ln_bwd_kernel for fp32/fp16/bf16 ×
// every switch combination the planner emits (plus the documented pure-add and plain-dropout
// backwards) × hidden 8…20480 (register-cached and streamed rows) × rows 1…16901; every output
// (sum_out, norm_out, mean, rstd, grad_z, grad_branch, the partials and their column sums: all 1
// to 3 of them in one column_sum launch, with = and +=), grad_z aliasing grad_out or null,
// grad_branch untouched without dropout; dropout: the forward and backward masks are the Philox
// mask, the same one, bit-identical across runs, different for another offset, kept fraction
// within 5 sigma of 1 - p. Outputs are poisoned (NaN bytes) before every launch.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using kern::Drop;
using kern::Norm;
using ref::all_close;
using ref::fp32_tolerance;
using ref::tolerance_for;

struct FwdVariant {
  bool branch, norm, dropout;
};
struct BwdVariant {
  bool norm, residual_in, branch_out, dropout;
};
// What the planner emits (compiler/planner/kernel_fusion.cpp), for every example model and
// pre/post-LN, ReLU/GELU, dropout on/off.
const FwdVariant kFwdVariants[] = {{false, true, false},
                                   {true, false, false},
                                   {true, false, true},
                                   {true, true, false},
                                   {true, true, true}};
const BwdVariant kBwdVariants[] = {
    {false, false, true, true},  {true, false, true, false}, {true, false, true, true},
    {true, true, false, false},  {true, true, true, false},  {true, true, true, true},
    {false, true, false, false},  // documented: "with Norm::kOff and BranchOut::kOff it only adds"
    {false, false, false, true},  // documented: a plain dropout backward (no bias)
    {true, false, false, false},  // a final LayerNorm's backward (final_norm): dx only
};

struct Size {
  int64_t hidden, rows;
};
// Real hidden sizes, a one-vector row, and rows too long for registers (backward > 8192, forward
// > 16384 elements: the streamed paths). Rows: 1, odd counts, more rows than partial blocks
// (264), and ~64 rows per partial block (16901).
const Size kSizes[] = {{8, 1},     {8, 77},     {8, 16901},  {512, 7},   {512, 513},
                       {768, 77},  {1024, 1},   {1024, 513}, {4096, 7},  {4096, 77},
                       {12288, 7}, {12288, 33}, {20480, 3},  {20480, 33}};
const int64_t kHiddens[] = {8, 512, 768, 1024, 4096, 12288, 20480};

KernelInstance fwd_instance(Precision p, int64_t h, const FwdVariant& v) {
  return codegen::ln_fwd(p, {h, v.branch, v.norm, v.dropout});
}
KernelInstance bwd_instance(Precision p, int64_t h, const BwdVariant& v) {
  return codegen::ln_bwd(p, {h, v.norm, v.residual_in, v.branch_out, v.dropout});
}

std::string fwd_name(const FwdVariant& v) {
  return std::string(v.branch ? "branch" : "nobranch") + (v.norm ? "_norm" : "_nonorm") +
         (v.dropout ? "_drop" : "");
}
std::string bwd_name(const BwdVariant& v) {
  return std::string(v.norm ? "norm" : "nonorm") + (v.residual_in ? "_res" : "") +
         (v.branch_out ? "_branch" : "") + (v.dropout ? "_drop" : "");
}
void PrintTo(const FwdVariant& v, std::ostream* os) { *os << fwd_name(v); }
void PrintTo(const BwdVariant& v, std::ostream* os) { *os << bwd_name(v); }

class LayerNormKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (int64_t h : kHiddens) {
        for (const FwdVariant& v : kFwdVariants) all.push_back(fwd_instance(p, h, v));
        for (const BwdVariant& v : kBwdVariants) all.push_back(bwd_instance(p, h, v));
      }
      all.push_back(codegen::column_sum(p));
    }
    prepare_kernels(all);
  }

 protected:
  struct FwdArgs {
    CUdeviceptr branch = 0, bias = 0, residual = 0, gamma = 0, beta = 0, sum_out = 0, norm_out = 0,
                mean = 0, rstd = 0;
    int64_t rows = 0;
    float eps = 0;
    kern::DropoutArgs drop{};
  };
  void launch_fwd(const KernelInstance& k, Precision p, int64_t hidden, FwdArgs a) {
    const int vec = codegen::vec_width(p, hidden);
    launch(k, kern::ln_grid(a.rows, hidden, vec), kern::ln_block(hidden, vec),
           {&a.branch, &a.bias, &a.residual, &a.gamma, &a.beta, &a.sum_out, &a.norm_out, &a.mean,
            &a.rstd, &a.rows, &a.eps, &a.drop});
  }
  struct BwdArgs {
    CUdeviceptr grad_out = 0, z = 0, mean = 0, rstd = 0, gamma = 0, grad_residual = 0, grad_z = 0,
                grad_branch = 0, partials = 0;
    int64_t rows = 0;
    kern::DropoutArgs drop{};
  };
  void launch_bwd(const KernelInstance& k, Precision p, int64_t hidden, BwdArgs a) {
    const int vec = codegen::vec_width(p, hidden);
    launch(k, kern::ln_bwd_grid(a.rows), kern::ln_bwd_block(hidden, vec),
           {&a.grad_out, &a.z, &a.mean, &a.rstd, &a.gamma, &a.grad_residual, &a.grad_z,
            &a.grad_branch, &a.partials, &a.rows, &a.drop});
  }
  // One column_sum_kernel launch over the whole partials row, [n_out * cols] (n_out = 1..3: dgamma,
  // dbeta and dbias as the planner finishes them), = then +=, output y against expect[y] (the exact
  // column sums of columns [y * cols, (y + 1) * cols)).
  void check_column_sums(Precision p, const DeviceArray& partials, int64_t n_blocks, int64_t cols,
                         const std::vector<Vec>& expect, const std::vector<std::string>& what) {
    const KernelInstance k = codegen::column_sum(p);
    int64_t n_out = static_cast<int64_t>(expect.size());
    ASSERT_TRUE(n_out >= 1 && n_out <= kern::kColumnSumMaxOuts) << n_out;
    std::vector<DeviceArray> outs;
    CUdeviceptr out_ptr[kern::kColumnSumMaxOuts] = {};
    for (int64_t y = 0; y < n_out; ++y) {
      outs.push_back(poisoned(p, cols));
      out_ptr[y] = outs.back().ptr();
    }
    CUdeviceptr part = partials.ptr();
    int64_t stride = n_out * cols, offset = 0;
    kern::Accumulate acc = kern::Accumulate::kOverwrite;
    std::vector<void*> args{&part,  &n_blocks,   &stride,     &offset,     &cols,
                            &n_out, &out_ptr[0], &out_ptr[1], &out_ptr[2], &acc};
    launch(k, kern::column_sum_grid(cols, n_out), kern::column_sum_block(), args);
    std::vector<Vec> old;
    for (int64_t y = 0; y < n_out; ++y) {
      EXPECT_TRUE(
          all_close(what[y] + " (column_sum =)", download(outs[y]), expect[y], tolerance_for(p)));
      old.push_back(random(p, cols, -1, 1));
      write(outs[y], old[y]);
    }
    acc = kern::Accumulate::kAdd;
    launch(k, kern::column_sum_grid(cols, n_out), kern::column_sum_block(), args);
    for (int64_t y = 0; y < n_out; ++y) {
      Vec sum(cols);
      for (int64_t c = 0; c < cols; ++c) sum[c] = old[y][c] + expect[y][c];
      EXPECT_TRUE(
          all_close(what[y] + " (column_sum +=)", download(outs[y]), sum, tolerance_for(p)));
    }
  }
  kern::DropoutArgs random_dropout(double p) {
    return kern::make_dropout_args(rng().next(), rng().next() >> 8, p);
  }
};

// Host column sums of fp32 partials [n_blocks, stride], columns [offset, offset + cols).
Vec host_column_sums(const Vec& partials, int64_t n_blocks, int64_t stride, int64_t offset,
                     int64_t cols) {
  return ref::column_sum(partials, n_blocks, stride, offset, cols, {},
                         kern::Accumulate::kOverwrite);
}

// ---- forward ----------------------------------------------------------------------------------

class GpuLnFwd : public LayerNormKernels,
                 public testing::WithParamInterface<std::tuple<Precision, FwdVariant>> {};

TEST_P(GpuLnFwd, MatchesReference) {
  const auto [p, v] = GetParam();
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message() << "hidden " << s.hidden << ", rows " << s.rows);
    const KernelInstance k = fwd_instance(p, s.hidden, v);
    const int64_t n = s.rows * s.hidden;
    // A large common offset in one case: a one-pass variance would lose it.
    const double off = s.hidden == 1024 && s.rows == 513 ? 40.0 : 0.0;
    const float eps = s.hidden == 8 ? 0.25f : 1e-5f;  // a hard-coded eps would show at hidden 8
    const Vec residual = random(p, n, off - 1, off + 1);
    const Vec branch = v.branch ? random(p, n, -1, 1) : Vec();
    const Vec bias = v.branch ? random(p, s.hidden, -0.5, 0.5) : Vec();
    const Vec gamma = random(p, s.hidden, 0.5, 1.5), beta = random(p, s.hidden, -0.5, 0.5);
    const kern::DropoutArgs drop = random_dropout(v.dropout ? 0.1 : 0.0);

    DeviceArray d_res = upload(p, residual), d_branch = upload(p, branch), d_bias = upload(p, bias);
    DeviceArray d_gamma = upload(p, gamma), d_beta = upload(p, beta);
    DeviceArray sum_out = poisoned(p, v.branch ? n : 0), norm_out = poisoned(p, v.norm ? n : 0);
    DeviceArray mean = poisoned(Precision::kFp32, v.norm ? s.rows : 0);
    DeviceArray rstd = poisoned(Precision::kFp32, v.norm ? s.rows : 0);
    FwdArgs a;
    a.residual = d_res.ptr();
    if (v.branch) a.branch = d_branch.ptr(), a.bias = d_bias.ptr(), a.sum_out = sum_out.ptr();
    if (v.norm) {
      a.gamma = d_gamma.ptr(), a.beta = d_beta.ptr(), a.norm_out = norm_out.ptr();
      a.mean = mean.ptr(), a.rstd = rstd.ptr();
    }
    a.rows = s.rows, a.eps = eps, a.drop = drop;
    launch_fwd(k, p, s.hidden, a);

    Vec z = residual;
    if (v.branch) {
      z = ref::bias_dropout_residual(branch, bias, residual, s.rows, s.hidden,
                                     v.dropout ? &drop : nullptr);
      EXPECT_TRUE(all_close("sum_out", download(sum_out), z, tolerance_for(p)));
      z = download(sum_out);  // the LayerNorm normalizes the stored (rounded) z
    }
    if (v.norm) {
      const ref::LnForward f = ref::layernorm_fwd(z, gamma, beta, s.rows, s.hidden, eps);
      // With the offset, fp32 itself cannot hold the mean closer than ulp(40)/2 = 2e-6: allow that
      // (a one-pass variance is off by ~5e-4 there and still fails).
      ref::Tolerance tol = tolerance_for(p);
      if (off > 0) tol.atol = std::max(tol.atol, 1e-5);
      EXPECT_TRUE(all_close("norm_out", download(norm_out), f.y, tol));
      EXPECT_TRUE(all_close("mean", download(mean), f.mean, fp32_tolerance()));
      EXPECT_TRUE(all_close("rstd", download(rstd), f.rstd, fp32_tolerance()));
    }
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuLnFwd,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::ValuesIn(kFwdVariants)),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_" +
                                  fwd_name(std::get<1>(info.param));
                         });

// ---- backward ---------------------------------------------------------------------------------

class GpuLnBwd : public LayerNormKernels,
                 public testing::WithParamInterface<std::tuple<Precision, BwdVariant>> {};

TEST_P(GpuLnBwd, MatchesReferenceIncludingPartialsAndAliasing) {
  const auto [p, v] = GetParam();
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message() << "hidden " << s.hidden << ", rows " << s.rows);
    const KernelInstance k = bwd_instance(p, s.hidden, v);
    const int64_t n = s.rows * s.hidden, H = s.hidden;
    const Vec grad_out = random(p, n, -1, 1), z = random(p, n, -2, 2);
    const Vec gamma = random(p, H, 0.5, 1.5), grad_res = random(p, n, -1, 1);
    // The statistics the forward would have saved (fp32).
    ref::LnForward stats = ref::layernorm_fwd(z, gamma, gamma, s.rows, H, 1e-5);
    ref::round_in_place(Precision::kFp32, stats.mean);
    ref::round_in_place(Precision::kFp32, stats.rstd);
    const kern::DropoutArgs drop = random_dropout(v.dropout ? 0.1 : 0.0);
    const kern::Norm norm = v.norm ? Norm::kOn : Norm::kOff;
    const int64_t cols = kern::ln_bwd_partial_cols(
        H, norm, v.branch_out ? kern::BranchOut::kOn : kern::BranchOut::kOff);
    const int64_t blocks = kern::ln_bwd_blocks(s.rows);
    const ref::LnBackward r =
        ref::ln_bwd(grad_out, z, stats.mean, stats.rstd, gamma, grad_res, s.rows, H, norm,
                    v.residual_in ? kern::ResidualIn::kOn : kern::ResidualIn::kOff,
                    v.dropout ? Drop::kOn : Drop::kOff, drop);

    DeviceArray d_go = upload(p, grad_out), d_z = upload(p, z), d_gamma = upload(p, gamma);
    DeviceArray d_res = upload(p, grad_res);
    DeviceArray d_mean = upload(Precision::kFp32, stats.mean),
                d_rstd = upload(Precision::kFp32, stats.rstd);
    // Without dropout grad_branch "is not written": a poisoned buffer must stay poisoned.
    DeviceArray grad_z = poisoned(p, n), grad_branch = poisoned(p, n);
    DeviceArray partials = poisoned(Precision::kFp32, blocks * cols);
    BwdArgs a;
    a.grad_out = d_go.ptr(), a.grad_z = grad_z.ptr(), a.rows = s.rows, a.drop = drop;
    if (v.norm)
      a.z = d_z.ptr(), a.mean = d_mean.ptr(), a.rstd = d_rstd.ptr(), a.gamma = d_gamma.ptr();
    if (v.residual_in) a.grad_residual = d_res.ptr();
    a.grad_branch = grad_branch.ptr();
    a.partials = cols > 0 ? partials.ptr() : 0;
    launch_bwd(k, p, H, a);

    EXPECT_TRUE(all_close("grad_z", download(grad_z), r.grad_z, tolerance_for(p)));
    if (v.dropout) {
      EXPECT_TRUE(all_close("grad_branch", download(grad_branch), r.grad_branch, tolerance_for(p)));
    } else {
      EXPECT_TRUE(ref::bytes_equal("grad_branch (Drop::kOff: not written)",
                                   download_bytes(grad_branch),
                                   std::vector<uint8_t>(grad_branch.bytes(), 0xFF)));
    }
    const Vec part = download(partials);
    std::vector<Vec> expect;
    std::vector<std::string> what;
    auto check_part = [&](const Vec& e, const char* name) {
      EXPECT_TRUE(all_close(
          std::string(name) + " (partials)",
          host_column_sums(part, blocks, cols, H * static_cast<int64_t>(expect.size()), H), e,
          fp32_tolerance()));
      expect.push_back(e);
      what.push_back(name);
    };
    if (v.norm) {
      check_part(r.dgamma, "dgamma");
      check_part(r.dbeta, "dbeta");
    }
    if (v.branch_out) check_part(r.dbias, "dbias");
    if (!expect.empty()) check_column_sums(p, partials, blocks, H, expect, what);

    // grad_z may alias grad_out.
    DeviceArray inplace = upload(p, grad_out);
    poison(partials);
    if (v.dropout) poison(grad_branch);
    a.grad_out = a.grad_z = inplace.ptr();
    launch_bwd(k, p, H, a);
    EXPECT_TRUE(
        all_close("grad_z aliasing grad_out", download(inplace), r.grad_z, tolerance_for(p)));
    if (v.dropout) {
      EXPECT_TRUE(all_close("grad_branch (aliased run)", download(grad_branch), r.grad_branch,
                            tolerance_for(p)));
    }
    if (cols > 0) {
      EXPECT_TRUE(all_close("partials (aliased run)",
                            host_column_sums(download(partials), blocks, cols, 0, cols),
                            host_column_sums(part, blocks, cols, 0, cols), fp32_tolerance()));
    }
    // grad_z may be null (not written) when only grad_branch is wanted.
    if (v.dropout) {
      poison(partials);
      poison(grad_branch);
      a.grad_out = d_go.ptr();
      a.grad_z = 0;
      launch_bwd(k, p, H, a);
      EXPECT_TRUE(all_close("grad_branch (grad_z null)", download(grad_branch), r.grad_branch,
                            tolerance_for(p)));
      if (cols > 0) {
        EXPECT_TRUE(all_close("partials (grad_z null)",
                              host_column_sums(download(partials), blocks, cols, 0, cols),
                              host_column_sums(part, blocks, cols, 0, cols), fp32_tolerance()));
      }
    }
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuLnBwd,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::ValuesIn(kBwdVariants)),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_" +
                                  bwd_name(std::get<1>(info.param));
                         });

// ---- dropout ----------------------------------------------------------------------------------

class GpuLnDropout : public LayerNormKernels, public testing::WithParamInterface<Precision> {};

// Forward site (ln_fwd branch, residual 0, branch + bias > 0: kept iff sum_out != 0) and backward
// (ln_bwd grad_branch: kept iff != 0) with the same seed/offset: both equal the Philox mask,
// reruns are bit-identical, another offset gives another mask, the kept fraction is 1 - p.
TEST_P(GpuLnDropout, ForwardAndBackwardMasksAreThePhiloxMask) {
  const Precision p = GetParam();
  const int64_t H = 1024, rows = 513, n = rows * H;
  const KernelInstance fwd = fwd_instance(p, H, {true, false, true});
  const KernelInstance bwd = bwd_instance(p, H, {false, false, true, true});
  const Vec branch = random(p, n, 0.5, 1.0), bias = random(p, H, 0.0, 0.25), zero(n, 0.0);
  const Vec grad = random(p, n, 0.5, 1.0);
  DeviceArray d_branch = upload(p, branch), d_bias = upload(p, bias), d_zero = upload(p, zero);
  DeviceArray d_grad = upload(p, grad);
  DeviceArray sum_out = poisoned(p, n), grad_z = poisoned(p, n), grad_branch = poisoned(p, n);
  DeviceArray partials = poisoned(Precision::kFp32, kern::ln_bwd_blocks(rows) * H);

  auto run = [&](const kern::DropoutArgs& d) {
    poison(sum_out), poison(grad_z), poison(grad_branch), poison(partials);
    FwdArgs f;
    f.branch = d_branch.ptr(), f.bias = d_bias.ptr(), f.residual = d_zero.ptr(),
    f.sum_out = sum_out.ptr();
    f.rows = rows, f.eps = 1e-5f, f.drop = d;
    launch_fwd(fwd, p, H, f);
    BwdArgs b;
    b.grad_out = d_grad.ptr(), b.grad_z = grad_z.ptr(), b.grad_branch = grad_branch.ptr();
    b.partials = partials.ptr(), b.rows = rows, b.drop = d;
    launch_bwd(bwd, p, H, b);
    return std::make_pair(download_bytes(sum_out), download_bytes(grad_branch));
  };
  auto mask_of = [&](const std::vector<uint8_t>& bytes) {
    const Vec v = ref::decode(p, bytes);
    std::vector<uint8_t> m(v.size());
    for (size_t i = 0; i < v.size(); ++i) m[i] = v[i] != 0.0;
    return m;
  };
  for (double prob : {0.1, 0.5}) {
    SCOPED_TRACE(testing::Message() << "p = " << prob);
    const kern::DropoutArgs d = random_dropout(prob);
    const auto [fwd_bytes, bwd_bytes] = run(d);
    const std::vector<uint8_t> fwd_mask = mask_of(fwd_bytes), bwd_mask = mask_of(bwd_bytes);
    const std::vector<uint8_t> philox = ref::keep_mask(d, n);
    EXPECT_TRUE(ref::bytes_equal("forward mask vs Philox", fwd_mask, philox));
    EXPECT_TRUE(ref::bytes_equal("backward mask vs forward mask", bwd_mask, fwd_mask));
    double kept = 0;
    for (uint8_t m : fwd_mask) kept += m;
    EXPECT_NEAR(kept, n * (1 - prob), 5 * std::sqrt(n * prob * (1 - prob)));

    const auto [again_fwd, again_bwd] = run(d);
    EXPECT_TRUE(ref::bytes_equal("forward rerun", again_fwd, fwd_bytes));
    EXPECT_TRUE(ref::bytes_equal("backward rerun", again_bwd, bwd_bytes));

    kern::DropoutArgs next = d;
    next.offset += 1;
    const std::vector<uint8_t> other = mask_of(run(next).first);
    double differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += other[i] != fwd_mask[i];
    const double q = 2 * prob * (1 - prob);
    EXPECT_NEAR(differ, n * q, 5 * std::sqrt(n * q * (1 - q))) << "offset + 1 must draw a new mask";
  }
  // p = 1 drops everything (scale 0, no inf·0); p = 0 keeps everything unscaled.
  const auto [all_dropped, none_kept] = run(kern::make_dropout_args(1, 2, 1.0));
  EXPECT_TRUE(all_close("p = 1 forward", ref::decode(p, all_dropped), zero, {0, 0, 0}));
  EXPECT_TRUE(all_close("p = 1 backward", ref::decode(p, none_kept), zero, {0, 0, 0}));
  const auto [kept_fwd, kept_bwd] = run(kern::make_dropout_args(1, 2, 0.0));
  EXPECT_TRUE(all_close("p = 0 forward", ref::decode(p, kept_fwd),
                        ref::bias_dropout_residual(branch, bias, zero, rows, H, nullptr),
                        tolerance_for(p)));
  EXPECT_TRUE(all_close("p = 0 backward", ref::decode(p, kept_bwd), grad, {0, 0, 0}));
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuLnDropout, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
