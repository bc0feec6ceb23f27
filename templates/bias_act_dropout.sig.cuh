// bias_act_dropout.sig.cuh — bias_act_dropout.cuh's traits and signatures: bias + activation +
// dropout, forward and backward. Traits: the family's launch formulas as __host__ __device__
// constexpr functions, which the kernels and the runtime share. Signatures (host-only,
// common/signature.cuh): each kernel's template and run-time parameters with their roles, its
// launch shape and its scratch extents, declared once; codegen, the planner and the runtime derive
// everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- bias_act_dropout.cuh ----------------------------------------------------------------------
LIGHTSEQ_HD constexpr int bad_fwd_block() { return kElementwiseThreads; }
LIGHTSEQ_HD constexpr GridDim bad_fwd_grid(int64_t rows, int64_t cols, int vec) {
  return elementwise_grid(rows * (cols / vec));
}
LIGHTSEQ_HD constexpr int64_t bad_bwd_blocks(int64_t rows) { return partial_blocks(rows); }
LIGHTSEQ_HD constexpr int bad_bwd_block(int64_t cols, int vec) { return coltile_block(cols / vec); }
LIGHTSEQ_HD constexpr GridDim bad_bwd_grid(int64_t rows, int64_t cols, int vec) {
  return coltile_grid(rows, cols / vec);
}
// Where the backward may take the activation's derivative from: its input always, its output only
// for ReLU (y > 0 exactly where x + bias > 0 and the entry was kept).
LIGHTSEQ_HD constexpr bool act_from_ok(Act act, ActFrom from) {
  return from == ActFrom::kInput || act == Act::kRelu;
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace bad_fwd {
inline constexpr TParam kT[] = {
    kDTypeParam, int_param("kCols", "cols"), int_param("kVec", "vec", vec_of<1>),
    enum_param("kAct", "act", kActInfo), enum_param("kDrop", "drop", kDropInfo)};
inline constexpr Param kP[] = {in("x", CType::kConstTPtr), in("bias", CType::kConstTPtr),
                               out("out", CType::kTPtr), scalar("rows", CType::kI64),
                               dropout("drop")};
inline Launch launch(const Values& v) {
  return {bad_fwd_grid(v.i[index_of(kP, "rows")], v.t[index_of(kT, "kCols")],
                       static_cast<int>(v.t[index_of(kT, "kVec")])),
          bad_fwd_block(), 0};
}
}  // namespace bad_fwd
inline constexpr Kernel kBiasActDropoutFwd = make_kernel(
    "bias_act_dropout", "bias_act_dropout_fwd_kernel", bad_fwd::kT, bad_fwd::kP, &bad_fwd::launch);

namespace bad_bwd {
inline Extent partials(const Values& v);
// The forward's template parameters and where the derivative is taken from.
inline constexpr auto kTList = extend(bad_fwd::kT, enum_param("kFrom", "from", kActFromInfo));
inline constexpr const auto& kT = kTList.v;
// x: the forward's input (kFrom = kInput) or its output (kOutput; bias then unread, may be null).
inline constexpr Param kP[] = {in("grad_out", CType::kConstTPtr),
                               in("x", CType::kConstTPtr),
                               in("bias", CType::kConstTPtr, Nullable::kYes),
                               out("grad_x", CType::kTPtr),
                               scratch("partials", CType::kF32Ptr, &partials, Nullable::kNo),
                               scalar("rows", CType::kI64),
                               dropout("drop")};
// The bias gradient's per-block partials [bad_bwd_blocks(rows), kCols] fp32.
inline Extent partials(const Values& v) {
  return {bad_bwd_blocks(v.i[index_of(kP, "rows")]), v.t[index_of(kT, "kCols")]};
}
inline Launch launch(const Values& v) {
  const int64_t rows = v.i[index_of(kP, "rows")], cols = v.t[index_of(kT, "kCols")];
  const int vec = static_cast<int>(v.t[index_of(kT, "kVec")]);
  return {bad_bwd_grid(rows, cols, vec), bad_bwd_block(cols, vec), 0};
}
inline const char* reject(const Values& v) {
  return act_from_ok(static_cast<Act>(v.t[index_of(kT, "kAct")]),
                     static_cast<ActFrom>(v.t[index_of(kT, "kFrom")]))
             ? nullptr
             : "from=output takes act=relu only (only ReLU's derivative follows from its output)";
}
}  // namespace bad_bwd
inline constexpr Kernel kBiasActDropoutBwd =
    make_kernel("bias_act_dropout", "bias_act_dropout_bwd_kernel", bad_bwd::kT, bad_bwd::kP,
                &bad_bwd::launch, Program::kFamily, &bad_bwd::reject);

namespace bias_act_dropout {
inline constexpr const Kernel* kKernels[] = {&kBiasActDropoutFwd, &kBiasActDropoutBwd};
}

}  // namespace lightseq::kern::sig
#endif
