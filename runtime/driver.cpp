#include "runtime/driver.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include "compiler/errors.h"

namespace lightseq {
namespace {

// The symbol name cuda.h maps `name` to (cuMemcpyHtoDAsync -> "cuMemcpyHtoDAsync_v2").
#define LIGHTSEQ_STRINGIFY_EXPANDED(name) LIGHTSEQ_STRINGIFY(name)
#define LIGHTSEQ_STRINGIFY(name) #name

struct LoadedDriver {
  DriverApi api;
  bool library_ok = false;  // libcuda.so.1 loaded and every symbol found
  bool init_ok = false;     // cuInit(0) succeeded
  std::string error;        // why not, when either is false
};

// The library handle is never closed: the driver stays loaded for the life of the process, as it
// would if it were linked.
LoadedDriver load_driver() {
  LoadedDriver out;
  constexpr const char* kLibrary = "libcuda.so.1";
  void* handle = ::dlopen(kLibrary, RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = ::dlerror();
    out.error = fmt::format("{} could not be loaded ({}): no NVIDIA driver is installed", kLibrary,
                            why != nullptr ? why : "unknown dlopen error");
    return out;
  }
  std::string missing;
#define LIGHTSEQ_RESOLVE(name)                                         \
  {                                                                    \
    void* symbol = ::dlsym(handle, LIGHTSEQ_STRINGIFY_EXPANDED(name)); \
    if (symbol == nullptr) {                                           \
      missing += missing.empty() ? "" : ", ";                          \
      missing += LIGHTSEQ_STRINGIFY_EXPANDED(name);                    \
    }                                                                  \
    out.api.name = reinterpret_cast<decltype(out.api.name)>(symbol);   \
  }
  LIGHTSEQ_DRIVER_FUNCTIONS(LIGHTSEQ_RESOLVE)
#undef LIGHTSEQ_RESOLVE
  if (!missing.empty()) {
    int version = 0;
    if (out.api.cuDriverGetVersion != nullptr) out.api.cuDriverGetVersion(&version);
    out.error = fmt::format(
        "{} (driver API version {}.{}) lacks {}: the NVIDIA driver is older than the CUDA {}.{} "
        "toolkit lightseq was built with; update the driver",
        kLibrary, version / 1000, (version % 1000) / 10, missing, CUDA_VERSION / 1000,
        (CUDA_VERSION % 1000) / 10);
    return out;
  }
  out.library_ok = true;
  const CUresult init = out.api.cuInit(0);
  if (init != CUDA_SUCCESS) {
    const char* name = nullptr;
    const char* text = nullptr;
    if (out.api.cuGetErrorName(init, &name) != CUDA_SUCCESS) name = nullptr;
    if (out.api.cuGetErrorString(init, &text) != CUDA_SUCCESS) text = nullptr;
    out.error = fmt::format("cuInit failed: {} ({})",
                            name != nullptr ? name : fmt::format("CUresult {}", int(init)),
                            text != nullptr ? text : "no description");
    return out;
  }
  out.init_ok = true;
  return out;
}

const LoadedDriver& loaded() {
  static const LoadedDriver driver = load_driver();  // thread-safe, once per process
  return driver;
}

}  // namespace

const DriverApi& driver() {
  const LoadedDriver& d = loaded();
  if (!d.init_ok) throw CudaError("the CUDA driver is unavailable: " + d.error);
  return d.api;
}

const DriverApi* driver_library() noexcept {
  try {
    const LoadedDriver& d = loaded();
    return d.library_ok ? &d.api : nullptr;
  } catch (...) {  // fmt or allocation failure while loading: treat as "no driver"
    return nullptr;
  }
}

std::string driver_unavailable_reason() {
  try {
    const LoadedDriver& d = loaded();
    return d.init_ok ? std::string() : d.error;
  } catch (const std::exception& e) {
    return std::string("loading the CUDA driver failed: ") + e.what();
  }
}

}  // namespace lightseq
