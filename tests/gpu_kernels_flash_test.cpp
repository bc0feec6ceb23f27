// gpu_kernels_flash_test.cpp — templates/flash_attention.cuh on the GPU against the float64
// reference (q·kᵀ·scale, the unfused path's masked softmax and dropout, · v; its softmax backward
// for the gradients): flash_attn_fwd_kernel and the backward (dot, grad_k/grad_v, grad_q) for
// fp16/bf16 × head dims 32, 64, 96, 128 × every mask × dropout on/off; query and key lengths 1, 7,
// 63, 64, 65, 77, 128, 129, 513 and cross-attention shapes with q_len ≠ k_len (the backward in one
// launch where k_len <= 128, in three past it); the forward with 8 warps per block the same bits as
// with the plans' 4; a padded-out batch element
// (its rows fully masked: out 0, lse +inf, no gradient); the dropped entries the same as the
// unfused softmax's for the same seed and offset; the backward bitwise the same twice.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "compiler/codegen/program.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "tests/gpu_harness.h"
#include "tests/kernel_instances.h"
#include "tests/reference/kernels.h"

namespace lightseq::kernel_test {
namespace {

using kern::Drop;
using kern::Mask;
using ref::all_close;
using ref::tolerance_for;

const Precision kHalves[] = {Precision::kFp16, Precision::kBf16};
// Every head dim the issue lists that the kernels take (80: a multiple of 16, not of 32).
const int64_t kHeadDims[] = {32, 64, 80, 96, 128};
struct Shape {
  int64_t batch, heads, q_len, k_len;
};
const Shape kShapes[] = {{2, 3, 1, 1},
                         {3, 2, 7, 7},
                         {2, 2, 63, 63},
                         {2, 2, 64, 64},
                         {3, 2, 65, 65},
                         {2, 2, 77, 7},
                         {3, 1, 7, 77},
                         {2, 2, 77, 77},
                         {2, 1, 33, 513},
                         {2, 1, 513, 513},
                         // k_len % 4 == 0: the dropout draws shared between threads
                         {2, 2, 130, 128},
                         {1, 3, 200, 196},
                         // one key block (every key in one grad_k/grad_v block: the backward in
                         // one launch) over many query tiles; just past it, two blocks
                         {1, 2, 300, 64},
                         {2, 1, 129, 129}};

KernelInstance instance(Precision p, int64_t d, Mask m, bool drop) {
  return codegen::flash_fwd(p, {d, kern::has_padding(m), kern::has_causal(m), drop});
}

struct Expected {
  Vec out, lse;
  Vec probs, dropped;  // [batch·heads, q_len, k_len]
  Vec out_slack;       // per element of out: what the kernel's rounding points explain
};

// T's unit roundoff (half an ulp of 1): the relative error of one rounding to T.
double unit_roundoff(Precision p) {
  return p == Precision::kBf16 ? 0x1p-8 : p == Precision::kFp16 ? 0x1p-11 : 0x1p-24;
}

// The float64 forward: scores = q·kᵀ·scale, the unfused softmax (masks, dropout) of the
// reference, out = probs (dropped) · v; lse = ln Σ exp(scores) over the unmasked keys. The
// reference keeps every intermediate exact; the kernel rounds the probabilities to T before the
// product with v (as FlashAttention does, and as the unfused path stores them), so an element of
// out may be off by u·Σ_j |p_ij·v_jc| beyond its own rounding: out_slack allows twice that (the
// fp32 accumulation and the rescaling by the running maximum), which matters only where the sum
// cancels to far below its terms.
Expected reference(const Vec& q, const Vec& k, const Vec& v, const std::vector<uint8_t>& pad,
                   const Shape& s, int64_t d, double scale, Mask mask, bool drop,
                   const kern::DropoutArgs& args, double u) {
  const int64_t bh = s.batch * s.heads;
  Vec scores(bh * s.q_len * s.k_len);
  for (int64_t h = 0; h < bh; ++h) {
    for (int64_t i = 0; i < s.q_len; ++i) {
      for (int64_t j = 0; j < s.k_len; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < d; ++c)
          acc += q[(h * s.q_len + i) * d + c] * k[(h * s.k_len + j) * d + c];
        scores[(h * s.q_len + i) * s.k_len + j] = acc * scale;
      }
    }
  }
  const ref::SoftmaxForward sm = ref::attn_softmax_fwd(
      scores, pad, s.batch, s.heads, s.q_len, s.k_len, mask, drop ? Drop::kOn : Drop::kOff, args);
  const Vec& p = drop ? sm.dropped : sm.probs;
  Expected e{Vec(bh * s.q_len * d, 0.0), Vec(bh * s.q_len, 0.0), sm.probs, sm.dropped,
             Vec(bh * s.q_len * d, 0.0)};
  for (int64_t h = 0; h < bh; ++h) {
    for (int64_t i = 0; i < s.q_len; ++i) {
      const int64_t row = h * s.q_len + i;
      double m = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < s.k_len; ++j) {
        if (!ref::attn_masked(mask, pad, h / s.heads, i, j, s.q_len, s.k_len))
          m = std::max(m, scores[row * s.k_len + j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < s.k_len; ++j) {
        if (!ref::attn_masked(mask, pad, h / s.heads, i, j, s.q_len, s.k_len))
          sum += std::exp(scores[row * s.k_len + j] - m);
        const double pj = p[row * s.k_len + j];
        for (int64_t c = 0; c < d; ++c) {
          const double vj = v[(h * s.k_len + j) * d + c];
          e.out[row * d + c] += pj * vj;
          e.out_slack[row * d + c] += 2 * u * std::fabs(pj * vj);
        }
      }
      e.lse[row] = sum > 0 ? m + std::log(sum) : std::numeric_limits<double>::infinity();
    }
  }
  return e;
}

struct Grads {
  Vec q, k, v;
  Vec q_slack, k_slack, v_slack;  // per element: what the kernels' rounding points explain
};

// dP̃ = grad_out·vᵀ, dS = the reference softmax backward (dropout mask included), grad_q =
// scale·dS·k, grad_k = scale·dSᵀ·q, grad_v = P̃ᵀ·grad_out. The kernels round P̃ to T before P̃ᵀ·dO
// and dS to T before dS·k and dSᵀ·q, and take D = rowsum(dO∘O) from the stored (rounded) O: dS_ij
// may be off by δ_ij = u·|dS_ij| + P_ij·(u·|dP_ij| + ΔD_i), ΔD_i = u·Σ_c |dO_ic·O_ic|. The slacks
// allow twice the sums of those term errors (where a gradient cancels to far below its terms, as
// with one key, where dS is exactly 0).
Grads reference_grads(const Vec& q, const Vec& k, const Vec& v, const Vec& grad_out,
                      const Expected& fwd, const Shape& s, int64_t d, double scale, bool drop,
                      const kern::DropoutArgs& args, double p_drop, double u) {
  const int64_t bh = s.batch * s.heads, T = s.q_len, S = s.k_len;
  Vec dpd(bh * T * S, 0.0);
  for (int64_t h = 0; h < bh; ++h) {
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t j = 0; j < S; ++j) {
        double acc = 0;
        for (int64_t c = 0; c < d; ++c)
          acc += grad_out[(h * T + i) * d + c] * v[(h * S + j) * d + c];
        dpd[(h * T + i) * S + j] = acc;
      }
    }
  }
  const Vec ds =
      ref::attn_softmax_bwd(dpd, fwd.probs, bh * T, S, drop ? Drop::kOn : Drop::kOff, args);
  const Vec& pd = drop ? fwd.dropped : fwd.probs;
  const double inv_keep = drop ? 1.0 / (1.0 - p_drop) : 1.0;
  const size_t nq = bh * T * d, nk = bh * S * d;
  Grads g{Vec(nq, 0.0), Vec(nk, 0.0), Vec(nk, 0.0), Vec(nq, 0.0), Vec(nk, 0.0), Vec(nk, 0.0)};
  for (int64_t h = 0; h < bh; ++h) {
    for (int64_t i = 0; i < T; ++i) {
      double dd = 0;  // ΔD_i
      for (int64_t c = 0; c < d; ++c)
        dd += u * std::fabs(grad_out[(h * T + i) * d + c] * fwd.out[(h * T + i) * d + c]);
      for (int64_t j = 0; j < S; ++j) {
        const int64_t ij = (h * T + i) * S + j;
        const double dsij = ds[ij] * scale, pij = pd[ij];
        const double delta = scale * (u * std::fabs(ds[ij]) +
                                      fwd.probs[ij] * (u * std::fabs(dpd[ij]) * inv_keep + dd));
        for (int64_t c = 0; c < d; ++c) {
          const int64_t qi = (h * T + i) * d + c, kj = (h * S + j) * d + c;
          g.q[qi] += dsij * k[kj];
          g.k[kj] += dsij * q[qi];
          g.v[kj] += pij * grad_out[qi];
          g.q_slack[qi] += 2 * delta * std::fabs(k[kj]);
          g.k_slack[kj] += 2 * delta * std::fabs(q[qi]);
          g.v_slack[kj] += 2 * u * std::fabs(pij * grad_out[qi]);
        }
      }
    }
  }
  return g;
}

// Where the forward's other block geometry (kFlashFwdWarpsAlt warps) is checked against the
// plans' (bit for bit): the head dims of the usual models, no mask and both masks.
bool alt_warps_checked(int64_t d, Mask m) {
  return (d == 64 || d == 128) && (m == Mask::kNone || m == Mask::kPaddingCausal);
}

std::vector<KernelInstance> every_instance() {
  std::vector<KernelInstance> all;
  for (Precision p : kHalves) {
    for (int64_t d : kHeadDims) {
      all.push_back(codegen::flash_dot(p, d));
      for (Mask m : kAllMasks) {
        for (bool drop : {false, true}) {
          const codegen::Flash f{d, kern::has_padding(m), kern::has_causal(m), drop};
          all.push_back(codegen::flash_fwd(p, f));
          if (alt_warps_checked(d, m)) {
            all.push_back(codegen::flash_fwd(p, f, kern::kFlashFwdWarpsAlt));
          }
          all.push_back(codegen::flash_dkdv(p, f));
          all.push_back(codegen::flash_dq(p, f));
        }
      }
    }
  }
  return all;
}

// Without a GPU: the instances at the ends of what the GPU tests launch (the smallest and largest
// head dim, where registers and shared memory run out; no mask and both masks; dropout off and
// on) compile for sm_90 (NVRTC needs no device). All of them take minutes on 2 cores.
TEST(FlashKernelsCompile, TheExtremeInstancesCompileForSm90) {
  for (Precision p : kHalves) {
    std::vector<KernelInstance> mine;
    for (const KernelInstance& k : every_instance()) {
      const int64_t d = k.value("kD");
      const bool extreme_mask =
          k.sig->n_tparams < 3 || k.value("kMask") == 0 || k.value("kMask") == 3;
      if (k.precision == p && (d == 32 || d == 128) && extreme_mask) mine.push_back(k);
    }
    for (const ProgramSource& prog : codegen::generate_programs(mine, p)) {
      const CompiledProgram c = compile_program(prog, "sm_90");
      EXPECT_EQ(c.lowered_names.size(), prog.labels.size());
    }
  }
}

class FlashKernels : public GpuKernelTest {
 public:
  static void SetUpTestSuite() { prepare_kernels(every_instance()); }

 protected:
  std::vector<uint8_t> key_padding(const Shape& s) {
    return ref::test_key_padding(rng(), s.batch, s.k_len);
  }
};

class GpuFlashFwd : public FlashKernels,
                    public testing::WithParamInterface<std::tuple<Precision, int64_t, Mask, bool>> {
};

TEST_P(GpuFlashFwd, ForwardAndBackwardMatchTheReferenceAndTheUnfusedDropout) {
  const auto [p, d, mask, drop] = GetParam();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << "batch " << s.batch << ", heads " << s.heads << ", q_len "
                                    << s.q_len << ", k_len " << s.k_len);
    const int64_t bh = s.batch * s.heads;
    const Vec q = random(p, bh * s.q_len * d, -1, 1), k = random(p, bh * s.k_len * d, -1, 1),
              v = random(p, bh * s.k_len * d, -1, 1);
    std::vector<uint8_t> pad = key_padding(s);
    // Without kPadding the kernel must ignore key_padding: give it one that pads everything.
    if (!kern::has_padding(mask)) pad.assign(pad.size(), 1);
    const std::vector<uint8_t> ref_pad =
        kern::has_padding(mask) ? pad : std::vector<uint8_t>(pad.size(), 0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const double p_drop = drop ? 0.2 : 0.0, u = unit_roundoff(p);
    const kern::DropoutArgs args = kern::make_dropout_args(rng().next(), rng().next() >> 8, p_drop);
    const Expected e = reference(q, k, v, ref_pad, s, d, scale, mask, drop, args, u);
    DeviceArray dq = upload(p, q), dk = upload(p, k), dv = upload(p, v), dpad = upload_pod(pad);
    DeviceArray out = poisoned(p, bh * s.q_len * d), lse = poisoned(Precision::kFp32, bh * s.q_len);
    int64_t batch = s.batch, heads = s.heads, q_len = s.q_len, k_len = s.k_len;
    float fscale = static_cast<float>(scale);
    CUdeviceptr qp = dq.ptr(), kp = dk.ptr(), vp = dv.ptr(), pp = dpad.ptr(), op = out.ptr(),
                lp = lse.ptr();
    launch(instance(p, d, mask, drop), kern::flash_fwd_grid(bh, q_len), kern::flash_fwd_block(),
           {&qp, &kp, &vp, &pp, &op, &lp, &batch, &heads, &q_len, &k_len, &fscale,
            const_cast<kern::DropoutArgs*>(&args)});
    EXPECT_TRUE(all_close("out", download(out), e.out, tolerance_for(p), e.out_slack));
    const Vec got_lse = download(lse);
    Vec finite_got, finite_want;
    for (size_t r = 0; r < got_lse.size(); ++r) {
      if (std::isinf(e.lse[r])) {
        ASSERT_TRUE(std::isinf(got_lse[r]) && got_lse[r] > 0) << "fully masked row " << r;
        continue;
      }
      finite_got.push_back(got_lse[r]);
      finite_want.push_back(e.lse[r]);
    }
    EXPECT_TRUE(all_close("lse", finite_got, finite_want, ref::fp32_tolerance()));
    if (HasFailure()) return;
    if (alt_warps_checked(d, mask)) {  // the other geometry: the same bits, each row its warp's
      constexpr int kAlt = kern::kFlashFwdWarpsAlt;
      DeviceArray out2 = poisoned(p, bh * s.q_len * d),
                  lse2 = poisoned(Precision::kFp32, bh * s.q_len);
      CUdeviceptr op2 = out2.ptr(), lp2 = lse2.ptr();
      launch(
          codegen::flash_fwd(p, {d, kern::has_padding(mask), kern::has_causal(mask), drop}, kAlt),
          kern::flash_fwd_grid(bh, q_len, kAlt), kern::flash_fwd_block(kAlt),
          {&qp, &kp, &vp, &pp, &op2, &lp2, &batch, &heads, &q_len, &k_len, &fscale,
           const_cast<kern::DropoutArgs*>(&args)});
      EXPECT_EQ(download_bytes(out2), download_bytes(out)) << kAlt << " warps per block: out";
      EXPECT_EQ(download_bytes(lse2), download_bytes(lse)) << kAlt << " warps per block: lse";
    }

    // The backward from the kernel's own out and lse, as training runs it.
    const Vec go = random(p, bh * s.q_len * d, -1, 1);
    const Grads want = reference_grads(q, k, v, go, e, s, d, scale, drop, args, p_drop, u);
    DeviceArray dgo = upload(p, go), dot = poisoned(Precision::kFp32, bh * s.q_len);
    int64_t rows = bh * s.q_len;
    CUdeviceptr gop = dgo.ptr(), dotp = dot.ptr();
    // The grids of flash_attention.sig.cuh: where one key block holds every key the grad_k/grad_v
    // kernel does everything (the D and grad_q grids are empty, nothing launched).
    auto run_grid = [&](const KernelInstance& kernel, kern::GridDim grid, int block, int smem,
                        std::vector<void*> a) {
      if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
      launch(kernel, grid, block, smem, std::move(a));
    };
    run_grid(codegen::flash_dot(p, d), kern::flash_dot_grid(rows, k_len), kern::kElementwiseThreads,
             0, {&op, &gop, &dotp, &rows, &k_len});
    const codegen::Flash f{d, kern::has_padding(mask), kern::has_causal(mask), drop};
    std::vector<uint8_t> first[3];
    for (int run = 0; run < 2; ++run) {
      DeviceArray gq = poisoned(p, bh * s.q_len * d), gk = poisoned(p, bh * s.k_len * d),
                  gv = poisoned(p, bh * s.k_len * d);
      CUdeviceptr gqp = gq.ptr(), gkp = gk.ptr(), gvp = gv.ptr();
      run_grid(codegen::flash_dkdv(p, f), kern::flash_bwd_grid(bh, k_len),
               kern::flash_bwd_threads(k_len), kern::flash_bwd_smem(d, k_len),
               {&qp, &kp, &vp, &pp, &gop, &lp, &dotp, &op, &gqp, &gkp, &gvp, &batch, &heads, &q_len,
                &k_len, &fscale, const_cast<kern::DropoutArgs*>(&args)});
      run_grid(codegen::flash_dq(p, f), kern::flash_dq_grid(bh, q_len, k_len), kern::kFlashThreads,
               0,
               {&qp, &kp, &vp, &pp, &gop, &lp, &dotp, &gqp, &batch, &heads, &q_len, &k_len, &fscale,
                const_cast<kern::DropoutArgs*>(&args)});
      if (run == 0) {
        EXPECT_TRUE(all_close("grad_q", download(gq), want.q, tolerance_for(p), want.q_slack));
        EXPECT_TRUE(all_close("grad_k", download(gk), want.k, tolerance_for(p), want.k_slack));
        EXPECT_TRUE(all_close("grad_v", download(gv), want.v, tolerance_for(p), want.v_slack));
        first[0] = download_bytes(gq), first[1] = download_bytes(gk), first[2] = download_bytes(gv);
      } else {
        EXPECT_EQ(download_bytes(gq), first[0]) << "grad_q differs between two runs";
        EXPECT_EQ(download_bytes(gk), first[1]) << "grad_k differs between two runs";
        EXPECT_EQ(download_bytes(gv), first[2]) << "grad_v differs between two runs";
      }
    }
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuFlashFwd,
                         testing::Combine(testing::ValuesIn(kHalves), testing::ValuesIn(kHeadDims),
                                          testing::ValuesIn(kAllMasks), testing::Bool()),
                         [](const auto& info) {
                           return precision_name(std::get<0>(info.param)) + "_d" +
                                  std::to_string(std::get<1>(info.param)) + "_" +
                                  mask_name(std::get<2>(info.param)) +
                                  (std::get<3>(info.param) ? "_drop" : "");
                         });

}  // namespace
}  // namespace lightseq::kernel_test
