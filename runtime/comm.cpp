// comm.cpp — Communicator over NCCL (runtime/comm.h). Without nccl.h at build time every entry
// point throws, naming why.
#include "runtime/comm.h"

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "compiler/errors.h"
#include "runtime/cuda_check.h"
#include "runtime/device.h"
#include "runtime/driver.h"
#include "runtime/nccl_loader.h"

#if LIGHTSEQ_HAVE_NCCL
#include <nccl.h>
static_assert(lightseq::CommId::kBytes == NCCL_UNIQUE_ID_BYTES);
#endif

namespace lightseq {

CommType comm_type(Precision p) {
  switch (p) {
    case Precision::kFp16:
      return CommType::kF16;
    case Precision::kBf16:
      return CommType::kBf16;
    case Precision::kFp32:
      break;
  }
  return CommType::kF32;
}

#if LIGHTSEQ_HAVE_NCCL
namespace {

ncclComm_t as_comm(void* c) { return static_cast<ncclComm_t>(c); }

ncclDataType_t nccl_type(CommType t) {
  switch (t) {
    case CommType::kF64:
      return ncclFloat64;
    case CommType::kF16:
      return ncclFloat16;
    case CommType::kBf16:
      return ncclBfloat16;
    case CommType::kF32:
      break;
  }
  return ncclFloat32;
}

void nccl_check(ncclResult_t r, const char* what, ncclComm_t comm, int rank) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  const char* last = ncclGetLastError(comm);
  throw CudaError(fmt::format("NCCL {} failed on rank {}: {}{}{}", what, rank,
                              ncclGetErrorString(r), last && *last ? ": " : "", last ? last : ""));
}

}  // namespace

std::string Communicator::unavailable_reason() { return nccl_load_error(); }

CommId Communicator::new_id() {
  if (std::string why = nccl_load_error(); !why.empty()) throw CudaError(why);
  ncclUniqueId id;
  nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr, 0);
  CommId out;
  std::memcpy(out.bytes.data(), id.internal, CommId::kBytes);
  return out;
}

Communicator::Communicator(const CommId& id, int rank, int world, int device)
    : rank_(rank), world_(world), device_(device) {
  if (world < 1 || rank < 0 || rank >= world) {
    throw Error(fmt::format("a process group of {} ranks has no rank {} (ranks are 0..{})", world,
                            rank, world - 1));
  }
  if (std::string why = nccl_load_error(); !why.empty()) throw CudaError(why);
  // NVLink multicast stays off (it can take a shared host's GPUs out of service): unless the
  // caller's environment already decided.
  ::setenv("NCCL_NVLS_ENABLE", "0", /*overwrite=*/0);
  ncclUniqueId nid;
  std::memcpy(nid.internal, id.bytes.data(), CommId::kBytes);
  ScopedContext ctx(device);  // NCCL finds its device through the current context
  ncclComm_t comm = nullptr;
  nccl_check(ncclCommInitRank(&comm, world, nid, rank), "ncclCommInitRank", nullptr, rank);
  comm_ = comm;
}

Communicator::~Communicator() {
  if (!comm_) return;
  ncclResult_t async = ncclSuccess;
  if (ncclCommGetAsyncError(as_comm(comm_), &async) == ncclSuccess && async == ncclSuccess) {
    ncclCommDestroy(as_comm(comm_));
  } else {
    ncclCommAbort(as_comm(comm_));
  }
}

void Communicator::all_reduce_sum(const void* in, void* out, size_t count, CommType type,
                                  CUstream stream) const {
  if (count == 0) return;
  nccl_check(ncclAllReduce(in, out, count, nccl_type(type), ncclSum, as_comm(comm_), stream),
             "ncclAllReduce", as_comm(comm_), rank_);
}

void Communicator::all_reduce_host(double* values, size_t count) const {
  if (count == 0) return;
  ScopedContext ctx(device_);
  const DriverApi& api = driver();
  CUdeviceptr buf = 0;
  CUstream stream = nullptr;
  LIGHTSEQ_CU_CHECK(api.cuMemAlloc(&buf, count * sizeof(double)));
  try {
    LIGHTSEQ_CU_CHECK(api.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING));
    LIGHTSEQ_CU_CHECK(api.cuMemcpyHtoD(buf, values, count * sizeof(double)));
    void* p = reinterpret_cast<void*>(buf);
    all_reduce_sum(p, p, count, CommType::kF64, stream);
    LIGHTSEQ_CU_CHECK(api.cuMemcpyDtoHAsync(values, buf, count * sizeof(double), stream));
    LIGHTSEQ_CU_CHECK(api.cuStreamSynchronize(stream));
    check();
  } catch (...) {
    if (stream) api.cuStreamDestroy(stream);
    api.cuMemFree(buf);
    throw;
  }
  api.cuStreamDestroy(stream);
  api.cuMemFree(buf);
}

void Communicator::check() const {
  ncclResult_t async = ncclSuccess;
  nccl_check(ncclCommGetAsyncError(as_comm(comm_), &async), "ncclCommGetAsyncError", as_comm(comm_),
             rank_);
  nccl_check(async, "(asynchronously: a peer failed or the network broke)", as_comm(comm_), rank_);
}

#else  // built without nccl.h

namespace {
const char* kNoNccl =
    "lightseq was built without NCCL (nccl.h was not found at configure time): install the CUDA "
    "Toolkit's NCCL or `pip install nvidia-nccl-cu13`, then re-run cmake";
}

std::string Communicator::unavailable_reason() { return kNoNccl; }
CommId Communicator::new_id() { throw CudaError(kNoNccl); }
Communicator::Communicator(const CommId&, int rank, int world, int device)
    : rank_(rank), world_(world), device_(device) {
  throw CudaError(kNoNccl);
}
Communicator::~Communicator() = default;
void Communicator::all_reduce_sum(const void*, void*, size_t, CommType, CUstream) const {
  throw CudaError(kNoNccl);
}
void Communicator::all_reduce_host(double*, size_t) const { throw CudaError(kNoNccl); }
void Communicator::check() const {}

#endif

}  // namespace lightseq
