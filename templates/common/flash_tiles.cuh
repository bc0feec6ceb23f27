// flash_tiles.cuh — the tile pieces of the fused attention kernels (flash_attention.cuh): mma.sync
// m16n8k16 products, ldmatrix and cp.async, fragments and tiles of the token layout's heads, the
// masks and dropout bits of a tile, the backward's recomputed entries, D and grad_q tiles. Device
// code only; NVRTC compiles it with the kernels.
#pragma once

#include "common/attn_dropout.cuh"
#include "common/cp_async.cuh"
#include "common/enums.cuh"
#include "common/philox.cuh"
#include "common/types.cuh"
#include "common/wgmma.cuh"

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

// Four 8x8 matrices of 16-bit elements from shared memory: lane l gives the address of row l % 8
// of matrix l / 8 (16 bytes); register m of lane 4g + t holds row g, elements 2t, 2t + 1 of
// matrix m (with .trans: row 2t and 2t + 1, element g, i.e. the matrix transposed).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(row)));
}

// Head `bh` (= b·heads + h) of a token-layout tensor: rows of `ld` elements, batch element b's
// `len` rows after one another, head h in columns [h·kD, (h + 1)·kD) of each row (after the
// pointer's own column offset: q, k and v are column slices of one [B·T, 3·H] projection).
template <int kD, typename P>
__device__ __forceinline__ P* head_of(P* p, int64_t bh, int64_t heads, int64_t len, int64_t ld) {
  return p + (bh / heads) * len * ld + (bh % heads) * kD;
}

// Rows [row0, row0 + kRows) of a head (`rows` rows of kD elements, `ld` apart) into shared memory
// (row stride kStride) with cp.async (16 bytes per copy, bypassing L1), zeros past `rows`; the
// caller commits the group and waits for it (cp_async_wait) before reading.
template <typename T, int kD, int kRows, int kStride>
__device__ __forceinline__ void load_tile_async(T* smem, const T* src, int64_t ld, int64_t row0,
                                                int64_t rows) {
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kVecsPerRow = kD / kVec;
  for (int i = threadIdx.x; i < kRows * kVecsPerRow; i += blockDim.x) {
    const int r = i / kVecsPerRow, c = (i % kVecsPerRow) * kVec;
    const bool in = row0 + r < rows;
    const T* from = in ? src + (row0 + r) * ld + c : src;  // any valid address: 0 bytes read
    cp_async<16>(smem + r * kStride + c, from, in);
  }
}

// The dropout keep bits of a thread's entries of a [16 queries, kN keys] tile in the C layout
// (queries as rows: the forward, grad_q): kb[n][r] bit h <-> query row r (g, g + 8; its flat row
// rows[r] = bh·q_len + row), key n0 + 8n + 2t + h, n0 a multiple of 8. One Philox call per 8 keys
// of a row, split between the 4 threads of a quad and exchanged by shuffles
// (common/attn_dropout.cuh).
template <int kN>
__device__ __forceinline__ void row_keep_bits(const DropoutArgs& drop, const uint64_t (&rows)[2],
                                              int64_t n0, int64_t k_len, int t,
                                              uint32_t (&kb)[kN / 8][2]) {
  uint32_t mine[attn_dropout::Row<kN>::kWords];
  attn_dropout::row_draw<kN>(drop, rows, n0, k_len, t, mine);
  const int quad = (threadIdx.x % 32) & ~3;
  attn_dropout::row_gather<kN>(
      [&](int src, int w) { return __shfl_sync(0xffffffffu, mine[w], quad | src); }, t, kb);
}

// The same for a [16 keys, kM queries] tile with the keys as rows (grad_k, grad_v): kb[n] bit
// 2r + h <-> key key0 + g + 8r (key0 a multiple of 16), query m0 + 8n + 2t + h, flat row bhq +
// query. One call per thread per two query blocks, the bits gathered by shuffles
// (common/attn_dropout.cuh).
template <int kM>
__device__ __forceinline__ void col_keep_bits(const DropoutArgs& drop, uint64_t bhq, int64_t m0,
                                              int64_t key0, int64_t k_len, int g, int t,
                                              uint32_t (&kb)[kM / 8]) {
  static_assert(kM % 16 == 0, "pairs of query blocks");
#pragma unroll
  for (int n = 0; n < kM / 8; n += 2) {
    const uint32_t byte = attn_dropout::col_draw(drop, bhq, m0, key0, k_len, n, g, t);
#pragma unroll
    for (int dn = 0; dn < 2; ++dn) {
      kb[n + dn] = attn_dropout::col_gather(
          [&](int lane) { return __shfl_sync(0xffffffffu, byte, lane); }, dn, g, t);
    }
  }
}

// The A fragments of 16 rows (row0, row0 + 16) of a head (`rows` rows, `ld` apart) read from
// global memory, zeros past `rows`: for every 16 columns.
template <typename T, int kD>
__device__ __forceinline__ void row_fragments(uint32_t (&f)[kD / 16][4], const T* src, int64_t ld,
                                              int64_t row0, int64_t rows, int g, int t) {
  const T zero = from_float<T>(0.f);
  const int64_t r0 = row0 + g, r1 = row0 + g + 8;
#pragma unroll
  for (int c = 0; c < kD / 16; ++c) {
    const int col = c * 16 + 2 * t;
    f[c][0] = r0 < rows ? pair_at(src + r0 * ld + col) : pack<T>(zero, zero);
    f[c][1] = r1 < rows ? pair_at(src + r1 * ld + col) : pack<T>(zero, zero);
    f[c][2] = r0 < rows ? pair_at(src + r0 * ld + col + 8) : pack<T>(zero, zero);
    f[c][3] = r1 < rows ? pair_at(src + r1 * ld + col + 8) : pack<T>(zero, zero);
  }
}

// The same A fragments from 16 rows of a tile in shared memory (row stride kStride), by ldmatrix:
// matrices (rows 0..7, columns 16c..16c+7), (rows 8..15, the same), (rows 0..7, 16c+8..16c+15),
// (rows 8..15, the same), lane l giving row l % 16 of columns 16c + 8·(l / 16).
template <typename T, int kD, int kStride>
__device__ __forceinline__ void tile_fragments(uint32_t (&f)[kD / 16][4], const T* rows, int lane) {
#pragma unroll
  for (int c = 0; c < kD / 16; ++c) {
    ldmatrix_x4(f[c], rows + (lane % 16) * kStride + c * 16 + (lane / 16) * 8);
  }
}

// c[n] (16 x kCols, C layout) += A(16 x kD, fragments) · Bᵀ where B is a [kCols, kD] tile in
// shared memory (row stride kStride): B operand element (kdim, n) = tile[n][kdim]. One ldmatrix.x4
// gives the B fragments of two 8-column blocks for one 16-deep step: matrices (n, kdim 0..7),
// (n, 8..15), (n + 1, 0..7), (n + 1, 8..15).
template <typename T, int kD, int kCols, int kStride>
__device__ __forceinline__ void mma_abt(float (&c)[kCols / 8][4], const uint32_t (&a)[kD / 16][4],
                                        const T* tile, int lane) {
  static_assert(kCols % 16 == 0, "pairs of 8-column blocks");
  const int m = lane / 8, r = lane % 8;
#pragma unroll
  for (int k = 0; k < kD / 16; ++k) {
#pragma unroll
    for (int n = 0; n < kCols / 8; n += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, tile + ((n + m / 2) * 8 + r) * kStride + k * 16 + (m % 2) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_16816<T>(c[n], a[k], b0);
      mma_16816<T>(c[n + 1], a[k], b1);
    }
  }
}

// The A fragment of the 16-deep step c of C-layout values p (a warp's rows × kRows), rounded to
// T: a C layout's two 8-column blocks 2c, 2c + 1 are an A fragment's two halves.
template <typename T, int N>
__device__ __forceinline__ void a_fragment(uint32_t (&a)[4], const float (&p)[N][4], int c) {
  a[0] = pack_float<T>(p[2 * c][0], p[2 * c][1]);
  a[1] = pack_float<T>(p[2 * c][2], p[2 * c][3]);
  a[2] = pack_float<T>(p[2 * c + 1][0], p[2 * c + 1][1]);
  a[3] = pack_float<T>(p[2 * c + 1][2], p[2 * c + 1][3]);
}

// acc[n] (16 x kD, C layout) += P(16 x kRows, C layout fragments in p) · tile where tile is a
// [kRows, kD] tile in shared memory: B operand element (row, dim) = tile[row][dim]. One
// ldmatrix.x4.trans gives the B fragments of two 8-column blocks for one 16-row step: matrices
// (rows 0..7, n), (rows 8..15, n), (rows 0..7, n + 1), (rows 8..15, n + 1).
template <typename T, int kD, int kRows, int kStride>
__device__ __forceinline__ void mma_pb(float (&acc)[kD / 8][4], const float (&p)[kRows / 8][4],
                                       const T* tile, int lane) {
  const int m = lane / 8, r = lane % 8;
#pragma unroll
  for (int c = 0; c < kRows / 16; ++c) {
    uint32_t a[4];
    a_fragment<T>(a, p, c);
#pragma unroll
    for (int n = 0; n < kD / 8; n += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, tile + (c * 16 + (m % 2) * 8 + r) * kStride + (n + m / 2) * 8);
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_16816<T>(acc[n], a, b0);
      mma_16816<T>(acc[n + 1], a, b1);
    }
  }
}

// A tile's row stride says its layout: kD + 8 elements (rows padded by 16 bytes: conflict-free
// ldmatrix for mma.sync), or the head dim itself, 64 or 128, unpadded: the swizzled layout of
// wgmma's operands (common/wgmma.cuh).
__device__ __forceinline__ constexpr bool swizzled(int kStride) { return kStride % 64 == 0; }

// The element offset of (row r, column c) in a tile of kRows rows of stride kStride (c a multiple
// of 8 where swizzled: whole 16-byte chunks).
template <int kRows, int kStride>
__device__ __forceinline__ int tile_offset(int r, int c) {
  if constexpr (swizzled(kStride)) {
    return wg::sw128_offset<kRows>(r, c);
  } else {
    return r * kStride + c;
  }
}

// ---- wgmma (sm_90a) -----------------------------------------------------------------------------
// Whether the kernels' products at head dim kD run on wgmma: an sm_90a build and whole 64-column
// panels of the swizzled tiles (kD 64 or 128; the other head dims keep mma.sync).
__device__ __forceinline__ constexpr bool wgmma_tiles(int kD) {
  return wg::kHaveWgmma && (kD == 64 || kD == 128);
}

// A tile (rows [row0, row0 + kRows) of a head, zeros past `rows`) by cp.async in the layout its
// stride says (swizzled).
template <typename T, int kD, int kRows, int kStride>
__device__ __forceinline__ void load_kv_async(T* smem, const T* src, int64_t ld, int64_t row0,
                                              int64_t rows) {
  if constexpr (swizzled(kStride)) {
    wg::load_tile_sw128_async<T, kD, kRows>(smem, src, ld, row0, rows);
  } else {
    load_tile_async<T, kD, kRows, kStride>(smem, src, ld, row0, rows);
  }
}

// A key tile and a value tile of kN rows in static shared memory (the grad_q kernel's), in the
// layout their products read: swizzled for wgmma (kWg), else rows padded by 16 bytes
// (conflict-free ldmatrix); load() copies rows [n0, n0 + kN) of a head into one of them. The
// forward declares the same two tiles as arrays: through this struct its sm_90a SASS changed
// (register allocation and addressing), and that build is the one measured (sixteenth session).
template <typename T, int kD, int kN>
struct KvTiles {
  static constexpr bool kWg = wgmma_tiles(kD);
  static constexpr int kStride = kWg ? kD : kD + 8;
  alignas(1024) T k[kN * kStride];
  alignas(1024) T v[kN * kStride];
  __device__ __forceinline__ static void load(T* tile, const T* head, int64_t ld, int64_t n0,
                                              int64_t rows) {
    load_kv_async<T, kD, kN, kStride>(tile, head, ld, n0, rows);
  }
};

// mma_abt's product on wgmma, every warp of the warpgroup together: c (64 x kCols: each warp's 16
// rows, C layout) += A · Bᵀ, A the warps' fragments (kD deep), B the swizzled [kCols, kD] tile.
template <typename T, int kD, int kCols>
__device__ __forceinline__ void wg_abt(float (&c)[kCols / 8][4], const uint32_t (&a)[kD / 16][4],
                                       const T* tile) {
  wg::in_flight(
      [&] {
#pragma unroll
        for (int k = 0; k < kD / 16; ++k)
          wg::mma_rs<T, kCols, 0>(c, a[k], wg::desc_k_major<kCols>(tile, k));
      },
      c);
}

// The same with A from shared memory too, issued only (inside the caller's wg::in_flight: several
// products in flight at once): c (64 x kCols) += A · Bᵀ, A the warpgroup's 64 rows
// of a swizzled [rows, kD] tile (`a` its first row; panels `rows` high), B the swizzled [kCols, kD]
// tile.
template <typename T, int kD, int kCols>
__device__ __forceinline__ void wg_abt_ss_issue(float (&c)[kCols / 8][4], const T* a, int rows,
                                                const T* tile) {
#pragma unroll
  for (int k = 0; k < kD / 16; ++k) {
    wg::mma_ss<T, kCols, 0, 0>(c, wg::desc_k_major(a, k, rows), wg::desc_k_major<kCols>(tile, k));
  }
}

// C-layout values (kRows deep, the warps' rows) rounded to T as A fragments (mma_pb's rounding).
template <typename T, int kRows>
__device__ __forceinline__ void a_fragments(uint32_t (&a)[kRows / 16][4],
                                            const float (&p)[kRows / 8][4]) {
#pragma unroll
  for (int c = 0; c < kRows / 16; ++c) a_fragment<T>(a[c], p, c);
}

// acc (64 x kD) += A · tile, A fragments (kRows deep), tile the swizzled [kRows, kD] one (MN-major
// B); issued only, as wg_abt_ss_issue.
template <typename T, int kD, int kRows>
__device__ __forceinline__ void wg_pb_issue(float (&acc)[kD / 8][4],
                                            const uint32_t (&a)[kRows / 16][4], const T* tile) {
#pragma unroll
  for (int c = 0; c < kRows / 16; ++c) {
    wg::mma_rs<T, kD, 1>(acc, a[c], wg::desc_mn_major<kRows>(tile, c));
  }
}

// mma_pb's product on wgmma: acc (64 x kD) += P · tile, P the warps' C-layout probabilities
// (kRows deep, rounded to T as mma_pb rounds them), tile the swizzled [kRows, kD] one (MN-major B).
template <typename T, int kD, int kRows>
__device__ __forceinline__ void wg_pb(float (&acc)[kD / 8][4], const float (&p)[kRows / 8][4],
                                      const T* tile) {
  uint32_t a[kRows / 16][4];
  a_fragments<T, kRows>(a, p);
  wg::in_flight([&] { wg_pb_issue<T, kD, kRows>(acc, a, tile); }, acc);
}

// The masks' rule: query i attends key j when i < q_len, j < k_len, key j is not padding (kMask
// has kPadding) and, causal, j <= i + (k_len - q_len) (the unfused softmax's). ColumnMask and
// KeyRowMask evaluate it for a thread's entries of the two tile orientations.
// A value clamped to [lo, hi] as an int (tile-relative offsets of 64-bit positions).
__device__ __forceinline__ int clamp_int(int64_t v, int lo, int hi) {
  return static_cast<int>(v < lo ? lo : (v > hi ? hi : v));
}

// The rule for a thread's entries of a tile whose rows are queries and whose columns are the keys
// [n0, n0 + kN) (the forward's and the grad_q kernel's tiles; C layout: rows row[0], row[1],
// columns 8n + 2t + h). The keys' part (past k_len, padding) is taken once a tile for the warp, a
// key a lane, by ballot; the queries' part (causal; past q_len when kRows) as a limit per row;
// each entry is then a test of constants: on(r, 8n + h). kRows false (the forward): rows past
// q_len are not masked (never stored), which keeps the non-causal mask to one 64-bit word.
template <Mask kMask, int kN, bool kRows>
struct ColumnMask {
  static_assert(kN % 32 == 0 && kN <= 64, "a bit per key of the tile");
  static constexpr bool kLimits = kRows || has_causal(kMask);
  uint64_t off = 0;                // bit c: key n0 + 2t + c is past k_len or padding
  int last[2] = {kN - 1, kN - 1};  // kLimits: the last c row r sees (-1: none)
  // Every lane of the warp together (a ballot).
  __device__ __forceinline__ void set(const uint8_t* pad, int64_t n0, int64_t q_len, int64_t k_len,
                                      const int64_t (&row)[2], int lane, int t) {
    uint64_t bits = 0;
#pragma unroll
    for (int h = 0; h < kN / 32; ++h) {
      const int64_t j = n0 + 32 * h + lane;
      bool out = j >= k_len;
      if constexpr (has_padding(kMask)) out = out || pad[j < k_len ? j : 0] != 0;
      bits |= static_cast<uint64_t>(__ballot_sync(0xffffffffu, out)) << (32 * h);
    }
    off = bits >> (2 * t);
    if constexpr (kLimits) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        last[r] = has_causal(kMask) ? clamp_int(row[r] + (k_len - q_len) - n0 - 2 * t, -1, kN - 1)
                                    : kN - 1;
        if (kRows && row[r] >= q_len) last[r] = -1;
      }
    }
  }
  __device__ __forceinline__ bool on(int r, int c) const {
    const bool key_on = ((off >> c) & 1u) == 0;
    if constexpr (kLimits) return key_on && c <= last[r];
    return key_on;
  }
};

// The rule for a thread's entries of the backward's transposed tiles (rows: its two keys, fixed
// across the query loop; columns: the queries [m0, m0 + kM), 8n + 2t + h): the keys' part once per
// kernel, the queries' part as a range of columns per tile (tile()); each entry is then a test
// of constants: on(r, 8n + h).
template <Mask kMask>
struct KeyRowMask {
  bool key_on[2];      // in range and not padding
  int64_t first_q[2];  // causal: the first query that sees the key
  int begin[2], end;   // a tile's columns c (less 2t) on for key r: [begin[r], end)
  __device__ __forceinline__ KeyRowMask(const int64_t (&key)[2], int64_t q_len, int64_t k_len,
                                        const uint8_t* pad) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      key_on[r] = key[r] < k_len;
      if constexpr (has_padding(kMask)) key_on[r] = key_on[r] && pad[key[r]] == 0;
      first_q[r] = has_causal(kMask) ? key[r] - (k_len - q_len) : 0;
    }
  }
  template <int kM>
  __device__ __forceinline__ void tile(int64_t m0, int64_t q_len, int t) {
    end = clamp_int(q_len - m0 - 2 * t, 0, kM);
#pragma unroll
    for (int r = 0; r < 2; ++r) begin[r] = clamp_int(first_q[r] - m0 - 2 * t, 0, kM);
  }
  __device__ __forceinline__ bool on(int r, int c) const {
    return key_on[r] && c < end && c >= begin[r];
  }
};

// One recomputed entry of the backward, query i and key j: the probability P = exp2(s·scale2 -
// lse2) (0 where masked), its dropped value P̃ = P·keep, and dS = P ∘ (dP·keep - D), dP the entry
// of grad_out·vᵀ; keep is the dropout factor of the entry (1/(1-p) kept, 0 dropped; 1 without
// dropout). Returns dS; *dropped gets P̃.
__device__ __forceinline__ float recompute(bool on, float s, float scale2, float lse2, float dp,
                                           float dot, float keep, float* dropped) {
  const float p = exp2f(on ? s * scale2 - lse2 : neg_inf());  // exp2(-inf) = 0: no branch
  *dropped = p * keep;
  return on ? p * (dp * keep - dot) : 0.f;
}

// ---- what the three tile loops share -----------------------------------------------------------

// The end of the keys a query tile [m0, m0 + kM) may see: k_len, or (causal) its last query's
// limit, clamped to [0, k_len].
template <Mask kMask>
__device__ __forceinline__ int64_t key_end(int64_t m0, int kM, int64_t q_len, int64_t k_len) {
  if constexpr (!has_causal(kMask)) return k_len;
  const int64_t lim = m0 + kM + (k_len - q_len);  // one past the last query's last key
  return lim < k_len ? (lim > 0 ? lim : 0) : k_len;
}

// Whether the tile of queries [m0, m0 + kM) and keys [n0, n0 + kN) needs its entries masked one by
// one: queries or keys past the end, key padding, or the causal diagonal crossing it.
template <Mask kMask>
__device__ __forceinline__ bool tile_masked(int64_t m0, int kM, int64_t n0, int kN, int64_t q_len,
                                            int64_t k_len) {
  bool masked = m0 + kM > q_len || n0 + kN > k_len || has_padding(kMask);
  if constexpr (has_causal(kMask)) masked = masked || n0 + kN - 1 > m0 + (k_len - q_len);
  return masked;
}

// The flat rows of this thread's two query rows (the dropout numbering's): bh·q_len + row.
__device__ __forceinline__ void flat_rows(uint64_t (&flat)[2], const int64_t (&row)[2], int64_t bh,
                                          int64_t q_len) {
  for (int r = 0; r < 2; ++r) flat[r] = static_cast<uint64_t>(bh * q_len + row[r]);
}

template <int N>
__device__ __forceinline__ void zero(float (&a)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) a[n][0] = a[n][1] = a[n][2] = a[n][3] = 0.f;
}

// dst rows row[0], row[1] (those below `rows`; rows `ld` apart) = a C-layout accumulator of kD
// columns times mul[r], rounded to T.
template <typename T, int kD>
__device__ __forceinline__ void store_rows(T* dst, int64_t ld, const int64_t (&row)[2],
                                           int64_t rows, const float (&acc)[kD / 8][4],
                                           const float (&mul)[2], int t) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (row[r] >= rows) continue;
#pragma unroll
    for (int n = 0; n < kD / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dst + row[r] * ld + n * 8 + 2 * t) =
          pack_float<T>(acc[n][2 * r] * mul[r], acc[n][2 * r + 1] * mul[r]);
    }
  }
}

// The D of a tile's kM rows (Σ_d grad_out·out in fp32) from its out and grad_out tiles in shared
// memory (row stride kStride) into dot[kM] in shared memory, each row once per block: two lanes a
// row, lane 2i summing the first half of row i's elements and lane 2i + 1 the second, each in
// order, then one shuffle: the same bits in every geometry (block size, kM). A quarter warp's
// 16-byte reads (4 rows, both halves; rows kStride = kD + 8 elements apart) fall in distinct banks
// where kD / 4 words ≡ 16 (mod 32), as at d 64; at d 128 the halves share banks (2-way). Every
// thread of the block calls it; the caller synchronizes before reading dot.
template <typename T, int kD, int kM, int kStride>
__device__ __forceinline__ void stage_dots(float* dot, const T* os, const T* gs) {
  static_assert(kM % 16 == 0 && kD % 16 == 0, "whole warps of rows, 16-byte halves");
  const int half = threadIdx.x % 2;
  // a warp's 32 lanes take 16 whole rows: every lane of a warp is in the loop or none is
  for (int i = threadIdx.x / 2; i < kM; i += blockDim.x / 2) {
    float acc = 0.f;
#pragma unroll
    for (int c = 0; c < kD / 2; c += 8) {
      const int at = tile_offset<kM, kStride>(i, half * (kD / 2) + c);
      const uint4 ov = *reinterpret_cast<const uint4*>(os + at);
      const uint4 gv = *reinterpret_cast<const uint4*>(gs + at);
      const T* oe = reinterpret_cast<const T*>(&ov);
      const T* ge = reinterpret_cast<const T*>(&gv);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc = fmaf(to_float(oe[e]), to_float(ge[e]), acc);
    }
    acc += __shfl_xor_sync(0xffffffffu, acc, 1);
    if (half == 0) dot[i] = acc;
  }
}

// kN floats [row0, row0 + kN) of a row-indexed fp32 array (lse, D) into shared memory by cp.async
// (4 bytes per copy), zeros past `rows`; committed and waited for with the tiles.
template <int kN>
__device__ __forceinline__ void load_floats_async(float* smem, const float* src, int64_t row0,
                                                  int64_t rows) {
  for (int i = threadIdx.x; i < kN; i += blockDim.x) {
    const bool in = row0 + i < rows;
    cp_async<4>(smem + i, in ? src + row0 + i : src, in);
  }
}

// A warp's [16 rows, kCols] C-layout fragments (c[n][2r + h]: row g + 8r, column 8n + 2t + h) into
// shared memory rounded to T (row stride kStride elements).
template <typename T, int kCols, int kStride>
__device__ __forceinline__ void store_rows_t(T* dst, const float (&c)[kCols / 8][4], int g, int t) {
#pragma unroll
  for (int n = 0; n < kCols / 8; ++n) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      *reinterpret_cast<uint32_t*>(dst + (g + 8 * r) * kStride + 8 * n + 2 * t) =
          pack_float<T>(c[n][2 * r], c[n][2 * r + 1]);
    }
  }
}

// grad_q rows [m0, m0 + kM) of a head (those below `rows`, `ld` apart) = scale · dS · k over kN
// keys: dS from dSᵀ [kN keys, kM queries] in shared memory (A fragments by ldmatrix.trans), k from
// the [kN, kD] key tile (B fragments by ldmatrix.trans; rows kStride apart, or swizzled:
// tile_offset). Warp w takes the 16 rows w % (kM / 16) and
// the pairs of 8-column blocks w / (kM / 16), + kWarps / (kM / 16), ...
template <typename T, int kD, int kM, int kN, int kWarps, int kStride>
__device__ __forceinline__ void grad_q_tile(T* grad_q, int64_t ld, const T* dst, const T* ks,
                                            int64_t m0, int64_t rows, float scale, int warp,
                                            int lane) {
  constexpr int kRowBlocks = kM / 16, kGroups = kWarps / kRowBlocks, kPairs = kD / 16;
  constexpr int kMine = (kPairs + kGroups - 1) / kGroups;
  constexpr int kSStride = kM + 8;
  static_assert(kWarps % kRowBlocks == 0, "whole row blocks per warp group");
  const int rb = warp % kRowBlocks, grp = warp / kRowBlocks;
  const int m = lane / 8, r = lane % 8, g = lane / 4, t = lane % 4;
  uint32_t a[kN / 16][4];  // dS rows rb·16.., keys 16c..16c+15
#pragma unroll
  for (int c = 0; c < kN / 16; ++c) {
    ldmatrix_x4_trans(a[c], dst + (c * 16 + (m / 2) * 8 + r) * kSStride + rb * 16 + (m % 2) * 8);
  }
#pragma unroll
  for (int i = 0; i < kMine; ++i) {
    const int pair = grp + i * kGroups;
    if (pair >= kPairs) break;
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int c = 0; c < kN / 16; ++c) {
      uint32_t b[4];
      ldmatrix_x4_trans(
          b, ks + tile_offset<kN, kStride>(c * 16 + (m % 2) * 8 + r, (2 * pair + m / 2) * 8));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_16816<T>(acc[0], a[c], b0);
      mma_16816<T>(acc[1], a[c], b1);
    }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
      const int64_t row = m0 + rb * 16 + g + 8 * rr;
      if (row >= rows) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        *reinterpret_cast<uint32_t*>(grad_q + row * ld + (2 * pair + h) * 8 + 2 * t) =
            pack_float<T>(acc[h][2 * rr] * scale, acc[h][2 * rr + 1] * scale);
      }
    }
  }
}

}  // namespace flash
}  // namespace lightseq::kern
