#include "tests/gpu_harness.h"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "compiler/codegen/program.h"
#include "compiler/compiler.h"
#include "compiler/errors.h"
#include "compiler/nvrtc/nvrtc_compiler.h"
#include "compiler/parallel.h"
#include "runtime/cuda_check.h"
#include "runtime/driver.h"
#include "runtime/module.h"

namespace lightseq::kernel_test {

namespace {

// Instances per NVRTC program: small programs spread the compile over every core.
constexpr size_t kKernelsPerProgram = 4;

struct Registry {
  std::mutex mutex;
  std::map<std::string, CUfunction> functions;         // by label
  std::map<std::string, std::exception_ptr> failures;  // by label
  std::vector<std::unique_ptr<KernelModule>> modules;  // kept loaded for the process
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: modules outlive every test
  return *r;
}

}  // namespace

std::string gpu_unavailable() {
  static const std::string reason = device_count() > 0 ? std::string() : no_gpu_reason();
  return reason;
}

std::string precision_name(Precision p) { return std::string(to_string(p)); }

// The enum's own labels ("padding+causal"), spelled for a test name.
std::string mask_name(kern::Mask m) {
  std::string label = kern::sig::kMaskInfo.labels[static_cast<int>(m)];
  if (label == "none") return "nomask";
  std::replace(label.begin(), label.end(), '+', '_');
  return label;
}

void prepare_kernels(const std::vector<KernelInstance>& kernels) {
  if (!gpu_unavailable().empty()) return;
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);

  // Missing instances, grouped by (family, precision), in chunks.
  std::map<std::pair<std::string, Precision>, std::vector<KernelInstance>> groups;
  std::map<std::string, bool> seen;
  for (const KernelInstance& k : kernels) {
    if (reg.functions.count(k.label) || reg.failures.count(k.label) || seen[k.label]) continue;
    seen[k.label] = true;
    groups[{k.family, k.precision}].push_back(k);
  }
  // One program per chunk of a group, or several where the family's kernels own their programs
  // (sig::Program::kOwn); generating sources is cheap, compiling them runs in parallel.
  std::vector<ProgramSource> sources;
  for (auto& [key, members] : groups) {
    for (size_t i = 0; i < members.size(); i += kKernelsPerProgram) {
      const std::vector<KernelInstance> chunk(
          members.begin() + i, members.begin() + std::min(members.size(), i + kKernelsPerProgram));
      try {
        for (ProgramSource& p : codegen::generate_programs(chunk, key.second))
          sources.push_back(std::move(p));
      } catch (...) {
        for (const KernelInstance& k : chunk) reg.failures[k.label] = std::current_exception();
      }
    }
  }
  if (sources.empty()) return;

  const std::string arch = device_target(0);
  std::vector<CompiledProgram> compiled(sources.size());
  std::vector<std::exception_ptr> errors(sources.size());
  parallel_for(sources.size(), 0, [&](size_t i) {
    try {
      compiled[i] = compile_program(sources[i], arch);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  });

  for (size_t i = 0; i < sources.size(); ++i) {
    if (!errors[i]) {
      try {
        const CacheEntry entry = to_cache_entry(sources[i], std::move(compiled[i]));
        auto module = std::make_unique<KernelModule>(entry, 0);
        for (const std::string& label : entry.labels)
          reg.functions[label] = module->function(label);
        reg.modules.push_back(std::move(module));
        continue;
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    for (const std::string& label : sources[i].labels) reg.failures[label] = errors[i];
  }
}

CUfunction kernel_function(const KernelInstance& kernel) {
  prepare_kernels({kernel});
  Registry& reg = registry();
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (auto it = reg.functions.find(kernel.label); it != reg.functions.end()) return it->second;
  if (auto it = reg.failures.find(kernel.label); it != reg.failures.end()) {
    try {
      std::rethrow_exception(it->second);
    } catch (const CompileError& e) {
      throw Error(fmt::format("kernel {} did not compile: {}\nNVRTC log:\n{}", kernel.label,
                              e.what(), e.details().log));
    } catch (const std::exception& e) {
      throw Error(fmt::format("kernel {} is unavailable: {}", kernel.label, e.what()));
    }
  }
  throw InternalError("gpu_harness: kernel " + kernel.label + " was neither loaded nor failed");
}

// ---- fixture ----------------------------------------------------------------------------------

void GpuKernelTest::SetUp() {
  LIGHTSEQ_KERNEL_TEST_REQUIRE_GPU();
  context_.emplace(0);
  allocator_.emplace(0);
  LIGHTSEQ_CU_CHECK(driver().cuStreamCreate(&stream_, CU_STREAM_NON_BLOCKING));
  seed_ = ref::test_seed();
  rng_.emplace(seed_);
  trace_.emplace(__FILE__, __LINE__, ref::seed_note(seed_));
}

void GpuKernelTest::TearDown() {
  trace_.reset();
  if (stream_ != nullptr) {
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
    LIGHTSEQ_CU_CHECK(driver().cuStreamDestroy(stream_));
    stream_ = nullptr;
  }
}

Vec GpuKernelTest::random(Precision p, size_t n, double lo, double hi) {
  Vec v = rng_->uniform_vec(n, lo, hi);
  ref::round_in_place(p, v);
  return v;
}

DeviceArray GpuKernelTest::upload_raw(const void* data, size_t n, size_t elem_bytes) {
  DeviceArray a{DeviceBuffer(*allocator_, n * elem_bytes, stream_), n, elem_bytes, std::nullopt};
  if (a.bytes() > 0) {
    LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(a.ptr(), data, a.bytes(), stream_));
    LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
  }
  return a;
}

DeviceArray GpuKernelTest::upload(Precision p, const Vec& values) {
  const std::vector<uint8_t> bytes = ref::encode(p, values);
  DeviceArray a = upload_raw(bytes.data(), values.size(), ref::dtype_bytes(p));
  a.dtype = p;
  return a;
}

DeviceArray GpuKernelTest::poisoned(Precision p, size_t n) {
  DeviceArray a{DeviceBuffer(*allocator_, n * ref::dtype_bytes(p), stream_), n,
                static_cast<size_t>(ref::dtype_bytes(p)), p};
  poison(a);
  return a;
}

DeviceArray GpuKernelTest::zeroed_raw(size_t n, size_t elem_bytes) {
  DeviceArray a{DeviceBuffer(*allocator_, n * elem_bytes, stream_), n, elem_bytes, std::nullopt};
  fill_zero(a);
  return a;
}

void GpuKernelTest::poison(DeviceArray& a) {
  if (a.bytes() == 0) return;
  LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(a.ptr(), 0xFF, a.bytes(), stream_));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
}

void GpuKernelTest::fill_zero(DeviceArray& a) {
  if (a.bytes() == 0) return;
  LIGHTSEQ_CU_CHECK(driver().cuMemsetD8Async(a.ptr(), 0, a.bytes(), stream_));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
}

void GpuKernelTest::write(DeviceArray& a, const Vec& values) {
  if (!a.dtype || values.size() != a.n)
    throw InternalError("gpu_harness: write() size or type mismatch");
  const std::vector<uint8_t> bytes = ref::encode(*a.dtype, values);
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyHtoDAsync(a.ptr(), bytes.data(), bytes.size(), stream_));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
}

void GpuKernelTest::download_into(const DeviceArray& a, void* out) {
  if (a.bytes() == 0) return;
  LIGHTSEQ_CU_CHECK(driver().cuMemcpyDtoHAsync(out, a.ptr(), a.bytes(), stream_));
  LIGHTSEQ_CU_CHECK(driver().cuStreamSynchronize(stream_));
}

std::vector<uint8_t> GpuKernelTest::download_bytes(const DeviceArray& a) {
  std::vector<uint8_t> b(a.bytes());
  download_into(a, b.data());
  return b;
}

Vec GpuKernelTest::download(const DeviceArray& a) {
  if (!a.dtype) throw InternalError("gpu_harness: download() of a raw array");
  return ref::decode(*a.dtype, download_bytes(a));
}

void GpuKernelTest::launch(const KernelInstance& kernel, kern::GridDim grid, int block,
                           std::vector<void*> args) {
  launch(kernel, grid, block, 0, std::move(args));
}

void GpuKernelTest::launch(const KernelInstance& kernel, kern::GridDim grid, int block,
                           int smem_bytes, std::vector<void*> args) {
  CUfunction f = kernel_function(kernel);
  lightseq::launch(f, Dim3{grid.x, grid.y, grid.z}, Dim3{static_cast<unsigned>(block), 1, 1},
                   static_cast<size_t>(smem_bytes), stream_, args.data(), kernel.label);
  LIGHTSEQ_CU_CHECK_MSG(driver().cuStreamSynchronize(stream_),
                        fmt::format("running {} (grid {}x{}x{}, block {})", kernel.label, grid.x,
                                    grid.y, grid.z, block));
}

}  // namespace lightseq::kernel_test

// A crashing test (SIGSEGV, SIGBUS, SIGABRT) prints its native backtrace before dying, so that a
// crash on the GPU machine (no debugger there) can be located from the log:
// `addr2line -f -C -e lightseq_tests <offset>` maps the frames.
#include <execinfo.h>
#include <unistd.h>

#include <csignal>

namespace {
void print_backtrace_and_die(int sig) {
  void* frames[64];
  const int n = backtrace(frames, 64);
  const char msg[] = "\nlightseq_tests: fatal signal; native backtrace:\n";
  (void)!write(2, msg, sizeof msg - 1);
  backtrace_symbols_fd(frames, n, 2);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
const bool crash_handler_installed = [] {
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT}) std::signal(sig, print_backtrace_and_die);
  return true;
}();
}  // namespace
