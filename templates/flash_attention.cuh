// flash_attention.cuh — fused attention forward on tensor cores (FlashAttention-2's schedule with
// mma.sync m16n8k16, sm_80 and later; built for sm_90a at head dims 64 and 128, the products run
// on wgmma: common/wgmma.cuh): softmax(q·kᵀ·scale + mask) (dropped) · v without materializing the
// [B, heads, T, S] scores. Saves the output and the log-sum-exp of each query
// row; the backward recomputes the probabilities from them. Chosen per stack by the spec
// ("attention": "fused"; compiler/planner/attention_backend.h).
#pragma once

#include "common/flash_tiles.cuh"
#include "flash_attention.sig.cuh"

namespace lightseq::kern {

// flash_attn_fwd_kernel — out = softmax(q·kᵀ·scale + mask) (dropped) · v per (batch, head); lse =
//   the natural log of each query row's softmax denominator, max included (+inf for a row whose
//   keys are all masked, whose output is then 0).
// Fuses:     the scores GEMM, mask, softmax, dropout and the context GEMM of the unfused path.
// Layout:    the token layout of the projections around it (no head split or merge): q [batch,
//            q_len, ld_q] and k, v [batch, k_len, ld_kv] rows, head h in columns [h·kD, (h+1)·kD)
//            of a row (q, k, v: column slices of one packed projection, e.g. [B·T, 3·H] with
//            ld = 3·H); out [batch, q_len, heads·kD] (the [B·T, H] input of the output
//            projection); key_padding [batch, k_len] bytes (nonzero: the key is padding; read when
//            kMask has kPadding); lse [batch·heads, q_len] fp32. out, lse `=`.
// Masks:     padding by key; causal keeps key j for query i when j <= i + k_len - q_len (the
//            unfused softmax's rule).
// Dropout:   entry (query i, key j) of head bh by the attention numbering (common/philox.cuh,
//            row bh·q_len + i): the unfused softmax's, so both paths drop the same entries for the
//            same seed and offset.
// Grid/Block: flash_fwd_grid(batch·heads, q_len, kWarps) blocks of flash_fwd_block(kWarps)
//            threads (kWarps warps of 16 query rows, their query fragments in registers; the plans
//            use kFlashFwdWarps = 4); key tiles of kFlashBlockN.
//            Smem: static, 2·kFlashBlockN·(kD + 8) elements: a key tile and a value tile, loaded
//            with cp.async so that the value tile arrives while q·kᵀ runs and the next key tile
//            while the softmax and p·v run; B fragments by ldmatrix (.trans for v).
// Constants: kD a multiple of 16 in [16, 128] (static_assert). Pointers 16-byte aligned, ld_q and
//            ld_kv multiples of 8 elements (the planner checks: flash_ld_ok). Built for
//            flash_fwd_min_blocks(kD, kWarps) blocks per SM (128 registers up to kFlashLeanMaxD).
// Numerics:  products in fp32 on tensor cores; the softmax in fp32 (exp2 with log2(e) folded in
//            the scale); probabilities rounded to T before the context product (as the unfused
//            path stores them); out rounded once.
template <typename T, int kD, Mask kMask, Drop kDrop, int kWarps>
__global__ void __launch_bounds__(32 * kWarps, flash_fwd_min_blocks(kD, kWarps))
    flash_attn_fwd_kernel(const T* q, const T* k, const T* v, const uint8_t* key_padding, T* out,
                          float* lse, int64_t batch, int64_t heads, int64_t q_len, int64_t k_len,
                          int64_t ld_q, int64_t ld_kv, float scale, DropoutArgs drop) {
  static_assert(kD % 16 == 0 && kD >= 16 && kD <= 128, "kD: a multiple of 16 in [16, 128]");
  static_assert(sizeof(T) == 2, "tensor cores: fp16 or bf16");
  static_assert(kWarps == 4 || kWarps == 8, "kWarps: 4 or 8 warps of 16 query rows");
  constexpr int kM = 16 * kWarps, kN = kFlashBlockN;
  // sm_90a at head dims 64 and 128: both products by wgmma (a warpgroup per 64 query rows), the
  // tiles swizzled (common/wgmma.cuh); else mma.sync with rows padded by 16 bytes (conflict-free
  // ldmatrix).
  constexpr bool kWg = flash::wgmma_tiles(kD);
  constexpr int kStride = kWg ? kD : kD + 8;
  __shared__ __align__(1024) T ks[kN * kStride];
  __shared__ __align__(1024) T vs[kN * kStride];
  auto load_tile = [&](T* tile, const T* head, int64_t n0) {
    flash::load_kv_async<T, kD, kN, kStride>(tile, head, ld_kv, n0, k_len);
  };
  if constexpr (kDrop == Drop::kOn) drop = load_dropout_state(drop);

  const int64_t bh = blockIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const T* kh = flash::head_of<kD>(k, bh, heads, k_len, ld_kv);
  const T* vh = flash::head_of<kD>(v, bh, heads, k_len, ld_kv);
  const uint8_t* pad = has_padding(kMask) ? key_padding + (bh / heads) * k_len : nullptr;
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale2 = scale * kLog2e;

  const int64_t n_end = flash::key_end<kMask>(m0, kM, q_len, k_len);
  if (n_end > 0) {
    load_tile(ks, kh, 0);
    cp_async_commit();
  }
  // The warp's 16 query rows as A fragments, straight from global memory (while the first key
  // tile is in flight).
  uint32_t qf[kD / 16][4];
  flash::row_fragments<T, kD>(qf, flash::head_of<kD>(q, bh, heads, q_len, ld_q), ld_q,
                              m0 + warp * 16, q_len, g, t);
  // This thread's two query rows (g and g + 8 of its warp's 16).
  const int64_t row[2] = {m0 + warp * 16 + g, m0 + warp * 16 + g + 8};
  uint64_t flat[2];
  flash::flat_rows(flat, row, bh, q_len);
  float m_run[2] = {neg_inf(), neg_inf()};  // running max, in log2 units
  float l_run[2] = {0.f, 0.f};              // this thread's part of the denominator
  float acc[kD / 8][4];
  flash::zero(acc);

  for (int64_t n0 = 0; n0 < n_end; n0 += kN) {
    // The value tile (its buffer's readers finished with the previous tile's p·v).
    load_tile(vs, vh, n0);
    cp_async_commit();
    cp_async_wait<1>();  // the key tile (the value tile may still be in flight)
    if constexpr (kWg) wg::fence_async_smem();
    __syncthreads();

    // s = q·kᵀ for the warp's 16 rows and the tile's kN keys: kN / 8 fragments.
    float s[kN / 8][4];
    flash::zero(s);
    if constexpr (kWg) {
      flash::wg_abt<T, kD, kN>(s, qf, ks);
    } else {
      flash::mma_abt<T, kD, kN, kStride>(s, qf, ks, lane);
    }
    __syncthreads();  // every warp is done with the key tile: fetch the next one
    const bool more = n0 + kN < n_end;
    if (more) {
      load_tile(ks, kh, n0 + kN);
      cp_async_commit();
    }

    // Mask (only where the tile needs it), scale (log2 units), the new running max of each row.
    const bool masked = flash::tile_masked<kMask>(m0, kM, n0, kN, q_len, k_len);
    flash::ColumnMask<kMask, kN, false> cm;
    if (masked) cm.set(pad, n0, q_len, k_len, row, lane, t);
    float m_new[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const bool keep = !masked || cm.on(r, n * 8 + e % 2);
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
      rescale[r] = exp2f(m_run[r] - shift[r]);            // m_run = -inf: 0 (nothing to rescale)
      m_run[r] = m_new[r];
      l_run[r] *= rescale[r];
    }
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      acc[n][0] *= rescale[0], acc[n][1] *= rescale[0];
      acc[n][2] *= rescale[1], acc[n][3] *= rescale[1];
    }
    // p = exp2(s - max); the denominator takes p undropped, the product the dropped p (masked
    // keys have p = 0 already; rows past q_len are never stored).
    uint32_t kb[kN / 8][2];
    if constexpr (kDrop == Drop::kOn) flash::row_keep_bits<kN>(drop, flat, n0, k_len, t, kb);
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float p0 = exp2f(s[n][2 * r] - shift[r]), p1 = exp2f(s[n][2 * r + 1] - shift[r]);
        l_run[r] += p0 + p1;
        if constexpr (kDrop == Drop::kOn) {
          p0 = (kb[n][r] & 1u) ? p0 * drop.scale : 0.f;
          p1 = (kb[n][r] & 2u) ? p1 * drop.scale : 0.f;
        }
        s[n][2 * r] = p0;
        s[n][2 * r + 1] = p1;
      }
    }
    if (more) {
      cp_async_wait<1>();  // the value tile (the next key tile may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    if constexpr (kWg) wg::fence_async_smem();
    __syncthreads();
    if constexpr (kWg) {
      flash::wg_pb<T, kD, kN>(acc, s, vs);  // acc += p · v
    } else {
      flash::mma_pb<T, kD, kN, kStride>(acc, s, vs, lane);
    }
    __syncthreads();  // every warp is done with the value tile
  }

  // The denominators: the row's 4 threads' parts summed; out = acc / l, lse = ln(l) + max.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 1);
    l_run[r] += __shfl_xor_sync(0xffffffffu, l_run[r], 2);
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) inv[r] = l_run[r] > 0.f ? 1.f / l_run[r] : 0.f;
  const int64_t ld_o = heads * kD;
  flash::store_rows<T, kD>(flash::head_of<kD>(out, bh, heads, q_len, ld_o), ld_o, row, q_len, acc,
                           inv, t);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (t == 0 && row[r] < q_len) {
      lse[bh * q_len + row[r]] =
          l_run[r] > 0.f ? (m_run[r] + log2f(l_run[r])) / kLog2e : __int_as_float(0x7f800000);
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------
// The gradients of out = P̃·v, P̃ = dropout(P), P = softmax(s), s = q·kᵀ·scale + mask, recomputing P
// from q, k and the forward's lse: with dP = dropout_mask(grad_out·vᵀ) and D_i = Σ_d grad_out[i]·
// out[i] (= Σ_j P_ij·dP_ij), dS = P ∘ (dP - D), grad_q = scale·dS·k, grad_k = scale·dSᵀ·q,
// grad_v = P̃ᵀ·grad_out. No atomics (deterministic). Keys in one block (k_len <= 128, the common
// training lengths): one kernel, grad_k/grad_v/grad_q and D together. Longer: three, D per query
// row, then grad_k and grad_v per key block (looping over query tiles), then grad_q per query tile
// (looping over key tiles).

// flash_attn_bwd_dot_kernel — D of every (query, head): Σ_d grad_out·out in fp32.
// Shapes:    out, grad_out [batch, q_len, heads·kD] (token layout: `rows` = batch·q_len·heads head
//            rows of kD); dot [batch·heads, q_len] fp32 `=` (the lse's layout).
// Grid/Block: flash_dot_grid(rows, k_len) blocks of kElementwiseThreads, one head row per thread;
//            none (k_len only decides that) when one key block holds every key: the grad_k/grad_v
//            kernel computes D itself then.
template <typename T, int kD>
__global__ void __launch_bounds__(kElementwiseThreads)
    flash_attn_bwd_dot_kernel(const T* out, const T* grad_out, float* dot, int64_t rows,
                              int64_t heads, int64_t q_len, int64_t k_len) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(kD % kVec == 0, "kD: a multiple of the 16-byte vector");
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x;
  if (r >= rows) return;
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < kD; c += kVec) {
    const Vec<T, kVec> o = load_vec<kVec>(out + r * kD + c);
    const Vec<T, kVec> g = load_vec<kVec>(grad_out + r * kD + c);
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc += to_float(o.v[e]) * to_float(g.v[e]);
  }
  const int64_t token = r / heads, b = token / q_len;
  dot[(b * heads + r % heads) * q_len + token % q_len] = acc;
}

// flash_attn_bwd_dkdv_kernel — grad_k, grad_v of one block of keys (16 per warp, 4 or 8 warps:
//   flash_bwd_warps), over every query tile: sᵀ = k·qᵀ and dPᵀ = v·grad_outᵀ with the
//   keys as rows, so the probabilities' fragments feed the products for grad_v and grad_k directly.
//   When the block holds every key (flash_bwd_one_block(k_len)), it also computes each query
//   tile's D from out and grad_out, and grad_q = scale·dS·k (dSᵀ through shared memory): the whole
//   backward in one launch, one recomputation of P and one dropout draw per entry.
// Layout:    the forward's token layout: q and grad_q rows ld_q apart, k, v, grad_k and grad_v rows
//            ld_kv apart (the gradients column slices of one packed [B·T, 3·H] gradient, as q, k
//            and v of the projection), out and grad_out [batch, q_len, heads·kD]; lse, dot
//            [batch·heads, q_len] fp32 (the forward's; flash_attn_bwd_dot_kernel's, read only with
//            several key blocks). grad_k, grad_v `=`; grad_q `=` with one key block (otherwise
//            flash_attn_bwd_dq_kernel writes it; out is then not read).
// Grid/Block: flash_bwd_grid(batch·heads, k_len) blocks of flash_bwd_threads(k_len); dynamic smem
//            flash_bwd_smem(kD, k_len, kBlocks): a query tile and its grad_out tile (kM =
//            flash_bwd_block_m rows), the tile's lse and D (several key blocks) or out tile (one:
//            D computed from it, each row once per block), all by cp.async into a ring of
//            kFlashBwdStages stages, a tile ahead; with one key block also the keys and the tile's
//            dSᵀ; with kBlocks = 2 the block's keys and values, whose fragments each tile reads by
//            ldmatrix (kBlocks: the blocks per SM it is built for, flash_bwd_blocks; the results
//            are the same bits either way).
template <typename T, int kD, Mask kMask, Drop kDrop, int kBlocks>
__global__ void __launch_bounds__(kFlashBwdThreads, kBlocks)
    flash_attn_bwd_dkdv_kernel(const T* q, const T* k, const T* v, const uint8_t* key_padding,
                               const T* grad_out, const float* lse, const float* dot, const T* out,
                               T* grad_q, T* grad_k, T* grad_v, int64_t batch, int64_t heads,
                               int64_t q_len, int64_t k_len, int64_t ld_q, int64_t ld_kv,
                               float scale, DropoutArgs drop) {
  static_assert(kD % 16 == 0 && kD >= 16 && kD <= 128, "kD: a multiple of 16 in [16, 128]");
  static_assert(sizeof(T) == 2, "tensor cores: fp16 or bf16");
  static_assert(flash_bwd_blocks_ok(kD, kBlocks), "kBlocks: 1, or 2 up to head dim 64");
  constexpr bool kLean = kBlocks > 1;  // k and v fragments from shared memory, per tile
  constexpr int kM = flash_bwd_block_m(kD, kBlocks);
  constexpr int kStride = kD + 8, kSStride = kM + 8;
  // sm_90a at head dims 64 and 128: the four products of a query tile by wgmma (a warpgroup per 64
  // keys, its k and v rows read from the block's key and value tiles: no fragments held), every
  // tile swizzled (common/wgmma.cuh; FlashBwdSmem aligns the offsets to 1 KiB for it).
  constexpr bool kWg = flash::wgmma_tiles(kD);
  constexpr int kTStride = kWg ? kD : kStride;  // the tiles' row stride (kD: swizzled)
  // 16 keys per warp: 4 warps (64 keys) or, one block of more than 64 keys, 8 (flash_bwd_warps)
  const int block_n = flash_bwd_block_n(k_len);
  const bool big = block_n == kFlashBwdBlockN;  // the 8-warp block
  extern __shared__ __align__(16) unsigned char flash_bwd_smem_bytes[];
  const FlashBwdSmem sm = flash_bwd_smem_layout(kD, k_len, kBlocks);
  // The query side's stage s (a ring of kFlashBwdStages): its query, grad_out and (one key
  // block) out tiles, lse and D.
  struct QuerySide {
    T *qs, *gs, *os;
    float *lse_s, *dot_s;
  };
  auto stage = [&](int s) {
    unsigned char* b = flash_bwd_smem_bytes + s * sm.stage;
    return QuerySide{reinterpret_cast<T*>(b), reinterpret_cast<T*>(b + sm.gs),
                     reinterpret_cast<T*>(b + sm.os), reinterpret_cast<float*>(b + sm.lse),
                     reinterpret_cast<float*>(b + sm.dot)};
  };
  T* ks = reinterpret_cast<T*>(flash_bwd_smem_bytes + sm.ks);    // one key block or kLean: the keys
  T* vs = reinterpret_cast<T*>(flash_bwd_smem_bytes + sm.vs);    // kLean: the values
  T* dst = reinterpret_cast<T*>(flash_bwd_smem_bytes + sm.dst);  // one key block: dSᵀ [key][query]
  static_assert(16 * kFlashBwdThreads / 32 == kFlashBwdBlockN, "the 8-warp block: 16 keys a warp");
  if constexpr (kDrop == Drop::kOn) drop = load_dropout_state(drop);
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale2 = scale * kLog2e;

  const bool one = flash_bwd_one_block(k_len);
  // The launch's block must hold the keys its grid assumes (flash_bwd_threads): a smaller one
  // would leave keys out of grad_q silently.
  if (blockDim.x != static_cast<unsigned>(flash_bwd_threads(k_len))) __trap();
  const int64_t bh = blockIdx.y;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * block_n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t ld_o = heads * kD;
  const T* qh = flash::head_of<kD>(q, bh, heads, q_len, ld_q);
  const T* gh = flash::head_of<kD>(grad_out, bh, heads, q_len, ld_o);
  const T* oh = flash::head_of<kD>(out, bh, heads, q_len, ld_o);
  const T* kh = flash::head_of<kD>(k, bh, heads, k_len, ld_kv);
  const uint8_t* pad = has_padding(kMask) ? key_padding + (bh / heads) * k_len : nullptr;
  const T* vh = flash::head_of<kD>(v, bh, heads, k_len, ld_kv);
  // This warp's 16 keys: their k and v rows as A fragments, held across the query loop (kLean:
  // read from the block's key and value tiles per query tile).
  const int64_t key0 = n0 + warp * 16;
  uint32_t kf[kD / 16][4], vf[kD / 16][4];
  if constexpr (!kLean && !kWg) {
    flash::row_fragments<T, kD>(kf, kh, ld_kv, key0, k_len, g, t);
    flash::row_fragments<T, kD>(vf, vh, ld_kv, key0, k_len, g, t);
  }
  const int64_t key[2] = {key0 + g, key0 + g + 8};
  flash::KeyRowMask<kMask> km(key, q_len, k_len, pad);  // the mask of its entries, per tile
  float dk[kD / 8][4], dv[kD / 8][4];
  flash::zero(dk);
  flash::zero(dv);
  // Causal: no query before the first that may see the block's first key (with one key block
  // every query tile is visited: each writes its grad_q rows, zeros where no key is visible).
  int64_t m_begin = 0;
  if constexpr (has_causal(kMask)) {
    const int64_t first = n0 - (k_len - q_len);
    if (!one) m_begin = first > 0 ? first / kM * kM : 0;
  }
  // The block's keys (one key block: grad_q's; kLean: the fragments') and values (kLean), zeros
  // past k_len.
  auto load_keys = [&](T* tile, const T* head) {
    if (big) {
      flash::load_kv_async<T, kD, kFlashBwdBlockN, kTStride>(tile, head, ld_kv, n0, k_len);
    } else {
      flash::load_kv_async<T, kD, kFlashBwdBlockN / 2, kTStride>(tile, head, ld_kv, n0, k_len);
    }
  };
  if (one || kLean || kWg) load_keys(ks, kh);
  if (kLean || kWg) load_keys(vs, vh);
  // A query tile's rows into a stage, all by cp.async (zeros past q_len): its query and
  // grad_out rows, lse and D (with one key block its out rows instead, for D). Tile i + 1 is
  // requested when tile i starts (its stage's last readers, tile i - 1's, passed the barrier
  // before tile i - 1's grad_q), so it arrives while tile i's products run. No global load waits
  // inside the loop but the tiles'.
  if constexpr (kWg) {  // the swizzle's 1024-byte atoms (the layout aligns the offsets)
    if ((smem_addr(flash_bwd_smem_bytes) & 1023u) != 0) __trap();
  }
  auto load_query_side = [&](const QuerySide& st, int64_t m) {
    flash::load_kv_async<T, kD, kM, kTStride>(st.qs, qh, ld_q, m, q_len);
    flash::load_kv_async<T, kD, kM, kTStride>(st.gs, gh, ld_o, m, q_len);
    flash::load_floats_async<kM>(st.lse_s, lse + bh * q_len, m, q_len);
    if (one) {
      flash::load_kv_async<T, kD, kM, kTStride>(st.os, oh, ld_o, m, q_len);
    } else {
      flash::load_floats_async<kM>(st.dot_s, dot + bh * q_len, m, q_len);
    }
  };
  if (m_begin < q_len) load_query_side(stage(0), m_begin);
  cp_async_commit();
  int cur = 0;  // the stage of tile m0
  for (int64_t m0 = m_begin; m0 < q_len; m0 += kM, cur = (cur + 1) % kFlashBwdStages) {
    const bool more = m0 + kM < q_len;
    if (more) {
      load_query_side(stage((cur + 1) % kFlashBwdStages), m0 + kM);
      cp_async_commit();
      cp_async_wait<1>();  // tile m0's copies (the next tile's may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    if constexpr (kWg) wg::fence_async_smem();
    __syncthreads();
    const QuerySide side = stage(cur);  // named copies: a lambda cannot capture a binding
    T *const qs = side.qs, *const gs = side.gs, *const os = side.os;
    float *const lse_s = side.lse_s, *const dot_s = side.dot_s;
    // With one key block, D of the tile's rows from its out and grad_out tiles, each row once
    // per block (read after the barrier below, the products between).
    if (one) flash::stage_dots<T, kD, kM, kTStride>(dot_s, os, gs);
    float s[kM / 8][4], dp[kM / 8][4];
    flash::zero(s);
    flash::zero(dp);
    if constexpr (kWg) {  // the warpgroup's 64 keys: rows 64·(warp / 4) of the tiles
      const int at = wg::sw128_offset<kFlashBwdBlockN>(warp / 4 * 64, 0);  // panel 0, row 64·wg
      wg::in_flight(
          [&] {
            flash::wg_abt_ss_issue<T, kD, kM>(s, ks + at, block_n, qs);   // sᵀ[key][query]
            flash::wg_abt_ss_issue<T, kD, kM>(dp, vs + at, block_n, gs);  // (grad_out·vᵀ)ᵀ
          },
          s, dp);
    } else {
      if constexpr (kLean)
        flash::tile_fragments<T, kD, kStride>(kf, ks + warp * 16 * kStride, lane);
      flash::mma_abt<T, kD, kM, kStride>(s, kf, qs, lane);
      if constexpr (kLean)
        flash::tile_fragments<T, kD, kStride>(vf, vs + warp * 16 * kStride, lane);
      flash::mma_abt<T, kD, kM, kStride>(dp, vf, gs, lane);
    }
    if (one) __syncthreads();  // the tile's D staged
    // Masks only where the tile needs them (queries past q_len, keys past k_len, padding, the
    // causal diagonal).
    const bool masked = flash::tile_masked<kMask>(m0, kM, n0, block_n, q_len, k_len);
    if (masked) km.tile<kM>(m0, q_len, t);
    uint32_t kb[kM / 8];
    if constexpr (kDrop == Drop::kOn) {
      flash::col_keep_bits<kM>(drop, static_cast<uint64_t>(bh * q_len), m0, key0, k_len, g, t, kb);
    }
    float pd[kM / 8][4];  // dropped probabilities
#pragma unroll
    for (int n = 0; n < kM / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2, qi = n * 8 + 2 * t + (e % 2);
        const bool on = !masked || km.on(r, n * 8 + e % 2);
        const float keep = kDrop == Drop::kOn ? ((kb[n] >> e) & 1u ? drop.scale : 0.f) : 1.f;
        s[n][e] = flash::recompute(on, s[n][e], scale2, lse_s[qi] * kLog2e, dp[n][e], dot_s[qi],
                                   keep, &pd[n][e]);
      }
    }
    if constexpr (kWg) {
      // grad_v += P̃ᵀ·grad_out and grad_k += dSᵀ·q (scaled below) in flight together while the
      // dSᵀ rows are stored; then one barrier frees every tile of the query side for the next.
      uint32_t pa[kM / 16][4], sa[kM / 16][4];
      flash::a_fragments<T, kM>(pa, pd);
      flash::a_fragments<T, kM>(sa, s);
      wg::in_flight_with(
          [&] {
            flash::wg_pb_issue<T, kD, kM>(dv, pa, gs);
            flash::wg_pb_issue<T, kD, kM>(dk, sa, qs);
          },
          [&] {
            if (one) flash::store_rows_t<T, kM, kSStride>(dst + warp * 16 * kSStride, s, g, t);
          },
          dv, dk);
    } else {
      flash::mma_pb<T, kD, kM, kStride>(dv, pd, gs, lane);  // grad_v += P̃ᵀ·grad_out
      if (one) flash::store_rows_t<T, kM, kSStride>(dst + warp * 16 * kSStride, s, g, t);
      flash::mma_pb<T, kD, kM, kStride>(dk, s, qs, lane);  // grad_k += dSᵀ·q (scaled below)
    }
    // Every warp is done with the stage (free for tile m0 + 2·kM from the next iteration on) and
    // has stored its dSᵀ rows (one key block: read by grad_q below).
    __syncthreads();
    // grad_q of the tile's rows (while the next tiles load; dSᵀ is rewritten only after the next
    // iteration's first barrier).
    T* gqh = one ? flash::head_of<kD>(grad_q, bh, heads, q_len, ld_q) : nullptr;
    if (one && big) {
      flash::grad_q_tile<T, kD, kM, 128, 8, kTStride>(gqh, ld_q, dst, ks, m0, q_len, scale, warp,
                                                      lane);
    } else if (one) {
      flash::grad_q_tile<T, kD, kM, 64, 4, kTStride>(gqh, ld_q, dst, ks, m0, q_len, scale, warp,
                                                     lane);
    }
  }
  cp_async_wait<0>();  // no copy left in flight (the key tile, when no query tile ran)
  const float scales[2] = {scale, scale}, ones[2] = {1.f, 1.f};
  flash::store_rows<T, kD>(flash::head_of<kD>(grad_k, bh, heads, k_len, ld_kv), ld_kv, key, k_len,
                           dk, scales, t);
  flash::store_rows<T, kD>(flash::head_of<kD>(grad_v, bh, heads, k_len, ld_kv), ld_kv, key, k_len,
                           dv, ones, t);
}

// flash_attn_bwd_dq_kernel — grad_q of one tile of 64 query rows per block (4 warps of 16), over
//   every key tile.
// Layout:    flash_attn_bwd_dkdv_kernel's: q and grad_q rows ld_q apart, k and v rows ld_kv
//            apart, grad_out [batch, q_len, heads·kD]; lse, dot [batch·heads, q_len] fp32.
//            grad_q `=`.
// Grid/Block: flash_dq_grid(batch·heads, q_len, k_len) blocks of kFlashThreads (none when one key
//            block holds every key: flash_attn_bwd_dkdv_kernel writes grad_q then). Smem: static,
//            2·kFlashBlockN·(kD + 8) elements (a key tile and its value tile, by cp.async).
template <typename T, int kD, Mask kMask, Drop kDrop>
__global__ void __launch_bounds__(kFlashThreads)
    flash_attn_bwd_dq_kernel(const T* q, const T* k, const T* v, const uint8_t* key_padding,
                             const T* grad_out, const float* lse, const float* dot, T* grad_q,
                             int64_t batch, int64_t heads, int64_t q_len, int64_t k_len,
                             int64_t ld_q, int64_t ld_kv, float scale, DropoutArgs drop) {
  static_assert(kD % 16 == 0 && kD >= 16 && kD <= 128, "kD: a multiple of 16 in [16, 128]");
  static_assert(sizeof(T) == 2, "tensor cores: fp16 or bf16");
  constexpr int kM = kFlashBlockM, kN = kFlashBlockN;
  // sm_90a at head dims 64 and 128: the three products by wgmma on swizzled tiles, as the forward.
  using Tiles = flash::KvTiles<T, kD, kN>;
  constexpr bool kWg = Tiles::kWg;
  constexpr int kStride = Tiles::kStride;
  __shared__ Tiles tiles;
  T* ks = tiles.k;
  T* vs = tiles.v;
  auto load_tile = [&](T* tile, const T* head, int64_t n0) {
    Tiles::load(tile, head, ld_kv, n0, k_len);
  };
  if constexpr (kDrop == Drop::kOn) drop = load_dropout_state(drop);
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale2 = scale * kLog2e;

  const int64_t bh = blockIdx.y;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const uint8_t* pad = has_padding(kMask) ? key_padding + (bh / heads) * k_len : nullptr;
  const int64_t row0 = m0 + warp * 16;
  uint32_t qf[kD / 16][4], gf[kD / 16][4];
  const int64_t ld_o = heads * kD;
  flash::row_fragments<T, kD>(qf, flash::head_of<kD>(q, bh, heads, q_len, ld_q), ld_q, row0, q_len,
                              g, t);
  flash::row_fragments<T, kD>(gf, flash::head_of<kD>(grad_out, bh, heads, q_len, ld_o), ld_o, row0,
                              q_len, g, t);
  const int64_t row[2] = {row0 + g, row0 + g + 8};
  uint64_t flat[2];
  flash::flat_rows(flat, row, bh, q_len);
  float lse2[2], dot_r[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    lse2[r] = row[r] < q_len ? lse[bh * q_len + row[r]] * kLog2e : 0.f;
    dot_r[r] = row[r] < q_len ? dot[bh * q_len + row[r]] : 0.f;
  }
  float dq[kD / 8][4];
  flash::zero(dq);
  const int64_t n_end = flash::key_end<kMask>(m0, kM, q_len, k_len);
  const T* kh = flash::head_of<kD>(k, bh, heads, k_len, ld_kv);
  const T* vh = flash::head_of<kD>(v, bh, heads, k_len, ld_kv);
  // Key and value tiles by cp.async: the next value tile loads while dS and grad_q's product run;
  // the next key tile is requested as soon as the last reader of this one is done.
  if (n_end > 0) {
    load_tile(ks, kh, 0);
    load_tile(vs, vh, 0);
    cp_async_commit();
  }
  for (int64_t n0 = 0; n0 < n_end; n0 += kN) {
    cp_async_wait<0>();
    if constexpr (kWg) wg::fence_async_smem();
    __syncthreads();
    const bool more = n0 + kN < n_end;
    float s[kN / 8][4], dp[kN / 8][4];
    flash::zero(s);
    flash::zero(dp);
    if constexpr (kWg) {
      wg::in_flight(
          [&] {
#pragma unroll
            for (int k = 0; k < kD / 16; ++k) {  // s[query][key] and grad_out·vᵀ together
              wg::mma_rs<T, kN, 0>(s, qf[k], wg::desc_k_major<kN>(ks, k));
              wg::mma_rs<T, kN, 0>(dp, gf[k], wg::desc_k_major<kN>(vs, k));
            }
          },
          s, dp);
    } else {
      flash::mma_abt<T, kD, kN, kStride>(s, qf, ks, lane);   // s[query][key]
      flash::mma_abt<T, kD, kN, kStride>(dp, gf, vs, lane);  // grad_out·vᵀ
    }
    __syncthreads();  // every warp is done with vs
    if (more) {
      load_tile(vs, vh, n0 + kN);
      cp_async_commit();
    }
    // Masks only where the tile needs them (the keys past k_len, padding, the causal diagonal).
    const bool masked = flash::tile_masked<kMask>(m0, kM, n0, kN, q_len, k_len);
    flash::ColumnMask<kMask, kN, true> cm;
    if (masked) cm.set(pad, n0, q_len, k_len, row, lane, t);
    uint32_t kb[kN / 8][2];
    if constexpr (kDrop == Drop::kOn) flash::row_keep_bits<kN>(drop, flat, n0, k_len, t, kb);
#pragma unroll
    for (int n = 0; n < kN / 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2, h = e % 2;
        const bool on = !masked || cm.on(r, n * 8 + h);
        const float keep = kDrop == Drop::kOn ? ((kb[n][r] >> h) & 1u ? drop.scale : 0.f) : 1.f;
        float unused;
        s[n][e] = flash::recompute(on, s[n][e], scale2, lse2[r], dp[n][e], dot_r[r], keep, &unused);
      }
    }
    if constexpr (kWg) {  // grad_q += dS·k (scaled below)
      flash::wg_pb<T, kD, kN>(dq, s, ks);
    } else {
      flash::mma_pb<T, kD, kN, kStride>(dq, s, ks, lane);
    }
    __syncthreads();  // every warp is done with ks
    if (more) {
      load_tile(ks, kh, n0 + kN);
      cp_async_commit();
    }
  }
  const float scales[2] = {scale, scale};
  flash::store_rows<T, kD>(flash::head_of<kD>(grad_q, bh, heads, q_len, ld_q), ld_q, row, q_len, dq,
                           scales, t);
}

}  // namespace lightseq::kern
