#include "runtime/gemm.h"

#include <cublasLt.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"

namespace lightseq {
namespace {

// --- epilogue traits ---------------------------------------------------------------------------

bool reads_bias(Epilogue e) {
  return e == Epilogue::kBias || e == Epilogue::kReluAuxBias || e == Epilogue::kGeluAuxBias;
}
bool uses_aux(Epilogue e) {
  return e == Epilogue::kReluAuxBias || e == Epilogue::kGeluAuxBias || e == Epilogue::kDReluBGrad ||
         e == Epilogue::kDGeluBGrad;
}
bool aux_is_mask(Epilogue e) { return e == Epilogue::kReluAuxBias || e == Epilogue::kDReluBGrad; }
bool writes_bias_grad(Epilogue e) {
  return e == Epilogue::kDReluBGrad || e == Epilogue::kDGeluBGrad || e == Epilogue::kBGradA;
}

// Row-major epilogue -> cuBLASLt's, for the transposed (column-major) problem D' = op(B)ᵀ·op(A)ᵀ
// (see gemm.h). Bias and DRELU/DGELU bias gradients are per row of D' = per column of D; BGRADB
// reduces B' = op(A)ᵀ over K, which is our Σ_k op(A)[i, k].
cublasLtEpilogue_t lt_epilogue(Epilogue e) {
  switch (e) {
    case Epilogue::kNone:
      return CUBLASLT_EPILOGUE_DEFAULT;
    case Epilogue::kBias:
      return CUBLASLT_EPILOGUE_BIAS;
    case Epilogue::kReluAuxBias:
      return CUBLASLT_EPILOGUE_RELU_AUX_BIAS;
    case Epilogue::kGeluAuxBias:
      return CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    case Epilogue::kDReluBGrad:
      return CUBLASLT_EPILOGUE_DRELU_BGRAD;
    case Epilogue::kDGeluBGrad:
      return CUBLASLT_EPILOGUE_DGELU_BGRAD;
    case Epilogue::kBGradA:
      return CUBLASLT_EPILOGUE_BGRADB;
  }
  throw InternalError(fmt::format("gemm: unknown Epilogue {}", static_cast<int>(e)));
}

std::string_view lt_epilogue_name(Epilogue e) {
  switch (e) {
    case Epilogue::kNone:
      return "CUBLASLT_EPILOGUE_DEFAULT";
    case Epilogue::kBias:
      return "CUBLASLT_EPILOGUE_BIAS";
    case Epilogue::kReluAuxBias:
      return "CUBLASLT_EPILOGUE_RELU_AUX_BIAS";
    case Epilogue::kGeluAuxBias:
      return "CUBLASLT_EPILOGUE_GELU_AUX_BIAS";
    case Epilogue::kDReluBGrad:
      return "CUBLASLT_EPILOGUE_DRELU_BGRAD";
    case Epilogue::kDGeluBGrad:
      return "CUBLASLT_EPILOGUE_DGELU_BGRAD";
    case Epilogue::kBGradA:
      return "CUBLASLT_EPILOGUE_BGRADB";
  }
  throw InternalError(fmt::format("gemm: unknown Epilogue {}", static_cast<int>(e)));
}

cudaDataType_t cuda_data_type(Precision p) {
  switch (p) {
    case Precision::kFp32:
      return CUDA_R_32F;
    case Precision::kFp16:
      return CUDA_R_16F;
    case Precision::kBf16:
      return CUDA_R_16BF;
  }
  throw InternalError(fmt::format("gemm: unknown Precision {}", static_cast<int>(p)));
}

cublasComputeType_t compute_type(const GemmArgs& g) {
  return g.dtype == Precision::kFp32 && g.tf32 == Tf32::kAllow ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                               : CUBLAS_COMPUTE_32F;
}

cublasOperation_t op(Transpose t) { return t == Transpose::kYes ? CUBLAS_OP_T : CUBLAS_OP_N; }
std::string_view yes_no(Transpose t) { return t == Transpose::kYes ? "yes" : "no"; }

// Largest power of two (≤ 256) dividing the address; 256 for null.
uint32_t alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  if (v == 0) return 256;
  const uintptr_t low = v & (~v + 1);
  return low >= 256 ? 256u : static_cast<uint32_t>(low);
}

// Alignment every batch's pointer shares: the base's and the stride's (in bytes).
uint32_t operand_alignment(const void* p, int64_t stride, int64_t batch, Precision dtype) {
  uint32_t a = alignment(p);
  if (batch > 1 && stride != 0) {
    const uintptr_t bytes = static_cast<uintptr_t>(stride) * element_bytes(dtype);
    a = std::min(a, alignment(reinterpret_cast<const void*>(bytes)));
  }
  return a;
}

const void* c_pointer(const GemmArgs& g) { return g.beta != 0.0f ? g.c : g.d; }
int64_t c_ld(const GemmArgs& g) { return g.beta != 0.0f ? g.ldc : g.ldd; }
int64_t c_stride(const GemmArgs& g) { return g.beta != 0.0f ? g.stride_c : g.stride_d; }
const void* epilogue_vector(const GemmArgs& g) {
  return reads_bias(g.epilogue) ? g.bias : writes_bias_grad(g.epilogue) ? g.bias_grad : nullptr;
}

std::string cublaslt_version() {
  const size_t v = cublasLtGetVersion();  // 130100
  return fmt::format("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
}

// --- descriptors -------------------------------------------------------------------------------

template <typename T>
void set(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, const T& value) {
  LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, attr, &value, sizeof(value)));
}
template <typename T>
void set(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr, const T& value) {
  LIGHTSEQ_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, attr, &value, sizeof(value)));
}
template <typename T>
void set(cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
         const T& value) {
  LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value)));
}

// The column-major problem handed to cuBLASLt, in stack storage (no allocation, no cleanup).
struct LtProblem {
  cublasLtMatmulDescOpaque_t op_storage;
  cublasLtMatrixLayoutOpaque_t a_storage, b_storage, c_storage, d_storage;
  cublasLtMatmulDesc_t op() { return &op_storage; }
  cublasLtMatrixLayout_t a() { return &a_storage; }  // A' = our B
  cublasLtMatrixLayout_t b() { return &b_storage; }  // B' = our A
  cublasLtMatrixLayout_t c() { return &c_storage; }
  cublasLtMatrixLayout_t d() { return &d_storage; }
};

void init_layout(cublasLtMatrixLayout_t layout, cudaDataType_t type, int64_t rows, int64_t cols,
                 int64_t ld, int64_t batch, int64_t stride) {
  LIGHTSEQ_CUBLAS_CHECK(cublasLtMatrixLayoutInit(layout, type, static_cast<uint64_t>(rows),
                                                 static_cast<uint64_t>(cols), ld));
  if (batch > 1) {
    set(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, static_cast<int32_t>(batch));
    set(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, stride);
  }
}

void build(const GemmArgs& g, LtProblem& p) {
  const cudaDataType_t type = cuda_data_type(g.dtype);
  LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulDescInit(p.op(), compute_type(g), CUDA_R_32F));
  set(p.op(), CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(op(g.trans_b)));
  set(p.op(), CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(op(g.trans_a)));
  set(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE, static_cast<uint32_t>(lt_epilogue(g.epilogue)));
  if (g.sm_count_target > 0) set(p.op(), CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, g.sm_count_target);
  if (const void* vector = epilogue_vector(g)) {
    set(p.op(), CUBLASLT_MATMUL_DESC_BIAS_POINTER, vector);
    set(p.op(), CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, static_cast<int32_t>(type));
  }
  if (uses_aux(g.epilogue)) {
    set(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, static_cast<const void*>(g.aux));
    set(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
    if (g.batch > 1) set(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE, g.aux_stride);
  }
  // A' = B: column-major [n, k] (trans_b = no: row-major [k, n]) or [k, n] (trans_b = yes).
  const bool tb = g.trans_b == Transpose::kYes;
  init_layout(p.a(), type, tb ? g.k : g.n, tb ? g.n : g.k, g.ldb, g.batch, g.stride_b);
  // B' = A: column-major [k, m] (trans_a = no: row-major [m, k]) or [m, k] (trans_a = yes).
  const bool ta = g.trans_a == Transpose::kYes;
  init_layout(p.b(), type, ta ? g.m : g.k, ta ? g.k : g.m, g.lda, g.batch, g.stride_a);
  init_layout(p.c(), type, g.n, g.m, c_ld(g), g.batch, c_stride(g));
  init_layout(p.d(), type, g.n, g.m, g.ldd, g.batch, g.stride_d);
}

}  // namespace

// --- validation and description ----------------------------------------------------------------

std::string describe(const GemmArgs& g) {
  std::string out = fmt::format(
      "gemm '{}': {} D[{} x {} x {}] = {}·op(A)·op(B){} with k = {}, trans_a = {}, trans_b = {}, "
      "lda = {}, ldb = {}, ldd = {}",
      g.name.empty() ? std::string_view("(unnamed)") : g.name, to_string(g.dtype), g.batch, g.m,
      g.n, g.alpha, g.beta != 0.0f ? fmt::format(" + {}·C (ldc = {})", g.beta, g.ldc) : "", g.k,
      yes_no(g.trans_a), yes_no(g.trans_b), g.lda, g.ldb, g.ldd);
  if (g.batch > 1) {
    out += fmt::format(", strides a/b/c/d = {}/{}/{}/{}", g.stride_a, g.stride_b, g.stride_c,
                       g.stride_d);
  }
  out += fmt::format(", epilogue {}", to_string(g.epilogue));
  if (uses_aux(g.epilogue)) {
    out += fmt::format(" (aux_ld = {}{}", g.aux_ld, aux_is_mask(g.epilogue) ? " bits" : "");
    if (g.batch > 1) out += fmt::format(", aux_stride = {}", g.aux_stride);
    out += ")";
  }
  if (g.dtype == Precision::kFp32 && g.tf32 == Tf32::kAllow) out += ", TF32 allowed";
  if (g.sm_count_target > 0) out += fmt::format(", planned for {} SMs", g.sm_count_target);
  out += fmt::format(", alignment (bytes) A/B/C/D = {}/{}/{}/{}",
                     operand_alignment(g.a, g.stride_a, g.batch, g.dtype),
                     operand_alignment(g.b, g.stride_b, g.batch, g.dtype),
                     operand_alignment(c_pointer(g), c_stride(g), g.batch, g.dtype),
                     operand_alignment(g.d, g.stride_d, g.batch, g.dtype));
  if (const void* v = epilogue_vector(g)) out += fmt::format(", bias {}", alignment(v));
  if (uses_aux(g.epilogue)) out += fmt::format(", aux {}", alignment(g.aux));
  return out;
}

void validate_gemm_args(const GemmArgs& g) {
  auto fail = [&](std::string rule) {
    throw InternalError(fmt::format("{}: {}", describe(g), rule));
  };
  if (g.m < 1 || g.n < 1 || g.k < 1 || g.batch < 1) fail("m, n, k and batch must be ≥ 1");
  if (g.a == nullptr || g.b == nullptr || g.d == nullptr) fail("a, b and d must be non-null");
  if (g.tf32 == Tf32::kAllow && g.dtype != Precision::kFp32) fail("TF32 applies to fp32 only");
  if (g.sm_count_target < 0) fail("sm_count_target must be ≥ 0 (0: all of the device's SMs)");
  const bool ta = g.trans_a == Transpose::kYes, tb = g.trans_b == Transpose::kYes;
  if (g.lda < (ta ? g.m : g.k))
    fail(fmt::format("lda must be ≥ {} (row length of A as stored)", ta ? "m" : "k"));
  if (g.ldb < (tb ? g.k : g.n))
    fail(fmt::format("ldb must be ≥ {} (row length of B as stored)", tb ? "k" : "n"));
  if (g.ldd < g.n) fail("ldd must be ≥ n");
  if (g.beta != 0.0f) {
    if (g.c == nullptr) fail("beta != 0 needs c (c may equal d)");
    if (g.ldc < g.n) fail("ldc must be ≥ n");
    if (g.c == g.d && (g.ldc != g.ldd || (g.batch > 1 && g.stride_c != g.stride_d))) {
      fail("c == d (in place) needs ldc == ldd and stride_c == stride_d");
    }
  }
  if (g.batch > 1) {
    if (g.stride_a < 0 || g.stride_b < 0 || g.stride_c < 0) fail("strides must be ≥ 0");
    if (g.stride_d < g.m * g.ldd) fail("stride_d must be ≥ m·ldd (batches of D must not overlap)");
  }
  if (reads_bias(g.epilogue) && g.bias == nullptr) fail("this epilogue needs bias ([n])");
  if (writes_bias_grad(g.epilogue)) {
    if (g.bias_grad == nullptr) fail("this epilogue needs bias_grad");
    if (g.batch != 1) fail("bias-gradient epilogues need batch = 1");
  }
  if (uses_aux(g.epilogue)) {
    if (g.aux == nullptr) fail("this epilogue needs aux");
    if (g.aux_ld < g.n) fail("aux_ld must be ≥ n");
    const int64_t multiple = aux_is_mask(g.epilogue) ? 128 : 8;
    if (g.aux_ld % multiple != 0) {
      fail(fmt::format("aux_ld must be a multiple of {} ({})", multiple,
                       aux_is_mask(g.epilogue) ? "bits of the ReLU mask" : "GELU aux elements"));
    }
    if (g.batch > 1 && (g.aux_stride % multiple != 0 || g.aux_stride < g.m * g.aux_ld)) {
      fail(fmt::format("aux_stride must be a multiple of {} and ≥ m·aux_ld", multiple));
    }
  }
}

// --- read-back of the cuBLASLt call ------------------------------------------------------------

namespace {

template <typename T>
T get(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr) {
  T value{};
  size_t written = 0;
  LIGHTSEQ_CUBLAS_CHECK(
      cublasLtMatmulDescGetAttribute(desc, attr, &value, sizeof(value), &written));
  return value;
}

template <typename T>
T get(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr) {
  T value{};
  size_t written = 0;
  LIGHTSEQ_CUBLAS_CHECK(
      cublasLtMatrixLayoutGetAttribute(layout, attr, &value, sizeof(value), &written));
  return value;
}

LtCall::Matrix read_layout(cublasLtMatrixLayout_t layout, const void* ptr) {
  LtCall::Matrix m;
  m.ptr = ptr;
  m.type = get<int32_t>(layout, CUBLASLT_MATRIX_LAYOUT_TYPE);
  m.rows = get<uint64_t>(layout, CUBLASLT_MATRIX_LAYOUT_ROWS);
  m.cols = get<uint64_t>(layout, CUBLASLT_MATRIX_LAYOUT_COLS);
  m.ld = get<int64_t>(layout, CUBLASLT_MATRIX_LAYOUT_LD);
  m.batch = get<int32_t>(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT);
  m.stride = get<int64_t>(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET);
  return m;
}

std::string_view epilogue_name(uint32_t e) {
  for (const Epilogue ours :
       {Epilogue::kNone, Epilogue::kBias, Epilogue::kReluAuxBias, Epilogue::kGeluAuxBias,
        Epilogue::kDReluBGrad, Epilogue::kDGeluBGrad, Epilogue::kBGradA}) {
    if (static_cast<uint32_t>(lt_epilogue(ours)) == e) return lt_epilogue_name(ours);
  }
  return "unknown cuBLASLt epilogue";
}

}  // namespace

LtCall lt_call(const GemmArgs& g) {
  validate_gemm_args(g);
  LtProblem p;
  build(g, p);
  LtCall call;
  call.epilogue = epilogue_name(get<uint32_t>(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE));
  call.trans_a = get<int32_t>(p.op(), CUBLASLT_MATMUL_DESC_TRANSA) == CUBLAS_OP_T;
  call.trans_b = get<int32_t>(p.op(), CUBLASLT_MATMUL_DESC_TRANSB) == CUBLAS_OP_T;
  call.a = read_layout(p.a(), g.b);
  call.b = read_layout(p.b(), g.a);
  call.c = read_layout(p.c(), c_pointer(g));
  call.d = read_layout(p.d(), g.d);
  call.bias = get<const void*>(p.op(), CUBLASLT_MATMUL_DESC_BIAS_POINTER);
  call.bias_type = get<int32_t>(p.op(), CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE);
  call.aux = get<const void*>(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER);
  call.aux_ld = get<int64_t>(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD);
  call.aux_stride = get<int64_t>(p.op(), CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_BATCH_STRIDE);
  call.compute_type = get<int32_t>(p.op(), CUBLASLT_MATMUL_DESC_COMPUTE_TYPE);
  call.scale_type = get<int32_t>(p.op(), CUBLASLT_MATMUL_DESC_SCALE_TYPE);
  call.sm_count_target = get<int32_t>(p.op(), CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET);
  call.alpha = g.alpha;
  call.beta = g.beta;
  return call;
}

// --- runner ------------------------------------------------------------------------------------

namespace {

// Every parameter the heuristic's answer may depend on (pointer values only through alignment).
struct Key {
  int device;
  Precision dtype;
  Tf32 tf32;
  Transpose trans_a, trans_b;
  Epilogue epilogue;
  int64_t m, n, k, batch;
  int64_t lda, ldb, ldc, ldd;
  int64_t stride_a, stride_b, stride_c, stride_d;
  int64_t aux_ld, aux_stride;
  bool beta_nonzero, c_is_d;
  uint32_t align_a, align_b, align_c, align_d, align_vector, align_aux;
  int32_t sm_count_target;
  auto operator<=>(const Key&) const = default;
};

Key make_key(const GemmArgs& g, int device) {
  const bool beta = g.beta != 0.0f;
  const bool batched = g.batch > 1;
  const bool aux = uses_aux(g.epilogue);
  return Key{device,
             g.dtype,
             g.tf32,
             g.trans_a,
             g.trans_b,
             g.epilogue,
             g.m,
             g.n,
             g.k,
             g.batch,
             g.lda,
             g.ldb,
             beta ? g.ldc : 0,
             g.ldd,
             batched ? g.stride_a : 0,
             batched ? g.stride_b : 0,
             batched && beta ? g.stride_c : 0,
             batched ? g.stride_d : 0,
             aux ? g.aux_ld : 0,
             aux && batched ? g.aux_stride : 0,
             beta,
             beta && g.c == g.d,
             operand_alignment(g.a, g.stride_a, g.batch, g.dtype),
             operand_alignment(g.b, g.stride_b, g.batch, g.dtype),
             operand_alignment(c_pointer(g), c_stride(g), g.batch, g.dtype),
             operand_alignment(g.d, g.stride_d, g.batch, g.dtype),
             alignment(epilogue_vector(g)),
             aux ? alignment(g.aux) : 256u,
             g.sm_count_target};
}

struct Choice {
  bool supported = false;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  std::string reason;
};

struct DeviceState {
  explicit DeviceState(int device) : context(device) {}
  PrimaryContext context;
  cublasLtHandle_t handle = nullptr;
  int arch = 0;
  std::string name;
};

}  // namespace

struct GemmRunner::State {
  std::mutex mu;  // guards both maps; their entries never change or go away once inserted
  std::map<int, std::unique_ptr<DeviceState>> devices;
  std::map<Key, Choice> choices;
  int64_t heuristic_queries = 0;

  // mu held; the device's context (or another of the device's contexts) is current.
  DeviceState& device(int ordinal) {
    auto it = devices.find(ordinal);
    if (it != devices.end()) return *it->second;
    auto state = std::make_unique<DeviceState>(ordinal);
    state->arch = device_arch(ordinal);
    state->name = device_name(ordinal);
    LIGHTSEQ_CUBLAS_CHECK_MSG(cublasLtCreate(&state->handle),
                              fmt::format("creating the cuBLASLt handle of device {}", ordinal));
    return *devices.emplace(ordinal, std::move(state)).first->second;
  }

  // The heuristic's choice for this problem, queried once. The stream's context is current.
  std::pair<const Choice*, DeviceState*> choose(const GemmArgs& g, int ordinal, CUstream stream) {
    const Key key = make_key(g, ordinal);
    std::lock_guard lock(mu);
    DeviceState& dev = device(ordinal);
    auto it = choices.find(key);
    if (it != choices.end()) return {&it->second, &dev};

    LtProblem p;
    build(g, p);
    cublasLtMatmulPreferenceOpaque_t pref_storage;
    cublasLtMatmulPreference_t pref = &pref_storage;
    LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulPreferenceInit(pref));
    set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t{kGemmMaxWorkspaceBytes});
    // A' is our B and B' our A.
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.align_b);
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.align_a);
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.align_c);
    set(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.align_d);

    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    ++heuristic_queries;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        dev.handle, p.op(), p.a(), p.b(), p.c(), p.d(), pref, 1, &result, &count);
    Choice choice;
    const std::string where = fmt::format(
        "{} on CUDA device {} ({}, sm_{}) with cuBLASLt {} [cuBLASLt problem: transa = {}, "
        "transb = {}, M = {}, N = {}, K = {}, {}]",
        describe(g), ordinal, dev.name, dev.arch, cublaslt_version(),
        g.trans_b == Transpose::kYes ? "T" : "N", g.trans_a == Transpose::kYes ? "T" : "N", g.n,
        g.m, g.k, lt_epilogue_name(g.epilogue));
    if (status == CUBLAS_STATUS_SUCCESS && count > 0) {
      choice.supported = true;
      choice.algo = result.algo;
      choice.workspace = result.workspaceSize;
    } else if (status == CUBLAS_STATUS_SUCCESS || status == CUBLAS_STATUS_NOT_SUPPORTED ||
               status == CUBLAS_STATUS_INVALID_VALUE) {
      choice.reason = fmt::format(
          "cuBLASLt has no algorithm ({}) for {}",
          status == CUBLAS_STATUS_SUCCESS ? "0 results" : cublas_status_name(status), where);
    } else {
      const bool capturing = stream_is_capturing(stream);
      throw_cublas_error(status, "cublasLtMatmulAlgoGetHeuristic",
                         where + (capturing ? "; the stream is being captured into a CUDA graph: "
                                              "run this GEMM once before capturing"
                                            : ""),
                         __FILE__, __LINE__);
    }
    auto inserted = choices.emplace(key, std::move(choice)).first;
    return {&inserted->second, &dev};
  }
};

GemmRunner::GemmRunner() : state_(std::make_unique<State>()) {}

GemmRunner::~GemmRunner() {
  for (auto& [ordinal, dev] : state_->devices) {
    try {
      ContextGuard guard(dev->context.get());
      const cublasStatus_t status = cublasLtDestroy(dev->handle);
      if (status != CUBLAS_STATUS_SUCCESS) {
        std::fprintf(stderr, "lightseq: cublasLtDestroy (device %d) failed: %s\n", ordinal,
                     cublas_status_name(status).c_str());
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "lightseq: destroying the cuBLASLt handle of device %d failed: %s\n",
                   ordinal, e.what());
    }
  }
}

int64_t GemmRunner::heuristic_queries() const {
  std::lock_guard lock(state_->mu);
  return state_->heuristic_queries;
}

GemmSupport GemmRunner::supported(const GemmArgs& args, CUstream stream) {
  validate_gemm_args(args);
  const CUcontext context = stream_context(stream);
  ContextGuard guard(context);
  const auto [choice, dev] = state_->choose(args, context_device(context), stream);
  return GemmSupport{choice->supported, choice->reason};
}

size_t GemmRunner::run(const GemmArgs& args, CUstream stream, Allocator& allocator) {
  validate_gemm_args(args);
  const CUcontext context = stream_context(stream);
  ContextGuard guard(context);
  const auto [choice, dev] = state_->choose(args, context_device(context), stream);
  if (!choice->supported && args.sm_count_target > 0) {  // a hint: plan for the whole device
    GemmArgs whole = args;
    whole.sm_count_target = 0;
    return run(whole, stream, allocator);
  }
  if (!choice->supported) throw CudaError(choice->reason);

  DeviceBuffer own_workspace;
  void* workspace = args.workspace;
  if (choice->workspace > 0 && (!workspace || args.workspace_bytes < choice->workspace)) {
    own_workspace = DeviceBuffer(allocator, choice->workspace, stream);
    workspace = own_workspace.get();
  }
  LtProblem p;
  build(args, p);
  const float alpha = args.alpha, beta = args.beta;
  LIGHTSEQ_CUBLAS_CHECK_MSG(cublasLtMatmul(dev->handle, p.op(), &alpha, args.b, p.a(), args.a,
                                           p.b(), &beta, c_pointer(args), p.c(), args.d, p.d(),
                                           &choice->algo, workspace, choice->workspace, stream),
                            describe(args));
  return choice->workspace;
}

}  // namespace lightseq
