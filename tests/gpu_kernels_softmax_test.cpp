// gpu_kernels_softmax_test.cpp — templates/softmax.cuh on the GPU against the float64 references:
// attn_softmax_fwd_kernel for fp32/fp16/bf16 × every mask (none, padding, causal, both) × dropout
// on/off, k_len 1, 7, 77, 513, 4096 (cached) and 4097 (streamed, scalar), q_len equal to, shorter
// and longer than k_len; fully masked rows (a padded-out batch element, causal rows before the
// first key) give zeros; probs aliasing scores; attn_softmax_bwd_kernel with and without dropout,
// grad_scores aliasing grad_dropped; dropout masks (forward = backward = Philox, deterministic,
// offset-dependent, kept fraction 1 - p).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using kern::Drop;
using kern::Mask;
using ref::all_close;
using ref::tolerance_for;

struct Shape {
  int64_t batch, heads, q_len, k_len;
};
const Shape kShapes[] = {{2, 3, 1, 1},   {3, 2, 7, 7},    {2, 2, 77, 7},   {3, 2, 7, 77},
                         {2, 2, 77, 77}, {2, 2, 33, 513}, {2, 1, 3, 4096}, {2, 1, 5, 4097}};

KernelInstance fwd_instance(Precision p, Mask m, bool drop) {
  return codegen::softmax_fwd(p, {kern::has_padding(m), kern::has_causal(m), drop});
}
KernelInstance bwd_instance(Precision p, bool drop) {
  return codegen::softmax_bwd(p, {false, false, drop});
}

class SoftmaxKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() {
    std::vector<KernelInstance> all;
    for (Precision p : kAllPrecisions) {
      for (bool drop : {false, true}) {
        for (Mask m : kAllMasks) all.push_back(fwd_instance(p, m, drop));
        all.push_back(bwd_instance(p, drop));
      }
    }
    prepare_kernels(all);
  }

 protected:
  void launch_fwd(Precision p, Mask m, bool drop, CUdeviceptr scores, CUdeviceptr probs,
                  CUdeviceptr dropped, CUdeviceptr key_padding, const Shape& s,
                  kern::DropoutArgs d) {
    int64_t batch = s.batch, heads = s.heads, q = s.q_len, k = s.k_len;
    const int64_t rows = batch * heads * q;
    const KernelInstance inst = fwd_instance(p, m, drop);
    const int threads = std::stoi(inst.template_args.at(1));  // kThreads
    launch(inst, kern::softmax_grid(rows, k, threads, ref::dtype_bytes(p)),
           kern::softmax_block(threads),
           {&scores, &probs, &dropped, &key_padding, &batch, &heads, &q, &k, &d});
  }
  void launch_bwd(Precision p, bool drop, CUdeviceptr grad_dropped, CUdeviceptr probs,
                  CUdeviceptr grad_scores, int64_t rows, int64_t k_len, kern::DropoutArgs d) {
    const KernelInstance inst = bwd_instance(p, drop);
    const int threads = std::stoi(inst.template_args.at(1));  // kThreads
    launch(inst, kern::softmax_grid(rows, k_len, threads, ref::dtype_bytes(p)),
           kern::softmax_block(threads), {&grad_dropped, &probs, &grad_scores, &rows, &k_len, &d});
  }
  kern::DropoutArgs random_dropout(double p) {
    return kern::make_dropout_args(rng().next(), rng().next() >> 8, p);
  }
  std::vector<uint8_t> key_padding(const Shape& s) {
    return ref::test_key_padding(rng(), s.batch, s.k_len);
  }
};

class GpuSoftmaxFwd : public SoftmaxKernels,
                      public testing::WithParamInterface<std::tuple<Precision, Mask, bool>> {};

TEST_P(GpuSoftmaxFwd, MatchesReferenceWithMasksAndAliasing) {
  const auto [p, mask, drop] = GetParam();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "batch " << s.batch << ", heads " << s.heads << ", q_len "
                                    << s.q_len << ", k_len " << s.k_len);
    const int64_t n = s.batch * s.heads * s.q_len * s.k_len;
    const Vec scores = random(p, n, -4, 4);
    std::vector<uint8_t> pad = key_padding(s);
    // Without kPadding the kernel must ignore key_padding: give it one that pads everything.
    if (!kern::has_padding(mask)) pad.assign(pad.size(), 1);
    const kern::DropoutArgs d = random_dropout(drop ? 0.1 : 0.0);
    const ref::SoftmaxForward r = ref::attn_softmax_fwd(
        scores, pad, s.batch, s.heads, s.q_len, s.k_len, mask, drop ? Drop::kOn : Drop::kOff, d);
    DeviceArray d_scores = upload(p, scores), d_pad = upload_pod(pad);
    DeviceArray probs = poisoned(p, n), dropped = poisoned(p, drop ? n : 0);
    launch_fwd(p, mask, drop, d_scores.ptr(), probs.ptr(), drop ? dropped.ptr() : 0, d_pad.ptr(), s,
               d);
    EXPECT_TRUE(all_close("probs", download(probs), r.probs, tolerance_for(p)));
    if (drop) {
      EXPECT_TRUE(all_close("probs_dropped", download(dropped), r.dropped, tolerance_for(p)));
    }

    // Fully masked rows are exactly zero (the comparison above allows a tiny absolute error).
    const Vec got = download(probs);
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t i = 0; i < s.q_len; ++i) {
        bool all_masked = true;
        for (int64_t j = 0; j < s.k_len; ++j) {
          all_masked &= ref::attn_masked(mask, pad, b, i, j, s.q_len, s.k_len);
        }
        if (!all_masked) continue;
        for (int64_t h = 0; h < s.heads; ++h) {
          for (int64_t j = 0; j < s.k_len; ++j) {
            const double v = got[((b * s.heads + h) * s.q_len + i) * s.k_len + j];
            ASSERT_EQ(v, 0.0) << "fully masked row (b " << b << ", h " << h << ", i " << i
                              << ") key " << j;
          }
        }
      }
    }

    // probs may alias scores.
    DeviceArray inplace = upload(p, scores);
    if (drop) poison(dropped);
    launch_fwd(p, mask, drop, inplace.ptr(), inplace.ptr(), drop ? dropped.ptr() : 0, d_pad.ptr(),
               s, d);
    EXPECT_TRUE(all_close("probs aliasing scores", download(inplace), r.probs, tolerance_for(p)));
    if (drop) {
      EXPECT_TRUE(
          all_close("probs_dropped (aliased run)", download(dropped), r.dropped, tolerance_for(p)));
    }
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuSoftmaxFwd,
                         testing::Combine(testing::ValuesIn(kAllPrecisions),
                                          testing::ValuesIn(kAllMasks), testing::Bool()),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_" +
                                  mask_name(std::get<1>(info.param)) +
                                  (std::get<2>(info.param) ? "_drop" : "");
                         });

class GpuSoftmaxBwd : public SoftmaxKernels,
                      public testing::WithParamInterface<std::tuple<Precision, bool>> {};

TEST_P(GpuSoftmaxBwd, MatchesReferenceWithAliasing) {
  const auto [p, drop] = GetParam();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message()
                 << "rows " << s.batch * s.heads * s.q_len << ", k_len " << s.k_len);
    const int64_t rows = s.batch * s.heads * s.q_len, n = rows * s.k_len;
    // probs: a real softmax output (with masked zeros and a fully masked batch), as stored in T.
    const std::vector<uint8_t> pad = key_padding(s);
    Vec probs = ref::attn_softmax_fwd(random(p, n, -4, 4), pad, s.batch, s.heads, s.q_len, s.k_len,
                                      Mask::kPaddingCausal, Drop::kOff, {})
                    .probs;
    ref::round_in_place(p, probs);
    const Vec g = random(p, n, -1, 1);
    const kern::DropoutArgs d = random_dropout(drop ? 0.1 : 0.0);
    const Vec expect =
        ref::attn_softmax_bwd(g, probs, rows, s.k_len, drop ? Drop::kOn : Drop::kOff, d);
    DeviceArray d_g = upload(p, g), d_probs = upload(p, probs), grad = poisoned(p, n);
    launch_bwd(p, drop, d_g.ptr(), d_probs.ptr(), grad.ptr(), rows, s.k_len, d);
    EXPECT_TRUE(all_close("grad_scores", download(grad), expect, tolerance_for(p)));
    launch_bwd(p, drop, d_g.ptr(), d_probs.ptr(), d_g.ptr(), rows, s.k_len, d);
    EXPECT_TRUE(
        all_close("grad_scores aliasing grad_dropped", download(d_g), expect, tolerance_for(p)));
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuSoftmaxBwd,
                         testing::Combine(testing::ValuesIn(kAllPrecisions), testing::Bool()),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_drop" : "");
                         });

class GpuSoftmaxDropout : public SoftmaxKernels, public testing::WithParamInterface<Precision> {};

// Forward mask: probs_dropped != 0 (probabilities are >= e^-2 / k_len > 0). The backward must use
// that same mask: it is compared with the softmax backward computed from the forward's zeros.
TEST_P(GpuSoftmaxDropout, ForwardAndBackwardMasksAreThePhiloxMask) {
  const Precision p = GetParam();
  const Shape s{2, 4, 77, 77};
  const int64_t rows = s.batch * s.heads * s.q_len, n = rows * s.k_len;
  const Vec scores = random(p, n, -1, 1), g = random(p, n, -1, 1);
  const std::vector<uint8_t> no_pad(s.batch * s.k_len, 0);
  DeviceArray d_scores = upload(p, scores), d_pad = upload_pod(no_pad), d_g = upload(p, g);
  DeviceArray probs = poisoned(p, n), dropped = poisoned(p, n), grad = poisoned(p, n);
  auto forward = [&](const kern::DropoutArgs& d) {
    poison(probs), poison(dropped);
    launch_fwd(p, Mask::kNone, true, d_scores.ptr(), probs.ptr(), dropped.ptr(), d_pad.ptr(), s, d);
    return download_bytes(dropped);
  };
  auto mask_of = [&](const std::vector<uint8_t>& bytes) {
    const Vec v = ref::decode(p, bytes);
    std::vector<uint8_t> m(n);
    for (int64_t i = 0; i < n; ++i) m[i] = v[i] != 0.0;
    return m;
  };
  for (double prob : {0.1, 0.5}) {
    SCOPED_TRACE(testing::Message() << "p = " << prob);
    const kern::DropoutArgs d = random_dropout(prob);
    const std::vector<uint8_t> fwd_bytes = forward(d);
    const std::vector<uint8_t> fwd_mask = mask_of(fwd_bytes);
    EXPECT_TRUE(ref::bytes_equal("forward mask vs Philox", fwd_mask,
                                 ref::attn_keep_mask(d, rows, s.k_len)));
    EXPECT_TRUE(ref::bytes_equal("forward rerun", forward(d), fwd_bytes));
    double kept = 0;
    for (uint8_t m : fwd_mask) kept += m;
    EXPECT_NEAR(kept, n * (1 - prob), 5 * std::sqrt(n * prob * (1 - prob)));
    kern::DropoutArgs next = d;
    next.offset += 1;
    const std::vector<uint8_t> other = mask_of(forward(next));
    double differ = 0;
    for (int64_t i = 0; i < n; ++i) differ += other[i] != fwd_mask[i];
    const double q = 2 * prob * (1 - prob);
    EXPECT_NEAR(differ, n * q, 5 * std::sqrt(n * q * (1 - q))) << "offset + 1 must draw a new mask";

    // The backward against a reference that uses the mask read off the forward's output.
    forward(d);
    launch_bwd(p, true, d_g.ptr(), probs.ptr(), grad.ptr(), rows, s.k_len, d);
    const Vec pr = download(probs);
    Vec expect(n);
    for (int64_t r = 0; r < rows; ++r) {
      double dot = 0;
      for (int64_t j = 0; j < s.k_len; ++j) {
        const int64_t i = r * s.k_len + j;
        expect[i] = fwd_mask[i] ? g[i] * static_cast<double>(d.scale) : 0.0;
        dot += expect[i] * pr[i];
      }
      for (int64_t j = 0; j < s.k_len; ++j) {
        const int64_t i = r * s.k_len + j;
        expect[i] = pr[i] * (expect[i] - dot);
      }
    }
    EXPECT_TRUE(
        all_close("backward with the forward's mask", download(grad), expect, tolerance_for(p)));
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuSoftmaxDropout, testing::ValuesIn(kAllPrecisions),
                         [](const auto& info) { return precision_name(info.param); });

}  // namespace
}  // namespace lightseq::kernel_test
