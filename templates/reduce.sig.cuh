// reduce.sig.cuh — reduce.cuh's traits and signatures: column sums of per-block partials, fp32
// conversion, accumulation. Traits: the family's launch formulas as __host__ __device__ constexpr
// functions, which the kernels and the runtime share. Signatures (host-only, common/signature.cuh):
// each kernel's template and run-time parameters with their roles, its launch shape and its scratch
// extents, declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- reduce.cuh --------------------------------------------------------------------------------
// column_sum: a block sums kColumnSumCols columns (32 bytes of a partials row: one DRAM sector)
// with kColumnSumRowLanes row lanes, each keeping 4 loads in flight. 16 x 16 took 32 us for 1024
// partial rows x 1024 columns on an H100; many lanes per column shorten each thread's serial chain.
// One launch finishes up to kColumnSumMaxOuts gradients of one partials tensor (grid y: the
// output), e.g. a LayerNorm backward's gamma, beta and preceding bias.
inline constexpr int kColumnSumCols = 8;
inline constexpr int kColumnSumRowLanes = 64;
inline constexpr int kColumnSumMaxOuts = 3;
LIGHTSEQ_HD constexpr int column_sum_block() { return kColumnSumCols * kColumnSumRowLanes; }
LIGHTSEQ_HD constexpr GridDim column_sum_grid(int64_t cols, int64_t n_out) {
  return GridDim{static_cast<uint32_t>(ceil_div(cols, kColumnSumCols)),
                 static_cast<uint32_t>(n_out), 1u};
}
LIGHTSEQ_HD constexpr int convert_block() { return kElementwiseThreads; }
LIGHTSEQ_HD constexpr GridDim convert_grid(int64_t n) { return elementwise_grid(ceil_div(n, 4)); }
LIGHTSEQ_HD constexpr int accumulate_block() { return kElementwiseThreads; }
LIGHTSEQ_HD constexpr GridDim accumulate_grid(int64_t n) {
  return elementwise_grid(ceil_div(n, 4));
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

namespace column_sum {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {in("partials", CType::kConstF32Ptr),
                               scalar("n_blocks", CType::kI64),
                               scalar("stride", CType::kI64),
                               scalar("col_offset", CType::kI64),
                               scalar("cols", CType::kI64),
                               scalar("n_out", CType::kI64),
                               out("out0", CType::kTPtr),
                               out("out1", CType::kTPtr, Nullable::kYes),
                               out("out2", CType::kTPtr, Nullable::kYes),
                               grad_mode("acc")};
inline Launch launch(const Values& v) {
  return {column_sum_grid(v.i[index_of(kP, "cols")], v.i[index_of(kP, "n_out")]),
          column_sum_block(), 0};
}
}  // namespace column_sum
inline constexpr Kernel kColumnSum =
    make_kernel("reduce", "column_sum_kernel", column_sum::kT, column_sum::kP, &column_sum::launch);

namespace convert {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {in("in", CType::kConstF32Ptr), out("out", CType::kTPtr),
                               scalar("n", CType::kI64), grad_mode("acc")};
inline Launch launch(const Values& v) {
  return {convert_grid(v.i[index_of(kP, "n")]), convert_block(), 0};
}
}  // namespace convert
inline constexpr Kernel kConvert =
    make_kernel("reduce", "convert_kernel", convert::kT, convert::kP, &convert::launch);

namespace accumulate {
inline constexpr TParam kT[] = {kDTypeParam};
inline constexpr Param kP[] = {in("in", CType::kConstTPtr), out_acc("out", CType::kTPtr),
                               scalar("n", CType::kI64)};
inline Launch launch(const Values& v) {
  return {accumulate_grid(v.i[index_of(kP, "n")]), accumulate_block(), 0};
}
}  // namespace accumulate
inline constexpr Kernel kAccumulate =
    make_kernel("reduce", "accumulate_kernel", accumulate::kT, accumulate::kP, &accumulate::launch);

namespace reduce {
inline constexpr const Kernel* kKernels[] = {&kColumnSum, &kConvert, &kAccumulate};
}

}  // namespace lightseq::kern::sig
#endif
