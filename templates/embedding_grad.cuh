// embedding_grad.cuh — the deterministic scatter of the embedding backward: the rows of a batch
// grouped by their key (the token, or the position for a learned position table) in row order,
// then each table row's gradient summed over its group in that order. No floating-point atomics:
// the same batch gives the same bits on every run, however many rows share a token.
//
// The pipeline, per key kind (Key::kToken into the token table, Key::kPosition into a learned
// position table, Key::kType into a token-type table), over a `groups` buffer of 3 * n_keys + 1
// ints zeroed by the runtime:
//   1. embedding_group_count_kernel:  keys[row] (-1: no gradient), counts[key] (integer atomics).
//   2. embedding_group_start_kernel:  starts[key], the segments of `order` (allocated per block of
//                                     keys with one atomic; where a segment lies does not matter).
//   3. embedding_group_place_kernel:  each row into its key's segment (any order).
//   4. embedding_group_order_kernel:  each segment sorted by row (a row's place in its segment is
//                                     the number of smaller rows there: rows are distinct).
//   5. embedding_grad_kernel:         grad[key] (= | +=) scale * sum over the segment, in row
//   order,
//                                     of the row's gradient (dropout and LayerNorm backward
//                                     recomputed from grad_out; per-row LN statistics from
//                                     embedding_bwd_kernel).
// groups layout: counts [0, n), starts [n, 2n), fill [2n, 3n) (rows placed so far), total [3n].
#pragma once

#include "common/philox.cuh"
#include "common/types.cuh"
#include "embedding.cuh"
#include "embedding_grad.sig.cuh"
#include "layernorm.cuh"

namespace lightseq::kern {

// The key of a row whose gradient lands in a table row: its token (Key::kToken), its position
// (Key::kPosition) or its token type (Key::kType); -1 for rows without a gradient there
// (EmbRow::grads_into: tokens outside [0, vocab), positions >= max_positions, types outside
// [0, n_types), zeroed padding rows; an embedded padding row's token and counted position).
template <Key kKey, PosFrom kPosFrom>
__device__ __forceinline__ int row_key(const int64_t* tokens, const int64_t* token_types,
                                       int64_t row, int64_t seq, int64_t vocab, int64_t padding_idx,
                                       int64_t zero_padding, int64_t max_positions,
                                       int64_t n_types) {
  const EmbRow r = embedding_row<kPosFrom>(tokens, token_types, row, seq, vocab, padding_idx,
                                           zero_padding, max_positions, n_types);
  if (!r.template grads_into<kKey, kPosFrom>()) return -1;
  return static_cast<int>(kKey == Key::kToken ? r.tok : kKey == Key::kPosition ? r.t : r.type);
}

// embedding_group_count_kernel — keys[row] = row_key(row); groups.counts[key] += 1.
// Shapes:    tokens, token_types (may be null: type 0) [batch, seq]; keys [batch * seq] int `=`;
//            groups [3 * n_keys + 1] int, zeroed by the runtime, counts `+=`. n_keys: vocab
//            (kToken), max_positions (kPosition) or n_types (kType).
// Grid/Block: embedding_group_grid(batch * seq) blocks of kElementwiseThreads, grid-stride.
// Numerics:  integer atomics only.
template <Key kKey, PosFrom kPosFrom>
__global__ void __launch_bounds__(kElementwiseThreads)
    embedding_group_count_kernel(const int64_t* tokens, const int64_t* token_types, int* keys,
                                 int* groups, int64_t batch, int64_t seq, int64_t vocab,
                                 int64_t padding_idx, int64_t zero_padding, int64_t max_positions,
                                 int64_t n_types) {
  static_assert(kKey == Key::kToken || kKey == Key::kPosition || kKey == Key::kType, "Key");
  const int64_t rows = batch * seq;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += stride) {
    const int k = row_key<kKey, kPosFrom>(tokens, token_types, row, seq, vocab, padding_idx,
                                          zero_padding, max_positions, n_types);
    keys[row] = k;
    if (k >= 0) atomicAdd(groups + k, 1);
  }
}

// embedding_group_start_kernel — groups.starts[key]: where key's segment of `order` begins (the
// keys of a block of kElementwiseThreads take consecutive segments, prefix sums of their counts;
// the block's base comes from one atomicAdd on groups.total).
// Shapes:    groups [3 * n_keys + 1] int: counts read, starts `=`, total `+=`.
// Grid/Block: embedding_group_grid(n_keys) blocks of kElementwiseThreads, grid-stride over tiles
//            of kElementwiseThreads keys.
template <Key kKey>
__global__ void __launch_bounds__(kElementwiseThreads)
    embedding_group_start_kernel(int* groups, int64_t n_keys) {
  constexpr int kWarps = kElementwiseThreads / 32;
  __shared__ int warp_total[kWarps];
  __shared__ int block_base;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t tiles = (n_keys + kElementwiseThreads - 1) / kElementwiseThreads;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t k = tile * kElementwiseThreads + threadIdx.x;
    const int c = k < n_keys ? groups[k] : 0;
    int incl = c;  // inclusive prefix within the warp
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int o = __shfl_up_sync(0xffffffffu, incl, d);
      if (lane >= d) incl += o;
    }
    if (lane == 31) warp_total[warp] = incl;
    __syncthreads();
    int before = 0, total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      before += w < warp ? warp_total[w] : 0;
      total += warp_total[w];
    }
    if (threadIdx.x == 0) block_base = total > 0 ? atomicAdd(groups + 3 * n_keys, total) : 0;
    __syncthreads();
    if (k < n_keys) groups[n_keys + k] = block_base + before + incl - c;
    __syncthreads();  // warp_total and block_base are reused by the next tile
  }
}

// embedding_group_place_kernel — order[starts[key] + fill[key]++] = row for every row with a key
// (the order within a segment is arbitrary here; embedding_group_order_kernel sorts it).
// Shapes:    keys [rows] int; groups: starts read, fill `+=`; members [rows] int `=` (the first
//            groups.total entries).
// Grid/Block: embedding_group_grid(rows) blocks of kElementwiseThreads, grid-stride.
template <Key kKey>
__global__ void __launch_bounds__(kElementwiseThreads)
    embedding_group_place_kernel(const int* keys, int* groups, int* members, int64_t rows,
                                 int64_t n_keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += stride) {
    const int k = keys[row];
    if (k < 0) continue;
    const int slot = atomicAdd(groups + 2 * n_keys + k, 1);
    members[groups[n_keys + k] + slot] = static_cast<int>(row);
  }
}

// embedding_group_order_kernel — order[starts[key] + rank] = row, rank = the number of rows of
// the key's segment of `members` smaller than row: every segment sorted by row.
// Shapes:    keys [rows], groups (counts, starts), members [rows] int read; order [rows] int `=`.
// Grid/Block: embedding_group_grid(rows) blocks of kElementwiseThreads, grid-stride.
// Cost:      the sum over keys of count^2 comparisons (the rows of one token read its segment):
//            negligible for text; a batch of one repeated token costs rows^2 (~0.1 ms at 64k).
template <Key kKey>
__global__ void __launch_bounds__(kElementwiseThreads)
    embedding_group_order_kernel(const int* keys, const int* groups, const int* members, int* order,
                                 int64_t rows, int64_t n_keys) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += stride) {
    const int k = keys[row];
    if (k < 0) continue;
    const int* seg = members + groups[n_keys + k];
    const int n = groups[k];
    int rank = 0;
    for (int j = 0; j < n; ++j) rank += seg[j] < row ? 1 : 0;
    order[groups[n_keys + k] + rank] = static_cast<int>(row);
  }
}

// embedding_grad_kernel — grad[key] (= | +=) scale * sum over the key's rows, in row order, of
//   dE(row): the dropout-masked grad_out (Norm::kOff), or its LayerNorm backward
//   rs * (g * gamma - m1 - xhat * m2) with m1, m2 from row_stats (Norm::kOn). Keys without rows:
//   zero rows (kOverwrite), untouched (kAdd).
// Fuses:     dropout backward + LayerNorm dx + the segment sum + scale + cast (+ accumulation).
// Shapes:    grad_out, sum_out [rows, kHidden]; mean, rstd [rows] fp32; row_stats [rows, 2] fp32;
//            gamma [kHidden]; groups, order as embedding_group_order_kernel wrote them; grad
//            [n_keys, kHidden] in T. acc: kOverwrite or kAdd.
// Grid/Block: embedding_grad_grid(n_keys) blocks of embedding_grad_block(kHidden, kVec) threads;
//            block b handles keys b, b + gridDim.x, ...; a thread owns kVec-wide column vectors
//            tid, tid + blockDim.x, ... (embedding_grad_slots of them).
// Constants: kHidden % kVec == 0, kVec | 16 / sizeof(T).
// Numerics:  fp32 sums in row order, one multiply by scale, one rounding to T (after the fp32 add
//            for kAdd): deterministic.
template <typename T, int kHidden, int kVec, Norm kNorm, Drop kDrop>
__global__ void __launch_bounds__(embedding_grad_block(kHidden, kVec))
    embedding_grad_kernel(const T* grad_out, const T* sum_out, const float* mean, const float* rstd,
                          const float* row_stats, const T* gamma, const int* groups,
                          const int* order, T* grad, int64_t n_keys, float scale, DropoutArgs drop,
                          Accumulate acc) {
  static_assert(kHidden > 0 && kVec >= 1 && kHidden % kVec == 0, "kVec must divide kHidden");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kNorm == Norm::kOff || kNorm == Norm::kOn, "Norm");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  constexpr int kNvec = kHidden / kVec;
  constexpr int kThreads = embedding_grad_block(kHidden, kVec);
  constexpr int kSlots = embedding_grad_slots(kHidden, kVec);
  constexpr bool kMasked = kDrop == Drop::kOn;
  drop = load_dropout_state(drop);
  const int tid = threadIdx.x;

  for (int64_t k = blockIdx.x; k < n_keys; k += gridDim.x) {
    const int n = groups[k];
    T* out = grad + k * kHidden;
    if (n == 0) {
      if (acc == Accumulate::kOverwrite) {
        const Vec<T, kVec> zero = {};
#pragma unroll
        for (int s = 0; s < kSlots; ++s) {
          const int v = s * kThreads + tid;
          if (v < kNvec) store_vec<kVec>(out + v * kVec, zero);
        }
      }
      continue;
    }
    const int* rows = order + groups[n_keys + k];
    float sum[kSlots][kVec] = {};
#pragma unroll 4
    for (int j = 0; j < n; ++j) {
      const int64_t row = rows[j];
      const int64_t base = row * kHidden;
      float mu = 0.f, rs = 0.f, m1 = 0.f, m2 = 0.f;
      if constexpr (kNorm == Norm::kOn) {
        mu = mean[row];
        rs = rstd[row];
        m1 = row_stats[2 * row];
        m2 = row_stats[2 * row + 1];
      }
#pragma unroll
      for (int s = 0; s < kSlots; ++s) {
        const int v = s * kThreads + tid;
        if (v >= kNvec) continue;
        const uint32_t keep = kMasked ? dropout_keep_bits<kVec>(drop, base + v * kVec) : 0u;
        float d[kVec];
        ln_grad_in<kMasked>(load_vec<kVec>(grad_out + base + v * kVec), keep, drop.scale, d);
        if constexpr (kNorm == Norm::kOn) {
          ln_dx<T, kVec>(d, load_vec<kVec>(sum_out + base + v * kVec), gamma + v * kVec, mu, rs, m1,
                         m2);
        }
#pragma unroll
        for (int e = 0; e < kVec; ++e) sum[s][e] += d[e];
      }
    }
#pragma unroll
    for (int s = 0; s < kSlots; ++s) {
      const int v = s * kThreads + tid;
      if (v >= kNvec) continue;
      float r[kVec];
      if (acc == Accumulate::kAdd) {
        load_float<kVec>(out + v * kVec, r);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) r[e] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) r[e] += scale * sum[s][e];
      store_float<kVec>(out + v * kVec, r);
    }
  }
}

}  // namespace lightseq::kern
