// wgmma.cuh — Hopper's warpgroup tensor-core products (wgmma.mma_async, sm_90a) for 16-bit
// operands with fp32 accumulators, their shared-memory matrix descriptors, and the 128-byte
// swizzled tile layout they read. Device code only; compiled where the program's target has the
// arch-specific features (sm_90a: __CUDA_ARCH_FEAT_SM90_ALL), see kHaveWgmma.
//
// A warpgroup (4 consecutive warps, the first a multiple of 4) computes D[64, N] += A[64, 16] ·
// B[16, N] per instruction. Register layouts (PTX ISA, "Register Fragments and Shared Memory
// Matrix Layouts" of wgmma .m64nNk16), per warp w of the group, lane = 4g + t:
//   D (fp32, N / 2 registers): d[j][e] = D[16w + g + 8·(e / 2)][8j + 2t + e % 2] — the mma.sync
//     m16n8 C layout of the warp's 16 rows, one [4] per 8 columns: flash_tiles.cuh's C layout.
//   A from registers (4 x 32 bits, two elements each): a0 = A[16w + g][2t..2t+1], a1 = A[16w + g +
//     8][2t..], a2 = A[16w + g][2t+8..], a3 = A[16w + g + 8][2t+8..] — mma.sync's A fragments.
// B (and A from shared memory) by descriptor, in the 128-byte swizzled layout below.
#pragma once

#include "common/cp_async.cuh"
#include "common/types.cuh"

namespace lightseq::kern {
namespace wg {

// Whether this compilation can issue wgmma: the sm_90a target (arch-specific features).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
inline constexpr bool kHaveWgmma = true;
#else
inline constexpr bool kHaveWgmma = false;
#endif

// ---- the 128-byte swizzled tile --------------------------------------------------------------
// A [kRows, kCols] tile of 16-bit elements (kCols a multiple of 64) as kCols / 64 column panels of
// [kRows, 64], panel after panel; in a panel row r is 128 bytes at r·128, its 16-byte chunk c
// (elements 8c..8c+7) at chunk c ^ (r % 8). Every 8 rows (1024 bytes, the tile 1024-byte aligned)
// are one swizzle atom. The same bytes serve as a K-major operand (rows = M or N, columns = K:
// q·kᵀ's k) and as an MN-major one (rows = K, columns = N: p·v's v).
template <int kRows>
__device__ __forceinline__ int sw128_offset(int r, int c) {  // element offset of (r, c)
  return (c / 64) * kRows * 64 + r * 64 + ((((c % 64) / 8) ^ (r % 8)) * 8) + c % 8;
}

// Rows [row0, row0 + kRows) of a head (`rows` rows of kD elements, `ld` apart) into a swizzled
// tile with cp.async, zeros past `rows` (flash::load_tile_async's contract). A warp's 8
// consecutive lanes copy one row's 128 contiguous source bytes into one 128-byte row: coalesced
// and free of bank conflicts.
template <typename T, int kD, int kRows>
__device__ __forceinline__ void load_tile_sw128_async(T* smem, const T* src, int64_t ld,
                                                      int64_t row0, int64_t rows) {
  static_assert(sizeof(T) == 2 && kD % 64 == 0, "16-bit elements, whole 64-column panels");
  constexpr int kChunks = kD / 8;  // 16-byte chunks per row
  for (int i = threadIdx.x; i < kRows * kChunks; i += blockDim.x) {
    const int r = i / kChunks, c = (i % kChunks) * 8;
    const bool in = row0 + r < rows;
    const T* from = in ? src + (row0 + r) * ld + c : src;  // any valid address: 0 bytes read
    cp_async<16>(smem + sw128_offset<kRows>(r, c), from, in);
  }
}

// The descriptor of a swizzled operand starting at `p` (PTX ISA, "Matrix Descriptor Format"):
// start address, leading byte offset, stride byte offset (each >> 4), 128-byte swizzle (mode 1,
// bits 62-63). stride: bytes between 8-row groups (1024 in this layout); leading: for an
// MN-major operand wider than 64 elements, bytes between its 64-column panels (ignored for a
// K-major one whose 16 K elements lie inside one 128-byte row).
__device__ __forceinline__ uint64_t desc_sw128(const void* p, uint32_t leading, uint32_t stride) {
  const uint32_t addr = smem_addr(p);
  return static_cast<uint64_t>((addr & 0x3ffff) >> 4) |
         (static_cast<uint64_t>((leading >> 4) & 0x3fff) << 16) |
         (static_cast<uint64_t>((stride >> 4) & 0x3fff) << 32) | (1ull << 62);
}
// K-major operand, K step k (16 elements = 32 bytes) of a swizzled tile whose panels are `rows`
// rows high; `tile` may point at a row of it that starts an 8-row atom (a warpgroup's 64 rows).
__device__ __forceinline__ uint64_t desc_k_major(const void* tile, int k, int rows) {
  const char* p = static_cast<const char*>(tile) + (k / 4) * rows * 128 + (k % 4) * 32;
  return desc_sw128(p, 16, 1024);
}
template <int kRows>
__device__ __forceinline__ uint64_t desc_k_major(const void* tile, int k) {
  return desc_k_major(tile, k, kRows);
}
// MN-major operand, K step k (rows 16k..16k+15) of a swizzled [kRows, kCols] tile.
template <int kRows>
__device__ __forceinline__ uint64_t desc_mn_major(const void* tile, int k) {
  return desc_sw128(static_cast<const char*>(tile) + k * 16 * 128, kRows * 128, 1024);
}

// ---- ordering ----------------------------------------------------------------------------------
// Before a warpgroup's first wgmma after its registers (accumulators, A fragments) were written.
__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
// Until at most kPending committed groups are in flight (0: the products are in the registers and
// their shared-memory reads are done).
template <int kPending>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Shared memory written through the generic proxy (stores, cp.async) that wgmma reads next: each
// writing thread, before the barrier that publishes it.
__device__ __forceinline__ void fence_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Pins accumulators in program order around the asynchronous products (no read or write of them
// moves across): after wait(), before using them; before fence(), after writing them.
template <int N>
__device__ __forceinline__ void pin(float (&d)[N][4]) {
#pragma unroll
  for (int n = 0; n < N; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) asm volatile("" : "+f"(d[n][e])::"memory");
  }
}

// The products `issue` emits, in flight together, under wgmma's register contract: the
// accumulators pinned and the warpgroup fenced before, the group committed, `meanwhile` run while
// it is in flight (work that touches none of them), then waited for and the accumulators pinned
// again. in_flight: nothing meanwhile.
template <typename Issue, typename Meanwhile, typename... Acc>
__device__ __forceinline__ void in_flight_with(Issue&& issue, Meanwhile&& meanwhile, Acc&... acc) {
  (pin(acc), ...);
  fence();
  issue();
  commit();
  meanwhile();
  wait<0>();
  (pin(acc), ...);
}
template <typename Issue, typename... Acc>
__device__ __forceinline__ void in_flight(Issue&& issue, Acc&... acc) {
  in_flight_with(
      issue, [] {}, acc...);
}

// ---- the products ------------------------------------------------------------------------------
#define LIGHTSEQ_WG_D(n) "+f"(d[n][0]), "+f"(d[n][1]), "+f"(d[n][2]), "+f"(d[n][3])
#define LIGHTSEQ_WG_D4(n) \
  LIGHTSEQ_WG_D(n), LIGHTSEQ_WG_D(n + 1), LIGHTSEQ_WG_D(n + 2), LIGHTSEQ_WG_D(n + 3)
#define LIGHTSEQ_WG_R16 "%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15"
#define LIGHTSEQ_WG_R32 \
  LIGHTSEQ_WG_R16 ",%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31"
#define LIGHTSEQ_WG_R48 \
  LIGHTSEQ_WG_R32 ",%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47"
#define LIGHTSEQ_WG_R64 \
  LIGHTSEQ_WG_R48 ",%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63"
// One wgmma: SHAPE ("m64n64k16"), TY ("bf16"), REGS the accumulators' operand numbers, SCALE the
// scale-d operand's, ARGS the rest of the instruction's operands, INS a macro naming the inputs,
// then the accumulators (the outputs). scale-d is a predicate, set from the input `one`.
#define LIGHTSEQ_WG_ASM(SHAPE, TY, REGS, SCALE, ARGS, INS, ...)                                   \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE                                          \
               ", 0;\nwgmma.mma_async.sync.aligned." SHAPE ".f32." TY "." TY " {" REGS "}, " ARGS \
               ";\n}\n"                                                                           \
               : __VA_ARGS__                                                                      \
               : INS)
// M("bf16") or M("f16") by the element type T.
#define LIGHTSEQ_WG_BY_TYPE(M)                      \
  if constexpr (IsSame<T, __nv_bfloat16>::kValue) { \
    M("bf16");                                      \
  } else {                                          \
    M("f16");                                       \
  }

// A from registers: the d operands, then a0..a3, the B descriptor, scale-d (1: accumulate) and
// trans-b, numbered after the N / 2 accumulators.
template <typename T, int kN, int kTransB>
__device__ __forceinline__ void mma_rs(float (&d)[kN / 8][4], const uint32_t (&a)[4], uint64_t b) {
  static_assert(sizeof(T) == 2, "16-bit operands");
  static_assert(kN == 32 || kN == 64 || kN == 128, "N: 32, 64 or 128");
  const int one = 1;
#define LIGHTSEQ_WG_RS_IN "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(one), "n"(kTransB)
#define LIGHTSEQ_WG_RS_32(TY)                                                                      \
  LIGHTSEQ_WG_ASM("m64n32k16", TY, LIGHTSEQ_WG_R16, "%21", "{%16,%17,%18,%19}, %20, p, 1, 1, %22", \
                  LIGHTSEQ_WG_RS_IN, LIGHTSEQ_WG_D4(0))
#define LIGHTSEQ_WG_RS_64(TY)                                                                      \
  LIGHTSEQ_WG_ASM("m64n64k16", TY, LIGHTSEQ_WG_R32, "%37", "{%32,%33,%34,%35}, %36, p, 1, 1, %38", \
                  LIGHTSEQ_WG_RS_IN, LIGHTSEQ_WG_D4(0), LIGHTSEQ_WG_D4(4))
#define LIGHTSEQ_WG_RS_128(TY)                                                                  \
  LIGHTSEQ_WG_ASM("m64n128k16", TY, LIGHTSEQ_WG_R64, "%69",                                     \
                  "{%64,%65,%66,%67}, %68, p, 1, 1, %70", LIGHTSEQ_WG_RS_IN, LIGHTSEQ_WG_D4(0), \
                  LIGHTSEQ_WG_D4(4), LIGHTSEQ_WG_D4(8), LIGHTSEQ_WG_D4(12))
  if constexpr (kN == 32) {
    LIGHTSEQ_WG_BY_TYPE(LIGHTSEQ_WG_RS_32)
  } else if constexpr (kN == 64) {
    LIGHTSEQ_WG_BY_TYPE(LIGHTSEQ_WG_RS_64)
  } else {
    LIGHTSEQ_WG_BY_TYPE(LIGHTSEQ_WG_RS_128)
  }
#undef LIGHTSEQ_WG_RS_IN
#undef LIGHTSEQ_WG_RS_32
#undef LIGHTSEQ_WG_RS_64
#undef LIGHTSEQ_WG_RS_128
}

// A and B from shared memory (descriptors; trans-a / trans-b: MN-major), the d operands first.
template <typename T, int kN, int kTransA, int kTransB>
__device__ __forceinline__ void mma_ss(float (&d)[kN / 8][4], uint64_t a, uint64_t b) {
  static_assert(sizeof(T) == 2, "16-bit operands");
  static_assert(kN == 32 || kN == 64, "N: 32 or 64");
  const int one = 1;
#define LIGHTSEQ_WG_SS_IN "l"(a), "l"(b), "r"(one), "n"(kTransA), "n"(kTransB)
#define LIGHTSEQ_WG_SS_32(TY)                                                             \
  LIGHTSEQ_WG_ASM("m64n32k16", TY, LIGHTSEQ_WG_R16, "%18", "%16, %17, p, 1, 1, %19, %20", \
                  LIGHTSEQ_WG_SS_IN, LIGHTSEQ_WG_D4(0))
#define LIGHTSEQ_WG_SS_64(TY)                                                             \
  LIGHTSEQ_WG_ASM("m64n64k16", TY, LIGHTSEQ_WG_R32, "%34", "%32, %33, p, 1, 1, %35, %36", \
                  LIGHTSEQ_WG_SS_IN, LIGHTSEQ_WG_D4(0), LIGHTSEQ_WG_D4(4))
  if constexpr (kN == 32) {
    LIGHTSEQ_WG_BY_TYPE(LIGHTSEQ_WG_SS_32)
  } else {
    LIGHTSEQ_WG_BY_TYPE(LIGHTSEQ_WG_SS_64)
  }
#undef LIGHTSEQ_WG_SS_IN
#undef LIGHTSEQ_WG_SS_32
#undef LIGHTSEQ_WG_SS_64
}

#undef LIGHTSEQ_WG_ASM
#undef LIGHTSEQ_WG_BY_TYPE
#undef LIGHTSEQ_WG_D
#undef LIGHTSEQ_WG_D4
#undef LIGHTSEQ_WG_R16
#undef LIGHTSEQ_WG_R32
#undef LIGHTSEQ_WG_R48
#undef LIGHTSEQ_WG_R64

}  // namespace wg
}  // namespace lightseq::kern
