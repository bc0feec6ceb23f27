// layernorm.sig.cuh — layernorm.cuh's traits and signatures: LayerNorm forward and backward
// (ln_fwd_kernel, ln_bwd_kernel). Traits: the family's launch formulas as __host__ __device__
// constexpr functions, which the kernels and the runtime share. Signatures (host-only,
// common/signature.cuh): each kernel's template and run-time parameters with their roles, its
// launch shape and its scratch extents, declared once; codegen, the planner and the runtime derive
// everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- layernorm.cuh (also embedding.cuh) ---------------------------------------------------------
// A row is split over threads_per_row threads (a power of two, >= 32); each keeps its part of the
// row in registers ("cached"), at most kLnFwdMaxElems values in the forward and kLnBwdMaxElems in
// the backward (which also keeps dgamma/dbeta/dbias accumulators). Rows of one block: as many as
// fill kLnFwdBlockThreads / kLnBwdBlockThreads threads (the backward's blocks loop over their rows,
// so it wants more of them in flight); a row group wider than a warp reduces through shared memory.
// A row too long to cache even with kLnMaxCachedThreads threads is streamed by 1024 threads through
// global memory (extra passes), one row per block.
inline constexpr int kLnFwdMaxElems = 32;
inline constexpr int kLnBwdMaxElems = 16;
inline constexpr int kLnMaxCachedThreads = 512;
inline constexpr int kLnStreamThreads = 1024;
inline constexpr int kLnFwdBlockThreads = 128;
inline constexpr int kLnBwdBlockThreads = 256;

LIGHTSEQ_HD constexpr bool ln_cached_for(int64_t hidden, int vec, int max_elems) {
  return ceil_div(hidden / vec, kLnMaxCachedThreads) * vec <= max_elems;
}
LIGHTSEQ_HD constexpr int ln_threads_for(int64_t hidden, int vec, int max_elems) {
  return !ln_cached_for(hidden, vec, max_elems)
             ? kLnStreamThreads
             : static_cast<int>(max_i64(32, pow2_ceil(ceil_div(hidden / vec, max_elems / vec))));
}
LIGHTSEQ_HD constexpr int ln_rows_for(int threads_per_row, int block_threads) {
  return threads_per_row >= block_threads ? 1 : block_threads / threads_per_row;
}

LIGHTSEQ_HD constexpr bool ln_fwd_cached(int64_t hidden, int vec) {
  return ln_cached_for(hidden, vec, kLnFwdMaxElems);
}
LIGHTSEQ_HD constexpr int ln_threads_per_row(int64_t hidden, int vec) {
  return ln_threads_for(hidden, vec, kLnFwdMaxElems);
}
LIGHTSEQ_HD constexpr int ln_rows_per_block(int64_t hidden, int vec) {
  return ln_rows_for(ln_threads_per_row(hidden, vec), kLnFwdBlockThreads);
}
// Vectors each thread keeps per row (cached path).
LIGHTSEQ_HD constexpr int ln_slots(int64_t hidden, int vec) {
  return static_cast<int>(ceil_div(hidden / vec, ln_threads_per_row(hidden, vec)));
}
LIGHTSEQ_HD constexpr int ln_block(int64_t hidden, int vec) {
  return ln_threads_per_row(hidden, vec) * ln_rows_per_block(hidden, vec);
}
LIGHTSEQ_HD constexpr GridDim ln_grid(int64_t rows, int64_t hidden, int vec) {
  return grid_1d(ceil_div(rows, ln_rows_per_block(hidden, vec)));
}

LIGHTSEQ_HD constexpr bool ln_bwd_cached(int64_t hidden, int vec) {
  return ln_cached_for(hidden, vec, kLnBwdMaxElems);
}
LIGHTSEQ_HD constexpr int ln_bwd_threads_per_row(int64_t hidden, int vec) {
  return ln_threads_for(hidden, vec, kLnBwdMaxElems);
}
LIGHTSEQ_HD constexpr int ln_bwd_rows_per_block(int64_t hidden, int vec) {
  return ln_rows_for(ln_bwd_threads_per_row(hidden, vec), kLnBwdBlockThreads);
}
LIGHTSEQ_HD constexpr int ln_bwd_slots(int64_t hidden, int vec) {
  return static_cast<int>(ceil_div(hidden / vec, ln_bwd_threads_per_row(hidden, vec)));
}
LIGHTSEQ_HD constexpr int ln_bwd_block(int64_t hidden, int vec) {
  return ln_bwd_threads_per_row(hidden, vec) * ln_bwd_rows_per_block(hidden, vec);
}
LIGHTSEQ_HD constexpr int64_t ln_bwd_blocks(int64_t rows) { return partial_blocks(rows); }
LIGHTSEQ_HD constexpr GridDim ln_bwd_grid(int64_t rows) { return grid_1d(ln_bwd_blocks(rows)); }
// Columns of a partials row: dgamma [0,H), dbeta [H,2H) (Norm::kOn), then dbias (BranchOut::kOn).
LIGHTSEQ_HD constexpr int64_t ln_bwd_partial_cols(int64_t hidden, Norm norm, BranchOut branch_out) {
  return (norm == Norm::kOn ? 2 * hidden : 0) + (branch_out == BranchOut::kOn ? hidden : 0);
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace ln_fwd {
inline constexpr TParam kT[] = {kDTypeParam,
                                int_param("kHidden", "h"),
                                int_param("kVec", "vec", vec_of<1>),
                                enum_param("kBranch", "branch", kBranchInfo),
                                enum_param("kNorm", "norm", kNormInfo),
                                enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("branch", CType::kConstTPtr, Nullable::kYes),
                               in("bias", CType::kConstTPtr, Nullable::kYes),
                               in("residual", CType::kConstTPtr),
                               in("gamma", CType::kConstTPtr, Nullable::kYes),
                               in("beta", CType::kConstTPtr, Nullable::kYes),
                               out("sum_out", CType::kTPtr, Nullable::kYes),
                               out("norm_out", CType::kTPtr, Nullable::kYes),
                               out("mean", CType::kF32Ptr, Nullable::kYes),
                               out("rstd", CType::kF32Ptr, Nullable::kYes),
                               scalar("rows", CType::kI64),
                               scalar("eps", CType::kF32),
                               dropout("drop")};
inline Launch launch(const Values& v) {
  const int64_t hidden = v.t[index_of(kT, "kHidden")];
  const int vec = static_cast<int>(v.t[index_of(kT, "kVec")]);
  return {ln_grid(v.i[index_of(kP, "rows")], hidden, vec), ln_block(hidden, vec), 0};
}
}  // namespace ln_fwd
inline constexpr Kernel kLnFwd =
    make_kernel("layernorm", "ln_fwd_kernel", ln_fwd::kT, ln_fwd::kP, &ln_fwd::launch);

namespace ln_bwd {
inline Extent partials(const Values& v);
inline constexpr TParam kT[] = {kDTypeParam,
                                int_param("kHidden", "h"),
                                int_param("kVec", "vec", vec_of<1>),
                                enum_param("kNorm", "norm", kNormInfo),
                                enum_param("kRes", "residual_in", kResidualInInfo),
                                enum_param("kBranchOut", "branch_out", kBranchOutInfo),
                                enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("grad_out", CType::kConstTPtr),
                               in("z", CType::kConstTPtr, Nullable::kYes),
                               in("mean", CType::kConstF32Ptr, Nullable::kYes),
                               in("rstd", CType::kConstF32Ptr, Nullable::kYes),
                               in("gamma", CType::kConstTPtr, Nullable::kYes),
                               in("grad_residual", CType::kConstTPtr, Nullable::kYes),
                               out("grad_z", CType::kTPtr, Nullable::kYes),
                               out("grad_branch", CType::kTPtr, Nullable::kYes),
                               scratch("partials", CType::kF32Ptr, &partials, Nullable::kYes),
                               scalar("rows", CType::kI64),
                               dropout("drop")};
// [ln_bwd_blocks(rows), dgamma | dbeta (kNorm) | dbias (kBranchOut)] fp32.
inline Extent partials(const Values& v) {
  const int64_t cols = ln_bwd_partial_cols(v.t[index_of(kT, "kHidden")],
                                           static_cast<Norm>(v.t[index_of(kT, "kNorm")]),
                                           static_cast<BranchOut>(v.t[index_of(kT, "kBranchOut")]));
  return {ln_bwd_blocks(v.i[index_of(kP, "rows")]), cols};
}
inline Launch launch(const Values& v) {
  const int64_t hidden = v.t[index_of(kT, "kHidden")];
  const int vec = static_cast<int>(v.t[index_of(kT, "kVec")]);
  return {ln_bwd_grid(v.i[index_of(kP, "rows")]), ln_bwd_block(hidden, vec), 0};
}
}  // namespace ln_bwd
inline constexpr Kernel kLnBwd =
    make_kernel("layernorm", "ln_bwd_kernel", ln_bwd::kT, ln_bwd::kP, &ln_bwd::launch);

namespace layernorm {
inline constexpr const Kernel* kKernels[] = {&kLnFwd, &kLnBwd};
}

}  // namespace lightseq::kern::sig
#endif
