// gemm_mapping_test.cpp — the row-major → cuBLASLt mapping of runtime/gemm checked without a GPU.
// lt_call() reads back the descriptors run() builds; this file executes that call on the host
// with cuBLASLt's *documented column-major semantics* (cublasLt.h: op(A) is M×K, D = α·op(A)·op(B)
// + β·C, BIAS adds bias[row of D], DRELU/DGELU_BGRAD reduce D over its columns into a vector of
// D's rows, BGRADB reduces op(B) over K into a vector of D's columns, aux has D's layout with its
// own ld, the ReLU mask one bit per element) on the test's host buffers, and compares what lands
// in memory with the float64 row-major reference. Every memory access is bounds-checked against
// the buffers, so a wrong ld, stride or vector length fails here rather than on the GPU.
#include <cublas_api.h>
#include <gtest/gtest.h>
#include <library_types.h>

#include <map>
#include <random>
#include <stdexcept>

#include "compiler/errors.h"
#include "tests/gemm_reference.h"

namespace lightseq::test {
namespace {

constexpr Transpose kN = Transpose::kNo, kT = Transpose::kYes;

// Host memory regions the emulated call may touch, for bounds checks.
class Memory {
 public:
  void add(const void* base, size_t bytes) {
    if (base != nullptr) regions_[static_cast<const uint8_t*>(base)] = bytes;
  }
  uint8_t* at(const void* base, int64_t byte_offset, size_t bytes) const {
    const auto* p = static_cast<const uint8_t*>(base) + byte_offset;
    auto it = regions_.upper_bound(p);
    if (it == regions_.begin() || byte_offset < 0) throw std::out_of_range("outside every buffer");
    --it;
    if (p + bytes > it->first + it->second) throw std::out_of_range("past the end of a buffer");
    return const_cast<uint8_t*>(p);
  }

 private:
  std::map<const uint8_t*, size_t> regions_;
};

size_t type_bytes(int32_t type) {
  switch (type) {
    case CUDA_R_32F:
      return 4;
    case CUDA_R_16F:
    case CUDA_R_16BF:
      return 2;
  }
  throw std::invalid_argument("unexpected cudaDataType " + std::to_string(type));
}

double load(const Memory& mem, const void* base, int64_t index, int32_t type) {
  const size_t eb = type_bytes(type);
  const uint8_t* p = mem.at(base, index * static_cast<int64_t>(eb), eb);
  if (type == CUDA_R_32F) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return type == CUDA_R_16F ? half_bits_to_float(h) : bf16_bits_to_float(h);
}

void store(const Memory& mem, const void* base, int64_t index, int32_t type, double v) {
  const size_t eb = type_bytes(type);
  uint8_t* p = mem.at(base, index * static_cast<int64_t>(eb), eb);
  const float f = static_cast<float>(v);
  if (type == CUDA_R_32F) {
    std::memcpy(p, &f, 4);
  } else {
    const uint16_t h = type == CUDA_R_16F ? float_to_half_bits(f) : float_to_bf16_bits(f);
    std::memcpy(p, &h, 2);
  }
}

// Element (r, c) of batch bt of a column-major matrix.
double element(const Memory& mem, const LtCall::Matrix& m, int64_t bt, int64_t r, int64_t c) {
  if (r < 0 || c < 0 || r >= static_cast<int64_t>(m.rows) || c >= static_cast<int64_t>(m.cols)) {
    throw std::out_of_range("element outside the matrix");
  }
  return load(mem, m.ptr, bt * m.stride + c * m.ld + r, m.type);
}

// cuBLASLt's documented semantics, column-major, in float64.
void emulate(const LtCall& call, const Memory& mem) {
  const int64_t M = call.trans_a ? call.a.cols : call.a.rows;
  const int64_t K = call.trans_a ? call.a.rows : call.a.cols;
  const int64_t N = call.trans_b ? call.b.rows : call.b.cols;
  ASSERT_EQ(K, static_cast<int64_t>(call.trans_b ? call.b.cols : call.b.rows)) << "K of A vs B";
  ASSERT_EQ(M, static_cast<int64_t>(call.d.rows));
  ASSERT_EQ(N, static_cast<int64_t>(call.d.cols));
  ASSERT_EQ(call.c.rows, call.d.rows);
  ASSERT_EQ(call.c.cols, call.d.cols);
  const int32_t batch = call.d.batch;
  ASSERT_EQ(call.a.batch, batch);
  ASSERT_EQ(call.b.batch, batch);
  ASSERT_EQ(call.c.batch, batch);
  ASSERT_TRUE(call.compute_type == CUBLAS_COMPUTE_32F ||
              call.compute_type == CUBLAS_COMPUTE_32F_FAST_TF32);
  ASSERT_EQ(call.scale_type, CUDA_R_32F);
  const std::string& e = call.epilogue;
  const bool bias = e == "CUBLASLT_EPILOGUE_BIAS" || e == "CUBLASLT_EPILOGUE_RELU_AUX_BIAS" ||
                    e == "CUBLASLT_EPILOGUE_GELU_AUX_BIAS";
  const bool drelu = e == "CUBLASLT_EPILOGUE_DRELU_BGRAD";
  const bool dgelu = e == "CUBLASLT_EPILOGUE_DGELU_BGRAD";
  auto op_a = [&](int64_t bt, int64_t r, int64_t k) {
    return call.trans_a ? element(mem, call.a, bt, k, r) : element(mem, call.a, bt, r, k);
  };
  auto op_b = [&](int64_t bt, int64_t k, int64_t c) {
    return call.trans_b ? element(mem, call.b, bt, c, k) : element(mem, call.b, bt, k, c);
  };
  std::vector<double> row_sums(static_cast<size_t>(M), 0.0);
  for (int64_t bt = 0; bt < batch; ++bt) {
    for (int64_t c = 0; c < N; ++c) {
      for (int64_t r = 0; r < M; ++r) {
        double acc = 0.0;
        for (int64_t k = 0; k < K; ++k) acc += op_a(bt, r, k) * op_b(bt, k, c);
        double v = call.alpha * acc;
        if (call.beta != 0.0f) v += call.beta * element(mem, call.c, bt, r, c);
        if (bias) v += load(mem, call.bias, r, call.bias_type);  // bias: one per row of D
        const int64_t aux_index = bt * call.aux_stride + c * call.aux_ld + r;
        if (e == "CUBLASLT_EPILOGUE_RELU_AUX_BIAS") {
          uint8_t* byte = mem.at(call.aux, aux_index / 8, 1);
          *byte = static_cast<uint8_t>((*byte & ~(1u << (aux_index % 8))) |
                                       ((v > 0.0 ? 1u : 0u) << (aux_index % 8)));
          v = v > 0.0 ? v : 0.0;
        } else if (e == "CUBLASLT_EPILOGUE_GELU_AUX_BIAS") {
          store(mem, call.aux, aux_index, call.d.type, v);
          v = gelu_tanh(v);
        } else if (drelu) {
          const uint8_t byte = *mem.at(call.aux, aux_index / 8, 1);
          v = (byte >> (aux_index % 8)) & 1u ? v : 0.0;
        } else if (dgelu) {
          v *= dgelu_tanh(load(mem, call.aux, aux_index, call.d.type));
        }
        if (drelu || dgelu) row_sums[r] += v;
        store(mem, call.d.ptr, bt * call.d.stride + c * call.d.ld + r, call.d.type, v);
      }
    }
  }
  if (drelu || dgelu) {  // bias gradient: one per row of D, summed over its columns
    for (int64_t r = 0; r < M; ++r) store(mem, call.bias, r, call.bias_type, row_sums[r]);
  } else if (e == "CUBLASLT_EPILOGUE_BGRADB") {  // one per column of D: Σ_k op(B)[k, c]
    for (int64_t c = 0; c < N; ++c) {
      double sum = 0.0;
      for (int64_t k = 0; k < K; ++k) sum += op_b(0, k, c);
      store(mem, call.bias, c, call.bias_type, sum);
    }
  }
}

GemmArgs host_args(HostProblem& p) {
  void* aux =
      relu_epilogue(p.cs.epilogue) ? static_cast<void*>(p.mask.data()) : p.gelu_aux.bytes().data();
  return problem_args(p,
                      {p.a.bytes().data(), p.b.bytes().data(), p.c.bytes().data(),
                       p.d.bytes().data(), p.bias.bytes().data(), aux, p.bias_grad.bytes().data()},
                      "mapping");
}

void check_case(const GemmCase& cs, std::mt19937_64& rng) {
  SCOPED_TRACE(cs.label());
  HostProblem p = make_problem(cs, rng);
  const Reference ref = reference(p);  // before the emulated call overwrites D (C = D case)
  Memory mem;
  for (HostArray* h : {&p.a, &p.b, &p.c, &p.d, &p.bias, &p.gelu_aux, &p.bias_grad}) {
    mem.add(h->bytes().data(), h->bytes().size());
  }
  mem.add(p.mask.data(), p.mask.size());
  const LtCall call = lt_call(host_args(p));
  EXPECT_EQ(call.a.type, call.d.type);
  ASSERT_NO_THROW(emulate(call, mem));

  // The same checks the GPU tests apply to what the device left in memory.
  Outputs out{p.d, p.mask, p.gelu_aux, p.bias_grad};
  check_outputs(p, ref, out);
}

TEST(GemmMapping, EveryEpilogueAndTransposeMatchesTheRowMajorReference) {
  std::mt19937_64 rng(11);
  for (const Precision dt : {Precision::kFp32, Precision::kFp16, Precision::kBf16}) {
    for (const Epilogue e :
         {Epilogue::kNone, Epilogue::kBias, Epilogue::kReluAuxBias, Epilogue::kGeluAuxBias,
          Epilogue::kDReluBGrad, Epilogue::kDGeluBGrad, Epilogue::kBGradA}) {
      for (const Transpose ta : {kN, kT}) {
        for (const Transpose tb : {kN, kT}) {
          GemmCase cs{dt, e, ta, tb, 7, 33, 17};  // m, n, k all different
          check_case(cs, rng);
          cs.pad = 3;
          cs.alpha = e == Epilogue::kNone ? 0.5f : 1.0f;
          check_case(cs, rng);
        }
      }
    }
  }
}

TEST(GemmMapping, BatchedStridedAndAccumulating) {
  std::mt19937_64 rng(12);
  for (const Transpose ta : {kN, kT}) {
    for (const Transpose tb : {kN, kT}) {
      GemmCase cs{Precision::kFp16, Epilogue::kNone, ta, tb, 9, 13, 11, 3};
      cs.batch_pad = 5;
      cs.pad = 2;
      check_case(cs, rng);
      cs.shared_b = true;
      check_case(cs, rng);
      cs.beta = 1.0f;
      cs.c_mode = CMode::kInPlace;
      check_case(cs, rng);
      cs.beta = 0.5f;
      cs.c_mode = CMode::kSeparate;
      check_case(cs, rng);
      cs.c_pad = 8;
      check_case(cs, rng);
    }
  }
  for (const Epilogue e : {Epilogue::kBias, Epilogue::kReluAuxBias, Epilogue::kGeluAuxBias}) {
    GemmCase cs{Precision::kBf16, e, kN, kT, 9, 130, 11, 2};
    cs.batch_pad = 8;
    check_case(cs, rng);
  }
  GemmCase wgrad{Precision::kFp32, Epilogue::kBGradA, kT, kN, 12, 10, 9};
  wgrad.beta = 1.0f;
  wgrad.c_mode = CMode::kInPlace;
  check_case(wgrad, rng);
}

TEST(GemmMapping, DataTypesAndComputeType) {
  std::mt19937_64 rng(13);
  for (const auto& [dt, type] :
       {std::pair{Precision::kFp32, CUDA_R_32F}, std::pair{Precision::kFp16, CUDA_R_16F},
        std::pair{Precision::kBf16, CUDA_R_16BF}}) {
    HostProblem p = make_problem(GemmCase{dt, Epilogue::kBias, kN, kT, 4, 8, 8}, rng);
    const LtCall call = lt_call(host_args(p));
    EXPECT_EQ(call.a.type, type);
    EXPECT_EQ(call.d.type, type);
    EXPECT_EQ(call.bias_type, type);
    EXPECT_EQ(call.compute_type, CUBLAS_COMPUTE_32F);
  }
  HostProblem p = make_problem(GemmCase{Precision::kFp32, Epilogue::kNone, kN, kT, 4, 8, 8}, rng);
  GemmArgs g = host_args(p);
  g.tf32 = Tf32::kAllow;
  EXPECT_EQ(lt_call(g).compute_type, CUBLAS_COMPUTE_32F_FAST_TF32);
}

// The SM target (a side lane's GEMMs, LIGHTSEQ_LANE_GEMM_SMS) reaches the matmul descriptor; a
// GEMM without one leaves cuBLASLt's default (0: the device's SMs); a negative one is refused.
TEST(GemmMapping, SmCountTarget) {
  std::mt19937_64 rng(14);
  HostProblem p = make_problem(GemmCase{Precision::kBf16, Epilogue::kNone, kN, kT, 4, 8, 8}, rng);
  GemmArgs g = host_args(p);
  EXPECT_EQ(lt_call(g).sm_count_target, 0);
  g.sm_count_target = 24;
  EXPECT_EQ(lt_call(g).sm_count_target, 24);
  EXPECT_NE(describe(g).find("planned for 24 SMs"), std::string::npos) << describe(g);
  g.sm_count_target = -1;
  EXPECT_THROW(lt_call(g), lightseq::InternalError);
}

}  // namespace
}  // namespace lightseq::test
