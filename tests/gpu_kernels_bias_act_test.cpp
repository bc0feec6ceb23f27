// gpu_kernels_bias_act_test.cpp — templates/bias_act_dropout.cuh on the GPU against the float64
// references: bias_act_dropout_fwd_kernel / _bwd_kernel for fp32/fp16/bf16 × ReLU/GELU × dropout
// on/off × columns 8, 1000 (a partial column tile), 2048, 3072, 4096 × rows 1…16901; out, grad_x,
// the bias-gradient partials and their column_sum, grad_x aliasing grad_out; dropout masks
// (forward = backward = Philox, deterministic, offset-dependent, kept fraction 1 - p).
#include <gtest/gtest.h>

#include <cmath>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using kern::Act;
using kern::Drop;
using ref::all_close;
using ref::fp32_tolerance;
using ref::tolerance_for;

struct Variant {
  Activation act;
  bool dropout;
};
const Variant kVariants[] = {{Activation::kRelu, false},     {Activation::kRelu, true},
                             {Activation::kGelu, false},     {Activation::kGelu, true},
                             {Activation::kGeluTanh, false}, {Activation::kGeluTanh, true}};
struct Size {
  int64_t cols, rows;
};
const Size kSizes[] = {{8, 1},    {8, 16901}, {1000, 7}, {1000, 513}, {2048, 77},
                       {3072, 1}, {3072, 77}, {4096, 7}, {4096, 77}};
const int64_t kCols[] = {8, 1000, 2048, 3072, 4096};

using planner::fusion::act_of;
std::string variant_name(const Variant& v) {
  return std::string(to_string(v.act)) + (v.dropout ? "_drop" : "");
}
void PrintTo(const Variant& v, std::ostream* os) { *os << variant_name(v); }

class BiasActKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (int64_t c : kCols) {
        for (const Variant& v : kVariants) {
          all.push_back(codegen::bias_act_dropout_fwd(p, {c, v.act, v.dropout}));
          all.push_back(codegen::bias_act_dropout_bwd(p, {c, v.act, v.dropout}));
          if (v.act == Activation::kRelu) {
            all.push_back(codegen::bias_act_dropout_bwd(p, {c, v.act, v.dropout}, true));
          }
        }
      }
      all.push_back(codegen::column_sum(p));
    }
    prepare_kernels(all);
  }

 protected:
  void launch_fwd(Precision p, int64_t cols, const Variant& v, CUdeviceptr x, CUdeviceptr bias,
                  CUdeviceptr out, int64_t rows, kern::DropoutArgs drop) {
    const int vec = codegen::vec_width(p, cols);
    launch(codegen::bias_act_dropout_fwd(p, {cols, v.act, v.dropout}),
           kern::bad_fwd_grid(rows, cols, vec), kern::bad_fwd_block(),
           {&x, &bias, &out, &rows, &drop});
  }
  // from_output: x is the forward's output y (kern::ActFrom::kOutput, ReLU), bias unread.
  void launch_bwd(Precision p, int64_t cols, const Variant& v, CUdeviceptr grad_out, CUdeviceptr x,
                  CUdeviceptr bias, CUdeviceptr grad_x, CUdeviceptr partials, int64_t rows,
                  kern::DropoutArgs drop, bool from_output = false) {
    const int vec = codegen::vec_width(p, cols);
    launch(codegen::bias_act_dropout_bwd(p, {cols, v.act, v.dropout}, from_output),
           kern::bad_bwd_grid(rows, cols, vec), kern::bad_bwd_block(cols, vec),
           {&grad_out, &x, &bias, &grad_x, &partials, &rows, &drop});
  }
  // column_sum of all partial rows into a T bias gradient, = then +=.
  void check_bias_grad(Precision p, const DeviceArray& partials, int64_t blocks, int64_t cols,
                       const Vec& expect) {
    const KernelInstance k = codegen::column_sum(p);
    DeviceArray out = poisoned(p, cols);
    CUdeviceptr part = partials.ptr(), o = out.ptr(), none = 0;
    int64_t offset = 0, n_out = 1;
    kern::Accumulate acc = kern::Accumulate::kOverwrite;
    std::vector<void*> args{&part, &blocks, &cols, &offset, &cols, &n_out, &o, &none, &none, &acc};
    launch(k, kern::column_sum_grid(cols, n_out), kern::column_sum_block(), args);
    EXPECT_TRUE(all_close("dbias (column_sum =)", download(out), expect, tolerance_for(p)));
    const Vec old = random(p, cols, -1, 1);
    write(out, old);
    acc = kern::Accumulate::kAdd;
    launch(k, kern::column_sum_grid(cols, n_out), kern::column_sum_block(), args);
    Vec sum(cols);
    for (int64_t c = 0; c < cols; ++c) sum[c] = old[c] + expect[c];
    EXPECT_TRUE(all_close("dbias (column_sum +=)", download(out), sum, tolerance_for(p)));
  }
  kern::DropoutArgs random_dropout(double p) {
    return kern::make_dropout_args(rng().next(), rng().next() >> 8, p);
  }
};

class GpuBiasAct : public BiasActKernels,
                   public testing::WithParamInterface<std::tuple<Precision, Variant>> {};

TEST_P(GpuBiasAct, ForwardMatchesReference) {
  const auto [p, v] = GetParam();
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message() << "cols " << s.cols << ", rows " << s.rows);
    const int64_t n = s.rows * s.cols;
    const Vec x = random(p, n, -3, 3), bias = random(p, s.cols, -1, 1);
    const kern::DropoutArgs drop = random_dropout(v.dropout ? 0.1 : 0.0);
    DeviceArray d_x = upload(p, x), d_bias = upload(p, bias), out = poisoned(p, n);
    launch_fwd(p, s.cols, v, d_x.ptr(), d_bias.ptr(), out.ptr(), s.rows, drop);
    const Vec expect = ref::bias_act_dropout_fwd(x, bias, s.rows, s.cols, act_of(v.act),
                                                 v.dropout ? Drop::kOn : Drop::kOff, drop);
    EXPECT_TRUE(all_close("out", download(out), expect, tolerance_for(p)));
    EXPECT_TRUE(ref::bytes_equal("x is read-only", download_bytes(d_x), ref::encode(p, x)));
    if (HasFailure()) return;
  }
}

TEST_P(GpuBiasAct, BackwardMatchesReferenceIncludingPartialsAndAliasing) {
  const auto [p, v] = GetParam();
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message() << "cols " << s.cols << ", rows " << s.rows);
    const int64_t n = s.rows * s.cols, blocks = kern::bad_bwd_blocks(s.rows);
    const Vec x = random(p, n, -3, 3), bias = random(p, s.cols, -1, 1), g = random(p, n, -1, 1);
    const kern::DropoutArgs drop = random_dropout(v.dropout ? 0.1 : 0.0);
    const ref::BiasActBackward r = ref::bias_act_dropout_bwd(
        g, x, bias, s.rows, s.cols, act_of(v.act), v.dropout ? Drop::kOn : Drop::kOff, drop);
    DeviceArray d_x = upload(p, x), d_bias = upload(p, bias), d_g = upload(p, g);
    DeviceArray grad_x = poisoned(p, n), partials = poisoned(Precision::kFp32, blocks * s.cols);
    launch_bwd(p, s.cols, v, d_g.ptr(), d_x.ptr(), d_bias.ptr(), grad_x.ptr(), partials.ptr(),
               s.rows, drop);
    EXPECT_TRUE(all_close("grad_x", download(grad_x), r.grad_x, tolerance_for(p)));
    const Vec part = download(partials);
    EXPECT_TRUE(all_close(
        "dbias (partials)",
        ref::column_sum(part, blocks, s.cols, 0, s.cols, {}, kern::Accumulate::kOverwrite), r.dbias,
        fp32_tolerance()));
    check_bias_grad(p, partials, blocks, s.cols, r.dbias);

    // grad_x may alias grad_out.
    poison(partials);
    launch_bwd(p, s.cols, v, d_g.ptr(), d_x.ptr(), d_bias.ptr(), d_g.ptr(), partials.ptr(), s.rows,
               drop);
    EXPECT_TRUE(all_close("grad_x aliasing grad_out", download(d_g), r.grad_x, tolerance_for(p)));
    EXPECT_TRUE(all_close("dbias (aliased run)",
                          ref::column_sum(download(partials), blocks, s.cols, 0, s.cols, {},
                                          kern::Accumulate::kOverwrite),
                          r.dbias, fp32_tolerance()));
    if (HasFailure()) return;
  }
}

// ReLU's derivative from the forward's output y (kFrom = kOutput, what the plans run for ReLU):
// grad_x and the bias-gradient partials equal, value for value, those taken from x + bias with the
// dropout mask regenerated, for the forward's own y (x + bias near 0 often: x in [-1, 1]).
TEST_P(GpuBiasAct, ReluFromTheOutputEqualsReluFromTheInput) {
  const auto [p, v] = GetParam();
  if (v.act != Activation::kRelu) GTEST_SKIP() << "only ReLU's derivative follows from its output";
  for (const Size& s : kSizes) {
    SCOPED_TRACE(testing::Message() << "cols " << s.cols << ", rows " << s.rows);
    const int64_t n = s.rows * s.cols, blocks = kern::bad_bwd_blocks(s.rows);
    const Vec x = random(p, n, -1, 1), bias = random(p, s.cols, -1, 1), g = random(p, n, -1, 1);
    const kern::DropoutArgs drop = random_dropout(v.dropout ? 0.3 : 0.0);
    DeviceArray d_x = upload(p, x), d_bias = upload(p, bias), d_g = upload(p, g);
    DeviceArray y = poisoned(p, n);
    launch_fwd(p, s.cols, v, d_x.ptr(), d_bias.ptr(), y.ptr(), s.rows, drop);
    DeviceArray gx_in = poisoned(p, n), part_in = poisoned(Precision::kFp32, blocks * s.cols);
    DeviceArray gx_out = poisoned(p, n), part_out = poisoned(Precision::kFp32, blocks * s.cols);
    launch_bwd(p, s.cols, v, d_g.ptr(), d_x.ptr(), d_bias.ptr(), gx_in.ptr(), part_in.ptr(), s.rows,
               drop);
    // No bias (null) and a dropout state whose seed differs: neither may be read.
    kern::DropoutArgs other = drop;
    other.seed ^= 0x5bd1e995u;
    launch_bwd(p, s.cols, v, d_g.ptr(), y.ptr(), 0, gx_out.ptr(), part_out.ptr(), s.rows, other,
               true);
    const Vec a = download(gx_in), b = download(gx_out);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += !(a[i] == b[i]);  // +0 == -0; NaN (poison) differs
    EXPECT_EQ(differ, 0) << "grad_x elements that differ from the input-side kernel's";
    const Vec pa = download(part_in), pb = download(part_out);
    int64_t pdiffer = 0;
    for (size_t i = 0; i < pa.size(); ++i) pdiffer += !(pa[i] == pb[i]);
    EXPECT_EQ(pdiffer, 0) << "bias-gradient partials that differ";
    const ref::BiasActBackward r = ref::bias_act_dropout_bwd(
        g, x, bias, s.rows, s.cols, act_of(v.act), v.dropout ? Drop::kOn : Drop::kOff, drop);
    EXPECT_TRUE(all_close("grad_x from the output", b, r.grad_x, tolerance_for(p)));
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuBiasAct,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::ValuesIn(kVariants)),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_" +
                                  variant_name(std::get<1>(info.param));
                         });

class GpuBiasActDropout : public BiasActKernels, public testing::WithParamInterface<Precision> {};

// GELU of x + bias in [0.5, 1.5] and gradients in [0.5, 1] are never 0, so a zero output or
// gradient is exactly a dropped element.
TEST_P(GpuBiasActDropout, ForwardAndBackwardMasksAreThePhiloxMask) {
  const Precision p = GetParam();
  const Variant v{Activation::kGelu, true};
  const int64_t cols = 3072, rows = 200, n = rows * cols;
  const Vec x = random(p, n, 0.5, 1.0), bias = random(p, cols, 0.0, 0.5),
            g = random(p, n, 0.5, 1.0);
  DeviceArray d_x = upload(p, x), d_bias = upload(p, bias), d_g = upload(p, g);
  DeviceArray out = poisoned(p, n), grad_x = poisoned(p, n);
  DeviceArray partials = poisoned(Precision::kFp32, kern::bad_bwd_blocks(rows) * cols);
  auto run = [&](const kern::DropoutArgs& d) {
    poison(out), poison(grad_x), poison(partials);
    launch_fwd(p, cols, v, d_x.ptr(), d_bias.ptr(), out.ptr(), rows, d);
    launch_bwd(p, cols, v, d_g.ptr(), d_x.ptr(), d_bias.ptr(), grad_x.ptr(), partials.ptr(), rows,
               d);
    return std::make_pair(download_bytes(out), download_bytes(grad_x));
  };
  auto mask_of = [&](const std::vector<uint8_t>& bytes) {
    const Vec vals = ref::decode(p, bytes);
    std::vector<uint8_t> m(vals.size());
    for (size_t i = 0; i < vals.size(); ++i) m[i] = vals[i] != 0.0;
    return m;
  };
  for (double prob : {0.1, 0.5}) {
    SCOPED_TRACE(testing::Message() << "p = " << prob);
    const kern::DropoutArgs d = random_dropout(prob);
    const auto [fwd, bwd] = run(d);
    const std::vector<uint8_t> fwd_mask = mask_of(fwd);
    EXPECT_TRUE(ref::bytes_equal("forward mask vs Philox", fwd_mask, ref::keep_mask(d, n)));
    EXPECT_TRUE(ref::bytes_equal("backward mask vs forward mask", mask_of(bwd), fwd_mask));
    double kept = 0;
    for (uint8_t m : fwd_mask) kept += m;
    EXPECT_NEAR(kept, n * (1 - prob), 5 * std::sqrt(n * prob * (1 - prob)));
    const auto [fwd2, bwd2] = run(d);
    EXPECT_TRUE(ref::bytes_equal("forward rerun", fwd2, fwd));
    EXPECT_TRUE(ref::bytes_equal("backward rerun", bwd2, bwd));
    kern::DropoutArgs next = d;
    next.offset += 1;
    const std::vector<uint8_t> other = mask_of(run(next).first);
    double differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += other[i] != fwd_mask[i];
    const double q = 2 * prob * (1 - prob);
    EXPECT_NEAR(differ, n * q, 5 * std::sqrt(n * q * (1 - q))) << "offset + 1 must draw a new mask";
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuBiasActDropout, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
