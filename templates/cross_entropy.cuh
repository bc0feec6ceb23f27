// cross_entropy.cuh — softmax cross-entropy with label smoothing and ignore index, forward and
// backward in one pass over the logits (PyTorch CrossEntropyLoss(label_smoothing=eps, reduction=
// 'none') semantics; the caller reduces loss and folds the reduction into grad_scale).
#pragma once

#include "common/cp_async.cuh"
#include "common/math.cuh"
#include "common/reduce.cuh"
#include "common/types.cuh"
#include "cross_entropy.sig.cuh"

namespace lightseq::kern {

// cross_entropy_kernel — with lse = log sum_j exp(x_j), V = kVocab:
//   nll = lse - x[y]; loss = (1 - eps) * nll + eps * (lse - mean_j x_j) (= eps/V * sum_j -logp_j);
//   grad_logits = *grad_scale * (softmax(x) - (1 - eps) * onehot(y) - eps / V) (grad_scale in
//   device memory, null: 1).
//   Rows with y == ignore_index: loss = nll = 0 and a zero gradient row. y outside [0, V) (and not
//   ignore_index): *bad_target = 1 (never cleared here) and the row is treated as ignored.
// Fuses:     log-softmax + NLL + label smoothing + softmax backward + scaling + cast.
// Shapes:    logits, grad_logits [rows, kVocab]; targets [rows] int64; loss, nll [rows] fp32.
//            All `=`. grad_logits may alias logits.
// Grid/Block: ce_grid(rows) blocks of kThreads, one row each; the row stays in registers when
//            ce_cached(kVocab, kThreads, kVec), else in ce_smem(...) bytes of dynamic shared
//            memory (copied by cp.async) when that is not 0, else it is read twice (the second
//            read mostly hits L2). Smem: 512 B static (+ the staged row).
// Constants: kVocab % kVec == 0, kVec | 16 / sizeof(T), kThreads a power of two in [32, 1024].
// Numerics:  fp32, softmax_exp (expf for fp32 logits, ex2.approx for 16-bit) / logf; sums in a
//            fixed order (deterministic). With the row cached each exponential is computed once.
template <typename T, int kVocab, int kThreads, int kVec>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(const T* logits, const int64_t* targets, float* loss, float* nll,
                         T* grad_logits, int* bad_target, int64_t rows, int64_t ignore_index,
                         float label_smoothing, const float* grad_scale) {
  static_assert(kVocab > 0 && kVec >= 1 && kVocab % kVec == 0, "kVec must divide kVocab");
  static_assert(kMaxVec<T> % kVec == 0, "kVec must divide 16 / sizeof(T)");
  static_assert(kThreads >= 32 && kThreads <= 1024 && (kThreads & (kThreads - 1)) == 0,
                "kThreads must be a power of two in [32, 1024]");
  constexpr int kNvec = kVocab / kVec;
  __shared__ float smem[128];
  const int64_t row = blockIdx.x;
  const int tid = threadIdx.x;
  const int64_t base = row * kVocab;
  const int64_t y = targets[row];
  const bool bad = y != ignore_index && (y < 0 || y >= kVocab);
  if (bad && tid == 0) *bad_target = 1;
  if (bad || y == ignore_index) {  // uniform over the block
    const Vec<T, kVec> zero = {};
    for (int v = tid; v < kNvec; v += kThreads)
      store_vec<kVec>(grad_logits + base + v * kVec, zero);
    if (tid == 0) {
      loss[row] = 0.f;
      nll[row] = 0.f;
    }
    return;
  }
  // Read before any thread writes the row (grad_logits may alias logits; the reductions below
  // order every write after this read).
  const float x_y = tid == 0 ? to_float(logits[base + y]) : 0.f;
  // In device memory (null: 1): the loss scale and the reduction's divisor, which a step captured
  // in a CUDA graph computes on the device.
  const float scale = grad_scale != nullptr ? *grad_scale : 1.f;
  const float off_target = scale * label_smoothing / kVocab;
  const float on_target = scale * (1.f - label_smoothing);

  const int64_t y_vec = y / kVec;  // the vector holding the target, and its element
  const int y_elem = static_cast<int>(y % kVec);
  float m, lse, sum_x;
  auto finish_stats = [&](float m_row, float sum_e, float sx) {
    m = m_row;
    lse = m_row + logf(sum_e);
    sum_x = sx;
  };
  // grad of vector v from its softmax numerators (scale·p - off_target, - on_target at y).
  auto write_grad = [&](int v, float(&ex)[kVec], float p_scale) {
    float g[kVec];
#pragma unroll
    for (int e = 0; e < kVec; ++e) g[e] = ex[e] * p_scale - off_target;
    if (v == y_vec) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) g[e] -= e == y_elem ? on_target : 0.f;
    }
    store_float<kVec>(grad_logits + base + v * kVec, g);
  };

  if constexpr (ce_cached(kVocab, kThreads, kVec)) {
    // The row in registers, each exponential computed once and kept for the gradient: the special
    // function unit's ex2 (16 a clock per SM) otherwise costs as much time as the row's bytes.
    constexpr int kSlots = (kNvec + kThreads - 1) / kThreads;
    Vec<T, kVec> raw[kSlots];
    float vm = neg_inf();
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kThreads + tid;
      if (v < kNvec) {
        raw[k] = load_vec<kVec>(logits + base + v * kVec);
#pragma unroll
        for (int e = 0; e < kVec; ++e) vm = fmaxf(vm, to_float(raw[k].v[e]));
      }
    }
    const float m_row = block_max<kThreads>(vm, smem);
    float ex[kSlots][kVec];
    float sums[2] = {0.f, 0.f};  // sum exp(x - m), sum x
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      if (k * kThreads + tid < kNvec) {
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const float x = to_float(raw[k].v[e]);
          ex[k][e] = softmax_exp<T>(x - m_row);
          sums[0] += ex[k][e];
          sums[1] += x;
        }
      }
    }
    block_sum<kThreads, 2>(sums, smem + 32);
    finish_stats(m_row, sums[0], sums[1]);
    const float p_scale = scale / sums[0];  // grad = scale·p - off_target (- on_target at y)
#pragma unroll
    for (int k = 0; k < kSlots; ++k) {
      const int v = k * kThreads + tid;
      if (v < kNvec) write_grad(v, ex[k], p_scale);
    }
  } else {
    // The row staged in shared memory (all its copies in flight at once), or read from global
    // memory twice.
    const T* row = logits + base;
    constexpr int kStaged = ce_smem(kVocab, kThreads, kVec, sizeof(T));
    if constexpr (kStaged > 0) {
      extern __shared__ __align__(16) unsigned char ce_row_bytes[];
      T* staged = reinterpret_cast<T*>(ce_row_bytes);
      for (int v = tid; v < kNvec; v += kThreads)
        cp_async<kVec * sizeof(T)>(staged + v * kVec, row + v * kVec, true);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
      row = staged;
    }
    // Per-thread online max/sum over the row, then the row max, then the rescaled sums.
    float tm = neg_inf(), ts = 0.f, sx = 0.f;
    for (int v = tid; v < kNvec; v += kThreads) {
      float x[kVec];
      load_float<kVec>(row + v * kVec, x);
      float vm = tm;
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        vm = fmaxf(vm, x[e]);
        sx += x[e];
      }
      if (vm == neg_inf()) continue;  // nothing finite yet (-inf logits contribute 0)
      ts *= softmax_exp<T>(tm - vm);  // exp(-inf) = 0 while ts is still 0
      tm = vm;
#pragma unroll
      for (int e = 0; e < kVec; ++e) ts += softmax_exp<T>(x[e] - tm);
    }
    const float m_row = block_max<kThreads>(tm, smem);
    float sums[2] = {tm == neg_inf() ? 0.f : ts * softmax_exp<T>(tm - m_row), sx};
    block_sum<kThreads, 2>(sums, smem + 32);
    finish_stats(m_row, sums[0], sums[1]);
    const float p_scale = scale / sums[0];
    for (int v = tid; v < kNvec; v += kThreads) {
      float x[kVec];
      load_float<kVec>(row + v * kVec, x);
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[e] = softmax_exp<T>(x[e] - m);
      write_grad(v, x, p_scale);
    }
  }
  if (tid == 0) {
    const float n = lse - x_y;
    nll[row] = n;
    loss[row] = (1.f - label_smoothing) * n + label_smoothing * (lse - sum_x / kVocab);
  }
}

// ce_grad_scale_kernel — n = #{r < rows : 0 <= targets[r] < vocab} (ignore_index rows and bad
//   targets do not count); grad_scale[0] = *loss_scale / max(N, 1) (loss_scale null: 1), where N
//   is *total_tokens when given (the count over every process of a data-parallel group, summed
//   before: the mean over the whole batch) and n otherwise; n_tokens[0] = n. The mean reduction
//   of torch.nn.functional.cross_entropy, computed on the device so that a captured step scales
//   each batch by its own token count.
// Fuses:     the token count + the loss scale + the reduction's divisor.
// Shapes:    targets [rows] int64; loss_scale, total_tokens, grad_scale, n_tokens [1] fp32.
//            All `=`.
// Grid/Block: one block of ce_scale_block() threads (a grid-stride loop over the targets).
// Constants: none. Numerics: the count is exact (int64, fixed-order reduction).
template <typename T>
__global__ void __launch_bounds__(ce_scale_block())
    ce_grad_scale_kernel(const int64_t* targets, const float* loss_scale, const float* total_tokens,
                         float* grad_scale, float* n_tokens, int64_t rows, int64_t vocab,
                         int64_t ignore_index) {
  constexpr int kThreads = ce_scale_block();
  __shared__ long long warp_counts[kThreads / 32];
  long long n = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) {
    const int64_t y = targets[r];
    n += y != ignore_index && y >= 0 && y < vocab ? 1 : 0;
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) n += __shfl_down_sync(0xffffffffu, n, o);
  if (threadIdx.x % 32 == 0) warp_counts[threadIdx.x / 32] = n;
  __syncthreads();
  if (threadIdx.x == 0) {
    long long total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_counts[w];
    const float scale = loss_scale != nullptr ? *loss_scale : 1.f;
    const float count = total_tokens != nullptr ? *total_tokens : static_cast<float>(total);
    grad_scale[0] = scale / (count > 1.f ? count : 1.f);
    n_tokens[0] = static_cast<float>(total);
  }
}

}  // namespace lightseq::kern
