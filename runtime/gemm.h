// gemm.h — GEMMs with fused epilogues through cuBLASLt (the only file pair that calls cuBLAS).
//
// Semantics are row-major, exactly those of a plan's GemmStep (compiler/planner/plan.h):
//
//   for every batch index b < batch:
//     P[m, n] = alpha · op(A_b) · op(B_b) + beta · C_b             (C read only when beta != 0)
//     D_b     = epilogue(P)
//
//   A_b = a + b·stride_a, row-major [m, k] with leading dimension lda (≥ k); with
//         trans_a = kYes it is stored [k, m] (lda ≥ m) and op(A) is its transpose.
//   B_b = b + b·stride_b, row-major [k, n], ldb ≥ n; trans_b = kYes: stored [n, k], ldb ≥ k.
//   C_b, D_b: row-major [m, n], ldc, ldd ≥ n. c may equal d (then ldc == ldd, stride_c ==
//         stride_d): the accumulate contract "D += A·B" is beta = 1, c = d.
//   Strides are in elements; 0 shares the operand across the batch (a weight). stride_d must be
//   nonzero when batch > 1. All of a, b, c, d, bias, aux, bias_grad are in `dtype`
//   (fp32 / fp16 / bf16), except the ReLU mask (bits). Accumulation, alpha and beta are fp32
//   (CUBLAS_COMPUTE_32F); fp32 uses TF32 tensor cores only with Tf32::kAllow.
//
// Epilogues (row-major; i < m rows, j < n columns; "pre" = P + bias):
//   kNone         D = P
//   kBias         D = P + bias[j]                      bias: [n]
//   kReluAuxBias  D = relu(pre); aux = mask bit (pre > 0)       bias: [n]
//   kGeluAuxBias  D = gelu(pre); aux = pre (in dtype)          bias: [n]
//   kDReluBGrad   D = P ⊙ (aux mask bit);  bias_grad[j] = Σ_i D[i, j]   (α = 1, β = 0 advised)
//   kDGeluBGrad   D = P ⊙ gelu'(aux);      bias_grad[j] = Σ_i D[i, j]
//   kBGradA       D = P;  bias_grad[i] = Σ_kk op(A)[i, kk]     bias_grad: [m] (weight-gradient
//                 GEMM dW = dYᵀ·X: the bias gradient Σ_tokens dY comes out of the same pass)
// bias_grad is overwritten (=), never accumulated. Epilogues with a bias gradient need batch = 1.
// GELU is cuBLASLt's, which as far as we know is the tanh form
// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), not the erf form of PyTorch's default (they differ
// by up to ~5e-4): the GPU tests compare against both and print the two errors.
//
// Aux layouts (row-major [m, n] per batch, leading dimension aux_ld, batch stride aux_stride):
//   ReLU mask: one bit per element, element (i, j) is bit (i·aux_ld + j) counted from the start
//     of the buffer, least significant bit first within each byte. aux_ld is in bits, ≥ n and a
//     multiple of 128; aux_stride (bits) a multiple of 128, ≥ m·aux_ld. Bytes per batch:
//     m·aux_ld/8. relu_mask_ld(n) and relu_mask_bytes(m, n) give the tight layout.
//   GELU pre-activation: elements of dtype; aux_ld ≥ n and a multiple of 8; aux_stride a
//     multiple of 8. gelu_aux_ld(n) gives the tight ld.
//
// How it maps onto cuBLASLt (column-major): a row-major [r, c] matrix with leading dimension ld is
// the column-major [c, r] matrix with the same ld, so row-major D = op(A)·op(B) is column-major
// Dᵀ = op(B)ᵀ·op(A)ᵀ. cuBLASLt is called with A' = b (transa = trans_b; layout [n, k] or, when
// transposed, [k, n], ld = ldb), B' = a (transb = trans_a; [k, m] or [m, k], ld = lda),
// M' = n, N' = m, K' = k; C' and D' are [n, m] with ldc, ldd; batch strides carry over. Rows of
// D' are our columns j, columns of D' our rows i. Per epilogue:
//   kNone        CUBLASLT_EPILOGUE_DEFAULT
//   kBias        CUBLASLT_EPILOGUE_BIAS           bias per row of D' (length M' = n)
//   kReluAuxBias CUBLASLT_EPILOGUE_RELU_AUX_BIAS  aux has D''s layout: bit j + i·aux_ld
//   kGeluAuxBias CUBLASLT_EPILOGUE_GELU_AUX_BIAS  aux element j + i·aux_ld
//   kDReluBGrad  CUBLASLT_EPILOGUE_DRELU_BGRAD    bias gradient per row of D' = Σ_i D[i, j]
//   kDGeluBGrad  CUBLASLT_EPILOGUE_DGELU_BGRAD    likewise
//   kBGradA      CUBLASLT_EPILOGUE_BGRADB         B' = op(A)ᵀ reduced over K' = k, one per
//                                                 column of D' = Σ_kk op(A)[i, kk] (length m)
// (cuBLASLt's BGRADA would reduce our op(B) instead.) lt_call() below reads back what run()
// passes; tests/gemm_mapping_test.cpp executes that on the host with cuBLASLt's documented
// column-major semantics and checks it against the row-major reference, without a GPU.
//
// CUDA graphs: run() never synchronizes and allocates only through the caller's Allocator on the
// caller's stream. The first call for a new problem shape creates the device's cuBLASLt handle
// and queries cuBLASLt's heuristic; do that once outside capture (supported() is enough) — some
// cuBLASLt versions refuse heuristic queries while the stream is being captured.
#pragma once

#include <cuda.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "compiler/graph/graph.h"
#include "compiler/planner/plan.h"
#include "compiler/spec/model_spec.h"
#include "runtime/allocator.h"
#include "runtime/device.h"

namespace lightseq {

enum class Tf32 { kOff, kAllow };

struct GemmArgs {
  std::string_view name;  // for messages: the plan step's name, e.g. "sa.qkv_proj"
  Precision dtype = Precision::kFp32;
  Tf32 tf32 = Tf32::kOff;  // fp32 only
  Transpose trans_a = Transpose::kNo, trans_b = Transpose::kNo;
  int64_t m = 0, n = 0, k = 0, batch = 1;
  float alpha = 1.0f, beta = 0.0f;

  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  const void* c = nullptr;  // read when beta != 0; may equal d
  int64_t ldc = 0, stride_c = 0;
  void* d = nullptr;
  int64_t ldd = 0, stride_d = 0;

  Epilogue epilogue = Epilogue::kNone;
  const void* bias = nullptr;  // kBias, k*AuxBias: [n]
  void* aux = nullptr;         // k*AuxBias: output; kD*BGrad: input (see the layouts above)
  int64_t aux_ld = 0, aux_stride = 0;
  void* bias_grad = nullptr;  // kD*BGrad: [n]; kBGradA: [m]

  // >0: CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, the SMs cuBLASLt should plan for, where other work
  // runs beside this GEMM (a layer backward's side lane: LIGHTSEQ_LANE_GEMM_SMS); 0: the device's.
  // A hint: where cuBLASLt has no algorithm planned for it, run() plans for the whole device.
  int32_t sm_count_target = 0;

  // Workspace for cuBLASLt (stream-ordered; several GEMMs on one stream may share it). Null or
  // smaller than the chosen algorithm needs: run() allocates one from its allocator.
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

// Tight aux layouts (see the header comment).
constexpr int64_t relu_mask_ld(int64_t n) { return (n + 127) / 128 * 128; }
constexpr int64_t relu_mask_bytes(int64_t m, int64_t n) { return m * relu_mask_ld(n) / 8; }
constexpr int64_t gelu_aux_ld(int64_t n) { return (n + 7) / 8 * 8; }

// The most workspace one GEMM may use (cuBLASLt's recommendation for Hopper): the heuristic's
// limit. A GEMM takes only what its chosen algorithm needs (often nothing).
inline constexpr size_t kGemmMaxWorkspaceBytes = size_t{32} << 20;

struct GemmSupport {
  bool supported = false;
  std::string reason;  // why not: "cuBLASLt has no algorithm for ..."
};

// Runs GEMMs on any device and stream of the process. Owns, per device it has seen, one cuBLASLt
// handle (created on first use, with a reference on the device's primary context) and a cache of
// cuBLASLt's heuristic choice keyed by every parameter of the problem (shapes, leading dimensions,
// strides, transposes, dtype, epilogue, aux layout, pointer alignments). Thread-safe.
class GemmRunner {
 public:
  GemmRunner();
  ~GemmRunner();
  GemmRunner(const GemmRunner&) = delete;
  GemmRunner& operator=(const GemmRunner&) = delete;

  // Enqueues the GEMM on `stream`. Its workspace is args.workspace where that is large enough,
  // else it comes from `allocator` on `stream`. Returns the workspace bytes its algorithm takes (a
  // caller sharing one workspace among several GEMMs sizes it from these).
  // Throws InternalError for inconsistent arguments (a leading dimension below the row length, a
  // missing pointer the epilogue needs, ...), CudaError when cuBLASLt cannot run this combination
  // (the message names epilogue, dtype, transposes, sizes, leading dimensions, alignments and the
  // device) or a call fails.
  size_t run(const GemmArgs& args, CUstream stream, Allocator& allocator);

  // Whether run() would find an algorithm (queries and caches the heuristic; validates the
  // arguments like run(), throwing InternalError for inconsistent ones). Enqueues nothing.
  GemmSupport supported(const GemmArgs& args, CUstream stream);

  // Heuristic queries so far (a cache miss each); for tests.
  int64_t heuristic_queries() const;

  struct State;

 private:
  std::unique_ptr<State> state_;
};

// The cublasLtMatmul call run() makes for `args`, read back from the cuBLASLt descriptors it
// builds (column-major terms; see "How it maps onto cuBLASLt" above). Host-only: needs neither a
// GPU nor a driver. For tests (tests/gemm_mapping_test.cpp emulates cuBLASLt's documented
// semantics on it) and diagnostics. Validates the arguments like run().
struct LtCall {
  struct Matrix {
    const void* ptr = nullptr;
    int32_t type = -1;  // cudaDataType_t
    uint64_t rows = 0, cols = 0;
    int64_t ld = 0;
    int32_t batch = 1;
    int64_t stride = 0;
  };
  std::string epilogue;                   // "CUBLASLT_EPILOGUE_BGRADB"
  bool trans_a = false, trans_b = false;  // cuBLASLt's transa, transb
  Matrix a, b, c, d;                      // cuBLASLt's A, B, C, D
  const void* bias = nullptr;  // CUBLASLT_MATMUL_DESC_BIAS_POINTER (bias or bias gradient)
  int32_t bias_type = -1;
  const void* aux = nullptr;
  int64_t aux_ld = 0, aux_stride = 0;
  int32_t compute_type = -1, scale_type = -1;
  int32_t sm_count_target = 0;  // CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET
  float alpha = 1.0f, beta = 0.0f;
};
LtCall lt_call(const GemmArgs& args);

// Checks the arguments (the rules above); throws InternalError naming the GEMM and the rule.
void validate_gemm_args(const GemmArgs& args);

// "gemm sa.qkv_proj: bf16 D[1x512x1536] = op(A)·op(B)ᵀ, epilogue bias, lda 512 ..." for messages.
std::string describe(const GemmArgs& args);

}  // namespace lightseq
