// gpu_kernels_flash_test.cpp — templates/flash_attention.cuh on the GPU against the float64
// reference (q·kᵀ·scale, the unfused path's masked softmax and dropout, · v; its softmax backward
// for the gradients): flash_attn_fwd_kernel and the backward (dot, grad_k/grad_v, grad_q) for
// fp16/bf16 × head dims 32, 64, 96, 128 × every mask × dropout on/off; query and key lengths 1, 7,
// 63, 64, 65, 77, 128, 129, 513 and cross-attention shapes with q_len ≠ k_len (the backward in one
// launch where k_len <= 128, in three past it); the forward with 8 warps per block the same bits as
// with the plans' 4; a padded-out batch element
// (its rows fully masked: out 0, lse +inf, no gradient); the dropped entries the same as the
// unfused softmax's for the same seed and offset; the backward bitwise the same twice. In the token
// layout the plans use: q, k and v column slices of one packed [B·T, 3·H] buffer where q_len =
// k_len (self-attention), q [B·T, H] beside packed k, v [B·S, 2·H] otherwise, each buffer with 8
// guard columns the kernels must neither read (NaN there) nor write (poison kept).
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

// The token layout (flash_attention.cuh): element (bh, i, c) of a head-layout [batch·heads, len, d]
// array sits in row b·len + i (rows `ld` apart) at column col + h·d + c.
struct Tokens {
  int64_t heads, len, d, ld, col;
  int64_t at(int64_t bh, int64_t i, int64_t c) const {
    return ((bh / heads) * len + i) * ld + col + (bh % heads) * d + c;
  }
  void put(Vec& dst, const Vec& heads_layout) const {
    for (size_t e = 0; e < heads_layout.size(); ++e) {
      const int64_t c = e % d, i = (e / d) % len, bh = e / (d * len);
      dst[at(bh, i, c)] = heads_layout[e];
    }
  }
  Vec take(const Vec& src, int64_t bh_count) const {
    Vec out(bh_count * len * d);
    for (size_t e = 0; e < out.size(); ++e) {
      const int64_t c = e % d, i = (e / d) % len, bh = e / (d * len);
      out[e] = src[at(bh, i, c)];
    }
    return out;
  }
};
constexpr int64_t kGuard = 8;  // columns past the slices of each packed buffer

// The packed buffers of one shape: one [B·T, 3·H + guard] for q, k, v when q_len = k_len, else
// q [B·T, H + guard] and k, v [B·S, 2·H + guard]; the gradients in the same layout.
struct Packing {
  bool self;
  Tokens q, k, v;
  int64_t q_elems, kv_elems;  // the buffers' sizes (one buffer when self)
};
Packing packing(const Shape& s, int64_t d) {
  const int64_t H = s.heads * d;
  if (s.q_len == s.k_len) {
    const int64_t ld = 3 * H + kGuard;
    return {true,
            {s.heads, s.q_len, d, ld, 0},
            {s.heads, s.k_len, d, ld, H},
            {s.heads, s.k_len, d, ld, 2 * H},
            s.batch * s.q_len * ld,
            0};
  }
  const int64_t ld_q = H + kGuard, ld_kv = 2 * H + kGuard;
  return {false,
          {s.heads, s.q_len, d, ld_q, 0},
          {s.heads, s.k_len, d, ld_kv, 0},
          {s.heads, s.k_len, d, ld_kv, H},
          s.batch * s.q_len * ld_q,
          s.batch * s.k_len * ld_kv};
}

// Whether every element of a packed buffer outside the slices is NaN (never written).
bool guard_kept(const Vec& packed, const std::vector<const Tokens*>& slices, int64_t bh_count) {
  std::vector<char> in_slice(packed.size(), 0);
  for (const Tokens* t : slices) {
    for (int64_t bh = 0; bh < bh_count; ++bh)
      for (int64_t i = 0; i < t->len; ++i)
        for (int64_t c = 0; c < t->d; ++c) in_slice[t->at(bh, i, c)] = 1;
  }
  for (size_t e = 0; e < packed.size(); ++e) {
    if (!in_slice[e] && !std::isnan(packed[e])) {
      ADD_FAILURE() << "element " << e << " outside the slices was written: " << packed[e];
      return false;
    }
  }
  return true;
}

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
          if (const int other = kern::flash_bwd_other_blocks(d)) {
            all.push_back(codegen::flash_dkdv(p, f, other));
          }
          all.push_back(codegen::flash_dq(p, f));
        }
      }
    }
  }
  return all;
}

// Without a GPU: the instances at the ends of what the GPU tests launch (the smallest and largest
// head dim, where registers and shared memory run out; no mask and both masks; dropout off and
// on) compile for sm_80 and for sm_90a, the Hopper target whose build of head dims 64 and 128 runs
// its products on wgmma (NVRTC needs no device). All of them take minutes on 2 cores.
TEST(FlashKernelsCompile, TheExtremeInstancesCompileForSm80AndSm90a) {
  for (Precision p : kHalves) {
    std::vector<KernelInstance> mine;
    for (const KernelInstance& k : every_instance()) {
      const int64_t d = k.value("kD");
      const bool extreme_mask =
          k.sig->n_tparams < 3 || k.value("kMask") == 0 || k.value("kMask") == 3;
      if (k.precision == p && (d == 32 || d == 128) && extreme_mask) mine.push_back(k);
    }
    for (const ProgramSource& prog : codegen::generate_programs(mine, p)) {
      for (const std::string& target : {std::string("sm_80"), jit_target(90)}) {
        const CompiledProgram c = compile_program(prog, target);
        EXPECT_EQ(c.lowered_names.size(), prog.labels.size()) << target;
      }
    }
  }
}

// Without a GPU: the resources the kernels were designed and measured for, from ptxas's report
// (kernel_resources; `lsc build --resources` prints them for a spec). Past head dim 64 the forward
// runs three 4-warp blocks per SM at the compiler's own choice (168 registers); an explicit
// one-block cap let ptxas take 199 and cost 15-25 % (fifteenth session). The two-block backward at
// head dim 64 is capped at 128 registers by its launch bounds; its stack frame measures what spills
// in its loop: 64-72 bytes as measured, and a change that took it to 136-144 made the kernel 24 %
// slower (31 µs a call at 16384 tokens, the same session). A failure here is a prompt to measure,
// not a proof of a loss.
TEST(FlashKernelsCompile, TheirRegistersAndStackFramesStayWithinTheirMeasuredBudgets) {
  const Precision p = Precision::kBf16;
  constexpr int kRegistersPerSm = 65536;  // sm_80 and sm_90
  // The most registers a thread may hold for `blocks` blocks of `threads` to share an SM.
  auto fits = [](int blocks, int threads) { return kRegistersPerSm / (blocks * threads); };
  constexpr int kWideForwardBlocks = 3;  // past head dim 64, as measured (above)
  const codegen::Flash padded_dropout{128, true, false, true};
  const KernelInstance fwd = codegen::flash_fwd(p, padded_dropout);
  const std::vector<ProgramSource> fwd_programs = codegen::generate_programs({fwd}, p);
  ASSERT_EQ(fwd_programs.size(), 1u);
  // Both builds of the forward: mma.sync (sm_90) and wgmma (sm_90a, jit_target).
  for (const std::string& target : {std::string("sm_90"), jit_target(90)}) {
    for (const KernelResources& r : kernel_resources(fwd_programs[0], target)) {
      EXPECT_LE(r.registers, fits(kWideForwardBlocks, kern::flash_fwd_block()))
          << r.label << " " << target;
      EXPECT_EQ(r.stack_frame, 0) << r.label << " " << target;
    }
  }
  for (const bool causal : {false, true}) {
    const int blocks = kern::flash_bwd_blocks(64);  // the plans' two-block geometry
    const KernelInstance dkdv =
        codegen::flash_dkdv(p, codegen::Flash{64, true, causal, true}, blocks);
    for (const ProgramSource& prog : codegen::generate_programs({dkdv}, p)) {
      for (const std::string& target : {std::string("sm_90"), jit_target(90)}) {
        for (const KernelResources& r : kernel_resources(prog, target)) {
          EXPECT_LE(r.registers, fits(blocks, kern::kFlashBwdThreads)) << r.label << " " << target;
          EXPECT_LE(r.stack_frame, 96) << r.label << " " << target;
        }
      }
    }
  }
  // The wgmma builds keep their products asynchronous: ptxas serializes them (C7512) where the
  // accumulators do not fit the registers, as when the backward read its A operands from registers
  // under the two-block cap (sixteenth session).
  const codegen::Flash causal_dropout{128, true, true, true};
  std::vector<KernelInstance> wide{fwd, codegen::flash_dkdv(p, causal_dropout)};
  wide.push_back(codegen::flash_dkdv(p, codegen::Flash{64, true, true, true}));
  for (const ProgramSource& prog : codegen::generate_programs(wide, p)) {
    for (const KernelResources& r : kernel_resources(prog, jit_target(90))) {
      EXPECT_TRUE(r.notes.empty()) << r.label << ": " << (r.notes.empty() ? "" : r.notes[0]);
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
    const int64_t bh = s.batch * s.heads, H = s.heads * d;
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
    // q, k, v packed into the token layout, NaN in the guard columns.
    const Packing pk = packing(s, d);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    Vec q_buf(pk.q_elems, nan), kv_buf(pk.kv_elems, nan);
    pk.q.put(q_buf, q);
    pk.k.put(pk.self ? q_buf : kv_buf, k);
    pk.v.put(pk.self ? q_buf : kv_buf, v);
    DeviceArray dq_buf = upload(p, q_buf), dpad = upload_pod(pad);
    DeviceArray dkv_buf = pk.self ? DeviceArray{} : upload(p, kv_buf);
    const CUdeviceptr kv_base = pk.self ? dq_buf.ptr() : dkv_buf.ptr();
    const size_t eb = element_bytes(p);
    CUdeviceptr qp = dq_buf.ptr(), kp = kv_base + pk.k.col * eb, vp = kv_base + pk.v.col * eb,
                pp = dpad.ptr();
    const Tokens o_tok{s.heads, s.q_len, d, H, 0};  // out, grad_out: [B·T, H]
    DeviceArray out = poisoned(p, bh * s.q_len * d), lse = poisoned(Precision::kFp32, bh * s.q_len);
    int64_t batch = s.batch, heads = s.heads, q_len = s.q_len, k_len = s.k_len, ld_q = pk.q.ld,
            ld_kv = pk.k.ld;
    float fscale = static_cast<float>(scale);
    CUdeviceptr op = out.ptr(), lp = lse.ptr();
    launch(instance(p, d, mask, drop), kern::flash_fwd_grid(bh, q_len), kern::flash_fwd_block(),
           {&qp, &kp, &vp, &pp, &op, &lp, &batch, &heads, &q_len, &k_len, &ld_q, &ld_kv, &fscale,
            const_cast<kern::DropoutArgs*>(&args)});
    EXPECT_TRUE(
        all_close("out", o_tok.take(download(out), bh), e.out, tolerance_for(p), e.out_slack));
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
          {&qp, &kp, &vp, &pp, &op2, &lp2, &batch, &heads, &q_len, &k_len, &ld_q, &ld_kv, &fscale,
           const_cast<kern::DropoutArgs*>(&args)});
      EXPECT_EQ(download_bytes(out2), download_bytes(out)) << kAlt << " warps per block: out";
      EXPECT_EQ(download_bytes(lse2), download_bytes(lse)) << kAlt << " warps per block: lse";
    }

    // The backward from the kernel's own out and lse, as training runs it.
    const Vec go = random(p, bh * s.q_len * d, -1, 1);
    const Grads want = reference_grads(q, k, v, go, e, s, d, scale, drop, args, p_drop, u);
    Vec go_tok(bh * s.q_len * d);
    o_tok.put(go_tok, go);
    DeviceArray dgo = upload(p, go_tok), dot = poisoned(Precision::kFp32, bh * s.q_len);
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
             0, {&op, &gop, &dotp, &rows, &heads, &q_len, &k_len});
    const codegen::Flash f{d, kern::has_padding(mask), kern::has_causal(mask), drop};
    // The plans' geometry twice (deterministic), then the other blocks-per-SM geometry where the
    // head dim has one: the same bits (flash_bwd_blocks; every product sums in the same order).
    const int plans = kern::flash_bwd_blocks(d), other = kern::flash_bwd_other_blocks(d);
    std::vector<int> geometries{plans, plans};
    if (other != 0) geometries.push_back(other);
    std::vector<uint8_t> first[2];
    for (size_t run = 0; run < geometries.size(); ++run) {
      const int blocks = geometries[run];
      SCOPED_TRACE(testing::Message()
                   << "grad_k/grad_v kernel built for " << blocks << " blocks per SM");
      // The gradients in the inputs' layout, every element poisoned (the guard columns must stay).
      DeviceArray gq_buf = poisoned(p, pk.q_elems);
      DeviceArray gkv_buf = pk.self ? DeviceArray{} : poisoned(p, pk.kv_elems);
      const CUdeviceptr gkv_base = pk.self ? gq_buf.ptr() : gkv_buf.ptr();
      CUdeviceptr gqp = gq_buf.ptr(), gkp = gkv_base + pk.k.col * eb,
                  gvp = gkv_base + pk.v.col * eb;
      run_grid(codegen::flash_dkdv(p, f, blocks), kern::flash_bwd_grid(bh, k_len),
               kern::flash_bwd_threads(k_len), kern::flash_bwd_smem(d, k_len, blocks),
               {&qp, &kp, &vp, &pp, &gop, &lp, &dotp, &op, &gqp, &gkp, &gvp, &batch, &heads, &q_len,
                &k_len, &ld_q, &ld_kv, &fscale, const_cast<kern::DropoutArgs*>(&args)});
      run_grid(codegen::flash_dq(p, f), kern::flash_dq_grid(bh, q_len, k_len), kern::kFlashThreads,
               0,
               {&qp, &kp, &vp, &pp, &gop, &lp, &dotp, &gqp, &batch, &heads, &q_len, &k_len, &ld_q,
                &ld_kv, &fscale, const_cast<kern::DropoutArgs*>(&args)});
      const Vec got_q = download(gq_buf), got_kv = pk.self ? got_q : download(gkv_buf);
      if (run == 0) {
        EXPECT_TRUE(
            all_close("grad_q", pk.q.take(got_q, bh), want.q, tolerance_for(p), want.q_slack));
        EXPECT_TRUE(
            all_close("grad_k", pk.k.take(got_kv, bh), want.k, tolerance_for(p), want.k_slack));
        EXPECT_TRUE(
            all_close("grad_v", pk.v.take(got_kv, bh), want.v, tolerance_for(p), want.v_slack));
        if (pk.self) {
          EXPECT_TRUE(guard_kept(got_q, {&pk.q, &pk.k, &pk.v}, bh)) << "packed q, k, v gradient";
        } else {
          EXPECT_TRUE(guard_kept(got_q, {&pk.q}, bh)) << "grad_q";
          EXPECT_TRUE(guard_kept(got_kv, {&pk.k, &pk.v}, bh)) << "packed k, v gradient";
        }
        first[0] = download_bytes(gq_buf);
        if (!pk.self) first[1] = download_bytes(gkv_buf);
      } else {
        EXPECT_EQ(download_bytes(gq_buf), first[0]) << "the q-side gradient differs between runs";
        if (!pk.self) {
          EXPECT_EQ(download_bytes(gkv_buf), first[1]) << "grad_k, grad_v differ between runs";
        }
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
