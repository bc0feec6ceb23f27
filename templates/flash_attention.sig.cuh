// flash_attention.sig.cuh — flash_attention.cuh's traits and signatures: the fused attention,
// forward and backward. Traits: the family's launch formulas as __host__ __device__ constexpr
// functions, which the kernels and the runtime share. Signatures (host-only, common/signature.cuh):
// each kernel's template and run-time parameters with their roles, its launch shape and its scratch
// extents, declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- flash_attention.cuh -----------------------------------------------------------------------
inline constexpr int kFlashBlockM = 64;  // query rows per block: 4 warps of 16
inline constexpr int kFlashBlockN = 64;  // keys per tile
inline constexpr int kFlashThreads = 128;
LIGHTSEQ_HD constexpr int flash_fwd_block() { return kFlashThreads; }
// The most batch · heads the grids below take: CUDA's limit on gridDim.y.
inline constexpr int64_t kFlashMaxBatchHeads = 65535;
// x: query tiles, y: batch · heads.
LIGHTSEQ_HD constexpr GridDim flash_fwd_grid(int64_t batch_heads, int64_t q_len) {
  return GridDim{static_cast<uint32_t>(ceil_div(q_len, kFlashBlockM)),
                 static_cast<uint32_t>(batch_heads), 1};
}

// The backward: grad_k/grad_v per key tile (x: key tiles, y: batch · heads); grad_q per query tile
// as the forward; D (Σ grad_out·out) one row per thread.
LIGHTSEQ_HD constexpr GridDim flash_bwd_grid(int64_t batch_heads, int64_t k_len) {
  return GridDim{static_cast<uint32_t>(ceil_div(k_len, kFlashBlockN)),
                 static_cast<uint32_t>(batch_heads), 1};
}
LIGHTSEQ_HD constexpr GridDim flash_dot_grid(int64_t rows) {
  return grid_1d(ceil_div(rows, kElementwiseThreads));
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace flash_fwd {
inline constexpr TParam kT[] = {kDTypeParam, int_param("kD", "d"),
                                enum_param("kMask", "mask", kMaskInfo),
                                enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {
    in("q", CType::kConstTPtr),   in("k", CType::kConstTPtr),
    in("v", CType::kConstTPtr),   in("key_padding", CType::kConstU8Ptr, Nullable::kYes),
    out("out", CType::kTPtr),     out("lse", CType::kF32Ptr),
    scalar("batch", CType::kI64), scalar("heads", CType::kI64),
    scalar("q_len", CType::kI64), scalar("k_len", CType::kI64),
    scalar("scale", CType::kF32), dropout("drop")};
inline Launch launch(const Values& v) {
  return {flash_fwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")],
                         v.i[index_of(kP, "q_len")]),
          flash_fwd_block(), 0};
}
}  // namespace flash_fwd
// The forward and the two gradient kernels each take ~1 s of NVRTC per instance: each its own
// program, so that a model's instances compile in parallel.
inline constexpr Kernel kFlashFwd =
    make_kernel("flash_attention", "flash_attn_fwd_kernel", flash_fwd::kT, flash_fwd::kP,
                &flash_fwd::launch, Program::kOwn);

namespace flash_dot {
inline constexpr TParam kT[] = {kDTypeParam, int_param("kD", "d")};
inline constexpr Param kP[] = {in("out", CType::kConstTPtr), in("grad_out", CType::kConstTPtr),
                               out("dot", CType::kF32Ptr), scalar("rows", CType::kI64)};
inline Launch launch(const Values& v) {
  return {flash_dot_grid(v.i[index_of(kP, "rows")]), kElementwiseThreads, 0};
}
}  // namespace flash_dot
inline constexpr Kernel kFlashDot = make_kernel("flash_attention", "flash_attn_bwd_dot_kernel",
                                                flash_dot::kT, flash_dot::kP, &flash_dot::launch);

// The two gradient kernels' parameters (grad_k and grad_v, or grad_q, in place of `grads`).
#define LIGHTSEQ_FLASH_BWD_PARAMS(...)                                                          \
  in("q", CType::kConstTPtr), in("k", CType::kConstTPtr), in("v", CType::kConstTPtr),           \
      in("key_padding", CType::kConstU8Ptr, Nullable::kYes), in("grad_out", CType::kConstTPtr), \
      in("lse", CType::kConstF32Ptr), in("dot", CType::kConstF32Ptr), __VA_ARGS__,              \
      scalar("batch", CType::kI64), scalar("heads", CType::kI64), scalar("q_len", CType::kI64), \
      scalar("k_len", CType::kI64), scalar("scale", CType::kF32), dropout("drop")

namespace flash_dkdv {
inline constexpr Param kP[] = {
    LIGHTSEQ_FLASH_BWD_PARAMS(out("grad_k", CType::kTPtr), out("grad_v", CType::kTPtr))};
inline Launch launch(const Values& v) {
  return {flash_bwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")],
                         v.i[index_of(kP, "k_len")]),
          kFlashThreads, 0};
}
}  // namespace flash_dkdv
inline constexpr Kernel kFlashDkDv =
    make_kernel("flash_attention", "flash_attn_bwd_dkdv_kernel", flash_fwd::kT, flash_dkdv::kP,
                &flash_dkdv::launch, Program::kOwn);

namespace flash_dq {
inline constexpr Param kP[] = {LIGHTSEQ_FLASH_BWD_PARAMS(out("grad_q", CType::kTPtr))};
inline Launch launch(const Values& v) {
  return {flash_fwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")],
                         v.i[index_of(kP, "q_len")]),
          kFlashThreads, 0};
}
}  // namespace flash_dq
#undef LIGHTSEQ_FLASH_BWD_PARAMS
inline constexpr Kernel kFlashDq =
    make_kernel("flash_attention", "flash_attn_bwd_dq_kernel", flash_fwd::kT, flash_dq::kP,
                &flash_dq::launch, Program::kOwn);

namespace flash_attention {
inline constexpr const Kernel* kKernels[] = {&kFlashFwd, &kFlashDot, &kFlashDkDv, &kFlashDq};
}

}  // namespace lightseq::kern::sig
#endif
