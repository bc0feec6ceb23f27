// embedding.cuh — token embedding lookup, scaled, plus sinusoidal or learned positions, optional
// LayerNorm and dropout; and the LayerNorm part of its backward (per-row statistics and the
// LayerNorm parameter partials; the table gradients are embedding_grad.cuh's deterministic
// scatter). Row layout and LayerNorm pieces come from layernorm.cuh.
#pragma once

#include "common/philox.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"
#include "embedding.sig.cuh"
#include "layernorm.cuh"

namespace lightseq::kern {

// Position embedding of vector v (columns v * kVec ..) at position t, added to e.
template <typename T, int kHidden, int kVec, Pos kPos>
__device__ __forceinline__ void add_position(float (&e)[kVec], const T* pos_table, int64_t t,
                                             int v) {
  if constexpr (kPos == Pos::kSinusoidal) {
    // Fairseq: freq_k = exp(-k * ln(10000) / (H/2 - 1)), sin(t * freq) in [0, H/2), cos in [H/2,
    // H), all in fp32 like fairseq.modules.SinusoidalPositionalEmbedding.
    constexpr int kHalf = kHidden / 2;
    constexpr float kNegLogStep = static_cast<float>(-9.210340371976184 / (kHalf - 1));
    const float pos = static_cast<float>(t);
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const int col = v * kVec + i;
      const int k = col < kHalf ? col : col - kHalf;
      const float angle = pos * expf(static_cast<float>(k) * kNegLogStep);
      e[i] += col < kHalf ? sinf(angle) : cosf(angle);
    }
  } else if constexpr (kPos == Pos::kLearned) {
    float p[kVec];
    load_float<kVec>(pos_table + t * kHidden + v * kVec, p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] += p[i];
  }
}

// The position of the token at `row` (rows b·seq + t). PosFrom::kIndex: t. PosFrom::kTokens
// (fairseq's make_positions): padding_idx + the count of non-padding tokens of its sequence up to
// and including it, and padding_idx for a padding token; the sequence's tokens before it are read
// again (L1/L2 hits; seq is short next to the row's hidden-width work).
template <PosFrom kPosFrom>
__device__ __forceinline__ int64_t position_of(const int64_t* tokens, int64_t row, int64_t seq,
                                               int64_t padding_idx) {
  static_assert(kPosFrom == PosFrom::kIndex || kPosFrom == PosFrom::kTokens, "PosFrom");
  const int64_t t = row % seq;
  if constexpr (kPosFrom == PosFrom::kIndex) {
    return t;
  } else {
    if (tokens[row] == padding_idx) return padding_idx;
    int64_t n = 0;
    for (int64_t j = row - t; j <= row; ++j) n += tokens[j] != padding_idx ? 1 : 0;
    return padding_idx + n;
  }
}

// The token type of `row` (0 when the caller gave no types), or -1 when it lies outside
// [0, n_types). Models without a type table (n_types 0) have no types: 0.
__device__ __forceinline__ int64_t type_of(const int64_t* token_types, int64_t row,
                                           int64_t n_types) {
  if (n_types == 0) return 0;
  const int64_t tt = token_types != nullptr ? token_types[row] : 0;
  return tt >= 0 && tt < n_types ? tt : -1;
}

// A row of the batch as every embedding kernel sees it: its token, position and type; `bad` when
// the forward rejects it (a token outside [0, vocab), t >= max_positions, a type outside
// [0, n_types): a zero row and the flag); `padding` for padding_idx, which with zero_padding
// (PaddingRows::kZero, fairseq) also gives a zero row and no gradient, and otherwise
// (PaddingRows::kEmbedded, torch.nn.Embedding) is embedded like any token. The rules, in one
// place: a row is embedded (and its gradient flows back through LayerNorm and dropout) iff
// active(); its gradient lands in a table row iff grads_into(key).
struct EmbRow {
  int64_t tok, t, type;
  bool bad, padding, zero_padding;
  __device__ __forceinline__ bool active() const { return !bad && !(padding && zero_padding); }
  // An embedded padding row gives no gradient to the padding token's row (nn.Embedding's
  // padding_idx) nor, with positions from tokens, to the padding position's row (fairseq's and
  // RoBERTa's position tables have padding_idx too); its position (from the index) and type rows
  // get theirs.
  template <Key kKey, PosFrom kPosFrom>
  __device__ __forceinline__ bool grads_into() const {
    if (!active()) return false;
    if (!padding) return true;
    return kKey == Key::kType || (kKey == Key::kPosition && kPosFrom == PosFrom::kIndex);
  }
};
template <PosFrom kPosFrom>
__device__ __forceinline__ EmbRow embedding_row(const int64_t* tokens, const int64_t* token_types,
                                                int64_t row, int64_t seq, int64_t vocab,
                                                int64_t padding_idx, int64_t zero_padding,
                                                int64_t max_positions, int64_t n_types) {
  EmbRow r;
  r.tok = tokens[row];
  r.t = position_of<kPosFrom>(tokens, row, seq, padding_idx);
  r.type = type_of(token_types, row, n_types);
  r.bad = r.tok < 0 || r.tok >= vocab || r.t >= max_positions || r.type < 0;
  r.padding = r.tok == padding_idx;
  r.zero_padding = zero_padding != 0;
  return r;
}

// embedding_fwd_kernel — e = token_table[tok] * scale + P[t] (t = position_of<kPosFrom>: row %
//   seq, or fairseq's count over non-padding tokens; Pos::kSinusoidal:
//   Fairseq layout, Pos::kLearned: pos_table[t], Pos::kNone: nothing) (+ type_table[type] when
//   n_types > 0: BERT's token types, type 0 where token_types is null); Norm::kOn: sum_out = e,
//   e = LN(e) with mean, rstd saved; out = dropout(e).
// Fuses:     lookup + scale + positions + LayerNorm + dropout + cast.
// Shapes:    tokens [batch, seq] int64; token_table [vocab, kHidden]; pos_table [max_positions,
//            kHidden]; gamma, beta [kHidden]; out, sum_out [batch * seq, kHidden]; mean, rstd
//            [batch * seq] fp32; pad_mask [batch, seq] uint8 (may be null): 1 where the token is
//            padding_idx, else 0 (the layers' key padding mask). All `=`. A padding token gives
//            zero rows (out, sum_out, mean, rstd). A token outside [0, vocab), t >= max_positions
//            or a type outside [0, n_types) also gives zero rows and sets *bad_token = 1 (never
//            cleared here). token_types [batch, seq] (may be null), type_table [n_types, kHidden].
//            Dropout element index: row * kHidden + col.
// Grid/Block: embedding_fwd_grid(batch * seq, kHidden, kVec) blocks of embedding_fwd_block(kHidden,
//            kVec) (the LayerNorm layout). Smem: 256 B static.
// Constants: kHidden % kVec == 0, kVec | 16 / sizeof(T); kHidden even and >= 4 for sinusoids.
// Numerics:  fp32; with Norm::kOn, e is rounded to T (as sum_out stores it) before the statistics.
template <typename T, int kHidden, int kVec, Pos kPos, PosFrom kPosFrom, Norm kNorm, Drop kDrop>
__global__ void __launch_bounds__(ln_block(kHidden, kVec))
    embedding_fwd_kernel(const int64_t* tokens, const T* token_table, const T* pos_table,
                         const T* gamma, const T* beta, const int64_t* token_types,
                         const T* type_table, T* out, T* sum_out, float* mean, float* rstd,
                         int* bad_token, uint8_t* pad_mask, int64_t batch, int64_t seq,
                         int64_t vocab, int64_t padding_idx, int64_t zero_padding,
                         int64_t max_positions, int64_t n_types, float scale, float eps,
                         DropoutArgs drop) {
  static_assert(kHidden > 0 && kVec >= 1 && kHidden % kVec == 0, "kVec must divide kHidden");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kPos == Pos::kNone || kPos == Pos::kSinusoidal || kPos == Pos::kLearned, "Pos");
  static_assert(kPos != Pos::kSinusoidal || (kHidden % 2 == 0 && kHidden >= 4),
                "sinusoidal positions need an even kHidden >= 4");
  static_assert(kNorm == Norm::kOff || kNorm == Norm::kOn, "Norm");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  drop = load_dropout_state(drop);
  constexpr int kNvec = kHidden / kVec;
  constexpr int kTpr = ln_threads_per_row(kHidden, kVec);
  constexpr int kRows = ln_rows_per_block(kHidden, kVec);
  __shared__ float smem[64];

  const int tid = threadIdx.x % kTpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x / kTpr;
  const bool in_range = row < batch * seq;
  const int64_t base = row * kHidden;
  const EmbRow er = in_range
                        ? embedding_row<kPosFrom>(tokens, token_types, row, seq, vocab, padding_idx,
                                                  zero_padding, max_positions, n_types)
                        : EmbRow{padding_idx, 0, 0, false, true, true};
  const int64_t t = er.t, tok = er.tok, type = er.type;
  if (er.bad && tid == 0) *bad_token = 1;
  if (in_range && tid == 0 && pad_mask != nullptr) pad_mask[row] = er.padding ? 1 : 0;
  // Rows that get the LN: in range and active (a valid token, not a zeroed padding token). The
  // others write zero rows; they leave early unless their warps share the LN's barriers with
  // other rows of the block.
  const bool active = in_range && er.active();
  if (in_range && !active) {
    const Vec<T, kVec> zero = {};
    for (int v = tid; v < kNvec; v += kTpr) {
      store_vec<kVec>(out + base + v * kVec, zero);
      if constexpr (kNorm == Norm::kOn) store_vec<kVec>(sum_out + base + v * kVec, zero);
    }
    if (kNorm == Norm::kOn && tid == 0) {
      mean[row] = 0.f;
      rstd[row] = 0.f;
    }
  }
  constexpr bool kSharedBarriers = kNorm == Norm::kOn && kTpr > 32 && kRows > 1;
  if (!kSharedBarriers && !active) return;

  const T* emb_row = token_table + tok * kHidden;
  const T* type_row = n_types > 0 ? type_table + type * kHidden : nullptr;
  auto embed = [&](int v, float(&e)[kVec]) {
    load_float<kVec>(emb_row + v * kVec, e);
#pragma unroll
    for (int i = 0; i < kVec; ++i) e[i] *= scale;
    add_position<T, kHidden, kVec, kPos>(e, pos_table, t, v);
    if (type_row != nullptr) {
      float ty[kVec];
      load_float<kVec>(type_row + v * kVec, ty);
#pragma unroll
      for (int i = 0; i < kVec; ++i) e[i] += ty[i];
    }
  };
  auto emit = [&](int v, float(&y)[kVec]) {
    if constexpr (kDrop == Drop::kOn) {
      apply_dropout<kVec>(y, dropout_keep_bits<kVec>(drop, base + v * kVec), drop.scale);
    }
    store_float<kVec>(out + base + v * kVec, y);
  };

  if constexpr (kNorm == Norm::kOff) {
    for (int v = tid; v < kNvec; v += kTpr) {
      float e[kVec];
      embed(v, e);
      emit(v, e);
    }
  } else if constexpr (ln_fwd_cached(kHidden, kVec)) {
    constexpr int kSlots = ln_slots(kHidden, kVec);
    Vec<T, kVec> zr[kSlots] = {};
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kTpr + tid;
      if (active && v < kNvec) {
        float e[kVec];
        embed(v, e);
#pragma unroll
        for (int i = 0; i < kVec; ++i) zr[k].v[i] = from_float<T>(e[i]);
        store_vec<kVec>(sum_out + base + v * kVec, zr[k]);
      }
    }
    float mu, rs;
    ln_row_stats<T, kHidden, kVec, kTpr, kSlots>(zr, tid, eps, smem, mu, rs);
    if (!active) return;  // after the last barrier
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kTpr + tid;
      if (v < kNvec) {
        float y[kVec];
        ln_normalize<T, kVec>(zr[k], gamma + v * kVec, beta + v * kVec, mu, rs, y);
        emit(v, y);
      }
    }
    if (tid == 0) {
      mean[row] = mu;
      rstd[row] = rs;
    }
  } else {
    static_assert(kRows == 1, "streamed rows take a block each");
    auto load_z = [&](int v, float(&z)[kVec]) {
      embed(v, z);
#pragma unroll
      for (int i = 0; i < kVec; ++i) z[i] = round_to<T>(z[i]);
      store_float<kVec>(sum_out + base + v * kVec, z);
    };
    auto reload_z = [&](int v, float(&z)[kVec]) { load_float<kVec>(sum_out + base + v * kVec, z); };
    float mu, rs;
    ln_row_forward_streamed<T, kHidden, kVec, kTpr>(load_z, reload_z, emit, tid, gamma, beta, eps,
                                                    smem, mu, rs);
    if (tid == 0) {
      mean[row] = mu;
      rstd[row] = rs;
    }
  }
}

// embedding_bwd_kernel — the LayerNorm part of the embedding backward (Norm::kOn embeddings):
//   with g = dropout_mask(grad_out), row_stats[row] = (m1, m2) = (mean(g * gamma),
//   mean(g * gamma * xhat)) for embedding_grad_kernel's dx, and per-block partials of
//   dgamma = sum g * xhat, dbeta = sum g.
// Fuses:     dropout backward + LN backward statistics + LN parameter partials.
// Shapes:    grad_out, sum_out [batch * seq, kHidden]; tokens [batch, seq]; mean, rstd
//            [batch * seq]; gamma [kHidden]; row_stats [batch * seq, 2] fp32 `=` (rows with a
//            gradient only: padding tokens, tokens outside [0, vocab), t >= max_positions and
//            types outside [0, n_types) have none and contribute nothing); partials
//            [embedding_bwd_blocks(batch * seq), 2 * kHidden] fp32 `=`.
// Grid/Block: embedding_bwd_grid(batch * seq) blocks of embedding_bwd_block(kHidden, kVec) (the
//            ln_bwd layout; block b owns rows [partial_row_begin(rows, gridDim.x, b), ...(b+1))).
// Constants: as embedding_fwd_kernel.
// Numerics:  fp32, fixed summation order (deterministic).
template <typename T, int kHidden, int kVec, PosFrom kPosFrom, Drop kDrop>
__global__ void __launch_bounds__(ln_bwd_block(kHidden, kVec))
    embedding_bwd_kernel(const T* grad_out, const int64_t* tokens, const T* sum_out,
                         const float* mean, const float* rstd, const T* gamma,
                         const int64_t* token_types, float* row_stats, float* partials,
                         int64_t batch, int64_t seq, int64_t vocab, int64_t padding_idx,
                         int64_t zero_padding, int64_t max_positions, int64_t n_types,
                         DropoutArgs drop) {
  static_assert(kHidden > 0 && kVec >= 1 && kHidden % kVec == 0, "kVec must divide kHidden");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  drop = load_dropout_state(drop);
  constexpr int kNvec = kHidden / kVec;
  constexpr int kTpr = ln_bwd_threads_per_row(kHidden, kVec);
  constexpr int kRows = ln_bwd_rows_per_block(kHidden, kVec);
  constexpr bool kMasked = kDrop == Drop::kOn;
  __shared__ float smem[64];

  const int tid = threadIdx.x % kTpr;
  const int group = threadIdx.x / kTpr;
  const int64_t rows = batch * seq;
  const int64_t r0 = partial_row_begin(rows, gridDim.x, blockIdx.x);
  const int64_t r1 = partial_row_begin(rows, gridDim.x, blockIdx.x + 1);
  float* part = partials + static_cast<int64_t>(blockIdx.x) * 2 * kHidden;
  // Rows with a gradient (the forward's active rows).
  auto is_active = [&](int64_t row) {
    return embedding_row<kPosFrom>(tokens, token_types, row, seq, vocab, padding_idx, zero_padding,
                                   max_positions, n_types)
        .active();
  };

  if constexpr (ln_bwd_cached(kHidden, kVec)) {
    constexpr int kSlots = ln_bwd_slots(kHidden, kVec);
    float acc_gamma[kSlots][kVec], acc_beta[kSlots][kVec];
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
#pragma unroll
      for (int i = 0; i < kVec; ++i) acc_gamma[k][i] = acc_beta[k][i] = 0.f;
    }
    // Every group runs the same number of iterations (the reductions may hold barriers); a group
    // without a contributing row works on zeros.
    for (int64_t first = r0; first < r1; first += kRows) {
      const int64_t row = first + group;
      const bool active = row < r1 && is_active(row);
      const int64_t base = row * kHidden;
      Vec<T, kVec> g[kSlots] = {}, x[kSlots] = {};
      uint32_t keep[kSlots];
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = k * kTpr + tid;
        keep[k] = 0u;
        if (active && v < kNvec) {
          g[k] = load_vec<kVec>(grad_out + base + v * kVec);
          x[k] = load_vec<kVec>(sum_out + base + v * kVec);
          if constexpr (kMasked) keep[k] = dropout_keep_bits<kVec>(drop, base + v * kVec);
        }
      }
      const float mu = active ? mean[row] : 0.f;
      const float rs = active ? rstd[row] : 0.f;
      float m1, m2;
      ln_row_backward_stats<kMasked, T, kHidden, kVec, kTpr, kSlots>(
          g, keep, drop.scale, x, tid, gamma, mu, rs, smem, acc_gamma, acc_beta, m1, m2);
      if (active && tid == 0) {
        row_stats[2 * row] = m1;
        row_stats[2 * row + 1] = m2;
      }
    }
    __shared__ alignas(16) float red[kRows > 1 ? kRows * kHidden : 1];
    ln_write_partial<kHidden, kVec, kTpr, kSlots, kRows>(acc_gamma, tid, group, red, part);
    ln_write_partial<kHidden, kVec, kTpr, kSlots, kRows>(acc_beta, tid, group, red, part + kHidden);
  } else {
    static_assert(kRows == 1, "streamed rows take a block each");
    for (int v = tid; v < kNvec; v += kTpr) {  // accumulators: this block's partials row
      const float zero[kVec] = {};
      store_f32<kVec>(part + v * kVec, zero);
      store_f32<kVec>(part + kHidden + v * kVec, zero);
    }
    for (int64_t row = r0; row < r1; ++row) {
      if (!is_active(row)) continue;
      const int64_t base = row * kHidden;
      auto load_g = [&](int v, float(&g)[kVec]) {
        const uint32_t keep = kMasked ? dropout_keep_bits<kVec>(drop, base + v * kVec) : 0u;
        ln_grad_in<kMasked>(load_vec<kVec>(grad_out + base + v * kVec), keep, drop.scale, g);
      };
      auto load_x = [&](int v, float(&x)[kVec]) { load_float<kVec>(sum_out + base + v * kVec, x); };
      float m1, m2;
      ln_row_backward_stats_streamed<T, kHidden, kVec, kTpr>(
          load_g, load_x, tid, gamma, mean[row], rstd[row], smem, part, part + kHidden, m1, m2);
      if (tid == 0) {
        row_stats[2 * row] = m1;
        row_stats[2 * row + 1] = m2;
      }
    }
  }
}

}  // namespace lightseq::kern
