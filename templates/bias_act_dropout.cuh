// bias_act_dropout.cuh — out = dropout(act(x + bias)) and its backward with the bias-gradient
// partials; the FFN's first GEMM epilogue when it is not fused into cuBLASLt, and plain bias +
// dropout (Act::kNone).
#pragma once

#include "bias_act_dropout.sig.cuh"
#include "common/math.cuh"
#include "common/philox.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"

namespace lightseq::kern {

// bias_act_dropout_fwd_kernel — out = dropout(act(x + bias)).
// Fuses:     bias add + activation (none, ReLU, exact-erf GELU) + dropout + cast.
// Shapes:    x, out [rows, kCols]; bias [kCols]. out `=`. x is kept by the caller for the
//            backward. Dropout element index: row * kCols + col.
// Grid/Block: bad_fwd_grid(rows, kCols, kVec) blocks of bad_fwd_block() threads, grid-stride over
//            16-byte vectors. Smem: none.
// Constants: kCols % kVec == 0, kVec | 16 / sizeof(T) (static_assert).
// Numerics:  fp32 (x + bias is not rounded to T before the activation).
template <typename T, int kCols, int kVec, Act kAct, Drop kDrop>
__global__ void __launch_bounds__(kElementwiseThreads)
    bias_act_dropout_fwd_kernel(const T* x, const T* bias, T* out, int64_t rows, DropoutArgs drop) {
  static_assert(kCols > 0 && kVec >= 1 && kCols % kVec == 0, "kVec must divide kCols");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  drop = load_dropout_state(drop);
  constexpr int kNvc = kCols / kVec;
  const int64_t n = rows * kNvc;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kElementwiseThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x; i < n;
       i += stride) {
    const int64_t off = i * kVec;
    const int c = static_cast<int>(i % kNvc) * kVec;
    float a[kVec], b[kVec];
    load_float<kVec>(x + off, a);
    load_float<kVec>(bias + c, b);
#pragma unroll
    for (int e = 0; e < kVec; ++e) a[e] = activate<kAct>(a[e] + b[e]);
    if constexpr (kDrop == Drop::kOn) {
      apply_dropout<kVec>(a, dropout_keep_bits<kVec>(drop, off), drop.scale);
    }
    store_float<kVec>(out + off, a);
  }
}

// bias_act_dropout_bwd_kernel — grad_x = act'(x + bias) * dropout_mask(grad_out); per-block column
//   partials of the bias gradient sum_rows grad_x. kFrom = kOutput (ReLU): x is the forward's
//   output y instead, and grad_x = [y > 0] · grad_out (· the dropout scale): y is positive exactly
//   where x + bias was and the entry was kept (x + bias, a sum of two T values, is a multiple of
//   T's smallest subnormal, so a positive one never rounds to 0; NVRTC compiles without
//   flush-to-zero), so the same values as kInput's for finite grad_out (a zero's sign aside;
//   where ReLU is off kInput gives 0 · inf = NaN for an infinite grad_out, kOutput 0, as PyTorch's
//   threshold_backward does), without the pre-activation or a Philox draw.
// Fuses:     dropout backward + activation backward + bias-gradient reduction (first stage).
// Shapes:    grad_out, x, grad_x [rows, kCols]; bias [kCols]; partials [bad_bwd_blocks(rows),
//            kCols] fp32. All `=` (every block writes its whole partials row). grad_x may alias
//            grad_out.
// Grid/Block: bad_bwd_grid(rows, kCols, kVec) = (bad_bwd_blocks(rows), column tiles) blocks of
//            bad_bwd_block(kCols, kVec) = kTx column-vectors x kTy rows; block x owns rows
//            [partial_row_begin(rows, gridDim.x, x), ...(x + 1)). Smem: kTx*kTy*kVec*4 B static.
// Constants: kCols % kVec == 0, kVec | 16 / sizeof(T) (static_assert).
// Numerics:  fp32; the partials sum the fp32 grad_x before rounding. Deterministic.
template <typename T, int kCols, int kVec, Act kAct, Drop kDrop, ActFrom kFrom>
__global__ void __launch_bounds__(bad_bwd_block(kCols, kVec))
    bias_act_dropout_bwd_kernel(const T* grad_out, const T* x, const T* bias, T* grad_x,
                                float* partials, int64_t rows, DropoutArgs drop) {
  static_assert(kCols > 0 && kVec >= 1 && kCols % kVec == 0, "kVec must divide kCols");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  static_assert(act_from_ok(kAct, kFrom), "only ReLU's derivative follows from its output");
  constexpr bool kFromOutput = kFrom == ActFrom::kOutput;
  if constexpr (!kFromOutput) drop = load_dropout_state(drop);
  constexpr int kNvc = kCols / kVec;
  constexpr int kTx = coltile_tx(kNvc);
  constexpr int kTy = coltile_ty(kNvc);
  __shared__ alignas(16) float red[kTy > 1 ? kTx * kTy * kVec : 1];

  const int tx = threadIdx.x % kTx;
  const int ty = threadIdx.x / kTx;
  const int cv = blockIdx.y * kTx + tx;
  const bool col_ok = kNvc % kTx == 0 || cv < kNvc;
  const int c = cv * kVec;
  const int64_t r0 = partial_row_begin(rows, gridDim.x, blockIdx.x);
  const int64_t r1 = partial_row_begin(rows, gridDim.x, blockIdx.x + 1);

  float acc[kVec] = {};
  float b[kVec] = {};
  if (!kFromOutput && col_ok) load_float<kVec>(bias + c, b);

  // Vectors are carried raw (kVec T values, 16 bytes) and converted to fp32 when processed.
  auto process = [&](int64_t off, const Vec<T, kVec>& gv, const Vec<T, kVec>& xv) {
    float d[kVec];
    uint32_t keep = ~0u;
    if constexpr (kDrop == Drop::kOn && !kFromOutput) keep = dropout_keep_bits<kVec>(drop, off);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      float g = to_float(gv.v[e]);
      if constexpr (kFromOutput) {  // ReLU' · the kept mask, both from y > 0
        if constexpr (kDrop == Drop::kOn) g *= drop.scale;
        d[e] = to_float(xv.v[e]) > 0.f ? g : 0.f;
      } else {
        if constexpr (kDrop == Drop::kOn) g = ((keep >> e) & 1u) ? g * drop.scale : 0.f;
        d[e] = activate_grad<kAct>(to_float(xv.v[e]) + b[e]) * g;
      }
      acc[e] += d[e];
    }
    store_float<kVec>(grad_x + off, d);
  };

  if (col_ok) {
    // Software pipelined: the next row's loads are issued before this row is processed (two rows
    // of loads in flight, one copy of the body). Safe with grad_x == grad_out: a thread reads each
    // element before it writes it, and no other thread touches it.
    int64_t row = r0 + ty;
    Vec<T, kVec> g, xv;
    if (row < r1) {
      g = load_vec<kVec>(grad_out + row * kCols + c);
      xv = load_vec<kVec>(x + row * kCols + c);
    }
    for (; row < r1; row += kTy) {
      Vec<T, kVec> gn = g, xn = xv;
      const int64_t next = row + kTy;
      if (next < r1) {
        gn = load_vec<kVec>(grad_out + next * kCols + c);
        xn = load_vec<kVec>(x + next * kCols + c);
      }
      process(row * kCols + c, g, xv);
      g = gn;
      xv = xn;
    }
  }
  const int col0 = blockIdx.y * kTx * kVec;
  write_column_partial<kTx, kTy, kVec>(acc, red,
                                       partials + static_cast<int64_t>(blockIdx.x) * kCols + col0,
                                       kCols - col0 < kTx * kVec ? kCols - col0 : kTx * kVec);
}

}  // namespace lightseq::kern
