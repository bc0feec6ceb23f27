// launch.cuh — every launch formula of the kernel templates (grid, block, shared memory, partial
// buffer sizes, vector widths, which code path a size takes), as __host__ __device__ constexpr
// functions: the runtime sizes its launches and buffers with them, the kernels derive their thread
// layout from the same functions, and tests/templates_host_test.cpp checks them on the host.
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
LIGHTSEQ_HD constexpr GridDim grid_1d(int64_t x) { return GridDim{static_cast<uint32_t>(x), 1u, 1u}; }

// ---- vector width -----------------------------------------------------------------------------
// Elements per 16-byte access, halved until it divides n (the row length); 1 at worst.
LIGHTSEQ_HD constexpr int vec_width(int elem_bytes, int64_t n) {
  int v = 16 / elem_bytes;
  while (v > 1 && n % v != 0) v /= 2;
  return v;
}

// ---- per-block partials of column sums ---------------------------------------------------------
// Kernels that produce per-column sums (bias, gamma, beta gradients) split the rows into
// contiguous chunks, one per block (block b owns rows [partial_row_begin(b), partial_row_begin(b+1))),
// and write one fp32 row of partials per block; column_sum_kernel adds them up. At least
// kPartialMinBlocks blocks (2 per SM of an H100 SXM, 132 SMs) keep the GPU busy at small row
// counts; at least kPartialRowsPerBlock rows per block keep the partial traffic small at large ones.
inline constexpr int64_t kPartialMinBlocks = 264;
inline constexpr int64_t kPartialRowsPerBlock = 64;
LIGHTSEQ_HD constexpr int64_t partial_blocks(int64_t rows) {
  return rows <= 0 ? 0
                   : min_i64(rows, max_i64(kPartialMinBlocks, ceil_div(rows, kPartialRowsPerBlock)));
}
LIGHTSEQ_HD constexpr int64_t partial_row_begin(int64_t rows, int64_t blocks, int64_t b) {
  return b * rows / blocks;
}

// Column-tile layout of partial-writing elementwise kernels (bias_act_dropout_bwd, merge_heads):
// a block is kTx column-vectors x kTy rows; grid = (partial_blocks(rows), column tiles).
LIGHTSEQ_HD constexpr int coltile_tx(int64_t col_vecs) { return static_cast<int>(min_i64(col_vecs, 128)); }
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
             : static_cast<int>(
                   max_i64(32, pow2_ceil(ceil_div(hidden / vec, max_elems / vec))));
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

// ---- embedding.cuh: the LayerNorm layouts ------------------------------------------------------
LIGHTSEQ_HD constexpr int embedding_fwd_block(int64_t hidden, int vec) { return ln_block(hidden, vec); }
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
  return static_cast<int>(min_i64(
      threads,
      pow2_ceil(ceil_div(ceil_div(k_len, softmax_vec(k_len, elem_bytes)), kSoftmaxSlots))));
}
// Scalar rows are always streamed: a cached scalar path measured 636 vs 526 GB/s at k_len = 127
// (H100, bf16) and cost 0.2 s of NVRTC time per softmax program; pad k_len to a multiple of 8.
LIGHTSEQ_HD constexpr bool softmax_cached(int64_t k_len, int threads, int elem_bytes) {
  return softmax_vec(k_len, elem_bytes) > 1 &&
         ceil_div(k_len / softmax_vec(k_len, elem_bytes), softmax_lanes(k_len, threads, elem_bytes)) <=
             kSoftmaxSlots;
}
LIGHTSEQ_HD constexpr int softmax_rows_per_block(int64_t k_len, int threads, int elem_bytes) {
  return threads / softmax_lanes(k_len, threads, elem_bytes);
}
LIGHTSEQ_HD constexpr int softmax_block(int threads) { return threads; }
// rows = batch * heads * q_len (forward) or the rows argument (backward).
LIGHTSEQ_HD constexpr GridDim softmax_grid(int64_t rows, int64_t k_len, int threads, int elem_bytes) {
  return grid_1d(ceil_div(rows, softmax_rows_per_block(k_len, threads, elem_bytes)));
}

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

// ---- adam.cuh ----------------------------------------------------------------------------------
// One block per chunk. The runtime splits tensors into chunks of at most kAdamChunkElems elements
// (a multiple of 4 keeps 16-byte alignment; unaligned chunks take the scalar path).
inline constexpr int64_t kAdamChunkElems = 65536;
LIGHTSEQ_HD constexpr int adam_block() { return 256; }
LIGHTSEQ_HD constexpr GridDim adam_grid(int64_t n_chunks) { return grid_1d(n_chunks); }
LIGHTSEQ_HD constexpr int check_finite_block() { return 256; }
LIGHTSEQ_HD constexpr GridDim check_finite_grid(int64_t n_chunks) { return grid_1d(n_chunks); }

// ---- reduce.cuh --------------------------------------------------------------------------------
// column_sum: a block sums kColumnSumCols columns (32 bytes of a partials row: one DRAM sector)
// with kColumnSumRowLanes row lanes, each keeping 4 loads in flight. 16 x 16 took 32 us for 1024
// partial rows x 1024 columns on an H100; many lanes per column shorten each thread's serial chain.
inline constexpr int kColumnSumCols = 8;
inline constexpr int kColumnSumRowLanes = 64;
LIGHTSEQ_HD constexpr int column_sum_block() { return kColumnSumCols * kColumnSumRowLanes; }
LIGHTSEQ_HD constexpr GridDim column_sum_grid(int64_t cols) {
  return grid_1d(ceil_div(cols, kColumnSumCols));
}
LIGHTSEQ_HD constexpr int convert_block() { return kElementwiseThreads; }
LIGHTSEQ_HD constexpr GridDim convert_grid(int64_t n) { return elementwise_grid(ceil_div(n, 4)); }
LIGHTSEQ_HD constexpr int accumulate_block() { return kElementwiseThreads; }
LIGHTSEQ_HD constexpr GridDim accumulate_grid(int64_t n) { return elementwise_grid(ceil_div(n, 4)); }

}  // namespace lightseq::kern
