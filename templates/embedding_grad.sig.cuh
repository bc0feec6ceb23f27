// embedding_grad.sig.cuh — embedding_grad.cuh's traits and signatures: the deterministic scatter
// of the embedding backward (group the rows by key, sort each group by row, sum it in order).
// Traits: the family's launch formulas as __host__ __device__ constexpr functions, which the
// kernels and the runtime share. Signatures (host-only, common/signature.cuh): each kernel's
// template and run-time parameters with their roles, its launch shape and its scratch extents,
// declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- embedding_grad.cuh ------------------------------------------------------------------------
// The grouping kernels: flat grid-stride loops over rows (or keys).
LIGHTSEQ_HD constexpr GridDim embedding_group_grid(int64_t n) { return elementwise_grid(n); }
// The groups buffer: counts, starts, fill (n_keys each), then the running total.
LIGHTSEQ_HD constexpr int64_t embedding_groups_size(int64_t n_keys) { return 3 * n_keys + 1; }
// The sum: a block per key (grid-stride over the keys), a thread per kVec-wide column vector, at
// most kEmbeddingGradMaxThreads of them (wider rows give a thread several vectors, "slots").
inline constexpr int kEmbeddingGradMaxThreads = 512;
inline constexpr int64_t kEmbeddingGradMaxBlocks = 16384;
LIGHTSEQ_HD constexpr int embedding_grad_block(int64_t hidden, int vec) {
  return static_cast<int>(min_i64(max_i64(32, pow2_ceil(hidden / vec)), kEmbeddingGradMaxThreads));
}
LIGHTSEQ_HD constexpr int embedding_grad_slots(int64_t hidden, int vec) {
  return static_cast<int>(ceil_div(hidden / vec, embedding_grad_block(hidden, vec)));
}
LIGHTSEQ_HD constexpr GridDim embedding_grad_grid(int64_t n_keys) {
  return grid_1d(min_i64(n_keys, kEmbeddingGradMaxBlocks));
}
// How many table rows a key kind has: the vocabulary (tokens), the position table or the type
// table.
LIGHTSEQ_HD constexpr int64_t embedding_keys(Key key, int64_t vocab, int64_t max_positions,
                                             int64_t n_types) {
  return key == Key::kToken ? vocab : key == Key::kPosition ? max_positions : n_types;
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace embedding_group_count {
inline Extent keys(const Values& v);
inline Extent groups(const Values& v);
inline constexpr TParam kT[] = {enum_param("kKey", "key", kKeyInfo),
                                enum_param("kPosFrom", "pos_from", kPosFromInfo)};
inline constexpr Param kP[] = {
    in("tokens", CType::kConstI64Ptr),
    in("token_types", CType::kConstI64Ptr, Nullable::kYes),
    scratch("keys", CType::kI32Ptr, &keys, Nullable::kNo),
    scratch("groups", CType::kI32Ptr, &groups, Nullable::kNo, ScratchInit::kZero),
    scalar("batch", CType::kI64),
    scalar("seq", CType::kI64),
    scalar("vocab", CType::kI64),
    scalar("padding_idx", CType::kI64),
    scalar("zero_padding", CType::kI64),
    scalar("max_positions", CType::kI64),
    scalar("n_types", CType::kI64)};
inline Extent keys(const Values& v) {
  return {1, v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")]};
}
inline Extent groups(const Values& v) {
  const auto key = static_cast<Key>(v.t[index_of(kT, "kKey")]);
  return {1, embedding_groups_size(embedding_keys(key, v.i[index_of(kP, "vocab")],
                                                  v.i[index_of(kP, "max_positions")],
                                                  v.i[index_of(kP, "n_types")]))};
}
inline Launch launch(const Values& v) {
  return {embedding_group_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")]),
          kElementwiseThreads, 0};
}
}  // namespace embedding_group_count
inline constexpr Kernel kEmbeddingGroupCount =
    make_kernel("embedding_grad", "embedding_group_count_kernel", embedding_group_count::kT,
                embedding_group_count::kP, &embedding_group_count::launch);

// The later grouping kernels carry the key kind only to name what they group in a plan.
inline constexpr TParam kKeyOnly[] = {enum_param("kKey", "key", kKeyInfo)};

namespace embedding_group_start {
inline constexpr const auto& kT = kKeyOnly;
inline constexpr Param kP[] = {out_acc("groups", CType::kI32Ptr), scalar("n_keys", CType::kI64)};
inline Launch launch(const Values& v) {
  return {embedding_group_grid(v.i[index_of(kP, "n_keys")]), kElementwiseThreads, 0};
}
}  // namespace embedding_group_start
inline constexpr Kernel kEmbeddingGroupStart =
    make_kernel("embedding_grad", "embedding_group_start_kernel", embedding_group_start::kT,
                embedding_group_start::kP, &embedding_group_start::launch);

namespace embedding_group_place {
inline Extent members(const Values& v);
inline constexpr const auto& kT = kKeyOnly;
inline constexpr Param kP[] = {in("keys", CType::kConstI32Ptr), out_acc("groups", CType::kI32Ptr),
                               scratch("members", CType::kI32Ptr, &members, Nullable::kNo),
                               scalar("rows", CType::kI64), scalar("n_keys", CType::kI64)};
inline Extent members(const Values& v) { return {1, v.i[index_of(kP, "rows")]}; }
inline Launch launch(const Values& v) {
  return {embedding_group_grid(v.i[index_of(kP, "rows")]), kElementwiseThreads, 0};
}
}  // namespace embedding_group_place
inline constexpr Kernel kEmbeddingGroupPlace =
    make_kernel("embedding_grad", "embedding_group_place_kernel", embedding_group_place::kT,
                embedding_group_place::kP, &embedding_group_place::launch);

namespace embedding_group_order {
inline Extent order(const Values& v);
inline constexpr const auto& kT = kKeyOnly;
inline constexpr Param kP[] = {
    in("keys", CType::kConstI32Ptr),    in("groups", CType::kConstI32Ptr),
    in("members", CType::kConstI32Ptr), scratch("order", CType::kI32Ptr, &order, Nullable::kNo),
    scalar("rows", CType::kI64),        scalar("n_keys", CType::kI64)};
inline Extent order(const Values& v) { return {1, v.i[index_of(kP, "rows")]}; }
inline Launch launch(const Values& v) {
  return {embedding_group_grid(v.i[index_of(kP, "rows")]), kElementwiseThreads, 0};
}
}  // namespace embedding_group_order
inline constexpr Kernel kEmbeddingGroupOrder =
    make_kernel("embedding_grad", "embedding_group_order_kernel", embedding_group_order::kT,
                embedding_group_order::kP, &embedding_group_order::launch);

namespace grad_sum {
inline constexpr TParam kT[] = {
    kDTypeParam, int_param("kHidden", "h"), int_param("kVec", "vec", vec_of<1>),
    enum_param("kNorm", "norm", kNormInfo), enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("grad_out", CType::kConstTPtr),
                               in("sum_out", CType::kConstTPtr, Nullable::kYes),
                               in("mean", CType::kConstF32Ptr, Nullable::kYes),
                               in("rstd", CType::kConstF32Ptr, Nullable::kYes),
                               in("row_stats", CType::kConstF32Ptr, Nullable::kYes),
                               in("gamma", CType::kConstTPtr, Nullable::kYes),
                               in("groups", CType::kConstI32Ptr),
                               in("order", CType::kConstI32Ptr),
                               out("grad", CType::kTPtr),
                               scalar("n_keys", CType::kI64),
                               scalar("scale", CType::kF32),
                               dropout("drop"),
                               grad_mode("acc")};
inline Launch launch(const Values& v) {
  const int64_t hidden = v.t[index_of(kT, "kHidden")];
  const int vec = static_cast<int>(v.t[index_of(kT, "kVec")]);
  return {embedding_grad_grid(v.i[index_of(kP, "n_keys")]), embedding_grad_block(hidden, vec), 0};
}
}  // namespace grad_sum
inline constexpr Kernel kEmbeddingGrad = make_kernel("embedding_grad", "embedding_grad_kernel",
                                                     grad_sum::kT, grad_sum::kP, &grad_sum::launch);

namespace embedding_grad {
inline constexpr const Kernel* kKernels[] = {&kEmbeddingGroupCount, &kEmbeddingGroupStart,
                                             &kEmbeddingGroupPlace, &kEmbeddingGroupOrder,
                                             &kEmbeddingGrad};
}

}  // namespace lightseq::kern::sig
#endif
