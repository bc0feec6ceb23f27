// softmax.sig.cuh — softmax.cuh's traits and signatures: the attention softmax (scale, masks,
// dropout), forward and backward. Traits: the family's launch formulas as __host__ __device__
// constexpr functions, which the kernels and the runtime share. Signatures (host-only,
// common/signature.cuh): each kernel's template and run-time parameters with their roles, its
// launch shape and its scratch extents, declared once; codegen, the planner and the runtime derive
// everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- softmax.cuh -------------------------------------------------------------------------------
// Chosen at run time from k_len (the kernels call the same functions):
//  - vec: 16-byte vectors when k_len is a multiple of the full width, else scalars;
//  - lanes per row: the power of two that gives each lane at most kSoftmaxSlots vectors, capped at
//    `threads`; threads / lanes rows per block (groups wider than a warp reduce through shared
//    memory);
//  - cached: vectorized and at most kSoftmaxSlots vectors per lane: the row stays in registers;
//    otherwise it is streamed (online max/sum, then a second pass that mostly hits L1/L2).
inline constexpr int kSoftmaxSlots = 4;
inline constexpr int kSoftmaxDefaultThreads = 256;
LIGHTSEQ_HD constexpr int softmax_vec(int64_t k_len, int elem_bytes) {
  return k_len % (16 / elem_bytes) == 0 ? 16 / elem_bytes : 1;
}
LIGHTSEQ_HD constexpr int softmax_lanes(int64_t k_len, int threads, int elem_bytes) {
  return static_cast<int>(
      min_i64(threads,
              pow2_ceil(ceil_div(ceil_div(k_len, softmax_vec(k_len, elem_bytes)), kSoftmaxSlots))));
}
// Scalar rows are always streamed: a cached scalar path measured 636 vs 526 GB/s at k_len = 127
// (H100, bf16) and cost 0.2 s of NVRTC time per softmax program; pad k_len to a multiple of 8.
LIGHTSEQ_HD constexpr bool softmax_cached(int64_t k_len, int threads, int elem_bytes) {
  return softmax_vec(k_len, elem_bytes) > 1 &&
         ceil_div(k_len / softmax_vec(k_len, elem_bytes),
                  softmax_lanes(k_len, threads, elem_bytes)) <= kSoftmaxSlots;
}
LIGHTSEQ_HD constexpr int softmax_rows_per_block(int64_t k_len, int threads, int elem_bytes) {
  return threads / softmax_lanes(k_len, threads, elem_bytes);
}
LIGHTSEQ_HD constexpr int softmax_block(int threads) { return threads; }
// rows = batch * heads * q_len (forward) or the rows argument (backward).
LIGHTSEQ_HD constexpr GridDim softmax_grid(int64_t rows, int64_t k_len, int threads,
                                           int elem_bytes) {
  return grid_1d(ceil_div(rows, softmax_rows_per_block(k_len, threads, elem_bytes)));
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

inline int64_t softmax_default_threads(const Values&) { return kSoftmaxDefaultThreads; }

namespace softmax_fwd {
inline constexpr TParam kT[] = {
    kDTypeParam, int_param("kThreads", "threads", &softmax_default_threads),
    enum_param("kMask", "mask", kMaskInfo), enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("scores", CType::kConstTPtr),
                               out("probs", CType::kTPtr),
                               out("probs_dropped", CType::kTPtr, Nullable::kYes),
                               in("key_padding", CType::kConstU8Ptr, Nullable::kYes),
                               scalar("batch", CType::kI64),
                               scalar("heads", CType::kI64),
                               scalar("q_len", CType::kI64),
                               scalar("k_len", CType::kI64),
                               dropout("drop")};
inline Launch launch(const Values& v) {
  const int threads = static_cast<int>(v.t[index_of(kT, "kThreads")]);
  const int64_t rows =
      v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")] * v.i[index_of(kP, "q_len")];
  return {softmax_grid(rows, v.i[index_of(kP, "k_len")], threads, static_cast<int>(v.t[0])),
          softmax_block(threads), 0};
}
}  // namespace softmax_fwd
inline constexpr Kernel kSoftmaxFwd = make_kernel(
    "softmax", "attn_softmax_fwd_kernel", softmax_fwd::kT, softmax_fwd::kP, &softmax_fwd::launch);

namespace softmax_bwd {
inline constexpr TParam kT[] = {kDTypeParam,
                                int_param("kThreads", "threads", &softmax_default_threads),
                                enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {
    in("grad_dropped", CType::kConstTPtr), in("probs", CType::kConstTPtr),
    out("grad_scores", CType::kTPtr),      scalar("rows", CType::kI64),
    scalar("k_len", CType::kI64),          dropout("drop")};
inline Launch launch(const Values& v) {
  const int threads = static_cast<int>(v.t[index_of(kT, "kThreads")]);
  return {softmax_grid(v.i[index_of(kP, "rows")], v.i[index_of(kP, "k_len")], threads,
                       static_cast<int>(v.t[0])),
          softmax_block(threads), 0};
}
}  // namespace softmax_bwd
inline constexpr Kernel kSoftmaxBwd = make_kernel(
    "softmax", "attn_softmax_bwd_kernel", softmax_bwd::kT, softmax_bwd::kP, &softmax_bwd::launch);

namespace softmax {
inline constexpr const Kernel* kKernels[] = {&kSoftmaxFwd, &kSoftmaxBwd};
}

}  // namespace lightseq::kern::sig
#endif
