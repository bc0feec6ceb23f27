// embedding.sig.cuh — embedding.cuh's traits and signatures: token + position embedding (+
// LayerNorm, dropout), forward and backward. Traits: the family's launch formulas as __host__
// __device__ constexpr functions, which the kernels and the runtime share. Signatures (host-only,
// common/signature.cuh): each kernel's template and run-time parameters with their roles, its
// launch shape and its scratch extents, declared once; codegen, the planner and the runtime derive
// everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"
#include "layernorm.sig.cuh"

namespace lightseq::kern {

// ---- embedding.cuh: the LayerNorm layouts ------------------------------------------------------
LIGHTSEQ_HD constexpr int embedding_fwd_block(int64_t hidden, int vec) {
  return ln_block(hidden, vec);
}
LIGHTSEQ_HD constexpr GridDim embedding_fwd_grid(int64_t rows, int64_t hidden, int vec) {
  return ln_grid(rows, hidden, vec);
}
LIGHTSEQ_HD constexpr int embedding_bwd_block(int64_t hidden, int vec) {
  return ln_bwd_block(hidden, vec);
}
LIGHTSEQ_HD constexpr int64_t embedding_bwd_blocks(int64_t rows) { return partial_blocks(rows); }
LIGHTSEQ_HD constexpr GridDim embedding_bwd_grid(int64_t rows) {
  return grid_1d(embedding_bwd_blocks(rows));
}
// dgamma [0,H), dbeta [H,2H) when Norm::kOn; no partials otherwise.
LIGHTSEQ_HD constexpr int64_t embedding_bwd_partial_cols(int64_t hidden, Norm norm) {
  return norm == Norm::kOn ? 2 * hidden : 0;
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace embedding_fwd {
inline constexpr TParam kT[] = {kDTypeParam,
                                int_param("kHidden", "h"),
                                int_param("kVec", "vec", vec_of<1>),
                                enum_param("kPos", "pos", kPosInfo),
                                enum_param("kPosFrom", "pos_from", kPosFromInfo),
                                enum_param("kNorm", "norm", kNormInfo),
                                enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("tokens", CType::kConstI64Ptr),
                               in("token_table", CType::kConstTPtr),
                               in("pos_table", CType::kConstTPtr, Nullable::kYes),
                               in("gamma", CType::kConstTPtr, Nullable::kYes),
                               in("beta", CType::kConstTPtr, Nullable::kYes),
                               in("token_types", CType::kConstI64Ptr, Nullable::kYes),
                               in("type_table", CType::kConstTPtr, Nullable::kYes),
                               out("out", CType::kTPtr),
                               out("sum_out", CType::kTPtr, Nullable::kYes),
                               out("mean", CType::kF32Ptr, Nullable::kYes),
                               out("rstd", CType::kF32Ptr, Nullable::kYes),
                               error_flag("bad_token"),
                               out("pad_mask", CType::kU8Ptr, Nullable::kYes),
                               scalar("batch", CType::kI64),
                               scalar("seq", CType::kI64),
                               scalar("vocab", CType::kI64),
                               scalar("padding_idx", CType::kI64),
                               scalar("zero_padding", CType::kI64),
                               scalar("max_positions", CType::kI64),
                               scalar("n_types", CType::kI64),
                               scalar("scale", CType::kF32),
                               scalar("eps", CType::kF32),
                               dropout("drop")};
inline Launch launch(const Values& v) {
  const int64_t rows = v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")];
  const int64_t hidden = v.t[index_of(kT, "kHidden")];
  const int vec = static_cast<int>(v.t[index_of(kT, "kVec")]);
  return {embedding_fwd_grid(rows, hidden, vec), embedding_fwd_block(hidden, vec), 0};
}
}  // namespace embedding_fwd
inline constexpr Kernel kEmbeddingFwd =
    make_kernel("embedding", "embedding_fwd_kernel", embedding_fwd::kT, embedding_fwd::kP,
                &embedding_fwd::launch);

namespace embedding_bwd {
inline Extent row_stats(const Values& v);
inline Extent partials(const Values& v);
inline constexpr TParam kT[] = {
    kDTypeParam, int_param("kHidden", "h"), int_param("kVec", "vec", vec_of<1>),
    enum_param("kPosFrom", "pos_from", kPosFromInfo), enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("grad_out", CType::kConstTPtr),
                               in("tokens", CType::kConstI64Ptr),
                               in("sum_out", CType::kConstTPtr),
                               in("mean", CType::kConstF32Ptr),
                               in("rstd", CType::kConstF32Ptr),
                               in("gamma", CType::kConstTPtr),
                               in("token_types", CType::kConstI64Ptr, Nullable::kYes),
                               scratch("row_stats", CType::kF32Ptr, &row_stats, Nullable::kNo),
                               scratch("partials", CType::kF32Ptr, &partials, Nullable::kNo),
                               scalar("batch", CType::kI64),
                               scalar("seq", CType::kI64),
                               scalar("vocab", CType::kI64),
                               scalar("padding_idx", CType::kI64),
                               scalar("zero_padding", CType::kI64),
                               scalar("max_positions", CType::kI64),
                               scalar("n_types", CType::kI64),
                               dropout("drop")};
inline int64_t rows_of(const Values& v) {
  return v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")];
}
// (m1, m2) per row, for embedding_grad_kernel's LayerNorm dx.
inline Extent row_stats(const Values& v) { return {rows_of(v), 2}; }
// The LayerNorm's dgamma | dbeta per-block partials.
inline Extent partials(const Values& v) {
  return {embedding_bwd_blocks(rows_of(v)),
          embedding_bwd_partial_cols(v.t[index_of(kT, "kHidden")], Norm::kOn)};
}
inline Launch launch(const Values& v) {
  const int64_t hidden = v.t[index_of(kT, "kHidden")];
  return {embedding_bwd_grid(rows_of(v)),
          embedding_bwd_block(hidden, static_cast<int>(v.t[index_of(kT, "kVec")])), 0};
}
}  // namespace embedding_bwd
inline constexpr Kernel kEmbeddingBwd =
    make_kernel("embedding", "embedding_bwd_kernel", embedding_bwd::kT, embedding_bwd::kP,
                &embedding_bwd::launch);

namespace embedding {
inline constexpr const Kernel* kKernels[] = {&kEmbeddingFwd, &kEmbeddingBwd};
}

}  // namespace lightseq::kern::sig
#endif
