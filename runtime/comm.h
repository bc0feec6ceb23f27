// comm.h — a group of processes, one GPU each, that sum gradients through NCCL.
//
//   CommId id = rank == 0 ? Communicator::new_id() : <rank 0's id, received somehow>;
//   auto comm = std::make_shared<Communicator>(id, rank, world, device);  // collective
//   TrainStep step(model, {.comm = comm});  // the step then all-reduces its gradients
//
// How the id travels is the front end's business: `lsc train` sends it over TCP
// (frontends/lsc/rendezvous.h, torchrun's MASTER_ADDR/MASTER_PORT), Python through
// torch.distributed. NCCL is loaded on first use (runtime/nccl_loader.cpp): a build or a process
// that never makes a group never needs it. NVLink multicast (NVLS) is never enabled: a
// Communicator sets NCCL_NVLS_ENABLE=0 unless the environment already says otherwise.
#pragma once

#include <cuda.h>

#include <array>
#include <cstddef>
#include <string>

#include "compiler/spec/model_spec.h"

namespace lightseq {

// The bytes of an ncclUniqueId: what rank 0 hands every other rank before they meet.
struct CommId {
  static constexpr size_t kBytes = 128;  // NCCL_UNIQUE_ID_BYTES (static_assert in comm.cpp)
  std::array<char, kBytes> bytes{};
};

// What a process group computes with.
enum class CommType { kF32, kF64, kF16, kBf16 };
CommType comm_type(Precision p);

class Communicator {
 public:
  // Whether NCCL can be used here: "" when it can, else why not (built without nccl.h, or the
  // library could not be loaded) and how to fix it. Never throws.
  static std::string unavailable_reason();
  // A fresh id (rank 0). Throws CudaError when NCCL is unavailable or fails.
  static CommId new_id();

  // Joins the group `id` as `rank` of `world` on device ordinal `device`: collective (returns
  // once every rank has joined). Throws Error for a rank outside [0, world), CudaError when NCCL
  // fails (the message names the rank and NCCL's last error).
  Communicator(const CommId& id, int rank, int world, int device);
  ~Communicator();  // destroys the communicator (aborts it after an asynchronous error)
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int world() const { return world_; }
  int device() const { return device_; }

  // out[i] = Σ over ranks of in[i], i < count, enqueued on `stream` (in == out: in place).
  // Capturable into a CUDA graph. Every rank must call it in the same order with the same count.
  void all_reduce_sum(const void* in, void* out, size_t count, CommType type,
                      CUstream stream) const;
  // The same for host values: copies through a device buffer and synchronizes.
  void all_reduce_host(double* values, size_t count) const;
  // Throws CudaError when NCCL reported an asynchronous error (a peer died, a network fault).
  void check() const;

 private:
  void* comm_ = nullptr;  // ncclComm_t
  int rank_ = 0, world_ = 1, device_ = 0;
};

}  // namespace lightseq
