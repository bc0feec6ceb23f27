// gemm_reference.h — host side of the GEMM tests: a test case, its host buffers (row-major, with
// leading dimensions and batch strides as GemmArgs describes them) and the float64 reference of
// every epilogue (runtime/gemm.h). GELU is computed both ways (tanh form, which cuBLASLt uses,
// and erf form) so a mismatch says which one the library computed.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "compiler/graph/graph.h"
#include "compiler/planner/plan.h"
#include "runtime/gemm.h"
#include "tests/gpu_test_util.h"
#include "tests/reference/kernels.h"

namespace lightseq::test {

enum class CMode { kNone, kSeparate, kInPlace };  // beta · C from its own buffer, or C = D

struct GemmCase {
  Precision dtype = Precision::kFp32;
  Epilogue epilogue = Epilogue::kNone;
  Transpose ta = Transpose::kNo, tb = Transpose::kNo;
  int64_t m = 1, n = 1, k = 1, batch = 1;
  int64_t pad = 0;        // extra elements at the end of every row (ld = row length + pad)
  int64_t batch_pad = 0;  // extra elements between batches
  bool shared_b = false;  // stride_b = 0: B is one matrix shared by every batch (a weight)
  int64_t c_pad = 0;      // CMode::kSeparate: ldc = ldd + c_pad
  float alpha = 1.0f, beta = 0.0f;
  CMode c_mode = CMode::kNone;

  std::string label() const {
    std::string s = std::string(to_string(dtype)) + " " + std::string(to_string(epilogue)) +
                    " trans_a=" + (ta == Transpose::kYes ? "yes" : "no") +
                    " trans_b=" + (tb == Transpose::kYes ? "yes" : "no") +
                    " m=" + std::to_string(m) + " n=" + std::to_string(n) +
                    " k=" + std::to_string(k) + " batch=" + std::to_string(batch) +
                    " pad=" + std::to_string(pad) + " alpha=" + std::to_string(alpha) +
                    " beta=" + std::to_string(beta);
    if (shared_b) s += " shared_b";
    if (c_mode == CMode::kInPlace) s += " c=d";
    return s;
  }
};

inline bool relu_epilogue(Epilogue e) {
  return e == Epilogue::kReluAuxBias || e == Epilogue::kDReluBGrad;
}
inline bool gelu_epilogue(Epilogue e) {
  return e == Epilogue::kGeluAuxBias || e == Epilogue::kDGeluBGrad;
}
inline bool aux_epilogue(Epilogue e) { return relu_epilogue(e) || gelu_epilogue(e); }
inline bool bias_epilogue(Epilogue e) {
  return e == Epilogue::kBias || e == Epilogue::kReluAuxBias || e == Epilogue::kGeluAuxBias;
}
inline bool bgrad_epilogue(Epilogue e) {
  return e == Epilogue::kDReluBGrad || e == Epilogue::kDGeluBGrad || e == Epilogue::kBGradA;
}

// The two GELU forms, from the kernels' float64 reference (tests/reference/kernels.h).
inline double gelu_tanh(double x) { return ref::activate(kern::Act::kGeluTanh, x); }
inline double dgelu_tanh(double x) { return ref::activate_grad(kern::Act::kGeluTanh, x); }
inline double gelu_erf(double x) { return ref::activate(kern::Act::kGelu, x); }
inline double dgelu_erf(double x) { return ref::activate_grad(kern::Act::kGelu, x); }

// Host buffers of one case. Element (b, i, j) of D lives at d[b·sd + i·ldd + j].
struct HostProblem {
  GemmCase cs;
  int64_t lda = 0, ldb = 0, ldc = 0, ldd = 0;
  int64_t sa = 0, sb = 0, sc = 0, sd = 0;
  int64_t aux_ld = 0, aux_stride = 0;
  HostArray a, b, c, d, bias, gelu_aux, bias_grad;
  std::vector<uint8_t> mask;  // ReLU bit mask bytes

  int64_t rows_a() const { return cs.ta == Transpose::kYes ? cs.k : cs.m; }
  int64_t rows_b() const { return cs.tb == Transpose::kYes ? cs.n : cs.k; }
  double opa(int64_t bt, int64_t i, int64_t kk) const {
    return cs.ta == Transpose::kYes ? a.get(bt * sa + kk * lda + i) : a.get(bt * sa + i * lda + kk);
  }
  double opb(int64_t bt, int64_t kk, int64_t j) const {
    return cs.tb == Transpose::kYes ? b.get(bt * sb + j * ldb + kk) : b.get(bt * sb + kk * ldb + j);
  }
  size_t d_index(int64_t bt, int64_t i, int64_t j) const { return bt * sd + i * ldd + j; }
  size_t aux_index(int64_t bt, int64_t i, int64_t j) const {
    return bt * aux_stride + i * aux_ld + j;
  }
  bool mask_bit(int64_t bt, int64_t i, int64_t j) const {
    const size_t bit = aux_index(bt, i, j);
    return (mask[bit / 8] >> (bit % 8)) & 1u;
  }
  void set_mask_bit(int64_t bt, int64_t i, int64_t j, bool on) {
    const size_t bit = aux_index(bt, i, j);
    if (on) {
      mask[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    } else {
      mask[bit / 8] &= static_cast<uint8_t>(~(1u << (bit % 8)));
    }
  }
  bool aligned_lds() const {
    bool ok = lda % 8 == 0 && ldb % 8 == 0 && ldd % 8 == 0;
    if (cs.c_mode == CMode::kSeparate) ok = ok && ldc % 8 == 0;
    return ok;
  }
};

inline size_t span(int64_t batch, int64_t stride, int64_t rows, int64_t ld) {
  return static_cast<size_t>((batch - 1) * stride + rows * ld);
}

// Builds the buffers with fresh random inputs; D (and outputs of the epilogue) poisoned, except
// D with CMode::kInPlace, which holds the random C.
inline HostProblem make_problem(const GemmCase& cs, std::mt19937_64& rng) {
  HostProblem p;
  p.cs = cs;
  const bool ta = cs.ta == Transpose::kYes, tb = cs.tb == Transpose::kYes;
  p.lda = (ta ? cs.m : cs.k) + cs.pad;
  p.ldb = (tb ? cs.k : cs.n) + cs.pad;
  p.ldd = cs.n + cs.pad;
  p.ldc = cs.c_mode == CMode::kSeparate ? p.ldd + cs.c_pad : p.ldd;
  p.sa = p.rows_a() * p.lda + cs.batch_pad;
  p.sb = cs.shared_b ? 0 : p.rows_b() * p.ldb + cs.batch_pad;
  p.sd = cs.m * p.ldd + cs.batch_pad;
  p.sc = cs.c_mode == CMode::kSeparate ? cs.m * p.ldc + cs.batch_pad : p.sd;
  p.a = HostArray(cs.dtype, span(cs.batch, p.sa, p.rows_a(), p.lda));
  p.b = HostArray(cs.dtype, span(cs.batch, p.sb, p.rows_b(), p.ldb));
  p.d = HostArray(cs.dtype, span(cs.batch, p.sd, cs.m, p.ldd));
  p.a.fill_uniform(rng, -1.0, 1.0);
  p.b.fill_uniform(rng, -1.0, 1.0);
  if (cs.c_mode == CMode::kSeparate) {
    p.c = HostArray(cs.dtype, span(cs.batch, p.sc, cs.m, p.ldc));
    p.c.fill_uniform(rng, -1.0, 1.0);
  } else if (cs.c_mode == CMode::kInPlace) {
    p.d.fill_uniform(rng, -1.0, 1.0);
  }
  if (bias_epilogue(cs.epilogue)) {
    p.bias = HostArray(cs.dtype, cs.n);
    p.bias.fill_uniform(rng, -1.0, 1.0);
  }
  if (bgrad_epilogue(cs.epilogue)) {
    p.bias_grad = HostArray(cs.dtype, cs.epilogue == Epilogue::kBGradA ? cs.m : cs.n);
  }
  if (relu_epilogue(cs.epilogue)) {
    p.aux_ld = relu_mask_ld(cs.n) + (cs.pad > 0 ? 128 : 0);
    p.aux_stride = cs.m * p.aux_ld + (cs.batch_pad > 0 ? 128 : 0);
    p.mask.assign(static_cast<size_t>(((cs.batch - 1) * p.aux_stride + cs.m * p.aux_ld) / 8), 0xFF);
    if (cs.epilogue == Epilogue::kDReluBGrad) {
      std::bernoulli_distribution coin(0.5);
      for (auto& byte : p.mask) byte = 0;
      for (int64_t bt = 0; bt < cs.batch; ++bt) {
        for (int64_t i = 0; i < cs.m; ++i) {
          for (int64_t j = 0; j < cs.n; ++j) p.set_mask_bit(bt, i, j, coin(rng));
        }
      }
    }
  }
  if (gelu_epilogue(cs.epilogue)) {
    p.aux_ld = gelu_aux_ld(cs.n) + (cs.pad > 0 ? 8 : 0);
    p.aux_stride = cs.m * p.aux_ld + (cs.batch_pad > 0 ? 8 : 0);
    p.gelu_aux = HostArray(cs.dtype, span(cs.batch, p.aux_stride, cs.m, p.aux_ld));
    if (cs.epilogue == Epilogue::kDGeluBGrad) p.gelu_aux.fill_uniform(rng, -3.0, 3.0);
  }
  return p;
}

// Float64 reference, indexed logically: (b·m + i)·n + j for D and the pre-activation.
struct Reference {
  std::vector<double> d, d_erf;   // d_erf: with the erf form of GELU (GELU epilogues only)
  std::vector<double> pre;        // forward aux epilogues: P + bias
  std::vector<double> pre_bound;  // Σ of |terms| of pre: a bound on its fp32 rounding (× 1e-4)
  std::vector<double> bias_grad, bias_grad_erf;
};

inline Reference reference(const HostProblem& p) {
  const GemmCase& cs = p.cs;
  const size_t total = static_cast<size_t>(cs.batch * cs.m * cs.n);
  Reference r;
  r.d.assign(total, 0.0);
  r.d_erf.assign(total, 0.0);
  r.pre.assign(total, 0.0);
  r.pre_bound.assign(total, 0.0);
  // op(A) rows and op(B) columns decoded once per batch, contiguous in k.
  std::vector<double> op_a(static_cast<size_t>(cs.m * cs.k)),
      op_bt(static_cast<size_t>(cs.n * cs.k));
  for (int64_t bt = 0; bt < cs.batch; ++bt) {
    for (int64_t i = 0; i < cs.m; ++i) {
      for (int64_t kk = 0; kk < cs.k; ++kk) op_a[i * cs.k + kk] = p.opa(bt, i, kk);
    }
    for (int64_t j = 0; j < cs.n; ++j) {
      for (int64_t kk = 0; kk < cs.k; ++kk) op_bt[j * cs.k + kk] = p.opb(bt, kk, j);
    }
    for (int64_t i = 0; i < cs.m; ++i) {
      const double* row = &op_a[i * cs.k];
      for (int64_t j = 0; j < cs.n; ++j) {
        const double* col = &op_bt[j * cs.k];
        double acc = 0.0, bound = 0.0;
        for (int64_t kk = 0; kk < cs.k; ++kk) {
          const double t = row[kk] * col[kk];
          acc += t;
          bound += std::abs(t);
        }
        double v = cs.alpha * acc;
        bound *= std::abs(cs.alpha);
        if (cs.beta != 0.0f) {
          const double c0 = cs.c_mode == CMode::kSeparate ? p.c.get(bt * p.sc + i * p.ldc + j)
                                                          : p.d.get(p.d_index(bt, i, j));
          v += cs.beta * c0;
          bound += std::abs(cs.beta * c0);
        }
        if (bias_epilogue(cs.epilogue)) {
          v += p.bias.get(j);
          bound += std::abs(p.bias.get(j));
        }
        const size_t o = static_cast<size_t>((bt * cs.m + i) * cs.n + j);
        r.pre[o] = v;
        r.pre_bound[o] = bound;
        double out = v, out_erf = v;
        switch (cs.epilogue) {
          case Epilogue::kNone:
          case Epilogue::kBias:
          case Epilogue::kBGradA:
            break;
          case Epilogue::kReluAuxBias:
            out = out_erf = v > 0.0 ? v : 0.0;
            break;
          case Epilogue::kGeluAuxBias:
            out = gelu_tanh(v);
            out_erf = gelu_erf(v);
            break;
          case Epilogue::kDReluBGrad:
            out = out_erf = p.mask_bit(bt, i, j) ? v : 0.0;
            break;
          case Epilogue::kDGeluBGrad: {
            const double x = p.gelu_aux.get(p.aux_index(bt, i, j));
            out = v * dgelu_tanh(x);
            out_erf = v * dgelu_erf(x);
            break;
          }
        }
        r.d[o] = out;
        r.d_erf[o] = out_erf;
      }
    }
  }
  if (cs.epilogue == Epilogue::kDReluBGrad || cs.epilogue == Epilogue::kDGeluBGrad) {
    r.bias_grad.assign(static_cast<size_t>(cs.n), 0.0);
    r.bias_grad_erf.assign(static_cast<size_t>(cs.n), 0.0);
    for (int64_t i = 0; i < cs.m; ++i) {
      for (int64_t j = 0; j < cs.n; ++j) {
        r.bias_grad[j] += r.d[i * cs.n + j];
        r.bias_grad_erf[j] += r.d_erf[i * cs.n + j];
      }
    }
  } else if (cs.epilogue == Epilogue::kBGradA) {
    r.bias_grad.assign(static_cast<size_t>(cs.m), 0.0);
    for (int64_t i = 0; i < cs.m; ++i) {
      for (int64_t kk = 0; kk < cs.k; ++kk) r.bias_grad[i] += p.opa(0, i, kk);
    }
    r.bias_grad_erf = r.bias_grad;
  }
  return r;
}

// GELU outputs in fp32 get 1e-3: cuBLASLt may evaluate tanh with the hardware approximation
// (relative error ~5e-4), which is cuBLASLt's numerics, not a layout error. The GPU tests print
// the measured error against both GELU forms, so this can be tightened once measured.
inline double gelu_tolerance(Precision p) { return std::max(tolerance(p), 1e-3); }

// What a call left in memory (whole buffers, as laid out in the HostProblem).
struct Outputs {
  HostArray d;
  std::vector<uint8_t> mask;  // kReluAuxBias
  HostArray gelu_aux;         // kGeluAuxBias
  HostArray bias_grad;        // bias-gradient epilogues
};

struct GeluErrors {  // relative errors of D against both GELU forms (GELU epilogues only)
  double tanh_form = 0.0, erf_form = 0.0;
};

// Checks every output against the reference with gtest EXPECTs: D (and that nothing outside its
// logical elements was written, unless C = D), the ReLU mask bits (near-zero pre-activations,
// whose sign rounding may flip, are not checked), the GELU aux, the bias gradient.
inline GeluErrors check_outputs(const HostProblem& p, const Reference& ref, const Outputs& out) {
  const GemmCase& cs = p.cs;
  const bool gelu = gelu_epilogue(cs.epilogue);
  const double tol = gelu ? gelu_tolerance(cs.dtype) : tolerance(cs.dtype);
  GeluErrors errors;

  std::vector<double> got(ref.d.size());
  std::vector<uint8_t> logical(out.d.size(), 0);
  for (int64_t bt = 0; bt < cs.batch; ++bt) {
    for (int64_t i = 0; i < cs.m; ++i) {
      for (int64_t j = 0; j < cs.n; ++j) {
        got[(bt * cs.m + i) * cs.n + j] = out.d.get(p.d_index(bt, i, j));
        logical[p.d_index(bt, i, j)] = 1;
      }
    }
  }
  const Diff dd = compare(got, ref.d);
  EXPECT_TRUE(within(dd, tol, "D"))
      << (gelu ? "; against the erf form of GELU: " + describe(compare(got, ref.d_erf)) : "");
  if (gelu) {
    errors.tanh_form = dd.rel;
    errors.erf_form = compare(got, ref.d_erf).rel;
  }
  if (cs.c_mode != CMode::kInPlace) {
    size_t written = 0, first = 0;
    for (size_t e = 0; e < out.d.size(); ++e) {
      if (!logical[e] && !out.d.poisoned(e) && written++ == 0) first = e;
    }
    EXPECT_EQ(written, 0u) << "D was written outside its logical elements (ld/stride padding), "
                           << "first at element " << first;
  }

  if (cs.epilogue == Epilogue::kReluAuxBias) {
    HostProblem q;  // the decoding helpers only need the layout
    q.aux_ld = p.aux_ld;
    q.aux_stride = p.aux_stride;
    q.mask = out.mask;
    int64_t wrong = 0, ambiguous = 0;
    std::string first;
    // cuBLASLt may round the accumulator to the output dtype before adding the bias (seen on H100
    // for bf16), which moves the pre-activation by up to one unit roundoff of its magnitude: signs
    // within that of zero are ambiguous.
    const double unit_roundoff = cs.dtype == Precision::kBf16   ? 0x1p-8
                                 : cs.dtype == Precision::kFp16 ? 0x1p-11
                                                                : 0x1p-24;
    const double ambiguous_rel = 1e-4 + 2 * unit_roundoff;
    for (int64_t bt = 0; bt < cs.batch; ++bt) {
      for (int64_t i = 0; i < cs.m; ++i) {
        for (int64_t j = 0; j < cs.n; ++j) {
          const size_t o = (bt * cs.m + i) * cs.n + j;
          if (std::abs(ref.pre[o]) <= ambiguous_rel * ref.pre_bound[o]) {
            ++ambiguous;
            continue;
          }
          if (q.mask_bit(bt, i, j) != (ref.pre[o] > 0.0) && wrong++ == 0) {
            first = "(" + std::to_string(bt) + ", " + std::to_string(i) + ", " + std::to_string(j) +
                    ") pre-activation " + std::to_string(ref.pre[o]);
          }
        }
      }
    }
    EXPECT_EQ(wrong, 0) << "ReLU mask bits wrong (bit i·aux_ld + j, LSB first; " << ambiguous
                        << " near-zero elements not checked); first at " << first;
  }
  if (cs.epilogue == Epilogue::kGeluAuxBias) {
    std::vector<double> pre(ref.pre.size());
    for (int64_t bt = 0; bt < cs.batch; ++bt) {
      for (int64_t i = 0; i < cs.m; ++i) {
        for (int64_t j = 0; j < cs.n; ++j) {
          pre[(bt * cs.m + i) * cs.n + j] = out.gelu_aux.get(p.aux_index(bt, i, j));
        }
      }
    }
    EXPECT_TRUE(within(compare(pre, ref.pre), tolerance(cs.dtype), "GELU aux (pre-activation)"));
  }
  if (bgrad_epilogue(cs.epilogue)) {
    std::vector<double> got_bg(out.bias_grad.size());
    for (size_t j = 0; j < got_bg.size(); ++j) got_bg[j] = out.bias_grad.get(j);
    EXPECT_TRUE(within(compare(got_bg, ref.bias_grad), tol, "bias_grad"))
        << (gelu ? "; against the erf form: " + describe(compare(got_bg, ref.bias_grad_erf)) : "");
  }
  return errors;
}

// Where one problem's operands live (host memory for the emulation, device memory on a GPU).
struct GemmPointers {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;  // CMode::kSeparate only; kInPlace uses d
  void* d = nullptr;
  const void* bias = nullptr;
  void* aux = nullptr;
  void* bias_grad = nullptr;
};

// The GemmArgs of a problem: shapes, strides and leading dimensions from `p`, operands from
// `ptr`; the epilogue's vectors are passed only when its epilogue uses them.
inline GemmArgs problem_args(const HostProblem& p, const GemmPointers& ptr, std::string_view name) {
  const GemmCase& cs = p.cs;
  GemmArgs g;
  g.name = name;
  g.dtype = cs.dtype;
  g.trans_a = cs.ta;
  g.trans_b = cs.tb;
  g.m = cs.m;
  g.n = cs.n;
  g.k = cs.k;
  g.batch = cs.batch;
  g.alpha = cs.alpha;
  g.beta = cs.beta;
  g.a = ptr.a;
  g.lda = p.lda;
  g.stride_a = p.sa;
  g.b = ptr.b;
  g.ldb = p.ldb;
  g.stride_b = p.sb;
  g.d = ptr.d;
  g.ldd = p.ldd;
  g.stride_d = p.sd;
  if (cs.c_mode == CMode::kSeparate) {
    g.c = ptr.c;
    g.ldc = p.ldc;
    g.stride_c = p.sc;
  } else if (cs.c_mode == CMode::kInPlace) {
    g.c = ptr.d;  // D += ...: C is D, with D's layout
    g.ldc = p.ldd;
    g.stride_c = p.sd;
  }
  g.epilogue = cs.epilogue;
  if (bias_epilogue(cs.epilogue)) g.bias = ptr.bias;
  if (bgrad_epilogue(cs.epilogue)) g.bias_grad = ptr.bias_grad;
  if (relu_epilogue(cs.epilogue) || gelu_epilogue(cs.epilogue)) g.aux = ptr.aux;
  g.aux_ld = p.aux_ld;
  g.aux_stride = p.aux_stride;
  return g;
}

}  // namespace lightseq::test
