// launch.cuh — the launch formulas every kernel family shares (grid dimensions, vector widths,
// per-block partials, column tiles, flat grid-stride grids), as __host__ __device__ constexpr
// functions. Each family's own formulas (its traits) live in its <family>.sig.cuh beside its
// template, with its signature; the runtime sizes launches and buffers with the same functions the
// kernels derive their thread layout from, and tests/templates_host_test.cpp checks them.
// Compiles as plain host C++ (no CUDA headers). Blocks are 1-D; grids are GridDim (x, y, z).
// A row count of 0 gives a grid with x = 0: the runtime must not launch it.
#pragma once

#include "common/config.cuh"
#include "common/enums.cuh"

namespace lightseq::kern {

struct GridDim {
  uint32_t x;
  uint32_t y;
  uint32_t z;
};

LIGHTSEQ_HD constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
LIGHTSEQ_HD constexpr int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }
LIGHTSEQ_HD constexpr int64_t max_i64(int64_t a, int64_t b) { return a > b ? a : b; }
// Smallest power of two >= x (1 for x <= 1).
LIGHTSEQ_HD constexpr int64_t pow2_ceil(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}
LIGHTSEQ_HD constexpr GridDim grid_1d(int64_t x) {
  return GridDim{static_cast<uint32_t>(x), 1u, 1u};
}

// ---- vector width -----------------------------------------------------------------------------
// Elements per 16-byte access, halved until it divides n (the row length); 1 at worst.
LIGHTSEQ_HD constexpr int vec_width(int elem_bytes, int64_t n) {
  int v = 16 / elem_bytes;
  while (v > 1 && n % v != 0) v /= 2;
  return v;
}

// ---- per-block partials of column sums ---------------------------------------------------------
// Kernels that produce per-column sums (bias, gamma, beta gradients) split the rows into
// contiguous chunks, one per block (block b owns rows [partial_row_begin(b),
// partial_row_begin(b+1))), and write one fp32 row of partials per block; column_sum_kernel adds
// them up. At least kPartialMinBlocks blocks (2 per SM of an H100 SXM, 132 SMs) keep the GPU busy
// at small row counts; at least kPartialRowsPerBlock rows per block keep the partial traffic small
// at large ones.
inline constexpr int64_t kPartialMinBlocks = 264;
inline constexpr int64_t kPartialRowsPerBlock = 64;
LIGHTSEQ_HD constexpr int64_t partial_blocks(int64_t rows) {
  return rows <= 0
             ? 0
             : min_i64(rows, max_i64(kPartialMinBlocks, ceil_div(rows, kPartialRowsPerBlock)));
}
LIGHTSEQ_HD constexpr int64_t partial_row_begin(int64_t rows, int64_t blocks, int64_t b) {
  return b * rows / blocks;
}

// Column-tile layout of partial-writing elementwise kernels (bias_act_dropout_bwd, merge_heads):
// a block is kTx column-vectors x kTy rows; grid = (partial_blocks(rows), column tiles).
LIGHTSEQ_HD constexpr int coltile_tx(int64_t col_vecs) {
  return static_cast<int>(min_i64(col_vecs, 128));
}
LIGHTSEQ_HD constexpr int coltile_ty(int64_t col_vecs) {
  return static_cast<int>(max_i64(1, 256 / coltile_tx(col_vecs)));
}
LIGHTSEQ_HD constexpr int coltile_block(int64_t col_vecs) {
  return coltile_tx(col_vecs) * coltile_ty(col_vecs);
}
LIGHTSEQ_HD constexpr GridDim coltile_grid(int64_t rows, int64_t col_vecs) {
  return GridDim{static_cast<uint32_t>(partial_blocks(rows)),
                 static_cast<uint32_t>(ceil_div(col_vecs, coltile_tx(col_vecs))), 1u};
}

// ---- flat elementwise kernels ---------------------------------------------------------------
// Grid-stride loops over vectors: 256 threads, at most kElementwiseMaxBlocks blocks.
inline constexpr int kElementwiseThreads = 256;
inline constexpr int64_t kElementwiseMaxBlocks = 8192;
LIGHTSEQ_HD constexpr GridDim elementwise_grid(int64_t n_vecs) {
  return grid_1d(min_i64(ceil_div(n_vecs, kElementwiseThreads), kElementwiseMaxBlocks));
}

}  // namespace lightseq::kern
