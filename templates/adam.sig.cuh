// adam.sig.cuh — adam.cuh's traits and signatures: multi-tensor Adam / AdamW and the finite-gradient check.
// Traits: the family's launch formulas as __host__ __device__ constexpr functions, which the
// kernels and the runtime share. Signatures (host-only, common/signature.cuh): each kernel's
// template and run-time parameters with their roles, its launch shape and its scratch extents,
// declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/launch.cuh"
#include "common/enums.cuh"

namespace lightseq::kern {

// ---- adam.cuh ----------------------------------------------------------------------------------
// One block per chunk. The runtime splits tensors into chunks of at most kAdamChunkElems elements
// (a multiple of 4 keeps 16-byte alignment; unaligned chunks take the scalar path).
inline constexpr int64_t kAdamChunkElems = 65536;
LIGHTSEQ_HD constexpr int adam_block() { return 256; }
LIGHTSEQ_HD constexpr GridDim adam_grid(int64_t n_chunks) { return grid_1d(n_chunks); }
LIGHTSEQ_HD constexpr int check_finite_block() { return 256; }
LIGHTSEQ_HD constexpr GridDim check_finite_grid(int64_t n_chunks) { return grid_1d(n_chunks); }

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace adam_step {
inline constexpr TParam kT[] = {kDTypeParam, enum_param("kMode", "mode", kAdamModeInfo)};
inline constexpr Param kP[] = {{"chunks", Role::kTensorList, CType::kConstAdamChunkPtr},
                               scalar("n_chunks", CType::kI32),
                               scalar("args", CType::kAdamArgs)};
inline Launch launch(const Values& v) {
  return {adam_grid(v.i[index_of(kP, "n_chunks")]), adam_block(), 0};
}
}  // namespace adam_step
inline constexpr Kernel kAdam = make_kernel("adam", "adam_kernel", adam_step::kT, adam_step::kP, &adam_step::launch);

namespace check_finite {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {{"chunks", Role::kTensorList, CType::kConstAdamChunkPtr},
                               scalar("n_chunks", CType::kI32), error_flag("found_inf")};
inline Launch launch(const Values& v) {
  return {check_finite_grid(v.i[index_of(kP, "n_chunks")]), check_finite_block(), 0};
}
}  // namespace check_finite
inline constexpr Kernel kCheckFinite = make_kernel("adam", "check_finite_kernel", check_finite::kT,
                                                   check_finite::kP, &check_finite::launch);

namespace adam {
inline constexpr const Kernel* kKernels[] = {&kAdam, &kCheckFinite};
}

}  // namespace lightseq::kern::sig
#endif
