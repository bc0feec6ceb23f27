// flash_attention.sig.cuh — flash_attention.cuh's traits and signatures: the fused attention,
// forward and backward. Traits: the family's launch formulas as __host__ __device__ constexpr
// functions, which the kernels and the runtime share. Signatures (host-only, common/signature.cuh):
// each kernel's template and run-time parameters with their roles, its launch shape and its scratch
// extents, declared once; codegen, the planner and the runtime derive everything else from them.
#pragma once

#include "common/enums.cuh"
#include "common/launch.cuh"

namespace lightseq::kern {

// ---- flash_attention.cuh -----------------------------------------------------------------------
inline constexpr int kFlashBlockN = 64;  // keys per tile of the forward
// The forward: kWarps warps of 16 query rows per block (a template parameter). The plans launch
// kFlashFwdWarps; kFlashFwdWarpsAlt is the other geometry attention_bench can time (--fwd-warps),
// whose results are the same bits (each query row is its warp's work alone).
inline constexpr int kFlashFwdWarps = 4;
inline constexpr int kFlashFwdWarpsAlt = 8;
LIGHTSEQ_HD constexpr int flash_fwd_block(int warps = kFlashFwdWarps) { return 32 * warps; }
// The geometries: 4 warps (one warpgroup of 64 query rows) hold one key tile and one value tile in
// static shared memory, loaded by the block between two __syncthreads a tile; 8 warps (two
// warpgroups, 128 query rows: every key and value read from L2 half as often per query) share a
// ring of kFlashFwdStages key/value tile pairs in dynamic shared memory whose slots they fill and
// publish through mbarriers (common/mbarrier.cuh), kFlashFwdStages - 1 tiles ahead, so that one
// warpgroup's products run while the other's softmax does and neither waits for a whole block
// (slots: the tile whose p·v runs, on sm_90a the next one whose q·kᵀ runs with it, one landing,
// one being refilled).
inline constexpr int kFlashFwdStages = 4;
LIGHTSEQ_HD constexpr bool flash_fwd_ring(int warps) { return warps == kFlashFwdWarpsAlt; }
// A ring slot's key (or value) tile in elements: kFlashBlockN rows padded to d + 8 (the mma.sync
// build's layout; the swizzled wgmma tiles are smaller and fit), a multiple of 1 KiB in bytes for
// d a multiple of 16 (the swizzle atoms' alignment).
LIGHTSEQ_HD constexpr int flash_fwd_tile_elems(int64_t d) {
  return kFlashBlockN * static_cast<int>(d + 8);
}
// Bytes of the ring's tiles (16-bit elements); its kFlashFwdStages barriers (8 bytes each) follow
// them.
LIGHTSEQ_HD constexpr int flash_fwd_ring_bytes(int64_t d) {
  return kFlashFwdStages * 2 * flash_fwd_tile_elems(d) * 2;
}
// The launch's dynamic shared memory: the ring and its barriers, or none (4 warps: static).
LIGHTSEQ_HD constexpr int flash_fwd_smem(int64_t d, int warps) {
  return flash_fwd_ring(warps) ? flash_fwd_ring_bytes(d) + kFlashFwdStages * 8 : 0;
}
// The largest head dim whose kernels fit 128 registers a thread (the forward's state, or the
// backward's with its k and v fragments in shared memory): the kernels built for 16 warps per SM.
inline constexpr int64_t kFlashLeanMaxD = 64;
// The forward's register cap, as __launch_bounds__'s blocks per SM: up to kFlashLeanMaxD, 16 warps
// (128 registers: four blocks of the plans' 4 warps; 4-8 % faster with dropout at T 128-512 on an
// H100, the same without, fourteenth session); past it 0, no cap: the compiler's own choice (168
// registers at d 96 and 128, three blocks of 4 warps). An explicit 1 is not the same: ptxas then
// takes up to 255 (199 at d 128: two blocks), and the forward at d 96-128 ran 15-25 % slower (H100,
// fifteenth session).
LIGHTSEQ_HD constexpr int flash_fwd_min_blocks(int64_t d, int warps) {
  return d <= kFlashLeanMaxD && warps == kFlashFwdWarps ? 16 / warps : 0;
}
// The most batch · heads the grids below take: CUDA's limit on gridDim.y.
inline constexpr int64_t kFlashMaxBatchHeads = 65535;
// The kernels read and write the token layout of the projections around them (q, k and v column
// slices of packed [B·T, P·H] rows, ld = P·H elements apart; out [B·T, heads·kD]) with 16-byte
// copies: every row start must stay 16-byte aligned, so ld and the slices' column offsets are
// multiples of 8 elements.
LIGHTSEQ_HD constexpr bool flash_aligned(int64_t elems) { return elems % 8 == 0; }
LIGHTSEQ_HD constexpr bool flash_ld_ok(int64_t ld) { return ld > 0 && flash_aligned(ld); }
// x: query tiles, y: batch · heads.
LIGHTSEQ_HD constexpr GridDim flash_fwd_grid(int64_t batch_heads, int64_t q_len,
                                             int warps = kFlashFwdWarps) {
  return GridDim{static_cast<uint32_t>(ceil_div(q_len, 16 * warps)),
                 static_cast<uint32_t>(batch_heads), 1};
}

// The backward: grad_k/grad_v per block of keys, 16 per warp (x: key blocks, y: batch · heads),
// looping over query tiles of flash_bwd_block_m(kD, kBlocks) rows; D (Σ grad_out·out) one row per
// thread. grad_q: each key block adds its part of every query tile it visits (flash_dq_turn below).
// When one key block holds every key (flash_bwd_one_block: up to kFlashBwdBlockN keys), the
// grad_k/grad_v kernel computes D itself and writes grad_q directly: the D kernel's grid is then
// empty (nothing launched), and the backward is one launch. Blocks of 8 warps only where they make
// one block of more than 64 keys; 4 otherwise (measured on an H100 with the ~255-register geometry:
// with several blocks, 8 warps were 8-10 % slower than 4 — one block per SM instead of two).
inline constexpr int kFlashBwdBlockN = 128;  // the most keys of one block (8 warps)
inline constexpr int kFlashBwdBlockNSmall = kFlashBwdBlockN / 2;  // 4 warps: each of several
inline constexpr int kFlashBwdThreads = 256;                      // the most threads of one block
// (k_len 0: no block, nothing written; the runtime rejects empty sequences before.)
LIGHTSEQ_HD constexpr bool flash_bwd_one_block(int64_t k_len) {
  return k_len > 0 && k_len <= kFlashBwdBlockN;
}
LIGHTSEQ_HD constexpr int flash_bwd_warps(int64_t k_len) {
  return flash_bwd_one_block(k_len) && k_len > 64 ? 8 : 4;
}
LIGHTSEQ_HD constexpr int flash_bwd_threads(int64_t k_len) { return 32 * flash_bwd_warps(k_len); }
LIGHTSEQ_HD constexpr int flash_bwd_block_n(int64_t k_len) { return 16 * flash_bwd_warps(k_len); }
// Blocks per SM the grad_k/grad_v kernel is built for (its template parameter kBlocks): 1, k and v
// fragments held in registers across the query loop (~255 registers: one 8-warp block per SM,
// whose barriers and loads nothing hides), or 2 (head dims up to 64): query tiles of 32 rows and
// the k and v fragments read from shared memory per tile, at most 128 registers
// (__launch_bounds__), so that a second block runs while the first waits. The plans take
// flash_bwd_blocks(d); attention_bench times either (--bwd-blocks). Measured on an H100 (228 KiB
// of shared memory per SM: two one-key-block blocks of ~61 KiB fit); on an SM with ~100 KiB
// (sm_86/89) only one would, and the register cap would cost without the second block: not
// measured, the plans do not yet decide by architecture.
LIGHTSEQ_HD constexpr bool flash_bwd_blocks_ok(int64_t d, int blocks) {
  return blocks == 1 || (blocks == 2 && d <= kFlashLeanMaxD);
}
LIGHTSEQ_HD constexpr int flash_bwd_blocks(int64_t d) { return flash_bwd_blocks_ok(d, 2) ? 2 : 1; }
// The other geometry of head dim d, where it has one (attention_bench and the tests' A/B), else 0.
LIGHTSEQ_HD constexpr int flash_bwd_other_blocks(int64_t d) {
  return flash_bwd_blocks(d) == 2 ? 1 : (flash_bwd_blocks_ok(d, 2) ? 2 : 0);
}
// Query rows per tile of the grad_k/grad_v kernel: 64, or 32 past head dim 64 (the block's k and v
// fragments and its two accumulators already hold kD / 2 registers each per thread) and in the
// two-block geometry.
LIGHTSEQ_HD constexpr int flash_bwd_block_m(int64_t d, int blocks) {
  return d > kFlashLeanMaxD || blocks > 1 ? 32 : 64;
}
// Its dynamic shared memory, byte offsets (fp16/bf16 elements, rows padded by 8): the query side
// in kFlashBwdStages stages `stage` bytes apart (a ring: tile i in stage i % stages, the next
// tile's copies in flight while this one's products run), each a query tile [m, d] at 0 and its
// grad_out tile (each rounded up to 1 KiB), with one key block its out tile (for D), the tile's lse
// and D (fp32; flash_attn_bwd_dot_kernel's with several key blocks, staged from the out tile with
// one); then the block's keys [n, d] (at a 1 KiB boundary; grad_q's B operand, and the fragments'
// source in the sm_90a build and the two-block mma.sync build) and values [n, d] (read by those two
// builds), the tile's dSᵀ [n, m] (grad_q's A operand), and at `dq` what the block shares about its
// part of grad_q over several key blocks (not static shared memory: that would move this buffer
// off its 1 KiB alignment). The kernel carves its buffer by these;
// `bytes` is the launch's. Offsets gs..dot are within stage 0.
inline constexpr int kFlashBwdStages = 2;
inline constexpr int kFlashDqSharedBytes = 32;  // the kernel's DqShared (static_assert there)
struct FlashBwdSmem {
  int gs, os, lse, dot, stage, ks, vs, dst, dq, bytes;
};
LIGHTSEQ_HD constexpr FlashBwdSmem flash_bwd_smem_layout(int64_t d, int64_t k_len, int blocks) {
  const int m = flash_bwd_block_m(d, blocks), n = flash_bwd_block_n(k_len);
  // the tiles 1024 bytes apart (the sm_90a build's swizzle atoms; its tiles are unpadded and fit
  // the padded rows' room)
  const int row = static_cast<int>(d + 8) * 2,
            tile = static_cast<int>(ceil_div(m * row, 1024)) * 1024;
  const bool one = flash_bwd_one_block(k_len);
  FlashBwdSmem l{};
  l.gs = tile;
  l.os = 2 * tile;
  l.lse = l.os + (one ? tile : 0);
  l.dot = l.lse + 4 * m;
  l.stage = static_cast<int>(ceil_div(l.dot + 4 * m, 1024)) * 1024;
  l.ks = kFlashBwdStages * l.stage;
  l.vs = l.ks + n * row;
  l.dst = l.vs + n * row;
  l.dq = l.dst + n * (m + 8) * 2;
  l.bytes = l.dq + kFlashDqSharedBytes;
  return l;
}
LIGHTSEQ_HD constexpr int flash_bwd_smem(int64_t d, int64_t k_len, int blocks) {
  return flash_bwd_smem_layout(d, k_len, blocks).bytes;
}
LIGHTSEQ_HD constexpr GridDim flash_bwd_grid(int64_t batch_heads, int64_t k_len) {
  return GridDim{static_cast<uint32_t>(ceil_div(k_len, flash_bwd_block_n(k_len))),
                 static_cast<uint32_t>(batch_heads), 1};
}
// grad_q over several key blocks: query tile m (rows [m, m + kM)) gets a part from every key block
// that visits it, summed in fp32 in a fixed order: key blocks ascending, or (causal) descending,
// so that the last part is always key block 0's. Parts go into the kernel's dq_acc scratch (fp32
// [batch·heads·q_len, kD]): part 0 stores, the middle parts add, the last reads the sum back and
// writes grad_q rounded once. Each part waits for its turn on the tile's counter in the dq_sync
// scratch (int32, zeroed by the runtime before each launch; per head a word that hands out its key
// blocks' places in start order, then its tiles' counters: a block waits only on blocks that
// started before it, which are resident or done). Causal: key block j visits tile m iff j·block_n <
// m + kM + k_len - q_len (its first query tile, m_begin, is the tile holding query j·block_n -
// (k_len - q_len), or 0); rows of tiles no block visits get zeros from key block 0.
struct FlashDqTurn {
  int rank;   // this part's place in the tile's order (0: stores)
  int parts;  // the parts the tile sums (rank parts - 1: the last, writes grad_q)
};
LIGHTSEQ_HD constexpr FlashDqTurn flash_dq_turn(bool causal, int64_t j, int64_t blocks, int64_t m,
                                                int kM, int block_n, int64_t q_len, int64_t k_len) {
  if (!causal) return {static_cast<int>(j), static_cast<int>(blocks)};
  const int64_t reach = m + kM + k_len - q_len;  // keys below it see some row of the tile
  const int64_t n = reach <= 0 ? 0 : ceil_div(reach, block_n);
  const int64_t parts = n < blocks ? n : blocks;
  return {static_cast<int>(parts - 1 - j), static_cast<int>(parts)};
}
// A key block's first query tile: 0, or (causal) the tile holding the first query that may see
// its first key n0.
LIGHTSEQ_HD constexpr int64_t flash_bwd_m_begin(bool causal, int64_t n0, int kM, int64_t q_len,
                                                int64_t k_len) {
  const int64_t first = n0 - (k_len - q_len);
  return causal && first > 0 ? first / kM * kM : 0;
}
// The scratch of several key blocks (zero-sized with one): dq_acc rows and dq_sync words.
LIGHTSEQ_HD constexpr int64_t flash_dq_acc_rows(int64_t batch_heads, int64_t q_len, int64_t k_len) {
  return flash_bwd_one_block(k_len) ? 0 : batch_heads * q_len;
}
LIGHTSEQ_HD constexpr int64_t flash_dq_sync_words(int64_t batch_heads, int64_t q_len, int64_t k_len,
                                                  int kM) {
  return flash_bwd_one_block(k_len) ? 0 : batch_heads * (1 + ceil_div(q_len, kM));
}
LIGHTSEQ_HD constexpr GridDim flash_dot_grid(int64_t rows, int64_t k_len) {
  return flash_bwd_one_block(k_len) ? GridDim{0, 1, 1}
                                    : grid_1d(ceil_div(rows, kElementwiseThreads));
}

}  // namespace lightseq::kern

#if !defined(__CUDACC_RTC__)
#include "common/signature.cuh"

namespace lightseq::kern::sig {

// The template parameters the fused attention's kernels share; the forward adds its warps per
// block, the grad_k/grad_v kernel its blocks per SM.
namespace flash_bwd {
inline constexpr TParam kT[] = {
    kDTypeParam, int_param("kD", "d"), enum_param("kMask", "mask", kMaskInfo),
    enum_param("kDrop", "drop", kDropInfo), enum_param("kSeqs", "seqs", kSeqsInfo)};

// The operands and sizes the forward and the grad_k/grad_v kernel share (flash_attention.cuh):
// q, k, v, the optional key padding and the packed batches' cumulative offsets; batch, heads,
// lengths (packed: the longest), the packed rows of each side (total_q, total_k: the bounds of
// their offsets, and lse's [heads, total_q]), row strides, scale and the dropout stream.
inline constexpr Param kOperands[] = {in("q", CType::kConstTPtr),
                                      in("k", CType::kConstTPtr),
                                      in("v", CType::kConstTPtr),
                                      in("key_padding", CType::kConstU8Ptr, Nullable::kYes),
                                      in("cu_seqlens_q", CType::kConstI32Ptr, Nullable::kYes),
                                      in("cu_seqlens_k", CType::kConstI32Ptr, Nullable::kYes)};
inline constexpr Param kSizes[] = {scalar("batch", CType::kI64),   scalar("heads", CType::kI64),
                                   scalar("q_len", CType::kI64),   scalar("k_len", CType::kI64),
                                   scalar("total_q", CType::kI64), scalar("total_k", CType::kI64),
                                   scalar("ld_q", CType::kI64),    scalar("ld_kv", CType::kI64),
                                   scalar("scale", CType::kF32),   dropout("drop")};
}  // namespace flash_bwd

namespace flash_fwd {
inline constexpr auto kTList = extend(flash_bwd::kT, int_param("kWarps", "w"));
inline constexpr const auto& kT = kTList.v;
inline constexpr Param kOutputs[] = {out("out", CType::kTPtr), out("lse", CType::kF32Ptr),
                                     error_flag("bad_seqlens")};
inline constexpr auto kPList = join(flash_bwd::kOperands, kOutputs, flash_bwd::kSizes);
inline constexpr const auto& kP = kPList.v;
inline Launch launch(const Values& v) {
  const int warps = static_cast<int>(v.t[index_of(kT, "kWarps")]);
  return {flash_fwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")],
                         v.i[index_of(kP, "q_len")], warps),
          flash_fwd_block(warps), flash_fwd_smem(v.t[index_of(kT, "kD")], warps)};
}
}  // namespace flash_fwd
// The forward and the grad_k/grad_v kernel each take ~1 s of NVRTC per instance: each its own
// program, so that a model's instances compile in parallel.
inline constexpr Kernel kFlashFwd =
    make_kernel("flash_attention", "flash_attn_fwd_kernel", flash_fwd::kT, flash_fwd::kP,
                &flash_fwd::launch, Program::kOwn);

namespace flash_dot {
inline constexpr TParam kT[] = {kDTypeParam, int_param("kD", "d")};
inline constexpr Param kP[] = {in("out", CType::kConstTPtr),
                               in("grad_out", CType::kConstTPtr),
                               in("cu_seqlens_q", CType::kConstI32Ptr, Nullable::kYes),
                               out("dot", CType::kF32Ptr),
                               scalar("rows", CType::kI64),
                               scalar("heads", CType::kI64),
                               scalar("q_len", CType::kI64),
                               scalar("k_len", CType::kI64)};
inline Launch launch(const Values& v) {
  return {flash_dot_grid(v.i[index_of(kP, "rows")], v.i[index_of(kP, "k_len")]),
          kElementwiseThreads, 0};
}
}  // namespace flash_dot
inline constexpr Kernel kFlashDot = make_kernel("flash_attention", "flash_attn_bwd_dot_kernel",
                                                flash_dot::kT, flash_dot::kP, &flash_dot::launch);

// `out` is read (for D) and `dot` ignored when one key block holds every key
// (flash_bwd_one_block); with several, `dot` is flash_attn_bwd_dot_kernel's and dq_acc, dq_sync
// sum grad_q's parts (flash_dq_turn).
namespace flash_dkdv {
inline constexpr auto kTList = extend(flash_bwd::kT, int_param("kBlocks", "b"));
inline constexpr const auto& kT = kTList.v;
inline Extent dq_acc(const Values& v);
inline Extent dq_sync(const Values& v);
inline constexpr Param kGrads[] = {
    in("grad_out", CType::kConstTPtr),
    in("lse", CType::kConstF32Ptr),
    in("dot", CType::kConstF32Ptr),
    in("out", CType::kConstTPtr),
    out("grad_q", CType::kTPtr),
    out("grad_k", CType::kTPtr),
    out("grad_v", CType::kTPtr),
    scratch("dq_acc", CType::kF32Ptr, &dq_acc, Nullable::kYes),
    scratch("dq_sync", CType::kI32Ptr, &dq_sync, Nullable::kYes, ScratchInit::kZero)};
inline constexpr auto kPList = join(flash_bwd::kOperands, kGrads, flash_bwd::kSizes);
inline constexpr const auto& kP = kPList.v;
inline int64_t batch_heads(const Values& v) {
  return v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")];
}
inline Extent dq_acc(const Values& v) {
  return {flash_dq_acc_rows(batch_heads(v), v.i[index_of(kP, "q_len")], v.i[index_of(kP, "k_len")]),
          v.t[index_of(kT, "kD")]};
}
inline Extent dq_sync(const Values& v) {
  const int m =
      flash_bwd_block_m(v.t[index_of(kT, "kD")], static_cast<int>(v.t[index_of(kT, "kBlocks")]));
  return {flash_dq_sync_words(batch_heads(v), v.i[index_of(kP, "q_len")],
                              v.i[index_of(kP, "k_len")], m),
          1};
}
inline Launch launch(const Values& v) {
  const int64_t k_len = v.i[index_of(kP, "k_len")];
  return {flash_bwd_grid(v.i[index_of(kP, "batch")] * v.i[index_of(kP, "heads")], k_len),
          flash_bwd_threads(k_len),
          flash_bwd_smem(v.t[index_of(kT, "kD")], k_len,
                         static_cast<int>(v.t[index_of(kT, "kBlocks")]))};
}
inline const char* reject(const Values& v) {
  return flash_bwd_blocks_ok(v.t[index_of(kT, "kD")],
                             static_cast<int>(v.t[index_of(kT, "kBlocks")]))
             ? nullptr
             : "b (blocks per SM) is 1, or 2 up to head dim kFlashLeanMaxD";
}
}  // namespace flash_dkdv
inline constexpr Kernel kFlashDkDv =
    make_kernel("flash_attention", "flash_attn_bwd_dkdv_kernel", flash_dkdv::kT, flash_dkdv::kP,
                &flash_dkdv::launch, Program::kOwn, &flash_dkdv::reject);

namespace flash_attention {
inline constexpr const Kernel* kKernels[] = {&kFlashFwd, &kFlashDot, &kFlashDkDv};
}

}  // namespace lightseq::kern::sig
#endif
