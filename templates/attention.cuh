// attention.cuh — head layout changes around the attention GEMMs: split a fused QKV projection
// output into per-head tensors (adding the bias), and merge per-head tensors back into rows
// (with the bias-gradient partials of the projection that produced them, in the backward).
// The vector width kVec = heads_vec(sizeof(T), kHidden, kHeads) divides the head dimension, so a
// 16-byte vector never straddles two heads.
#pragma once

#include "attention.sig.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"

namespace lightseq::kern {

// split_heads_kernel — out[p, b, h, s, :] = in[b * seq + s, p * kHidden + h * d + :] (+ bias[p *
//   kHidden + h * d + :] when BiasAdd::kOn), d = kHidden / kHeads.
// Fuses:     QKV bias add + split into heads.
// Shapes:    in [batch * seq, kParts * kHidden]; bias [kParts * kHidden]; out [kParts, batch,
//            kHeads, seq, d]. out `=`.
// Grid/Block: split_heads_grid(batch * seq, kHidden, kHeads, kParts, sizeof(T)) blocks of
//            split_heads_block() threads, one 16-byte vector each (coalesced reads; writes in
//            d-element runs). Smem: none.
// Constants: kHidden % kHeads == 0, 1 <= kParts <= 3 (static_assert). Pointers 16-byte aligned.
// Numerics:  bias added in fp32, rounded once.
template <typename T, int kHidden, int kHeads, int kParts, BiasAdd kBias>
__global__ void __launch_bounds__(kElementwiseThreads)
    split_heads_kernel(const T* in, const T* bias, T* out, int64_t batch, int64_t seq) {
  static_assert(kHeads > 0 && kHidden % kHeads == 0, "kHeads must divide kHidden");
  static_assert(kParts >= 1 && kParts <= 3, "kParts is 1 (Q), 2 (KV) or 3 (QKV)");
  static_assert(kBias == BiasAdd::kOff || kBias == BiasAdd::kOn, "BiasAdd");
  constexpr int kD = kHidden / kHeads;
  constexpr int kVec = heads_vec(DType<T>::kBytes, kHidden, kHeads);
  constexpr int kDv = kD / kVec;
  constexpr int kHv = kHidden / kVec;
  constexpr int kRowVecs = kParts * kHv;
  const int64_t n = batch * seq * kRowVecs;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x;
  if (i >= n) return;
  const int64_t row = i / kRowVecs;
  const int rem = static_cast<int>(i - row * kRowVecs);
  const int p = rem / kHv;
  const int hv = rem - p * kHv;
  const int h = hv / kDv;
  const int dv = hv - h * kDv;
  const int64_t b = row / seq;
  const int64_t s = row - b * seq;
  const int64_t dst = (((p * batch + b) * kHeads + h) * seq + s) * kD + dv * kVec;
  if constexpr (kBias == BiasAdd::kOn) {
    float x[kVec], bv[kVec];
    load_float<kVec>(in + i * kVec, x);
    load_float<kVec>(bias + rem * kVec, bv);
#pragma unroll
    for (int e = 0; e < kVec; ++e) x[e] += bv[e];
    store_float<kVec>(out + dst, x);
  } else {
    store_vec<kVec>(out + dst, load_vec<kVec>(in + i * kVec));
  }
}

// merge_heads_kernel — out[b * seq + s, p * kHidden + h * d + :] = in[p, b, h, s, :]; with
//   BiasGrad::kOn also per-block column partials of out (the bias gradient of the projection
//   whose output gradient this is).
// Fuses:     merge of heads + bias-gradient reduction (first stage).
// Shapes:    in [kParts, batch, kHeads, seq, d]; out [batch * seq, kParts * kHidden]; partials
//            [merge_blocks(batch * seq), kParts * kHidden] fp32. All `=`.
// Grid/Block: merge_grid(batch * seq, kHidden, kHeads, kParts, sizeof(T)) = (merge_blocks(rows),
//            column tiles) blocks of merge_block(...) = kTx column-vectors x kTy rows; block x owns
//            rows [partial_row_begin(rows, gridDim.x, x), ...(x + 1)). Smem: kTx*kTy*kVec*4 B.
// Constants: kHidden % kHeads == 0, 1 <= kParts <= 3 (static_assert). Pointers 16-byte aligned.
// Numerics:  partials sum the T values in fp32, fixed order (deterministic).
template <typename T, int kHidden, int kHeads, int kParts, BiasGrad kBiasGrad>
__global__ void __launch_bounds__(merge_block(kHidden, kHeads, kParts, DType<T>::kBytes))
    merge_heads_kernel(const T* in, T* out, float* partials, int64_t batch, int64_t seq) {
  static_assert(kHeads > 0 && kHidden % kHeads == 0, "kHeads must divide kHidden");
  static_assert(kParts >= 1 && kParts <= 3, "kParts is 1 (Q), 2 (KV) or 3 (QKV)");
  static_assert(kBiasGrad == BiasGrad::kOff || kBiasGrad == BiasGrad::kOn, "BiasGrad");
  constexpr int kD = kHidden / kHeads;
  constexpr int kVec = heads_vec(DType<T>::kBytes, kHidden, kHeads);
  constexpr int kDv = kD / kVec;
  constexpr int kHv = kHidden / kVec;
  constexpr int kCols = kParts * kHidden;
  constexpr int kNvc = kParts * kHv;
  constexpr int kTx = coltile_tx(kNvc);
  constexpr int kTy = coltile_ty(kNvc);
  __shared__ alignas(16) float red[kBiasGrad == BiasGrad::kOn && kTy > 1 ? kTx * kTy * kVec : 1];

  const int tx = threadIdx.x % kTx;
  const int ty = threadIdx.x / kTx;
  const int cv = blockIdx.y * kTx + tx;
  const bool col_ok = kNvc % kTx == 0 || cv < kNvc;
  const int p = cv / kHv;
  const int hv = cv - p * kHv;
  const int h = hv / kDv;
  const int dv = hv - h * kDv;
  const int64_t rows = batch * seq;
  const int64_t r0 = partial_row_begin(rows, gridDim.x, blockIdx.x);
  const int64_t r1 = partial_row_begin(rows, gridDim.x, blockIdx.x + 1);

  float acc[kVec] = {};
  if (col_ok) {
    int64_t row = r0 + ty;
    int64_t b = row / seq;
    int64_t s = row - b * seq;
    // (p, b, h, s) -> element offset in `in`.
    auto src = [&](int64_t bb, int64_t ss) {
      return (((p * batch + bb) * kHeads + h) * seq + ss) * kD + dv * kVec;
    };
    // Software pipelined: the next row's load is issued before this row's store.
    Vec<T, kVec> v;
    if (row < r1) v = load_vec<kVec>(in + src(b, s));
    for (; row < r1; row += kTy) {
      s += kTy;
      while (s >= seq) {
        s -= seq;
        ++b;
      }
      Vec<T, kVec> next = v;
      if (row + kTy < r1) next = load_vec<kVec>(in + src(b, s));
      store_vec<kVec>(out + row * kCols + cv * kVec, v);
      if constexpr (kBiasGrad == BiasGrad::kOn) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] += to_float(v.v[e]);
      }
      v = next;
    }
  }
  if constexpr (kBiasGrad == BiasGrad::kOn) {
    const int col0 = blockIdx.y * kTx * kVec;
    write_column_partial<kTx, kTy, kVec>(acc, red,
                                         partials + static_cast<int64_t>(blockIdx.x) * kCols + col0,
                                         kCols - col0 < kTx * kVec ? kCols - col0 : kTx * kVec);
  }
}

}  // namespace lightseq::kern
