// adam.sig.cuh — adam.cuh's traits and signatures: multi-tensor Adam / AdamW and the
// finite-gradient check. Traits: the family's launch formulas as __host__ __device__ constexpr
// functions, which the kernels and the runtime share. Signatures (host-only, common/signature.cuh):
// each kernel's template and run-time parameters with their roles, its launch shape and its scratch
// extents, declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

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
#include "common/adam_types.cuh"
#include "common/signature.cuh"

namespace lightseq::kern::sig {

// The runtime packs a chunk as the slot pointers in order, then int64_t n.
static_assert(sizeof(AdamChunk<float>) == 5 * sizeof(void*) + sizeof(int64_t) &&
              offsetof(AdamChunk<float>, n) == 5 * sizeof(void*));

// The chunk table of adam_kernel and check_finite_kernel: AdamChunk<T> (common/adam_types.cuh),
// one entry per piece of at most kAdamChunkElems elements of the tensors bound to the slots.
inline constexpr ListSlot kAdamSlots[] = {{"master", CType::kF32Ptr, Role::kOutAcc, Nullable::kYes},
                                          {"param", CType::kTPtr, Role::kOutAcc},
                                          {"grad", CType::kConstTPtr, Role::kIn},
                                          {"exp_avg", CType::kF32Ptr, Role::kOutAcc},
                                          {"exp_avg_sq", CType::kF32Ptr, Role::kOutAcc}};
inline constexpr TensorList kAdamList{kAdamSlots, 5, kAdamChunkElems};
// check_finite_kernel reads only the gradients of the same table: its slots, derived.
inline constexpr auto kGradSlots = only_reads(kAdamSlots, "grad");
inline constexpr TensorList kGradList{kGradSlots.data(), 5, kAdamChunkElems};

namespace adam_step {
inline constexpr TParam kT[] = {kDTypeParam, enum_param("kMode", "mode", kAdamModeInfo)};
inline constexpr Param kP[] = {tensor_list("chunks", CType::kConstAdamChunkPtr, kAdamList),
                               scalar("n_chunks", CType::kI32),
                               scalar("beta1", CType::kF32),
                               scalar("beta2", CType::kF32),
                               scalar("eps", CType::kF32),
                               scalar("weight_decay", CType::kF32),
                               in("lr", CType::kConstF32Ptr),
                               in("state", CType::kConstOptimStatePtr),
                               in("norm_partials", CType::kConstF32Ptr, Nullable::kYes),
                               scalar("max_norm", CType::kF32)};
inline Launch launch(const Values& v) {
  return {adam_grid(v.i[index_of(kP, "n_chunks")]), adam_block(), 0};
}
}  // namespace adam_step
inline constexpr Kernel kAdam =
    make_kernel("adam", "adam_kernel", adam_step::kT, adam_step::kP, &adam_step::launch);

namespace check_finite {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {tensor_list("chunks", CType::kConstAdamChunkPtr, kGradList),
                               scalar("n_chunks", CType::kI32),
                               out_acc("state", CType::kOptimStatePtr)};
inline Launch launch(const Values& v) {
  return {check_finite_grid(v.i[index_of(kP, "n_chunks")]), check_finite_block(), 0};
}
}  // namespace check_finite
inline constexpr Kernel kCheckFinite = make_kernel("adam", "check_finite_kernel", check_finite::kT,
                                                   check_finite::kP, &check_finite::launch);

namespace grad_norm {
inline Extent partials(const Values& v);
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {tensor_list("chunks", CType::kConstAdamChunkPtr, kGradList),
                               scalar("n_chunks", CType::kI32),
                               scratch("partials", CType::kF32Ptr, &partials, Nullable::kNo)};
inline Extent partials(const Values& v) { return {v.i[index_of(kP, "n_chunks")], 1}; }
inline Launch launch(const Values& v) {
  return {check_finite_grid(v.i[index_of(kP, "n_chunks")]), check_finite_block(), 0};
}
}  // namespace grad_norm
inline constexpr Kernel kGradNorm =
    make_kernel("adam", "grad_norm_kernel", grad_norm::kT, grad_norm::kP, &grad_norm::launch);

namespace optim_finish {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {
    out_acc("state", CType::kOptimStatePtr), scalar("growth_factor", CType::kF32),
    scalar("backoff_factor", CType::kF32), scalar("growth_interval", CType::kI32)};
inline Launch launch(const Values&) { return {grid_1d(1), 32, 0}; }
}  // namespace optim_finish
inline constexpr Kernel kOptimFinish = make_kernel("adam", "optim_finish_kernel", optim_finish::kT,
                                                   optim_finish::kP, &optim_finish::launch);

namespace adam {
inline constexpr const Kernel* kKernels[] = {&kAdam, &kCheckFinite, &kGradNorm, &kOptimFinish};
}

}  // namespace lightseq::kern::sig
#endif
