// flash_attention.cuh — fused attention forward on tensor cores (FlashAttention-2's schedule with
// mma.sync m16n8k16, sm_80 and later): softmax(q·kᵀ·scale + mask) (dropped) · v without
// materializing the [B, heads, T, S] scores. Saves the output and the log-sum-exp of each query
// row; the backward recomputes the probabilities from them. Issue 12's first kernel: the planner
// does not choose it yet.
#pragma once

#include "common/philox.cuh"
#include "common/types.cuh"
#include "flash_attention.sig.cuh"

namespace lightseq::kern {

namespace flash {

// d[4] += a[4] · b[2]: one m16n8k16 tensor-core product, fp32 accumulators. Fragments (PTX ISA,
// "Matrix Fragments for mma.m16n8k16"), lane = 4·g + t: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..],
// a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]; b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]; d0,d1 =
// D[g][2t..2t+1], d2,d3 = D[g+8][2t..2t+1].
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4],
                                          const uint32_t (&b)[2]) {
  if constexpr (IsSame<T, __nv_bfloat16>::kValue) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// Two adjacent elements of T as the 32 bits of a fragment register.
template <typename T>
__device__ __forceinline__ uint32_t pair_at(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
// Two elements 16 bits apart in register order (lo = first).
template <typename T>
__device__ __forceinline__ uint32_t pack(T lo, T hi) {
  union {
    T two[2];
    uint32_t bits;
  } u;
  u.two[0] = lo;
  u.two[1] = hi;
  return u.bits;
}
template <typename T>
__device__ __forceinline__ uint32_t pack_float(float lo, float hi) {
  return pack<T>(from_float<T>(lo), from_float<T>(hi));
}

// Rows [row0, row0 + kRows) of a [rows, kD] head into shared memory (row stride kD + kPad),
// zeros past `rows`: 16-byte vectors, all threads of the block.
template <typename T, int kD, int kRows, int kStride>
__device__ __forceinline__ void load_tile(T* smem, const T* src, int64_t row0, int64_t rows) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kVecsPerRow = kD / kVec;
  for (int i = threadIdx.x; i < kRows * kVecsPerRow; i += blockDim.x) {
    const int r = i / kVecsPerRow, c = (i % kVecsPerRow) * kVec;
    Vec<T, kVec> v;
    if (row0 + r < rows) {
      v = load_vec<kVec>(src + (row0 + r) * kD + c);
    } else {
#pragma unroll
      for (int e = 0; e < kVec; ++e) v.v[e] = from_float<T>(0.f);
    }
    store_vec<kVec>(smem + r * kStride + c, v);
  }
}

}  // namespace flash

// flash_attn_fwd_kernel — out = softmax(q·kᵀ·scale + mask) (dropped) · v per (batch, head); lse =
//   the natural log of each query row's softmax denominator, max included (+inf for a row whose
//   keys are all masked, whose output is then 0).
// Fuses:     the scores GEMM, mask, softmax, dropout and the context GEMM of the unfused path.
// Shapes:    q, out [batch·heads, q_len, kD]; k, v [batch·heads, k_len, kD]; key_padding [batch,
//            k_len] bytes (nonzero: the key is padding; read when kMask has kPadding); lse
//            [batch·heads, q_len] fp32. out, lse `=`.
// Masks:     padding by key; causal keeps key j for query i when j <= i + k_len - q_len (the
//            unfused softmax's rule).
// Dropout:   the probability of query i, key j of head bh is dropped by the Philox draw of
//            element (bh·q_len + i)·k_len + j: the unfused path's probs_dropped element, so both
//            paths drop the same entries for the same seed and offset.
// Grid/Block: flash_fwd_grid(batch·heads, q_len) blocks of flash_fwd_block() threads (4 warps,
//            16 query rows each, their query fragments in registers); key tiles of kFlashBlockN.
//            Smem: static, 2·kFlashBlockN·(kD + 8) elements (the key tile's buffer stages the
//            query tile first).
// Constants: kD a multiple of 16 in [16, 128] (static_assert). Pointers 16-byte aligned.
// Numerics:  products in fp32 on tensor cores; the softmax in fp32 (exp2 with log2(e) folded in
//            the scale); probabilities rounded to T before the context product (as the unfused
//            path stores them); out rounded once.
template <typename T, int kD, Mask kMask, Drop kDrop>
__global__ void __launch_bounds__(kFlashThreads)
    flash_attn_fwd_kernel(const T* q, const T* k, const T* v, const uint8_t* key_padding, T* out,
                          float* lse, int64_t batch, int64_t heads, int64_t q_len, int64_t k_len,
                          float scale, DropoutArgs drop) {
  static_assert(kD % 16 == 0 && kD >= 16 && kD <= 128, "kD: a multiple of 16 in [16, 128]");
  static_assert(sizeof(T) == 2, "tensor cores: fp16 or bf16");
  constexpr int kM = kFlashBlockM, kN = kFlashBlockN;
  constexpr int kStride = kD + 8;  // 16 bytes of padding per row: fewer bank conflicts
  static_assert(kM == kN, "the query tile is staged in the key tile's buffer");
  __shared__ __align__(16) T ks[kN * kStride];
  __shared__ __align__(16) T vs[kN * kStride];
  if constexpr (kDrop == Drop::kOn) drop = load_dropout_state(drop);

  const int64_t bh = blockIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const T* qh = q + bh * q_len * kD;
  const T* kh = k + bh * k_len * kD;
  const T* vh = v + bh * k_len * kD;
  const uint8_t* pad = has_padding(kMask) ? key_padding + (bh / heads) * k_len : nullptr;
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale2 = scale * kLog2e;

  // The query tile, staged through the key buffer into registers: the A fragments of the warp's 16
  // rows for every 16 columns of the head.
  flash::load_tile<T, kD, kM, kStride>(ks, qh, m0, q_len);
  __syncthreads();
  uint32_t qf[kD / 16][4];
  {
    const T* qw = ks + warp * 16 * kStride;
#pragma unroll
    for (int c = 0; c < kD / 16; ++c) {
      qf[c][0] = flash::pair_at(qw + g * kStride + c * 16 + 2 * t);
      qf[c][1] = flash::pair_at(qw + (g + 8) * kStride + c * 16 + 2 * t);
      qf[c][2] = flash::pair_at(qw + g * kStride + c * 16 + 2 * t + 8);
      qf[c][3] = flash::pair_at(qw + (g + 8) * kStride + c * 16 + 2 * t + 8);
    }
  }
  // This thread's two query rows (g and g + 8 of its warp's 16).
  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  float m_run[2] = {neg_inf(), neg_inf()};  // running max, in log2 units
  float l_run[2] = {0.f, 0.f};              // this thread's part of the denominator
  float acc[kD / 8][4];
#pragma unroll
  for (int n = 0; n < kD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  // Causal: no key past the block's last query's limit.
  int64_t n_end = k_len;
  if constexpr (has_causal(kMask)) {
    const int64_t lim = m0 + kM - 1 + (k_len - q_len);
    n_end = lim + 1 < k_len ? (lim + 1 > 0 ? lim + 1 : 0) : k_len;
  }
  for (int64_t n0 = 0; n0 < n_end; n0 += kN) {
    __syncthreads();  // the previous tile's (first: the query fragments') readers are done
    flash::load_tile<T, kD, kN, kStride>(ks, kh, n0, k_len);
    flash::load_tile<T, kD, kN, kStride>(vs, vh, n0, k_len);
    __syncthreads();

    // s = q·kᵀ for the warp's 16 rows and the tile's kN keys: kN / 8 fragments.
    float s[kN / 8][4];
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int c = 0; c < kD / 16; ++c) {
#pragma unroll
      for (int n = 0; n < kN / 8; ++n) {
        const T* kr = ks + (n * 8 + g) * kStride + c * 16 + 2 * t;  // B[kdim][key] = k[key][kdim]
        uint32_t b[2] = {flash::pair_at(kr), flash::pair_at(kr + 8)};
        flash::mma_16816<T>(s[n], qf[c], b);
      }
    }

    // Mask, scale (log2 units), the new running max of each row.
    float m_new[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const int64_t j = n0 + n * 8 + 2 * t + (e % 2);
        bool keep = j < k_len;
        if constexpr (has_padding(kMask)) keep = keep && pad[j < k_len ? j : 0] == 0;
        if constexpr (has_causal(kMask)) keep = keep && j <= row[r] + (k_len - q_len);
        s[n][e] = keep ? s[n][e] * scale2 : neg_inf();
        m_new[r] = fmaxf(m_new[r], s[n][e]);
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // the row's 4 threads (t = 0..3) hold its kN values
      m_new[r] = fmaxf(m_new[r], __shfl_xor_sync(0xffffffffu, m_new[r], 1));
      m_new[r] = fmaxf(m_new[r], __shfl_xor_sync(0xffffffffu, m_new[r], 2));
    }
    float shift[2], rescale[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      shift[r] = m_new[r] == neg_inf() ? 0.f : m_new[r];  // all masked so far: exp2(-inf) = 0
      rescale[r] = exp2f(m_run[r] - shift[r]);             // m_run = -inf: 0 (nothing to rescale)
      m_run[r] = m_new[r];
      l_run[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      acc[n][0] *= rescale[0], acc[n][1] *= rescale[0];
      acc[n][2] *= rescale[1], acc[n][3] *= rescale[1];
    }
    // p = exp2(s - max); the denominator takes p undropped, the product the dropped p.
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        float p = exp2f(s[n][e] - shift[r]);
        l_run[r] += p;
        if constexpr (kDrop == Drop::kOn) {
          const int64_t j = n0 + n * 8 + 2 * t + (e % 2);
          const uint64_t i = static_cast<uint64_t>((bh * q_len + row[r]) * k_len + j);
          p = (row[r] < q_len && j < k_len && dropout_keep(drop, i)) ? p * drop.scale : 0.f;
        }
        s[n][e] = p;
      }
    }
    // acc += p · v: the scores' fragments of key blocks 2c, 2c + 1 are the A fragment of k-step
    // c; B[key][dim] = v[key][dim], two keys per register.
#pragma unroll
    for (int c = 0; c < kN / 16; ++c) {
      uint32_t a[4] = {flash::pack_float<T>(s[2 * c][0], s[2 * c][1]),
                       flash::pack_float<T>(s[2 * c][2], s[2 * c][3]),
                       flash::pack_float<T>(s[2 * c + 1][0], s[2 * c + 1][1]),
                       flash::pack_float<T>(s[2 * c + 1][2], s[2 * c + 1][3])};
      const T* v0 = vs + (c * 16 + 2 * t) * kStride;
#pragma unroll
      for (int n = 0; n < kD / 8; ++n) {
        const int col = n * 8 + g;
        uint32_t b[2] = {flash::pack<T>(v0[col], v0[kStride + col]),
                         flash::pack<T>(v0[8 * kStride + col], v0[9 * kStride + col])};
        flash::mma_16816<T>(acc[n], a, b);
      }
    }
  }

  // The denominators: the row's 4 threads' parts summed; out = acc / l, lse = ln(l) + max.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
  T* oh = out + bh * q_len * kD;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= q_len) continue;
    const float inv = l_run[r] > 0.f ? 1.f / l_run[r] : 0.f;
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      const int col = n * 8 + 2 * t;
      *reinterpret_cast<uint32_t*>(oh + row[r] * kD + col) =
          flash::pack_float<T>(acc[n][2 * r] * inv, acc[n][2 * r + 1] * inv);
    }
    if (t == 0) {
      lse[bh * q_len + row[r]] = l_run[r] > 0.f ? (m_run[r] + log2f(l_run[r])) / kLog2e
                                                : __int_as_float(0x7f800000);
    }
  }
}

}  // namespace lightseq::kern
