// attention.sig.cuh — attention.cuh's traits and signatures: the head layout: split and merge
// heads. Traits: the family's launch formulas as __host__ __device__ constexpr functions, which the
// kernels and the runtime share. Signatures (host-only, common/signature.cuh): each kernel's
// template and run-time parameters with their roles, its launch shape and its scratch extents,
// declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- attention.cuh -----------------------------------------------------------------------------
// Vector width along the head dimension d = hidden / heads.
LIGHTSEQ_HD constexpr int heads_vec(int elem_bytes, int64_t hidden, int64_t heads) {
  return vec_width(elem_bytes, hidden / heads);
}
LIGHTSEQ_HD constexpr int split_heads_block() { return kElementwiseThreads; }
// One thread per vector; rows = batch * seq.
LIGHTSEQ_HD constexpr GridDim split_heads_grid(int64_t rows, int64_t hidden, int64_t heads,
                                               int parts, int elem_bytes) {
  return grid_1d(ceil_div(rows * parts * (hidden / heads_vec(elem_bytes, hidden, heads)),
                          kElementwiseThreads));
}
LIGHTSEQ_HD constexpr int64_t merge_blocks(int64_t rows) { return partial_blocks(rows); }
LIGHTSEQ_HD constexpr int merge_block(int64_t hidden, int64_t heads, int parts, int elem_bytes) {
  return coltile_block(parts * hidden / heads_vec(elem_bytes, hidden, heads));
}
LIGHTSEQ_HD constexpr GridDim merge_grid(int64_t rows, int64_t hidden, int64_t heads, int parts,
                                         int elem_bytes) {
  return coltile_grid(rows, parts * hidden / heads_vec(elem_bytes, hidden, heads));
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace split_heads {
inline constexpr TParam kT[] = {kDTypeParam, int_param("kHidden", "h"),
                                int_param("kHeads", "heads"), int_param("kParts", "parts"),
                                enum_param("kBias", "bias", kBiasAddInfo)};
inline constexpr Param kP[] = {
    in("in", CType::kConstTPtr), in("bias", CType::kConstTPtr, Nullable::kYes),
    out("out", CType::kTPtr), scalar("batch", CType::kI64), scalar("seq", CType::kI64)};
inline Launch launch(const Values& v) {
  const int64_t rows = v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")];
  return {split_heads_grid(rows, v.t[index_of(kT, "kHidden")], v.t[index_of(kT, "kHeads")],
                           static_cast<int>(v.t[index_of(kT, "kParts")]), static_cast<int>(v.t[0])),
          split_heads_block(), 0};
}
}  // namespace split_heads
inline constexpr Kernel kSplitHeads = make_kernel(
    "attention", "split_heads_kernel", split_heads::kT, split_heads::kP, &split_heads::launch);

namespace merge_heads {
inline Extent partials(const Values& v);
inline constexpr TParam kT[] = {kDTypeParam, int_param("kHidden", "h"),
                                int_param("kHeads", "heads"), int_param("kParts", "parts"),
                                enum_param("kBiasGrad", "bias_grad", kBiasGradInfo)};
inline constexpr Param kP[] = {in("in", CType::kConstTPtr), out("out", CType::kTPtr),
                               scratch("partials", CType::kF32Ptr, &partials, Nullable::kYes),
                               scalar("batch", CType::kI64), scalar("seq", CType::kI64)};
// Column sums of out (a bias gradient) as per-block partials [merge_blocks(rows), kParts *
// kHidden].
inline Extent partials(const Values& v) {
  return {merge_blocks(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")]),
          v.t[index_of(kT, "kParts")] * v.t[index_of(kT, "kHidden")]};
}
inline Launch launch(const Values& v) {
  const int64_t rows = v.i[index_of(kP, "batch")] * v.i[index_of(kP, "seq")];
  const int64_t hidden = v.t[index_of(kT, "kHidden")], heads = v.t[index_of(kT, "kHeads")];
  const int parts = static_cast<int>(v.t[index_of(kT, "kParts")]), eb = static_cast<int>(v.t[0]);
  return {merge_grid(rows, hidden, heads, parts, eb), merge_block(hidden, heads, parts, eb), 0};
}
}  // namespace merge_heads
inline constexpr Kernel kMergeHeads = make_kernel(
    "attention", "merge_heads_kernel", merge_heads::kT, merge_heads::kP, &merge_heads::launch);

namespace attention {
inline constexpr const Kernel* kKernels[] = {&kSplitHeads, &kMergeHeads};
}

}  // namespace lightseq::kern::sig
#endif
