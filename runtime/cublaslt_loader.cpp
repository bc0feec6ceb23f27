// cublaslt_loader.cpp — cuBLASLt, loaded on first use (dlopen libcublasLt.so.<major>) instead of
// linked.
//
// Why: loading libcublasLt costs ~72 ms at process start (measured on the 2-core development
// machine, 2026-11-28: an empty program linked against it runs in 73 ms, against nvrtc alone in
// 9 ms), which every `lsc build` and every test process paid although only GEMMs on a GPU need it.
// The functions gemm.cpp calls are defined here with cuBLASLt's own names and signatures (the
// header's inline *Init wrappers call the *_internal entry points, defined here too); each
// resolves the library's symbol from the dlopen handle on first call. They are hidden (this file
// is compiled with -fvisibility=hidden), so they never interpose on another copy of cuBLASLt in
// the process (PyTorch's).
#include <cublasLt.h>
#include <dlfcn.h>

#include <mutex>
#include <string>

#include "compiler/errors.h"

namespace lightseq {
namespace {

#define LIGHTSEQ_STR2(x) #x
#define LIGHTSEQ_STR(x) LIGHTSEQ_STR2(x)

void* library() {
  static void* handle = [] {
    const std::string name = "libcublasLt.so." LIGHTSEQ_STR(CUBLAS_VER_MAJOR);
    void* h = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) h = ::dlopen("libcublasLt.so", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      const char* why = ::dlerror();
      throw CudaError(
          "cuBLASLt could not be loaded (" + name + "): " + (why ? why : "unknown dlopen error") +
          "; install the CUDA Toolkit's cuBLAS or add its lib directory to LD_LIBRARY_PATH");
    }
    return h;
  }();
  return handle;
}

template <typename Fn>
Fn* resolve(const char* name) {
  void* symbol = ::dlsym(library(), name);
  if (!symbol) {
    throw CudaError(std::string("cuBLASLt has no symbol ") + name +
                    " (a cuBLASLt older than the headers lightseq was built with?)");
  }
  return reinterpret_cast<Fn*>(symbol);
}

}  // namespace
}  // namespace lightseq

#define LIGHTSEQ_LT_FORWARD(ret, name, params, args)                                  \
  extern "C" ret CUBLASWINAPI name params {                                           \
    static decltype(::name)* const fn = ::lightseq::resolve<decltype(::name)>(#name); \
    return fn args;                                                                   \
  }

LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtCreate, (cublasLtHandle_t * h), (h))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtDestroy, (cublasLtHandle_t h), (h))
LIGHTSEQ_LT_FORWARD(size_t, cublasLtGetVersion, (void), ())
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmul,
                    (cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void* alpha,
                     const void* A, cublasLtMatrixLayout_t Adesc, const void* B,
                     cublasLtMatrixLayout_t Bdesc, const void* beta, const void* C,
                     cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                     const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream),
                    (h, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo, workspace,
                     workspace_bytes, stream))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatrixLayoutInit_internal,
                    (cublasLtMatrixLayout_t layout, size_t size, cudaDataType type, uint64_t rows,
                     uint64_t cols, int64_t ld),
                    (layout, size, type, rows, cols, ld))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatrixLayoutSetAttribute,
                    (cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                     const void* buf, size_t bytes),
                    (layout, attr, buf, bytes))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatrixLayoutGetAttribute,
                    (cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr, void* buf,
                     size_t bytes, size_t* written),
                    (layout, attr, buf, bytes, written))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmulDescInit_internal,
                    (cublasLtMatmulDesc_t desc, size_t size, cublasComputeType_t compute,
                     cudaDataType_t scale),
                    (desc, size, compute, scale))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmulDescSetAttribute,
                    (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                     const void* buf, size_t bytes),
                    (desc, attr, buf, bytes))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmulDescGetAttribute,
                    (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr, void* buf,
                     size_t bytes, size_t* written),
                    (desc, attr, buf, bytes, written))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmulPreferenceInit_internal,
                    (cublasLtMatmulPreference_t pref, size_t size), (pref, size))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmulPreferenceSetAttribute,
                    (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                     const void* buf, size_t bytes),
                    (pref, attr, buf, bytes))
LIGHTSEQ_LT_FORWARD(cublasStatus_t, cublasLtMatmulAlgoGetHeuristic,
                    (cublasLtHandle_t h, cublasLtMatmulDesc_t desc, cublasLtMatrixLayout_t Adesc,
                     cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc,
                     cublasLtMatrixLayout_t Ddesc, cublasLtMatmulPreference_t pref, int requested,
                     cublasLtMatmulHeuristicResult_t results[], int* returned),
                    (h, desc, Adesc, Bdesc, Cdesc, Ddesc, pref, requested, results, returned))
