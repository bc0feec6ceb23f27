// nccl_loader.cpp — NCCL, loaded on first use (dlopen libnccl.so.2) instead of linked, like
// cuBLASLt (runtime/cublaslt_loader.cpp): only a process that makes a group (runtime/comm.h) needs
// the library, and a build needs only its header.
//
// Where it is looked for: LIGHTSEQ_NCCL_LIBRARY (a path), then the loader's search path
// (LD_LIBRARY_PATH; a process that imported torch already has torch's copy, found by its soname),
// then the library CMake found at configure time (the toolkit's, or the nvidia-nccl wheel's).
// The functions comm.cpp calls are defined here with NCCL's own names and signatures, hidden
// (-fvisibility=hidden), so they never interpose on another NCCL in the process.
#if LIGHTSEQ_HAVE_NCCL
#include "runtime/nccl_loader.h"

#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <string>

#include "compiler/errors.h"

namespace lightseq {
namespace {

struct Loaded {
  void* handle = nullptr;
  std::string why;  // when handle is null
};

const Loaded& loaded() {
  static const Loaded l = [] {
    Loaded r;
    std::string tried;
    auto attempt = [&](const std::string& name) {
      if (r.handle || name.empty()) return;
      r.handle = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!r.handle) {
        const char* why = ::dlerror();
        tried += "\n  " + name + ": " + (why ? why : "unknown dlopen error");
      }
    };
    if (const char* path = std::getenv("LIGHTSEQ_NCCL_LIBRARY")) attempt(path);
    attempt("libnccl.so.2");
#ifdef LIGHTSEQ_NCCL_LIBRARY
    attempt(LIGHTSEQ_NCCL_LIBRARY);
#endif
    if (!r.handle) {
      r.why = "NCCL could not be loaded; tried:" + tried +
              "\nset LIGHTSEQ_NCCL_LIBRARY to libnccl.so.2's path or add its directory to "
              "LD_LIBRARY_PATH (the CUDA Toolkit's, or `pip install nvidia-nccl-cu13`)";
    }
    return r;
  }();
  return l;
}

template <typename Fn>
Fn* resolve(const char* name) {
  const Loaded& l = loaded();
  if (!l.handle) throw CudaError(l.why);
  void* symbol = ::dlsym(l.handle, name);
  if (!symbol) {
    throw CudaError(std::string("NCCL has no symbol ") + name +
                    " (a libnccl older than the nccl.h lightseq was built with?)");
  }
  return reinterpret_cast<Fn*>(symbol);
}

}  // namespace

std::string nccl_load_error() noexcept {
  try {
    return loaded().why;
  } catch (...) {
    return "NCCL could not be loaded";
  }
}

}  // namespace lightseq

#define LIGHTSEQ_NCCL_FORWARD(ret, name, params, args)                                \
  extern "C" ret name params {                                                        \
    static decltype(::name)* const fn = ::lightseq::resolve<decltype(::name)>(#name); \
    return fn args;                                                                   \
  }

LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclGetVersion, (int* version), (version))
LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclGetUniqueId, (ncclUniqueId * id), (id))
LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclCommInitRank,
                      (ncclComm_t * comm, int nranks, ncclUniqueId id, int rank),
                      (comm, nranks, id, rank))
LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclCommDestroy, (ncclComm_t comm), (comm))
LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclCommAbort, (ncclComm_t comm), (comm))
LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclCommGetAsyncError, (ncclComm_t comm, ncclResult_t* error),
                      (comm, error))
LIGHTSEQ_NCCL_FORWARD(const char*, ncclGetErrorString, (ncclResult_t result), (result))
LIGHTSEQ_NCCL_FORWARD(const char*, ncclGetLastError, (ncclComm_t comm), (comm))
LIGHTSEQ_NCCL_FORWARD(ncclResult_t, ncclAllReduce,
                      (const void* in, void* out, size_t count, ncclDataType_t type, ncclRedOp_t op,
                       ncclComm_t comm, cudaStream_t stream),
                      (in, out, count, type, op, comm, stream))
#endif  // LIGHTSEQ_HAVE_NCCL
