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
// One block of `threads` per row, the row read once from global memory and kept on chip when it
// fits: in registers when each thread keeps at most kCeMaxElems values with at most
// kCeMaxCachedThreads threads ("cached": one exponential an element), else in shared memory when
// it takes at most kCeMaxStagedBytes ("staged", ce_smem: two exponentials an element, several
// rows per SM so that one row's copies overlap another's arithmetic), else streamed from global
// memory twice (the second read mostly hits L2). A 1024-thread block caching the row in
// registers (58 registers a thread) left one row per SM in flight: vocab 32000 bf16 at ~65 % of
// the H200's bandwidth (sixteenth session).
inline constexpr int kCeMaxElems = 32;
inline constexpr int kCeMaxCachedThreads = 256;
inline constexpr int kCeThreads = 512;  // staged and streamed rows
// 96 KiB: what one block may take on every sm_80+ GPU (99 KiB on sm_86/89). At vocab 32000 bf16
// (64 KB a row): two rows per SM on an A100 (164 KiB), three on an H100 or H200 (228 KiB).
inline constexpr int64_t kCeMaxStagedBytes = 96 * 1024;
LIGHTSEQ_HD constexpr bool ce_cached(int64_t vocab, int threads, int vec) {
  return threads <= kCeMaxCachedThreads && ceil_div(vocab / vec, threads) * vec <= kCeMaxElems;
}
// kThreads for a vocabulary: the fewest (>= 128) that cache the row, else kCeThreads.
LIGHTSEQ_HD constexpr int ce_threads(int64_t vocab, int vec) {
  for (int t = 128; t <= kCeMaxCachedThreads; t *= 2) {
    if (ce_cached(vocab, t, vec)) return t;
  }
  return kCeThreads;
}
// The staged row's dynamic shared memory in bytes, 0 when the row is cached or streamed (copies of
// vec elements: at least 4 bytes for cp.async).
LIGHTSEQ_HD constexpr int ce_smem(int64_t vocab, int threads, int vec, int elem_bytes) {
  return !ce_cached(vocab, threads, vec) && vec * elem_bytes >= 4 &&
                 vocab * elem_bytes <= kCeMaxStagedBytes
             ? static_cast<int>(vocab * elem_bytes)
             : 0;
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
  const int threads = static_cast<int>(v.t[index_of(kT, "kThreads")]);
  return {ce_grid(v.i[index_of(kP, "rows")]), ce_block(threads),
          ce_smem(v.t[index_of(kT, "kVocab")], threads, static_cast<int>(v.t[index_of(kT, "kVec")]),
                  static_cast<int>(v.t[0]))};
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
