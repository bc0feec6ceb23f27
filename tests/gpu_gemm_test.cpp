// gpu_gemm_test.cpp — runtime/gemm (cuBLASLt) against a float64 CPU reference: every epilogue ×
// fp32/fp16/bf16 × the four transpose combinations × awkward and real sizes, batched/strided
// (attention-like) GEMMs, beta accumulation (separate C and in place), both bias-gradient kinds,
// the ReLU/GELU aux round trips (forward writes aux, backward reads it), same bits twice, CUDA
// graph capture, and the heuristic cache. Outputs are poisoned (NaN bytes) before every call and
// must not be written outside their logical elements. Skips visibly without a GPU.
//
// A combination cuBLASLt rejects is accepted (and reported) unless it is one the planner emits
// (compiler/planner/gemm_epilogues.cpp): bias epilogues on x·Wᵀ (trans_b), d-activation epilogues
// on dY·W (no transposes), bgrad(A) on dYᵀ·X (trans_a), with 16-byte-aligned rows, batch 1 — and
// plain GEMMs of any layout.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <tuple>

#include "compiler/errors.h"
#include "runtime/gemm.h"
#include "tests/gemm_reference.h"
#include "tests/gpu_test_util.h"

namespace lightseq::test {
namespace {

constexpr Transpose kN = Transpose::kNo, kT = Transpose::kYes;

bool planner_layout(const GemmCase& cs) {
  switch (cs.epilogue) {
    case Epilogue::kNone:
      return true;
    case Epilogue::kBias:
    case Epilogue::kReluAuxBias:
    case Epilogue::kGeluAuxBias:
      return cs.ta == kN && cs.tb == kT;
    case Epilogue::kDReluBGrad:
    case Epilogue::kDGeluBGrad:
      return cs.ta == kN && cs.tb == kN;
    case Epilogue::kBGradA:
      return cs.ta == kT && cs.tb == kN;
  }
  return false;
}

bool required(const HostProblem& p) {
  if (p.cs.c_pad > 0) return false;  // C laid out unlike D: not something the planner emits
  if (p.cs.epilogue == Epilogue::kNone) return true;
  return planner_layout(p.cs) && p.aligned_lds() && p.cs.batch == 1;
}

struct DeviceProblem {
  DeviceBuffer a, b, c, d, bias, aux, bias_grad;
};

class GpuGemmTest : public GpuTest {
 public:
  DeviceProblem upload_problem(const HostProblem& p) {
    DeviceProblem dp;
    dp.a = upload(p.a);
    dp.b = upload(p.b);
    dp.d = upload(p.d);
    if (p.cs.c_mode == CMode::kSeparate) dp.c = upload(p.c);
    if (bias_epilogue(p.cs.epilogue)) dp.bias = upload(p.bias);
    if (bgrad_epilogue(p.cs.epilogue)) dp.bias_grad = upload(p.bias_grad);
    if (relu_epilogue(p.cs.epilogue)) dp.aux = upload_bytes(p.mask.data(), p.mask.size());
    if (gelu_epilogue(p.cs.epilogue)) dp.aux = upload(p.gelu_aux);
    return dp;
  }

  static GemmArgs make_args(const HostProblem& p, const DeviceProblem& dp) {
    return problem_args(p,
                        {dp.a.get(), dp.b.get(), dp.c.get(), dp.d.get(), dp.bias.get(),
                         dp.aux.get(), dp.bias_grad.get()},
                        "test");
  }

  // Downloads every output of a finished call and checks it (check_outputs in gemm_reference.h).
  GeluErrors check_device_outputs(const HostProblem& p, const Reference& ref,
                                  const DeviceProblem& dp) {
    Outputs out;
    out.d = HostArray(p.cs.dtype, p.d.size());
    download(dp.d, out.d);
    if (p.cs.epilogue == Epilogue::kReluAuxBias) {
      out.mask.resize(p.mask.size());
      download_bytes(dp.aux, out.mask.data(), out.mask.size());
    }
    if (p.cs.epilogue == Epilogue::kGeluAuxBias) {
      out.gelu_aux = HostArray(p.cs.dtype, p.gelu_aux.size());
      download(dp.aux, out.gelu_aux);
    }
    if (bgrad_epilogue(p.cs.epilogue)) {
      out.bias_grad = HostArray(p.cs.dtype, p.bias_grad.size());
      download(dp.bias_grad, out.bias_grad);
    }
    return check_outputs(p, ref, out);
  }

  // One case end to end. Returns "" when it ran, else cuBLASLt's reason for rejecting it.
  std::string run_case(const GemmCase& cs, GeluErrors* gelu_errors = nullptr) {
    SCOPED_TRACE(cs.label());
    SCOPED_TRACE(seed_note());
    const HostProblem p = make_problem(cs, rng_);
    const Reference ref = reference(p);
    DeviceProblem dp = upload_problem(p);
    const GemmArgs g = make_args(p, dp);
    const GemmSupport support = runner_.supported(g, stream_);
    if (!support.supported) {
      EXPECT_FALSE(required(p)) << "the planner emits this layout, cuBLASLt must run it: "
                                << support.reason;
      try {
        runner_.run(g, stream_, *allocator_);
        ADD_FAILURE() << "run() accepted what supported() rejected";
      } catch (const CudaError& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find("no algorithm"), std::string::npos) << message;
        EXPECT_NE(message.find(std::string(to_string(cs.epilogue))), std::string::npos) << message;
      }
      return support.reason;
    }
    runner_.run(g, stream_, *allocator_);
    sync();
    const GeluErrors e = check_device_outputs(p, ref, dp);
    if (gelu_errors != nullptr) {
      gelu_errors->tanh_form = std::max(gelu_errors->tanh_form, e.tanh_form);
      gelu_errors->erf_form = std::max(gelu_errors->erf_form, e.erf_form);
    }
    return "";
  }

  GemmRunner runner_;
};

// --- every epilogue × dtype × transposes × sizes -----------------------------------------------

std::string epilogue_id(Epilogue e) {
  switch (e) {
    case Epilogue::kNone:
      return "none";
    case Epilogue::kBias:
      return "bias";
    case Epilogue::kReluAuxBias:
      return "relu_aux_bias";
    case Epilogue::kGeluAuxBias:
      return "gelu_aux_bias";
    case Epilogue::kDReluBGrad:
      return "drelu_bgrad";
    case Epilogue::kDGeluBGrad:
      return "dgelu_bgrad";
    case Epilogue::kBGradA:
      return "bgrad_a";
  }
  return "unknown";
}

class GpuGemmEpilogue : public GpuGemmTest,
                        public ::testing::WithParamInterface<std::tuple<Precision, Epilogue>> {};

TEST_P(GpuGemmEpilogue, MatchesFloat64Reference) {
  const auto [dtype, epilogue] = GetParam();
  struct Shape {
    int64_t m, n, k, pad;
  };
  // n, k multiples of 8 first, then not; m = 1, 7, 77, 513; padded leading dimensions.
  const Shape shapes[] = {{1, 64, 40, 0}, {7, 64, 40, 8},  {77, 128, 72, 0}, {513, 72, 96, 0},
                          {7, 33, 17, 0}, {77, 9, 131, 3}, {64, 40, 77, 0}};
  const float alpha = epilogue == Epilogue::kNone || epilogue == Epilogue::kBias ? 0.75f : 1.0f;
  int ran = 0;
  std::vector<std::string> unsupported;
  GeluErrors gelu;
  for (const Transpose ta : {kN, kT}) {
    for (const Transpose tb : {kN, kT}) {
      for (const Shape& s : shapes) {
        GemmCase cs{dtype, epilogue, ta, tb, s.m, s.n, s.k};
        cs.pad = s.pad;
        cs.alpha = alpha;
        const std::string why = run_case(cs, &gelu);
        if (why.empty()) {
          ++ran;
        } else {
          unsupported.push_back(cs.label());
        }
      }
    }
  }
  // A real size in the planner's layout (BERT-base FFN: 256 tokens, 768 → 1024).
  GemmCase real{dtype, epilogue, kN, kN, 256, 1024, 768};
  if (epilogue == Epilogue::kBias || epilogue == Epilogue::kReluAuxBias ||
      epilogue == Epilogue::kGeluAuxBias || epilogue == Epilogue::kNone) {
    real.tb = kT;
  } else if (epilogue == Epilogue::kBGradA) {
    real.ta = kT;
  }
  if (run_case(real, &gelu).empty()) ++ran;
  std::cout << "[ " << to_string(dtype) << " " << to_string(epilogue) << " ] " << ran
            << " cases ran, " << unsupported.size() << " unsupported by cuBLASLt (accepted)";
  for (const std::string& u : unsupported) std::cout << "\n    unsupported: " << u;
  if (gelu_epilogue(epilogue)) {
    std::cout << "\n    GELU worst relative error: " << gelu.tanh_form << " against the tanh form, "
              << gelu.erf_form << " against the erf form";
  }
  std::cout << std::endl;
  EXPECT_GT(ran, 0);
}

INSTANTIATE_TEST_SUITE_P(
    Gpu, GpuGemmEpilogue,
    ::testing::Combine(::testing::Values(Precision::kFp32, Precision::kFp16, Precision::kBf16),
                       ::testing::Values(Epilogue::kNone, Epilogue::kBias, Epilogue::kReluAuxBias,
                                         Epilogue::kGeluAuxBias, Epilogue::kDReluBGrad,
                                         Epilogue::kDGeluBGrad, Epilogue::kBGradA)),
    [](const auto& info) {
      return std::string(to_string(std::get<0>(info.param))) + "_" +
             epilogue_id(std::get<1>(info.param));
    });

// --- per dtype: batched, beta, round trips, determinism, graphs --------------------------------

class GpuGemmDtype : public GpuGemmTest, public ::testing::WithParamInterface<Precision> {};

TEST_P(GpuGemmDtype, AttentionLikeBatched) {
  const Precision dt = GetParam();
  for (const int64_t t : {77, 64}) {
    const int64_t bh = 6, hd = 64;  // B·heads, head dim
    // scores = Q·Kᵀ·(1/√d); context = P·V; dV = Pᵀ·dC; dP = dC·Vᵀ
    GemmCase scores{dt, Epilogue::kNone, kN, kT, t, t, hd, bh};
    scores.alpha = 0.125f;
    GemmCase context{dt, Epilogue::kNone, kN, kN, t, hd, t, bh};
    GemmCase dv{dt, Epilogue::kNone, kT, kN, t, hd, t, bh};
    GemmCase dp{dt, Epilogue::kNone, kN, kT, t, t, hd, bh};
    for (GemmCase cs : {scores, context, dv, dp}) {
      EXPECT_EQ(run_case(cs), "");
      cs.batch_pad = 8;  // batches not packed back to back
      cs.pad = 8;
      EXPECT_EQ(run_case(cs), "");
    }
  }
  GemmCase shared{dt, Epilogue::kNone, kN, kT, 33, 64, 48, 3};  // one weight for every batch
  shared.shared_b = true;
  EXPECT_EQ(run_case(shared), "");
  GemmCase biased{dt, Epilogue::kBias, kN, kT, 33, 64, 48, 3};  // cuBLASLt may refuse: accepted
  biased.shared_b = true;
  run_case(biased);
}

TEST_P(GpuGemmDtype, AccumulatesWithBeta) {
  const Precision dt = GetParam();
  GemmCase wgrad{dt, Epilogue::kNone, kT, kN, 64, 96, 77};  // dW += dYᵀ·X
  wgrad.beta = 1.0f;
  wgrad.c_mode = CMode::kInPlace;
  EXPECT_EQ(run_case(wgrad), "");
  GemmCase residual{dt, Epilogue::kNone, kN, kN, 77, 64, 128};  // dX = dY·W + residual grad
  residual.beta = 1.0f;
  residual.c_mode = CMode::kSeparate;
  EXPECT_EQ(run_case(residual), "");
  GemmCase scaled{dt, Epilogue::kNone, kN, kT, 7, 40, 24};
  scaled.alpha = 0.5f;
  scaled.beta = 0.25f;
  scaled.c_mode = CMode::kSeparate;
  EXPECT_EQ(run_case(scaled), "");
  scaled.c_pad = 8;  // ldc ≠ ldd: cuBLASLt may refuse (accepted and reported)
  run_case(scaled);
  GemmCase bgrad{dt, Epilogue::kBGradA, kT, kN, 64, 96, 77};  // dW += dYᵀ·X, db = Σ dY
  bgrad.beta = 1.0f;
  bgrad.c_mode = CMode::kInPlace;
  EXPECT_EQ(run_case(bgrad), "");
}

// Forward bias+activation with aux, then the backward d-activation+bgrad GEMM reading that aux
// buffer as the device left it; the reference derivative uses the float64 forward
// pre-activation (rounded to the dtype, as aux holds it; for ReLU the mask checked above).
void round_trip(GpuGemmTest& t, GemmRunner& runner, Allocator& alloc, CUstream stream,
                std::mt19937_64& rng, Precision dt, Epilogue fwd_epilogue) {
  const bool relu = fwd_epilogue == Epilogue::kReluAuxBias;
  const int64_t tokens = 77, hidden = 64, ffn = 256;
  GemmCase fwd{dt, fwd_epilogue, kN, kT, tokens, ffn, hidden};  // h = act(x·W1ᵀ + b1)
  HostProblem fp = make_problem(fwd, rng);
  const Reference fref = reference(fp);
  DeviceProblem fdp = t.upload_problem(fp);
  runner.run(GpuGemmTest::make_args(fp, fdp), stream, alloc);
  t.sync();
  t.check_device_outputs(fp, fref, fdp);

  GemmCase bwd{dt,    relu ? Epilogue::kDReluBGrad : Epilogue::kDGeluBGrad, kN, kN, tokens, ffn,
               hidden};  // dh = (dY·W2) ⊙ act'(pre), db1 = Σ dh
  HostProblem bp = make_problem(bwd, rng);
  ASSERT_EQ(bp.aux_ld, fp.aux_ld);
  if (relu) {
    t.download_bytes(fdp.aux, bp.mask.data(), bp.mask.size());
  } else {
    for (int64_t i = 0; i < tokens; ++i) {
      for (int64_t j = 0; j < ffn; ++j)
        bp.gelu_aux.set(bp.aux_index(0, i, j), fref.pre[i * ffn + j]);
    }
  }
  const Reference bref = reference(bp);
  DeviceProblem bdp = t.upload_problem(bp);
  bdp.aux = std::move(fdp.aux);  // the forward's aux, untouched
  runner.run(GpuGemmTest::make_args(bp, bdp), stream, alloc);
  t.sync();
  t.check_device_outputs(bp, bref, bdp);
}

TEST_P(GpuGemmDtype, GeluAuxRoundTrip) {
  SCOPED_TRACE(seed_note());
  round_trip(*this, runner_, *allocator_, stream_, rng_, GetParam(), Epilogue::kGeluAuxBias);
}

TEST_P(GpuGemmDtype, ReluAuxRoundTrip) {
  SCOPED_TRACE(seed_note());
  round_trip(*this, runner_, *allocator_, stream_, rng_, GetParam(), Epilogue::kReluAuxBias);
}

TEST_P(GpuGemmDtype, SameBitsTwice) {
  SCOPED_TRACE(seed_note());
  for (const GemmCase& cs : {GemmCase{GetParam(), Epilogue::kDGeluBGrad, kN, kN, 513, 256, 96},
                             GemmCase{GetParam(), Epilogue::kBGradA, kT, kN, 96, 64, 513}}) {
    SCOPED_TRACE(cs.label());
    const HostProblem p = make_problem(cs, rng_);
    DeviceProblem dp = upload_problem(p);
    const GemmArgs g = make_args(p, dp);
    std::vector<HostArray> d(2, HostArray(cs.dtype, p.d.size()));
    std::vector<HostArray> bg(2, HostArray(cs.dtype, p.bias_grad.size()));
    for (int run = 0; run < 2; ++run) {
      runner_.run(g, stream_, *allocator_);
      sync();
      download(dp.d, d[run]);
      download(dp.bias_grad, bg[run]);
    }
    EXPECT_EQ(d[0].bytes(), d[1].bytes()) << "D differs between two identical runs";
    EXPECT_EQ(bg[0].bytes(), bg[1].bytes()) << "bias_grad differs between two identical runs";
  }
}

TEST_P(GpuGemmDtype, CapturesIntoACudaGraph) {
  SCOPED_TRACE(seed_note());
  const GemmCase cs{GetParam(), Epilogue::kGeluAuxBias, kN, kT, 77, 256, 128};
  const HostProblem p = make_problem(cs, rng_);
  DeviceProblem dp = upload_problem(p);
  const GemmArgs g = make_args(p, dp);
  runner_.run(g, stream_, *allocator_);  // outside capture: handle and heuristic
  sync();
  HostArray eager(cs.dtype, p.d.size());
  download(dp.d, eager);

  const DriverApi& api = driver();
  LIGHTSEQ_CU_CHECK(api.cuMemsetD8Async(dp.d.device_ptr(), 0xFF, dp.d.bytes(), stream_));
  LIGHTSEQ_CU_CHECK(api.cuStreamBeginCapture(stream_, CU_STREAM_CAPTURE_MODE_GLOBAL));
  CUgraph graph = nullptr;
  try {
    DeviceBuffer scratch(*allocator_, 4096, stream_);  // an allocation inside the capture
    LIGHTSEQ_CU_CHECK(api.cuMemsetD8Async(scratch.device_ptr(), 0, scratch.bytes(), stream_));
    runner_.run(g, stream_, *allocator_);
  } catch (...) {
    api.cuStreamEndCapture(stream_, &graph);
    if (graph != nullptr) api.cuGraphDestroy(graph);
    throw;
  }
  LIGHTSEQ_CU_CHECK(api.cuStreamEndCapture(stream_, &graph));
  CUgraphExec exec = nullptr;
  LIGHTSEQ_CU_CHECK(api.cuGraphInstantiate(&exec, graph, 0));
  for (int replay = 0; replay < 2; ++replay) {
    LIGHTSEQ_CU_CHECK(api.cuMemsetD8Async(dp.d.device_ptr(), 0xFF, dp.d.bytes(), stream_));
    LIGHTSEQ_CU_CHECK(api.cuGraphLaunch(exec, stream_));
    sync();
    HostArray replayed(cs.dtype, p.d.size());
    download(dp.d, replayed);
    EXPECT_EQ(replayed.bytes(), eager.bytes()) << "graph replay " << replay;
  }
  LIGHTSEQ_CU_CHECK(api.cuGraphExecDestroy(exec));
  LIGHTSEQ_CU_CHECK(api.cuGraphDestroy(graph));
}

INSTANTIATE_TEST_SUITE_P(Gpu, GpuGemmDtype,
                         ::testing::Values(Precision::kFp32, Precision::kFp16, Precision::kBf16),
                         [](const auto& info) { return std::string(to_string(info.param)); });

// --- runner behaviour --------------------------------------------------------------------------

TEST_F(GpuGemmTest, GpuHeuristicIsQueriedOncePerProblem) {
  const GemmCase cs{Precision::kFp16, Epilogue::kBias, kN, kT, 64, 64, 64};
  const HostProblem p = make_problem(cs, rng_);
  DeviceProblem dp = upload_problem(p);
  GemmArgs g = make_args(p, dp);
  const int64_t before = runner_.heuristic_queries();
  runner_.run(g, stream_, *allocator_);
  EXPECT_EQ(runner_.heuristic_queries(), before + 1);
  runner_.run(g, stream_, *allocator_);
  EXPECT_EQ(runner_.heuristic_queries(), before + 1) << "same problem: cached";
  DeviceProblem other = upload_problem(p);  // other pointers, same (256-byte) alignment
  runner_.run(make_args(p, other), stream_, *allocator_);
  EXPECT_EQ(runner_.heuristic_queries(), before + 1) << "same shapes and alignments: cached";
  g.m = 32;
  runner_.run(g, stream_, *allocator_);
  EXPECT_EQ(runner_.heuristic_queries(), before + 2) << "another m: a new problem";
  g.a = static_cast<const char*>(g.a) + 2;  // 2-byte aligned A: another problem for cuBLASLt
  g.m = 31;
  runner_.supported(g, stream_);  // supported or not, the answer is queried once and cached
  runner_.supported(g, stream_);
  EXPECT_EQ(runner_.heuristic_queries(), before + 3);
  sync();
}

TEST_F(GpuGemmTest, GpuTf32IsOptIn) {
  GemmCase cs{Precision::kFp32, Epilogue::kNone, kN, kT, 77, 128, 256};
  const HostProblem p = make_problem(cs, rng_);
  const Reference ref = reference(p);
  DeviceProblem dp = upload_problem(p);
  GemmArgs g = make_args(p, dp);
  g.tf32 = Tf32::kAllow;
  runner_.run(g, stream_, *allocator_);
  sync();
  HostArray d(cs.dtype, p.d.size());
  download(dp.d, d);
  std::vector<double> got(ref.d.size());
  for (int64_t i = 0; i < cs.m; ++i) {
    for (int64_t j = 0; j < cs.n; ++j) got[i * cs.n + j] = d.get(p.d_index(0, i, j));
  }
  EXPECT_TRUE(within(compare(got, ref.d), 5e-3, "TF32 D")) << seed_note();
}

}  // namespace
}  // namespace lightseq::test
