// layernorm.cuh — LayerNorm forward and backward, with the residual/bias/dropout around it fused.
// Also the row-wise LayerNorm pieces embedding.cuh reuses. Layout (common/launch.cuh): a row is
// split over kTpr = ln_threads_per_row(kHidden, kVec) threads (ln_bwd_threads_per_row backward),
// each keeping kSlots 16-byte vectors of the row in registers, raw (as T; converted to fp32 when
// used); vector k of thread t is row vector k * kTpr + t, so each load of the row group is
// contiguous. A block holds ln_rows_per_block (ln_bwd_rows_per_block) row groups; a one-warp group
// reduces by shuffles alone, a wider one through shared memory (barriers: every group of the block
// takes part in every reduction, valid row or not). Rows too long to cache (forward > 16384
// elements, backward > 8192) are streamed by 1024 threads: extra passes over global memory (and,
// backward, the partial accumulators in global memory): correct for any size, fast up to those.
#pragma once

#include "common/philox.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"
#include "layernorm.sig.cuh"

namespace lightseq::kern {

// Sums N values over the kTpr threads of one row: a warp (kTpr == 32, no barrier) or a group of
// warps (barriers: every row group of the block must call it, valid row or not).
template <int kTpr, int N>
__device__ __forceinline__ void row_sum(float (&v)[N], float* smem) {
  static_assert(kTpr >= 32 && kTpr <= 1024 && (kTpr & (kTpr - 1)) == 0, "threads per row");
  group_sum<N>(v, kTpr, smem);
}

// ---- cached row LayerNorm ---------------------------------------------------------------------
// A thread keeps its kSlots vectors of a row raw (as T: half the registers of fp32 for 16-bit T);
// vector k is row vector k * kTpr + tid, slots past the row end are ignored.

// mean and rstd of the row: two passes over the registers, biased variance, rsqrt(var + eps).
template <typename T, int kHidden, int kVec, int kTpr, int kSlots>
__device__ __forceinline__ void ln_row_stats(const Vec<T, kVec> (&z)[kSlots], int tid, float eps,
                                             float* smem, float& mu, float& rs) {
  constexpr int kNvec = kHidden / kVec;
  float s[1] = {0.f};
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    if (k * kTpr + tid < kNvec) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) s[0] += to_float(z[k].v[e]);
    }
  }
  row_sum<kTpr, 1>(s, smem);
  mu = s[0] * (1.f / kHidden);
  float q[1] = {0.f};
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    if (k * kTpr + tid < kNvec) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float d = to_float(z[k].v[e]) - mu;
        q[0] += d * d;
      }
    }
  }
  row_sum<kTpr, 1>(q, smem);
  rs = rsqrtf(q[0] * (1.f / kHidden) + eps);
}

// y = (z - mu) * rs * gamma + beta for one vector (gamma, beta point at its columns).
template <typename T, int kVec>
__device__ __forceinline__ void ln_normalize(const Vec<T, kVec>& z, const T* gamma, const T* beta,
                                             float mu, float rs, float (&y)[kVec]) {
  float g[kVec], b[kVec];
  load_float<kVec>(gamma, g);
  load_float<kVec>(beta, b);
#pragma unroll
  for (int e = 0; e < kVec; ++e) y[e] = (to_float(z.v[e]) - mu) * rs * g[e] + b[e];
}

// dL/dy of one vector: grad_out, dropout-masked (kept * scale, dropped 0) when kMasked.
template <bool kMasked, typename T, int kVec>
__device__ __forceinline__ void ln_grad_in(const Vec<T, kVec>& g, uint32_t keep, float scale,
                                           float (&out)[kVec]) {
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    out[e] = to_float(g.v[e]);
    if constexpr (kMasked) out[e] = ((keep >> e) & 1u) ? out[e] * scale : 0.f;
  }
}

// Backward statistics of a cached row: m1 = mean(g*gamma), m2 = mean(g*gamma*xhat); adds g*xhat,
// g into acc_gamma, acc_beta. g is grad_out (masked by keep[k] when kMasked), x the LN input.
template <bool kMasked, typename T, int kHidden, int kVec, int kTpr, int kSlots>
__device__ __forceinline__ void ln_row_backward_stats(
    const Vec<T, kVec> (&g)[kSlots], const uint32_t (&keep)[kSlots], float scale,
    const Vec<T, kVec> (&x)[kSlots], int tid, const T* gamma, float mu, float rs, float* smem,
    float (&acc_gamma)[kSlots][kVec], float (&acc_beta)[kSlots][kVec], float& m1, float& m2) {
  constexpr int kNvec = kHidden / kVec;
  float sums[2] = {0.f, 0.f};
#pragma unroll
  for (int k = 0; k < kSlots; ++k) {
    const int v = k * kTpr + tid;
    if (v < kNvec) {
      float gf[kVec], gm[kVec];
      ln_grad_in<kMasked>(g[k], keep[k], scale, gf);
      load_float<kVec>(gamma + v * kVec, gm);
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        const float xh = (to_float(x[k].v[e]) - mu) * rs;
        acc_gamma[k][e] += gf[e] * xh;
        acc_beta[k][e] += gf[e];
        sums[0] += gf[e] * gm[e];
        sums[1] += gf[e] * gm[e] * xh;
      }
    }
  }
  row_sum<kTpr, 2>(sums, smem);
  m1 = sums[0] * (1.f / kHidden);
  m2 = sums[1] * (1.f / kHidden);
}

// dx = rs * (g*gamma - m1 - xhat*m2) for one vector; g (fp32, masked already) is overwritten.
template <typename T, int kVec>
__device__ __forceinline__ void ln_dx(float (&g)[kVec], const Vec<T, kVec>& x, const T* gamma,
                                      float mu, float rs, float m1, float m2) {
  float gm[kVec];
  load_float<kVec>(gamma, gm);
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    const float xh = (to_float(x.v[e]) - mu) * rs;
    g[e] = rs * (g[e] * gm[e] - m1 - xh * m2);
  }
}

// ---- streamed row LayerNorm (rows too long for registers; kTpr threads = the block) ------------
// load_z(v, z[kVec]) produces vector v of the LN input the first time (and may store it);
// reload_z(v, z) reads it again. store_y(v, y) receives the normalized vector.
template <typename T, int kHidden, int kVec, int kTpr, typename LoadZ, typename ReloadZ,
          typename StoreY>
__device__ __forceinline__ void ln_row_forward_streamed(LoadZ load_z, ReloadZ reload_z,
                                                        StoreY store_y, int tid, const T* gamma,
                                                        const T* beta, float eps, float* smem,
                                                        float& mu, float& rs) {
  constexpr int kNvec = kHidden / kVec;
  float s[1] = {0.f};
  for (int v = tid; v < kNvec; v += kTpr) {
    float z[kVec];
    load_z(v, z);
#pragma unroll
    for (int e = 0; e < kVec; ++e) s[0] += z[e];
  }
  row_sum<kTpr, 1>(s, smem);
  mu = s[0] * (1.f / kHidden);
  float q[1] = {0.f};
  for (int v = tid; v < kNvec; v += kTpr) {
    float z[kVec];
    reload_z(v, z);
#pragma unroll
    for (int e = 0; e < kVec; ++e) q[0] += (z[e] - mu) * (z[e] - mu);
  }
  row_sum<kTpr, 1>(q, smem);
  rs = rsqrtf(q[0] * (1.f / kHidden) + eps);
  for (int v = tid; v < kNvec; v += kTpr) {
    float z[kVec], g[kVec], b[kVec];
    reload_z(v, z);
    load_float<kVec>(gamma + v * kVec, g);
    load_float<kVec>(beta + v * kVec, b);
#pragma unroll
    for (int e = 0; e < kVec; ++e) z[e] = (z[e] - mu) * rs * g[e] + b[e];
    store_y(v, z);
  }
}

// Streamed LN backward statistics: returns {mean(g*gamma), mean(g*gamma*xhat)} and adds
// g * xhat, g into the fp32 accumulators acc_gamma[c], acc_beta[c] (global, owned by this thread's
// columns). load_g(v, g[kVec]) gives dL/dy, load_x(v, x[kVec]) the LN input.
template <typename T, int kHidden, int kVec, int kTpr, typename LoadG, typename LoadX>
__device__ __forceinline__ void ln_row_backward_stats_streamed(LoadG load_g, LoadX load_x, int tid,
                                                               const T* gamma, float mu, float rs,
                                                               float* smem, float* acc_gamma,
                                                               float* acc_beta, float& m1,
                                                               float& m2) {
  constexpr int kNvec = kHidden / kVec;
  float sums[2] = {0.f, 0.f};
  for (int v = tid; v < kNvec; v += kTpr) {
    float g[kVec], x[kVec], gm[kVec], ag[kVec], ab[kVec];
    load_g(v, g);
    load_x(v, x);
    load_float<kVec>(gamma + v * kVec, gm);
    load_f32<kVec>(acc_gamma + v * kVec, ag);
    load_f32<kVec>(acc_beta + v * kVec, ab);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float xh = (x[e] - mu) * rs;
      ag[e] += g[e] * xh;
      ab[e] += g[e];
      sums[0] += g[e] * gm[e];
      sums[1] += g[e] * gm[e] * xh;
    }
    store_f32<kVec>(acc_gamma + v * kVec, ag);
    store_f32<kVec>(acc_beta + v * kVec, ab);
  }
  row_sum<kTpr, 2>(sums, smem);
  m1 = sums[0] * (1.f / kHidden);
  m2 = sums[1] * (1.f / kHidden);
}

// Column-partials epilogue of a cached backward: adds acc over the kRows row groups of the block
// (smem: kRows * kHidden floats when kRows > 1) and writes row `out` (kHidden fp32 columns).
template <int kHidden, int kVec, int kTpr, int kSlots, int kRows>
__device__ __forceinline__ void ln_write_partial(const float (&acc)[kSlots][kVec], int tid,
                                                 int group, float* smem, float* out) {
  constexpr int kNvec = kHidden / kVec;
  if constexpr (kRows == 1) {
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kTpr + tid;
      if (v < kNvec) store_f32<kVec>(out + v * kVec, acc[k]);
    }
  } else {
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kTpr + tid;
      if (v < kNvec) store_f32<kVec>(smem + group * kHidden + v * kVec, acc[k]);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < kHidden; c += kTpr * kRows) {
      float s = 0.f;
#pragma unroll
      for (int r = 0; r < kRows; ++r) s += smem[r * kHidden + c];
      out[c] = s;
    }
    __syncthreads();
  }
}

// ln_fwd_kernel — z = residual + dropout(branch + bias) (Branch::kBiasDropoutResidual, written to
//   sum_out) or z = residual (Branch::kNone); norm_out = (z - mean) * rstd * gamma + beta with
//   mean, rstd [rows] fp32 (Norm::kOn).
// Fuses:     bias add + dropout + residual add + LayerNorm + casts (post-LN sublayer output).
// Shapes:    branch, residual, sum_out, norm_out [rows, kHidden]; bias, gamma, beta [kHidden];
//            mean, rstd [rows]. All outputs `=`. Unused pointers (per the switches) may be null.
//            Dropout element index: row * kHidden + col.
// Grid/Block: ln_grid(rows, kHidden, kVec) blocks of ln_block(kHidden, kVec). Smem: 256 B static.
// Constants: kHidden % kVec == 0, kVec | 16 / sizeof(T) (static_assert).
// Numerics:  fp32; z is rounded to T (the value sum_out stores) before the statistics, so the
//            backward sees the same z. Two-pass variance over registers (streamed: over memory).
template <typename T, int kHidden, int kVec, Branch kBranch, Norm kNorm, Drop kDrop>
__global__ void __launch_bounds__(ln_block(kHidden, kVec))
    ln_fwd_kernel(const T* branch, const T* bias, const T* residual, const T* gamma, const T* beta,
                  T* sum_out, T* norm_out, float* mean, float* rstd, int64_t rows, float eps,
                  DropoutArgs drop) {
  static_assert(kHidden > 0 && kVec >= 1 && kHidden % kVec == 0, "kVec must divide kHidden");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kBranch == Branch::kNone || kBranch == Branch::kBiasDropoutResidual, "Branch");
  static_assert(kNorm == Norm::kOff || kNorm == Norm::kOn, "Norm");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  static_assert(kNorm == Norm::kOn || kBranch != Branch::kNone, "ln_fwd with nothing to do");
  static_assert(kDrop == Drop::kOff || kBranch != Branch::kNone, "dropout needs a branch");
  drop = load_dropout_state(drop);
  constexpr int kNvec = kHidden / kVec;
  constexpr int kTpr = ln_threads_per_row(kHidden, kVec);
  constexpr int kRows = ln_rows_per_block(kHidden, kVec);
  __shared__ float smem[64];

  const int tid = threadIdx.x % kTpr;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.x / kTpr;
  // A group past the last row leaves unless its warps share barriers with other groups.
  const bool valid = row < rows;
  if (kTpr <= 32 && !valid) return;
  const int64_t base = row * kHidden;

  auto load_z = [&](int v, float(&z)[kVec]) {
    const int64_t off = base + static_cast<int64_t>(v) * kVec;
    load_float<kVec>(residual + off, z);
    if constexpr (kBranch == Branch::kBiasDropoutResidual) {
      float x[kVec], b[kVec];
      load_float<kVec>(branch + off, x);
      load_float<kVec>(bias + v * kVec, b);
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[e] += b[e];
      if constexpr (kDrop == Drop::kOn) {
        apply_dropout<kVec>(x, dropout_keep_bits<kVec>(drop, off), drop.scale);
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) z[e] = round_to<T>(z[e] + x[e]);
      store_float<kVec>(sum_out + off, z);
    }
  };

  if constexpr (ln_fwd_cached(kHidden, kVec)) {
    constexpr int kSlots = ln_slots(kHidden, kVec);
    Vec<T, kVec> zr[kSlots] = {};
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kTpr + tid;
      if (valid && v < kNvec) {
        float z[kVec];
        load_z(v, z);
#pragma unroll
        for (int e = 0; e < kVec; ++e) zr[k].v[e] = from_float<T>(z[e]);
      }
    }
    if constexpr (kNorm == Norm::kOn) {
      float mu, rs;
      ln_row_stats<T, kHidden, kVec, kTpr, kSlots>(zr, tid, eps, smem, mu, rs);
      if (!valid) return;  // after the last barrier
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = k * kTpr + tid;
        if (v < kNvec) {
          float y[kVec];
          ln_normalize<T, kVec>(zr[k], gamma + v * kVec, beta + v * kVec, mu, rs, y);
          store_float<kVec>(norm_out + base + v * kVec, y);
        }
      }
      if (tid == 0) {
        mean[row] = mu;
        rstd[row] = rs;
      }
    }
  } else {
    if constexpr (kNorm == Norm::kOn) {
      auto reload_z = [&](int v, float(&z)[kVec]) {
        const T* src = kBranch == Branch::kNone ? residual : sum_out;
        load_float<kVec>(src + base + v * kVec, z);
      };
      auto store_y = [&](int v, const float(&y)[kVec]) {
        store_float<kVec>(norm_out + base + v * kVec, y);
      };
      float mu, rs;
      ln_row_forward_streamed<T, kHidden, kVec, kTpr>(load_z, reload_z, store_y, tid, gamma, beta,
                                                      eps, smem, mu, rs);
      if (tid == 0) {
        mean[row] = mu;
        rstd[row] = rs;
      }
    } else {
      for (int v = tid; v < kNvec; v += kTpr) {
        float z[kVec];
        load_z(v, z);
      }
    }
  }
}

// ln_bwd_kernel — dx = LN_backward(grad_out) (Norm::kOn; kOff: grad_out) + grad_residual
//   (ResidualIn::kOn); grad_z = dx; grad_branch = dropout_mask(dx) (Drop::kOn, the forward site's
//   mask); per-block column partials of dgamma = sum g * xhat, dbeta = sum g (Norm::kOn) and
//   dbias = sum grad_branch (BranchOut::kOn; grad_branch = dx when Drop::kOff).
// Fuses:     LN backward + residual-gradient add + dropout backward + bias-gradient partials.
// Shapes:    grad_out, z, grad_residual, grad_z, grad_branch [rows, kHidden]; mean, rstd [rows];
//            gamma [kHidden]; partials [ln_bwd_blocks(rows), ln_bwd_partial_cols(kHidden, kNorm,
//            kBranchOut)] fp32, columns dgamma [0,H), dbeta [H,2H) (kNorm), then dbias
//            (kBranchOut). All outputs `=` (every block writes its whole partials row, zeros if it
//            owns no row). grad_z may alias grad_out, and may be null (not written: only
//            grad_branch is wanted); grad_branch is only written with Drop::kOn (else it may be
//            null). Dropout element index: row * kHidden + col.
// Grid/Block: ln_bwd_grid(rows) blocks of ln_bwd_block(kHidden, kVec); block b owns rows
//            [partial_row_begin(rows, gridDim.x, b), ...(b + 1)). Smem: static, <= 16.3 KB.
// Constants: kHidden % kVec == 0, kVec | 16 / sizeof(T) (static_assert).
// Numerics:  fp32; PyTorch's formula dx = rstd * (g*gamma - mean(g*gamma) - xhat *
//            mean(g*gamma*xhat)) with the saved mean/rstd; grad_branch and dbias use the fp32 dx.
template <typename T, int kHidden, int kVec, Norm kNorm, ResidualIn kRes, BranchOut kBranchOut,
          Drop kDrop>
__global__ void __launch_bounds__(ln_bwd_block(kHidden, kVec))
    ln_bwd_kernel(const T* grad_out, const T* z, const float* mean, const float* rstd,
                  const T* gamma, const T* grad_residual, T* grad_z, T* grad_branch,
                  float* partials, int64_t rows, DropoutArgs drop) {
  static_assert(kHidden > 0 && kVec >= 1 && kHidden % kVec == 0, "kVec must divide kHidden");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kNorm == Norm::kOff || kNorm == Norm::kOn, "Norm");
  static_assert(kRes == ResidualIn::kOff || kRes == ResidualIn::kOn, "ResidualIn");
  static_assert(kBranchOut == BranchOut::kOff || kBranchOut == BranchOut::kOn, "BranchOut");
  static_assert(kDrop == Drop::kOff || kDrop == Drop::kOn, "Drop");
  drop = load_dropout_state(drop);
  constexpr int kNvec = kHidden / kVec;
  constexpr int kTpr = ln_bwd_threads_per_row(kHidden, kVec);
  constexpr int kRows = ln_bwd_rows_per_block(kHidden, kVec);
  constexpr int64_t kPartCols = ln_bwd_partial_cols(kHidden, kNorm, kBranchOut);
  constexpr int kBiasCol = kNorm == Norm::kOn ? 2 * kHidden : 0;
  __shared__ float smem[64];

  const int tid = threadIdx.x % kTpr;
  const int group = threadIdx.x / kTpr;
  const int64_t r0 = partial_row_begin(rows, gridDim.x, blockIdx.x);
  const int64_t r1 = partial_row_begin(rows, gridDim.x, blockIdx.x + 1);
  float* part = partials + static_cast<int64_t>(blockIdx.x) * kPartCols;

  // Finishes one vector from dx (the LN part): adds the residual gradient, writes grad_z (unless
  // null) and grad_branch (Drop::kOn), accumulates the bias gradient (BranchOut::kOn).
  auto finish = [&](int64_t off, float(&dx)[kVec], float* acc_bias) {
    if constexpr (kRes == ResidualIn::kOn) {
      float r[kVec];
      load_float<kVec>(grad_residual + off, r);
#pragma unroll
      for (int e = 0; e < kVec; ++e) dx[e] += r[e];
    }
    if (grad_z != nullptr) store_float<kVec>(grad_z + off, dx);
    if constexpr (kDrop == Drop::kOn) {
      apply_dropout<kVec>(dx, dropout_keep_bits<kVec>(drop, off), drop.scale);
      store_float<kVec>(grad_branch + off, dx);
    }
    if constexpr (kBranchOut == BranchOut::kOn) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc_bias[e] += dx[e];
    }
  };

  if constexpr (ln_bwd_cached(kHidden, kVec)) {
    constexpr int kSlots = ln_bwd_slots(kHidden, kVec);
    float acc_gamma[kSlots][kVec], acc_beta[kSlots][kVec], acc_bias[kSlots][kVec];
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc_gamma[k][e] = acc_beta[k][e] = acc_bias[k][e] = 0.f;
    }
    // Every group runs the same number of iterations (the reductions may hold barriers); a group
    // past the chunk's end works on zeros and stores nothing.
    for (int64_t first = r0; first < r1; first += kRows) {
      const int64_t row = first + group;
      const bool valid = row < r1;
      const int64_t base = row * kHidden;
      Vec<T, kVec> g[kSlots] = {}, x[kSlots] = {};
      const uint32_t keep[kSlots] = {};
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = k * kTpr + tid;
        if (valid && v < kNvec) {
          g[k] = load_vec<kVec>(grad_out + base + v * kVec);
          if constexpr (kNorm == Norm::kOn) x[k] = load_vec<kVec>(z + base + v * kVec);
        }
      }
      float mu = 0.f, rs = 0.f, m1 = 0.f, m2 = 0.f;
      if constexpr (kNorm == Norm::kOn) {
        if (valid) {
          mu = mean[row];
          rs = rstd[row];
        }
        ln_row_backward_stats<false, T, kHidden, kVec, kTpr, kSlots>(
            g, keep, 1.f, x, tid, gamma, mu, rs, smem, acc_gamma, acc_beta, m1, m2);
      }
#pragma unroll
      for (int k = 0; k < kSlots; ++k) {
        const int v = k * kTpr + tid;
        if (valid && v < kNvec) {
          float dx[kVec];
          ln_grad_in<false>(g[k], 0u, 1.f, dx);
          if constexpr (kNorm == Norm::kOn)
            ln_dx<T, kVec>(dx, x[k], gamma + v * kVec, mu, rs, m1, m2);
          finish(base + v * kVec, dx, acc_bias[k]);
        }
      }
    }
    if constexpr (kPartCols > 0) {
      __shared__ alignas(16) float red[kRows > 1 ? kRows * kHidden : 1];
      if constexpr (kNorm == Norm::kOn) {
        ln_write_partial<kHidden, kVec, kTpr, kSlots, kRows>(acc_gamma, tid, group, red, part);
        ln_write_partial<kHidden, kVec, kTpr, kSlots, kRows>(acc_beta, tid, group, red,
                                                             part + kHidden);
      }
      if constexpr (kBranchOut == BranchOut::kOn) {
        ln_write_partial<kHidden, kVec, kTpr, kSlots, kRows>(acc_bias, tid, group, red,
                                                             part + kBiasCol);
      }
    }
  } else {
    static_assert(kRows == 1, "streamed rows take a block each");
    // Accumulators live in this block's partials row (each thread owns its columns). Rows go in
    // batches of kBatch, so a batch reads and writes the accumulators once: pass A adds dgamma,
    // dbeta and the row statistics of the whole batch, pass B writes the gradients and dbias.
    constexpr int kBatch = 8;
    __shared__ float bsmem[2 * kBatch * 32];
    for (int v = tid; v < kNvec; v += kTpr) {
      const float zero[kVec] = {};
      if constexpr (kNorm == Norm::kOn) {
        store_f32<kVec>(part + v * kVec, zero);
        store_f32<kVec>(part + kHidden + v * kVec, zero);
      }
      if constexpr (kBranchOut == BranchOut::kOn) store_f32<kVec>(part + kBiasCol + v * kVec, zero);
    }
    for (int64_t first = r0; first < r1; first += kBatch) {
      const int n = r1 - first < kBatch ? static_cast<int>(r1 - first) : kBatch;
      float mu[kBatch], rs[kBatch], m[2 * kBatch];
#pragma unroll
      for (int r = 0; r < kBatch; ++r) {
        mu[r] = 0.f;
        rs[r] = 0.f;
        m[2 * r] = m[2 * r + 1] = 0.f;
      }
      if constexpr (kNorm == Norm::kOn) {
#pragma unroll
        for (int r = 0; r < kBatch; ++r) {
          if (r < n) {
            mu[r] = mean[first + r];
            rs[r] = rstd[first + r];
          }
        }
        for (int v = tid; v < kNvec; v += kTpr) {  // pass A
          float gm[kVec], ag[kVec], ab[kVec];
          load_float<kVec>(gamma + v * kVec, gm);
          load_f32<kVec>(part + v * kVec, ag);
          load_f32<kVec>(part + kHidden + v * kVec, ab);
#pragma unroll
          for (int r = 0; r < kBatch; ++r) {
            if (r < n) {
              float g[kVec], x[kVec];
              load_float<kVec>(grad_out + (first + r) * kHidden + v * kVec, g);
              load_float<kVec>(z + (first + r) * kHidden + v * kVec, x);
#pragma unroll
              for (int e = 0; e < kVec; ++e) {
                const float xh = (x[e] - mu[r]) * rs[r];
                ag[e] += g[e] * xh;
                ab[e] += g[e];
                m[2 * r] += g[e] * gm[e];
                m[2 * r + 1] += g[e] * gm[e] * xh;
              }
            }
          }
          store_f32<kVec>(part + v * kVec, ag);
          store_f32<kVec>(part + kHidden + v * kVec, ab);
        }
        row_sum<kTpr, 2 * kBatch>(m, bsmem);
      }
      // Per-row coefficients for pass B, whose row loop indexes them at run time (local memory,
      // L1-resident), apart from pass A's register arrays.
      float coef[kBatch][4];
#pragma unroll
      for (int r = 0; r < kBatch; ++r) {
        coef[r][0] = mu[r];
        coef[r][1] = rs[r];
        coef[r][2] = m[2 * r] * (1.f / kHidden);
        coef[r][3] = m[2 * r + 1] * (1.f / kHidden);
      }
      for (int v = tid; v < kNvec; v += kTpr) {  // pass B
        float gm[kVec], ab[kVec] = {};
        if constexpr (kNorm == Norm::kOn) load_float<kVec>(gamma + v * kVec, gm);
        if constexpr (kBranchOut == BranchOut::kOn) load_f32<kVec>(part + kBiasCol + v * kVec, ab);
          // Not unrolled: one copy of the dropout code (the per-row scalars come from L1).
#pragma unroll 1
        for (int r = 0; r < n; ++r) {
          {
            const int64_t off = (first + r) * kHidden + v * kVec;
            float dx[kVec];
            load_float<kVec>(grad_out + off, dx);
            if constexpr (kNorm == Norm::kOn) {
              float x[kVec];
              load_float<kVec>(z + off, x);
              const float rmu = coef[r][0], rrs = coef[r][1], m1 = coef[r][2], m2 = coef[r][3];
#pragma unroll
              for (int e = 0; e < kVec; ++e) {
                const float xh = (x[e] - rmu) * rrs;
                dx[e] = rrs * (dx[e] * gm[e] - m1 - xh * m2);
              }
            }
            finish(off, dx, ab);
          }
        }
        if constexpr (kBranchOut == BranchOut::kOn) store_f32<kVec>(part + kBiasCol + v * kVec, ab);
      }
    }
  }
}

}  // namespace lightseq::kern
