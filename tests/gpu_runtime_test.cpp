// gpu_runtime_test.cpp — the runtime foundation on a GPU: contexts, the stream-ordered allocator
// and DeviceBuffer, KernelModule (an NVRTC cubin for the device's arch, driver-JIT PTX, the errors
// for a missing label, a broken PTX and a cubin of another arch), launches above 48 KiB of
// dynamic shared memory, and two devices. Skips visibly without a GPU.
#include <gtest/gtest.h>

#include <numeric>
#include <string>
#include <vector>

#include "compiler/compiler.h"
#include "compiler/errors.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "runtime/gemm.h"
#include "runtime/module.h"
#include "tests/gemm_reference.h"
#include "tests/gpu_test_util.h"
#include "tests/test_util.h"

namespace lightseq::test {
namespace {

ProgramSource test_program() {
  ProgramSource p;
  p.name = "gpu_runtime_test";
  p.source = R"(
namespace lightseq::kern {
template <typename T>
__global__ void axpb_kernel(T* y, const T* x, T a, T b, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + b;
}
// Fills dynamic shared memory, then writes it back reversed: needs n·sizeof(T) bytes of it.
template <typename T>
__global__ void reverse_smem_kernel(T* y, int n) {
  extern __shared__ unsigned char smem_raw[];
  T* s = reinterpret_cast<T*>(smem_raw);
  for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = T(i);
  __syncthreads();
  for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = s[n - 1 - i];
}
}  // namespace lightseq::kern
)";
  p.labels = {"axpb:f32", "reverse_smem:f32"};
  p.name_expressions = {"&lightseq::kern::axpb_kernel<float>",
                        "&lightseq::kern::reverse_smem_kernel<float>"};
  return p;
}

std::string device_arch_string(int device) { return "sm_" + std::to_string(device_arch(device)); }

// Hand-written PTX for the driver JIT: out[threadIdx.x] = value.
constexpr const char* kFillPtx = R"(.version 7.0
.target sm_70
.address_size 64

.visible .entry fill_kernel(
	.param .u64 fill_kernel_param_0,
	.param .u32 fill_kernel_param_1
)
{
	.reg .b32 	%r<3>;
	.reg .b64 	%rd<5>;

	ld.param.u64 	%rd1, [fill_kernel_param_0];
	ld.param.u32 	%r1, [fill_kernel_param_1];
	cvta.to.global.u64 	%rd2, %rd1;
	mov.u32 	%r2, %tid.x;
	mul.wide.u32 	%rd3, %r2, 4;
	add.s64 	%rd4, %rd2, %rd3;
	st.global.u32 	[%rd4], %r1;
	ret;
}
)";

CacheEntry ptx_entry(std::string ptx, const std::string& program) {
  CacheEntry e;
  e.program = program;
  e.arch = "sm_70";
  e.is_ptx = true;
  e.labels = {"fill:u32"};
  e.lowered_names = {"fill_kernel"};
  e.image.assign(ptx.begin(), ptx.end());
  e.image.push_back('\0');
  return e;
}

using GpuRuntime = GpuTest;

TEST_F(GpuRuntime, ScopedContextRestoresThePreviousContext) {
  CUcontext outer = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuCtxGetCurrent(&outer));  // device 0's, from the fixture
  LIGHTSEQ_CU_CHECK(driver().cuCtxSetCurrent(nullptr));
  {
    ScopedContext scoped(0);
    CUcontext now = nullptr;
    LIGHTSEQ_CU_CHECK(driver().cuCtxGetCurrent(&now));
    EXPECT_EQ(now, scoped.context());
    EXPECT_EQ(now, outer) << "the primary context is the one the runtime API uses";
    EXPECT_EQ(context_device(now), 0);
  }
  CUcontext after = nullptr;
  LIGHTSEQ_CU_CHECK(driver().cuCtxGetCurrent(&after));
  EXPECT_EQ(after, nullptr);
  LIGHTSEQ_CU_CHECK(driver().cuCtxSetCurrent(outer));
  EXPECT_EQ(stream_context(stream_), outer);
  EXPECT_GE(device_arch(0), 70);
  EXPECT_FALSE(device_name(0).empty());
  EXPECT_EQ(no_gpu_reason(), "");
}

// The target the runtime compiles for: jit_target of the device, or LIGHTSEQ_ARCH when it names
// the device's own compute capability; junk or another GPU's arch is an error naming the variable.
TEST_F(GpuRuntime, TheDeviceTargetIsTheJitTargetOrLightseqArch) {
  const int arch = device_arch(0);
  {
    test::ScopedEnv unset("LIGHTSEQ_ARCH", std::nullopt);
    EXPECT_EQ(device_target(0), jit_target(arch));
  }
  {
    test::ScopedEnv plain("LIGHTSEQ_ARCH", "sm_" + std::to_string(arch));
    EXPECT_EQ(device_target(0), "sm_" + std::to_string(arch));
  }
  for (const std::string bad :
       {std::string("junk"), "sm_" + std::to_string(arch == 80 ? 90 : 80)}) {
    test::ScopedEnv env("LIGHTSEQ_ARCH", bad);
    try {
      device_target(0);
      ADD_FAILURE() << bad << " accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("LIGHTSEQ_ARCH='" + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

TEST_F(GpuRuntime, AllocatorRoundTrip) {
  for (const size_t bytes : {size_t{1} << 20, size_t{1000003}, size_t{1}}) {
    std::vector<uint8_t> pattern(bytes);
    std::iota(pattern.begin(), pattern.end(), static_cast<uint8_t>(seed_));
    DeviceBuffer buffer = upload_bytes(pattern.data(), bytes);
    EXPECT_EQ(buffer.device_ptr() % 256, 0u);
    std::vector<uint8_t> back(bytes, 0);
    download_bytes(buffer, back.data(), bytes);
    EXPECT_EQ(back, pattern) << bytes << " bytes";
  }
  EXPECT_EQ(allocator_->allocate(0, stream_), nullptr);
  allocator_->deallocate(nullptr, 0, stream_);

  DeviceBuffer a(*allocator_, 4096, stream_);
  void* const ptr = a.get();
  DeviceBuffer b(std::move(a));
  EXPECT_EQ(a.get(), nullptr);
  EXPECT_EQ(b.get(), ptr);
  EXPECT_EQ(b.bytes(), 4096u);
  DeviceBuffer c(*allocator_, 128, stream_);
  c = std::move(b);  // frees c's own 128 bytes
  EXPECT_EQ(c.get(), ptr);
  c.reset();
  EXPECT_FALSE(c);
  sync();
}

TEST_F(GpuRuntime, AllocationFailureNamesTheByteCount) {
  const size_t huge = size_t{1} << 50;  // 1 PiB
  try {
    DeviceBuffer buffer(*allocator_, huge, stream_);
    FAIL() << "1 PiB was allocated";
  } catch (const CudaError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("1125899906842624 bytes"), std::string::npos) << message;
    EXPECT_NE(message.find("cuMemAllocAsync"), std::string::npos) << message;
  }
}

TEST_F(GpuRuntime, ModuleLoadsAndLaunchesAnNvrtcKernel) {
  const ProgramSource source = test_program();
  const CompiledProgram compiled = compile_program(source, device_arch_string(0));
  KernelModule module(to_cache_entry(source, compiled), 0);
  EXPECT_EQ(module.labels(), source.labels);
  EXPECT_TRUE(module.contains("axpb:f32"));

  const int n = 1000;
  std::vector<float> x(n);
  std::iota(x.begin(), x.end(), -500.0f);
  DeviceBuffer dx = upload_bytes(x.data(), n * sizeof(float));
  DeviceBuffer dy(*allocator_, n * sizeof(float), stream_);
  LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(dy.device_ptr(), 0xFF, dy.bytes(), stream_));
  CUdeviceptr y_ptr = dy.device_ptr(), x_ptr = dx.device_ptr();
  float a = 2.0f, b = 0.5f;
  int count = n;
  void* args[] = {&y_ptr, &x_ptr, &a, &b, &count};
  launch(module.function("axpb:f32"), Dim3{(n + 127) / 128}, Dim3{128}, 0, stream_, args,
         "axpb:f32");
  std::vector<float> y(n);
  download_bytes(dy, y.data(), n * sizeof(float));
  for (int i = 0; i < n; ++i) ASSERT_EQ(y[i], 2.0f * x[i] + 0.5f) << "element " << i;

  // 64 KiB of dynamic shared memory: above the 48 KiB default, so launch() opts the kernel in.
  const int m = 16384;
  DeviceBuffer dr(*allocator_, m * sizeof(float), stream_);
  CUdeviceptr r_ptr = dr.device_ptr();
  int rm = m;
  void* rargs[] = {&r_ptr, &rm};
  launch(module.function("reverse_smem:f32"), Dim3{1}, Dim3{256}, m * sizeof(float), stream_, rargs,
         "reverse_smem:f32");
  std::vector<float> r(m);
  download_bytes(dr, r.data(), m * sizeof(float));
  for (int i = 0; i < m; ++i) ASSERT_EQ(r[i], static_cast<float>(m - 1 - i)) << "element " << i;

  EXPECT_THROW(launch(module.function("axpb:f32"), Dim3{0}, Dim3{128}, 0, stream_, args),
               CudaError);
}

TEST_F(GpuRuntime, MissingLabelListsTheModulesKernels) {
  const ProgramSource source = test_program();
  KernelModule module(to_cache_entry(source, compile_program(source, device_arch_string(0))), 0);
  try {
    module.function("layernorm_fwd:bf16:h=512");
    FAIL() << "an absent label was found";
  } catch (const CudaError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("'layernorm_fwd:bf16:h=512'"), std::string::npos) << message;
    EXPECT_NE(message.find("axpb:f32, reverse_smem:f32"), std::string::npos) << message;
  }
}

TEST_F(GpuRuntime, LoadsPtxThroughTheDriverJit) {
  KernelModule module(ptx_entry(kFillPtx, "fill_ptx"), 0);
  DeviceBuffer out(*allocator_, 32 * sizeof(uint32_t), stream_);
  CUdeviceptr ptr = out.device_ptr();
  uint32_t value = 0xC0FFEEu;
  void* args[] = {&ptr, &value};
  launch(module.function("fill:u32"), Dim3{1}, Dim3{32}, 0, stream_, args, "fill:u32");
  std::vector<uint32_t> got(32);
  download_bytes(out, got.data(), got.size() * sizeof(uint32_t));
  EXPECT_EQ(got, std::vector<uint32_t>(32, value));
}

TEST_F(GpuRuntime, BrokenPtxReportsTheJitLog) {
  std::string broken = kFillPtx;
  broken.replace(broken.find("st.global.u32"), 13, "st.global.bogus");
  try {
    KernelModule module(ptx_entry(broken, "broken_ptx"), 0);
    FAIL() << "broken PTX loaded";
  } catch (const CudaError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("program 'broken_ptx'"), std::string::npos) << message;
    EXPECT_NE(message.find("JIT error log"), std::string::npos) << message;
    EXPECT_NE(message.find("bogus"), std::string::npos) << message;
  }
}

TEST_F(GpuRuntime, CubinOfAnotherArchIsRefusedNamingBothArchs) {
  const int arch = device_arch(0);
  const std::string other = arch / 10 == 8 ? "sm_90" : "sm_80";  // another major: no SASS match
  const ProgramSource source = test_program();
  const CompiledProgram compiled = compile_program(source, other);
  ASSERT_FALSE(compiled.is_ptx);
  try {
    KernelModule module(to_cache_entry(source, compiled), 0);
    FAIL() << other << " cubin loaded on sm_" << arch;
  } catch (const CudaError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find(other + " cubin"), std::string::npos) << message;
    EXPECT_NE(message.find("sm_" + std::to_string(arch)), std::string::npos) << message;
  }
}

TEST_F(GpuRuntime, MalformedEntriesAreInternalErrors) {
  CacheEntry e = ptx_entry(kFillPtx, "no_nul");
  e.image.pop_back();
  EXPECT_THROW(KernelModule(e, 0), InternalError);
  e = ptx_entry(kFillPtx, "lengths");
  e.lowered_names.clear();
  EXPECT_THROW(KernelModule(e, 0), InternalError);
}

// Two devices in one process: one GemmRunner, a module per device, each device's stream used
// while the other device's context is current.
TEST(GpuMultiDevice, TwoDevicesInOneProcess) {
  LIGHTSEQ_SKIP_WITHOUT_GPU();
  if (device_count() < 2) GTEST_SKIP() << "needs 2 GPUs, found " << device_count();
  const uint64_t seed = test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  GemmRunner runner;
  const ProgramSource source = test_program();
  for (int dev = 0; dev < 2; ++dev) {
    const int other = 1 - dev;
    SCOPED_TRACE("device " + std::to_string(dev));
    // Holds the device's primary context for the whole iteration: the ScopedContexts below each
    // release their reference, and a primary context whose count drops to zero is destroyed with
    // its streams (the stream then dangles: cuMemAllocAsync crashed on it).
    PrimaryContext hold(dev);
    CUstream stream = nullptr;
    {
      ScopedContext c(dev);
      LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    }
    ScopedContext wrong(other);  // the other device is current: the runtime must switch
    StreamOrderedAllocator alloc(dev);
    KernelModule module(to_cache_entry(source, compile_program(source, device_arch_string(dev))),
                        dev);
    {
      const GemmCase cs{
          Precision::kFp16, Epilogue::kBias, Transpose::kNo, Transpose::kYes, 77, 64, 128};
      const HostProblem p = make_problem(cs, rng);
      const Reference ref = reference(p);
      auto up = [&](const std::vector<uint8_t>& bytes) {
        DeviceBuffer buf(alloc, bytes.size(), stream);
        ScopedContext c(dev);  // test-side copies run in the stream's context
        LIGHTSEQ_CU_CHECK(
            driver().cuMemcpyHtoDAsync(buf.device_ptr(), bytes.data(), bytes.size(), stream));
        return buf;
      };
      DeviceBuffer a = up(p.a.bytes()), b = up(p.b.bytes()), d = up(p.d.bytes()),
                   bias = up(p.bias.bytes());
      GemmArgs g;
      g.dtype = cs.dtype;
      g.trans_b = Transpose::kYes;
      g.m = cs.m;
      g.n = cs.n;
      g.k = cs.k;
      g.a = a.get();
      g.lda = p.lda;
      g.b = b.get();
      g.ldb = p.ldb;
      g.d = d.get();
      g.ldd = p.ldd;
      g.epilogue = Epilogue::kBias;
      g.bias = bias.get();
      runner.run(g, stream, alloc);
      HostArray out(cs.dtype, p.d.size());
      {
        ScopedContext c(dev);
        LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(out.bytes().data(), d.device_ptr(),
                                                     out.bytes().size(), stream));
        LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
      }
      std::vector<double> got(ref.d.size());
      for (int64_t i = 0; i < cs.m; ++i) {
        for (int64_t j = 0; j < cs.n; ++j) got[i * cs.n + j] = out.get(p.d_index(0, i, j));
      }
      EXPECT_TRUE(within(compare(got, ref.d), tolerance(cs.dtype), "D"));
    }
    {
      const int n = 256;
      std::vector<float> x(n, 1.0f);
      DeviceBuffer dx(alloc, n * sizeof(float), stream), dy(alloc, n * sizeof(float), stream);
      {
        ScopedContext c(dev);
        LIGHTSEQ_CU_CHECK(
            driver().cuMemcpyHtoDAsync(dx.device_ptr(), x.data(), n * sizeof(float), stream));
      }
      CUdeviceptr y_ptr = dy.device_ptr(), x_ptr = dx.device_ptr();
      float a = 3.0f, b = static_cast<float>(dev);
      int count = n;
      void* args[] = {&y_ptr, &x_ptr, &a, &b, &count};
      launch(module.function("axpb:f32"), Dim3{1}, Dim3{256}, 0, stream, args, "axpb:f32");
      std::vector<float> y(n);
      {
        ScopedContext c(dev);
        LIGHTSEQ_CU_CHECK(
            driver().cuMemcpyDtoHAsync(y.data(), dy.device_ptr(), n * sizeof(float), stream));
        LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
      }
      EXPECT_EQ(y, std::vector<float>(n, 3.0f + dev));
    }
    ScopedContext c(dev);
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream));
    LIGHTSEQ_CU_CHECK(driver().cuStreamDestroy(stream));
  }
}

}  // namespace
}  // namespace lightseq::test
