// host_floor — what the host pays to issue each kind of work a layer's step enqueues, measured on
// this machine: one GEMM through GemmRunner::run (heuristic cached, as in a step) and the same
// GEMM as a bare cublasLtMatmul with descriptors built once (cuBLASLt's own floor), one kernel
// launch through runtime/module.h's launch() (an empty kernel), one stream-ordered allocation and
// free, one cuMemsetD8Async. A step's host-issue floor is then its GEMM count × the GEMM cost +
// its kernel count × the launch cost (+ its allocations): `lsc plan` gives the counts.
//
// Usage: host_floor [calls]   (default 2000 per measurement; needs a GPU)
#include <cublasLt.h>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

#include "runtime/allocator.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/gemm.h"
#include "runtime/module.h"

namespace {

using namespace lightseq;

// Host microseconds per call of `issue`, over `calls` calls after 50 warm-up calls. The stream is
// drained every 200 calls (outside the timed region) so the launch queue never fills.
double host_us(int calls, CUstream stream, const std::function<void()>& issue) {
  for (int i = 0; i < 50; ++i) issue();
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
  double total = 0;
  for (int done = 0; done < calls;) {
    const int batch = std::min(200, calls - done);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < batch; ++i) issue();
    total +=
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    done += batch;
  }
  return total / calls;
}

constexpr const char* kEmptyKernelPtx = R"(.version 8.0
.target sm_80
.address_size 64
.visible .entry empty_kernel(.param .u64 p, .param .u64 n) { ret; }
)";

}  // namespace

int main(int argc, char** argv) {
  try {
    const int calls = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2000;
    if (device_count() == 0) {
      fmt::print(stderr, "host_floor: no GPU: {}\n", driver_unavailable_reason());
      return 1;
    }
    PrimaryContext context(0);
    ContextGuard guard(context.get());
    CUstream stream = nullptr;
    LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    fmt::print("host_floor on {}: host microseconds per call (mean of {})\n", device_name(0),
               calls);
    std::fflush(stdout);
    {  // everything that holds device memory goes before the stream
      StreamOrderedAllocator allocator(0);

      // The GEMM of transformer-base's QKV projection at 4096 tokens: bf16 [4096, 512] x [512,
      // 1536].
      const int64_t m = 4096, n = 1536, k = 512;
      DeviceBuffer a(allocator, m * k * 2, stream), b(allocator, k * n * 2, stream),
          d(allocator, m * n * 2, stream);
      DeviceBuffer workspace(allocator, kGemmMaxWorkspaceBytes, stream);
      GemmRunner gemm;
      GemmArgs g;
      g.name = "host_floor";
      g.dtype = Precision::kBf16;
      g.m = m, g.n = n, g.k = k;
      g.a = a.get(), g.lda = k;
      g.b = b.get(), g.ldb = n;
      g.d = d.get(), g.ldd = n;
      g.workspace = workspace.get();
      g.workspace_bytes = kGemmMaxWorkspaceBytes;
      const double gemm_us = host_us(calls, stream, [&] { gemm.run(g, stream, allocator); });
      fmt::print("  GemmRunner::run (bf16 {}x{}x{}, cached heuristic)  {:.2f}\n", m, n, k, gemm_us);
      std::fflush(stdout);

      // The same problem straight to cuBLASLt: column-major D'[n, m] = B'[n, k] · A'[k, m].
      cublasLtHandle_t lt = nullptr;
      LIGHTSEQ_CUBLAS_CHECK(cublasLtCreate(&lt));
      cublasLtMatmulDescOpaque_t op_s;
      cublasLtMatrixLayoutOpaque_t la_s, lb_s, ld_s;
      cublasLtMatmulPreferenceOpaque_t pref_s;
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulDescInit(&op_s, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatrixLayoutInit(&la_s, CUDA_R_16BF, n, k, n));
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatrixLayoutInit(&lb_s, CUDA_R_16BF, k, m, k));
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatrixLayoutInit(&ld_s, CUDA_R_16BF, n, m, n));
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulPreferenceInit(&pref_s));
      const uint64_t ws_bytes = kGemmMaxWorkspaceBytes;
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
          &pref_s, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, &op_s, &la_s, &lb_s, &ld_s, &ld_s,
                                                           &pref_s, 1, &result, &found));
      const float one = 1.0f, zero = 0.0f;
      const double lt_us = found == 0 ? -1 : host_us(calls, stream, [&] {
        LIGHTSEQ_CUBLAS_CHECK(cublasLtMatmul(lt, &op_s, &one, b.get(), &la_s, a.get(), &lb_s, &zero,
                                             d.get(), &ld_s, d.get(), &ld_s, &result.algo,
                                             workspace.get(), result.workspaceSize, stream));
      });

      CUmodule module = nullptr;
      CUfunction fn = nullptr;
      LIGHTSEQ_CU_CHECK(driver().cuModuleLoadDataEx(&module, kEmptyKernelPtx, 0, nullptr, nullptr));
      LIGHTSEQ_CU_CHECK(driver().cuModuleGetFunction(&fn, module, "empty_kernel"));
      void* p = d.get();
      int64_t count = 1;
      void* args[] = {&p, &count};
      const double launch_us = host_us(calls, stream, [&] {
        launch(fn, Dim3{132, 1, 1}, Dim3{256, 1, 1}, 0, stream, args, "empty");
      });

      const double alloc_us =
          host_us(calls, stream, [&] { DeviceBuffer t(allocator, 1 << 20, stream); });
      const double memset_us = host_us(calls, stream, [&] {
        LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(d.device_ptr(), 0, 4096, stream));
      });

      fmt::print("  bare cublasLtMatmul, descriptors built once          {:.2f}\n", lt_us);
      fmt::print("  kernel launch (empty kernel, launch())              {:.2f}\n", launch_us);
      fmt::print("  DeviceBuffer 1 MiB, stream-ordered alloc + free     {:.2f}\n", alloc_us);
      fmt::print("  cuMemsetD8Async 4 KiB                               {:.2f}\n", memset_us);
      std::fflush(stdout);
      LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
      driver().cuModuleUnload(module);
      cublasLtDestroy(lt);
    }
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    driver().cuStreamDestroy(stream);
    return 0;
  } catch (const std::exception& e) {
    fmt::print(stderr, "host_floor: {}\n", e.what());
    return 1;
  }
}
