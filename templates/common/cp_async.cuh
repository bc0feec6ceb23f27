// cp_async.cuh — asynchronous copies from global into shared memory (cp.async, sm_80 and later):
// a copy of 4, 8 or 16 bytes (zero-filled when out of range), its commit groups and their waits.
// Device code only; NVRTC compiles it with the kernels that stage rows or tiles in shared memory.
#pragma once

#include "common/types.cuh"

namespace lightseq::kern {

// A shared-memory address as the 32-bit operand of ldmatrix / cp.async.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// kBytes (4, 8 or 16) from src to smem, both kBytes-aligned, or kBytes zeros when !in (src is then
// not read but must still be a valid address). 16-byte copies bypass L1 (.cg), smaller ones
// cannot (.ca). The caller commits the group and waits for it before reading.
template <int kBytes>
__device__ __forceinline__ void cp_async(void* smem, const void* src, bool in) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(src),
                 "r"(in ? 16 : 0));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(smem)), "l"(src),
                 "n"(kBytes), "r"(in ? kBytes : 0));
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
// Waits until at most kPending of this thread's most recent groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace lightseq::kern
