// flash_attention.cuh — fused attention forward on tensor cores (FlashAttention-2's schedule with
// mma.sync m16n8k16, sm_80 and later; built for sm_90a at head dims 64 and 128, the products run
// on wgmma: common/wgmma.cuh): softmax(q·kᵀ·scale + mask) (dropped) · v without materializing the
// [B, heads, T, S] scores. Saves the output and the log-sum-exp of each query
// row; the backward recomputes the probabilities from them. Chosen per stack by the spec
// ("attention": "fused"; compiler/planner/attention_backend.h).
#pragma once

#include "common/flash_tiles.cuh"
#include "common/mbarrier.cuh"
#include "flash_attention.sig.cuh"

namespace lightseq::kern {

namespace flash {

// The forward's state of a thread's two query rows (g and g + 8 of its warp's 16) across key tiles:
// the running max (log2 units), the thread's part of the denominator, the output accumulator.
template <int kD>
struct FwdRows {
  int64_t row[2];
  uint64_t flat[2];  // the dropout numbering's rows: bh·q_len + row
  float m_run[2] = {neg_inf(), neg_inf()};
  float l_run[2] = {0.f, 0.f};
  float acc[kD / 8][4];
  __device__ __forceinline__ FwdRows(int64_t first, int64_t bh, int64_t q_len) {
    row[0] = first;
    row[1] = first + 8;
    flash::flat_rows(flat, row, bh, q_len);
    flash::zero(acc);
  }
  // The accumulator onto a new running max (fwd_softmax's factors).
  __device__ __forceinline__ void rescale(const float (&by)[2]) {
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      acc[n][0] *= by[0], acc[n][1] *= by[0];
      acc[n][2] *= by[1], acc[n][3] *= by[1];
    }
  }
};

// A forward block's place (both geometries): its head bh (blockIdx.y, = b·heads + h) and first
// query row m0 (blockIdx.x · kM), its batch element's query and key rows (padded or packed:
// span_of; the lengths qn and kn bound and mask everything, the launch's q_len and k_len only
// number the dropout entries and lay out lse), the thread's warp and lane (g = lane / 4, t = lane
// % 4), the head's keys and values and its keys' padding bytes, the scale in log2 units.
template <typename T, int kD, Mask kMask, Seqs kSeqs>
struct FwdBlock {
  int64_t bh, h, m0;
  flash::Span qs, ks;
  int warp, lane, g, t;
  const T *kh, *vh;
  const uint8_t* pad;
  float scale2;
  __device__ __forceinline__ FwdBlock(int kM, const T* k, const T* v, const uint8_t* key_padding,
                                      const int* cu_q, const int* cu_k, int* bad, int64_t heads,
                                      int64_t q_len, int64_t k_len, int64_t total_q,
                                      int64_t total_k, int64_t ld_kv, float scale) {
    constexpr float kLog2e = 1.4426950408889634f;
    bh = blockIdx.y;
    h = bh % heads;
    m0 = static_cast<int64_t>(blockIdx.x) * kM;
    qs = flash::span_of<kSeqs>(cu_q, bh / heads, q_len, total_q, bad);
    ks = flash::span_of<kSeqs>(cu_k, bh / heads, k_len, total_k, bad);
    warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    g = lane / 4, t = lane % 4;
    kh = flash::head_at<kD>(k, ks, h, ld_kv);
    vh = flash::head_at<kD>(v, ks, h, ld_kv);
    pad = has_padding(kMask) ? key_padding + ks.first : nullptr;
    scale2 = scale * kLog2e;
  }
  __device__ __forceinline__ int64_t qn() const { return qs.rows; }
  __device__ __forceinline__ int64_t kn() const { return ks.rows; }
};

// One key tile [n0, n0 + kN) of the online softmax, between its two products: s (the warp's q·kᵀ,
// C layout) masked (only where the tile needs it: `masked`), scaled to log2 units, the running max
// and denominator updated, and s replaced by p = exp2(s - max) (dropped: the denominator takes p
// undropped, the product the dropped p; masked keys have p = 0 already; rows past qn are never
// stored). qn, kn: the batch element's lengths; k_len: the dropout numbering's row length. `by`:
// the factors that take the accumulator onto the new max (FwdRows::rescale), which the caller
// applies once the accumulator is its own (the sm_90a ring's p·v may still be adding the previous
// tile into it).
template <Mask kMask, Drop kDrop, int kN, int kD>
__device__ __forceinline__ void fwd_softmax(float (&s)[kN / 8][4], FwdRows<kD>& st, float (&by)[2],
                                            bool masked, const uint8_t* pad, int64_t n0, int64_t qn,
                                            int64_t kn, int64_t k_len, float scale2,
                                            const DropoutArgs& drop, int lane, int t) {
  flash::ColumnMask<kMask, kN> cm;
  if (masked) cm.set(pad, n0, qn, kn, st.row, lane, t);
  float m_new[2] = {st.m_run[0], st.m_run[1]};
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
  float shift[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    shift[r] = m_new[r] == neg_inf() ? 0.f : m_new[r];  // all masked so far: exp2(-inf) = 0
    by[r] = exp2f(st.m_run[r] - shift[r]);              // m_run = -inf: 0 (nothing to rescale)
    st.m_run[r] = m_new[r];
    st.l_run[r] *= by[r];
  }
  uint32_t kb[kN / 8][2];
  if constexpr (kDrop == Drop::kOn) flash::row_keep_bits<kN>(drop, st.flat, n0, k_len, t, kb);
#pragma unroll
  for (int n = 0; n < kN / 8; ++n) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float p0 = exp2f(s[n][2 * r] - shift[r]), p1 = exp2f(s[n][2 * r + 1] - shift[r]);
      st.l_run[r] += p0 + p1;
      if constexpr (kDrop == Drop::kOn) {
        p0 = (kb[n][r] & 1u) ? p0 * drop.scale : 0.f;
        p1 = (kb[n][r] & 2u) ? p1 * drop.scale : 0.f;
      }
      s[n][2 * r] = p0;
      s[n][2 * r + 1] = p1;
    }
  }
}

// The rows' end: the denominators (the row's 4 threads' parts summed); out = acc / l, lse = ln(l)
// + max (+inf where every key was masked: l = 0, out 0). out: the batch element's rows `qs`; lse
// in its layout (flash::row_stats_at: worked out here, at the end, so that nothing of it is held
// across the key loop).
template <typename T, int kD, Seqs kSeqs>
__device__ __forceinline__ void fwd_store(FwdRows<kD>& st, T* out, float* lse, const int* cu_q,
                                          int64_t bh, int64_t h, const flash::Span& qs,
                                          int64_t heads, int64_t q_len, int64_t total_q, int t) {
  constexpr float kLog2e = 1.4426950408889634f;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    st.l_run[r] += __shfl_xor_sync(0xffffffffu, st.l_run[r], 1);
    st.l_run[r] += __shfl_xor_sync(0xffffffffu, st.l_run[r], 2);
  }
  float inv[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) inv[r] = st.l_run[r] > 0.f ? 1.f / st.l_run[r] : 0.f;
  const int64_t ld_o = heads * kD;
  flash::store_rows<T, kD>(flash::head_at<kD>(out, qs, h, ld_o), ld_o, st.row, qs.rows, st.acc, inv,
                           t);
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (t == 0 && st.row[r] < qs.rows) {
      lse[flash::row_stats_at<kSeqs>(cu_q, qs, bh, heads, q_len, total_q) + st.row[r]] =
          st.l_run[r] > 0.f ? (st.m_run[r] + log2f(st.l_run[r])) / kLog2e
                            : __int_as_float(0x7f800000);
    }
  }
}

// The 4-warp geometry (flash_fwd_ring false): one key tile and one value tile in static shared
// memory, loaded with cp.async so that the value tile arrives while q·kᵀ runs and the next key tile
// while the softmax and p·v run; the block synchronizes twice a tile.
template <typename T, int kD, Mask kMask, Drop kDrop, Seqs kSeqs, int kWarps>
__device__ __forceinline__ void fwd_tiles(const T* q, const T* k, const T* v,
                                          const uint8_t* key_padding, const int* cu_q,
                                          const int* cu_k, T* out, float* lse, int* bad,
                                          int64_t heads, int64_t q_len, int64_t k_len,
                                          int64_t total_q, int64_t total_k, int64_t ld_q,
                                          int64_t ld_kv, float scale, const DropoutArgs& drop) {
  constexpr int kM = 16 * kWarps, kN = kFlashBlockN;
  // sm_90a at head dims 64 and 128: both products by wgmma (a warpgroup per 64 query rows), the
  // tiles swizzled (common/wgmma.cuh); else mma.sync with rows padded by 16 bytes (conflict-free
  // ldmatrix).
  constexpr bool kWg = flash::wgmma_tiles(kD);
  constexpr int kStride = kWg ? kD : kD + 8;
  __shared__ __align__(1024) T ks[kN * kStride];
  __shared__ __align__(1024) T vs[kN * kStride];
  const FwdBlock<T, kD, kMask, kSeqs> blk(kM, k, v, key_padding, cu_q, cu_k, bad, heads, q_len,
                                          k_len, total_q, total_k, ld_kv, scale);
  if (blk.m0 >= blk.qn()) return;  // past a packed sequence's queries (the whole block)
  auto load_tile = [&](T* tile, const T* head, int64_t n0) {
    flash::load_kv_async<T, kD, kN, kStride>(tile, head, ld_kv, n0, blk.kn());
  };

  const int64_t n_end = flash::key_end<kMask>(blk.m0, kM, blk.qn(), blk.kn());
  if (n_end > 0) {
    load_tile(ks, blk.kh, 0);
    cp_async_commit();
  }
  // The warp's 16 query rows as A fragments, straight from global memory (while the first key
  // tile is in flight).
  uint32_t qf[kD / 16][4];
  flash::row_fragments<T, kD>(qf, flash::head_at<kD>(q, blk.qs, blk.h, ld_q), ld_q,
                              blk.m0 + blk.warp * 16, blk.qn(), blk.g, blk.t);
  FwdRows<kD> st(blk.m0 + blk.warp * 16 + blk.g, blk.bh, q_len);

  for (int64_t n0 = 0; n0 < n_end; n0 += kN) {
    // The value tile (its buffer's readers finished with the previous tile's p·v).
    load_tile(vs, blk.vh, n0);
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
      flash::mma_abt<T, kD, kN, kStride>(s, qf, ks, blk.lane);
    }
    __syncthreads();  // every warp is done with the key tile: fetch the next one
    const bool more = n0 + kN < n_end;
    if (more) {
      load_tile(ks, blk.kh, n0 + kN);
      cp_async_commit();
    }

    float by[2];
    fwd_softmax<kMask, kDrop, kN, kD>(
        s, st, by, flash::tile_masked<kMask>(blk.m0, kM, n0, kN, blk.qn(), blk.kn()), blk.pad, n0,
        blk.qn(), blk.kn(), k_len, blk.scale2, drop, blk.lane, blk.t);
    st.rescale(by);
    if (more) {
      cp_async_wait<1>();  // the value tile (the next key tile may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    if constexpr (kWg) wg::fence_async_smem();
    __syncthreads();
    if constexpr (kWg) {
      flash::wg_pb<T, kD, kN>(st.acc, s, vs);  // acc += p · v
    } else {
      flash::mma_pb<T, kD, kN, kStride>(st.acc, s, vs, blk.lane);
    }
    __syncthreads();  // every warp is done with the value tile
  }
  fwd_store<T, kD, kSeqs>(st, out, lse, cu_q, blk.bh, blk.h, blk.qs, heads, q_len, total_q, blk.t);
}

// The 8-warp geometry (flash_fwd_ring): a ring of kFlashFwdStages key/value tile pairs in dynamic
// shared memory (flash_fwd_smem). Tile j sits in slot j % kFlashFwdStages; every thread copies its
// share of a tile kFlashFwdStages - 1 tiles ahead of the one whose p·v it runs, and each warp
// publishes its share on the slot's mbarrier once its copies landed (kWarps arrivals a phase). A
// warp waits only for the tile it needs, never for the whole block: the two warpgroups drift apart,
// one's products overlapping the other's softmax. On wgmma (sm_90a) a warpgroup also overlaps its
// own: tile j + 1's q·kᵀ and tile j's p·v are issued together and the softmax of tile j + 1 runs
// while p·v is in flight (the accumulator rescaled after it lands: the same operations in the same
// order as one tile after another, so the same bits).
// Why a refilled slot is free without a barrier of its own: a warp publishes tile j + kAhead only
// after its products of tile j, and so of every tile before, have read their slots; the refill at
// the end of tile j (the slot of tile j - 1) comes after this warp waited for tile j + kAhead - 1,
// i.e. after every warp finished tile j - 1. (A model of the protocol under random interleavings:
// tests/protocol/flash_fwd_ring_sim.py.)
template <typename T, int kD, Mask kMask, Drop kDrop, Seqs kSeqs, int kWarps>
__device__ __forceinline__ void fwd_ring(const T* q, const T* k, const T* v,
                                         const uint8_t* key_padding, const int* cu_q,
                                         const int* cu_k, T* out, float* lse, int* bad,
                                         int64_t heads, int64_t q_len, int64_t k_len,
                                         int64_t total_q, int64_t total_k, int64_t ld_q,
                                         int64_t ld_kv, float scale, const DropoutArgs& drop) {
  constexpr int kM = 16 * kWarps, kN = kFlashBlockN, kStages = kFlashFwdStages;
  constexpr bool kWg = flash::wgmma_tiles(kD);  // as fwd_tiles
  constexpr int kStride = kWg ? kD : kD + 8;
  constexpr int kPitch = flash_fwd_tile_elems(kD);  // a slot's key tile, then its value tile
  // Tiles published ahead of the one whose p·v runs: its own, and with wgmma the next one (whose
  // q·kᵀ is issued with it); one slot more is in flight, one more being refilled.
  constexpr int kAhead = kWg ? 2 : 1;
  static_assert(kStages >= kAhead + 2, "a slot being refilled and one in flight");
  extern __shared__ __align__(16) unsigned char flash_fwd_smem_bytes[];
  T* ring = reinterpret_cast<T*>(flash_fwd_smem_bytes);
  uint64_t* full = reinterpret_cast<uint64_t*>(flash_fwd_smem_bytes + flash_fwd_ring_bytes(kD));
  // The swizzled tiles need 1 KiB alignment: the dynamic buffer's, with no static shared memory.
  if constexpr (kWg) {
    if ((smem_addr(flash_fwd_smem_bytes) & 1023u) != 0) __trap();
  }

  const FwdBlock<T, kD, kMask, kSeqs> blk(kM, k, v, key_padding, cu_q, cu_k, bad, heads, q_len,
                                          k_len, total_q, total_k, ld_kv, scale);
  if (blk.m0 >= blk.qn()) return;  // past a packed sequence's queries (the whole block)
  const int64_t tiles = ceil_div(flash::key_end<kMask>(blk.m0, kM, blk.qn(), blk.kn()), kN);

  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) mbar::init(&full[i], kWarps);
  }
  __syncthreads();
  auto slot = [&](int64_t j) { return ring + (j % kStages) * 2 * kPitch; };
  auto phase = [](int64_t j) { return static_cast<uint32_t>((j / kStages) & 1); };
  // This thread's copies of tile j into its slot as one commit group (empty past the last tile:
  // the group count stays the same each iteration).
  auto copy = [&](int64_t j) {
    if (j < tiles) {
      T* to = slot(j);
      flash::load_kv_async<T, kD, kN, kStride>(to, blk.kh, ld_kv, j * kN, blk.kn());
      flash::load_kv_async<T, kD, kN, kStride>(to + kPitch, blk.vh, ld_kv, j * kN, blk.kn());
    }
    cp_async_commit();
  };
  // After this thread waited for its copies of tile j: the warp's share published.
  auto publish = [&](int64_t j) {
    if (j >= tiles) return;
    if constexpr (kWg) wg::fence_async_smem();  // for wgmma's reads (the async proxy)
    __syncwarp();
    if (blk.lane == 0) mbar::arrive(&full[j % kStages]);
  };
  // The end of tile j's p·v (its reads of the slot done): the refill of the slot tile j - 1 used
  // with tile j + kStages - 1 (free: see above), and the publication of tile j + kAhead.
  auto advance = [&](int64_t j) {
    copy(j + kStages - 1);
    cp_async_wait<kStages - 1 - kAhead>();  // tile j + kAhead (later groups may be in flight)
    publish(j + kAhead);
  };
  auto masked = [&](int64_t j) {
    return flash::tile_masked<kMask>(blk.m0, kM, j * kN, kN, blk.qn(), blk.kn());
  };
  for (int j = 0; j < kStages - 1; ++j) copy(j);
  uint32_t qf[kD / 16][4];  // the warp's 16 query rows as A fragments (the copies in flight)
  flash::row_fragments<T, kD>(qf, flash::head_at<kD>(q, blk.qs, blk.h, ld_q), ld_q,
                              blk.m0 + blk.warp * 16, blk.qn(), blk.g, blk.t);
  FwdRows<kD> st(blk.m0 + blk.warp * 16 + blk.g, blk.bh, q_len);
  cp_async_wait<kStages - 1 - kAhead>();  // tiles 0 .. kAhead - 1
  for (int j = 0; j < kAhead; ++j) publish(j);

  float s[kN / 8][4];
  float by[2];
  if constexpr (kWg) {
    uint32_t pa[kN / 16][4];  // tile j's probabilities as p·v's A fragments
    if (tiles > 0) {
      mbar::wait(&full[0], 0);
      flash::zero(s);
      flash::wg_abt<T, kD, kN>(s, qf, slot(0));
      fwd_softmax<kMask, kDrop, kN, kD>(s, st, by, masked(0), blk.pad, 0, blk.qn(), blk.kn(), k_len,
                                        blk.scale2, drop, blk.lane, blk.t);
      st.rescale(by);
      flash::a_fragments<T, kN>(pa, s);
    }
    for (int64_t j = 0; j < tiles; ++j) {
      const bool next = j + 1 < tiles;
      if (next) mbar::wait(&full[(j + 1) % kStages], phase(j + 1));
      flash::zero(s);
      wg::pin(s);
      wg::pin(st.acc);
      wg::fence();
      if (next) {
#pragma unroll
        for (int c = 0; c < kD / 16; ++c) {
          wg::mma_rs<T, kN, 0>(s, qf[c], wg::desc_k_major<kN>(slot(j + 1), c));
        }
      }
      wg::commit();
      flash::wg_pb_issue<T, kD, kN>(st.acc, pa, slot(j) + kPitch);
      wg::commit();
      wg::wait<1>();  // tile j + 1's scores (p·v may still be in flight)
      wg::pin(s);
      if (next) {
        fwd_softmax<kMask, kDrop, kN, kD>(s, st, by, masked(j + 1), blk.pad, (j + 1) * kN, blk.qn(),
                                          blk.kn(), k_len, blk.scale2, drop, blk.lane, blk.t);
      }
      wg::wait<0>();  // p·v: the accumulator is ours again and the slot read
      wg::pin(st.acc);
      advance(j);
      if (next) {
        st.rescale(by);
        flash::a_fragments<T, kN>(pa, s);
      }
    }
  } else {
    for (int64_t j = 0; j < tiles; ++j) {
      const T* ks = slot(j);
      mbar::wait(&full[j % kStages], phase(j));
      flash::zero(s);
      flash::mma_abt<T, kD, kN, kStride>(s, qf, ks, blk.lane);
      fwd_softmax<kMask, kDrop, kN, kD>(s, st, by, masked(j), blk.pad, j * kN, blk.qn(), blk.kn(),
                                        k_len, blk.scale2, drop, blk.lane, blk.t);
      st.rescale(by);
      flash::mma_pb<T, kD, kN, kStride>(st.acc, s, ks + kPitch, blk.lane);
      advance(j);
    }
  }
  fwd_store<T, kD, kSeqs>(st, out, lse, cu_q, blk.bh, blk.h, blk.qs, heads, q_len, total_q, blk.t);
}

}  // namespace flash

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
// Packed:    (variable lengths, no padding) with cu_seqlens_q (int32 [batch + 1], cumulative
//            offsets) the queries of sequence b are rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] of
//            q and out (total_q rows in all), and q_len is the longest sequence's length (the
//            grid's), and lse is [heads, total_q] fp32 (FlashAttention's varlen layout,
//            flash::row_stats_at); the same for the keys with cu_seqlens_k, k_len and total_k
//            (key_padding then per key row). Either side may be padded (null offsets: its total
//            is not read). Offsets outside [0, total], decreasing, or a sequence longer than
//            q_len (k_len) set bad_seqlens[0] = 1 (when given) and are cut to what fits (nothing
//            outside the tensors is touched; the rows past the cut are not computed).
// Masks:     padding by key; causal keeps key j for query i when j <= i + k_len - q_len (the
//            unfused softmax's rule).
// Dropout:   entry (query i, key j) of head bh by the attention numbering (common/philox.cuh,
//            row bh·q_len + i, rows of k_len keys): the unfused softmax's, so both paths drop the
//            same entries for the same seed and offset, and a packed batch the entries of the
//            same batch padded to q_len and k_len.
// Grid/Block: flash_fwd_grid(batch·heads, q_len, kWarps) blocks of flash_fwd_block(kWarps)
//            threads (kWarps warps of 16 query rows, their query fragments in registers; the plans
//            use kFlashFwdWarps = 4); key tiles of kFlashBlockN. Smem by the geometry
//            (flash_fwd_ring): 4 warps, static, a key tile and a value tile (flash::fwd_tiles); 8
//            warps, dynamic, flash_fwd_smem(kD, kWarps): a ring of tile pairs (flash::fwd_ring).
//            B fragments by ldmatrix (.trans for v), or wgmma descriptors on sm_90a at kD 64, 128.
// Constants: kD a multiple of 16 in [16, 128] (static_assert). Pointers 16-byte aligned, ld_q and
//            ld_kv multiples of 8 elements (the planner checks: flash_ld_ok). Built for
//            flash_fwd_min_blocks(kD, kWarps) blocks per SM (128 registers up to kFlashLeanMaxD).
// Numerics:  products in fp32 on tensor cores; the softmax in fp32 (exp2 with log2(e) folded in
//            the scale); probabilities rounded to T before the context product (as the unfused
//            path stores them); out rounded once. Both geometries give the same bits (each query
//            row is its warp's alone, its tiles in the same order).
template <typename T, int kD, Mask kMask, Drop kDrop, Seqs kSeqs, int kWarps>
__global__ void __launch_bounds__(32 * kWarps, flash_fwd_min_blocks(kD, kWarps))
    flash_attn_fwd_kernel(const T* q, const T* k, const T* v, const uint8_t* key_padding,
                          const int* cu_seqlens_q, const int* cu_seqlens_k, T* out, float* lse,
                          int* bad_seqlens, int64_t batch, int64_t heads, int64_t q_len,
                          int64_t k_len, int64_t total_q, int64_t total_k, int64_t ld_q,
                          int64_t ld_kv, float scale, DropoutArgs drop) {
  static_assert(kD % 16 == 0 && kD >= 16 && kD <= 128, "kD: a multiple of 16 in [16, 128]");
  static_assert(sizeof(T) == 2, "tensor cores: fp16 or bf16");
  static_assert(kWarps == 4 || kWarps == 8, "kWarps: 4 or 8 warps of 16 query rows");
  if constexpr (kDrop == Drop::kOn) drop = load_dropout_state(drop);
  if constexpr (flash_fwd_ring(kWarps)) {
    flash::fwd_ring<T, kD, kMask, kDrop, kSeqs, kWarps>(
        q, k, v, key_padding, cu_seqlens_q, cu_seqlens_k, out, lse, bad_seqlens, heads, q_len,
        k_len, total_q, total_k, ld_q, ld_kv, scale, drop);
  } else {
    flash::fwd_tiles<T, kD, kMask, kDrop, kSeqs, kWarps>(
        q, k, v, key_padding, cu_seqlens_q, cu_seqlens_k, out, lse, bad_seqlens, heads, q_len,
        k_len, total_q, total_k, ld_q, ld_kv, scale, drop);
  }
}

// ---- backward ---------------------------------------------------------------------------------
// The gradients of out = P̃·v, P̃ = dropout(P), P = softmax(s), s = q·kᵀ·scale + mask, recomputing P
// from q, k and the forward's lse: with dP = dropout_mask(grad_out·vᵀ) and D_i = Σ_d grad_out[i]·
// out[i] (= Σ_j P_ij·dP_ij), dS = P ∘ (dP - D), grad_q = scale·dS·k, grad_k = scale·dSᵀ·q,
// grad_v = P̃ᵀ·grad_out, deterministic (the same bits every run). Keys in one block (k_len <= 128,
// the common training lengths): one kernel, grad_k/grad_v/grad_q and D together. Longer: two, D per
// query row, then grad_k and grad_v per key block (looping over query tiles), each block adding its
// part of every query tile's grad_q in turn (flash_dq_turn).

// flash_attn_bwd_dot_kernel — D of every (query, head): Σ_d grad_out·out in fp32.
// Shapes:    out, grad_out [batch, q_len, heads·kD] (token layout), or packed by cu_seqlens_q
//            (the forward's); dot `=` in the lse's layout (flash::row_stats_at): `rows` entries,
//            [batch·heads, q_len] padded, [heads, total] packed (rows = heads·total).
// Grid/Block: flash_dot_grid(rows, k_len) blocks of kElementwiseThreads, one entry of dot per
//            thread; none (k_len only decides that) when one key block holds every key: the
//            grad_k/grad_v kernel computes D itself then.
template <typename T, int kD>
__global__ void __launch_bounds__(kElementwiseThreads)
    flash_attn_bwd_dot_kernel(const T* out, const T* grad_out, const int* cu_seqlens_q, float* dot,
                              int64_t rows, int64_t heads, int64_t q_len, int64_t k_len) {
  constexpr int kVec = 16 / sizeof(T);
  static_assert(kD % kVec == 0, "kD: a multiple of the 16-byte vector");
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kElementwiseThreads + threadIdx.x;
  if (r >= rows) return;
  // the entry's head and token row: padded (b·heads + h)·q_len + i, packed h·total + token
  const int64_t per_head = cu_seqlens_q == nullptr ? q_len : rows / heads;
  const int64_t h = (r / per_head) % heads,
                token = cu_seqlens_q == nullptr ? r / (per_head * heads) * q_len + r % per_head
                                                : r % per_head;
  const int64_t ld = heads * kD;
  const T* o = out + token * ld + h * kD;
  const T* g = grad_out + token * ld + h * kD;
  float acc = 0.f;
#pragma unroll
  for (int c = 0; c < kD; c += kVec) {
    const Vec<T, kVec> ov = load_vec<kVec>(o + c);
    const Vec<T, kVec> gv = load_vec<kVec>(g + c);
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc += to_float(ov.v[e]) * to_float(gv.v[e]);
  }
  dot[r] = acc;
}

// flash_attn_bwd_dkdv_kernel — grad_k, grad_v of one block of keys (16 per warp, 4 or 8 warps:
//   flash_bwd_warps), over every query tile: sᵀ = k·qᵀ and dPᵀ = v·grad_outᵀ with the
//   keys as rows, so the probabilities' fragments feed the products for grad_v and grad_k directly;
//   and the block's part of each tile's grad_q = scale·dS·k (dSᵀ through shared memory): one
//   recomputation of P and one dropout draw per entry. When the block holds every key
//   (flash_bwd_one_block(k_len)) it also computes each query tile's D from out and grad_out and
//   writes grad_q directly: the whole backward in one launch. With several key blocks the parts
//   meet in dq_acc, in a fixed order per tile (flash_dq_turn): each block waits for the previous
//   part of a tile before adding its own, the blocks numbered in start order through dq_sync.
// Layout:    the forward's token layout: q and grad_q rows ld_q apart, k, v, grad_k and grad_v rows
//            ld_kv apart (the gradients column slices of one packed [B·T, 3·H] gradient, as q, k
//            and v of the projection), out and grad_out [batch, q_len, heads·kD]; lse, dot fp32 in
//            the forward's layout (row_stats_at; flash_attn_bwd_dot_kernel's, read only with
//            several key blocks). grad_q, grad_k, grad_v `=`; out read only with one key block;
//            dq_acc fp32 [batch·heads·q_len, kD] and dq_sync int32 (zeroed before the launch):
//            flash_dq_acc_rows, flash_dq_sync_words (none with one key block). Packed by
//            cu_seqlens_q / cu_seqlens_k as the forward: a sequence's key blocks are those its
//            keys need (at least one: key block 0 writes the grad_q of a sequence without keys);
//            the grid's others return at once.
// Grid/Block: flash_bwd_grid(batch·heads, k_len) blocks of flash_bwd_threads(k_len); dynamic smem
//            flash_bwd_smem(kD, k_len, kBlocks): a query tile and its grad_out tile (kM =
//            flash_bwd_block_m rows), the tile's lse and D (several key blocks) or out tile (one:
//            D computed from it, each row once per block), all by cp.async into a ring of
//            kFlashBwdStages stages, a tile ahead; the block's keys and the tile's dSᵀ (grad_q's
//            operands); with kBlocks = 2 or on wgmma the block's values too, the k and v fragments
//            read from the tiles by ldmatrix (kBlocks: the blocks per SM it is built for,
//            flash_bwd_blocks; the results are the same bits either way).
template <typename T, int kD, Mask kMask, Drop kDrop, Seqs kSeqs, int kBlocks>
__global__ void __launch_bounds__(kFlashBwdThreads, kBlocks)
    flash_attn_bwd_dkdv_kernel(const T* q, const T* k, const T* v, const uint8_t* key_padding,
                               const int* cu_seqlens_q, const int* cu_seqlens_k, const T* grad_out,
                               const float* lse, const float* dot, const T* out, T* grad_q,
                               T* grad_k, T* grad_v, float* dq_acc, int* dq_sync, int64_t batch,
                               int64_t heads, int64_t q_len, int64_t k_len, int64_t total_q,
                               int64_t total_k, int64_t ld_q, int64_t ld_kv, float scale,
                               DropoutArgs drop) {
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
  T* ks = reinterpret_cast<T*>(flash_bwd_smem_bytes + sm.ks);    // the keys
  T* vs = reinterpret_cast<T*>(flash_bwd_smem_bytes + sm.vs);    // kLean or kWg: the values
  T* dst = reinterpret_cast<T*>(flash_bwd_smem_bytes + sm.dst);  // dSᵀ [key][query]
  static_assert(16 * kFlashBwdThreads / 32 == kFlashBwdBlockN, "the 8-warp block: 16 keys a warp");
  if constexpr (kDrop == Drop::kOn) drop = load_dropout_state(drop);
  constexpr float kLog2e = 1.4426950408889634f;
  const float scale2 = scale * kLog2e;

  const bool one = flash_bwd_one_block(k_len);
  // The launch's block must hold the keys its grid assumes (flash_bwd_threads): a smaller one
  // would leave keys out of grad_q silently.
  if (blockDim.x != static_cast<unsigned>(flash_bwd_threads(k_len))) __trap();
  // With several key blocks the places handed out must be the grid's key blocks.
  if (gridDim.x != flash_bwd_grid(1, k_len).x) __trap();
  const int64_t bh = blockIdx.y, h = bh % heads;
  // The batch element's query and key rows (padded or packed: qn, kn bound and mask everything;
  // q_len and k_len number the dropout entries and lay out dq_acc; lse and D: row_stats_at).
  const flash::Span qsp = flash::span_of<kSeqs>(cu_seqlens_q, bh / heads, q_len, total_q, nullptr);
  const flash::Span ksp = flash::span_of<kSeqs>(cu_seqlens_k, bh / heads, k_len, total_k, nullptr);
  const int64_t qn = qsp.rows, kn = ksp.rows;
  const int64_t stats = flash::row_stats_at<kSeqs>(cu_seqlens_q, qsp, bh, heads, q_len, total_q);
  // The block's key block: its grid position, or with several key blocks its place among its
  // head's blocks in start order (flash_dq_turn: ascending, causal descending), so that the part a
  // tile waits for comes from a block that started earlier. It, the head's dq_acc rows and its
  // turn counters are read from shared memory where used (volatile), as blockIdx can be read
  // again: held in registers across the loop they cost the capped two-block build 100-250 more
  // bytes of spills (ptxas -v, d 64, sm_90a: padding 32 / 36 / 32 bytes of frame / spill stores /
  // spill loads with them in shared memory, 64 / 88 / 108 without; causal 48 / 72 / 76, 152 / 236 /
  // 232).
  // The key blocks of the batch element: padded, the grid's; packed, those its keys need (at least
  // one), the grid's others returning once they took their place.
  const int blocks = kSeqs == Seqs::kPadded ? static_cast<int>(gridDim.x)
                     : one                  ? 1
                           : static_cast<int>(kn > block_n ? ceil_div(kn, int64_t{block_n}) : 1);
  int* const head_sync =
      one ? nullptr : dq_sync + bh * (1 + ceil_div(q_len, static_cast<int64_t>(kM)));
  struct DqShared {
    float* acc;  // the head's dq_acc rows
    int* turns;  // the head's tiles' turn counters
    int place;   // the key block
  };
  static_assert(sizeof(DqShared) <= kFlashDqSharedBytes && alignof(DqShared) <= 16,
                "FlashBwdSmem reserves kFlashDqSharedBytes at `dq`, 16-byte aligned");
  auto dq_shared = [&] {  // volatile: read where used, never held
    return reinterpret_cast<volatile DqShared*>(flash_bwd_smem_bytes +
                                                flash_bwd_smem_layout(kD, k_len, kBlocks).dq);
  };
  if (!one) {
    if (threadIdx.x == 0) {
      // places past the sequence's key blocks (a shorter packed sequence): -1, nothing to do
      const int i = atomicAdd(head_sync, 1);
      dq_shared()->place = kSeqs == Seqs::kPadded ? (has_causal(kMask) ? blocks - 1 - i : i)
                           : i >= blocks          ? -1
                           : has_causal(kMask)    ? blocks - 1 - i
                                                  : i;
      dq_shared()->acc = dq_acc + bh * q_len * kD;
      dq_shared()->turns = head_sync + 1;
    }
    __syncthreads();
    if (kSeqs == Seqs::kPacked && dq_shared()->place < 0) return;  // the whole block
  }
  auto key_block = [&]() -> int { return one ? static_cast<int>(blockIdx.x) : dq_shared()->place; };
  const int64_t n0 = static_cast<int64_t>(key_block()) * block_n;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, t = lane % 4;
  const int64_t ld_o = heads * kD;
  const T* qh = flash::head_at<kD>(q, qsp, h, ld_q);
  const T* gh = flash::head_at<kD>(grad_out, qsp, h, ld_o);
  const T* oh = flash::head_at<kD>(out, qsp, h, ld_o);
  const T* kh = flash::head_at<kD>(k, ksp, h, ld_kv);
  const uint8_t* pad = has_padding(kMask) ? key_padding + ksp.first : nullptr;
  const T* vh = flash::head_at<kD>(v, ksp, h, ld_kv);
  // This warp's 16 keys: their k and v rows as A fragments, held across the query loop (kLean:
  // read from the block's key and value tiles per query tile).
  const int64_t key0 = n0 + warp * 16;
  uint32_t kf[kD / 16][4], vf[kD / 16][4];
  if constexpr (!kLean && !kWg) {
    flash::row_fragments<T, kD>(kf, kh, ld_kv, key0, kn, g, t);
    flash::row_fragments<T, kD>(vf, vh, ld_kv, key0, kn, g, t);
  }
  const int64_t key[2] = {key0 + g, key0 + g + 8};
  flash::KeyRowMask<kMask> km(key, kn, pad);  // the mask of its entries, per tile
  float dk[kD / 8][4], dv[kD / 8][4];
  flash::zero(dk);
  flash::zero(dv);
  // Causal: no query before the first that may see the block's first key (with one key block
  // every query tile is visited: each writes its grad_q rows, zeros where no key is visible; with
  // several, key block 0 zeros the rows of the tiles before its first, which no block visits).
  const int64_t m_begin = one ? 0 : flash_bwd_m_begin(has_causal(kMask), n0, kM, qn, kn);
  if (has_causal(kMask) && !one && n0 == 0) {
    flash::zero_rows<T, kD>(flash::head_at<kD>(grad_q, qsp, h, ld_q), ld_q,
                            m_begin < qn ? m_begin : qn);
  }
  // The block's keys (grad_q's B operand; kLean, kWg: the fragments') and values (kLean, kWg),
  // zeros past kn.
  auto load_keys = [&](T* tile, const T* head) {
    if (big) {
      flash::load_kv_async<T, kD, kFlashBwdBlockN, kTStride>(tile, head, ld_kv, n0, kn);
    } else {
      flash::load_kv_async<T, kD, kFlashBwdBlockNSmall, kTStride>(tile, head, ld_kv, n0, kn);
    }
  };
  load_keys(ks, kh);
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
    flash::load_kv_async<T, kD, kM, kTStride>(st.qs, qh, ld_q, m, qn);
    flash::load_kv_async<T, kD, kM, kTStride>(st.gs, gh, ld_o, m, qn);
    flash::load_floats_async<kM>(st.lse_s, lse + stats, m, qn);
    if (one) {
      flash::load_kv_async<T, kD, kM, kTStride>(st.os, oh, ld_o, m, qn);
    } else {
      flash::load_floats_async<kM>(st.dot_s, dot + stats, m, qn);
    }
  };
  if (m_begin < qn) load_query_side(stage(0), m_begin);
  cp_async_commit();
  int cur = 0;  // the stage of tile m0
  // Several key blocks: the tile's turn (this part's rank among its parts) on its counter
  // turns[tile], what thread 0 saw of it, and the count the previous tile's counter is to get
  // (0: none, this part was its last).
  auto turns_at = [&](int i) { return dq_shared()->turns + i; };
  FlashDqTurn turn{0, 1};
  int pass = 0, seen = 0;
  int tile = static_cast<int>(m_begin / kM);
  for (int64_t m0 = m_begin; m0 < qn; m0 += kM, ++tile, cur = (cur + 1) % kFlashBwdStages) {
    const bool more = m0 + kM < qn;
    if (more) {
      load_query_side(stage((cur + 1) % kFlashBwdStages), m0 + kM);
      cp_async_commit();
      cp_async_wait<1>();  // tile m0's copies (the next tile's may still be in flight)
    } else {
      cp_async_wait<0>();
    }
    if constexpr (kWg) wg::fence_async_smem();
    __syncthreads();
    if (!one) {
      // Every thread's part of the previous tile is out (the barrier above): its turn passes on.
      if (threadIdx.x == 0) {
        if (pass > 0) flash::turn_pass(turns_at(tile - 1), pass);
        seen = flash::turn_peek(turns_at(tile));
      }
    }
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
    // Masks only where the tile needs them (queries past qn, keys past kn, padding, the causal
    // diagonal).
    const bool masked = flash::tile_masked<kMask>(m0, kM, n0, block_n, qn, kn);
    if (masked) km.tile<kM>(m0, qn, kn, key_block() * block_n + warp * 16 + g, t);
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
          [&] { flash::store_rows_t<T, kM, kSStride>(dst + warp * 16 * kSStride, s, g, t); }, dv,
          dk);
    } else {
      flash::mma_pb<T, kD, kM, kStride>(dv, pd, gs, lane);  // grad_v += P̃ᵀ·grad_out
      flash::store_rows_t<T, kM, kSStride>(dst + warp * 16 * kSStride, s, g, t);
      flash::mma_pb<T, kD, kM, kStride>(dk, s, qs, lane);  // grad_k += dSᵀ·q (scaled below)
    }
    // Several key blocks: the tile's earlier parts are in dq_acc before this one's go out.
    if (!one) {
      turn = flash_dq_turn(has_causal(kMask), key_block(), blocks, m0, kM, kFlashBwdBlockNSmall, qn,
                           kn);
      pass = turn.rank + 1 < turn.parts ? turn.rank + 1 : 0;
      if (threadIdx.x == 0) flash::turn_wait(turns_at(tile), turn.rank, seen);
    }
    // Every warp is done with the stage (free for tile m0 + 2·kM from the next iteration on) and
    // has stored its dSᵀ rows (read by grad_q below).
    __syncthreads();
    // The block's part of grad_q of the tile's rows (while the next tiles load; dSᵀ is rewritten
    // only after the next iteration's first barrier).
    const flash::DqSink<T, kD> put{flash::head_at<kD>(grad_q, qsp, h, ld_q), ld_q,
                                   one ? nullptr : dq_shared()->acc, scale,
                                   flash::dq_part(turn.rank, turn.parts)};
    if (big) {
      flash::grad_q_tile<T, kD, kM, kFlashBwdBlockN, kFlashBwdBlockN / 16, kTStride>(
          put, dst, ks, m0, qn, warp, lane);
    } else {
      flash::grad_q_tile<T, kD, kM, kFlashBwdBlockNSmall, kFlashBwdBlockNSmall / 16, kTStride>(
          put, dst, ks, m0, qn, warp, lane);
    }
  }
  cp_async_wait<0>();  // no copy left in flight (the key tile, when no query tile ran)
  if (!one) {          // the last tile's turn
    __syncthreads();
    if (threadIdx.x == 0 && pass > 0) flash::turn_pass(turns_at(tile - 1), pass);
  }
  const float scales[2] = {scale, scale}, ones[2] = {1.f, 1.f};
  // the key rows worked out again (from blockIdx and the offsets: nothing of them held across the
  // loop)
  const int64_t bh_end = blockIdx.y;
  const flash::Span keys =
      flash::span_of<kSeqs>(cu_seqlens_k, bh_end / heads, k_len, total_k, nullptr);
  flash::store_rows<T, kD>(flash::head_at<kD>(grad_k, keys, bh_end % heads, ld_kv), ld_kv, key,
                           keys.rows, dk, scales, t);
  flash::store_rows<T, kD>(flash::head_at<kD>(grad_v, keys, bh_end % heads, ld_kv), ld_kv, key,
                           keys.rows, dv, ones, t);
}

}  // namespace lightseq::kern
