// cross_entropy.sig.cuh — cross_entropy.cuh's traits and signatures: label-smoothed softmax
// cross-entropy, forward and backward in one pass. Traits: the family's launch formulas as __host__
// __device__ constexpr functions, which the kernels and the runtime share. Signatures (host-only,
// common/signature.cuh): each kernel's template and run-time parameters with their roles, its
// launch shape and its scratch extents, declared once; codegen, the planner and the runtime derive
// everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- cross_entropy.cuh -------------------------------------------------------------------------
// One block of `threads` per row; the row is cached in registers when each thread keeps at most
// kCeMaxElems values, else streamed (two passes; the second mostly hits L2).
inline constexpr int kCeMaxElems = 32;
LIGHTSEQ_HD constexpr bool ce_cached(int64_t vocab, int threads, int vec) {
  return ceil_div(vocab / vec, threads) * vec <= kCeMaxElems;
}
// A good kThreads for a vocabulary: the fewest threads (>= 128) that cache the row, else 512.
LIGHTSEQ_HD constexpr int ce_threads(int64_t vocab, int vec) {
  for (int t = 128; t <= 1024; t *= 2) {
    if (ce_cached(vocab, t, vec)) return t;
  }
  return 512;
}
LIGHTSEQ_HD constexpr int ce_block(int threads) { return threads; }
LIGHTSEQ_HD constexpr GridDim ce_grid(int64_t rows) { return grid_1d(rows); }
// ce_grad_scale_kernel: one block.
LIGHTSEQ_HD constexpr int ce_scale_block() { return 1024; }

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace cross_entropy {
// kVec: 16-byte vectors that divide the vocabulary; kThreads: the fewest that cache the row.
inline int64_t vocab_vec(const Values& v) { return vec_width(static_cast<int>(v.t[0]), v.t[1]); }
inline int64_t vocab_threads(const Values& v) {
  return ce_threads(v.t[1], static_cast<int>(vocab_vec(v)));
}
inline constexpr TParam kT[] = {kDTypeParam, int_param("kVocab", "vocab"),
                                int_param("kThreads", "threads", &vocab_threads),
                                int_param("kVec", "vec", &vocab_vec)};
inline constexpr Param kP[] = {in("logits", CType::kConstTPtr),
                               in("targets", CType::kConstI64Ptr),
                               out("loss", CType::kF32Ptr),
                               out("nll", CType::kF32Ptr),
                               out("grad_logits", CType::kTPtr),
                               error_flag("bad_target"),
                               scalar("rows", CType::kI64),
                               scalar("ignore_index", CType::kI64),
                               scalar("label_smoothing", CType::kF32),
                               in("grad_scale", CType::kConstF32Ptr, Nullable::kYes)};
inline Launch launch(const Values& v) {
  return {ce_grid(v.i[index_of(kP, "rows")]),
          ce_block(static_cast<int>(v.t[index_of(kT, "kThreads")])), 0};
}
static_assert(index_of(kT, "kVocab") == 1, "vocab_vec reads kVocab at 1");
inline constexpr const Kernel kKernel =
    make_kernel("cross_entropy", "cross_entropy_kernel", kT, kP, &launch);
}  // namespace cross_entropy
inline constexpr const Kernel& kCrossEntropy = cross_entropy::kKernel;

namespace ce_grad_scale {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {in("targets", CType::kConstI64Ptr),
                               in("loss_scale", CType::kConstF32Ptr, Nullable::kYes),
                               in("total_tokens", CType::kConstF32Ptr, Nullable::kYes),
                               out("grad_scale", CType::kF32Ptr),
                               out("n_tokens", CType::kF32Ptr),
                               scalar("rows", CType::kI64),
                               scalar("vocab", CType::kI64),
                               scalar("ignore_index", CType::kI64)};
inline Launch launch(const Values&) { return {grid_1d(1), ce_scale_block(), 0}; }
}  // namespace ce_grad_scale
inline constexpr Kernel kCeGradScale =
    make_kernel("cross_entropy", "ce_grad_scale_kernel", ce_grad_scale::kT, ce_grad_scale::kP,
                &ce_grad_scale::launch);

namespace cross_entropy {
inline constexpr const Kernel* kKernels[] = {&kKernel, &kCeGradScale};
}  // namespace cross_entropy

}  // namespace lightseq::kern::sig
#endif
