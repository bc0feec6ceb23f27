// mbarrier.cuh — shared-memory barriers with phases (mbarrier, sm_80 and later): a counter of
// expected arrivals that completes a phase when all have arrived and re-arms itself for the next,
// so that producers and consumers of a ring of shared-memory buffers wait on one slot's phase
// instead of the whole block (__syncthreads). Device code only.
//
// Phases: a barrier's k-th completed phase (k = 0, 1, ...) has parity k % 2; wait(bar, parity)
// returns once the phase of that parity most recently due has completed. A slot used for the n-th
// time (n = 0, 1, ...) waits on parity n % 2: its users never let a barrier run two phases ahead of
// a waiter (a slot is refilled only after its previous contents were released).
#pragma once

#include "common/cp_async.cuh"
#include "common/types.cuh"

namespace lightseq::kern {
namespace mbar {

// One thread, before any other touches the barrier; the block synchronizes after it.
__device__ __forceinline__ void init(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// One arrival (release: the caller's earlier shared-memory writes are visible to whoever waits for
// the phase it completes).
__device__ __forceinline__ void arrive(uint64_t* bar) {
  asm volatile(
      "{\n.reg .b64 state;\nmbarrier.arrive.shared.b64 state, [%0];\n}\n" ::"r"(smem_addr(bar))
      : "memory");
}
// Until the phase of `parity` has completed (acquire).
__device__ __forceinline__ void wait(uint64_t* bar, uint32_t parity) {
  uint32_t done = 0;
  do {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, "
        "p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
#else
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.test_wait.parity.shared.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, "
        "p;\n}\n"
        : "=r"(done)
        : "r"(smem_addr(bar)), "r"(parity)
        : "memory");
#endif
  } while (!done);
}

}  // namespace mbar
}  // namespace lightseq::kern
